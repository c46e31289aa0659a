//! One director's member of the Raft group, behind a small handle: propose
//! commands, read and watch the committed state, read metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftServerMetrics;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{BootClock, BootInstant, Clock, ClockError};
use crate::lease::{self, Grant, HeldLease, LeaseTable, LeaseTiming, Refusal, Timing};
use crate::network::{serve, Faults, LeaderContact, LeaseService, Network, Peer, Server};
use crate::state::{ClusterState, Command, NodeId, Response};
use crate::store::{self, LogStore, StateMachineStore};
use crate::tls::{Security, Tls};
use crate::TypeConfig;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Every voter (this node included) and its transport address.
    pub voters: BTreeMap<NodeId, String>,
    /// Where the node keeps `raft.redb`.
    pub data_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// Lease timing.
    pub lease: LeaseTiming,
    /// Injected message loss (tests); `Faults::default()` drops nothing.
    pub faults: Arc<Faults>,
    /// Mutual TLS, or plaintext only when explicitly insecure.
    pub security: Security,
}

/// Errors of the consensus handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    /// The configuration is unusable.
    #[error("consensus configuration: {0}")]
    Config(String),
    /// The durable store failed.
    #[error("raft storage: {0}")]
    Storage(String),
    /// Binding or serving the transport failed.
    #[error("raft transport: {0}")]
    Transport(#[source] std::io::Error),
    /// This node is not the leader; the leader, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader's id, if known.
        leader: Option<NodeId>,
    },
    /// Raft failed (shut down, or a fatal storage error).
    #[error("raft: {0}")]
    Raft(String),
    /// The clock leases count on cannot be read.
    #[error("lease clock: {0}")]
    Clock(#[source] ClockError),
}

impl ConsensusError {
    /// Whether trying again (perhaps on the leader) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConsensusError::NotLeader { .. } | ConsensusError::Transport(_)
        )
    }
}

/// Lease state shared by the transport, the renewal task and the handle.
struct Leases {
    id: NodeId,
    raft: Raft<TypeConfig>,
    table: std::sync::Mutex<LeaseTable>,
    /// Start of the last quorum round this node completed as leader.
    quorum_at: std::sync::Mutex<Option<BootInstant>>,
    held: std::sync::Mutex<HeldLease>,
    /// Every lease instant comes from here (the boot clock in the daemon).
    clock: Arc<dyn Clock>,
    /// Grants and renewals, for metrics.
    counters: LeaseCounters,
}

/// The lease counters a node keeps (read with [`Node::lease_counts`]).
#[derive(Debug, Default)]
struct LeaseCounters {
    grants: AtomicU64,
    renewals_granted: AtomicU64,
    renewals_refused: AtomicU64,
    renewals_unanswered: AtomicU64,
}

/// Every Raft role a node can be in ([`Node::role`]).
pub const RAFT_ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// What a node's leases did since it started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Leases this node granted while it led (to every director, itself
    /// included).
    pub grants: u64,
    /// Renewals this node asked for that the leader granted.
    pub renewals_granted: u64,
    /// Renewals the leader refused (not the leader, no fresh quorum, or
    /// this director's VIPs being moved away).
    pub renewals_refused: u64,
    /// Renewals that got no answer in time (the leader unreachable).
    pub renewals_unanswered: u64,
    /// Times this node's lease ran out before a renewal extended it.
    pub lapses: u64,
}

impl Leases {
    /// Now on the lease clock; `None` when it cannot be read, and then
    /// nothing holds, is granted, or is taken.
    fn now(&self) -> Option<BootInstant> {
        self.clock.now().ok()
    }

    fn observe(&self, now: BootInstant) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics().borrow().clone();
        let leading = m.current_leader == Some(self.id);
        if let Ok(mut t) = self.table.lock() {
            t.observe(leading, m.current_term, now);
        }
        if !leading {
            if let Ok(mut q) = self.quorum_at.lock() {
                *q = None;
            }
        }
        (m.current_leader, m.current_term)
    }

    fn grant(&self, director: NodeId) -> Result<Grant, Refusal> {
        // Without its clock the leader cannot tell how fresh its quorum is.
        let Some(now) = self.now() else {
            return Err(Refusal::NoQuorum { millis: None });
        };
        let (leader, _) = self.observe(now);
        let quorum_at = self.quorum_at.lock().ok().and_then(|q| *q);
        let mut grant = match self.table.lock() {
            Ok(mut t) => t.grant(director, now, quorum_at, leader)?,
            Err(_) => return Err(Refusal::NotLeader { leader }),
        };
        self.counters.grants.fetch_add(1, Ordering::Relaxed);
        // Read after deciding: every move decided before this grant is in
        // the log by now (LeaseTable::may_take_from holds grants back until
        // then), so the holder learns it before the lease counts.
        grant.log_index = self.last_log_index();
        Ok(grant)
    }

    fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// This node's lease, with the grants its applied log now allows (the
    /// applied index is read only while grants wait: the ARP and NDP threads
    /// ask on every request).
    fn held(&self) -> Option<std::sync::MutexGuard<'_, HeldLease>> {
        let mut h = self.held.lock().ok()?;
        if h.waiting() {
            h.catch_up(self.applied_index());
        }
        Some(h)
    }
}

