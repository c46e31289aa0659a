//! A client for the Linux kernel's IPVS generic-netlink family (`IPVS`,
//! `include/uapi/linux/ip_vs.h`).
//!
//! This is the only crate of the workspace allowed to hold `unsafe` code; every
//! such block carries a `// SAFETY:` note. The client itself is tracked in the
//! project's issues; this crate currently holds the workspace slot for it.
#![deny(missing_docs)]
