//! Parsing and validating the file, one function per section (members,
//! host, timing, endpoints, announce, drain, pools, defaults, reconcile,
//! services). Every problem is collected with its line, column and field;
//! the file is used only when there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use consensus::domain::{check_flags, Forwarding, Persistence, Protocol, Scheduler, SchedulerFlag};
use consensus::{LeaseTiming, NodeId, Timing};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::*;

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
    #[expect(
        clippy::vec_box,
        reason = "a service read with positions is about 850 bytes: boxed, 10,000 of them grow the list without being copied"
    )]
    services: Vec<Box<Spanned<ServiceIn>>>,
    kubernetes: Option<Spanned<KubernetesIn>>,
    sync: Option<Spanned<SyncIn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncIn {
    enabled: Option<Spanned<bool>>,
    interface: Option<Spanned<String>>,
    sync_id: Option<Spanned<i64>>,
    group: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    ttl: Option<Spanned<i64>>,
    conntrack: Option<Spanned<bool>>,
    conntrackd: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesIn {
    kubeconfig: Option<Spanned<String>>,
    context: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    claim_unclassed: Option<Spanned<bool>>,
    #[serde(default)]
    services: Vec<Spanned<KubeServiceIn>>,
}

/// A per-Service override of `defaults:` (`kubernetes.services[]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubeServiceIn {
    service: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    forwarding: Option<Spanned<String>>,
    persistence_s: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<i64>>,
    /// Boxed: read with positions, a health block is about 1 KB, and most
    /// services of a large file have none.
    health: Option<Box<Spanned<health::HealthIn>>>,
    snat: Option<Spanned<bool>>,
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
    auto_assign: Option<Spanned<bool>>,
    namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    service_labels: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsIn {
    scheduler: Option<Spanned<String>>,
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    forwarding: Option<Spanned<String>>,
    persistence_s: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<i64>>,
    /// Boxed: read with positions, a health block is about 1 KB, and most
    /// services of a large file have none.
    health: Option<Box<Spanned<health::HealthIn>>>,
    snat: Option<Spanned<bool>>,
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
    backends: Vec<Spanned<BackendIn>>,
    scheduler: Option<Spanned<String>>,
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    forwarding: Option<Spanned<String>>,
    persistence_s: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<i64>>,
    /// Boxed: read with positions, a health block is about 1 KB, and most
    /// services of a large file have none.
    health: Option<Box<Spanned<health::HealthIn>>>,
    snat: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortIn {
    port: Option<Spanned<i64>>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    backends: Vec<Spanned<BackendIn>>,
}

/// A backend: `"ADDRESS:PORT"` (weight 1), or `{address: "ADDRESS:PORT",
/// weight: N}`.
#[derive(Debug)]
enum BackendIn {
    Address(String),
    Weighted(WeightedIn),
}

/// Either form, told apart by what the reader finds: a string or a map.
/// (serde's `untagged` would copy every backend into a buffer first and
/// try each form in turn: 40,000 backends in a large file.)
impl<'de> Deserialize<'de> for BackendIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = BackendIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ADDRESS:PORT\" or {address: \"ADDRESS:PORT\", weight: N}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BackendIn, E> {
                Ok(BackendIn::Address(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<BackendIn, E> {
                Ok(BackendIn::Address(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendIn, A::Error> {
                WeightedIn::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BackendIn::Weighted)
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Debug, Deserialize)]
struct WeightedIn {
    address: Option<String>,
    weight: Option<i64>,
    /// Anything else, reported by name.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

type Errors = crate::problems::Problems;

/// A field's path in the file (`services[3].ports[0].port`), written out
/// only when a problem is reported there: a file of 10,000 services has
/// tens of thousands of fields that are read and found right.
#[derive(Clone, Copy)]
enum Field<'a> {
    /// `NAME[I]` at the top of the file.
    Item(&'static str, usize),
    /// `PARENT.NAME`.
    Key(&'a Field<'a>, &'static str),
    /// `PARENT.NAME[I]`.
    Index(&'a Field<'a>, &'static str, usize),
}

impl<'a> Field<'a> {
    fn key(&'a self, name: &'static str) -> Field<'a> {
        Field::Key(self, name)
    }

    fn index(&'a self, name: &'static str, i: usize) -> Field<'a> {
        Field::Index(self, name, i)
    }
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Field::Item(name, i) => write!(f, "{name}[{i}]"),
            Field::Key(parent, name) => write!(f, "{parent}.{name}"),
            Field::Index(parent, name, i) => write!(f, "{parent}.{name}[{i}]"),
        }
    }
}

impl From<Field<'_>> for String {
    fn from(f: Field<'_>) -> String {
        f.to_string()
    }
}
use crate::problems::int_in as int;

/// Parses one address range: `A`, `A-B` or `A/LEN`.
pub(super) fn parse_range(s: &str) -> Result<(IpAddr, IpAddr), BadRange> {
    range_of(s).map_err(BadRange)
}

/// A pool entry that is not an address, a range or a CIDR, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRange(pub String);

fn range_of(s: &str) -> Result<(IpAddr, IpAddr), String> {
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
///
/// A file is read first by the quick reader ([`crate::subset`]), without
/// positions: at 10,000 services that is what keeps a reload short. Only a
/// file outside its subset, or one with a problem, is read again by the full
/// YAML parser, whose positions the problems are reported with.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    if let Ok(doc) = crate::subset::read_typed_by_yaml::<FileIn>(text) {
        if let Ok(config) = build(&doc) {
            return Ok(config);
        }
    }
    parse_located(text)
}

/// Parses with the full YAML parser, every value with its position.
pub(super) fn parse_located(text: &str) -> Result<Config, Vec<ConfigError>> {
    let doc: FileIn = serde_saphyr::from_str_with_options(text, crate::problems::sized_for(text))
        .map_err(|e| vec![crate::problems::from_saphyr(&e)])?;
    build(&doc)
}

/// Validates a read file and builds the configuration.
fn build(doc: &FileIn) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();

    let (id, peers) = members(doc, &mut errs);
    let (data_dir, interface, tls) = host(doc, &mut errs);
    let (timing, lease) = timing(doc, &mut errs);
    let (admin_socket, metrics) = endpoints(doc, &mut errs);
    let announce = announce(doc, &mut errs);
    let drain_connection_wait = drain(doc, &mut errs);
    let (pools, pool_names) = pools(doc, &mut errs);
    let defaults = Defaults::parse(doc.defaults.as_ref(), &mut errs);
    let reconcile_resync = reconcile(doc, &mut errs);
    let services = services(doc, &mut errs, &pools, &pool_names, &defaults);
    let kubernetes = kubernetes(doc, &mut errs, &defaults);
    let sync = sync(doc, &mut errs);

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
        defaults: defaults.settings(),
        services,
        kubernetes,
        sync,
    })
}