impl LeaseService for Leases {
    fn renew(&self, director: NodeId) -> Result<Grant, Refusal> {
        self.grant(director)
    }
}

/// A running member of the group.
pub struct Node {
    id: NodeId,
    raft: Raft<TypeConfig>,
    machine: StateMachineStore,
    leases: Arc<Leases>,
    faults: Arc<Faults>,
    tls: Tls,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Node {
    /// Starts the node on `listener` (already bound to this node's address).
    ///
    /// Bootstrap is idempotent: only the voter with the smallest id ever
    /// initialises the group, and only when its store holds no Raft state at
    /// all. A restart with state, on any node, never re-initialises.
    pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<Node, ConsensusError> {
        Self::start_with_clock(config, listener, Arc::new(BootClock)).await
    }

    /// [`Node::start`], with the clock its leases count on: tests pass a
    /// [`crate::clock::TestClock`] to make it jump as a suspend does;
    /// [`Node::start`] passes the host's [`BootClock`]. Fails if the clock
    /// cannot be read.
    pub async fn start_with_clock(
        config: NodeConfig,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, ConsensusError> {
        if !config.voters.contains_key(&config.id) {
            return Err(ConsensusError::Config(format!(
                "node {} is not among the voters {:?}",
                config.id,
                config.voters.keys().collect::<Vec<_>>()
            )));
        }
        lease::validate(&config.timing, &config.lease).map_err(ConsensusError::Config)?;
        clock.now().map_err(ConsensusError::Clock)?;
        let tls = Tls::load(&config.security).map_err(ConsensusError::Config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ConsensusError::Storage(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let db = store::open(&config.data_dir.join("raft.redb"))
            .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let log = LogStore::new(db.clone());
        let machine =
            StateMachineStore::new(db).map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "director".into(),
            heartbeat_interval: config.timing.heartbeat_ms,
            election_timeout_min: config.timing.election_min_ms,
            election_timeout_max: config.timing.election_max_ms,
            // The log store is read this many entries at a time for a
            // follower; the transport sends what fits its byte budget
            // (`network::EntryBudget`), so a larger read is wasted work.
            max_payload_entries: 32,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Config(e.to_string()))?;
        let network = Network {
            id: config.id,
            faults: config.faults.clone(),
            tls: tls.clone(),
            pool: Default::default(),
        };
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let leases = Arc::new(Leases {
            id: config.id,
            raft: raft.clone(),
            table: std::sync::Mutex::new(LeaseTable::new(&config.timing, config.lease)),
            quorum_at: std::sync::Mutex::new(None),
            held: std::sync::Mutex::new(HeldLease::default()),
            clock,
            counters: LeaseCounters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let contact = Arc::new(LeaderContact::default());
        let server = Server {
            id: config.id,
            raft: raft.clone(),
            leases: leases.clone(),
            faults: config.faults.clone(),
            tls: tls.clone(),
            contact: contact.clone(),
        };
        let tasks = vec![
            tokio::spawn(serve(listener, server, stopped.clone())),
            tokio::spawn(prompt_elections(
                raft.clone(),
                config.id,
                contact,
                config.timing,
                config.lease,
                stopped.clone(),
            )),
            tokio::spawn(quorum_rounds(
                leases.clone(),
                config.timing,
                config.lease,
                stopped.clone(),
            )),
            tokio::spawn(renewals(
                leases.clone(),
                config.lease,
                config.faults.clone(),
                tls.clone(),
                stopped,
            )),
        ];

        let first = config.voters.keys().next().copied();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if first == Some(config.id) && !initialized {
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                // NotAllowed: someone's state got there first; nothing to do.
                if !matches!(e, RaftError::APIError(_)) {
                    return Err(ConsensusError::Raft(e.to_string()));
                }
            }
        }
        Ok(Node {
            id: config.id,
            raft,
            machine,
            leases,
            faults: config.faults.clone(),
            tls: tls.clone(),
            stop,
            tasks,
        })
    }

    /// Whether this director holds an ownership lease now. It may answer for
    /// the VIPs it owns only while this is true.
    pub fn holds_lease(&self) -> bool {
        let Some(held) = self.leases.held() else {
            return false;
        };
        self.leases.now().is_some_and(|now| held.holds(now))
    }

    /// This node's Raft role now, one of [`RAFT_ROLES`].
    pub fn role(&self) -> &'static str {
        match self.raft.metrics().borrow().state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    }

    /// What this node's leases did since it started: grants (as leader),
    /// renewals by outcome, lapses.
    pub fn lease_counts(&self) -> LeaseCounts {
        let c = &self.leases.counters;
        LeaseCounts {
            grants: c.grants.load(Ordering::Relaxed),
            renewals_granted: c.renewals_granted.load(Ordering::Relaxed),
            renewals_refused: c.renewals_refused.load(Ordering::Relaxed),
            renewals_unanswered: c.renewals_unanswered.load(Ordering::Relaxed),
            lapses: self.leases.held().map_or(0, |h| h.lapses()),
        }
    }

    /// How long the current lease still runs, if it holds.
    pub fn lease_remaining(&self) -> Option<Duration> {
        let until = self.leases.held()?.valid_until()?;
        until.checked_duration_since(self.leases.now()?)
    }

    /// On the leader: the moves decided after [`Node::may_take_from`] have
    /// been proposed (committed or given up); those directors may be granted
    /// leases again. The leader's control loop calls it after every round.
    pub fn moves_done(&self) {
        if let Ok(mut t) = self.leases.table.lock() {
            t.moves_done();
        }
    }

    /// On the leader: whether VIPs may now be taken from `director` (its last
    /// grant plus lease plus margin has passed). Always false elsewhere.
    /// When true, `director` is granted no lease until [`Node::moves_done`].
    pub fn may_take_from(&self, director: NodeId) -> bool {
        let Some(now) = self.leases.now() else {
            return false;
        };
        self.leases.observe(now);
        let quorum_at = self.leases.quorum_at.lock().ok().and_then(|q| *q);
        self.leases
            .table
            .lock()
            .map(|mut t| t.may_take_from(director, now, quorum_at))
            .unwrap_or(false)
    }

    /// On the leader: how long ago each director last renewed its lease (its
    /// last contact). Empty on other nodes.
    pub fn last_contact(&self) -> BTreeMap<NodeId, Duration> {
        let Some(now) = self.leases.now() else {
            return BTreeMap::new();
        };
        self.leases.observe(now);
        self.leases
            .table
            .lock()
            .map(|t| t.last_grants(now))
            .unwrap_or_default()
    }

    /// On the leader: whether the new-leader wait is over, so VIPs without a
    /// live owner may be assigned. Always false elsewhere.
    pub fn may_assign(&self) -> bool {
        let Some(now) = self.leases.now() else {
            return false;
        };
        self.leases.observe(now);
        let quorum_at = self.leases.quorum_at.lock().ok().and_then(|q| *q);
        self.leases
            .table
            .lock()
            .map(|t| t.may_assign(now, quorum_at))
            .unwrap_or(false)
    }

    /// On the leader: how long until the new-leader wait (lease plus margin
    /// from taking office) is over; `None` once it is, and on other nodes.
    pub fn new_leader_wait_left(&self) -> Option<Duration> {
        let now = self.leases.now()?;
        self.leases.observe(now);
        self.leases
            .table
            .lock()
            .ok()
            .and_then(|t| t.new_leader_wait_left(now))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command; its response once committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ConsensusError> {
        self.raft
            .client_write(cmd)
            .await
            .map(|r| r.data)
            .map_err(write_error)
    }

    /// Commits this director's own draining flag through the leader (here if
    /// it leads, else over the transport). Only a director itself sets it:
    /// the leader moves a draining owner's VIPs without waiting for its lease,
    /// so the director must have stopped holding them before it asks.
    pub async fn set_draining(&self, draining: bool) -> Result<(), ConsensusError> {
        let cmd = Command::SetDraining {
            director: self.id,
            draining,
        };
        let leader = self.leader();
        match leader {
            Some(l) if l == self.id => self.propose(cmd).await.map(|_| ()),
            Some(l) => {
                let addr = self
                    .metrics()
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
                    .ok_or(ConsensusError::NotLeader { leader })?;
                let mut peer = Peer::new(self.id, l, addr, self.faults.clone(), self.tls.clone());
                match peer.set_draining(draining, Duration::from_secs(5)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ConsensusError::Raft(e)),
                    Err(e) => Err(ConsensusError::Transport(e)),
                }
            }
            None => Err(ConsensusError::NotLeader { leader: None }),
        }
    }

    /// The committed state as applied on this node.
    pub fn state(&self) -> Arc<ClusterState> {
        self.machine.state()
    }

    /// Sees every newly applied state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.machine.watch()
    }

    /// Raft metrics: leader, term, commit/applied index, members, and (on the
    /// leader) when each follower last acknowledged.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The current leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.server_metrics().borrow().current_leader
    }

    /// Changes whenever this node's role, vote, known leader or membership
    /// does (and on nothing else: not on heartbeats, nor on commits).
    pub fn roles(&self) -> watch::Receiver<RaftServerMetrics<NodeId, BasicNode>> {
        self.raft.server_metrics()
    }

    /// The voters of the committed membership.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Adds a director to the group at runtime (on the leader): it first
    /// catches up as a learner, then becomes a voter.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> Result<(), ConsensusError> {
        let node = BasicNode {
            addr: addr.to_string(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(write_error)?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Removes a director from the group at runtime (on the leader).
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), ConsensusError> {
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(ConsensusError::Config(format!("{id} is not a voter")));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Waits until this node sees a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ConsensusError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(ConsensusError::Raft(format!(
                    "node {} saw no leader within {timeout:?}",
                    self.id
                )));
            }
        }
    }

