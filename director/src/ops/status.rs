//! The status document: what `director status` prints (table, JSON, YAML)
//! and what `/metrics` renders, one typed struct built by the daemon
//! ([`build`]) and read by the CLI. Field names are an interface: scripts
//! read `director status -o json`; fields are added, never renamed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use consensus::state::ClusterState;
use serde::{Deserialize, Serialize};

use super::admin::Daemon;
use crate::config::PeerRole;

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human tables.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// This director's view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Who answers.
    pub director: Me,
    /// The Raft group.
    pub cluster: Cluster,
    /// This director's ownership lease.
    pub lease: Lease,
    /// Every allocated VIP.
    pub vips: Vec<Vip>,
    /// Every virtual service port, as programmed here.
    pub services: Vec<ServiceStatus>,
    /// The data plane's reconcilers.
    pub reconcilers: Vec<ReconcilerStatus>,
    /// Gratuitous ARPs and unsolicited neighbour advertisements sent.
    pub announcements_sent: u64,
    /// The Kubernetes source (absent when not configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeStatus>,
    /// The backend health checks (None on a witness).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSummary>,
    /// The IPVS connection-sync daemons (None on a witness or without
    /// IPVS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// The Kubernetes view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeStatus {
    /// Whether the API server answers the watches.
    pub api_reachable: bool,
    /// Since when it has (or has not), Unix ms.
    pub api_since_unix_ms: Option<u64>,
    /// ... and how long ago that was.
    pub api_since_ms_ago: Option<u64>,
    /// The last error while unreachable.
    pub api_error: Option<String>,
    /// Whether every watch has listed everything once.
    pub synced: bool,
    /// Every Service director serves, by namespace and name.
    pub services: Vec<KubeService>,
}

/// A Kubernetes Service director serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeService {
    /// `namespace/name`.
    pub service: String,
    /// Its UID.
    pub uid: String,
    /// Its VIPs (one per family it got).
    pub vips: Vec<KubeVip>,
    /// Every port of every VIP with its backends.
    pub ports: Vec<KubePort>,
}

/// A VIP of a Kubernetes Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeVip {
    /// The address.
    pub vip: String,
    /// Where it came from: `pool NAME` or `requested`.
    pub from: String,
    /// The owner's name.
    pub owner_name: Option<String>,
}

/// A port of a Kubernetes Service's VIP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubePort {
    /// `TCP 10.10.0.201:80`.
    pub service: String,
    /// Its backends.
    pub backends: Vec<KubeBackend>,
}

/// A backend: a node and its NodePort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeBackend {
    /// The node's name.
    pub node: Option<String>,
    /// Its address.
    pub address: String,
    /// The NodePort (the Service port in direct routing).
    pub port: u16,
    /// The weight in the replicated state.
    pub weight: u32,
}

/// The director answering.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Me {
    /// Raft id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
}

/// The Raft group as seen here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    /// The leader's id.
    pub leader: Option<u64>,
    /// The leader's name.
    pub leader_name: Option<String>,
    /// Raft term.
    pub term: u64,
    /// This director's Raft role: `leader`, `follower`, `candidate`,
    /// `learner` or `shutdown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Every configured member.
    pub members: Vec<Member>,
}

/// A member of the group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Raft transport address.
    pub address: String,
    /// `data` or `witness`.
    pub role: String,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// Milliseconds since the leader last heard from it (on the leader).
    pub last_contact_ms: Option<u64>,
}

/// The ownership lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lease {
    /// Held now.
    pub held: bool,
    /// Milliseconds left.
    pub remaining_ms: Option<u64>,
}

/// A VIP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vip {
    /// Since when its owner has had it (Unix ms), as seen here.
    pub since_unix_ms: Option<u64>,
    /// ... and how long ago that was.
    pub since_ms_ago: Option<u64>,
    /// When this director last announced it (Unix ms).
    pub last_announced_unix_ms: Option<u64>,
    /// ... and how long ago.
    pub last_announced_ms_ago: Option<u64>,
    /// The address.
    pub vip: String,
    /// The service it is allocated to.
    pub service: String,
    /// The Kubernetes Service it serves (`namespace/name`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_service: Option<String>,
    /// The owner's id.
    pub owner: Option<u64>,
    /// The owner's name.
    pub owner_name: Option<String>,
    /// The ownership epoch.
    pub epoch: Option<u64>,
    /// Whether this director answers for it now.
    pub held_here: bool,
}

