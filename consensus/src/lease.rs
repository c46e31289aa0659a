//! Ownership leases: the fencing rule of docs/fencing.md as code.
//!
//! A director answers for a VIP only while it is the committed owner AND holds
//! a lease. It renews the lease with the leader; the lease runs from the moment
//! the director SENT the renewal, on its own boot clock ([`crate::clock`]),
//! so it ends no later than the leader believes. The leader grants only while a quorum has
//! acknowledged it recently, and lets a VIP move away from a director only
//! once that director's last grant plus the lease plus a margin has passed; a
//! new leader moves nothing until one lease plus margin after it took office.
//!
//! Everything here is pure: times come in as arguments, as instants on the
//! boot clock of the host that computes with them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::BootInstant;
use crate::state::NodeId;

/// Raft timing, in milliseconds. It lives with the lease rules because the
/// inequalities of docs/fencing.md bind it to [`LeaseTiming`] ([`validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Smallest election timeout.
    pub election_min_ms: u64,
    /// Largest election timeout.
    pub election_max_ms: u64,
}

impl Default for Timing {
    /// Heartbeat 40 ms, election 100 to 200 ms: a LAN's round trips are
    /// well under a millisecond, and a lost leader is replaced within 200 ms.
    fn default() -> Self {
        Timing {
            heartbeat_ms: 40,
            election_min_ms: 100,
            election_max_ms: 200,
        }
    }
}

/// Lease timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a grant lasts, counted from when the holder sent the renewal.
    pub lease_ms: u64,
    /// Extra wait before a silent director's VIPs move (clock-rate slack).
    pub margin_ms: u64,
    /// How often holders renew.
    pub renew_ms: u64,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_ms: 300,
            margin_ms: 40,
            renew_ms: 40,
        }
    }
}

/// The least relative difference in clock rate between two directors that
/// the margin must cover; an NTP daemon slewing a large offset can exceed it
/// (docs/fencing.md, "Clock assumptions").
pub const MAX_CLOCK_RATE_DRIFT: f64 = 0.01;

/// Checks the timing inequalities of docs/fencing.md; the first one broken.
pub fn validate(raft: &Timing, lease: &LeaseTiming) -> Result<(), String> {
    let t = raft;
    let l = lease;
    if t.heartbeat_ms == 0 || t.heartbeat_ms >= t.election_min_ms {
        return Err(format!(
            "heartbeat ({} ms) must be above 0 and below the election timeout ({} ms)",
            t.heartbeat_ms, t.election_min_ms
        ));
    }
    if t.election_min_ms >= t.election_max_ms {
        return Err(format!(
            "election timeout min ({} ms) must be below max ({} ms)",
            t.election_min_ms, t.election_max_ms
        ));
    }
    // A grant needs a quorum ack no older than the election timeout minimum,
    // which must be shorter than the followers' leader lease (openraft's
    // election_timeout_max): then every grant of a deposed leader happened
    // before its successor was elected.
    if quorum_freshness_ms(t) >= t.election_max_ms {
        return Err("quorum freshness must be below election_timeout_max".into());
    }
    if l.renew_ms == 0 || l.renew_ms * 2 > l.lease_ms {
        return Err(format!(
            "lease renewal ({} ms) must be at most half the lease ({} ms): a lost renewal must not lapse the lease",
            l.renew_ms, l.lease_ms
        ));
    }
    // Holders must ride out a leader election without their lease lapsing
    // (docs/fencing.md, "Losing the leader"): the last grant may be a
    // renewal old, a successor is elected once the leader lease is over,
    // and a holder gives its VIPs up half a margin before its lease ends.
    if l.lease_ms < t.election_max_ms + 2 * l.renew_ms + l.margin_ms / 2 {
        return Err(format!(
            "lease ({} ms) must be at least election_timeout_max ({} ms) + 2 x renewal ({} ms) + margin / 2 ({} ms), so that losing the leader does not lapse every lease",
            l.lease_ms,
            t.election_max_ms,
            l.renew_ms,
            l.margin_ms / 2
        ));
    }
    let min_margin = (l.lease_ms as f64 * MAX_CLOCK_RATE_DRIFT).ceil() as u64;
    if l.margin_ms < min_margin.max(t.heartbeat_ms) {
        return Err(format!(
            "margin ({} ms) must be at least the heartbeat ({} ms) and {:.0}% of the lease ({} ms)",
            l.margin_ms,
            t.heartbeat_ms,
            MAX_CLOCK_RATE_DRIFT * 100.0,
            min_margin
        ));
    }
    Ok(())
}

