//! The replicated cluster state and the pure function that changes it.
//!
//! Every director applies the same committed commands in the same order to a
//! [`ClusterState`] with [`apply`]; nothing in here does I/O or reads a clock,
//! so the same log always yields the same state (Raft's state machine safety).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::domain::{
    Forwarding, HealthCheck, OnFail, Persistence, Probe, Protocol, Scheduler, SchedulerFlag,
    StatusRange,
};

/// A director's Raft node id.
pub type NodeId = u64;

/// What a director does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds VIPs and programs IPVS.
    Data,
    /// Takes part in consensus only (the third voter of two data directors).
    Witness,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Director {
    /// Raft node id.
    pub id: NodeId,
    /// Name operators use (`d1`).
    pub name: String,
    /// Address of its Raft transport (`host:port`).
    pub address: String,
    /// Data or witness.
    pub role: Role,
}

/// A backend of a virtual service: a node's address and NodePort.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    /// Node address.
    pub address: IpAddr,
    /// NodePort (or the service port for direct routing).
    pub port: u16,
    /// IPVS weight.
    pub weight: u32,
}

/// One port of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port on the VIP.
    pub port: u16,
    /// The backends for this port.
    pub backends: Vec<Backend>,
}

/// A virtual service: a VIP and what it balances to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    /// The VIP (allocated or requested).
    pub vip: IpAddr,
    /// IPVS scheduler.
    pub scheduler: Scheduler,
    /// Flags of the scheduler (each belongs to `scheduler`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub scheduler_flags: BTreeSet<SchedulerFlag>,
    /// How IPVS forwards to the backends.
    pub forwarding: Forwarding,
    /// `nat` only: whether the directors source-NAT traffic to the backends
    /// (to the VIP, so that replies reach whoever owns it); false: the
    /// nodes route the clients back through the directors.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub snat: bool,
    /// Client persistence, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// How every director checks the backends (None: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<HealthCheck>>,
    /// The Kubernetes Service it serves (None: a static service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<Origin>>,
    /// The sharing group whose VIP it uses (the allocation's holder), when
    /// several services share one VIP on disjoint ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
}

impl VirtualService {
    /// A static service on `vip` with `ports`: round robin, nat with SNAT,
    /// no persistence and no health check.
    pub fn new(vip: IpAddr, ports: Vec<ServicePort>) -> VirtualService {
        VirtualService {
            vip,
            scheduler: Scheduler::Rr,
            scheduler_flags: BTreeSet::new(),
            forwarding: Forwarding::Nat,
            snat: true,
            persistence: None,
            ports,
            health: None,
            origin: None,
            share: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// The Kubernetes Service a virtual service serves, and where its address
/// came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service's UID (the allocation is keyed by it).
    pub uid: String,
    /// Where the VIP came from.
    pub address: AddressFrom,
}

/// Where a VIP came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFrom {
    /// A pool, by name.
    Pool(String),
    /// The Service asked for it.
    Requested,
    /// Shared with the Services of the same sharing key.
    Shared(String),
}

impl std::fmt::Display for AddressFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressFrom::Pool(p) => write!(f, "pool {p}"),
            AddressFrom::Requested => write!(f, "requested"),
            AddressFrom::Shared(key) => write!(f, "shared {key}"),
        }
    }
}

/// Who holds a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The director that holds it.
    pub director: NodeId,
    /// Raised on every change of owner: a holder fences itself on a newer
    /// epoch, and a move names the epoch it replaces.
    pub epoch: u64,
}

/// Everything the directors agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Members by id.
    pub directors: BTreeMap<NodeId, Director>,
    /// Virtual services by name (`namespace/name`, or a static service's
    /// name). Shared: every applied state is published whole, and a copy
    /// of the state then copies pointers, not ten thousand services.
    pub services: BTreeMap<String, Arc<VirtualService>>,
    /// IP allocations: VIP -> service name.
    pub allocations: BTreeMap<IpAddr, String>,
    /// VIP owners.
    pub owners: BTreeMap<IpAddr, Owner>,
    /// Directors that asked to be drained: they get no VIPs.
    pub draining: BTreeMap<NodeId, bool>,
}