/// One virtual service port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    /// `TCP 10.10.0.200:80`.
    pub service: String,
    /// Scheduler.
    pub scheduler: String,
    /// Scheduler flags (`sh-port`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<String>,
    /// Persistence timeout in seconds, if persistent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_s: Option<u32>,
    /// ipvsadm's name of the forwarding method (`Masq`, `Route`).
    pub forwarding: Option<String>,
    /// Whether the kernel has it.
    pub programmed: bool,
    /// The kernel's traffic counters for it (when programmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// Its backends.
    pub backends: Vec<BackendStatus>,
}

/// The kernel's traffic counters of a virtual service or a backend, since
/// the kernel created it (`ipvsadm -L --stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Traffic {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets from clients.
    pub packets_in: u64,
    /// Packets to clients (none pass the director in direct routing).
    pub packets_out: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
}

impl From<ipvs_sys::Stats> for Traffic {
    fn from(s: ipvs_sys::Stats) -> Self {
        Traffic {
            connections: s.conns,
            packets_in: s.inpkts,
            packets_out: s.outpkts,
            bytes_in: s.inbytes,
            bytes_out: s.outbytes,
        }
    }
}

/// A backend of a service port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStatus {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Weight (the kernel's when programmed).
    pub weight: i64,
    /// Active connections.
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
    /// The kernel's traffic counters for it (when programmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// Its health check here, as `KIND ADDRESS:PORT[PATH]` (None: not
    /// checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
    /// `up`, `down` or `unknown` (not probed yet); None: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Since when it is in that state (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_since_unix_ms: Option<u64>,
    /// How long ago that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_since_ms_ago: Option<u64>,
    /// The last failure, while it is not passing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// How long ago it was last probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_checked_ms_ago: Option<u64>,
    /// The health check's fallback, serving while every backend is down.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    /// Why this director does not program it (a `dr` backend it cannot
    /// reach without a gateway); None: programmed as wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The connection-sync daemons of this director's kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// Whether the configuration asks for them (`sync.enabled`).
    pub enabled: bool,
    /// The daemons the kernel runs.
    pub daemons: Vec<SyncDaemonStatus>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether conntrackd syncs the netfilter connection table
    /// (`sync.conntrack`).
    pub conntrack: bool,
    /// Why conntrackd is not running, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_error: Option<String>,
}

/// One connection-sync daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncDaemonStatus {
    /// `master` (sends this director's connections) or `backup` (learns
    /// the others').
    pub role: String,
    /// Its interface.
    pub interface: String,
    /// Its sync ID.
    pub sync_id: u32,
    /// Its multicast group, when the kernel reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its UDP port, when the kernel reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The backend health checks of this director.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthSummary {
    /// Targets probed (one per check and address:port).
    pub targets: usize,
    /// Up.
    pub up: usize,
    /// Down.
    pub down: usize,
    /// Not probed yet.
    pub unknown: usize,
}

/// One reconciler of the data plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcilerStatus {
    /// `ipvs`, `routes`, `nft`, `sysctl`.
    pub name: String,
    /// Passes done.
    pub passes: u64,
    /// Kernel operations applied.
    pub operations: u64,
    /// Failed passes.
    pub errors: u64,
    /// Full reads of the kernel.
    pub resyncs: u64,
    /// Changes made behind its back and repaired.
    pub drift_repairs: u64,
    /// The last pass's duration, microseconds.
    pub last_pass_us: u64,
    /// The last error, while failing.
    pub last_error: Option<String>,
}

/// Since when (as this director saw it) each VIP has had its current owner,
/// and how many owner changes it has seen.
#[derive(Debug, Default)]
pub struct OwnerClock {
    seen: std::sync::Mutex<Option<BTreeMap<IpAddr, (u64, SystemTime)>>>,
    changes: AtomicU64,
}

