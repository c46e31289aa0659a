//! The directors' Raft group (openraft): the replicated cluster state, durable
//! storage, the authenticated transport and the ownership leases that fence VIPs.
//!
//! The group is tracked in the project's issues; this crate currently holds the
//! workspace slot for it.
#![deny(missing_docs)]
