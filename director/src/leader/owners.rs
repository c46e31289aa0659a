//! Owner assignment: which director holds each VIP. Pure: the committed
//! state and what the leader knows of the directors' liveness in, the owner
//! moves to commit out.

use std::collections::{BTreeMap, BTreeSet};

use consensus::state::{ClusterState, Role};
use consensus::{Command, NodeId};

/// What the leader knows about the directors right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    // VIPs some service uses (an allocation may be made a round before
    // its service, and a shared VIP is allocated to its group).
    let used: BTreeSet<std::net::IpAddr> = state.services.values().map(|s| s.vip).collect();
    let mut cmds = Vec::new();
    for vip in state.allocations.keys() {
        if !used.contains(vip) {
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