/// How long a follower that stops hearing the leader waits before it asks
/// for votes itself (docs/fencing.md, "Losing the leader"), by its `rank`
/// among the voters left (0 for the lowest id). openraft 0.9 alone would
/// wait the leader lease it grants (`election_timeout_max`) plus a random
/// election timeout, up to twice `election_timeout_max`, longer than the
/// ownership leases last; asking once the leader lease is over (when the
/// other voters accept) keeps every lease alive through a new election. The
/// ranks are a step apart so that two followers do not split the vote.
pub fn prompt_election_after(t: &Timing, l: &LeaseTiming, rank: usize) -> Duration {
    let step = election_step_ms(t, l);
    Duration::from_millis(t.election_max_ms + step * (1 + rank as u64))
}

/// The step between two followers' prompt elections: a quarter of what a
/// holder's lease leaves after the leader lease, its last renewal interval
/// and the hold rule's half margin, at least 1 ms and at most a heartbeat.
pub fn election_step_ms(t: &Timing, l: &LeaseTiming) -> u64 {
    let slack = l
        .lease_ms
        .saturating_sub(l.renew_ms + l.margin_ms / 2 + t.election_max_ms);
    (slack / 4).clamp(1, t.heartbeat_ms.max(1))
}

/// How recent the leader's last confirmed quorum round must be for it to
/// grant: the election timeout minimum.
pub fn quorum_freshness_ms(t: &Timing) -> u64 {
    t.election_min_ms
}

/// A granted lease, as the leader answers a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lease length in milliseconds.
    pub lease_ms: u64,
    /// The leader's term.
    pub term: u64,
    /// The leader's last log index when it granted. The lease counts only
    /// once the holder has applied its log this far: it then knows every
    /// move the leader decided before granting (docs/fencing.md, "A holder
    /// that comes back").
    #[serde(default)]
    pub log_index: u64,
}

/// Why a renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The leader has not heard from a quorum recently enough.
    #[error("no quorum acknowledgement for {millis:?} ms")]
    NoQuorum {
        /// Milliseconds since the last quorum ack, if any.
        millis: Option<u64>,
    },
    /// The leader is taking this director's VIPs away (its fence passed);
    /// it grants again once the moves are in its log.
    #[error("the leader is moving this director's VIPs away")]
    Revoking,
}

