//! The director lab: a bridged LAN of named hosts in network namespaces, with
//! NodePort stand-ins on the node hosts, for end-to-end tests and for operators
//! trying director by hand (`cargo xtask lab ...`).
//!
//! The same code runs on the host kernel (everything but IPVS) and inside the
//! real-kernel VM of `cargo xtask vm`.
#![deny(missing_docs)]

pub mod configs;
pub mod lab;
pub mod measure;
pub mod raftlab;
pub mod scenario;
pub mod topology;
pub mod upgrade;
pub mod watch;

pub use lab::{Lab, LabEnv, LabError, LabGuard, LabSpec};
pub use topology::{Host, Role};
