//! The director's configuration file (`/etc/director/director.yaml`), its
//! validation and its meaning. The schema is documented in
//! docs/configuration.md; every problem is reported with file, line, column
//! and field, and a file with problems is never used.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use consensus::domain::{check_flags, Forwarding, Persistence, Protocol, Scheduler, SchedulerFlag};
use consensus::{LeaseTiming, NodeId, Timing};
use serde::Deserialize;
use serde_saphyr::Spanned;

mod live;

/// The default of `reconcile.resync_s`.
pub const RESYNC_S: u64 = 30;

pub use live::ConfigCell;

/// The default of `drain.connection_wait_ms`: short requests finish well
/// within it, and a client whose SYN the drain dropped retries (after 1 s)
/// when the VIP already answers elsewhere.
pub const DRAIN_CONNECTION_WAIT_MS: u64 = 2000;

/// One problem in the file.
pub type ConfigError = crate::problems::Problem;

/// A director's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Holds VIPs, programs IPVS.
    Data,
    /// Consensus only.
    Witness,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Raft id.
    pub id: NodeId,
    /// Name (`d1`).
    pub name: String,
    /// Raft transport address.
    pub address: SocketAddr,
    /// Data or witness.
    pub role: PeerRole,
}

/// A pool of VIPs: single addresses, ranges and CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Inclusive ranges (a single address is a range of one).
    pub ranges: Vec<(IpAddr, IpAddr)>,
}

impl Pool {
    /// Whether `ip` is in the pool.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|(a, b)| match (a, b, ip) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= x && x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= x && x <= b,
            _ => false,
        })
    }
}

/// One port of a static service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port on the VIP.
    pub port: u16,
    /// Backends as address and port.
    pub backends: Vec<SocketAddr>,
}

/// Where a static service's VIP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipSource {
    /// A fixed address.
    Address(IpAddr),
    /// The next free address of a pool.
    Pool(String),
}

/// A static virtual service (works without Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticService {
    /// Its name.
    pub name: String,
    /// Its VIP.
    pub vip: VipSource,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// IPVS scheduler.
    pub scheduler: Scheduler,
    /// Its flags.
    pub scheduler_flags: BTreeSet<SchedulerFlag>,
    /// How IPVS forwards to the backends.
    pub forwarding: Forwarding,
    /// Client persistence (`persistence_s` above 0), with its netmask.
    pub persistence: Option<Persistence>,
}

/// Gratuitous ARP / unsolicited NA announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Packets per burst.
    pub count: u32,
    /// Gap between the packets of a burst.
    pub interval_ms: u64,
    /// Periodic re-announcement while holding (0: none).
    pub refresh_s: u64,
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This director's id.
    pub id: NodeId,
    /// Every voter, this director included.
    pub peers: Vec<Peer>,
    /// Where state is kept.
    pub data_dir: PathBuf,
    /// The interface VIPs live on.
    pub interface: String,
    /// TLS files, or None with `insecure: true`.
    pub tls: Option<consensus::TlsFiles>,
    /// Raft timing.
    pub timing: Timing,
    /// Lease timing.
    pub lease: LeaseTiming,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// Prometheus metrics address (None: off).
    pub metrics: Option<SocketAddr>,
    /// Announcement settings.
    pub announce: Announce,
    /// How long a drain lets open connections finish before the handover.
    pub drain_connection_wait: Duration,
    /// How often the reconcilers compare with a full read of the kernel
    /// (`reconcile.resync_s`).
    pub reconcile_resync: Duration,
    /// VIP pools.
    pub pools: Vec<Pool>,
    /// Static services.
    pub services: Vec<StaticService>,
}

impl Config {
    /// The fields that differ between `self` (running) and `new` and that
    /// only a restart can change (identity, transport, timing, sockets); the
    /// rest (services, pools, defaults, announcements) a SIGHUP reloads.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        check("id", self.id == new.id);
        check("peers", self.peers == new.peers);
        check("data_dir", self.data_dir == new.data_dir);
        check("interface", self.interface == new.interface);
        check("tls", self.tls == new.tls);
        check(
            "timing",
            self.timing == new.timing && self.lease == new.lease,
        );
        check("admin_socket", self.admin_socket == new.admin_socket);
        check("metrics", self.metrics == new.metrics);
        check("reconcile", self.reconcile_resync == new.reconcile_resync);
        changed
    }
}

