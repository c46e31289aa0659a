use super::*;
use crate::config::{Kubernetes, Pool, ServiceSettings, KUBERNETES_CLASS};
use consensus::domain::{Forwarding, Scheduler};
use serde_json::json;
use std::path::PathBuf;

fn k() -> Kubernetes {
    Kubernetes {
        kubeconfig: PathBuf::from("/etc/director/kubeconfig"),
        context: None,
        class: KUBERNETES_CLASS.into(),
        claim_unclassed: false,
        services: BTreeMap::new(),
    }
}

fn defaults() -> ServiceSettings {
    ServiceSettings {
        scheduler: Scheduler::Rr,
        scheduler_flags: BTreeSet::new(),
        forwarding: Forwarding::Nat,
        persistence: None,
        health: Default::default(),
        snat: true,
    }
}

fn pools() -> Vec<Pool> {
    vec![
        Pool::new(
            "lab",
            vec![
                (
                    "10.10.0.200".parse().unwrap(),
                    "10.10.0.239".parse().unwrap(),
                ),
                (
                    "fd10:10::200".parse().unwrap(),
                    "fd10:10::239".parse().unwrap(),
                ),
            ],
        ),
        {
            let mut p = Pool::new(
                "reserved",
                vec![(
                    "10.10.0.240".parse().unwrap(),
                    "10.10.0.249".parse().unwrap(),
                )],
            );
            p.auto_assign = false;
            p
        },
    ]
}

fn svc(v: serde_json::Value) -> Arc<Service> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// A LoadBalancer Service of our class with one TCP port 80 -> NodePort 30080.
fn web(extra: serde_json::Value) -> Arc<Service> {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u-web"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "director.io/ipvs",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]
        }
    });
    merge(&mut v, extra);
    svc(v)
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn node(name: &str, v4: &str, v6: &str, ready: bool) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": v4},
                    {"type": "InternalIP", "address": v6},
                    {"type": "Hostname", "address": name}
                ],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap(),
    )
}

fn view(services: Vec<Arc<Service>>) -> View {
    View {
        services,
        nodes: vec![
            node("n1", "10.10.0.21", "fd10:10::21", true),
            node("n2", "10.10.0.22", "fd10:10::22", true),
        ],
        slices: Vec::new(),
    }
}

fn run(v: &View) -> Translation {
    translate(v, &k(), &defaults(), &pools())
}

#[test]
fn a_service_of_our_class_becomes_one_virtual_service_over_every_node() {
    let t = run(&view(vec![web(json!({}))]));
    assert_eq!(t.wanted.len(), 1, "{t:?}");
    let w = &t.wanted[0];
    assert_eq!(w.name, "kube/u-web/ipv4");
    assert_eq!(
        w.vip,
        VipRequest::Pools {
            keep: vec!["lab".into(), "reserved".into()],
            assign: vec!["lab".into()],
            v6: false
        }
    );
    assert_eq!(w.ports.len(), 1);
    assert_eq!(w.ports[0].port, 80);
    let backends: Vec<String> = w.ports[0]
        .backends
        .iter()
        .map(|b| format!("{}:{} w{}", b.address, b.port, b.weight))
        .collect();
    assert_eq!(backends, ["10.10.0.21:30080 w1", "10.10.0.22:30080 w1"]);
    let o = w.origin.as_ref().unwrap();
    assert_eq!((o.namespace.as_str(), o.name.as_str()), ("default", "web"));
    assert!(t.ours["u-web"].problems.is_empty());
}

#[test]
fn other_classes_types_and_unclassed_services_are_never_touched() {
    let other =
        web(json!({"metadata": {"uid": "u-o"}, "spec": {"loadBalancerClass": "other.io/lb"}}));
    let cluster_ip = svc(json!({
        "metadata": {"name": "c", "namespace": "default", "uid": "u-c"},
        "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}
    }));
    let unclassed = svc(json!({
        "metadata": {"name": "u", "namespace": "default", "uid": "u-u"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30081}]}
    }));
    let v = view(vec![other, cluster_ip, unclassed.clone()]);
    let t = run(&v);
    assert!(t.wanted.is_empty(), "{t:?}");
    assert!(t.ours.is_empty());
    let mut claiming = k();
    claiming.claim_unclassed = true;
    let t = translate(&v, &claiming, &defaults(), &pools());
    assert_eq!(t.wanted.len(), 1);
    assert_eq!(t.wanted[0].name, "kube/u-u/ipv4");
}

