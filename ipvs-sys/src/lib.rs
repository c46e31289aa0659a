//! A client for the Linux kernel's IPVS generic-netlink family (`IPVS`,
//! `include/uapi/linux/ip_vs.h`).
//!
//! Layers, as in rust-netlink:
//! - [`nla`] and [`message`]: the wire format as plain types (encode and decode
//!   with no socket); unknown attributes are kept, not fatal.
//! - [`types`]: services, destinations, counters, sync daemons, timeouts, with
//!   conversions to and from attributes.
//! - [`handle`]: an async client on tokio (genetlink resolves the family),
//!   whose errors keep the errno and say which operation on which service
//!   failed; bulk work (the whole table, many changes) goes through a socket
//!   of its own that sends many changes in one datagram.
//!
//! No policy and no logging setup: callers decide what to program.
#![deny(missing_docs)]

mod bulk;
pub mod constants;
pub mod error;
pub mod handle;
pub mod message;
pub mod nla;
pub mod types;

pub use error::{ErrorKind, IpvsError, Operation};
pub use handle::{Change, IpvsHandle, DEFAULT_WINDOW};
pub use message::{IpvsCmd, IpvsMessage};
pub use types::{
    DestCounters, Destination, Family, Forward, Info, Netmask, Protocol, Service, ServiceFlags,
    ServiceKey, Stats, SyncDaemon, SyncState, Timeouts, Tunnel, TunnelType,
};
