//! The director's configuration file (`/etc/director/director.yaml`), its
//! validation and its meaning. The schema is documented in
//! docs/configuration.md; every problem is reported with file, line, column
//! and field, and a file with problems is never used.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use consensus::domain::{Forwarding, Persistence, Protocol, Scheduler, SchedulerFlag};
use consensus::{LeaseTiming, NodeId, Timing};

pub mod health;
mod live;
mod parse;

pub use parse::parse;

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
    /// Whether a Kubernetes Service that names no pool and no address may
    /// get an address from it (`auto_assign`, default true).
    pub auto_assign: bool,
    /// The namespaces whose Services may use it (empty: every namespace).
    pub namespaces: BTreeSet<String>,
    /// Labels a Service must carry to use it (empty: any Service).
    pub service_labels: BTreeMap<String, String>,
}

impl Pool {
    /// A pool of `ranges` open to every Service.
    pub fn new(name: impl Into<String>, ranges: Vec<(IpAddr, IpAddr)>) -> Pool {
        Pool {
            name: name.into(),
            ranges,
            auto_assign: true,
            namespaces: BTreeSet::new(),
            service_labels: BTreeMap::new(),
        }
    }

    /// Whether a Service in `namespace` with `labels` may use the pool.
    pub fn admits(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(namespace))
            && self
                .service_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether the pool has addresses of the family of `v6`.
    pub fn has_family(&self, v6: bool) -> bool {
        self.ranges.iter().any(|(a, _)| a.is_ipv6() == v6)
    }

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
    /// Backends as address and port, with their IPVS weight.
    pub backends: Vec<Backend>,
}

/// One backend of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Address and port (a node and its NodePort).
    pub addr: SocketAddr,
    /// IPVS weight, 0..=65535 (default 1; 0 takes no new connections).
    pub weight: u32,
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
    /// `nat`: source-NAT to the VIP.
    pub snat: bool,
    /// Client persistence (`persistence_s` above 0), with its netmask.
    pub persistence: Option<Persistence>,
    /// How the backends are checked (None: not checked).
    pub health: Option<Box<consensus::domain::HealthCheck>>,
}

/// How a virtual service is balanced: what `defaults:` gives every
/// service, and what a Kubernetes Service gets before its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// IPVS scheduler.
    pub scheduler: Scheduler,
    /// Its flags.
    pub scheduler_flags: BTreeSet<SchedulerFlag>,
    /// How IPVS forwards to the backends.
    pub forwarding: Forwarding,
    /// `nat`: source-NAT to the VIP (false: the nodes route back).
    pub snat: bool,
    /// Client persistence.
    pub persistence: Option<Persistence>,
    /// Backend health checks, before the source's default kind.
    pub health: health::HealthSettings,
}

/// The Kubernetes source (`kubernetes:`): director serves the cluster's
/// `type: LoadBalancer` Services of its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// The kubeconfig file the directors reach the API server with.
    pub kubeconfig: PathBuf,
    /// Its context (None: the file's current context).
    pub context: Option<String>,
    /// The `spec.loadBalancerClass` director serves (`director.io/ipvs`).
    pub class: String,
    /// Whether Services without a class are served too.
    pub claim_unclassed: bool,
    /// Per Service (`namespace/name`): the settings of `defaults:` with the
    /// YAML override applied.
    pub services: BTreeMap<String, ServiceSettings>,
}

/// The default `kubernetes.class`.
pub const KUBERNETES_CLASS: &str = "director.io/ipvs";

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
    /// What `defaults:` gives a service.
    pub defaults: ServiceSettings,
    /// Static services.
    pub services: Vec<StaticService>,
    /// The Kubernetes source, if configured.
    pub kubernetes: Option<Kubernetes>,
    /// The IPVS connection-sync daemons.
    pub sync: SyncDaemons,
}

/// The kernel's IPVS connection-sync daemons (`sync:`): every data
/// director runs a master (sending the connections it forwards) and a
/// backup (learning the others'), so a new owner of a VIP knows the open
/// connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDaemons {
    /// Whether the daemons run.
    pub enabled: bool,
    /// The interface they use (None: `interface`).
    pub interface: Option<String>,
    /// The sync ID: a backup takes only messages with its ID, so two
    /// clusters on one LAN need different IDs.
    pub sync_id: u8,
    /// Multicast group.
    pub group: IpAddr,
    /// UDP port.
    pub port: u16,
    /// Multicast TTL.
    pub ttl: u8,
    /// Whether conntrackd syncs the netfilter connection table too (the
    /// NAT state of `nat` with its source NAT).
    pub conntrack: bool,
    /// The conntrackd program.
    pub conntrackd: PathBuf,
}

impl Default for SyncDaemons {
    fn default() -> Self {
        SyncDaemons {
            enabled: true,
            interface: None,
            sync_id: 1,
            group: IpAddr::V4(std::net::Ipv4Addr::new(224, 0, 0, 81)),
            port: 8848,
            ttl: 1,
            conntrack: true,
            conntrackd: PathBuf::from("conntrackd"),
        }
    }
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
        let api = |c: &Config| {
            c.kubernetes
                .as_ref()
                .map(|k| (k.kubeconfig.clone(), k.context.clone()))
        };
        check("kubernetes.kubeconfig", api(self) == api(new));
        changed
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
    use super::parse::parse_range;
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
    fn snat_under_dr_is_refused_where_it_is_written() {
        let bad = LAB_D1.replacen(
            "    scheduler: rr\n",
            "    scheduler: rr\n    forwarding: dr\n    snat: false\n",
            1,
        ) + "kubernetes:\n  kubeconfig: /etc/director/kubeconfig\n  services:\n    \
               - service: shop/checkout\n      forwarding: dr\n      snat: true\n";
        let e = errors(&bad);
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].snat: applies to forwarding nat only")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("kubernetes.services[0].snat: applies to forwarding nat only")),
            "{e:?}"
        );
    }

    #[test]
    fn a_backend_may_carry_a_weight() {
        let weighted = LAB_D1.replacen(
            "\"10.10.0.22:30080\"",
            "{address: \"10.10.0.22:30080\", weight: 3}",
            1,
        );
        assert_ne!(weighted, LAB_D1);
        let c = parse(&weighted).unwrap();
        let b = &c.services[0].ports[0].backends;
        assert_eq!(
            b.iter()
                .map(|b| (b.addr.to_string(), b.weight))
                .collect::<Vec<_>>(),
            [
                ("10.10.0.21:30080".to_string(), 1),
                ("10.10.0.22:30080".to_string(), 3)
            ]
        );
        let bad = LAB_D1.replacen(
            "\"10.10.0.22:30080\"",
            "{address: \"10.10.0.22:30080\", weight: 70000}",
            1,
        );
        let e = errors(&bad);
        assert!(
            e.iter()
                .any(|m| m
                    .contains("services[0].backends[1].weight: 70000 is out of range 0..=65535")),
            "{e:?}"
        );
        assert!(!e.iter().any(|m| m.starts_with("0:0")), "{e:?}");
        let bad = LAB_D1.replacen("\"10.10.0.22:30080\"", "{adress: \"10.10.0.22:30080\"}", 1);
        let e = errors(&bad);
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].backends[1].adress: unknown field")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("services[0].backends[1].address: missing")),
            "{e:?}"
        );
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
            .0
            .contains("host bits"));
        assert!(parse_range("10.0.0.9-10.0.0.1")
            .unwrap_err()
            .0
            .contains("comes after"));
        assert!(parse_range("10.0.0.1-fd00::1")
            .unwrap_err()
            .0
            .contains("mix"));
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
