//! Inputs: where virtual services come from. Each source turns what it
//! reads into [`Wanted`] services, keyed by a name under its own prefix, so
//! that the leader never removes one source's services for missing from
//! another: the static services of the configuration file ([`statics`])
//! and the `type: LoadBalancer` Services of a Kubernetes cluster
//! ([`kubernetes`]). A new source adds a module here and a prefix.

pub mod kubernetes;
pub mod statics;

use std::net::IpAddr;

pub use consensus::state::Origin;
use consensus::state::{
    Forwarding, HealthCheck, Persistence, Scheduler, SchedulerFlag, ServicePort,
};
use std::collections::BTreeSet;

/// Where a wanted service's VIP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipRequest {
    /// This address.
    Address(IpAddr),
    /// Any free address of the named pool (kept once allocated), of one
    /// family (`v6`) or either (None).
    Pool {
        /// The pool.
        name: String,
        /// IPv6 (true), IPv4 (false) or either.
        v6: Option<bool>,
    },
    /// An address it already has in any pool of `keep`, or else the first
    /// free address of the first pool of `assign` that has one.
    Pools {
        /// Pools whose addresses the service may keep.
        keep: Vec<String>,
        /// Pools it may get a new address from, in order.
        assign: Vec<String>,
        /// IPv6 (true) or IPv4 (false).
        v6: bool,
    },
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
    /// `nat`: source-NAT to the VIP (false: the nodes route back).
    pub snat: bool,
    /// Client persistence.
    pub persistence: Option<Persistence>,
    /// Ports and their backends.
    pub ports: Vec<ServicePort>,
    /// How every director checks the backends.
    pub health: Option<Box<HealthCheck>>,
    /// The Kubernetes Service it serves (None: a static service); the
    /// leader fills in where the address came from.
    pub origin: Option<Origin>,
    /// Its sharing group: the services of one group share one VIP when
    /// their ports do not collide.
    pub share: Option<String>,
}