impl ClusterState {
    /// Whether `other` holds the very same services (the same names, each
    /// the same shared value): true between two states that only differ in
    /// owners, directors, draining or allocations. Pointer comparisons, so
    /// a consumer of the services can tell a change it may skip at once.
    pub fn same_services(&self, other: &ClusterState) -> bool {
        self.services.len() == other.services.len()
            && self
                .services
                .iter()
                .zip(&other.services)
                .all(|((a, x), (b, y))| Arc::ptr_eq(x, y) && a == b)
    }

    /// The services that differ from `self` in `after`, by name: the value
    /// here and there (`None`: absent). Pointer comparisons, in one walk of
    /// both maps: a consumer that derives something per service can tell
    /// whether a commit touched its part without looking at the rest. A
    /// service put again is listed even when its value is equal.
    pub fn changed_services<'a>(&'a self, after: &'a ClusterState) -> Vec<ServiceChange<'a>> {
        use std::cmp::Ordering;
        let mut out = Vec::new();
        let mut before = self.services.iter().peekable();
        let mut now = after.services.iter().peekable();
        loop {
            let order = match (before.peek(), now.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match order {
                Ordering::Less => {
                    if let Some((name, vs)) = before.next() {
                        out.push((name.as_str(), Some(&**vs), None));
                    }
                }
                Ordering::Greater => {
                    if let Some((name, vs)) = now.next() {
                        out.push((name.as_str(), None, Some(&**vs)));
                    }
                }
                Ordering::Equal => {
                    if let (Some((name, x)), Some((_, y))) = (before.next(), now.next()) {
                        if !Arc::ptr_eq(x, y) {
                            out.push((name.as_str(), Some(&**x), Some(&**y)));
                        }
                    }
                }
            }
        }
        out
    }
}

/// One service changed between two states: its name, its value before
/// and after (`None`: absent there).
pub type ServiceChange<'a> = (
    &'a str,
    Option<&'a VirtualService>,
    Option<&'a VirtualService>,
);

/// A change to the cluster state, as committed to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds or replaces a director.
    PutDirector(Director),
    /// Removes a director; its VIPs lose their owner.
    RemoveDirector(NodeId),
    /// Adds or replaces a virtual service (its VIP must be allocated to it).
    PutService {
        /// Service name.
        name: String,
        /// What it is.
        service: VirtualService,
    },
    /// Removes a virtual service and releases its VIP.
    RemoveService {
        /// Service name.
        name: String,
    },
    /// Allocates a VIP to a service.
    Allocate {
        /// The VIP.
        vip: IpAddr,
        /// Service name.
        service: String,
    },
    /// Moves a VIP to a director. Applied only if the VIP's epoch is still
    /// `expected_epoch` (0: the VIP has no owner yet), so a decision taken on
    /// an old view cannot undo a newer one.
    SetOwner {
        /// The VIP.
        vip: IpAddr,
        /// The new owner.
        director: NodeId,
        /// The epoch the move replaces.
        expected_epoch: u64,
    },
    /// Marks a director as draining (true) or back in service (false).
    SetDraining {
        /// The director.
        director: NodeId,
        /// Draining or not.
        draining: bool,
    },
    /// Several commands in one log entry, applied in order, each on its own
    /// terms (a rejected one leaves the state as it was and the rest still
    /// apply). The leader commits a large change (thousands of services at
    /// start) in a few entries instead of one round trip per service.
    Batch(Vec<Command>),
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied.
    Ok,
    /// Applied; the VIP's new epoch.
    Epoch(u64),
    /// Not applied, and why (the state is unchanged).
    Rejected(String),
    /// A batch's responses, one per command, in order.
    Batch(Vec<Response>),
}