    /// Stops Raft, the transport and the lease tasks. The lease stops being
    /// renewed at once.
    pub async fn shutdown(self) -> Result<(), ConsensusError> {
        let _ = self.stop.send(true);
        if let Ok(mut h) = self.leases.held.lock() {
            *h = HeldLease::default();
        }
        let result = self
            .raft
            .shutdown()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()));
        for t in self.tasks {
            let _ = t.await;
        }
        // What was applied since the last write (the log has it too).
        let flushed = self
            .machine
            .flush()
            .map_err(|e| ConsensusError::Storage(e.to_string()));
        result.and(flushed)
    }
}

/// A refused write (a proposal or a membership change): not the leader (and
/// who is), or Raft itself failed.
fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ConsensusError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ConsensusError::NotLeader {
            leader: f.leader_id,
        },
        other => ConsensusError::Raft(other.to_string()),
    }
}

/// On the leader, every renewal interval: a quorum round (a heartbeat that a
/// quorum must acknowledge), bounded by the quorum freshness. Its start is the
/// instant a quorum is known to have heard this leader; grants need it fresh.
async fn quorum_rounds(
    leases: Arc<Leases>,
    timing: Timing,
    lease: LeaseTiming,
    mut stop: watch::Receiver<bool>,
) {
    let freshness = Duration::from_millis(lease::quorum_freshness_ms(&timing));
    let mut tick = tokio::time::interval(Duration::from_millis(lease.renew_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = leases.raft.metrics();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new leader confirms its quorum at once: the holders'
                // renewals wait for it (docs/fencing.md, "Losing the leader").
                let now_leading = metrics.borrow_and_update().current_leader == Some(leases.id);
                let became = now_leading && !leading;
                leading = now_leading;
                if !became {
                    continue;
                }
                // This round now; the next a whole interval later.
                tick.reset();
            }
            _ = stop.changed() => return,
        }
        // Read before the round is asked for. openraft 0.9 answers
        // `ensure_linearizable` with a fresh heartbeat to every voter (no
        // lease of its own), so each acknowledgement is later than `start`
        // on any clock, and `start` is a conservative quorum instant even if
        // this host is suspended during the round.
        //
        // openraft's own timers and reports (election timeouts, the
        // followers' vote refusal of docs/fencing.md Case 2, its metrics'
        // `millis_since_quorum_ack`) count on tokio's CLOCK_MONOTONIC, which
        // misses a suspend. That is safe for the vote refusal: a suspended
        // follower only refuses for longer in real time. It is not for a
        // duration d from the metrics: read at `now` and placed at `now - d`
        // on the boot clock, it would be too recent after a suspend of this
        // leader (d misses the suspend; 0.9 also computes it when metrics
        // are published, not when read), so no lease decision uses one.
        let Some(start) = leases.now() else { continue };
        let (leader, _) = leases.observe(start);
        if leader != Some(leases.id) {
            continue;
        }
        let confirmed = tokio::time::timeout(freshness, leases.raft.ensure_linearizable()).await;
        if let Ok(Ok(_)) = confirmed {
            if let Ok(mut q) = leases.quorum_at.lock() {
                if q.is_none_or(|old| old < start) {
                    *q = Some(start);
                }
            }
        }
    }
}

