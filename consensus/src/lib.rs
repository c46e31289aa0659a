//! The directors' Raft group (openraft): the replicated cluster state, durable
//! storage, and (growing) the authenticated transport and the ownership
//! leases that fence VIPs.
#![deny(missing_docs)]

use std::io::Cursor;

pub mod clock;
pub mod domain;
pub mod lease;
pub mod network;
pub mod node;
pub mod state;
pub mod store;
pub mod tls;

pub use lease::{LeaseTiming, Timing};
pub use network::Faults;
pub use node::{ConsensusError, LeaseCounts, Node, NodeConfig, RAFT_ROLES};
pub use state::{apply, ClusterState, Command, NodeId, Response};
pub use tls::{Security, TlsFiles};

openraft::declare_raft_types!(
    /// The Raft types of the directors' group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);
