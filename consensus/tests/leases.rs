//! Ownership leases under partitions, three nodes over loopback TCP with
//! injected message loss. An independent checker samples every node every
//! 2 ms and fails if two directors ever believe they hold the same VIP
//! (committed owner in their own view AND a valid lease): the invariant of
//! docs/fencing.md.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::clock::TestClock;
use consensus::state::{Director, Role};
use consensus::{Command, Faults, LeaseTiming, Node, NodeConfig, NodeId, Response, Timing};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(15);

struct Cluster {
    nodes: Vec<Arc<Node>>,
    /// Each node's lease clock: the boot clock, until a test jumps it.
    clocks: Vec<Arc<TestClock>>,
    faults: Arc<Faults>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let mut voters = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.insert(id, l.local_addr().unwrap().to_string());
            listeners.insert(id, l);
        }
        let mut nodes = Vec::new();
        let mut clocks = Vec::new();
        for (id, listener) in listeners {
            let clock = Arc::new(TestClock::running());
            let node = Node::start_with_clock(
                NodeConfig {
                    id,
                    voters: voters.clone(),
                    data_dir: dir.path().join(format!("n{id}")),
                    timing: Timing::default(),
                    lease: LeaseTiming::default(),
                    faults: faults.clone(),
                    security: consensus::Security::Insecure,
                },
                listener,
                clock.clone(),
            )
            .await
            .unwrap();
            nodes.push(Arc::new(node));
            clocks.push(clock);
        }
        Cluster {
            nodes,
            clocks,
            faults,
            _dir: dir,
        }
    }

    fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.nodes[(id - 1) as usize]
    }

    fn clock(&self, id: NodeId) -> &TestClock {
        &self.clocks[(id - 1) as usize]
    }

    /// The leader as every reachable node sees it.
    async fn leader(&self, among: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen: Vec<Option<NodeId>> =
                among.iter().map(|id| self.node(*id).leader()).collect();
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && among.contains(l) {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no common leader among {among:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn propose(&self, on: NodeId, cmd: Command) -> Response {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.node(on).propose(cmd.clone()).await;
            // This test plays the leader's control loop: its moves are in.
            self.node(on).moves_done();
            match r {
                Ok(r) => return r,
                Err(e) => assert!(Instant::now() < deadline, "{cmd:?}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts `id` off from the others, both ways.
    fn isolate(&self, id: NodeId) {
        for other in 1..=3 {
            if other != id {
                self.faults.block(id, other);
                self.faults.block(other, id);
            }
        }
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Samples every node every 2 ms; counts the holders of `vip` at each
/// instant and remembers the most ever seen.
struct Checker {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Checker {
    fn start(nodes: Vec<Arc<Node>>, vip: IpAddr) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), most.clone());
        let task = tokio::spawn(async move {
            let mut violations = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let holders: Vec<NodeId> = nodes
                    .iter()
                    .filter(|n| {
                        n.state().owners.get(&vip).map(|o| o.director) == Some(n.id())
                            && n.holds_lease()
                    })
                    .map(|n| n.id())
                    .collect();
                m.fetch_max(holders.len(), Ordering::Relaxed);
                if holders.len() > 1 {
                    violations.push(format!("two holders of {vip}: {holders:?}"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            violations
        });
        Checker { stop, most, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let violations = self.task.await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        self.most.load(Ordering::Relaxed)
    }
}

fn vip() -> IpAddr {
    "10.10.0.200".parse().unwrap()
}

/// Members, a VIP, and its first owner: a follower, assigned after the
/// new-leader wait.
async fn setup(c: &Cluster) -> (NodeId, NodeId) {
    setup_owner(c, 0).await
}

/// [`setup`], with the owner the follower of this rank by id (0 or 1).
async fn setup_owner(c: &Cluster, rank: usize) -> (NodeId, NodeId) {
    setup_owned_by(c, |leader| {
        (1..=3).filter(|id| *id != leader).nth(rank).unwrap()
    })
    .await
}

/// [`setup`], with the owner `pick` names given the leader.
async fn setup_owned_by(c: &Cluster, pick: impl FnOnce(NodeId) -> NodeId) -> (NodeId, NodeId) {
    let leader = c.leader(&[1, 2, 3]).await;
    for id in 1..=3 {
        c.propose(
            leader,
            Command::PutDirector(Director {
                id,
                name: format!("d{id}"),
                address: String::new(),
                role: Role::Data,
            }),
        )
        .await;
    }
    c.propose(
        leader,
        Command::Allocate {
            vip: vip(),
            service: "default/web".into(),
        },
    )
    .await;
    let owner = pick(leader);
    until("the new-leader wait", || c.node(leader).may_assign()).await;
    let r = c
        .propose(
            leader,
            Command::SetOwner {
                vip: vip(),
                director: owner,
                expected_epoch: 0,
            },
        )
        .await;
    assert_eq!(r, Response::Epoch(1));
    until("the owner to hold", || {
        c.node(owner).holds_lease() && c.node(owner).state().owners.contains_key(&vip())
    })
    .await;
    (leader, owner)
}

/// Once the leader may take the VIP from `owner`: moves it to the third
/// node and waits until that one holds it; the successor.
async fn move_after_the_fence(c: &Cluster, leader: NodeId, owner: NodeId) -> NodeId {
    until("the fence to pass", || c.node(leader).may_take_from(owner)).await;
    let successor = (1..=3).find(|id| *id != leader && *id != owner).unwrap();
    let r = c
        .propose(
            leader,
            Command::SetOwner {
                vip: vip(),
                director: successor,
                expected_epoch: 1,
            },
        )
        .await;
    assert_eq!(r, Response::Epoch(2));
    until("the successor to hold", || {
        c.node(successor).holds_lease()
            && c.node(successor).state().owners[&vip()].director == successor
    })
    .await;
    successor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_owner_lapses_and_its_vip_moves_without_two_holders() {
    let c = Cluster::start().await;
    let (leader, owner) = setup(&c).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    let lease = LeaseTiming::default();
    // The leader knows each director's last contact; followers know none.
    let contact = c.node(leader).last_contact();
    assert_eq!(contact.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(contact
        .values()
        .all(|d| *d < Duration::from_millis(lease.lease_ms)));
    assert!(c.node(owner).last_contact().is_empty());
    // The counters so far: the leader granted, the owner's renewals were
    // granted, nothing lapsed.
    let before = c.node(owner).lease_counts();
    assert!(c.node(leader).lease_counts().grants > 0);
    assert_eq!(c.node(owner).lease_counts().grants, 0);
    assert!(before.renewals_granted > 0, "{before:?}");
    assert_eq!(before.lapses, 0, "{before:?}");

    c.isolate(owner);
    let lapsed = until("the isolated owner's lease to lapse", || {
        !c.node(owner).holds_lease()
    })
    .await;
    assert!(
        lapsed <= Duration::from_millis(lease.lease_ms + lease.renew_ms + 200),
        "lapsed after {lapsed:?}"
    );
    // Counted once, as the renewal loop notices; the lost renewals too.
    until("the lapse to be counted", || {
        c.node(owner).lease_counts().lapses == 1
    })
    .await;
    let after = c.node(owner).lease_counts();
    assert!(
        after.renewals_unanswered > before.renewals_unanswered,
        "{after:?}"
    );
    // The majority goes on, and may take the VIP only after the fence.
    move_after_the_fence(&c, leader, owner).await;
    // Healing: the old owner learns the move and stays silent.
    c.faults.heal();
    until("the old owner to learn the move", || {
        c.node(owner).state().owners[&vip()].epoch == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(checker.finish().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_granting_and_a_new_leader_waits_before_moving() {
    let c = Cluster::start().await;
    let (leader, owner) = setup(&c).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    c.isolate(leader);
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = c.leader(&rest).await;
    assert_ne!(new_leader, leader);
    // The deposed leader cannot confirm a quorum: its own lease lapses.
    until("the deposed leader's lease to lapse", || {
        !c.node(leader).holds_lease()
    })
    .await;
    assert!(!c.node(leader).may_assign());
    // The majority commits, and the owner keeps (or regains) its lease from
    // the new leader.
    c.propose(
        new_leader,
        Command::SetDraining {
            director: leader,
            draining: true,
        },
    )
    .await;
    until("the owner to hold under the new leader", || {
        c.node(owner).holds_lease()
    })
    .await;
    c.faults.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(checker.finish().await <= 1);
}

/// The owner is the leader and is cut off: the survivors elect a leader,
/// which has no grant record for the old one and moves the VIP after the
/// new-leader wait (docs/fencing.md, Case 2), never while the old leader
/// still holds its own lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_owns_a_vip_and_is_cut_off_loses_it_only_after_its_lease() {
    let c = Cluster::start().await;
    let (leader, _) = setup_owned_by(&c, |leader| leader).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    c.isolate(leader);
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = c.leader(&rest).await;
    assert_ne!(new_leader, leader);
    // The VIP may move only once the new leader's wait is over.
    until("the new-leader wait to pass", || {
        c.node(new_leader).may_take_from(leader)
    })
    .await;
    assert!(!c.node(leader).holds_lease(), "the old leader still holds");
    let r = c
        .propose(
            new_leader,
            Command::SetOwner {
                vip: vip(),
                director: new_leader,
                expected_epoch: 1,
            },
        )
        .await;
    assert_eq!(r, Response::Epoch(2));
    c.node(new_leader).moves_done();
    until("the new owner to hold", || {
        c.node(new_leader).holds_lease()
            && c.node(new_leader).state().owners[&vip()].director == new_leader
    })
    .await;
    c.faults.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(checker.finish().await <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_hears_the_leader_but_cannot_answer_lapses() {
    let c = Cluster::start().await;
    let (leader, owner) = setup(&c).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    // One-way: everything the owner sends is lost; it still receives.
    for other in 1..=3 {
        if other != owner {
            c.faults.block(owner, other);
        }
    }
    until("the owner's lease to lapse", || {
        !c.node(owner).holds_lease()
    })
    .await;
    move_after_the_fence(&c, leader, owner).await;
    // The owner still hears the leader: it learns the move and stays silent
    // even before the partition heals.
    until("the old owner to learn the move", || {
        c.node(owner).state().owners[&vip()].epoch == 2
    })
    .await;
    c.faults.heal();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(checker.finish().await, 1);
}

/// A holder that comes back (docs/fencing.md): the old owner reaches the
/// group again after its VIP moved, but the log entries to it are lost, so
/// it learns the leader and renews before it has the move. Its lease must
/// not count until it has applied the move: otherwise it would hold the VIP
/// (its lease valid, its stale state naming it) beside the successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_comes_back_holds_nothing_before_it_has_the_move() {
    let c = Cluster::start().await;
    let (leader, owner) = setup(&c).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    c.isolate(owner);
    until("the isolated owner to lapse", || {
        !c.node(owner).holds_lease()
    })
    .await;
    move_after_the_fence(&c, leader, owner).await;
    // Back on the network, except for the log entries sent to it.
    for other in (1..=3).filter(|id| *id != owner) {
        c.faults.block_entries(other, owner);
        c.faults.unblock(other, owner);
        c.faults.unblock(owner, other);
    }
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != owner).collect();
    until("the owner to know the leader again", || {
        let l = c.node(rest[0]).leader();
        l.is_some() && c.node(owner).leader() == l
    })
    .await;
    // It renews every renewal interval and is granted; for a second it
    // still has the old state and must not hold.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(c.node(owner).state().owners[&vip()].epoch, 1);
        assert!(
            !c.node(owner).holds_lease(),
            "the owner holds a lease without the move in its log"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.faults.heal();
    until("the old owner to learn the move", || {
        c.node(owner).state().owners[&vip()].epoch == 2
    })
    .await;
    until("the old owner to hold a lease again", || {
        c.node(owner).holds_lease()
    })
    .await;
    assert_eq!(checker.finish().await, 1);
}

/// Clock assumptions (docs/fencing.md): a suspended host's boot clock runs
/// on, so an owner resumed from a suspend longer than its lease holds
/// nothing, at once, not a lease's length later (the jump makes
/// the lease end, not time passing: the lease still had most of its length
/// just before). Its VIP moves after the fence, never two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_resumed_from_suspend_holds_nothing() {
    let c = Cluster::start().await;
    let (leader, owner) = setup(&c).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    let lease = LeaseTiming::default();
    // Asleep: nothing reaches the owner and nothing leaves it.
    c.isolate(owner);
    let left = c.node(owner).lease_remaining();
    // Five minutes later it runs again: its boot clock jumped.
    c.clock(owner).advance(Duration::from_secs(300));
    assert!(!c.node(owner).holds_lease(), "it had {left:?} left");
    assert_eq!(c.node(owner).lease_remaining(), None);
    // Meaningful only if the lease had not lapsed on its own already.
    assert!(
        left.is_some_and(|l| l > Duration::from_millis(lease.lease_ms / 3)),
        "the lease had {left:?} left before the suspend"
    );
    move_after_the_fence(&c, leader, owner).await;
    c.faults.heal();
    until("the old owner to learn the move", || {
        c.node(owner).state().owners[&vip()].epoch == 2
    })
    .await;
    // Its clock is five minutes ahead of before; it renews as ever.
    until("the old owner to hold a lease again", || {
        c.node(owner).holds_lease()
    })
    .await;
    assert_eq!(checker.finish().await, 1);
}

/// Losing the Raft leader must not lapse the other directors' leases
/// (docs/fencing.md, "Losing the leader"): the followers elect a successor
/// as soon as their leader lease has run out, and holders renew with it at
/// once, so an owner keeps answering for its VIP throughout. Each round cuts
/// the current leader off (a dead host looks the same to the others) while a
/// sampler watches the owner's lease every millisecond against the hold rule
/// (a director gives a VIP up `margin / 2` before its lease ends).
/// The owner is the follower with the higher id, so that the other one is
/// elected first and the owner renews with it over the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_lapses_no_lease() {
    let c = Cluster::start().await;
    let (mut leader, owner) = setup_owner(&c, 1).await;
    let checker = Checker::start(c.nodes.clone(), vip());
    let lease = LeaseTiming::default();
    let hold_for = Duration::from_millis(lease.margin_ms / 2);
    let mut rounds = 0;
    while rounds < 5 && leader != owner {
        rounds += 1;
        let before = c.node(owner).lease_counts().lapses;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (node, stop) = (c.node(owner).clone(), stop.clone());
            tokio::spawn(async move {
                let mut least = Duration::MAX;
                while !stop.load(Ordering::Relaxed) {
                    least = least.min(node.lease_remaining().unwrap_or_default());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                least
            })
        };
        let cut = Instant::now();
        c.isolate(leader);
        let rest: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
        let next = c.leader(&rest).await;
        let elected = cut.elapsed();
        // Past the old lease's end: a renewal that did not come would show.
        tokio::time::sleep(Duration::from_millis(lease.lease_ms * 2)).await;
        stop.store(true, Ordering::Relaxed);
        let least = sampler.await.unwrap();
        let lapses = c.node(owner).lease_counts().lapses - before;
        eprintln!(
            "round {rounds}: leader {leader} cut off, {next} elected after {elected:?}; \
             the owner's lease had at least {least:?} left"
        );
        assert!(
            least > hold_for && lapses == 0,
            "round {rounds}: the owner's lease fell to {least:?} (hold rule: above \
             {hold_for:?}), {lapses} lapse(s), with {next} elected after {elected:?}"
        );
        c.faults.heal();
        leader = c.leader(&[1, 2, 3]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(rounds >= 1);
    assert_eq!(checker.finish().await, 1);
}