/// Applies one command. Pure: the same state and command always give the same
/// result. A rejected command leaves the state as it was.
pub fn apply(state: &mut ClusterState, cmd: Command) -> Response {
    match cmd {
        Command::Batch(cmds) => {
            Response::Batch(cmds.into_iter().map(|c| apply(state, c)).collect())
        }
        Command::PutDirector(d) => {
            state.directors.insert(d.id, d);
            Response::Ok
        }
        Command::RemoveDirector(id) => {
            if state.directors.remove(&id).is_none() {
                return Response::Rejected(format!("no director {id}"));
            }
            state.draining.remove(&id);
            state.owners.retain(|_, o| o.director != id);
            Response::Ok
        }
        Command::Allocate { vip, service } => match state.allocations.get(&vip) {
            Some(holder) if *holder != service => {
                Response::Rejected(format!("{vip} is allocated to {holder}"))
            }
            _ => {
                state.allocations.insert(vip, service);
                Response::Ok
            }
        },
        Command::PutService { name, service } => {
            match state.allocations.get(&service.vip) {
                Some(holder) if *holder == name || service.share.as_ref() == Some(holder) => {}
                Some(holder) => {
                    return Response::Rejected(format!(
                        "{} is allocated to {holder}, not {name}",
                        service.vip
                    ))
                }
                None => return Response::Rejected(format!("{} is not allocated", service.vip)),
            }
            // A service that changed its VIP gives the old one back.
            let old = state.services.insert(name.clone(), Arc::new(service));
            if let Some(old) = old {
                if state.services.get(&name).map(|s| s.vip) != Some(old.vip) {
                    release(state, &name, &old);
                }
            }
            Response::Ok
        }
        Command::RemoveService { name } => match state.services.remove(&name) {
            Some(s) => {
                release(state, &name, &s);
                Response::Ok
            }
            None => Response::Rejected(format!("no service {name}")),
        },
        Command::SetOwner {
            vip,
            director,
            expected_epoch,
        } => {
            if !state.allocations.contains_key(&vip) {
                return Response::Rejected(format!("{vip} is not allocated"));
            }
            match state.directors.get(&director) {
                Some(d) if d.role == Role::Data => {}
                Some(_) => return Response::Rejected(format!("director {director} is a witness")),
                None => return Response::Rejected(format!("no director {director}")),
            }
            let current = state.owners.get(&vip).map(|o| o.epoch).unwrap_or(0);
            if current != expected_epoch {
                return Response::Rejected(format!(
                    "{vip} is at epoch {current}, not {expected_epoch}"
                ));
            }
            let epoch = current + 1;
            state.owners.insert(vip, Owner { director, epoch });
            Response::Epoch(epoch)
        }
        Command::SetDraining { director, draining } => {
            if !state.directors.contains_key(&director) {
                return Response::Rejected(format!("no director {director}"));
            }
            if draining {
                state.draining.insert(director, true);
            } else {
                state.draining.remove(&director);
            }
            Response::Ok
        }
    }
}

