//! Operating a director: the admin socket and its typed protocol
//! ([`admin`]), the status document ([`status`]), the Prometheus endpoint
//! ([`metrics`]), the heap ([`memory`]), draining ([`drain`]) and notifying systemd ([`systemd`]). A new CLI command that talks to
//! the daemon adds a [`admin::Request`] variant, its answer here, and its
//! subcommand in `main.rs`.

pub mod admin;
pub mod drain;
pub mod memory;
pub mod metrics;
pub mod status;
pub mod systemd;

use std::sync::Arc;

use consensus::Node;
use ipvs_sys::IpvsHandle;

use crate::announce::Announcer;
use crate::config::ConfigCell;
use crate::dataplane::driver::Handle;
use drain::Drainer;
use status::OwnerClock;

/// What the admin socket and the metrics endpoint answer from.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// The Raft node.
    pub node: Arc<Node>,
    /// The running configuration.
    pub config: Arc<ConfigCell>,
    /// IPVS (None on a witness or without IPVS).
    pub ipvs: Option<IpvsHandle>,
    /// The drain.
    pub drainer: Arc<Drainer>,
    /// The ARP/NDP side (None on a witness or without the ARP socket).
    pub announcer: Option<Arc<Announcer>>,
    /// Since when each VIP has had its owner.
    pub clock: Arc<OwnerClock>,
    /// The running reconcilers.
    pub reconcilers: Vec<Handle>,
    /// The Kubernetes source, when configured and connected.
    pub kube: Option<Arc<crate::sources::kubernetes::Source>>,
    /// The backend health checks (None on a witness).
    pub health: Option<Arc<crate::health::Health>>,
    /// conntrackd (None on a witness).
    pub conntrackd: Option<Arc<crate::dataplane::conntrack::Conntrackd>>,
    /// The `dr` backends this host cannot route to (None on a witness).
    pub onlink: Option<Arc<crate::dataplane::onlink::OnLink>>,
}