/// The `sync` part of the file.
fn sync(doc: &FileIn, errs: &mut Errors) -> SyncDaemons {
    let mut out = SyncDaemons::default();
    let Some(s) = &doc.sync else { return out };
    let v = &s.value;
    if let Some(e) = &v.enabled {
        out.enabled = e.value;
    }
    if let Some(i) = &v.interface {
        if i.value.is_empty() || i.value.len() > 15 || i.value.contains(['/', ' ']) {
            errs.at(
                i,
                "sync.interface",
                format!("{:?} is not an interface name", i.value),
            );
        } else {
            out.interface = Some(i.value.clone());
        }
    }
    if let Some(n) = &v.sync_id {
        // 0 would make the backup daemon take every cluster's messages.
        match int::<u8>(n, "sync.sync_id", "1..=255", errs) {
            Some(0) => errs.at(n, "sync.sync_id", "0 is out of range 1..=255"),
            Some(id) => out.sync_id = id,
            None => {}
        }
    }
    if let Some(g) = &v.group {
        match g.value.parse::<IpAddr>() {
            Ok(ip) if ip.is_multicast() => out.group = ip,
            _ => errs.at(
                g,
                "sync.group",
                format!("{:?} is not a multicast address", g.value),
            ),
        }
    }
    if let Some(p) = &v.port {
        match int::<u16>(p, "sync.port", "1..=65535", errs) {
            Some(0) => errs.at(p, "sync.port", "0 is out of range 1..=65535"),
            Some(n) => out.port = n,
            None => {}
        }
    }
    if let Some(c) = &v.conntrack {
        out.conntrack = c.value;
    }
    if let Some(p) = &v.conntrackd {
        if p.value.is_empty() {
            errs.at(p, "sync.conntrackd", "empty (the conntrackd program)");
        } else {
            out.conntrackd = PathBuf::from(&p.value);
        }
    }
    if let Some(t) = &v.ttl {
        match int::<u8>(t, "sync.ttl", "1..=255", errs) {
            Some(0) => errs.at(t, "sync.ttl", "0 is out of range 1..=255"),
            Some(n) => out.ttl = n,
            None => {}
        }
    }
    out
}

