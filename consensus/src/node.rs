//! One director's member of the Raft group, behind a small handle: propose
//! commands, read and watch the committed state, read metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::network::{serve, Network};
use crate::state::{ClusterState, Command, NodeId, Response};
use crate::store::{self, LogStore, StateMachineStore};
use crate::TypeConfig;

/// Raft timing, in milliseconds.
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
    /// openraft's defaults: heartbeat 50 ms, election 150 to 300 ms.
    fn default() -> Self {
        Timing {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
        }
    }
}

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

/// A running member of the group.
pub struct Node {
    id: NodeId,
    raft: Raft<TypeConfig>,
    machine: StateMachineStore,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
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
        if !config.voters.contains_key(&config.id) {
            return Err(ConsensusError::Config(format!(
                "node {} is not among the voters {:?}",
                config.id,
                config.voters.keys().collect::<Vec<_>>()
            )));
        }
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
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, raft.clone(), stopped));

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
            stop,
            server,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command; its response once committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ConsensusError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
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
        self.metrics().current_leader
    }

    /// The voters of the committed membership.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
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

    /// Stops Raft and the transport.
    pub async fn shutdown(self) -> Result<(), ConsensusError> {
        let _ = self.stop.send(true);
        let result = self
            .raft
            .shutdown()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()));
        let _ = self.server.await;
        result
    }
}