#[test]
fn excluded_deleted_and_tainted_nodes_are_no_backends_and_not_ready_ones_get_weight_0() {
    let mut v = view(vec![web(json!({}))]);
    v.nodes.push(node("n3", "10.10.0.23", "fd10:10::23", false));
    let mut excluded: Node = (*node("n4", "10.10.0.24", "fd10:10::24", true)).clone();
    excluded.metadata.labels = Some([(EXCLUDE_LABEL.to_string(), String::new())].into());
    v.nodes.push(Arc::new(excluded));
    let tainted: Node = serde_json::from_value(json!({
        "metadata": {"name": "n5"},
        "spec": {"taints": [{"key": AUTOSCALER_TAINT, "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.10.0.25"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    v.nodes.push(Arc::new(tainted));
    let mut deleting: Node = (*node("n6", "10.10.0.26", "fd10:10::26", true)).clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
    v.nodes.push(Arc::new(deleting));
    let t = run(&v);
    let backends: Vec<String> = t.wanted[0].ports[0]
        .backends
        .iter()
        .map(|b| format!("{} w{}", b.address, b.weight))
        .collect();
    assert_eq!(
        backends,
        ["10.10.0.21 w1", "10.10.0.22 w1", "10.10.0.23 w0"]
    );
}

#[test]
fn requested_addresses_pools_and_their_problems() {
    // The annotation asks for an address in a pool: taken as asked.
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_IPS: "10.10.0.241"}}}),
    )]));
    assert_eq!(
        t.wanted[0].vip,
        VipRequest::Address("10.10.0.241".parse().unwrap())
    );
    // An address in no pool: pending, with a Warning naming it.
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_IPS: "192.0.2.7"}}}),
    )]));
    assert!(t.wanted.is_empty());
    assert!(
        t.ours["u-web"].problems[0].note.contains("192.0.2.7"),
        "{t:?}"
    );
    // Garbage in the annotation: a Warning, and the pools decide.
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_IPS: "nope"}}}),
    )]));
    assert!(matches!(t.wanted[0].vip, VipRequest::Pools { .. }));
    assert_eq!(t.ours["u-web"].problems[0].reason, "InvalidAnnotation");
    // The deprecated field is honoured, with a Warning.
    let t = run(&view(vec![web(
        json!({"spec": {"loadBalancerIP": "10.10.0.205"}}),
    )]));
    assert_eq!(
        t.wanted[0].vip,
        VipRequest::Address("10.10.0.205".parse().unwrap())
    );
    assert_eq!(t.ours["u-web"].problems[0].reason, "DeprecatedField");
    // A named pool.
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_POOL: "reserved"}}}),
    )]));
    assert_eq!(
        t.wanted[0].vip,
        VipRequest::Pool {
            name: "reserved".into(),
            v6: Some(false)
        }
    );
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_POOL: "nope"}}}),
    )]));
    assert!(t.wanted.is_empty());
    assert!(
        t.ours["u-web"].problems[0].note.contains("no pool named"),
        "{t:?}"
    );
}

