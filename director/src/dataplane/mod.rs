//! The data plane: what every director makes its own kernel hold, computed
//! from the committed state and local inputs (the hold rule, a drain), one
//! reconciler per kind of kernel object, all run by one driver
//! ([`driver`]):
//!
//! - [`ipvs`]: every virtual service, on every data director;
//! - [`routes`]: the local routes of the VIPs held here (and their
//!   announcements);
//! - [`nft`]: the SNAT table and the drain gate;
//! - [`sync`]: the kernel's IPVS connection-sync daemons, and
//!   [`conntrack`] the conntrackd that syncs `nat`'s netfilter state;
//! - [`sysctl`]: what forwarding needs;
//! - [`onlink`]: which `dr` backends this host can reach directly (a local
//!   input of [`ipvs`], like health).
//!
//! A new kind of kernel object is a new module implementing
//! [`driver::Reconciler`], started in `daemon.rs`.

pub mod conntrack;
pub mod driver;
pub mod ipvs;
pub mod nft;
pub mod onlink;
pub mod routes;
pub mod sync;
pub mod sysctl;
