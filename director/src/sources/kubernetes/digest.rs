//! What the translation reads of each kind of object, digested, so that a
//! change of anything else (a status the leader wrote, the finalizer, a
//! node's heartbeat, a resourceVersion) does not make the leader translate
//! every Service again.

use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::writer::CLASS_ANNOTATION;

fn digest(v: impl Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(&v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// A Service: its labels, annotations (but the one director writes), the
/// times that order and end it, and its spec.
pub fn service(s: &Service) -> u64 {
    let m = &s.metadata;
    let annotations: Vec<_> = m
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != CLASS_ANNOTATION)
        .collect();
    digest((
        &m.labels,
        annotations,
        &m.creation_timestamp,
        &m.deletion_timestamp,
        &s.spec,
    ))
}

/// A Node: its labels, deletion, taints, addresses and readiness.
pub fn node(n: &Node) -> u64 {
    let m = &n.metadata;
    let status = n.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    digest((
        &m.labels,
        &m.deletion_timestamp,
        n.spec.as_ref().map(|s| &s.taints),
        status.map(|s| &s.addresses),
        ready,
    ))
}

/// An EndpointSlice: its labels and, per endpoint, its node and readiness.
pub fn slice(e: &EndpointSlice) -> u64 {
    let endpoints: Vec<_> = e
        .endpoints
        .iter()
        .map(|p| (&p.node_name, p.conditions.as_ref().and_then(|c| c.ready)))
        .collect();
    digest((&e.metadata.labels, endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_heartbeats_and_our_own_writes_do_not_count() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "d", "uid": "u", "resourceVersion": "1"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let mut written = svc.clone();
        written.metadata.resource_version = Some("2".into());
        written.metadata.finalizers = Some(vec!["director.io/load-balancer-cleanup".into()]);
        written.metadata.annotations =
            Some([(CLASS_ANNOTATION.to_string(), "director.io/ipvs".to_string())].into());
        written.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.10.0.201"}]}}))
                .unwrap();
        assert_eq!(service(&svc), service(&written));
        let mut changed = svc.clone();
        changed.metadata.annotations =
            Some([("director.io/scheduler".to_string(), "sh".to_string())].into());
        assert_ne!(service(&svc), service(&changed));

        let node_at = |beat: &str, ready: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n1"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "10.10.0.21"}],
                    "conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": beat}]
                }
            }))
            .unwrap()
        };
        assert_eq!(
            node(&node_at("2026-01-01T00:00:00Z", "True")),
            node(&node_at("2026-01-01T00:00:10Z", "True"))
        );
        assert_ne!(
            node(&node_at("2026-01-01T00:00:00Z", "True")),
            node(&node_at("2026-01-01T00:00:00Z", "False"))
        );
    }
}