/// The `members` part of the file.
fn members(doc: &FileIn, errs: &mut Errors) -> (Option<NodeId>, Vec<Peer>) {
    let id: Option<NodeId> = match &doc.id {
        Some(v) => int(v, "id", "1..", errs).filter(|id: &u64| {
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
            Some(v) => int(v, format!("{path}.id"), "1..", errs),
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
    (id, peers)
}

/// The `host` part of the file.
fn host(doc: &FileIn, errs: &mut Errors) -> (PathBuf, String, Option<consensus::TlsFiles>) {
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
            let ca = get(&t.value.ca, "ca", errs);
            let cert = get(&t.value.cert, "cert", errs);
            let key = get(&t.value.key, "key", errs);
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
    (data_dir, interface, tls)
}

/// The `timing` part of the file.
fn timing(doc: &FileIn, errs: &mut Errors) -> (Timing, LeaseTiming) {
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
            errs,
        );
        set(
            &v.election_min_ms,
            "election_min_ms",
            &mut timing.election_min_ms,
            errs,
        );
        set(
            &v.election_max_ms,
            "election_max_ms",
            &mut timing.election_max_ms,
            errs,
        );
        set(&v.lease_ms, "lease_ms", &mut lease.lease_ms, errs);
        set(&v.margin_ms, "margin_ms", &mut lease.margin_ms, errs);
        set(&v.renew_ms, "renew_ms", &mut lease.renew_ms, errs);
        if let Err(e) = consensus::lease::validate(&timing, &lease) {
            errs.at(t, "timing", format!("{e} (see docs/fencing.md)"));
        }
    }
    (timing, lease)
}

/// The `endpoints` part of the file.
fn endpoints(doc: &FileIn, errs: &mut Errors) -> (PathBuf, Option<SocketAddr>) {
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
    (admin_socket, metrics)
}

/// The `announce` part of the file.
fn announce(doc: &FileIn, errs: &mut Errors) -> Announce {
    let mut announce = Announce {
        count: 5,
        interval_ms: 200,
        refresh_s: 0,
    };
    if let Some(a) = &doc.announce {
        if let Some(c) = &a.value.count {
            match int::<u32>(c, "announce.count", "1..=100", errs) {
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
            if let Some(n) = int::<u64>(i, "announce.interval_ms", "0..", errs) {
                announce.interval_ms = n;
            }
        }
        if let Some(r) = &a.value.refresh_s {
            if let Some(n) = int::<u64>(r, "announce.refresh_s", "0..", errs) {
                announce.refresh_s = n;
            }
        }
    }
    announce
}

/// The `drain` part of the file.
fn drain(doc: &FileIn, errs: &mut Errors) -> Duration {
    let mut drain_connection_wait = Duration::from_millis(DRAIN_CONNECTION_WAIT_MS);
    if let Some(w) = doc
        .drain
        .as_ref()
        .and_then(|d| d.value.connection_wait_ms.as_ref())
    {
        match int::<u64>(w, "drain.connection_wait_ms", "0..=600000", errs) {
            Some(n) if n <= 600_000 => drain_connection_wait = Duration::from_millis(n),
            Some(_) => errs.at(
                w,
                "drain.connection_wait_ms",
                format!("{} is out of range 0..=600000", w.value),
            ),
            None => {}
        }
    }
    drain_connection_wait
}

/// The `pools` part of the file.
fn pools(doc: &FileIn, errs: &mut Errors) -> (Vec<Pool>, BTreeSet<String>) {
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
                Err(e) => errs.at(a, format!("{path}.addresses[{j}]"), e.to_string()),
            }
        }
        if p.value.addresses.is_empty() {
            errs.at(
                p,
                format!("{path}.addresses"),
                "a pool needs at least one address",
            );
        }
        let mut pool = Pool::new(name, ranges);
        if let Some(a) = &p.value.auto_assign {
            pool.auto_assign = a.value;
        }
        if let Some(ns) = &p.value.namespaces {
            for (j, n) in ns.value.iter().enumerate() {
                if n.value.is_empty() {
                    errs.at(n, format!("{path}.namespaces[{j}]"), "empty namespace");
                }
                pool.namespaces.insert(n.value.clone());
            }
        }
        if let Some(l) = &p.value.service_labels {
            pool.service_labels = l.value.clone();
        }
        pools.push(pool);
    }
    (pools, pool_names)
}