/// The leader's view of the leases it granted.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    timing: LeaseTiming,
    freshness: Duration,
    /// The term and the instant this node became leader of it.
    leader_since: Option<(u64, BootInstant)>,
    /// Last grant per director, in the current term.
    grants: BTreeMap<NodeId, BootInstant>,
    /// Directors whose fence passed and whose VIPs may be being moved:
    /// no grants until [`LeaseTable::moves_done`].
    revoking: std::collections::BTreeSet<NodeId>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new(raft: &Timing, timing: LeaseTiming) -> Self {
        LeaseTable {
            timing,
            freshness: Duration::from_millis(quorum_freshness_ms(raft)),
            leader_since: None,
            grants: BTreeMap::new(),
            revoking: Default::default(),
        }
    }

    /// Tells the table who leads now. A new term as leader starts with no
    /// grants and the new-leader wait.
    pub fn observe(&mut self, is_leader: bool, term: u64, now: BootInstant) {
        match (is_leader, self.leader_since) {
            (true, Some((t, _))) if t == term => {}
            (true, _) => {
                self.leader_since = Some((term, now));
                self.grants.clear();
                self.revoking.clear();
            }
            (false, _) => {
                self.leader_since = None;
                self.grants.clear();
                self.revoking.clear();
            }
        }
    }

    /// Answers a renewal from `director` at `now`. `quorum_at` is the latest
    /// instant from which a quorum is known to have acknowledged this leader
    /// (the start of the last successful quorum round; `None`: never).
    pub fn grant(
        &mut self,
        director: NodeId,
        now: BootInstant,
        quorum_at: Option<BootInstant>,
        leader: Option<NodeId>,
    ) -> Result<Grant, Refusal> {
        let Some((term, _)) = self.leader_since else {
            return Err(Refusal::NotLeader { leader });
        };
        if self.revoking.contains(&director) {
            return Err(Refusal::Revoking);
        }
        let age = quorum_at.map(|q| now.saturating_duration_since(q));
        // (the same rule as `fresh`, with the age reported on refusal)
        match age {
            Some(a) if a < self.freshness => {}
            other => {
                return Err(Refusal::NoQuorum {
                    millis: other.map(|a| a.as_millis() as u64),
                })
            }
        }
        self.grants.insert(director, now);
        Ok(Grant {
            lease_ms: self.timing.lease_ms,
            term,
            // The caller fills in its last log index.
            log_index: 0,
        })
    }

    /// Whether a quorum confirmed this leader recently enough (`quorum_at`
    /// as in [`LeaseTable::grant`]).
    fn fresh(&self, now: BootInstant, quorum_at: Option<BootInstant>) -> bool {
        quorum_at.is_some_and(|q| now.saturating_duration_since(q) < self.freshness)
    }

    /// Whether a VIP may be taken from `director` at `now`: only when its last
    /// grant (or, if later, this leader's start) plus lease plus margin has
    /// passed, and a quorum confirmed this leader recently. False when this
    /// node is not the leader (a deposed leader that has not noticed yet
    /// fails the quorum check). When true, `director` gets no grant until
    /// [`LeaseTable::moves_done`]: a grant between this decision and the
    /// move reaching the log would not make the holder wait for the move.
    pub fn may_take_from(
        &mut self,
        director: NodeId,
        now: BootInstant,
        quorum_at: Option<BootInstant>,
    ) -> bool {
        let Some((_, since)) = self.leader_since else {
            return false;
        };
        if !self.fresh(now, quorum_at) {
            return false;
        }
        let last = self
            .grants
            .get(&director)
            .copied()
            .map_or(since, |g| g.max(since));
        let may = now >= last + self.fence();
        if may {
            self.revoking.insert(director);
        }
        may
    }

    /// The moves decided after [`LeaseTable::may_take_from`] are in the log
    /// (committed, or given up): grant to those directors again.
    pub fn moves_done(&mut self) {
        self.revoking.clear();
    }

    /// Whether this leader may assign VIPs that have no live owner yet: after
    /// the new-leader wait, while a quorum confirms it.
    pub fn may_assign(&self, now: BootInstant, quorum_at: Option<BootInstant>) -> bool {
        self.fresh(now, quorum_at)
            && self
                .leader_since
                .is_some_and(|(_, since)| now >= since + self.fence())
    }

    /// How long until the new-leader wait (lease plus margin from taking
    /// office) is over; `None` once it is, and when this node does not lead.
    pub fn new_leader_wait_left(&self, now: BootInstant) -> Option<Duration> {
        let (_, since) = self.leader_since?;
        (since + self.fence())
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// How long ago each director was last granted a lease by this leader
    /// (its last contact); empty when not the leader.
    pub fn last_grants(&self, now: BootInstant) -> BTreeMap<NodeId, Duration> {
        self.grants
            .iter()
            .map(|(id, at)| (*id, now.saturating_duration_since(*at)))
            .collect()
    }

    /// Lease plus margin.
    pub fn fence(&self) -> Duration {
        Duration::from_millis(self.timing.lease_ms + self.timing.margin_ms)
    }
}

/// A holder's view of its own lease.
#[derive(Debug, Clone, Default)]
pub struct HeldLease {
    valid_until: Option<BootInstant>,
    /// Grants whose log index this holder has not applied yet, with the
    /// instant their renewal was sent.
    pending: Vec<(BootInstant, Grant)>,
    /// Times the lease ran out before a renewal extended it.
    lapses: u64,
    /// Whether the end of the current `valid_until` is counted in `lapses`.
    lapse_counted: bool,
}

/// Grants a holder keeps waiting for its log; older ones are dropped.
const MAX_PENDING: usize = 16;

impl HeldLease {
    /// Records a grant for a renewal SENT at `sent`, with this holder's
    /// applied log index; it counts once `applied` reaches the grant's.
    pub fn granted(&mut self, sent: BootInstant, grant: &Grant, applied: u64) {
        if grant.log_index <= applied {
            self.extend(sent, grant);
        } else {
            if self.pending.len() == MAX_PENDING {
                self.pending.remove(0);
            }
            self.pending.push((sent, *grant));
        }
    }

