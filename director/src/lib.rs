//! director: a highly available IPVS load balancer for bare-metal
//! Kubernetes. The modules follow the data flow (docs/architecture.md):
//!
//! ```text
//! config, sources  ->  leader  ->  Raft (consensus)  ->  dataplane, announce  ->  kernel
//!                                                     ->  ops (admin socket, status, metrics, drain)
//! ```
//!
//! - [`config`]: the typed configuration, parsed and validated once, and
//!   the live cell SIGHUP replaces;
//! - [`sources`]: where virtual services come from (the file's static
//!   services);
//! - [`leader`]: the leader's pure decisions (catalogue, addresses, owners)
//!   and the one loop that proposes them;
//! - [`dataplane`]: the reconcilers that make each director's kernel hold
//!   the committed state, and their driver;
//! - [`health`]: the backend health checks, a local input of the data
//!   plane;
//! - [`announce`]: ARP, NDP, announcement bursts and the hold rule;
//! - [`ops`]: the admin socket, status, metrics and drain;
//! - [`daemon`]: `director run`, wiring the above together;
//! - [`ipvs`]: `director ipvs show|apply`, the IPVS command line.

pub mod announce;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod ipvs;
pub mod leader;
pub mod logging;
pub mod ops;
pub mod problems;
pub mod sources;
pub mod subset;