/// The `reconcile` part of the file.
fn reconcile(doc: &FileIn, errs: &mut Errors) -> Duration {
    let reconcile_resync = Duration::from_secs(
        doc.reconcile
            .as_ref()
            .and_then(|r| r.value.resync_s.as_ref())
            .and_then(|v| int::<u64>(v, "reconcile.resync_s", "1..=3600", errs))
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
    reconcile_resync
}

/// The `services` part of the file.
fn services(
    doc: &FileIn,
    errs: &mut Errors,
    pools: &[Pool],
    pool_names: &BTreeSet<String>,
    defaults: &Defaults,
) -> Vec<StaticService> {
    let mut services = Vec::with_capacity(doc.services.len());
    let mut names = BTreeSet::new();
    let mut fixed_vips: BTreeMap<(IpAddr, Protocol, u16), String> = BTreeMap::new();
    for (i, s) in doc.services.iter().enumerate() {
        let path = Field::Item("services", i);
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
            Some(v) => word::<Scheduler>(v, &format!("{path}.scheduler"), errs),
            None => Some(defaults.scheduler),
        };
        let scheduler_flags = match &s.value.scheduler_flags {
            Some(v) => flags(v, &format!("{path}.scheduler_flags"), errs),
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
            Some(v) => word::<Forwarding>(v, &format!("{path}.forwarding"), errs),
            None => Some(defaults.forwarding),
        };
        let persistence_s = match &s.value.persistence_s {
            Some(p) => int::<u32>(p, format!("{path}.persistence_s"), "0..", errs).unwrap_or(0),
            None => defaults.persistence_s,
        };
        let netmask = match &s.value.persistence_netmask {
            Some(m) => netmask(m, &format!("{path}.persistence_netmask"), errs),
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
        let snat = s.value.snat.as_ref().map_or(defaults.snat, |v| v.value);
        if let (Some(v), Some(Forwarding::Dr)) = (&s.value.snat, forwarding) {
            errs.at(
                v,
                format!("{path}.snat"),
                "applies to forwarding nat only (dr keeps the client's address by itself)",
            );
        }
        let health = match &s.value.health {
            Some(h) => health::apply(h, &defaults.health, &format!("{path}.health"), errs),
            None => defaults.health.clone(),
        }
        .resolve(health::HealthKind::Tcp, None)
        .map(Box::new);
        let shared: Vec<Backend> = s
            .value
            .backends
            .iter()
            .enumerate()
            .filter_map(|(j, b)| backend(b, path.index("backends", j), errs))
            .collect();
        let mut ports = Vec::new();
        let mut seen_ports = BTreeSet::new();
        for (j, p) in s.value.ports.iter().enumerate() {
            let pp = path.index("ports", j);
            let port = match &p.value.port {
                Some(v) => int::<u16>(v, pp.key("port"), "1..=65535", errs).filter(|n| {
                    if *n == 0 {
                        errs.at(v, format!("{pp}.port"), "0 is out of range 1..=65535");
                    }
                    *n > 0
                }),
                None => {
                    errs.at(p, format!("{pp}.port"), "missing");
                    None
                }
            };
            let protocol = match &p.value.protocol {
                None => Some(Protocol::Tcp),
                Some(sp) => match sp
                    .value
                    .parse::<Protocol>()
                    .or_else(|_| sp.value.to_lowercase().parse::<Protocol>())
                {
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
            let mut backends: Vec<Backend> = p
                .value
                .backends
                .iter()
                .enumerate()
                .filter_map(|(k, b)| backend(b, pp.index("backends", k), errs))
                .collect();
            if p.value.backends.is_empty() {
                backends = shared.clone();
            }
            if let (Some(port), Some(protocol)) = (port, protocol) {
                if !seen_ports.insert((protocol, port)) {
                    errs.at(p, pp, format!("duplicate port {port}/{protocol}"));
                }
                if let Some(VipSource::Address(ip)) = &vip {
                    if let Some(other) = fixed_vips.insert((*ip, protocol, port), name.clone()) {
                        if other != name {
                            errs.at(
                                p,
                                pp,
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
                snat,
                persistence,
                health,
            });
        }
    }
    services
}

/// What `defaults:` gives every service that does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Defaults {
    scheduler: Scheduler,
    scheduler_flags: BTreeSet<SchedulerFlag>,
    forwarding: Forwarding,
    persistence_s: u32,
    persistence_netmask: Option<u8>,
    health: health::HealthSettings,
    snat: bool,
}

impl Defaults {
    /// As the settings a service gets.
    fn settings(&self) -> ServiceSettings {
        ServiceSettings {
            scheduler: self.scheduler,
            scheduler_flags: self.scheduler_flags.clone(),
            forwarding: self.forwarding,
            persistence: (self.persistence_s > 0).then_some(Persistence {
                timeout_s: self.persistence_s,
                netmask: self.persistence_netmask,
            }),
            health: self.health.clone(),
            snat: self.snat,
        }
    }

    /// The `defaults:` section; what it leaves out is rr, nat, no persistence.
    fn parse(d: Option<&Spanned<DefaultsIn>>, errs: &mut Errors) -> Defaults {
        let mut out = Defaults {
            scheduler: Scheduler::Rr,
            scheduler_flags: BTreeSet::new(),
            forwarding: Forwarding::Nat,
            persistence_s: 0,
            persistence_netmask: None,
            health: health::HealthSettings::default(),
            snat: true,
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
        if let Some(h) = &d.health {
            out.health = health::apply(h, &out.health, "defaults.health", errs);
        }
        if let Some(v) = &d.snat {
            out.snat = v.value;
        }
        out
    }
}

/// The `kubernetes` part of the file.
fn kubernetes(doc: &FileIn, errs: &mut Errors, defaults: &Defaults) -> Option<Kubernetes> {
    let k = doc.kubernetes.as_ref()?;
    let kubeconfig = match &k.value.kubeconfig {
        Some(p) if !p.value.is_empty() => PathBuf::from(&p.value),
        _ => {
            errs.at(
                k,
                "kubernetes.kubeconfig",
                "missing (the path of the directors' kubeconfig)",
            );
            PathBuf::new()
        }
    };
    let class = match &k.value.class {
        Some(c) => {
            if !qualified_name(&c.value) {
                errs.at(
                    c,
                    "kubernetes.class",
                    format!(
                        "{:?} is not a label-style qualified name (like director.io/ipvs)",
                        c.value
                    ),
                );
            }
            c.value.clone()
        }
        None => KUBERNETES_CLASS.to_string(),
    };
    let mut services = BTreeMap::new();
    for (i, s) in k.value.services.iter().enumerate() {
        let path = format!("kubernetes.services[{i}]");
        let key = match &s.value.service {
            Some(n) => {
                let ok = n.value.split_once('/').is_some_and(|(ns, name)| {
                    !ns.is_empty() && !name.is_empty() && !name.contains('/')
                });
                if !ok {
                    errs.at(
                        n,
                        format!("{path}.service"),
                        format!("{:?} is not NAMESPACE/NAME", n.value),
                    );
                    continue;
                }
                n.value.clone()
            }
            None => {
                errs.at(s, format!("{path}.service"), "missing (NAMESPACE/NAME)");
                continue;
            }
        };
        let mut set = defaults.settings();
        let o = &s.value;
        if let Some(v) = &o.scheduler {
            if let Some(x) = word(v, &format!("{path}.scheduler"), errs) {
                set.scheduler = x;
            }
        }
        if let Some(v) = &o.scheduler_flags {
            if let Some(f) = flags(v, &format!("{path}.scheduler_flags"), errs) {
                set.scheduler_flags = f;
            }
        }
        if let Err(e) = check_flags(set.scheduler, &set.scheduler_flags) {
            errs.at(s, format!("{path}.scheduler_flags"), e.to_string());
        }
        if let Some(v) = &o.forwarding {
            if let Some(x) = word(v, &format!("{path}.forwarding"), errs) {
                set.forwarding = x;
            }
        }
        let mut timeout = set.persistence.map_or(0, |p| p.timeout_s);
        let mut mask = set.persistence.and_then(|p| p.netmask);
        if let Some(p) = &o.persistence_s {
            timeout = int::<u32>(p, format!("{path}.persistence_s"), "0..", errs).unwrap_or(0);
        }
        if let Some(m) = &o.persistence_netmask {
            mask = netmask(m, &format!("{path}.persistence_netmask"), errs);
        }
        set.persistence = (timeout > 0).then_some(Persistence {
            timeout_s: timeout,
            netmask: mask,
        });
        if let Some(h) = &o.health {
            set.health = health::apply(h, &set.health, &format!("{path}.health"), errs);
        }
        if let Some(v) = &o.snat {
            set.snat = v.value;
            if set.forwarding == Forwarding::Dr {
                errs.at(
                    v,
                    format!("{path}.snat"),
                    "applies to forwarding nat only (dr keeps the client's address by itself)",
                );
            }
        }
        if services.insert(key.clone(), set).is_some() {
            errs.at(
                s,
                format!("{path}.service"),
                format!("duplicate override for {key:?}"),
            );
        }
    }
    Some(Kubernetes {
        kubeconfig,
        context: k.value.context.as_ref().map(|c| c.value.clone()),
        class,
        claim_unclassed: k.value.claim_unclassed.as_ref().is_some_and(|c| c.value),
        services,
    })
}

/// A Kubernetes qualified name: an optional DNS prefix and `/`, then a name
/// of at most 63 alphanumerics, `-`, `_` or `.` that starts and ends
/// alphanumeric (the form `spec.loadBalancerClass` takes).
pub fn qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    name_ok && prefix_ok
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

fn backend(b: &Spanned<BackendIn>, field: Field<'_>, errs: &mut Errors) -> Option<Backend> {
    let (text, weight) = match &b.value {
        BackendIn::Address(text) => (text, 1),
        BackendIn::Weighted(w) => {
            for key in w.unknown.keys() {
                errs.at(
                    b,
                    format!("{field}.{key}"),
                    "unknown field (a backend has address and weight)",
                );
            }
            let weight = match w.weight {
                None => 1,
                Some(n) => match u32::try_from(n) {
                    Ok(n) if n <= 65_535 => n,
                    _ => {
                        errs.at(
                            b,
                            format!("{field}.weight"),
                            format!("{n} is out of range 0..=65535"),
                        );
                        return None;
                    }
                },
            };
            match &w.address {
                Some(text) => (text, weight),
                None => {
                    errs.at(b, format!("{field}.address"), "missing");
                    return None;
                }
            }
        }
    };
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(Backend { addr, weight }),
        Ok(_) => {
            errs.at(b, field, "a backend needs a port other than 0");
            None
        }
        Err(_) => {
            errs.at(b, field, format!("{text:?} is not ADDRESS:PORT"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of docs/configuration.md (every section), without the
    /// markdown around it.
    fn documented_example() -> String {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let len = doc[start..].find("```").expect("its end");
        doc[start..start + len].to_string()
    }

    fn corpus() -> Vec<String> {
        let lab = include_str!("../../../tests/lab/d1.yaml");
        vec![
            documented_example(),
            lab.to_string(),
            include_str!("../../../tests/lab/d2.yaml").to_string(),
            include_str!("../../../tests/lab/d3.yaml").to_string(),
            // The scale benchmark's shape, and its weight change.
            format!(
                "{lab}  - name: s1\n    vip: 10.10.0.201\n    ports:\n      - {{port: 80, protocol: tcp}}\n    \
                 backends: [{{address: \"10.10.0.21:30080\", weight: 2}}, \"10.10.0.22:30080\"]\n"
            ),
            // IPv6, block sequences at their key's indentation.
            format!(
                "{}services:\n- name: v6\n  vip: fd10:10::201\n  ports:\n  - port: 443\n  backends:\n  - \"[fd10:10::21]:30443\"\n",
                &lab[..lab.find("services:\n").expect("a services section")]
            ),
        ]
    }

    /// Every valid file of the corpus is read by the quick reader, and the
    /// configuration it gives is the full parser's.
    #[test]
    fn the_quick_reader_and_the_full_parser_agree() {
        for text in corpus() {
            let quick = crate::subset::read_typed_by_yaml::<FileIn>(&text)
                .unwrap_or_else(|_| panic!("outside the quick subset:\n{text}"));
            let full = parse_located(&text).unwrap();
            assert_eq!(build(&quick).unwrap(), full, "{text}");
            assert_eq!(parse(&text).unwrap(), full);
        }
    }

    /// Values the full parser types otherwise (YAML 1.1 booleans, floats,
    /// other notations, nulls), styles outside the subset, maps the full
    /// parser refuses (a key twice, a null key), and files with problems go
    /// to the full parser: the same configuration, or the same problems
    /// with their lines.
    #[test]
    fn what_the_quick_reader_is_unsure_of_goes_to_the_full_parser() {
        let lab = include_str!("../../../tests/lab/d1.yaml");
        let labels = |m: &str| {
            lab.replace(
                "    addresses: [\"10.10.0.200",
                &format!("    service_labels: {m}\n    addresses: [\"10.10.0.200"),
            )
        };
        let variants = [
            lab.replace("insecure: true", "insecure: yes"),
            lab.replace("insecure: true", "insecure: True"),
            lab.replace("heartbeat_ms: 150", "heartbeat_ms: 0x96"),
            lab.replace("heartbeat_ms: 150", "heartbeat_ms: 0X96"),
            lab.replace("heartbeat_ms: 150", "heartbeat_ms: 1_50"),
            lab.replace("heartbeat_ms: 150", "heartbeat_ms: 150.0"),
            lab.replace("heartbeat_ms: 150", "heartbeat_ms: \"150\""),
            lab.replace("interface: eth0", "interface: 1:20"),
            lab.replace("interface: eth0", "interface: off"),
            lab.replace("interface: eth0", "interface: ~"),
            lab.replace("interface: eth0", "interface: \"eth\\x30\""),
            lab.replace("interface: eth0", "interface: |\n  eth0"),
            lab.replace("insecure: true", "insecure: true\nunknown: 1"),
            lab.replace("{port: 80,", "{port: 70000,"),
            labels("{tier: a, tier: b}"),
            labels("{null: public}"),
            labels("{\"__serde_saphyr_private_spanned\": x}"),
        ];
        for text in variants {
            assert_ne!(text, lab);
            let quick = crate::subset::read_typed_by_yaml::<FileIn>(&text);
            assert!(quick.is_err() || build(&quick.unwrap()).is_err(), "{text}");
            assert_eq!(parse(&text), parse_located(&text), "{text}");
        }
        let bad = lab.replace("{port: 80,", "{port: 70000,");
        let errs = parse(&bad).unwrap_err();
        assert!(errs.iter().all(|e| e.line > 0), "{errs:?}");
        // In the subset, and read the same either way.
        let quoted = lab.replace("interface: eth0", "interface: 'eth0'");
        assert!(crate::subset::read_typed_by_yaml::<FileIn>(&quoted).is_ok());
        assert_eq!(parse(&quoted).unwrap(), parse_located(lab).unwrap());
    }

    /// The quick reader answers a value's type as the full parser would.
    #[test]
    fn scalars_are_typed_as_the_full_parser_types_them() {
        use crate::subset::read_typed_by_yaml as quick;
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        enum Any {
            Bool(bool),
            Int(i64),
            Text(String),
        }
        for (text, want) in [
            ("v: true", Some(Any::Bool(true))),
            ("v: false", Some(Any::Bool(false))),
            ("v: 42", Some(Any::Int(42))),
            ("v: -7", Some(Any::Int(-7))),
            ("v: \"42\"", Some(Any::Text("42".into()))),
            ("v: 10.20.0.1", Some(Any::Text("10.20.0.1".into()))),
            (
                "v: 10.10.0.21:30080",
                Some(Any::Text("10.10.0.21:30080".into())),
            ),
            ("v: fd10::21", Some(Any::Text("fd10::21".into()))),
            ("v: /healthz", Some(Any::Text("/healthz".into()))),
            ("v: eth0", Some(Any::Text("eth0".into()))),
            ("v: yes", None),
            ("v: On", None),
            ("v: 1.5", None),
            ("v: 1e3", None),
            ("v: 0x1f", None),
            ("v: 0X1F", None),
            ("v: -0B101", None),
            ("v: 0o17", None),
            ("v: 007", None),
            ("v: 1_000", None),
            ("v: 1:20", None),
            ("v: .inf", None),
            ("v: nan", None),
            ("v: null", None),
        ] {
            let got = quick::<BTreeMap<String, Any>>(text)
                .ok()
                .map(|mut m| m.remove("v").unwrap());
            assert_eq!(got, want, "{text}");
            if let Some(want) = got {
                let full: BTreeMap<String, Any> = serde_saphyr::from_str(text).unwrap();
                assert_eq!(full["v"], want, "{text}");
            }
        }
    }
}
