//! The Kubernetes integration against the lab's API server (the double of
//! `tests/kubeapi`), driven with the real `kubectl`: three directors on the
//! host kernel (no IPVS needed: these tests check what reaches the
//! replicated state and the API; the VM test
//! `a_kubernetes_service_gets_a_pool_address_and_survives_owner_and_api_loss`
//! checks the data path). They need root; `cargo xtask test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use lab::scenario::{director_status, wait_for};
use lab::{Host, LabEnv, LabGuard, LabSpec};
use serde_json::Value;

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    env.kube_double = lab::lab::workspace_binary("kube-double").expect("the kube-double binary");
    env
}

/// `kubectl ARGS`, which must succeed.
fn kubectl(lab: &LabGuard, args: &[&str]) -> String {
    lab.kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

/// Creates an object from YAML text with `kubectl create -f`.
fn create(lab: &LabGuard, name: &str, yaml: &str) {
    let path = std::env::temp_dir().join(format!("t-kube-{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    kubectl(lab, &["create", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

/// A LoadBalancer Service of director's class; `extra_meta` and
/// `extra_spec` are YAML lines (indented by 2) added to metadata and spec.
fn service(name: &str, node_port: u16, extra_meta: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{extra_meta}\
         spec:\n  type: LoadBalancer\n  loadBalancerClass: director.io/ipvs\n  selector:\n    app: {name}\n\
         {extra_spec}  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: {node_port}\n"
    )
}

/// The ingress IPs a Service shows, space-separated ("" while pending).
fn ingress(lab: &LabGuard, name: &str) -> String {
    kubectl(
        lab,
        &[
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ],
    )
}

fn wait_ingress(lab: &LabGuard, name: &str) -> String {
    wait_for(&format!("an address for {name}"), 60, || {
        Some(ingress(lab, name)).filter(|s| !s.is_empty())
    })
}

/// The Events of a Service, as `kubectl describe` lists them.
fn events(lab: &LabGuard, name: &str) -> String {
    let out = kubectl(lab, &["describe", "service", name]);
    out.split("Events:").nth(1).unwrap_or("").to_string()
}

/// The Kubernetes part of d1's status.
fn kube_status(lab: &LabGuard) -> Value {
    director_status(lab, &Host::director(1))
        .map(|s| s["kubernetes"].clone())
        .unwrap_or(Value::Null)
}

/// A Service's entry in d1's status, once it is there.
fn status_of(lab: &LabGuard, name: &str) -> Option<Value> {
    let k = kube_status(lab);
    k["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == format!("default/{name}"))
        .cloned()
}

/// "node=weight" of every backend of the Service's first port.
fn backends(lab: &LabGuard, name: &str) -> Option<Vec<String>> {
    let s = status_of(lab, name)?;
    Some(
        s["ports"][0]["backends"]
            .as_array()?
            .iter()
            .map(|b| format!("{}={}", b["node"].as_str().unwrap_or("?"), b["weight"]))
            .collect(),
    )
}

/// A merge patch of a Node's status (`kubectl patch --subresource=status`).
fn patch_node_status(lab: &LabGuard, node: &str, patch: &str) {
    kubectl(
        lab,
        &[
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ],
    );
}

/// Labels the node out of the load balancers' node set, or back in.
fn exclude_node(lab: &LabGuard, node: &str, out: bool) {
    let label = format!(
        "node.kubernetes.io/exclude-from-external-load-balancers{}",
        if out { "=" } else { "-" }
    );
    kubectl(lab, &["label", "node", node, &label]);
}

fn finalizers(lab: &LabGuard, name: &str) -> String {
    kubectl(
        lab,
        &[
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
    )
}

/// The whole life of LoadBalancer Services through the real kubectl:
/// create, update, nodes changing, requested and conflicting addresses, a
/// bad annotation, dual stack, `externalTrafficPolicy: Local`, a type
/// change, a 410 relist, a restart of every director, the API server away,
/// and delete with release.
#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn loadbalancer_services_through_the_real_kubectl() {
    let mut lab = LabGuard::up(
        LabSpec::new(3, 2).with_prefix("t-kube-").with_kube(true),
        env(),
    )
    .expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a leader", 60, || {
        director_status(&lab, &all[0]).filter(|s| !s["cluster"]["leader"].is_null())
    });
    wait_for("the Kubernetes view", 60, || {
        (kube_status(&lab)["synced"] == true).then_some(())
    });

    // Create: the pool's next address (the lab's static service has the
    // first), the finalizer, Events, every node a backend.
    create(&lab, "web", &service("web", 30080, "", ""));
    assert_eq!(wait_ingress(&lab, "web"), "10.10.0.201");
    let mode = kubectl(
        &lab,
        &[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ipMode}",
        ],
    );
    assert_eq!(mode, "Proxy", "nat: kube-proxy must leave the VIP alone");
    wait_for("the finalizer", 30, || {
        finalizers(&lab, "web")
            .contains("director.io/load-balancer-cleanup")
            .then_some(())
    });
    wait_for("the IPAllocated Event", 30, || {
        events(&lab, "web").contains("IPAllocated").then_some(())
    });
    assert_eq!(
        wait_for("web in the status", 30, || backends(&lab, "web")),
        ["n1=1", "n2=1"]
    );
    let s = status_of(&lab, "web").unwrap();
    assert_eq!(s["vips"][0]["from"], "pool lab", "{s}");

    // Update: a second port.
    kubectl(
        &lab,
        &[
            "patch",
            "service",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"ports":[{"name":"http","port":80,"targetPort":8080,"nodePort":30080},{"name":"alt","port":8080,"targetPort":8080,"nodePort":30081}]}}"#,
        ],
    );
    wait_for("the second port", 30, || {
        let s = status_of(&lab, "web")?;
        (s["ports"].as_array()?.len() == 2).then_some(())
    });

    // A node that is not Ready takes no new connections; excluded, it is
    // no backend; both undone, it is back.
    patch_node_status(
        &lab,
        "n2",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady"}]}}"#,
    );
    wait_for("n2 at weight 0", 30, || {
        (backends(&lab, "web")? == ["n1=1", "n2=0"]).then_some(())
    });
    patch_node_status(
        &lab,
        "n2",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}]}}"#,
    );
    exclude_node(&lab, "n2", true);
    wait_for("n2 excluded", 30, || {
        (backends(&lab, "web")? == ["n1=1"]).then_some(())
    });
    exclude_node(&lab, "n2", false);
    wait_for("n2 back", 30, || {
        (backends(&lab, "web")? == ["n1=1", "n2=1"]).then_some(())
    });
    // A node deleted is no backend; registered again, it is.
    let n2 = kubectl(&lab, &["get", "node", "n2", "-o", "json"]);
    kubectl(&lab, &["delete", "node", "n2"]);
    wait_for("n2 gone", 30, || {
        (backends(&lab, "web")? == ["n1=1"]).then_some(())
    });
    let mut node: Value = serde_json::from_str(&n2).unwrap();
    for field in ["resourceVersion", "uid", "creationTimestamp"] {
        node["metadata"].as_object_mut().unwrap().remove(field);
    }
    create(&lab, "n2", &node.to_string());
    patch_node_status(
        &lab,
        "n2",
        &serde_json::json!({"status": n2.parse::<Value>().unwrap()["status"]}).to_string(),
    );
    wait_for("n2 registered again", 30, || {
        (backends(&lab, "web")? == ["n1=1", "n2=1"]).then_some(())
    });

    // A requested address; a second Service asking for it stays pending
    // with a Warning, and the first keeps it.
    let ask = "  annotations:\n    director.io/load-balancer-ips: 10.10.0.230\n";
    create(&lab, "req", &service("req", 30090, ask, ""));
    assert_eq!(wait_ingress(&lab, "req"), "10.10.0.230");
    create(&lab, "clash", &service("clash", 30091, ask, ""));
    wait_for("a Warning for the clash", 30, || {
        let e = events(&lab, "clash");
        (e.contains("Warning") && e.contains("already allocated")).then_some(())
    });
    assert_eq!(ingress(&lab, "clash"), "");
    assert_eq!(ingress(&lab, "req"), "10.10.0.230");

    // A bad annotation: a Warning naming it; the Service keeps working.
    kubectl(
        &lab,
        &[
            "annotate",
            "service",
            "web",
            "director.io/scheduler=fastest",
        ],
    );
    wait_for("a Warning for the annotation", 30, || {
        let e = events(&lab, "web");
        (e.contains("InvalidAnnotation") && e.contains("director.io/scheduler")).then_some(())
    });
    assert_eq!(ingress(&lab, "web"), "10.10.0.201");

    // A sharing key: two Services on one VIP with disjoint ports; a third
    // that wants a port already taken stays pending with a Warning.
    let share = "  annotations:\n    director.io/sharing-key: front\n";
    create(&lab, "front-http", &service("front-http", 30096, share, ""));
    let shared_ip = wait_ingress(&lab, "front-http");
    let https = service("front-https", 30097, share, "").replace("port: 80\n", "port: 443\n");
    create(&lab, "front-https", &https);
    assert_eq!(wait_ingress(&lab, "front-https"), shared_ip);
    create(
        &lab,
        "front-clash",
        &service("front-clash", 30098, share, ""),
    );
    wait_for("a Warning for the port clash", 30, || {
        let e = events(&lab, "front-clash");
        (e.contains("Warning") && e.contains("default/front-http")).then_some(())
    });
    assert_eq!(ingress(&lab, "front-clash"), "");
    assert_eq!(
        wait_for("front-https in the status", 30, || status_of(
            &lab,
            "front-https"
        ))["vips"][0]["from"],
        "shared front"
    );

    // Dual stack.
    create(
        &lab,
        "dual",
        &service(
            "dual",
            30092,
            "",
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
        ),
    );
    let dual = wait_for("both families for dual", 60, || {
        Some(ingress(&lab, "dual")).filter(|s| s.split(' ').count() == 2)
    });
    assert!(
        dual.starts_with("10.10.0.") && dual.contains(" fd10:10::2"),
        "{dual}"
    );

    // externalTrafficPolicy: Local: only nodes with a ready endpoint.
    create(
        &lab,
        "local",
        &service("local", 30093, "", "  externalTrafficPolicy: Local\n"),
    );
    wait_ingress(&lab, "local");
    create(
        &lab,
        "local-slice",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: local-abc\n  namespace: default\n  labels:\n    kubernetes.io/service-name: local\naddressType: IPv4\nendpoints:\n- addresses: [10.42.0.7]\n  nodeName: n1\n  conditions: {ready: true}\nports:\n- {name: http, port: 8080, protocol: TCP}\n",
    );
    wait_for("only n1 behind local", 30, || {
        (backends(&lab, "local")? == ["n1=1"]).then_some(())
    });

    // A type change: no longer ours; its VIP goes and so does our finalizer.
    kubectl(
        &lab,
        &[
            "patch",
            "service",
            "local",
            "--type=merge",
            "-p",
            r#"{"spec":{"type":"NodePort","loadBalancerClass":null}}"#,
        ],
    );
    wait_for("local to leave", 30, || {
        status_of(&lab, "local").is_none().then_some(())
    });
    wait_for("our finalizer off local", 30, || {
        (!finalizers(&lab, "local").contains("director.io")).then_some(())
    });

    // Watches that expire are listed again; changes keep arriving.
    let kubeconfig = lab.kubeconfig_path();
    let double = lab.env().kube_double.clone();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", "t-kube-api"])
        .arg(&double)
        .args(["fault", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("expire")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    create(&lab, "after", &service("after", 30094, "", ""));
    wait_ingress(&lab, "after");

    // Every director restarted: the same addresses.
    let before: Vec<String> = ["web", "req", "dual", "after"]
        .iter()
        .map(|n| ingress(&lab, n))
        .collect();
    for h in &all {
        lab.terminate(&h.name(), Duration::from_secs(10)).unwrap();
    }
    for h in &all {
        lab.start_host(&h.name()).unwrap();
    }
    wait_for("the Kubernetes view after the restart", 60, || {
        (kube_status(&lab)["synced"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let again: Vec<String> = ["web", "req", "dual", "after"]
        .iter()
        .map(|n| ingress(&lab, n))
        .collect();
    assert_eq!(before, again, "addresses never change across restarts");
    assert_eq!(
        wait_for("web in the status", 30, || status_of(&lab, "web"))["vips"][0]["vip"],
        "10.10.0.201"
    );

    // The API server away: nothing is removed, status says so.
    lab.stop_api().unwrap();
    wait_for("the API to show unreachable", 60, || {
        (kube_status(&lab)["api_reachable"] == false).then_some(())
    });
    // A new leader elected meanwhile (the old one restarted, its watches
    // never listing) keeps every allocation.
    let leader = wait_for("a leader's name", 60, || {
        director_status(&lab, &all[0])?["cluster"]["leader_name"]
            .as_str()
            .map(str::to_string)
    });
    lab.terminate(&leader, Duration::from_secs(10)).unwrap();
    lab.start_host(&leader).unwrap();
    wait_for("a leader again", 60, || {
        let s = director_status(&lab, &all[0])?;
        (!s["cluster"]["leader"].is_null()
            && all
                .iter()
                .all(|h| director_status(&lab, h).is_some_and(|x| x["lease"]["held"] == true)))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    for h in &all {
        let s = wait_for("a status", 30, || director_status(&lab, h));
        for n in ["web", "req", "dual", "after"] {
            let found = s["kubernetes"]["services"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["service"] == format!("default/{n}")));
            assert!(
                found,
                "{n} is kept on {} while the API is away: {s}",
                h.name()
            );
        }
    }
    assert_eq!(
        wait_for("web in the status", 30, || status_of(&lab, "web"))["vips"][0]["vip"],
        "10.10.0.201"
    );
    lab.start_api().unwrap();
    wait_for("the API to show reachable", 90, || {
        (kube_status(&lab)["api_reachable"] == true).then_some(())
    });

    // Delete: released before the object goes; the next Service gets it.
    kubectl(&lab, &["delete", "service", "web", "--wait=false"]);
    wait_for("web to go", 60, || {
        lab.kubectl(&["get", "service", "web"]).err().map(|_| ())
    });
    assert!(status_of(&lab, "web").is_none());
    create(&lab, "next", &service("next", 30095, "", ""));
    assert_eq!(
        wait_ingress(&lab, "next"),
        "10.10.0.201",
        "the released address is free again"
    );
    lab.down().expect("lab down");
}

/// LoadBalancer Services as the MetalLB and kube-vip documentation writes
/// them, rewritten for director's class and annotations
/// (tests/kube-examples/services.yaml), get the addresses they ask for.
#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn examples_in_the_style_of_other_load_balancers_get_addresses() {
    let lab = LabGuard::up(
        LabSpec::new(3, 2).with_prefix("t-kex-").with_kube(true),
        env(),
    )
    .expect("lab up");
    wait_for("the Kubernetes view", 60, || {
        (kube_status(&lab)["synced"] == true).then_some(())
    });
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/kube-examples/services.yaml");
    kubectl(&lab, &["create", "-f", file]);
    assert_eq!(wait_ingress(&lab, "nginx"), "10.10.0.220");
    assert_eq!(wait_ingress(&lab, "dns-tcp"), "10.10.0.221");
    assert_eq!(wait_ingress(&lab, "dns-udp"), "10.10.0.221");
    assert_eq!(wait_ingress(&lab, "kv-nginx"), "10.10.0.222");
    let dual = wait_ingress(&lab, "web-dual");
    assert!(dual.starts_with("10.10.0.2"), "{dual}");
    // The deprecated field worked, with a Warning saying so.
    wait_for("the deprecation Warning", 30, || {
        events(&lab, "nginx")
            .contains("DeprecatedField")
            .then_some(())
    });
    lab.down().expect("lab down");
}