impl OwnerClock {
    /// Notes the epochs of `state`; a new epoch starts now. Every new epoch
    /// counts as an owner change, except those of the first call (the
    /// owners found at start).
    pub fn observe(&self, state: &ClusterState) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let first = seen.is_none();
        let seen = seen.get_or_insert_with(BTreeMap::new);
        seen.retain(|vip, _| state.owners.contains_key(vip));
        for (vip, o) in &state.owners {
            if seen.get(vip).map(|(e, _)| *e) != Some(o.epoch) {
                seen.insert(*vip, (o.epoch, SystemTime::now()));
                if !first {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(%vip, owner = o.director, epoch = o.epoch, "VIP owner changed");
            }
        }
    }

    /// Owner changes (new epochs) seen since start, the owners found at
    /// start not counted.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn since(&self, vip: &IpAddr) -> Option<SystemTime> {
        self.seen.lock().ok()?.as_ref()?.get(vip).map(|(_, t)| *t)
    }
}

/// Milliseconds since the Unix epoch, and milliseconds ago, of `t`.
fn when(t: Option<SystemTime>) -> (Option<u64>, Option<u64>) {
    let Some(t) = t else { return (None, None) };
    let unix = t
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64);
    let ago = SystemTime::now()
        .duration_since(t)
        .ok()
        .map(|d| d.as_millis() as u64);
    (unix, ago)
}