/// Every renewal interval: renew this director's lease with the leader (or
/// with itself when it leads), counting the lease from the moment it sent.
async fn renewals(
    leases: Arc<Leases>,
    lease: LeaseTiming,
    faults: Arc<Faults>,
    tls: Tls,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(lease.renew_ms);
    // After a refusal (a new leader whose first quorum round is still under
    // way) or a new leader: ask again this soon, not a whole interval later.
    let soon = Duration::from_millis((lease.renew_ms / 4).max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = leases.raft.metrics();
    let mut known = metrics.borrow().current_leader;
    let mut peer: Option<(NodeId, Peer)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let leader = metrics.borrow_and_update().current_leader;
                if leader == known {
                    continue;
                }
                known = leader;
                if leader.is_none() {
                    continue;
                }
                // A new leader: renew with it now, and next a whole
                // interval later (docs/fencing.md, "Losing the leader").
                tick.reset();
            }
            _ = stop.changed() => return,
        }
        let Some(sent) = leases.now() else { continue };
        if let Some(mut h) = leases.held() {
            h.note(sent);
        }
        let (leader, _) = leases.observe(sent);
        let grant = match leader {
            None => continue,
            Some(l) if l == leases.id => leases.grant(leases.id),
            Some(l) => {
                if peer.as_ref().map(|(id, _)| *id) != Some(l) {
                    let addr = leases
                        .raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.addr.clone());
                    let Some(addr) = addr else { continue };
                    peer = Some((
                        l,
                        Peer::new(leases.id, l, addr, faults.clone(), tls.clone()),
                    ));
                }
                let Some((_, p)) = peer.as_mut() else {
                    continue;
                };
                // A slow reply still counts from `sent`; wait up to a third of
                // the lease for it, unless another leader is elected
                // meanwhile: then renew with that one at once.
                let reply = tokio::select! {
                    r = p.renew_lease(Duration::from_millis(lease.lease_ms / 3)) => Some(r),
                    _ = leader_changes(&mut metrics, l) => None,
                };
                match reply {
                    Some(Ok(r)) => r,
                    answer => {
                        leases
                            .counters
                            .renewals_unanswered
                            .fetch_add(1, Ordering::Relaxed);
                        if answer.is_none() {
                            // The request may be half sent or its reply
                            // still coming: that connection is not reused.
                            peer = None;
                            known = metrics.borrow().current_leader;
                            tick.reset_immediately();
                        }
                        continue;
                    }
                }
            }
        };
        let outcome = match &grant {
            Ok(_) => &leases.counters.renewals_granted,
            Err(_) => &leases.counters.renewals_refused,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        match grant {
            Ok(g) => {
                let applied = leases.applied_index();
                if let Ok(mut h) = leases.held.lock() {
                    h.granted(sent, &g, applied);
                }
            }
            Err(_) => tick.reset_after(soon),
        }
    }
}

