//! What the leader decides, as pure functions of the configuration and the
//! committed state: which members and static services the state must hold,
//! and which director owns each VIP. The daemon proposes what these return.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use consensus::state::{Backend, ClusterState, Director, Role, ServicePort, VirtualService};
use consensus::{Command, NodeId};
use ipvs_sys::{Destination, Forward, Protocol, Service, ServiceKey};

use crate::config::{Config, PeerRole, VipSource};
use crate::ipvs::plan::Entry;

/// Static services live in the state under this prefix, so that services
/// from other sources (Kubernetes) are never removed for missing from the file.
pub const STATIC_PREFIX: &str = "static/";

/// The commands that make the committed state hold the configured members
/// and static services (and drop static services the file no longer has).
pub fn seed(config: &Config, state: &ClusterState) -> Vec<Command> {
    let mut cmds = Vec::new();
    for p in &config.peers {
        let want = Director {
            id: p.id,
            name: p.name.clone(),
            address: p.address.to_string(),
            role: match p.role {
                PeerRole::Data => Role::Data,
                PeerRole::Witness => Role::Witness,
            },
        };
        if state.directors.get(&p.id) != Some(&want) {
            cmds.push(Command::PutDirector(want));
        }
    }
    let mut taken: BTreeSet<IpAddr> = state.allocations.keys().copied().collect();
    let mut named = BTreeSet::new();
    for s in &config.services {
        let name = format!("{STATIC_PREFIX}{}", s.name);
        named.insert(name.clone());
        let vip = match &s.vip {
            VipSource::Address(ip) => Some(*ip),
            VipSource::Pool(pool) => {
                let current = state.services.get(&name).map(|v| v.vip);
                let pool = config.pools.iter().find(|p| &p.name == pool);
                match (current, pool) {
                    (Some(ip), Some(p)) if p.contains(&ip) => Some(ip),
                    (_, Some(p)) => next_free(p, &taken),
                    _ => None,
                }
            }
        };
        let Some(vip) = vip else { continue };
        if state.allocations.get(&vip) != Some(&name) {
            cmds.push(Command::Allocate {
                vip,
                service: name.clone(),
            });
            taken.insert(vip);
        }
        let want = VirtualService {
            vip,
            scheduler: s.scheduler.clone(),
            forwarding: s.forwarding.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| ServicePort {
                    protocol: p.protocol.clone(),
                    port: p.port,
                    backends: p
                        .backends
                        .iter()
                        .map(|b| Backend {
                            address: b.ip(),
                            port: b.port(),
                            weight: 1,
                        })
                        .collect(),
                })
                .collect(),
        };
        if state.services.get(&name) != Some(&want) {
            cmds.push(Command::PutService {
                name,
                service: want,
            });
        }
    }
    for name in state.services.keys() {
        if name.starts_with(STATIC_PREFIX) && !named.contains(name) {
            cmds.push(Command::RemoveService { name: name.clone() });
        }
    }
    cmds
}

