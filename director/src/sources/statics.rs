//! The static services of the configuration file (`services:`), for
//! backends outside Kubernetes. They live in the state under
//! [`PREFIX`]; a service gone from the file is removed.

use consensus::state::{Backend, ServicePort};

use super::{VipRequest, Wanted};
use crate::config::{Config, VipSource};

/// Static services live in the state under this prefix, so that services
/// from other sources (Kubernetes) are never removed for missing from the file.
pub const PREFIX: &str = "static/";

/// The configuration's static services, as the state should hold them.
pub fn wanted(config: &Config) -> Vec<Wanted> {
    config
        .services
        .iter()
        .map(|s| Wanted {
            name: format!("{PREFIX}{}", s.name),
            vip: match &s.vip {
                VipSource::Address(ip) => VipRequest::Address(*ip),
                VipSource::Pool(p) => VipRequest::Pool {
                    name: p.clone(),
                    v6: None,
                },
            },
            scheduler: s.scheduler,
            scheduler_flags: s.scheduler_flags.clone(),
            forwarding: s.forwarding,
            snat: s.snat,
            persistence: s.persistence,
            health: s.health.clone(),
            origin: None,
            share: None,
            ports: s
                .ports
                .iter()
                .map(|p| ServicePort {
                    protocol: p.protocol,
                    port: p.port,
                    backends: p
                        .backends
                        .iter()
                        .map(|b| Backend {
                            address: b.addr.ip(),
                            port: b.addr.port(),
                            weight: b.weight,
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// Whether a service of the state belongs to this source.
pub fn owns(name: &str) -> bool {
    name.starts_with(PREFIX)
}
