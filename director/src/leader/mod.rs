//! The leader's decisions. Only the Raft leader proposes; every decision is
//! a pure function of the configuration, the sources' wanted services, the
//! committed state and what the leader knows of the directors' liveness:
//!
//! - [`catalogue`]: the members and virtual services the state must hold,
//!   with their VIPs ([`address`]);
//! - [`owners`]: which director holds each VIP, fenced by the leases.
//!
//! [`run`] is the one loop that proposes what they return.

pub mod address;
pub mod owners;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::network::encoded_len;
use consensus::state::{AddressFrom, ClusterState, Director, Protocol, Role, VirtualService};
use consensus::{Command, Node};
use tokio::sync::watch;

use crate::config::{Config, ConfigCell, PeerRole};
use crate::ops::status::OwnerClock;
use crate::sources::{self, kubernetes, VipRequest, Wanted};

pub use owners::{assign, Liveness};

/// Commands are committed in entries (see `Command::Batch`) of about this
/// many bytes, encoded: small enough that the leader can send one to a
/// follower well within a heartbeat interval (openraft's time for an
/// AppendEntries call), however many services change at once.
const BATCH_BYTES: usize = 32 * 1024;

/// Splits `cmds` into entries of at most [`BATCH_BYTES`] (a bigger single
/// command is an entry of its own), in order.
fn batches(cmds: Vec<Command>) -> Vec<Command> {
    let mut out = Vec::new();
    let mut current: Vec<Command> = Vec::new();
    let mut size = 0;
    for cmd in cmds {
        // The command and the comma that separates it from the next.
        let len = encoded_len(&cmd).saturating_add(1);
        if !current.is_empty() && size + len > BATCH_BYTES {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(cmd);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .map(|mut b| {
            if b.len() == 1 {
                b.remove(0)
            } else {
                Command::Batch(b)
            }
        })
        .collect()
}

/// What the catalogue must hold, and what it could not place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Catalogue {
    /// The commands that make the state hold it.
    pub cmds: Vec<Command>,
    /// Services that get no VIP, and why (by state name).
    pub pending: BTreeMap<String, address::Pending>,
}

/// The commands that make the committed state hold the configured members
/// and the sources' services (and drop services a source no longer has).
/// `kube`: None when the Kubernetes source is not configured (its services
/// are dropped), `Some(false)` while its watches have not listed everything
/// (its services are left exactly as they are), `Some(true)` when its view
/// is complete.
pub fn catalogue<W: Borrow<Wanted>>(
    config: &Config,
    wanted: &[W],
    state: &ClusterState,
    kube: Option<bool>,
) -> Catalogue {
    let mut out = Catalogue::default();
    let cmds = &mut out.cmds;
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
    // Services a source no longer has go first, so that the addresses
    // they give back may be taken in the same round.
    let named: BTreeSet<&str> = wanted.iter().map(|w| w.borrow().name.as_str()).collect();
    let mut taken = address::Taken::new(state.allocations.keys().copied().collect());
    let mut removed = BTreeSet::new();
    for (name, s) in &state.services {
        let gone = !named.contains(name.as_str());
        let remove = if sources::statics::owns(name) {
            gone
        } else if kubernetes::translate::owns(name) {
            gone && kube != Some(false)
        } else {
            false
        };
        if remove {
            cmds.push(Command::RemoveService { name: name.clone() });
            removed.insert(name.as_str());
            // A shared VIP stays taken until its last service goes.
            if s.share.is_none() {
                taken.remove(&s.vip);
            }
        }
    }
    // The VIP of each allocation holder (a service, or a sharing group).
    let mut held: BTreeMap<&str, IpAddr> = state
        .allocations
        .iter()
        .map(|(vip, holder)| (holder.as_str(), *vip))
        .collect();
    // Which service has each port of each shared VIP (a VIP is held by a
    // service or a sharing group, never both).
    let mut ports_on: BTreeMap<IpAddr, BTreeMap<(Protocol, u16), String>> = BTreeMap::new();
    for (name, s) in &state.services {
        if s.share.is_none() || removed.contains(name.as_str()) {
            continue;
        }
        for p in &s.ports {
            ports_on
                .entry(s.vip)
                .or_default()
                .insert((p.protocol, p.port), display(name, s.origin.as_deref()));
        }
    }
    for w in wanted {
        let w: &Wanted = w.borrow();
        let holder = w.share.as_deref().unwrap_or(&w.name);
        let chosen = match held.get(holder) {
            // The group's VIP, while it fits this member's request; a pool
            // edit that drops it takes it from every member (it is
            // released with the last, and the group gets a new one).
            Some(vip) if w.share.is_some() => {
                if address::fits(*vip, &w.vip, &config.pools) {
                    Ok(*vip)
                } else {
                    Err(address::Pending::Unfit(*vip))
                }
            }
            _ => address::choose(&w.name, &w.vip, &config.pools, state, &mut taken),
        };
        let chosen = chosen.and_then(|vip| {
            if w.share.is_none() {
                return Ok(vip);
            }
            let me = display(&w.name, w.origin.as_ref());
            // Services sharing a VIP must not share a port.
            let used = ports_on.get(&vip);
            match w.ports.iter().find_map(|p| {
                used.and_then(|u| u.get(&(p.protocol, p.port)))
                    .filter(|other| **other != me)
                    .map(|other| (p, other))
            }) {
                Some((p, other)) => Err(address::Pending::PortsCollide {
                    vip,
                    port: format!("{}/{}", p.port, p.protocol),
                    with: other.clone(),
                }),
                None => Ok(vip),
            }
        });
        let vip = match chosen {
            Ok(vip) => vip,
            Err(why) => {
                // A Kubernetes Service whose address no longer fits its
                // request (its pool stopped containing it) gives it back.
                if w.origin.is_some() && state.services.contains_key(&w.name) {
                    cmds.push(Command::RemoveService {
                        name: w.name.clone(),
                    });
                }
                out.pending.insert(w.name.clone(), why);
                continue;
            }
        };
        if state.allocations.get(&vip).map(String::as_str) != Some(holder) {
            cmds.push(Command::Allocate {
                vip,
                service: holder.to_string(),
            });
            taken.insert(vip);
            held.insert(holder, vip);
        }
        if w.share.is_some() {
            let me = display(&w.name, w.origin.as_ref());
            for p in &w.ports {
                ports_on
                    .entry(vip)
                    .or_default()
                    .insert((p.protocol, p.port), me.clone());
            }
        }
        // Where the address came from: the pool that holds it.
        let pool = match (&w.origin, &w.vip) {
            (
                Some(consensus::state::Origin {
                    address: AddressFrom::Pool(_),
                    ..
                }),
                VipRequest::Pools { keep, .. },
            ) => address::containing(vip, keep, &config.pools).map(|p| p.name.as_str()),
            _ => None,
        };
        if state
            .services
            .get(&w.name)
            .is_some_and(|have| holds(have, w, vip, pool))
        {
            continue;
        }
        let origin = w.origin.clone().map(|mut o| {
            if let (AddressFrom::Pool(name), Some(p)) = (&mut o.address, pool) {
                *name = p.to_string();
            }
            Box::new(o)
        });
        let want = VirtualService {
            vip,
            scheduler: w.scheduler,
            scheduler_flags: w.scheduler_flags.clone(),
            forwarding: w.forwarding,
            snat: w.snat,
            persistence: w.persistence,
            ports: w.ports.clone(),
            health: w.health.clone(),
            origin,
            share: w.share.clone(),
        };
        if state.services.get(&w.name).map(|s| &**s) != Some(&want) {
            cmds.push(Command::PutService {
                name: w.name.clone(),
                service: want,
            });
        }
    }
    out
}

/// Whether `have` is what `w` asks for at `vip` (with the address from
/// pool `pool`, when the origin names one), compared in place: at rest
/// the catalogue checks every service on each round, and builds none.
fn holds(have: &VirtualService, w: &Wanted, vip: IpAddr, pool: Option<&str>) -> bool {
    // Every field, so that a new one cannot be forgotten here.
    let VirtualService {
        vip: have_vip,
        scheduler,
        scheduler_flags,
        forwarding,
        snat,
        persistence,
        ports,
        health,
        origin,
        share,
    } = have;
    let same_origin = match (origin.as_deref(), &w.origin) {
        (None, None) => true,
        (
            Some(consensus::state::Origin {
                namespace,
                name,
                uid,
                address,
            }),
            Some(o),
        ) => {
            *namespace == o.namespace
                && *name == o.name
                && *uid == o.uid
                && match (address, &o.address, pool) {
                    (AddressFrom::Pool(h), AddressFrom::Pool(_), Some(p)) => h == p,
                    (h, o, _) => h == o,
                }
        }
        _ => false,
    };
    same_origin
        && *have_vip == vip
        && *scheduler == w.scheduler
        && *scheduler_flags == w.scheduler_flags
        && *forwarding == w.forwarding
        && *snat == w.snat
        && *persistence == w.persistence
        && *ports == w.ports
        && *health == w.health
        && *share == w.share
}

/// How long the leader waits after a Kubernetes change for the rest of
/// its burst.
const KUBE_SETTLE: Duration = Duration::from_millis(20);

/// How long a follower's leader loop sleeps when nothing wakes it (a
/// safety net: commits and leadership changes wake it at once).
const IDLE_FOLLOWER: Duration = Duration::from_secs(1);

/// The leader's last view of the Kubernetes Services it serves, for the
/// writer: every Service that is ours and the state names that got no VIP,
/// with why.
#[derive(Debug, Default, Clone)]
pub struct Decisions {
    /// The translation of the view: every Service that is ours, by UID
    /// (`translation.ours`).
    pub translation: Arc<kubernetes::translate::Translation>,
    /// State names without a VIP, and why.
    pub pending: BTreeMap<String, address::Pending>,
    /// The class served (`kubernetes.class`).
    pub class: String,
}

/// How a service is named to people: `namespace/name` for a Kubernetes
/// Service, else its state name.
fn display(name: &str, origin: Option<&consensus::state::Origin>) -> String {
    origin.map_or_else(
        || name.to_string(),
        |o| format!("{}/{}", o.namespace, o.name),
    )
}

/// What the leader knows of each director now (from its lease grants).
pub fn liveness(node: &Node, state: &ClusterState, config: &Config) -> Liveness {
    let contact = node.last_contact();
    let fence = Duration::from_millis(config.lease.lease_ms);
    let mut live = Liveness {
        leader: node.id(),
        may_assign: node.may_assign(),
        ..Default::default()
    };
    for id in state.directors.keys() {
        let fresh = if *id == node.id() {
            node.holds_lease()
        } else {
            contact.get(id).is_some_and(|d| *d < fence)
        };
        if fresh {
            live.live.insert(*id);
        }
        if *id != node.id() && node.may_take_from(*id) && !fresh {
            live.fenced.insert(*id);
        }
    }
    live
}

/// Proposes `cmds` in batches; false when a proposal failed (leadership
/// lost, quorum gone): the caller tries again on its next round.
async fn propose_all(node: &Node, cmds: Vec<Command>) -> bool {
    // One entry at a time: each is committed and applied before the next
    // goes out, so the leader's applied index (which its quorum rounds, and
    // so every lease grant, wait for) never falls far behind its log.
    for cmd in batches(cmds) {
        if let Err(e) = node.propose(cmd).await {
            tracing::debug!(error = %e, "proposal failed; retried on the next round");
            return false;
        }
    }
    true
}

/// The leader's loop: keeps the catalogue in the state and commits owner
/// moves. It ticks faster than the data path so that a fenced director's
/// VIPs move within a few milliseconds of its fence expiring. The catalogue
/// is compared only when the configuration, the state or the leadership
/// changed, never on a bare tick.
pub async fn run(
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    clock: Arc<OwnerClock>,
    kube: Option<Arc<kubernetes::Source>>,
    decisions: watch::Sender<Arc<Decisions>>,
    mut stop: watch::Receiver<bool>,
) {
    let lease = config.get().lease;
    let tick = Duration::from_millis((lease.margin_ms / 2).clamp(5, 50));
    // While a director has been silent for two renewals its fence may expire
    // any moment: check every 5 ms until well after it did.
    let suspicious = Duration::from_millis(lease.renew_ms * 2)
        ..Duration::from_millis(lease.lease_ms + lease.margin_ms + 500);
    let mut changes = node.watch();
    let mut roles = node.roles();
    let mut configs = config.subscribe();
    let mut kube_changes = kube.as_ref().map(|k| k.subscribe());
    // How long the last catalogue pass took.
    let mut last_pass = Duration::ZERO;
    // The last translation of the Kubernetes view, by (change count,
    // configuration generation).
    let mut translated: Option<((u64, u64), Arc<kubernetes::translate::Translation>)> = None;
    // What the catalogue was last checked against: (state, config
    // generation, Kubernetes change count).
    let mut checked: Option<(Arc<ClusterState>, u64, u64)> = None;
    let mut was_leader = false;
    // The state the owner clock last saw.
    let mut seen: Option<Arc<ClusterState>> = None;
    // The state and liveness of the last round that had nothing to move.
    let mut assigned: Option<(Arc<ClusterState>, Liveness)> = None;
    loop {
        let leading = node.leader() == Some(node.id());
        let silent = leading && node.last_contact().values().any(|d| suspicious.contains(d));
        // A new leader moves the VIPs of a director it has not heard from
        // (a dead predecessor's) the moment its new-leader wait is over.
        let new_leader_wait = if leading {
            node.new_leader_wait_left()
                .map(|left| left + Duration::from_millis(1))
        } else {
            None
        };
        let wait = if silent {
            tick.min(Duration::from_millis(5))
        } else if leading {
            new_leader_wait.map_or(tick, |left| left.min(tick))
        } else {
            // A follower has nothing to do on a bare tick: it wakes for a
            // commit, a new configuration or a change of leadership.
            IDLE_FOLLOWER
        };
        let kube_changed = async {
            match kube_changes.as_mut() {
                Some(r) => {
                    if r.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = roles.changed() => {}
            _ = configs.changed() => {}
            _ = kube_changed => {
                // Changes come in bursts (a relist, many Services created
                // at once): take them together, waiting longer the longer
                // a pass takes (at most a tenth of the time goes to passes).
                let settle = (last_pass * 10).clamp(KUBE_SETTLE, Duration::from_secs(1));
                tokio::time::sleep(settle).await;
            }
            _ = stop.changed() => return,
        }
        let mut state = node.state();
        if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &state)) {
            clock.observe(&state);
            seen = Some(state.clone());
        }
        let leading = node.leader() == Some(node.id());
        if leading != was_leader {
            tracing::info!(
                leader = leading,
                "leadership {}",
                if leading { "gained" } else { "lost" }
            );
            was_leader = leading;
            checked = None;
            assigned = None;
        }
        if !leading {
            continue;
        }
        let cfg = config.get();
        let generation = config.generation();
        let kube_seen = kube_changes.as_mut().map_or(0, |r| *r.borrow_and_update());
        let fresh = checked
            .as_ref()
            .is_some_and(|(s, g, k)| Arc::ptr_eq(s, &state) && *g == generation && *k == kube_seen);
        if !fresh {
            let pass = std::time::Instant::now();
            let statics = sources::statics::wanted(&cfg);
            let (ready, translation) = match (&kube, &cfg.kubernetes) {
                (Some(source), Some(k)) if source.ready() => {
                    // The translation reads the view and the configuration
                    // only: a commit alone reuses it.
                    let key = (kube_seen, generation);
                    let t = match &translated {
                        Some((at, t)) if *at == key => t.clone(),
                        _ => {
                            let t = Arc::new(kubernetes::translate(
                                &source.view(),
                                k,
                                &cfg.defaults,
                                &cfg.pools,
                            ));
                            translated = Some((key, t.clone()));
                            t
                        }
                    };
                    (Some(true), Some(t))
                }
                (Some(_), Some(_)) => (Some(false), None),
                // Configured but without a client (its kubeconfig did not
                // load): its services stay exactly as they are.
                (None, Some(_)) => (Some(false), None),
                (_, None) => (None, None),
            };
            let wanted: Vec<&Wanted> = statics
                .iter()
                .chain(translation.iter().flat_map(|t| t.wanted.iter()))
                .collect();
            let Catalogue { cmds, pending } = catalogue(&cfg, &wanted, &state, ready);
            last_pass = pass.elapsed();
            if let Some(translation) = translation {
                let class = cfg
                    .kubernetes
                    .as_ref()
                    .map(|k| k.class.clone())
                    .unwrap_or_default();
                decisions.send_replace(Arc::new(Decisions {
                    translation,
                    pending,
                    class,
                }));
            }
            if cmds.is_empty() {
                checked = Some((state.clone(), generation, kube_seen));
            } else {
                tracing::info!(commands = cmds.len(), "committing catalogue changes");
                if !propose_all(&node, cmds).await {
                    continue;
                }
                // The next round checks the new state again.
                state = node.state();
            }
        }
        let live = liveness(&node, &state, &cfg);
        // The same state and the same liveness give the same (empty)
        // answer: at rest the loop costs a few comparisons a tick, however
        // many VIPs there are.
        let unchanged = assigned
            .as_ref()
            .is_some_and(|(s, l)| Arc::ptr_eq(s, &state) && *l == live);
        let moves = if unchanged {
            Vec::new()
        } else {
            assign(&state, &live)
        };
        assigned = moves.is_empty().then(|| (state.clone(), live));
        for cmd in &moves {
            if let Command::SetOwner { vip, director, .. } = cmd {
                tracing::info!(%vip, owner = director, "moving VIP");
            }
        }
        // All the moves of a round in few log entries: thousands of VIPs
        // placed at start (or leaving a dead director) are a few commits,
        // not one each (every commit wakes every director's reconcilers).
        if !moves.is_empty() && !propose_all(&node, moves).await {
            tracing::debug!("owner moves not all committed; the next round looks again");
        }
        // The moves are in the log: a fenced director that comes back may be
        // granted a lease again (it must apply them before the lease counts).
        node.moves_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ipvs::{desired as desired_ipvs, managed};
    use consensus::apply;
    use consensus::NodeId;
    use ipvs_sys::{Forward, ServiceKey};
    use std::collections::BTreeMap;

    /// The catalogue of the file's static services.
    fn seed(config: &Config, state: &ClusterState) -> Vec<Command> {
        catalogue(config, &sources::statics::wanted(config), state, None).cmds
    }

    /// The lab's d1 config with its IPv4 service only.
    fn config() -> Config {
        let mut c = lab_config();
        c.services.retain(|s| s.name == "web");
        c
    }

    fn lab_config() -> Config {
        crate::config::parse(include_str!("../../../tests/lab/d1.yaml")).unwrap()
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
        let t = desired_ipvs(&s, &Default::default(), &Default::default());
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

    /// Thousands of commands become entries of bounded size, in order.
    #[test]
    fn commands_are_proposed_in_entries_of_bounded_size() {
        let cmds: Vec<Command> = (0..5000u32)
            .map(|i| Command::SetOwner {
                vip: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                director: 2,
                expected_epoch: 0,
            })
            .collect();
        let entries = batches(cmds.clone());
        assert!(entries.len() > 1, "{}", entries.len());
        let mut flat = Vec::new();
        for e in entries {
            assert!(encoded_len(&e) <= BATCH_BYTES + 32, "{}", encoded_len(&e));
            match e {
                Command::Batch(b) => flat.extend(b),
                one => flat.push(one),
            }
        }
        assert_eq!(flat, cmds);
        assert_eq!(batches(cmds[..1].to_vec()), cmds[..1].to_vec());
        assert!(batches(Vec::new()).is_empty());
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
        let t = desired_ipvs(&s, &Default::default(), &Default::default());
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

    fn kube_wanted(uid: &str, vip: VipRequest) -> Wanted {
        Wanted {
            name: kubernetes::translate::state_name(uid, false),
            vip,
            scheduler: consensus::domain::Scheduler::Rr,
            scheduler_flags: BTreeSet::new(),
            forwarding: consensus::domain::Forwarding::Nat,
            persistence: None,
            ports: Vec::new(),
            snat: true,
            health: None,
            origin: Some(consensus::state::Origin {
                namespace: "default".into(),
                name: uid.into(),
                uid: uid.into(),
                address: AddressFrom::Pool(String::new()),
            }),
            share: None,
        }
    }

    /// What one pass of each whole-state consumer costs at 10,000
    /// Kubernetes services of three backends each (run by hand:
    /// `cargo test -p director --release --lib per_pass_costs -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn per_pass_costs_at_10000_services() {
        use std::time::Instant;
        let mut c = config();
        c.pools = vec![crate::config::Pool::new(
            "lab",
            vec![(
                "10.20.0.0".parse().unwrap(),
                "10.20.255.255".parse().unwrap(),
            )],
        )];
        let check = crate::config::health::HealthSettings::default()
            .resolve(crate::config::health::HealthKind::KubeProxy, None)
            .map(Box::new);
        let wanted: Vec<Wanted> = (0..10_000)
            .map(|i| {
                let mut w = kube_wanted(&format!("uid-{i}"), auto());
                w.health = check.clone();
                w.ports = vec![consensus::state::ServicePort {
                    protocol: consensus::state::Protocol::Tcp,
                    port: 80,
                    backends: (1..=3)
                        .map(|n| consensus::state::Backend {
                            address: IpAddr::from([10, 0, 0, n]),
                            port: 30000 + (i % 2000) as u16,
                            weight: 1,
                        })
                        .collect(),
                }];
                w
            })
            .collect();
        let mut s = seeded();
        for n in [2_500, 5_000] {
            let t = Instant::now();
            let out = catalogue(&c, &wanted[..n], &s, Some(true));
            eprintln!(
                "catalogue, {n} new: {:?} ({} commands)",
                t.elapsed(),
                out.cmds.len()
            );
        }
        let t = Instant::now();
        let out = catalogue(&c, &wanted, &s, Some(true));
        eprintln!("catalogue, all new: {:?}", t.elapsed());
        commit(&mut s, out.cmds);
        eprintln!("services after one round: {}", s.services.len());
        let time = |what: &str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..10 {
                f();
            }
            eprintln!("{what}: {:?} per pass", t.elapsed() / 10);
        };
        time("state clone", &mut || drop(std::hint::black_box(s.clone())));
        time("catalogue, steady", &mut || {
            assert!(catalogue(&c, &wanted, &s, Some(true)).cmds.is_empty())
        });
        time("ipvs desired", &mut || {
            drop(desired_ipvs(&s, &Default::default(), &Default::default()))
        });
        let d = desired_ipvs(&s, &Default::default(), &Default::default());
        time("ipvs plan, steady", &mut || {
            assert!(crate::dataplane::ipvs::plan(&d, &d).is_empty())
        });
        time("nft snat ruleset", &mut || {
            drop(crate::dataplane::nft::snat_ruleset(&s))
        });
        time("health targets", &mut || drop(crate::health::targets(&s)));
        time("dr backends", &mut || {
            drop(crate::dataplane::onlink::dr_backends(&s))
        });
        // A reload of a file of 10,000 static services, four backends each.
        let mut text = include_str!("../../../tests/lab/d1.yaml").replace(
            "pools:\n",
            "pools:\n  - name: scale\n    addresses: [\"10.20.0.0/16\"]\n",
        );
        for i in 0..10_000u32 {
            text.push_str(&format!(
                "  - name: s{i}\n    vip: 10.20.{}.{}\n    ports:\n      - {{port: 80, protocol: tcp}}\n    \
                 backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\", \"10.10.0.21:30081\", \"10.10.0.22:30081\"]\n",
                (i + 1) / 256,
                (i + 1) % 256
            ));
        }
        let mut parsed = None;
        time("parse a file of 10,000 services", &mut || {
            parsed = Some(crate::config::parse(&text).unwrap())
        });
        let c = parsed.unwrap();
        let statics = sources::statics::wanted(&c);
        let mut s = ClusterState::default();
        let cmds = catalogue(&c, &statics, &s, None).cmds;
        commit(&mut s, cmds);
        assert_eq!(s.services.len(), 10_002);
        time("static wanted", &mut || drop(sources::statics::wanted(&c)));
        time("catalogue of the file, steady", &mut || {
            assert!(catalogue(&c, &statics, &s, None).cmds.is_empty())
        });
    }

    fn auto() -> VipRequest {
        VipRequest::Pools {
            keep: vec!["lab".into()],
            assign: vec!["lab".into()],
            v6: false,
        }
    }

    fn commit(s: &mut ClusterState, cmds: Vec<Command>) {
        for c in cmds {
            assert!(
                !matches!(apply(s, c.clone()), consensus::Response::Rejected(_)),
                "{c:?}"
            );
        }
    }

    /// Kubernetes allocations: keyed by the Service, kept while it exists
    /// and its pool contains the address, whatever else comes and goes;
    /// an exhausted pool leaves only the later Service pending.
    #[test]
    fn kubernetes_allocations_never_change_under_a_service() {
        let mut c = config();
        c.pools = vec![crate::config::Pool::new(
            "lab",
            vec![(
                "10.10.0.201".parse().unwrap(),
                "10.10.0.202".parse().unwrap(),
            )],
        )];
        let mut s = seeded();
        let a = kube_wanted("a", auto());
        let b = kube_wanted("b", auto());
        let out = catalogue(&c, &[a.clone(), b.clone()], &s, Some(true));
        assert!(out.pending.is_empty(), "{:?}", out.pending);
        commit(&mut s, out.cmds);
        let vip_of = |s: &ClusterState, n: &str| {
            s.services[&kubernetes::translate::state_name(n, false)].vip
        };
        assert_eq!(vip_of(&s, "a").to_string(), "10.10.0.201");
        assert_eq!(vip_of(&s, "b").to_string(), "10.10.0.202");
        assert_eq!(
            s.services[&a.name].origin.as_ref().unwrap().address,
            AddressFrom::Pool("lab".into())
        );
        // a goes; b keeps its address, and a third gets a's.
        let cc = kube_wanted("c", auto());
        let out = catalogue(&c, &[b.clone(), cc.clone()], &s, Some(true));
        commit(&mut s, out.cmds);
        assert!(!s.services.contains_key(&a.name));
        assert_eq!(vip_of(&s, "b").to_string(), "10.10.0.202");
        assert_eq!(vip_of(&s, "c").to_string(), "10.10.0.201");
        // The pool is full: the fourth is pending, nobody else moves.
        let d = kube_wanted("d", auto());
        let out = catalogue(&c, &[b.clone(), cc.clone(), d.clone()], &s, Some(true));
        assert_eq!(
            out.pending[&d.name],
            address::Pending::Exhausted(vec!["lab".into()])
        );
        assert!(out.cmds.is_empty(), "{:?}", out.cmds);
        // A requested address someone has: pending, naming the holder.
        let e = kube_wanted("e", VipRequest::Address("10.10.0.202".parse().unwrap()));
        let out = catalogue(&c, &[b.clone(), cc.clone(), e.clone()], &s, Some(true));
        assert!(
            out.pending[&e.name].to_string().contains(&b.name),
            "{:?}",
            out.pending
        );
        // While the watches have not listed, nothing of Kubernetes changes.
        let out = catalogue::<Wanted>(&c, &[], &s, Some(false));
        assert!(out.cmds.is_empty(), "{:?}", out.cmds);
        // A pool edit that drops b's address releases it (b pending).
        c.pools[0].ranges = vec![(
            "10.10.0.201".parse().unwrap(),
            "10.10.0.201".parse().unwrap(),
        )];
        let out = catalogue(&c, &[b.clone(), cc.clone()], &s, Some(true));
        assert_eq!(
            out.cmds,
            vec![Command::RemoveService {
                name: b.name.clone()
            }]
        );
        assert!(out.pending.contains_key(&b.name));
        // Without the Kubernetes source configured, its services go.
        let out = catalogue::<Wanted>(&c, &[], &s, None);
        assert_eq!(out.cmds.len(), 2, "{:?}", out.cmds);
    }

    /// Services with one sharing key share one VIP on disjoint ports; a
    /// colliding port leaves the later one pending; the VIP is released with
    /// the group's last service.
    #[test]
    fn a_sharing_key_puts_services_on_one_vip_with_disjoint_ports() {
        let mut c = config();
        c.pools = vec![crate::config::Pool::new(
            "lab",
            vec![(
                "10.10.0.201".parse().unwrap(),
                "10.10.0.209".parse().unwrap(),
            )],
        )];
        let group = "kube-share/default/k/ipv4".to_string();
        let shared = |uid: &str, port: u16| {
            let mut w = kube_wanted(uid, auto());
            w.share = Some(group.clone());
            w.ports = vec![consensus::state::ServicePort {
                protocol: Protocol::Tcp,
                port,
                backends: Vec::new(),
            }];
            w
        };
        let (a, b, x) = (shared("a", 80), shared("b", 443), shared("x", 80));
        let mut s = seeded();
        let out = catalogue(&c, &[a.clone(), b.clone(), x.clone()], &s, Some(true));
        assert!(
            matches!(&out.pending[&x.name], address::Pending::PortsCollide { with, .. } if with == "default/a"),
            "{:?}",
            out.pending
        );
        commit(&mut s, out.cmds);
        let vip: IpAddr = "10.10.0.201".parse().unwrap();
        assert_eq!(s.services[&a.name].vip, vip);
        assert_eq!(s.services[&b.name].vip, vip);
        assert_eq!(s.allocations[&vip], group);
        assert!(!s.services.contains_key(&x.name));
        // Stable: the next round changes nothing.
        let again = catalogue(&c, &[a.clone(), b.clone(), x.clone()], &s, Some(true));
        assert!(again.cmds.is_empty(), "{:?}", again.cmds);
        // An owner is assigned to the shared VIP.
        let moves = assign(&s, &live(1, &[1, 2, 3], &[]));
        assert!(
            moves
                .iter()
                .any(|m| matches!(m, Command::SetOwner { vip: v, .. } if *v == vip)),
            "{moves:?}"
        );
        // a goes: x takes its port on the same VIP; the VIP stays.
        let out = catalogue(&c, &[b.clone(), x.clone()], &s, Some(true));
        commit(&mut s, out.cmds);
        assert_eq!(s.services[&x.name].vip, vip);
        // All go: released.
        let out = catalogue::<Wanted>(&c, &[], &s, Some(true));
        commit(&mut s, out.cmds);
        assert!(!s.allocations.contains_key(&vip), "{:?}", s.allocations);
    }
}