/// Returns once the Raft metrics name a leader other than `from` (or
/// none); never if they stop being published.
async fn leader_changes(
    metrics: &mut watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    from: NodeId,
) {
    loop {
        if metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if metrics.borrow_and_update().current_leader != Some(from) {
            return;
        }
    }
}

/// On a follower: asks for votes once the leader has been silent for its
/// leader lease and this node's step ([`lease::prompt_election_after`]),
/// instead of waiting openraft's own timer (up to twice the leader lease),
/// which would outlast the ownership leases. It asks first only while its
/// vote is still the silent leader's, so a follower that has voted for
/// another candidate leaves that election alone; it asks again (at most
/// three times per silence, an election timeout minimum apart) only while
/// its vote is still its own. Of two voters left, the second asks an
/// election timeout minimum after the first would have. After that, and
/// with fewer than three voters, openraft's timer alone decides.
async fn prompt_elections(
    raft: Raft<TypeConfig>,
    id: NodeId,
    contact: Arc<LeaderContact>,
    timing: Timing,
    lease: LeaseTiming,
    mut stop: watch::Receiver<bool>,
) {
    const TRIES: u32 = 3;
    let step = Duration::from_millis(lease::election_step_ms(&timing, &lease));
    // While the leader is heard nothing can be due before its lease ends:
    // sleep until then. Only a silence that outlasts it is looked at every
    // half step (to ask at this rank's moment, give or take that).
    let fine = (step / 2).max(Duration::from_millis(1));
    let quiet = Duration::from_millis(timing.election_max_ms.max(1));
    let mut next = tokio::time::Instant::now() + fine;
    // The silence asked about (when its leader was last heard), the last
    // request, and how many.
    let mut asked: Option<(tokio::time::Instant, tokio::time::Instant, u32)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        let woke = tokio::time::Instant::now();
        let late = woke.saturating_duration_since(next) > step;
        next = woke + fine;
        // A wake-up this late means this process was stalled: heartbeats
        // that arrived meanwhile may not be read yet, so the silence is not
        // known. Look again on the next one.
        if late {
            continue;
        }
        // Never a leader heard (a new node, or the leader itself from its
        // start): nothing to prompt; look again a leader lease later.
        let Some((silent, heard)) = contact.last() else {
            next = woke + quiet;
            continue;
        };
        // The leader heard within its lease (the usual case): no election
        // of any rank is due before that lease ends, and nothing else needs
        // reading.
        if woke.saturating_duration_since(heard) < quiet {
            next = heard + quiet;
            continue;
        }
        let (leading, vote, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: Vec<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != silent)
                .collect();
            (m.state == ServerState::Leader, m.vote, voters)
        };
        // The leader itself (heard as a follower before it was elected)
        // has no one to prompt: look again a leader lease later.
        if leading {
            next = woke + quiet;
            continue;
        }
        // Ranks among the voters left, by id; fewer than two left cannot
        // elect anyone.
        let Some(rank) = voters.iter().position(|v| *v == id) else {
            continue;
        };
        if voters.len() < 2 {
            continue;
        }
        // Two voters left (a group of three): the second asks only an
        // election timeout minimum after the first. Asking a step after it,
        // before the first's election has finished, splits the vote (seen
        // under emulation, where an election takes about 50 ms); it still
        // asks when the first's election got nowhere (the second refused it
        // for a shorter log: its vote is still the silent leader's).
        let rank_wait = if voters.len() == 2 && rank > 0 {
            lease::prompt_election_after(&timing, &lease, 0)
                + Duration::from_millis(timing.election_min_ms)
        } else {
            lease::prompt_election_after(&timing, &lease, rank)
        };
        let first = !matches!(asked, Some((h, _, _)) if h == heard);
        let voted_for = vote.leader_id().voted_for();
        let ours = if first {
            // Still the silent leader's follower.
            voted_for == Some(silent) && vote.is_committed()
        } else {
            // Still a candidate of its own election.
            voted_for == Some(id) && !vote.is_committed()
        };
        if !ours {
            continue;
        }
        let now = tokio::time::Instant::now();
        let (due, tries) = match asked {
            Some((_, _, n)) if !first && n >= TRIES => {
                next = woke + quiet;
                continue;
            }
            // Again no sooner than the election timeout minimum after the
            // last request: each request raises the term and would end the
            // election the last one started.
            Some((_, last, n)) if !first => (
                last + (step * (2 + rank as u32))
                    .max(Duration::from_millis(timing.election_min_ms)),
                n + 1,
            ),
            _ => (heard + rank_wait, 1),
        };
        if now < due {
            next = due;
            continue;
        }
        // Until the election is in openraft's queue no AppendEntries is
        // handed to openraft or acknowledged, unless one came in since the
        // silence was read: then the election is not asked for. So a
        // quorum-round acknowledgement is never followed by this node's own
        // vote within the leader lease (docs/fencing.md, "Losing the
        // leader").
        if !contact.close_unless_heard_since(heard) {
            continue;
        }
        asked = Some((heard, now, tries));
        tracing::info!(
            leader = silent,
            silent_ms = now.duration_since(heard).as_millis() as u64,
            attempt = tries,
            "the Raft leader is silent; asking for votes"
        );
        let asked_for = raft.trigger().elect().await;
        contact.reopen();
        if asked_for.is_err() {
            return;
        }
    }
}