#[test]
fn dual_stack_follows_the_family_policy() {
    let dual = |policy: &str| {
        web(json!({"spec": {"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": policy}}))
    };
    let t = run(&view(vec![dual("RequireDualStack")]));
    let names: Vec<&str> = t.wanted.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["kube/u-web/ipv4", "kube/u-web/ipv6"]);
    assert_eq!(
        t.wanted[1].ports[0].backends[0].address.to_string(),
        "fd10:10::21"
    );
    // Only IPv4 pools: RequireDualStack stays pending, PreferDualStack
    // takes IPv4.
    let v4_only = vec![Pool::new(
        "v4",
        vec![(
            "10.10.0.200".parse().unwrap(),
            "10.10.0.239".parse().unwrap(),
        )],
    )];
    let t = translate(
        &view(vec![dual("RequireDualStack")]),
        &k(),
        &defaults(),
        &v4_only,
    );
    assert!(t.wanted.is_empty(), "{t:?}");
    assert!(t.ours["u-web"].problems[0].note.contains("IPv6"), "{t:?}");
    let t = translate(
        &view(vec![dual("PreferDualStack")]),
        &k(),
        &defaults(),
        &v4_only,
    );
    assert_eq!(t.wanted.len(), 1);
    assert!(t.ours["u-web"].problems.is_empty(), "{t:?}");
}

#[test]
fn annotations_override_the_yaml_which_overrides_the_defaults() {
    let mut kube = k();
    kube.services.insert(
        "default/web".into(),
        ServiceSettings {
            scheduler: Scheduler::Wlc,
            ..defaults()
        },
    );
    let v = view(vec![web(json!({}))]);
    let t = translate(&v, &kube, &defaults(), &pools());
    assert_eq!(t.wanted[0].scheduler, Scheduler::Wlc);
    let v = view(vec![web(json!({"metadata": {"annotations": {
        ANN_SCHEDULER: "sh", ANN_FLAGS: "sh-port", ANN_PERSISTENCE: "300/24", ANN_FORWARDING: "dr"
    }}}))]);
    let t = translate(&v, &kube, &defaults(), &pools());
    let w = &t.wanted[0];
    assert_eq!(w.scheduler, Scheduler::Sh);
    assert_eq!(w.scheduler_flags.len(), 1);
    assert_eq!(
        w.persistence,
        Some(Persistence {
            timeout_s: 300,
            netmask: Some(24)
        })
    );
    assert_eq!(w.forwarding, Forwarding::Dr);
    // Direct routing keeps the Service port on the nodes.
    assert_eq!(w.ports[0].backends[0].port, 80);
    // A bad value falls back to the YAML, with a Warning naming it.
    let v = view(vec![web(
        json!({"metadata": {"annotations": {ANN_SCHEDULER: "fastest"}}}),
    )]);
    let t = translate(&v, &kube, &defaults(), &pools());
    assert_eq!(t.wanted[0].scheduler, Scheduler::Wlc);
    let p = &t.ours["u-web"].problems[0];
    assert!(
        p.note.contains(ANN_SCHEDULER) && p.note.contains("fastest"),
        "{p:?}"
    );
    // Flags that do not belong to the scheduler: both fall back.
    let v = view(vec![web(
        json!({"metadata": {"annotations": {ANN_FLAGS: "mh-port"}}}),
    )]);
    let t = translate(&v, &kube, &defaults(), &pools());
    assert_eq!(t.wanted[0].scheduler, Scheduler::Wlc);
    assert!(t.wanted[0].scheduler_flags.is_empty());
    assert_eq!(t.ours["u-web"].problems.len(), 1);
}

#[test]
fn external_traffic_policy_local_keeps_only_nodes_with_a_ready_endpoint() {
    let mut v = view(vec![web(
        json!({"spec": {"externalTrafficPolicy": "Local"}}),
    )]);
    v.slices.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.1.5"], "nodeName": "n2", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.9"], "nodeName": "n1", "conditions": {"ready": false}}
            ]
        }))
        .unwrap(),
    ));
    let t = run(&v);
    let backends: Vec<String> = t.wanted[0].ports[0]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(backends, ["10.10.0.22"]);
}

#[test]
fn a_deleted_service_is_ours_but_wanted_no_more_and_no_node_ports_is_a_warning() {
    let t = run(&view(vec![web(
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    )]));
    assert!(t.wanted.is_empty());
    assert!(t.ours["u-web"].deleting);
    let t = run(&view(vec![web(json!({"spec": {
        "allocateLoadBalancerNodePorts": false,
        "ports": [{"port": 80, "protocol": "TCP"}]
    }}))]));
    assert!(t.wanted.is_empty());
    assert_eq!(t.ours["u-web"].problems[0].reason, "NoNodePorts");
}

