//! Inputs: where virtual services come from. Each source turns what it
//! reads into [`Wanted`] services, keyed by a name under its own prefix, so
//! that the leader never removes one source's services for missing from
//! another. Today: the static services of the configuration file
//! ([`statics`]). A new source (Kubernetes) adds a module here and a prefix.

pub mod statics;

use std::net::IpAddr;

use consensus::state::{Forwarding, Persistence, Scheduler, SchedulerFlag, ServicePort};
use std::collections::BTreeSet;

/// Where a wanted service's VIP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipRequest {
    /// This address.
    Address(IpAddr),
    /// Any free address of the named pool (kept once allocated).
    Pool(String),
}

/// A virtual service as a source wants it, before the leader has given it
/// a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Its name in the replicated state (`static/web`).
    pub name: String,
    /// Its VIP.
    pub vip: VipRequest,
    /// IPVS scheduler.
    pub scheduler: Scheduler,
    /// The scheduler's flags.
    pub scheduler_flags: BTreeSet<SchedulerFlag>,
    /// Forwarding mode.
    pub forwarding: Forwarding,
    /// Client persistence.
    pub persistence: Option<Persistence>,
    /// Ports and their backends.
    pub ports: Vec<ServicePort>,
}