fn next_free(pool: &crate::config::Pool, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    for (a, b) in &pool.ranges {
        match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                for n in u32::from(*a)..=u32::from(*b) {
                    let ip = IpAddr::V4(n.into());
                    if !taken.contains(&ip) {
                        return Some(ip);
                    }
                }
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let (a, b) = (u128::from(*a), u128::from(*b));
                for n in a..=b.min(a.saturating_add(65_535)) {
                    let ip = IpAddr::V6(n.into());
                    if !taken.contains(&ip) {
                        return Some(ip);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// What the leader knows about the directors right now.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// The leader's id.
    pub leader: NodeId,
    /// Directors that renewed their lease recently (the leader included when
    /// it holds one): candidates for new VIPs.
    pub live: BTreeSet<NodeId>,
    /// Directors whose VIPs may be taken (last grant + lease + margin passed).
    pub fenced: BTreeSet<NodeId>,
    /// Whether the new-leader wait is over (VIPs without owner may be assigned).
    pub may_assign: bool,
}

/// The owner moves the leader should commit: a VIP without an owner gets one
/// after the new-leader wait; a VIP whose owner is fenced (silent past its
/// lease), draining, removed or a witness moves to a live data director. An
/// owner that is alive keeps its VIPs (no fail-back, no rebalancing churn).
/// Candidates: live, not draining, data directors; non-leaders first, then
/// the one with the fewest VIPs, then the lowest id.
pub fn assign(state: &ClusterState, live: &Liveness) -> Vec<Command> {
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for o in state.owners.values() {
        *load.entry(o.director).or_default() += 1;
    }
    let eligible = |id: &NodeId| {
        state
            .directors
            .get(id)
            .is_some_and(|d| d.role == Role::Data)
            && !state.draining.contains_key(id)
    };
    let mut cmds = Vec::new();
    for (vip, service) in &state.allocations {
        if !state.services.contains_key(service) {
            continue;
        }
        let current = state.owners.get(vip);
        let (needs, epoch) = match current {
            None => (live.may_assign, 0),
            Some(o) => {
                let keep = eligible(&o.director) && !live.fenced.contains(&o.director);
                // A removed owner (or a witness) is moved once it is fenced:
                // its lease must have ended before another takes the VIP. A
                // draining owner committed its own flag after it stopped
                // holding (Node::set_draining), so its VIPs move at once.
                let released = state.draining.contains_key(&o.director);
                (
                    !keep && (released || live.fenced.contains(&o.director)),
                    o.epoch,
                )
            }
        };
        if !needs {
            continue;
        }
        let mut candidates: Vec<NodeId> = live
            .live
            .iter()
            .copied()
            .filter(|id| eligible(id) && Some(*id) != current.map(|o| o.director))
            .collect();
        candidates.sort_by_key(|id| (*id == live.leader, load.get(id).copied().unwrap_or(0), *id));
        if let Some(best) = candidates.first() {
            *load.entry(*best).or_default() += 1;
            if let Some(o) = current {
                if let Some(n) = load.get_mut(&o.director) {
                    *n = n.saturating_sub(1);
                }
            }
            cmds.push(Command::SetOwner {
                vip: *vip,
                director: *best,
                expected_epoch: epoch,
            });
        }
    }
    cmds
}

/// The IPVS table every director programs: every service of the state (hot
/// standby), one IPVS service per port, masquerade for `nat`, direct routing
/// for `dr`.
pub fn desired_ipvs(state: &ClusterState) -> Vec<Entry> {
    let mut out = Vec::new();
    for vs in state.services.values() {
        for p in &vs.ports {
            let protocol = match p.protocol.as_str() {
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            let key = ServiceKey::Addr {
                protocol,
                addr: vs.vip,
                port: p.port,
            };
            let forward = if vs.forwarding == "dr" {
                Forward::DirectRoute
            } else {
                Forward::Masquerade
            };
            let dests = p
                .backends
                .iter()
                .map(|b| Destination {
                    weight: i32::try_from(b.weight).unwrap_or(i32::MAX),
                    ..Destination::new(b.address, b.port, forward)
                })
                .collect();
            out.push((Service::new(key, &vs.scheduler), dests));
        }
    }
    out
}

/// Whether an address is one of the cluster's VIPs: allocated in the state,
/// or inside a configured pool. Nothing else is ever touched.
pub fn managed_addr(addr: &IpAddr, state: &ClusterState, config: &Config) -> bool {
    state.allocations.contains_key(addr) || config.pools.iter().any(|p| p.contains(addr))
}

/// Whether a kernel service is one this director manages: its address is a
/// VIP of the cluster (`managed_addr`).
pub fn managed(key: &ServiceKey, state: &ClusterState, config: &Config) -> bool {
    match key {
        ServiceKey::Addr { addr, .. } => managed_addr(addr, state, config),
        ServiceKey::Fwmark { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::apply;

    /// The lab's d1 config with its IPv4 service only.
    fn config() -> Config {
        let mut c = lab_config();
        c.services.retain(|s| s.name == "web");
        c
    }

    fn lab_config() -> Config {
        crate::config::parse(include_str!("../../tests/lab/d1.yaml")).unwrap()
    }

    /// The lab's two services (IPv4 and IPv6) go to the two non-leaders, one
    /// each, and both families are programmed.
    #[test]
    fn vips_spread_over_the_non_leaders_in_both_families() {
        let mut s = ClusterState::default();
        for c in seed(&lab_config(), &s) {
            assert_eq!(apply(&mut s, c), consensus::Response::Ok);
        }
        let cmds = assign(&s, &live(1, &[1, 2, 3], &[]));
        let owners: BTreeMap<IpAddr, NodeId> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::SetOwner { vip, director, .. } => Some((*vip, *director)),
                _ => None,
            })
            .collect();
        let v4: IpAddr = "10.10.0.200".parse().unwrap();
        let v6: IpAddr = "fd10:10::200".parse().unwrap();
        assert_eq!(owners.len(), 2, "{cmds:?}");
        assert_ne!(owners[&v4], owners[&v6], "{cmds:?}");
        assert!(
            !owners.values().any(|d| *d == 1),
            "the leader is spared: {cmds:?}"
        );
        let t = desired_ipvs(&s);
        assert!(
            t.iter()
                .any(|(svc, d)| svc.key == ServiceKey::tcp(v6, 80) && d.len() == 2),
            "{t:?}"
        );
    }

    fn seeded() -> ClusterState {
        let mut s = ClusterState::default();
        for c in seed(&config(), &s) {
            assert_eq!(apply(&mut s, c), consensus::Response::Ok);
        }
        s
    }

    #[test]
    fn seeding_is_idempotent() {
        let s = seeded();
        assert_eq!(s.directors.len(), 3);
        assert_eq!(
            s.services["static/web"].vip,
            "10.10.0.200".parse::<IpAddr>().unwrap()
        );
        assert!(seed(&config(), &s).is_empty());
    }

    #[test]
    fn a_service_gone_from_the_file_is_removed() {
        let s = seeded();
        let mut c = config();
        c.services.clear();
        assert_eq!(
            seed(&c, &s),
            vec![Command::RemoveService {
                name: "static/web".into()
            }]
        );
    }

    fn live(leader: NodeId, live: &[NodeId], fenced: &[NodeId]) -> Liveness {
        Liveness {
            leader,
            live: live.iter().copied().collect(),
            fenced: fenced.iter().copied().collect(),
            may_assign: true,
        }
    }

    #[test]
    fn a_new_vip_goes_to_a_non_leader_after_the_wait() {
        let s = seeded();
        let vip: IpAddr = "10.10.0.200".parse().unwrap();
        let mut waiting = live(1, &[1, 2, 3], &[]);
        waiting.may_assign = false;
        assert!(assign(&s, &waiting).is_empty());
        assert_eq!(
            assign(&s, &live(1, &[1, 2, 3], &[])),
            vec![Command::SetOwner {
                vip,
                director: 2,
                expected_epoch: 0
            }]
        );
        // Only the leader is live: it takes the VIP itself.
        assert_eq!(
            assign(&s, &live(1, &[1], &[])),
            vec![Command::SetOwner {
                vip,
                director: 1,
                expected_epoch: 0
            }]
        );
    }

    #[test]
    fn a_live_owner_keeps_its_vip_and_a_fenced_one_loses_it() {
        let mut s = seeded();
        let vip: IpAddr = "10.10.0.200".parse().unwrap();
        apply(
            &mut s,
            Command::SetOwner {
                vip,
                director: 3,
                expected_epoch: 0,
            },
        );
        // Director 2 has fewer VIPs, but 3 is alive: no move (no fail-back).
        assert!(assign(&s, &live(1, &[1, 2, 3], &[])).is_empty());
        // 3 is silent but not yet fenced: still no move.
        assert!(assign(&s, &live(1, &[1, 2], &[])).is_empty());
        assert_eq!(
            assign(&s, &live(1, &[1, 2], &[3])),
            vec![Command::SetOwner {
                vip,
                director: 2,
                expected_epoch: 1
            }]
        );
    }

    /// A director commits its own draining flag only after it stopped
    /// holding (docs/fencing.md, drain), so its VIPs move at once, to a live
    /// director that is not draining, without waiting for its lease.
    #[test]
    fn a_draining_owner_hands_over_at_once() {
        let mut s = seeded();
        let vip: IpAddr = "10.10.0.200".parse().unwrap();
        apply(
            &mut s,
            Command::SetOwner {
                vip,
                director: 3,
                expected_epoch: 0,
            },
        );
        apply(
            &mut s,
            Command::SetDraining {
                director: 3,
                draining: true,
            },
        );
        assert_eq!(
            assign(&s, &live(1, &[1, 2, 3], &[])),
            vec![Command::SetOwner {
                vip,
                director: 2,
                expected_epoch: 1
            }]
        );
        // Two draining: the leader is the only candidate left.
        apply(
            &mut s,
            Command::SetDraining {
                director: 2,
                draining: true,
            },
        );
        assert_eq!(
            assign(&s, &live(1, &[1, 2, 3], &[])),
            vec![Command::SetOwner {
                vip,
                director: 1,
                expected_epoch: 1
            }]
        );
        // Nobody else is live: the VIP stays (unheld) with the drained owner.
        assert!(assign(&s, &live(1, &[3], &[])).is_empty());
    }

    #[test]
    fn the_hot_standby_table_has_every_service() {
        let s = seeded();
        let t = desired_ipvs(&s);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0.scheduler, "rr");
        assert_eq!(t[0].1.len(), 2);
        assert!(t[0]
            .1
            .iter()
            .all(|d| d.forward == Forward::Masquerade && d.port == 30080));
        assert!(managed(&t[0].0.key, &s, &config()));
        let other = ServiceKey::tcp("192.0.2.1".parse().unwrap(), 80);
        assert!(!managed(&other, &s, &config()));
    }
}
