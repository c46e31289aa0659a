//! The double driven by the real `kubectl` with default flags (validation included).
//! Skipped, with a message, where `/usr/bin/kubectl` is absent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kube_double::{Double, Options};
use serde_json::{json, Value};

const KUBECTL: &str = "/usr/bin/kubectl";

fn have_kubectl() -> bool {
    if Path::new(KUBECTL).exists() {
        true
    } else {
        eprintln!("skipped: {KUBECTL} is not installed");
        false
    }
}

/// Run kubectl against the double; panic with its output when it fails.
fn kubectl(double: &Double, args: &[&str]) -> String {
    kubectl_stdin(double, args, None)
}

fn kubectl_stdin(double: &Double, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(double.kubeconfig())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

fn get_json(double: &Double, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(double, &all)).unwrap()
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  labels:
    app: web
spec:
  type: LoadBalancer
  loadBalancerClass: director.example/lb
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

// One multi-threaded runtime: the double serves while kubectl blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_service_lifecycle() {
    if !have_kubectl() {
        return;
    }
    let double = Double::start(Options::default()).await.unwrap();

    let created = kubectl_stdin(&double, &["create", "-f", "-"], Some(SERVICE));
    assert!(created.contains("service/web created"), "{created}");
    let svc = get_json(&double, &["get", "svc", "web"]);
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["loadBalancerClass"], "director.example/lb");
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port));

    // `get -w` in the background sees a change.
    let mut watch = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(double.kubeconfig())
        .args([
            "get",
            "svc",
            "web",
            "-w",
            "-o",
            "jsonpath={.metadata.labels.stage}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });

    kubectl(
        &double,
        &[
            "patch",
            "svc",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
        ],
    );
    kubectl(&double, &["label", "svc", "web", "stage=blue"]);
    let mut seen = false;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(10)) {
        if line.trim() == "blue" {
            seen = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen, "kubectl get -w never showed the new label");

    kubectl(
        &double,
        &[
            "patch",
            "svc",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"10.10.0.240"}]}}}"#,
        ],
    );
    // Server-side printing: the Table columns kubectl shows.
    let printed = kubectl(&double, &["get", "svc", "web"]);
    assert!(printed.contains("EXTERNAL-IP"), "{printed}");
    assert!(printed.contains("10.10.0.240"), "{printed}");
    assert!(
        printed.contains(&format!("80:{node_port}/TCP")),
        "{printed}"
    );
    kubectl(
        &double,
        &["annotate", "svc", "web", "director.example/owner=node-1"],
    );
    let svc = get_json(&double, &["get", "svc", "web"]);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    assert!(svc["spec"]["healthCheckNodePort"].as_u64().is_some());
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"],
        "10.10.0.240"
    );
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    assert_eq!(svc["metadata"]["labels"]["stage"], "blue");
    assert_eq!(
        svc["metadata"]["annotations"]["director.example/owner"],
        "node-1"
    );

    // An event written through the API shows in `describe`.
    double
        .create(json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "type": "Normal",
            "reason": "EnsuredLoadBalancer",
            "action": "Ensure",
            "note": "VIP 10.10.0.240 announced by node-1",
            "reportingController": "director.example/lb",
            "reportingInstance": "node-1",
            "regarding": {
                "apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "default",
                "uid": svc["metadata"]["uid"]
            }
        }))
        .unwrap();
    let described = kubectl(&double, &["describe", "svc", "web"]);
    assert!(
        described.contains("LoadBalancer Ingress:     10.10.0.240"),
        "{described}"
    );
    assert!(described.contains("EnsuredLoadBalancer"), "{described}");
    assert!(
        described.contains("VIP 10.10.0.240 announced by node-1"),
        "{described}"
    );

    let deleted = kubectl(&double, &["delete", "svc", "web"]);
    assert!(deleted.contains("service \"web\" deleted"), "{deleted}");
    let left = get_json(&double, &["get", "svc"]);
    assert_eq!(left["items"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_nodes_and_client_side_apply() {
    if !have_kubectl() {
        return;
    }
    let double = Double::start(Options::default()).await.unwrap();
    double
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}}}))
        .unwrap();
    let nodes = kubectl(&double, &["get", "nodes"]);
    assert!(nodes.contains("node-1"), "{nodes}");
    let named = kubectl(
        &double,
        &[
            "get",
            "no",
            "-l",
            "kubernetes.io/hostname=node-1",
            "-o",
            "name",
        ],
    );
    assert_eq!(named.trim(), "node/node-1");

    let applied = kubectl_stdin(&double, &["apply", "-f", "-"], Some(SERVICE));
    assert!(applied.contains("service/web created"), "{applied}");
    let changed = SERVICE.replace("targetPort: 8080", "targetPort: 9090");
    let applied = kubectl_stdin(&double, &["apply", "-f", "-"], Some(&changed));
    assert!(applied.contains("service/web configured"), "{applied}");
    let svc = get_json(&double, &["get", "svc", "web"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9090);
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1);
    let unchanged = kubectl_stdin(&double, &["apply", "-f", "-"], Some(&changed));
    assert!(unchanged.contains("service/web unchanged"), "{unchanged}");
    let yaml = kubectl(&double, &["get", "svc", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );
}