/// This director's view now.
pub async fn build(d: &Daemon) -> Status {
    let node = &d.node;
    let config = d.config.get();
    let m = node.metrics();
    let state = node.state();
    let contact = node.last_contact();
    let names: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|p| (p.id, p.name.clone()))
        .collect();
    let members = config
        .peers
        .iter()
        .map(|p| Member {
            id: p.id,
            name: p.name.clone(),
            address: p.address.to_string(),
            role: match p.role {
                PeerRole::Data => "data",
                PeerRole::Witness => "witness",
            }
            .into(),
            leader: m.current_leader == Some(p.id),
            draining: state.draining.contains_key(&p.id),
            last_contact_ms: contact.get(&p.id).map(|d| d.as_millis() as u64),
        })
        .collect();
    // The same rule the routes and the ARP/NDP answers follow.
    let held_here = match &d.announcer {
        Some(a) => a.rule().held(),
        None => Default::default(),
    };
    // The Kubernetes Services on each VIP (several when shared).
    let mut kube_names: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for s in state.services.values() {
        if let Some(o) = &s.origin {
            kube_names
                .entry(s.vip)
                .or_default()
                .push(format!("{}/{}", o.namespace, o.name));
        }
    }
    let vips = state
        .allocations
        .iter()
        .map(|(vip, service)| {
            let owner = state.owners.get(vip);
            let (since_unix_ms, since_ms_ago) = when(d.clock.since(vip));
            let announced = d.announcer.as_ref().and_then(|a| a.last_announced(*vip));
            let (last_announced_unix_ms, last_announced_ms_ago) = when(announced);
            Vip {
                since_unix_ms,
                since_ms_ago,
                last_announced_unix_ms,
                last_announced_ms_ago,
                vip: vip.to_string(),
                service: service.clone(),
                kubernetes_service: kube_names.get(vip).map(|n| n.join(",")),
                owner: owner.map(|o| o.director),
                owner_name: owner.and_then(|o| names.get(&o.director).cloned()),
                epoch: owner.map(|o| o.epoch),
                held_here: held_here.contains(vip),
            }
        })
        .collect();
    type Programmed = (Option<ipvs_sys::Stats>, Vec<ipvs_sys::Destination>);
    let sync = match &d.ipvs {
        Some(h) => Some(match h.sync_daemons().await {
            Ok(list) => SyncStatus {
                enabled: config.sync.enabled,
                daemons: list
                    .iter()
                    .map(|x| SyncDaemonStatus {
                        role: match x.state {
                            ipvs_sys::SyncState::Master => "master",
                            ipvs_sys::SyncState::Backup => "backup",
                        }
                        .into(),
                        interface: x.interface.clone(),
                        sync_id: x.sync_id,
                        group: x.group.map(|g| g.to_string()),
                        port: x.port,
                    })
                    .collect(),
                error: None,
                conntrack: config.sync.enabled && config.sync.conntrack,
                conntrack_error: d.conntrackd.as_ref().and_then(|c| c.problem()),
            },
            Err(e) => SyncStatus {
                enabled: config.sync.enabled,
                daemons: Vec::new(),
                error: Some(e.to_string()),
                conntrack: config.sync.enabled && config.sync.conntrack,
                conntrack_error: d.conntrackd.as_ref().and_then(|c| c.problem()),
            },
        }),
        None => None,
    };
    let kernel: BTreeMap<ipvs_sys::ServiceKey, Programmed> = match &d.ipvs {
        Some(h) => h
            .table()
            .await
            .map(|t| {
                t.into_iter()
                    .map(|(s, dests)| (s.key, (s.stats.map(|b| *b), dests)))
                    .collect()
            })
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let by_vip: BTreeMap<std::net::IpAddr, &consensus::state::VirtualService> =
        state.services.values().map(|v| (v.vip, &**v)).collect();
    let down = d
        .health
        .as_ref()
        .map(|h| h.down().borrow().clone())
        .unwrap_or_default();
    // The port of the state behind each kernel service (shared VIPs: the
    // one with that port).
    let mut ports = BTreeMap::new();
    for vs in state.services.values() {
        for p in &vs.ports {
            ports.insert((vs.vip, p.protocol, p.port), (&**vs, p));
        }
    }
    let refused = d
        .onlink
        .as_ref()
        .map(|o| o.refused().borrow().clone())
        .unwrap_or_default();
    // Every backend, the refused ones too (they show why).
    let services = crate::dataplane::ipvs::desired(&state, &down, &Default::default())
        .iter()
        .map(|(s, dests)| {
            let programmed = kernel.get(&s.key);
            let vs = match s.key {
                ipvs_sys::ServiceKey::Addr { addr, .. } => by_vip.get(&addr).copied(),
                ipvs_sys::ServiceKey::Fwmark { .. } => None,
            };
            ServiceStatus {
                service: s.key.to_string(),
                scheduler: s.scheduler.clone(),
                scheduler_flags: vs
                    .map(|v| v.scheduler_flags.iter().map(|f| f.to_string()).collect())
                    .unwrap_or_default(),
                persistence_s: vs.and_then(|v| v.persistence).map(|p| p.timeout_s),
                forwarding: dests.first().map(|x| x.forward.ipvsadm_name().to_string()),
                programmed: programmed.is_some(),
                traffic: programmed.and_then(|(stats, _)| stats.map(Traffic::from)),
                backends: dests
                    .iter()
                    .map(|want| {
                        let k = programmed.and_then(|(_, p)| {
                            p.iter()
                                .find(|x| x.addr == want.addr && x.port == want.port)
                        });
                        let c = k.and_then(|x| x.counters).unwrap_or_default();
                        let mut b = BackendStatus {
                            address: want.addr.to_string(),
                            port: want.port,
                            weight: i64::from(k.map(|x| x.weight).unwrap_or(want.weight)),
                            active: c.active,
                            inactive: c.inactive,
                            traffic: k.and_then(|x| x.stats.as_deref().copied().map(Traffic::from)),
                            ..Default::default()
                        };
                        if want.forward == ipvs_sys::Forward::DirectRoute {
                            if let Some(why) = refused.get(&want.addr) {
                                b.refused = Some(why.clone());
                                if k.is_none() {
                                    b.weight = 0;
                                }
                            }
                        }
                        if let (
                            ipvs_sys::ServiceKey::Addr {
                                addr,
                                protocol,
                                port,
                            },
                            Some(h),
                        ) = (s.key, &d.health)
                        {
                            backend_health(&mut b, want, (addr, protocol, port), &ports, h);
                        }
                        b
                    })
                    .collect(),
            }
        })
        .collect();
    let reconcilers = d
        .reconcilers
        .iter()
        .map(|h| {
            let s = &h.stats;
            ReconcilerStatus {
                name: h.name.to_string(),
                passes: s.passes.load(Ordering::Relaxed),
                operations: s.operations.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                resyncs: s.resyncs.load(Ordering::Relaxed),
                drift_repairs: s.drift_repairs.load(Ordering::Relaxed),
                last_pass_us: s.last_pass_us.load(Ordering::Relaxed),
                last_error: s.error(),
            }
        })
        .collect();
    Status {
        director: Me {
            id: node.id(),
            name: names.get(&node.id()).cloned(),
        },
        cluster: Cluster {
            leader: m.current_leader,
            leader_name: m.current_leader.and_then(|l| names.get(&l).cloned()),
            term: m.current_term,
            role: Some(node.role().to_string()),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            members,
        },
        lease: Lease {
            held: node.holds_lease(),
            remaining_ms: node.lease_remaining().map(|d| d.as_millis() as u64),
        },
        vips,
        services,
        reconcilers,
        announcements_sent: d.announcer.as_ref().map_or(0, |a| a.sent()),
        kubernetes: d.kube.as_ref().map(|k| kube_status(k, &state, &names)),
        sync,
        health: d.health.as_ref().map(|h| {
            let report = h.report();
            let count = |up| report.iter().filter(|(_, _, s)| s.up == up).count();
            HealthSummary {
                targets: report.len(),
                up: count(Some(true)),
                down: count(Some(false)),
                unknown: count(None),
            }
        }),
    }
}