#[test]
fn a_sharing_key_names_a_group_per_namespace_and_family() {
    let t = run(&view(vec![web(
        json!({"metadata": {"annotations": {ANN_SHARING: "front"}}}),
    )]));
    let w = &t.wanted[0];
    assert_eq!(w.share.as_deref(), Some("kube-share/default/front/ipv4"));
    assert_eq!(
        w.origin.as_ref().unwrap().address,
        AddressFrom::Shared("front".into())
    );
}

/// Oldest first, whatever order the watch delivered them in.
#[test]
fn services_are_translated_oldest_first() {
    let older = web(
        json!({"metadata": {"name": "b", "uid": "u-b", "creationTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let newer = web(
        json!({"metadata": {"name": "a", "uid": "u-a", "creationTimestamp": "2026-02-01T00:00:00Z"}}),
    );
    let t = run(&view(vec![newer, older]));
    let names: Vec<&str> = t.wanted.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["kube/u-b/ipv4", "kube/u-a/ipv4"]);
}

#[test]
fn health_is_kube_proxy_by_default_and_the_annotation_or_snat_change_it() {
    use consensus::domain::Probe;
    let probe = |t: &Translation| t.wanted[0].health.as_ref().map(|h| h.probe.clone());
    // kube-proxy's /healthz on every node.
    let t = run(&view(vec![web(json!({}))]));
    assert!(
        matches!(probe(&t), Some(Probe::Http { port: Some(10256), ref path, .. }) if path == "/healthz"),
        "{:?}",
        probe(&t)
    );
    assert!(t.wanted[0].snat);
    // externalTrafficPolicy Local: the Service's healthCheckNodePort.
    let t = run(&view(vec![web(json!({"spec": {
        "externalTrafficPolicy": "Local", "healthCheckNodePort": 31234
    }}))]));
    assert!(
        matches!(probe(&t), Some(Probe::Http { port: Some(31234), ref path, .. }) if path == "/"),
        "{:?}",
        probe(&t)
    );
    // The annotation: its own check, and snat off.
    let t = run(&view(vec![web(json!({"metadata": {"annotations": {
        ANN_HEALTH: "{type: tcp, port: 8080, fall: 5}", ANN_SNAT: "false"
    }}}))]));
    assert_eq!(probe(&t), Some(Probe::Tcp { port: Some(8080) }));
    assert_eq!(t.wanted[0].health.as_ref().unwrap().fall, 5);
    assert!(!t.wanted[0].snat);
    assert!(t.ours["u-web"].problems.is_empty());
    // snat under dr: ignored, with a Warning that says so.
    let t = run(&view(vec![web(json!({"metadata": {"annotations": {
        ANN_FORWARDING: "dr", ANN_SNAT: "false"
    }}}))]));
    assert_eq!(t.wanted[0].forwarding, Forwarding::Dr);
    let p = &t.ours["u-web"].problems[0];
    assert!(
        p.note.contains(ANN_SNAT) && p.note.contains("ignored under dr"),
        "{p:?}"
    );
    // A bad one: a Warning naming it, and the default check.
    let t = run(&view(vec![web(json!({"metadata": {"annotations": {
        ANN_HEALTH: "{type: ping}"
    }}}))]));
    assert!(matches!(
        probe(&t),
        Some(Probe::Http {
            port: Some(10256),
            ..
        })
    ));
    let p = &t.ours["u-web"].problems[0];
    assert!(
        p.note.contains(ANN_HEALTH) && p.note.contains("unknown check type"),
        "{p:?}"
    );
    // `none` turns it off.
    let t = run(&view(vec![web(json!({"metadata": {"annotations": {
        ANN_HEALTH: "{type: none}"
    }}}))]));
    assert_eq!(probe(&t), None);
}