/// Gives back the VIP `old` (service `name`, no longer on it) used: its
/// own allocation at once; a shared one once no service uses the VIP.
fn release(state: &mut ClusterState, name: &str, old: &VirtualService) {
    let vip = old.vip;
    let holder = state.allocations.get(&vip);
    let free = match (holder, &old.share) {
        (Some(h), _) if h == name => true,
        (Some(h), Some(group)) if h == group => !state.services.values().any(|s| s.vip == vip),
        _ => false,
    };
    if free {
        state.allocations.remove(&vip);
        state.owners.remove(&vip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn director(id: NodeId, role: Role) -> Director {
        Director {
            id,
            name: format!("d{id}"),
            address: format!("10.10.0.{}:7946", 10 + id),
            role,
        }
    }

    fn web(vip: &str) -> VirtualService {
        VirtualService::new(
            ip(vip),
            vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                backends: vec![Backend {
                    address: ip("10.10.0.21"),
                    port: 30080,
                    weight: 1,
                }],
            }],
        )
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for c in [
            Command::PutDirector(director(1, Role::Data)),
            Command::PutDirector(director(2, Role::Data)),
            Command::PutDirector(director(3, Role::Witness)),
            Command::Allocate {
                vip: ip("10.10.0.200"),
                service: "default/web".into(),
            },
            Command::PutService {
                name: "default/web".into(),
                service: web("10.10.0.200"),
            },
        ] {
            assert_eq!(apply(&mut s, c), Response::Ok);
        }
        s
    }

    #[test]
    fn owners_change_only_from_the_epoch_they_name() {
        let mut s = cluster();
        let vip = ip("10.10.0.200");
        let take = |director, expected_epoch| Command::SetOwner {
            vip,
            director,
            expected_epoch,
        };
        assert_eq!(apply(&mut s, take(1, 0)), Response::Epoch(1));
        // A stale decision (taken when the VIP had no owner) is refused.
        let before = s.clone();
        assert!(matches!(apply(&mut s, take(2, 0)), Response::Rejected(_)));
        assert_eq!(s, before);
        assert_eq!(apply(&mut s, take(2, 1)), Response::Epoch(2));
        assert_eq!(
            s.owners[&vip],
            Owner {
                director: 2,
                epoch: 2
            }
        );
    }

    #[test]
    fn a_witness_never_owns_a_vip() {
        let mut s = cluster();
        let r = apply(
            &mut s,
            Command::SetOwner {
                vip: ip("10.10.0.200"),
                director: 3,
                expected_epoch: 0,
            },
        );
        assert_eq!(r, Response::Rejected("director 3 is a witness".into()));
        assert!(s.owners.is_empty());
    }

    #[test]
    fn allocations_are_exclusive_and_follow_their_service() {
        let mut s = cluster();
        let r = apply(
            &mut s,
            Command::Allocate {
                vip: ip("10.10.0.200"),
                service: "other/svc".into(),
            },
        );
        assert!(matches!(r, Response::Rejected(_)));
        // Moving the service to another VIP releases the old one.
        apply(
            &mut s,
            Command::Allocate {
                vip: ip("10.10.0.201"),
                service: "default/web".into(),
            },
        );
        apply(
            &mut s,
            Command::SetOwner {
                vip: ip("10.10.0.200"),
                director: 1,
                expected_epoch: 0,
            },
        );
        let r = apply(
            &mut s,
            Command::PutService {
                name: "default/web".into(),
                service: web("10.10.0.201"),
            },
        );
        assert_eq!(r, Response::Ok);
        assert!(!s.allocations.contains_key(&ip("10.10.0.200")));
        assert!(!s.owners.contains_key(&ip("10.10.0.200")));
        assert_eq!(
            apply(
                &mut s,
                Command::RemoveService {
                    name: "default/web".into()
                }
            ),
            Response::Ok
        );
        assert!(s.allocations.is_empty());
    }

    #[test]
    fn removing_a_director_orphans_its_vips() {
        let mut s = cluster();
        apply(
            &mut s,
            Command::SetOwner {
                vip: ip("10.10.0.200"),
                director: 1,
                expected_epoch: 0,
            },
        );
        assert_eq!(apply(&mut s, Command::RemoveDirector(1)), Response::Ok);
        assert!(s.owners.is_empty());
    }

    #[test]
    fn the_same_log_gives_the_same_state() {
        let log = [
            Command::PutDirector(director(1, Role::Data)),
            Command::Allocate {
                vip: ip("10.10.0.200"),
                service: "a".into(),
            },
            Command::SetOwner {
                vip: ip("10.10.0.200"),
                director: 1,
                expected_epoch: 0,
            },
            Command::SetDraining {
                director: 1,
                draining: true,
            },
        ];
        let run = || {
            let mut s = ClusterState::default();
            let out: Vec<Response> = log.iter().cloned().map(|c| apply(&mut s, c)).collect();
            (s, out)
        };
        assert_eq!(run(), run());
        let json = serde_json::to_string(&run().0).unwrap();
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, run().0);
    }

    /// Earlier releases stored protocol, scheduler and forwarding as plain
    /// words and had no flags or persistence: such a service reads back as
    /// the typed one, and a service without the new settings is written as
    /// those releases wrote it.
    #[test]
    fn services_written_by_earlier_releases_read_back() {
        let old = r#"{"vip":"10.10.0.200","scheduler":"rr","forwarding":"nat","ports":[{"protocol":"tcp","port":80,"backends":[{"address":"10.10.0.21","port":30080,"weight":1}]}]}"#;
        let s: VirtualService = serde_json::from_str(old).unwrap();
        assert_eq!(s, web("10.10.0.200"));
        assert_eq!(serde_json::to_string(&s).unwrap(), old);
        let mut p = s.clone();
        p.persistence = Some(Persistence {
            timeout_s: 300,
            netmask: Some(24),
        });
        p.scheduler = Scheduler::Sh;
        p.scheduler_flags.insert(SchedulerFlag::ShPort);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""scheduler_flags":["sh-port"]"#), "{json}");
        assert_eq!(serde_json::from_str::<VirtualService>(&json).unwrap(), p);
    }

    /// Services of one sharing group use one VIP; it is given back when the
    /// last of them goes, not before.
    #[test]
    fn a_shared_vip_is_released_with_its_last_service() {
        let mut s = ClusterState::default();
        s.directors.insert(1, director(1, Role::Data));
        let vip = ip("10.10.0.210");
        let group = "kube-share/default/k/ipv4".to_string();
        let shared = |port: u16| {
            let mut w = web("10.10.0.210");
            w.share = Some(group.clone());
            w.ports[0].port = port;
            w
        };
        assert_eq!(
            apply(
                &mut s,
                Command::Allocate {
                    vip,
                    service: group.clone()
                }
            ),
            Response::Ok
        );
        for (name, port) in [("a", 80), ("b", 443)] {
            let cmd = Command::PutService {
                name: name.into(),
                service: shared(port),
            };
            assert_eq!(apply(&mut s, cmd), Response::Ok);
        }
        // Not of the group: refused.
        let stranger = Command::PutService {
            name: "c".into(),
            service: web("10.10.0.210"),
        };
        assert!(matches!(apply(&mut s, stranger), Response::Rejected(_)));
        apply(
            &mut s,
            Command::SetOwner {
                vip,
                director: 1,
                expected_epoch: 0,
            },
        );
        apply(&mut s, Command::RemoveService { name: "a".into() });
        assert_eq!(s.allocations.get(&vip), Some(&group));
        assert!(s.owners.contains_key(&vip));
        apply(&mut s, Command::RemoveService { name: "b".into() });
        assert!(s.allocations.is_empty() && s.owners.is_empty(), "{s:?}");
    }

    #[test]
    fn changed_services_lists_what_was_added_removed_or_put_again() {
        let a = cluster();
        let mut b = a.clone();
        assert!(a.changed_services(&b).is_empty());
        let web = a.services.values().next().unwrap().clone();
        let name = a.services.keys().next().unwrap().clone();
        // Put again (equal value, new pointer), one added, one removed.
        b.services.insert(name.clone(), Arc::new((*web).clone()));
        b.services.insert("zz/new".into(), web.clone());
        b.services.insert("00/first".into(), web.clone());
        let changes = a.changed_services(&b);
        let names: Vec<&str> = changes.iter().map(|c| c.0).collect();
        assert_eq!(names, ["00/first", name.as_str(), "zz/new"]);
        assert!(changes[0].1.is_none() && changes[0].2.is_some());
        assert!(changes[1].1.is_some() && changes[1].2.is_some());
        let back = b.changed_services(&a);
        assert_eq!(back.len(), 3);
        assert!(back[0].1.is_some() && back[0].2.is_none());
    }

    #[test]
    fn same_services_means_the_same_shared_values() {
        let a = cluster();
        let vip = ip("10.10.0.200");
        let mut b = a.clone();
        assert!(a.same_services(&b));
        // An owner is no service change.
        let own = Command::SetOwner {
            vip,
            director: 1,
            expected_epoch: 0,
        };
        assert_eq!(apply(&mut b, own), Response::Epoch(1));
        assert!(a.same_services(&b));
        // The same service put again is a new value: a change to look at.
        let put = Command::PutService {
            name: "default/web".into(),
            service: web("10.10.0.200"),
        };
        assert_eq!(apply(&mut b, put), Response::Ok);
        assert!(!a.same_services(&b));
        assert_eq!(a.services, b.services);
        let mut c = a.clone();
        let remove = Command::RemoveService {
            name: "default/web".into(),
        };
        assert_eq!(apply(&mut c, remove), Response::Ok);
        assert!(!a.same_services(&c));
    }
}