/// The state of a port of the committed state, by VIP, protocol and port.
type PortsByKey<'a> = BTreeMap<
    (IpAddr, consensus::state::Protocol, u16),
    (
        &'a consensus::state::VirtualService,
        &'a consensus::state::ServicePort,
    ),
>;

/// Fills in the health of backend `want` of the kernel service `key`.
fn backend_health(
    b: &mut BackendStatus,
    want: &ipvs_sys::Destination,
    key: (IpAddr, ipvs_sys::Protocol, u16),
    ports: &PortsByKey<'_>,
    health: &crate::health::Health,
) {
    let protocol = match key.1 {
        ipvs_sys::Protocol::Tcp => consensus::state::Protocol::Tcp,
        ipvs_sys::Protocol::Udp => consensus::state::Protocol::Udp,
        ipvs_sys::Protocol::Sctp => consensus::state::Protocol::Sctp,
        ipvs_sys::Protocol::Other(_) => return,
    };
    let Some((vs, port)) = ports.get(&(key.0, protocol, key.2)) else {
        return;
    };
    let Some(check) = vs.health.as_deref() else {
        return;
    };
    let Some(backend) = port
        .backends
        .iter()
        .find(|x| x.address == want.addr && x.port == want.port)
    else {
        b.fallback = check.fallback == Some(std::net::SocketAddr::new(want.addr, want.port));
        return;
    };
    let Some(target) = crate::health::target(check, protocol, backend) else {
        return;
    };
    b.health_check = Some(match &check.probe {
        consensus::state::Probe::Http { path, .. } => {
            format!("{} {target}{path}", check.probe.kind())
        }
        other => format!("{} {target}", other.kind()),
    });
    let st = health.state_of(check, target);
    b.health = Some(
        match st.as_ref().and_then(|x| x.up) {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown",
        }
        .into(),
    );
    if let Some(st) = st.filter(|x| x.up.is_some()) {
        (b.health_since_unix_ms, b.health_since_ms_ago) = when(Some(st.since));
        b.health_checked_ms_ago = when(st.last_checked).1;
        b.health_error = st.last_error;
    }
}