    /// Whether grants wait for this holder's log.
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The holder has applied its log up to `applied`: the grants waiting
    /// for it count now.
    pub fn catch_up(&mut self, applied: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|(_, g)| g.log_index <= applied);
        self.pending = waiting;
        for (sent, g) in ready {
            self.extend(sent, &g);
        }
    }

    fn extend(&mut self, sent: BootInstant, grant: &Grant) {
        let until = sent + Duration::from_millis(grant.lease_ms);
        match self.valid_until {
            None => self.valid_until = Some(until),
            Some(u) if until > u => {
                // The renewal was sent after the lease had ended: there was
                // a gap, a lapse (unless `note` counted it already).
                if sent >= u && !self.lapse_counted {
                    self.lapses += 1;
                }
                self.valid_until = Some(until);
                self.lapse_counted = false;
            }
            Some(_) => {}
        }
    }

    /// Notes the time: a lease that has ended by `now` counts as one lapse,
    /// once (the renewal loop calls this on every tick, so that a lapse is
    /// counted while it lasts, not only when the lease comes back).
    pub fn note(&mut self, now: BootInstant) {
        if let Some(u) = self.valid_until {
            if now >= u && !self.lapse_counted {
                self.lapses += 1;
                self.lapse_counted = true;
            }
        }
    }

    /// Times the lease ran out (held, then not renewed in time), as far as
    /// [`HeldLease::note`] and the grants have seen.
    pub fn lapses(&self) -> u64 {
        self.lapses
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: BootInstant) -> bool {
        self.valid_until.is_some_and(|u| now < u)
    }

    /// When it ends, if ever granted.
    pub fn valid_until(&self) -> Option<BootInstant> {
        self.valid_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, TestClock};

    /// Some instant on the boot clock (the tests only compare with it).
    const T0: BootInstant = BootInstant::from_since_boot(Duration::from_secs(1000));

    fn timing() -> (Timing, LeaseTiming) {
        (Timing::default(), LeaseTiming::default())
    }

    #[test]
    fn defaults_and_tight_timing_satisfy_the_inequalities() {
        let (t, l) = timing();
        validate(&t, &l).unwrap();
        // The failover benchmark's tuned setting (docs/benchmarks.md).
        let tight = Timing {
            heartbeat_ms: 20,
            election_min_ms: 50,
            election_max_ms: 80,
        };
        validate(
            &tight,
            &LeaseTiming {
                lease_ms: 140,
                margin_ms: 20,
                renew_ms: 20,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_follower_asks_for_votes_once_the_leader_lease_is_over_ranks_a_step_apart() {
        let (t, l) = timing();
        // 300 - 40 - 20 - 200 = 40 ms to spare: a step of 10 ms.
        assert_eq!(election_step_ms(&t, &l), 10);
        assert_eq!(prompt_election_after(&t, &l, 0), Duration::from_millis(210));
        assert_eq!(prompt_election_after(&t, &l, 1), Duration::from_millis(220));
        // Both come before the last grant's lease ends (a renewal before the
        // leader went silent) less the hold rule's half margin.
        let end = l.lease_ms - l.renew_ms - l.margin_ms / 2;
        assert!(prompt_election_after(&t, &l, 1) < Duration::from_millis(end));
        // The lab's relaxed timing: a step of at most a heartbeat.
        let lab = Timing {
            heartbeat_ms: 150,
            election_min_ms: 1000,
            election_max_ms: 2000,
        };
        let lab_lease = LeaseTiming {
            lease_ms: 3000,
            margin_ms: 300,
            renew_ms: 300,
        };
        assert_eq!(election_step_ms(&lab, &lab_lease), 137);
        let tight = Timing {
            heartbeat_ms: 20,
            ..lab
        };
        assert_eq!(election_step_ms(&tight, &lab_lease), 20);
        // No slack at all still gives a step.
        let none = LeaseTiming {
            lease_ms: t.election_max_ms,
            ..l
        };
        assert_eq!(election_step_ms(&t, &none), 1);
    }

    #[test]
    fn timing_that_breaks_an_inequality_is_refused() {
        let (t, l) = timing();
        // Shorter than election_timeout_max + 2 x renewal + margin / 2.
        let short = LeaseTiming {
            lease_ms: t.election_max_ms + 2 * l.renew_ms + l.margin_ms / 2 - 1,
            ..l
        };
        assert!(validate(&t, &short)
            .unwrap_err()
            .contains("election_timeout_max"));
        let slow = LeaseTiming {
            renew_ms: l.lease_ms / 2 + 1,
            ..l
        };
        assert!(validate(&t, &slow).unwrap_err().contains("at most half"));
        let thin = LeaseTiming { margin_ms: 1, ..l };
        assert!(validate(&t, &thin).unwrap_err().contains("margin"));
        let bad = Timing {
            heartbeat_ms: t.election_min_ms,
            ..t
        };
        assert!(validate(&bad, &l).unwrap_err().contains("heartbeat"));
    }

    #[test]
    fn the_holder_counts_from_when_it_sent() {
        let t0 = T0;
        let mut held = HeldLease::default();
        assert!(!held.holds(t0));
        let grant = Grant {
            lease_ms: 600,
            term: 3,
            log_index: 7,
        };
        // Sent at t0, the grant arrived 50 ms later: still ends at t0 + 600.
        held.granted(t0, &grant, 7);
        assert!(held.holds(t0 + Duration::from_millis(599)));
        assert!(!held.holds(t0 + Duration::from_millis(600)));
        // An older reply never shortens a newer lease.
        held.granted(t0 + Duration::from_millis(100), &grant, 9);
        held.granted(t0, &grant, 9);
        assert_eq!(held.valid_until(), Some(t0 + Duration::from_millis(700)));
    }

    /// A holder that comes back (docs/fencing.md): a grant counts only once
    /// the holder has applied the leader's log as far as it was at the grant,
    /// so a move decided before the grant is known before the lease holds.
    #[test]
    fn a_grant_counts_only_once_the_holder_has_applied_that_far() {
        let t0 = T0;
        let mut held = HeldLease::default();
        let grant = Grant {
            lease_ms: 600,
            term: 3,
            log_index: 12,
        };
        held.granted(t0, &grant, 10);
        assert!(!held.holds(t0));
        held.catch_up(11);
        assert!(!held.holds(t0 + Duration::from_millis(1)));
        held.catch_up(12);
        // Counted from when it was sent, as ever.
        assert!(held.holds(t0 + Duration::from_millis(599)));
        assert_eq!(held.valid_until(), Some(t0 + Duration::from_millis(600)));
        // A waiting grant does not shorten a lease that holds already.
        let later = Grant {
            log_index: 20,
            ..grant
        };
        held.granted(t0 + Duration::from_millis(100), &later, 12);
        assert_eq!(held.valid_until(), Some(t0 + Duration::from_millis(600)));
        held.catch_up(25);
        assert_eq!(held.valid_until(), Some(t0 + Duration::from_millis(700)));
        // Only the newest few grants wait; the oldest go.
        for i in 0..(MAX_PENDING as u64 + 4) {
            let g = Grant {
                log_index: 100 + i,
                ..grant
            };
            held.granted(t0 + Duration::from_millis(200 + i), &g, 25);
        }
        assert_eq!(held.pending.len(), MAX_PENDING);
    }

    /// A lapse is the holder's lease running out before a renewal extends
    /// it: counted once, whether the renewal loop noticed it while it lasted
    /// or only the next grant shows the gap.
    #[test]
    fn a_lapse_counts_once_whether_noticed_or_seen_from_the_next_grant() {
        let t0 = T0;
        let ms = Duration::from_millis;
        let grant = Grant {
            lease_ms: 300,
            term: 1,
            log_index: 0,
        };
        let mut held = HeldLease::default();
        // Never held: nothing lapses.
        held.note(t0);
        assert_eq!(held.lapses(), 0);
        // Renewed in time, twice: no lapse.
        held.granted(t0, &grant, 0);
        held.note(t0 + ms(100));
        held.granted(t0 + ms(100), &grant, 0);
        held.note(t0 + ms(399));
        assert_eq!(held.lapses(), 0);
        // Ends at t0 + 400; noticed at 450 and 500, then renewed: one lapse.
        held.note(t0 + ms(450));
        held.note(t0 + ms(500));
        held.granted(t0 + ms(500), &grant, 0);
        assert_eq!(held.lapses(), 1);
        // Ends at t0 + 800 unnoticed; the next grant, sent after, shows it.
        held.granted(t0 + ms(900), &grant, 0);
        assert_eq!(held.lapses(), 2);
        // A late reply to an older renewal changes nothing.
        held.granted(t0 + ms(850), &grant, 0);
        held.note(t0 + ms(1100));
        assert_eq!(held.lapses(), 2);
        held.note(t0 + ms(1200));
        held.note(t0 + ms(1300));
        assert_eq!(held.lapses(), 3);
    }

    #[test]
    fn a_director_whose_vips_are_being_moved_is_not_granted_until_the_moves_are_done() {
        let (t, l) = timing();
        let start = T0;
        let mut table = LeaseTable::new(&t, l);
        table.observe(true, 1, start);
        let fence = start + Duration::from_millis(l.lease_ms + l.margin_ms);
        table.grant(2, start, Some(start), Some(1)).unwrap();
        assert!(table.may_take_from(2, fence, Some(fence)));
        // Director 2 comes back before the move reaches the log: refused.
        assert_eq!(
            table.grant(2, fence, Some(fence), Some(1)),
            Err(Refusal::Revoking)
        );
        // Others are granted as ever.
        assert!(table.grant(3, fence, Some(fence), Some(1)).is_ok());
        table.moves_done();
        assert!(table.grant(2, fence, Some(fence), Some(1)).is_ok());
        // A new term starts without the mark.
        assert!(table.may_take_from(
            3,
            fence + Duration::from_secs(1),
            Some(fence + Duration::from_secs(1))
        ));
        table.observe(true, 2, fence + Duration::from_secs(2));
        assert!(table.grant(3, fence, Some(fence), Some(1)).is_ok());
    }

    #[test]
    fn the_leader_grants_only_with_a_fresh_quorum() {
        let (t, l) = timing();
        let now = T0;
        let mut table = LeaseTable::new(&t, l);
        assert_eq!(
            table.grant(2, now, Some(now), Some(1)),
            Err(Refusal::NotLeader { leader: Some(1) })
        );
        table.observe(true, 5, now);
        let ms = |n| now - Duration::from_millis(n);
        assert!(table.grant(2, now, Some(ms(20)), Some(1)).is_ok());
        assert_eq!(
            table.grant(2, now, Some(ms(150)), Some(1)),
            Err(Refusal::NoQuorum { millis: Some(150) })
        );
        assert_eq!(
            table.grant(2, now, None, Some(1)),
            Err(Refusal::NoQuorum { millis: None })
        );
    }

    /// The fencing rule (docs/fencing.md): the leader takes a VIP from a
    /// director only after that director's lease, counted from any instant at
    /// or before the grant, has ended plus the margin.
    #[test]
    fn a_vip_moves_only_after_the_holders_lease_plus_margin() {
        let (t, l) = timing();
        let start = T0;
        let mut table = LeaseTable::new(&t, l);
        let wait = l.lease_ms + l.margin_ms;
        table.observe(true, 1, start);
        // A new leader waits a full lease plus margin before moving anything.
        let at = |ms| start + Duration::from_millis(ms);
        assert!(!table.may_assign(at(wait - 1), Some(at(wait - 1))));
        assert!(table.may_assign(at(wait), Some(at(wait))));
        assert!(!table.may_take_from(2, at(wait - 1), Some(at(wait - 1))));
        assert_eq!(
            table.new_leader_wait_left(at(wait - 1)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(table.new_leader_wait_left(at(wait)), None);
        // Without a fresh quorum round it decides nothing.
        assert!(!table.may_assign(at(wait + 200), Some(at(wait))));
        assert!(!table.may_assign(at(wait + 200), None));

        let sent = start + Duration::from_millis(1000);
        let granted_at = sent + Duration::from_millis(5);
        let grant = table.grant(2, granted_at, Some(sent), Some(1)).unwrap();
        let mut held = HeldLease::default();
        held.granted(sent, &grant, 0);
        for ms in (0..2000).step_by(1) {
            let now = granted_at + Duration::from_millis(ms);
            // Never: the holder still holds while the leader may take.
            assert!(
                !(held.holds(now) && table.may_take_from(2, now, Some(now))),
                "overlap at +{ms} ms"
            );
        }
        let after = granted_at + Duration::from_millis(wait);
        assert!(table.may_take_from(2, after, Some(after)));
    }

    #[test]
    fn a_change_of_term_forgets_grants_and_restarts_the_wait() {
        let (t, l) = timing();
        let now = T0;
        let mut table = LeaseTable::new(&t, l);
        table.observe(true, 1, now);
        table.grant(2, now, Some(now), Some(1)).unwrap();
        let wait = l.lease_ms + l.margin_ms;
        let later = now + Duration::from_secs(5);
        table.observe(false, 2, later);
        assert!(!table.may_take_from(2, later, Some(later)));
        table.observe(true, 3, later);
        let t699 = later + Duration::from_millis(wait - 1);
        let t700 = later + Duration::from_millis(wait);
        assert!(!table.may_take_from(2, t699, Some(t699)));
        assert!(table.may_take_from(2, t700, Some(t700)));
    }

    /// Clock assumptions (docs/fencing.md): leases count on the boot clock,
    /// which runs through a suspend. A holder suspended with a lease resumes
    /// without it, and a reply to a renewal it sent before the suspend does
    /// not bring it back; meanwhile the leader, whose clock ran on, may take
    /// its VIPs.
    #[test]
    fn a_lease_granted_before_a_suspend_does_not_hold_after_it() {
        let (t, l) = timing();
        let holder = TestClock::stopped(T0);
        let leader = TestClock::stopped(T0);
        let mut table = LeaseTable::new(&t, l);
        table.observe(true, 1, leader.now().unwrap());
        let wait = table.fence();
        holder.advance(wait);
        leader.advance(wait);
        let sent = holder.now().unwrap();
        let quorum = leader.now().unwrap();
        let grant = table
            .grant(2, leader.now().unwrap(), Some(quorum), Some(1))
            .unwrap();
        let mut held = HeldLease::default();
        held.granted(sent, &grant, 0);
        holder.advance(Duration::from_millis(10));
        assert!(held.holds(holder.now().unwrap()));

        // Suspended for five minutes: the holder's boot clock jumps in one
        // step; the leader's ran on as long.
        let suspend = Duration::from_secs(300);
        holder.advance(suspend);
        leader.advance(suspend);
        let now = leader.now().unwrap();
        assert!(table.may_take_from(2, now, Some(now)));

        let resumed = holder.now().unwrap();
        assert!(!held.holds(resumed));
        assert_eq!(
            held.valid_until()
                .and_then(|u| u.checked_duration_since(resumed)),
            None
        );
        // The reply to a renewal sent just before the suspend arrives now.
        held.granted(sent + Duration::from_millis(5), &grant, 0);
        assert!(!held.holds(holder.now().unwrap()));
    }

    /// Clock assumptions: a suspend of the leader. Its boot clock jumps; on
    /// resume its last quorum round is minutes old, so it grants and takes
    /// nothing on its old view. Once a quorum round started after the resume
    /// confirms it, a holder that stayed silent (its grant older than lease
    /// plus margin) may be fenced, and one that renewed since may not.
    #[test]
    fn after_a_jump_a_silent_holder_may_be_fenced_once_a_quorum_confirms_the_leader() {
        let (t, l) = timing();
        let clock = TestClock::stopped(T0);
        let now = || clock.now().unwrap();
        let mut table = LeaseTable::new(&t, l);
        table.observe(true, 1, now());
        clock.advance(table.fence());
        let before = now();
        table.grant(2, now(), Some(before), Some(1)).unwrap();
        table.grant(3, now(), Some(before), Some(1)).unwrap();
        clock.advance(Duration::from_millis(1));
        assert!(!table.may_take_from(2, now(), Some(before)));

        clock.advance(Duration::from_secs(300));
        assert!(!table.may_take_from(2, now(), Some(before)));
        assert!(!table.may_assign(now(), Some(before)));
        assert!(matches!(
            table.grant(3, now(), Some(before), Some(1)),
            Err(Refusal::NoQuorum { millis: Some(m) }) if m >= 300_000
        ));

        let round = now();
        clock.advance(Duration::from_millis(2));
        table.grant(3, now(), Some(round), Some(1)).unwrap();
        assert!(table.last_grants(now())[&2] >= Duration::from_secs(300));
        assert!(!table.may_take_from(3, now(), Some(round)));
        assert!(table.may_take_from(2, now(), Some(round)));
    }
}
