//! The hold rule, in exactly one place: a director may answer for a VIP
//! (ARP and NDP answers, every packet of an announcement, the local route)
//! only while it is the VIP's committed owner, it is not draining or
//! releasing, and it holds its ownership lease with more than the guard
//! left (docs/fencing.md).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consensus::state::ClusterState;
use consensus::{Node, NodeId};

/// The VIPs `me` may answer for in `state`, given whether its lease allows
/// holding at all (`may_hold`).
pub fn held(state: &ClusterState, me: NodeId, may_hold: bool) -> BTreeSet<IpAddr> {
    if !may_hold {
        return BTreeSet::new();
    }
    state
        .owners
        .keys()
        .filter(|vip| holds(state, me, may_hold, vip))
        .copied()
        .collect()
}

/// Whether `me` may answer for `vip` in `state`: the rule of [`held`] for
/// one VIP.
pub fn holds(state: &ClusterState, me: NodeId, may_hold: bool, vip: &IpAddr) -> bool {
    may_hold
        && !state.draining.contains_key(&me)
        && state.owners.get(vip).is_some_and(|o| o.director == me)
}

/// The rule applied to this director, now.
#[derive(Debug, Clone)]
pub struct HoldRule {
    node: Arc<Node>,
    releasing: Arc<AtomicBool>,
    guard: Duration,
}

impl HoldRule {
    /// The rule for `node`. `guard`: how long before the lease ends holding
    /// stops, covering the time between deciding to send and the packet
    /// leaving (a thread scheduled out in between).
    pub fn new(node: Arc<Node>, guard: Duration) -> HoldRule {
        HoldRule {
            node,
            releasing: Arc::new(AtomicBool::new(false)),
            guard,
        }
    }

    /// Stops (true) or resumes (false) holding, whatever the state says
    /// (a drain).
    pub fn set_releasing(&self, releasing: bool) {
        self.releasing.store(releasing, Ordering::SeqCst);
    }

    /// Whether a drain has stopped holding.
    pub fn releasing(&self) -> bool {
        self.releasing.load(Ordering::SeqCst)
    }

    /// How much of the lease is left beyond the guard; None when holding is
    /// not allowed now.
    pub fn time_left(&self) -> Option<Duration> {
        if self.releasing() {
            return None;
        }
        self.node
            .lease_remaining()
            .and_then(|left| left.checked_sub(self.guard))
            .filter(|d| !d.is_zero())
    }

    /// Whether this director may hold any VIP now.
    pub fn may_hold(&self) -> bool {
        self.time_left().is_some()
    }

    /// The VIPs this director may answer for now.
    pub fn held(&self) -> BTreeSet<IpAddr> {
        held(&self.node.state(), self.node.id(), self.may_hold())
    }

    /// Whether this director may answer for `vip` at this moment: what
    /// every packet that speaks for a VIP asks just before it is sent.
    pub fn holds(&self, vip: &IpAddr) -> bool {
        self.may_hold() && holds(&self.node.state(), self.node.id(), true, vip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::Owner;

    #[test]
    fn only_the_owner_with_a_lease_holds() {
        let mut s = ClusterState::default();
        let vip: IpAddr = "10.10.0.200".parse().unwrap();
        s.allocations.insert(vip, "static/web".into());
        s.owners.insert(
            vip,
            Owner {
                director: 2,
                epoch: 1,
            },
        );
        assert_eq!(held(&s, 2, true), [vip].into());
        assert!(held(&s, 2, false).is_empty(), "no lease, no VIP");
        assert!(held(&s, 1, true).is_empty(), "not the owner");
        s.draining.insert(2, true);
        assert!(held(&s, 2, true).is_empty(), "draining");
    }
}