/// The Kubernetes part of the document.
fn kube_status(
    k: &crate::sources::kubernetes::Source,
    state: &ClusterState,
    names: &BTreeMap<u64, String>,
) -> KubeStatus {
    let health = k.health();
    let (api_since_unix_ms, api_since_ms_ago) = when(Some(health.since));
    // Node names by address, for the backends.
    let mut node_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    for n in k.view().nodes {
        let Some(name) = &n.metadata.name else {
            continue;
        };
        for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if let Ok(ip) = a.address.parse() {
                node_of.insert(ip, name.clone());
            }
        }
    }
    let mut by_service: BTreeMap<String, KubeService> = BTreeMap::new();
    for v in state.services.values() {
        let Some(o) = &v.origin else { continue };
        let key = format!("{}/{}", o.namespace, o.name);
        let entry = by_service
            .entry(key.clone())
            .or_insert_with(|| KubeService {
                service: key,
                uid: o.uid.clone(),
                ..Default::default()
            });
        entry.vips.push(KubeVip {
            vip: v.vip.to_string(),
            from: o.address.to_string(),
            owner_name: state
                .owners
                .get(&v.vip)
                .and_then(|w| names.get(&w.director).cloned()),
        });
        for p in &v.ports {
            let key = match v.vip {
                IpAddr::V4(a) => {
                    format!("{} {a}:{}", p.protocol.to_string().to_uppercase(), p.port)
                }
                IpAddr::V6(a) => {
                    format!("{} [{a}]:{}", p.protocol.to_string().to_uppercase(), p.port)
                }
            };
            entry.ports.push(KubePort {
                service: key,
                backends: p
                    .backends
                    .iter()
                    .map(|b| KubeBackend {
                        node: node_of.get(&b.address).cloned(),
                        address: b.address.to_string(),
                        port: b.port,
                        weight: b.weight,
                    })
                    .collect(),
            });
        }
    }
    KubeStatus {
        api_reachable: health.reachable,
        api_since_unix_ms,
        api_since_ms_ago,
        api_error: health.error,
        synced: k.ready(),
        services: by_service.into_values().collect(),
    }
}

/// "12.3s ago", "4m10s ago", "2h05m ago", or "-".
fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let secs = ms / 1000;
    if secs < 60 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else if secs < 3600 {
        format!("{}m{:02}s ago", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m ago", secs / 3600, (secs % 3600) / 60)
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |x| x.to_string())
}

/// Renders the status document.
pub fn render(v: &Status, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Yaml => serde_saphyr::to_string(v).unwrap_or_default(),
        Format::Table => table(v),
    }
}