// ---- the file as written -----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    id: Option<Spanned<i64>>,
    #[serde(default)]
    peers: Vec<Spanned<PeerIn>>,
    data_dir: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    tls: Option<Spanned<TlsIn>>,
    insecure: Option<Spanned<bool>>,
    timing: Option<Spanned<TimingIn>>,
    admin_socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    announce: Option<Spanned<AnnounceIn>>,
    drain: Option<Spanned<DrainIn>>,
    reconcile: Option<Spanned<ReconcileIn>>,
    #[serde(default)]
    pools: Vec<Spanned<PoolIn>>,
    defaults: Option<Spanned<DefaultsIn>>,
    #[serde(default)]
    services: Vec<Spanned<ServiceIn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerIn {
    id: Option<Spanned<i64>>,
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsIn {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingIn {
    heartbeat_ms: Option<Spanned<i64>>,
    election_min_ms: Option<Spanned<i64>>,
    election_max_ms: Option<Spanned<i64>>,
    lease_ms: Option<Spanned<i64>>,
    margin_ms: Option<Spanned<i64>>,
    renew_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceIn {
    count: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    refresh_s: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainIn {
    connection_wait_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileIn {
    resync_s: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolIn {
    name: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsIn {
    scheduler: Option<Spanned<String>>,
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    forwarding: Option<Spanned<String>>,
    persistence_s: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceIn {
    name: Option<Spanned<String>>,
    vip: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<PortIn>>,
    #[serde(default)]
    backends: Vec<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    forwarding: Option<Spanned<String>>,
    persistence_s: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortIn {
    port: Option<Spanned<i64>>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    backends: Vec<Spanned<String>>,
}

type Errors = crate::problems::Problems;
use crate::problems::int_in as int;

/// Parses one address range: `A`, `A-B` or `A/LEN`.
fn parse_range(s: &str) -> Result<(IpAddr, IpAddr), String> {
    if let Some((a, b)) = s.split_once('-') {
        let a: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let b: IpAddr = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not an IP address"))?;
        let ordered = match (a, b) {
            (IpAddr::V4(x), IpAddr::V4(y)) => x <= y,
            (IpAddr::V6(x), IpAddr::V6(y)) => x <= y,
            _ => return Err("a range cannot mix IPv4 and IPv6".into()),
        };
        if !ordered {
            return Err(format!("{a} comes after {b}"));
        }
        return Ok((a, b));
    }
    if let Some((a, len)) = s.split_once('/') {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let len: u32 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        return match ip {
            IpAddr::V4(v4) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let base = u32::from(v4) & mask;
                if base != u32::from(v4) {
                    return Err(format!(
                        "{s} has host bits set (did you mean {}/{len}?)",
                        std::net::Ipv4Addr::from(base)
                    ));
                }
                Ok((IpAddr::V4(base.into()), IpAddr::V4((base | !mask).into())))
            }
            IpAddr::V6(v6) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                let base = u128::from(v6) & mask;
                if base != u128::from(v6) {
                    return Err(format!("{s} has host bits set"));
                }
                Ok((IpAddr::V6(base.into()), IpAddr::V6((base | !mask).into())))
            }
            _ => Err(format!("prefix length {len} is too long")),
        };
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address, range (A-B) or CIDR (A/LEN)"))?;
    Ok((ip, ip))
}

/// Parses and validates a configuration. All problems are reported at once.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let doc: FileIn =
        serde_saphyr::from_str(text).map_err(|e| vec![crate::problems::from_saphyr(&e)])?;
    let mut errs = Errors::default();

    let id: Option<NodeId> = match &doc.id {
        Some(v) => int(v, "id", "1..", &mut errs).filter(|id: &u64| {
            if *id == 0 {
                errs.at(v, "id", "must be at least 1");
            }
            *id > 0
        }),
        None => {
            errs.missing("id");
            None
        }
    };

    let mut peers = Vec::new();
    let mut seen_ids = BTreeMap::new();
    for (i, p) in doc.peers.iter().enumerate() {
        let path = format!("peers[{i}]");
        let pid: Option<NodeId> = match &p.value.id {
            Some(v) => int(v, format!("{path}.id"), "1..", &mut errs),
            None => {
                errs.at(p, format!("{path}.id"), "missing");
                None
            }
        };
        let address = match &p.value.address {
            Some(a) => match a.value.parse::<SocketAddr>() {
                Ok(sa) => Some(sa),
                Err(_) => {
                    errs.at(
                        a,
                        format!("{path}.address"),
                        format!("{:?} is not HOST:PORT with an IP address", a.value),
                    );
                    None
                }
            },
            None => {
                errs.at(p, format!("{path}.address"), "missing");
                None
            }
        };
        let role = match p.value.role.as_ref().map(|r| r.value.as_str()) {
            None | Some("data") => Some(PeerRole::Data),
            Some("witness") => Some(PeerRole::Witness),
            Some(other) => {
                if let Some(r) = &p.value.role {
                    errs.at(
                        r,
                        format!("{path}.role"),
                        format!("unknown role {other:?} (data or witness)"),
                    );
                }
                None
            }
        };
        if let Some(pid) = pid {
            if let Some(first) = seen_ids.insert(pid, p.referenced.line()) {
                errs.at(
                    p,
                    format!("{path}.id"),
                    format!("duplicate peer id {pid} (first at line {first})"),
                );
            }
        }
        if let (Some(id), Some(address), Some(role)) = (pid, address, role) {
            peers.push(Peer {
                id,
                name: p
                    .value
                    .name
                    .as_ref()
                    .map(|n| n.value.clone())
                    .unwrap_or_else(|| format!("d{id}")),
                address,
                role,
            });
        }
    }
    if doc.peers.is_empty() {
        errs.missing("peers");
    } else if !(2..=3).contains(&doc.peers.len()) {
        errs.at(
            &doc.peers[0],
            "peers",
            format!(
                "{} peers: a cluster has two or three voters",
                doc.peers.len()
            ),
        );
    }
    if let Some(id) = id {
        if !peers.is_empty() && !peers.iter().any(|p| p.id == id) {
            if let Some(v) = &doc.id {
                errs.at(v, "id", format!("{id} is not among the peers"));
            }
        }
    }
    if peers.iter().filter(|p| p.role == PeerRole::Data).count() == 0 && !peers.is_empty() {
        errs.at(
            &doc.peers[0],
            "peers",
            "at least one peer must be a data director",
        );
    }

    let data_dir = doc
        .data_dir
        .as_ref()
        .map(|d| PathBuf::from(&d.value))
        .unwrap_or_else(|| PathBuf::from("/var/lib/director"));
    let interface = match &doc.interface {
        Some(i) if !i.value.is_empty() && i.value.len() < 16 => i.value.clone(),
        Some(i) => {
            errs.at(i, "interface", "an interface name has 1 to 15 characters");
            String::new()
        }
        None => {
            errs.missing("interface");
            String::new()
        }
    };

    let insecure = doc.insecure.as_ref().map(|b| b.value).unwrap_or(false);
    let tls = match (&doc.tls, insecure) {
        (Some(t), false) => {
            let get = |f: &Option<Spanned<String>>, name: &str, errs: &mut Errors| match f {
                Some(v) => Some(PathBuf::from(&v.value)),
                None => {
                    errs.at(t, format!("tls.{name}"), "missing");
                    None
                }
            };
            let ca = get(&t.value.ca, "ca", &mut errs);
            let cert = get(&t.value.cert, "cert", &mut errs);
            let key = get(&t.value.key, "key", &mut errs);
            match (ca, cert, key) {
                (Some(ca), Some(cert), Some(key)) => Some(consensus::TlsFiles { ca, cert, key }),
                _ => None,
            }
        }
        (Some(t), true) => {
            errs.at(t, "tls", "give either tls or insecure: true, not both");
            None
        }
        (None, true) => None,
        (None, false) => {
            errs.missing("tls (or insecure: true for a plaintext transport)");
            None
        }
    };

    let mut timing = Timing::default();
    let mut lease = LeaseTiming::default();
    if let Some(t) = &doc.timing {
        let v = &t.value;
        let set = |f: &Option<Spanned<i64>>, name: &str, slot: &mut u64, errs: &mut Errors| {
            if let Some(x) = f {
                if let Some(n) = int::<u64>(x, format!("timing.{name}"), "1..", errs) {
                    *slot = n;
                }
            }
        };
        set(
            &v.heartbeat_ms,
            "heartbeat_ms",
            &mut timing.heartbeat_ms,
            &mut errs,
        );
        set(
            &v.election_min_ms,
            "election_min_ms",
            &mut timing.election_min_ms,
            &mut errs,
        );
        set(
            &v.election_max_ms,
            "election_max_ms",
            &mut timing.election_max_ms,
            &mut errs,
        );
        set(&v.lease_ms, "lease_ms", &mut lease.lease_ms, &mut errs);
        set(&v.margin_ms, "margin_ms", &mut lease.margin_ms, &mut errs);
        set(&v.renew_ms, "renew_ms", &mut lease.renew_ms, &mut errs);
        if let Err(e) = consensus::lease::validate(&timing, &lease) {
            errs.at(t, "timing", format!("{e} (see docs/fencing.md)"));
        }
    }

    let admin_socket = doc
        .admin_socket
        .as_ref()
        .map(|s| PathBuf::from(&s.value))
        .unwrap_or_else(|| PathBuf::from("/run/director/admin.sock"));
    let metrics = match &doc.metrics {
        Some(m) if m.value.is_empty() => None,
        Some(m) => match m.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.at(m, "metrics", format!("{:?} is not IP:PORT", m.value));
                None
            }
        },
        None => None,
    };

    let mut announce = Announce {
        count: 5,
        interval_ms: 200,
        refresh_s: 0,
    };
    if let Some(a) = &doc.announce {
        if let Some(c) = &a.value.count {
            match int::<u32>(c, "announce.count", "1..=100", &mut errs) {
                Some(n) if (1..=100).contains(&n) => announce.count = n,
                Some(_) => errs.at(
                    c,
                    "announce.count",
                    format!("{} is out of range 1..=100", c.value),
                ),
                None => {}
            }
        }
        if let Some(i) = &a.value.interval_ms {
            if let Some(n) = int::<u64>(i, "announce.interval_ms", "0..", &mut errs) {
                announce.interval_ms = n;
            }
        }
        if let Some(r) = &a.value.refresh_s {
            if let Some(n) = int::<u64>(r, "announce.refresh_s", "0..", &mut errs) {
                announce.refresh_s = n;
            }
        }
    }

    let mut drain_connection_wait = Duration::from_millis(DRAIN_CONNECTION_WAIT_MS);
    if let Some(w) = doc
        .drain
        .as_ref()
        .and_then(|d| d.value.connection_wait_ms.as_ref())
    {
        match int::<u64>(w, "drain.connection_wait_ms", "0..=600000", &mut errs) {
            Some(n) if n <= 600_000 => drain_connection_wait = Duration::from_millis(n),
            Some(_) => errs.at(
                w,
                "drain.connection_wait_ms",
                format!("{} is out of range 0..=600000", w.value),
            ),
            None => {}
        }
    }

    let mut pools = Vec::new();
    let mut pool_names = BTreeSet::new();
    for (i, p) in doc.pools.iter().enumerate() {
        let path = format!("pools[{i}]");
        let name = match &p.value.name {
            Some(n) => n.value.clone(),
            None => {
                errs.at(p, format!("{path}.name"), "missing");
                continue;
            }
        };
        if !pool_names.insert(name.clone()) {
            errs.at(
                p,
                format!("{path}.name"),
                format!("duplicate pool {name:?}"),
            );
        }
        let mut ranges = Vec::new();
        for (j, a) in p.value.addresses.iter().enumerate() {
            match parse_range(&a.value) {
                Ok(r) => ranges.push(r),
                Err(e) => errs.at(a, format!("{path}.addresses[{j}]"), e),
            }
        }
        if p.value.addresses.is_empty() {
            errs.at(
                p,
                format!("{path}.addresses"),
                "a pool needs at least one address",
            );
        }
        pools.push(Pool { name, ranges });
    }

    let defaults = Defaults::parse(doc.defaults.as_ref(), &mut errs);
    let reconcile_resync = Duration::from_secs(
        doc.reconcile
            .as_ref()
            .and_then(|r| r.value.resync_s.as_ref())
            .and_then(|v| int::<u64>(v, "reconcile.resync_s", "1..=3600", &mut errs))
            .filter(|n| {
                let ok = (1..=3600).contains(n);
                if !ok {
                    if let Some(v) = doc
                        .reconcile
                        .as_ref()
                        .and_then(|r| r.value.resync_s.as_ref())
                    {
                        errs.at(
                            v,
                            "reconcile.resync_s",
                            format!("{n} is out of range 1..=3600"),
                        );
                    }
                }
                ok
            })
            .unwrap_or(RESYNC_S),
    );
    let mut services = Vec::new();
    let mut names = BTreeSet::new();
    let mut fixed_vips: BTreeMap<(IpAddr, Protocol, u16), String> = BTreeMap::new();
    for (i, s) in doc.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let before = errs.list.len();
        let name = match &s.value.name {
            Some(n) if !n.value.is_empty() => n.value.clone(),
            _ => {
                errs.at(s, format!("{path}.name"), "missing");
                String::new()
            }
        };
        if !name.is_empty() && !names.insert(name.clone()) {
            errs.at(
                s,
                format!("{path}.name"),
                format!("duplicate service {name:?}"),
            );
        }
        let vip = match (&s.value.vip, &s.value.pool) {
            (Some(v), None) => match v.value.parse::<IpAddr>() {
                Ok(ip) => {
                    if !pools.is_empty() && !pools.iter().any(|p| p.contains(&ip)) {
                        errs.at(v, format!("{path}.vip"), format!("{ip} is in no pool"));
                    }
                    Some(VipSource::Address(ip))
                }
                Err(_) => {
                    errs.at(
                        v,
                        format!("{path}.vip"),
                        format!("{:?} is not an IP address", v.value),
                    );
                    None
                }
            },
            (None, Some(p)) => {
                if pool_names.contains(&p.value) {
                    Some(VipSource::Pool(p.value.clone()))
                } else {
                    errs.at(
                        p,
                        format!("{path}.pool"),
                        format!("no pool named {:?}", p.value),
                    );
                    None
                }
            }
            (Some(v), Some(_)) => {
                errs.at(v, format!("{path}.vip"), "give vip or pool, not both");
                None
            }
            (None, None) => {
                errs.at(
                    s,
                    format!("{path}.vip"),
                    "missing (give vip: ADDRESS or pool: NAME)",
                );
                None
            }
        };
        let scheduler = match &s.value.scheduler {
            Some(v) => word::<Scheduler>(v, &format!("{path}.scheduler"), &mut errs),
            None => Some(defaults.scheduler),
        };
        let scheduler_flags = match &s.value.scheduler_flags {
            Some(v) => flags(v, &format!("{path}.scheduler_flags"), &mut errs),
            None => Some(defaults.scheduler_flags.clone()),
        };
        if let (Some(sched), Some(fl)) = (scheduler, &scheduler_flags) {
            if let Err(e) = check_flags(sched, fl) {
                match &s.value.scheduler_flags {
                    Some(v) => errs.at(v, format!("{path}.scheduler_flags"), e.to_string()),
                    None => errs.at(
                        s,
                        format!("{path}.scheduler_flags"),
                        format!("{e} (from defaults.scheduler_flags)"),
                    ),
                }
            }
        }
        let forwarding = match &s.value.forwarding {
            Some(v) => word::<Forwarding>(v, &format!("{path}.forwarding"), &mut errs),
            None => Some(defaults.forwarding),
        };
        let persistence_s = match &s.value.persistence_s {
            Some(p) => {
                int::<u32>(p, format!("{path}.persistence_s"), "0..", &mut errs).unwrap_or(0)
            }
            None => defaults.persistence_s,
        };
        let netmask = match &s.value.persistence_netmask {
            Some(m) => netmask(m, &format!("{path}.persistence_netmask"), &mut errs),
            None => defaults.persistence_netmask,
        };
        // An IPv4 VIP groups clients by at most 32 bits.
        if let (Some(len), Some(VipSource::Address(IpAddr::V4(_)))) = (netmask, &vip) {
            if len > 32 {
                let field = format!("{path}.persistence_netmask");
                match &s.value.persistence_netmask {
                    Some(m) => errs.at(m, field, format!("{len} is longer than an IPv4 address (0..=32)")),
                    None => errs.at(s, field, format!("defaults.persistence_netmask {len} is longer than this IPv4 VIP's 32 bits")),
                }
            }
        }
        let persistence = (persistence_s > 0).then_some(Persistence {
            timeout_s: persistence_s,
            netmask,
        });
        let shared: Vec<SocketAddr> = s
            .value
            .backends
            .iter()
            .enumerate()
            .filter_map(|(j, b)| backend(b, &format!("{path}.backends[{j}]"), &mut errs))
            .collect();
        let mut ports = Vec::new();
        let mut seen_ports = BTreeSet::new();
        for (j, p) in s.value.ports.iter().enumerate() {
            let pp = format!("{path}.ports[{j}]");
            let port = match &p.value.port {
                Some(v) => {
                    int::<u16>(v, format!("{pp}.port"), "1..=65535", &mut errs).filter(|n| {
                        if *n == 0 {
                            errs.at(v, format!("{pp}.port"), "0 is out of range 1..=65535");
                        }
                        *n > 0
                    })
                }
                None => {
                    errs.at(p, format!("{pp}.port"), "missing");
                    None
                }
            };
            let protocol = match &p.value.protocol {
                None => Some(Protocol::Tcp),
                Some(sp) => match sp.value.to_lowercase().parse::<Protocol>() {
                    Ok(x) => Some(x),
                    Err(_) => {
                        errs.at(
                            sp,
                            format!("{pp}.protocol"),
                            format!("unknown protocol {:?} (tcp, udp or sctp)", sp.value),
                        );
                        None
                    }
                },
            };
            let mut backends: Vec<SocketAddr> = p
                .value
                .backends
                .iter()
                .enumerate()
                .filter_map(|(k, b)| backend(b, &format!("{pp}.backends[{k}]"), &mut errs))
                .collect();
            if p.value.backends.is_empty() {
                backends = shared.clone();
            }
            if let (Some(port), Some(protocol)) = (port, protocol) {
                if !seen_ports.insert((protocol, port)) {
                    errs.at(p, pp.clone(), format!("duplicate port {port}/{protocol}"));
                }
                if let Some(VipSource::Address(ip)) = &vip {
                    if let Some(other) = fixed_vips.insert((*ip, protocol, port), name.clone()) {
                        if other != name {
                            errs.at(
                                p,
                                pp.clone(),
                                format!("{ip}:{port}/{protocol} is also service {other:?}"),
                            );
                        }
                    }
                }
                ports.push(ServicePort {
                    protocol,
                    port,
                    backends,
                });
            }
        }
        if s.value.ports.is_empty() {
            errs.at(
                s,
                format!("{path}.ports"),
                "a service needs at least one port",
            );
        }
        if errs.list.len() > before {
            continue;
        }
        if let (Some(vip), Some(scheduler), Some(scheduler_flags), Some(forwarding)) =
            (vip, scheduler, scheduler_flags, forwarding)
        {
            services.push(StaticService {
                name,
                vip,
                ports,
                scheduler,
                scheduler_flags,
                forwarding,
                persistence,
            });
        }
    }

    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    Ok(Config {
        id: id.unwrap_or(0),
        peers,
        data_dir,
        interface,
        tls,
        timing,
        lease,
        admin_socket,
        metrics,
        announce,
        drain_connection_wait,
        reconcile_resync,
        pools,
        services,
    })
}

/// What `defaults:` gives every service that does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Defaults {
    scheduler: Scheduler,
    scheduler_flags: BTreeSet<SchedulerFlag>,
    forwarding: Forwarding,
    persistence_s: u32,
    persistence_netmask: Option<u8>,
}

impl Defaults {
    /// The `defaults:` section; what it leaves out is rr, nat, no persistence.
    fn parse(d: Option<&Spanned<DefaultsIn>>, errs: &mut Errors) -> Defaults {
        let mut out = Defaults {
            scheduler: Scheduler::Rr,
            scheduler_flags: BTreeSet::new(),
            forwarding: Forwarding::Nat,
            persistence_s: 0,
            persistence_netmask: None,
        };
        let Some(d) = d else { return out };
        let d = &d.value;
        if let Some(v) = &d.scheduler {
            out.scheduler = word(v, "defaults.scheduler", errs).unwrap_or(out.scheduler);
        }
        if let Some(v) = &d.scheduler_flags {
            if let Some(f) = flags(v, "defaults.scheduler_flags", errs) {
                if let Err(e) = check_flags(out.scheduler, &f) {
                    errs.at(v, "defaults.scheduler_flags", e.to_string());
                }
                out.scheduler_flags = f;
            }
        }
        if let Some(v) = &d.forwarding {
            out.forwarding = word(v, "defaults.forwarding", errs).unwrap_or(out.forwarding);
        }
        if let Some(p) = &d.persistence_s {
            out.persistence_s = int::<u32>(p, "defaults.persistence_s", "0..", errs).unwrap_or(0);
        }
        if let Some(m) = &d.persistence_netmask {
            out.persistence_netmask = netmask(m, "defaults.persistence_netmask", errs);
        }
        out
    }
}

/// One of a typed set of words (scheduler, forwarding, ...).
fn word<T: std::str::FromStr<Err = consensus::domain::UnknownWord>>(
    s: &Spanned<String>,
    field: &str,
    errs: &mut Errors,
) -> Option<T> {
    match s.value.parse::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            errs.at(s, field, e.to_string());
            None
        }
    }
}

/// A list of scheduler flags (`[sh-port, sh-fallback]`).
fn flags(
    list: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    errs: &mut Errors,
) -> Option<BTreeSet<SchedulerFlag>> {
    let before = errs.list.len();
    let out: BTreeSet<SchedulerFlag> = list
        .value
        .iter()
        .enumerate()
        .filter_map(|(i, f)| word::<SchedulerFlag>(f, &format!("{field}[{i}]"), errs))
        .collect();
    (errs.list.len() == before).then_some(out)
}

/// A persistence netmask: a prefix length, 0..=128 (0..=32 for IPv4 VIPs).
fn netmask(m: &Spanned<i64>, field: &str, errs: &mut Errors) -> Option<u8> {
    int::<u8>(m, field, "0..=128", errs).filter(|len| {
        if *len > 128 {
            errs.at(m, field, format!("{len} is out of range 0..=128"));
        }
        *len <= 128
    })
}

fn backend(b: &Spanned<String>, field: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match b.value.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Some(a),
        Ok(_) => {
            errs.at(b, field, "a backend needs a port other than 0");
            None
        }
        Err(_) => {
            errs.at(b, field, format!("{:?} is not ADDRESS:PORT", b.value));
            None
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has problems: one `FILE:LINE:COLUMN: field: problem` line each.
    #[error("{report}")]
    Invalid {
        /// The report, one problem a line.
        report: String,
    },
}

/// Reads and validates a file; the errors name the file too.
pub fn load(path: &std::path::Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|errs| LoadError::Invalid {
        report: crate::problems::report(path, &errs),
    })
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not load.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// It changes what only a restart can.
    #[error("{}: {} changed (these take a restart)", path.display(), fields.join(", "))]
    RestartOnly {
        /// The file.
        path: PathBuf,
        /// The fields.
        fields: Vec<&'static str>,
    },
}

/// SIGHUP: reads `path` again and, if it loads and changes nothing that
/// takes a restart, makes it the running configuration.
pub fn reload(cell: &ConfigCell, path: &std::path::Path) -> Result<Arc<Config>, ReloadError> {
    let new = load(path)?;
    let fields = cell.get().restart_only_changes(&new);
    if !fields.is_empty() {
        return Err(ReloadError::RestartOnly {
            path: path.to_path_buf(),
            fields,
        });
    }
    cell.set(new);
    Ok(cell.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB_D1: &str = include_str!("../../../tests/lab/d1.yaml");

    #[test]
    fn the_lab_configs_are_valid() {
        for text in [
            LAB_D1,
            include_str!("../../../tests/lab/d2.yaml"),
            include_str!("../../../tests/lab/d3.yaml"),
        ] {
            let c = parse(text).unwrap();
            assert_eq!(c.peers.len(), 3);
            assert_eq!(
                c.services[0].vip,
                VipSource::Address("10.10.0.200".parse().unwrap())
            );
            assert_eq!(c.services[0].ports[0].port, 80);
            assert_eq!(c.services[0].ports[0].backends.len(), 2);
        }
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn problems_name_line_and_field() {
        let bad = LAB_D1
            .replace("{port: 80,", "{port: 70000,")
            .replace("scheduler: rr", "scheduler: fastest")
            .replace("10.10.0.22:30080", "10.10.0.22");
        let e = errors(&bad);
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].ports[0].port: 70000 is out of range 1..=65535")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].scheduler: unknown scheduler \"fastest\"")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].backends[1]: \"10.10.0.22\" is not ADDRESS:PORT")),
            "{e:?}"
        );
        for m in &e {
            assert!(!m.starts_with("0:0"), "{m}");
        }
    }

    #[test]
    fn the_drain_wait_defaults_and_is_bounded() {
        let c = parse(LAB_D1).unwrap();
        assert_eq!(
            c.drain_connection_wait,
            Duration::from_millis(DRAIN_CONNECTION_WAIT_MS)
        );
        let short = LAB_D1.replace("announce: {", "drain: {connection_wait_ms: 0}\nannounce: {");
        assert_eq!(parse(&short).unwrap().drain_connection_wait, Duration::ZERO);
        let bad = LAB_D1.replace(
            "announce: {",
            "drain: {connection_wait_ms: 700000}\nannounce: {",
        );
        let e = errors(&bad);
        assert!(
            e.iter()
                .any(|m| m.contains("drain.connection_wait_ms: 700000 is out of range 0..=600000")),
            "{e:?}"
        );
    }

    #[test]
    fn timing_that_breaks_fencing_is_refused() {
        let bad = LAB_D1.replace("lease_ms: 3000", "lease_ms: 2100");
        let e = errors(&bad);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("timing: lease (2100 ms) must be at least election_timeout_max"),
            "{e:?}"
        );
    }

    #[test]
    fn pools_parse_ranges_and_cidrs() {
        assert_eq!(
            parse_range("10.10.0.200-10.10.0.239").unwrap(),
            (
                "10.10.0.200".parse().unwrap(),
                "10.10.0.239".parse().unwrap()
            )
        );
        assert_eq!(
            parse_range("fd10:10::200/120").unwrap(),
            (
                "fd10:10::200".parse().unwrap(),
                "fd10:10::2ff".parse().unwrap()
            )
        );
        assert!(parse_range("10.0.0.5/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_range("10.0.0.9-10.0.0.1")
            .unwrap_err()
            .contains("comes after"));
        assert!(parse_range("10.0.0.1-fd00::1").unwrap_err().contains("mix"));
    }

    #[test]
    fn a_vip_outside_every_pool_and_unknown_fields_are_refused() {
        let bad = LAB_D1.replace("vip: 10.10.0.200", "vip: 192.0.2.1");
        assert!(errors(&bad)
            .iter()
            .any(|m| m.contains("192.0.2.1 is in no pool")));
        let bad = LAB_D1.replace("interface: eth0", "interface: eth0\nintreface: eth1");
        let e = errors(&bad);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("intreface"), "{e:?}");
        let bad = LAB_D1.replace("id: 1\n", "id: 7\n");
        assert!(errors(&bad)
            .iter()
            .any(|m| m.contains("id: 7 is not among the peers")));
    }
}