fn table(v: &Status) -> String {
    let mut o = String::new();
    let c = &v.cluster;
    let _ = writeln!(
        o,
        "director {} (id {})   leader {} (id {})   term {}   applied {}   lease {}",
        opt(&v.director.name),
        v.director.id,
        opt(&c.leader_name),
        opt(&c.leader),
        c.term,
        opt(&c.applied_index),
        if v.lease.held {
            format!("held ({} ms left)", opt(&v.lease.remaining_ms))
        } else {
            "not held".into()
        }
    );
    let _ = writeln!(o, "\nMEMBERS");
    let _ = writeln!(
        o,
        "  {:<6} {:<4} {:<8} {:<22} {:<7} {:<9} LAST CONTACT",
        "NAME", "ID", "ROLE", "ADDRESS", "LEADER", "DRAINING"
    );
    for m in &c.members {
        let yes = |f: bool| if f { "yes" } else { "" };
        let _ = writeln!(
            o,
            "  {:<6} {:<4} {:<8} {:<22} {:<7} {:<9} {}",
            m.name,
            m.id,
            m.role,
            m.address,
            yes(m.leader),
            yes(m.draining),
            m.last_contact_ms
                .map(|ms| format!("{ms} ms ago"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(o, "\nVIPS");
    let _ = writeln!(
        o,
        "  {:<26} {:<18} {:<8} {:<6} {:<12} {:<12} HELD HERE",
        "VIP", "SERVICE", "OWNER", "EPOCH", "SINCE", "ANNOUNCED"
    );
    for x in &v.vips {
        let _ = writeln!(
            o,
            "  {:<26} {:<18} {:<8} {:<6} {:<12} {:<12} {}",
            x.vip,
            x.kubernetes_service.as_deref().unwrap_or(&x.service),
            opt(&x.owner_name),
            opt(&x.epoch),
            ago(x.since_ms_ago),
            ago(x.last_announced_ms_ago),
            if x.held_here { "yes" } else { "no" }
        );
    }
    let _ = writeln!(o, "\nSERVICES");
    for x in &v.services {
        let mut extra = String::new();
        if !x.scheduler_flags.is_empty() {
            let _ = write!(extra, " flags {}", x.scheduler_flags.join(","));
        }
        if let Some(p) = x.persistence_s {
            let _ = write!(extra, " persistent {p}");
        }
        let _ = writeln!(
            o,
            "  {} {}{} {}{}",
            x.service,
            x.scheduler,
            extra,
            opt(&x.forwarding),
            if x.programmed {
                ""
            } else {
                "   (not programmed here)"
            }
        );
        for b in &x.backends {
            let health = match (&b.health, b.fallback) {
                (_, true) => "   fallback".to_string(),
                (Some(h), _) => format!(
                    "   {h} ({}){}",
                    ago(b.health_since_ms_ago),
                    b.health_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                (None, false) => String::new(),
            };
            let health = match &b.refused {
                Some(why) => format!("{health}   refused: {why}"),
                None => health,
            };
            let _ = writeln!(
                o,
                "    -> {:<26} weight {:<4} active {:<6} inactive {:<6}{health}",
                format!("{}:{}", b.address, b.port),
                b.weight,
                b.active,
                b.inactive
            );
        }
    }
    if let Some(k) = &v.kubernetes {
        let _ = writeln!(
            o,
            "\nKUBERNETES   API {} (since {}){}   {}",
            if k.api_reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            ago(k.api_since_ms_ago),
            k.api_error
                .as_ref()
                .filter(|_| !k.api_reachable)
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            if k.synced { "synced" } else { "not synced yet" }
        );
        for s in &k.services {
            let vips: Vec<String> = s
                .vips
                .iter()
                .map(|x| format!("{} ({}, owner {})", x.vip, x.from, opt(&x.owner_name)))
                .collect();
            let _ = writeln!(o, "  {}   {}", s.service, vips.join("  "));
            for p in &s.ports {
                let backends: Vec<String> = p
                    .backends
                    .iter()
                    .map(|b| {
                        format!(
                            "{}={}:{} w{}",
                            b.node.as_deref().unwrap_or("?"),
                            b.address,
                            b.port,
                            b.weight
                        )
                    })
                    .collect();
                let _ = writeln!(o, "    {} -> {}", p.service, backends.join(" "));
            }
        }
    }
    if let Some(sy) = &v.sync {
        let daemons: Vec<String> = sy
            .daemons
            .iter()
            .map(|d| format!("{} on {} (sync ID {})", d.role, d.interface, d.sync_id))
            .collect();
        let _ = writeln!(
            o,
            "\nCONNECTION SYNC   {}   conntrackd {}",
            match (&sy.error, sy.enabled, daemons.is_empty()) {
                (Some(e), _, _) => format!("unknown: {e}"),
                (None, false, true) => "off".to_string(),
                (None, true, true) => "NOT RUNNING".to_string(),
                (None, _, false) => daemons.join(", "),
            },
            match (&sy.conntrack_error, sy.conntrack) {
                (Some(e), _) => format!("NOT RUNNING: {e}"),
                (None, true) => "running".to_string(),
                (None, false) => "off".to_string(),
            }
        );
    }
    let failing: Vec<&ReconcilerStatus> = v
        .reconcilers
        .iter()
        .filter(|r| r.last_error.is_some())
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(o, "\nFAILING");
        for r in failing {
            let _ = writeln!(o, "  {}: {}", r.name, opt(&r.last_error));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::Owner;

    /// `director_vip_owner_changes_total`: every new epoch seen counts, a
    /// VIP's first owner included, but not the owners found at start.
    #[test]
    fn the_owner_clock_counts_new_epochs_after_the_first_look() {
        let vip = |n: u8| IpAddr::from([10, 10, 0, n]);
        let owner = |director, epoch| Owner { director, epoch };
        let mut state = ClusterState::default();
        state.owners.insert(vip(200), owner(1, 4));
        let clock = OwnerClock::default();
        clock.observe(&state);
        assert_eq!(clock.changes(), 0);
        assert!(clock.since(&vip(200)).is_some());
        clock.observe(&state);
        assert_eq!(clock.changes(), 0);
        state.owners.insert(vip(200), owner(2, 5));
        state.owners.insert(vip(201), owner(1, 1));
        clock.observe(&state);
        assert_eq!(clock.changes(), 2);
        // A VIP gone, then back with the same epoch: a new owner here.
        state.owners.remove(&vip(201));
        clock.observe(&state);
        state.owners.insert(vip(201), owner(1, 1));
        clock.observe(&state);
        assert_eq!(clock.changes(), 3);
    }
}
