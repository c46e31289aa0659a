//! The Kubernetes benchmark (`cargo xtask bench kube`): three directors in
//! the lab with its API server (`lab up --kube`), a pool of 10.20.0.0/16,
//! and N LoadBalancer Services created at once through the API (32 creates
//! in flight, kube-rs from the `api` host). It measures and reports; it
//! asserts nothing about speed:
//!
//! - per Service, from the moment its create returned: the time until its
//!   `status.loadBalancer.ingress` shows an address (a watch, from the same
//!   host) and the time until every director's kernel holds its VIP:80
//!   (each director's IPVS table dumped over netlink from inside its
//!   namespace, every 100 ms): p50, p99 and max;
//! - the API requests made per Service during the phase (the server's own
//!   request counters, the benchmark's creates and watch excluded);
//! - then the directors' memory (VmRSS, VmHWM) once they hold every
//!   Service, for each count of KUBE_SERVICES.
//!
//! Environment: KUBE_SERVICES (comma-separated, default "1000,10000"),
//! KUBE_TIMEOUT_S (per count, 900), KUBE_OUT (a JSON file for the results),
//! KUBE_REVISION (the source revision, for the record).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use ipvs_sys::ServiceKey;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use lab::configs::{director_config_with_services, kubernetes_section, TimingProfile};
use lab::measure::{env_u64, status_kib, NetnsIpvs};
use lab::{Host, Lab, LabEnv, LabGuard, LabSpec};
use serde_json::{json, Value};

const POOL: &str = "10.20.0.0/16";
const GOAL_P99_S: f64 = 5.0;

fn directors() -> Vec<Host> {
    (1..=3).map(Host::director).collect()
}

/// NodePorts a cluster has (30000-32767): beyond this many Services the
/// benchmark's Services use direct routing without NodePorts.
const NODE_PORTS: u32 = 2000;

/// The Service `bench-I`: LoadBalancer of director's class, port 80; the
/// server allocates its NodePort (nat), or, when `direct`, none
/// (`allocateLoadBalancerNodePorts: false`, `director.io/forwarding: dr`).
fn service(i: u32, direct: bool) -> Service {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("bench-{i}"), "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "director.io/ipvs",
            "selector": {"app": format!("bench-{i}")},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]
        }
    });
    if direct {
        v["metadata"]["annotations"] = json!({"director.io/forwarding": "dr"});
        v["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
    }
    serde_json::from_value(v).unwrap()
}

/// Runs `f` on a thread inside the network namespace of the lab host `api`,
/// with a tokio runtime and a kube client from the lab's kubeconfig.
fn in_api_netns<T: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce(tokio::runtime::Runtime, kube::Client) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = format!("/run/netns/{}", lab.spec().netns(&Host::api()));
    let kubeconfig = lab.kubeconfig_path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(cfg).unwrap()
        });
        f(rt, client)
    })
}

/// The server's request counters (`/_double/stats`).
fn stats(lab: &Lab) -> BTreeMap<String, u64> {
    let h = in_api_netns(lab, |rt, client| {
        rt.block_on(async {
            let req = http::Request::get("/_double/stats")
                .body(Vec::new())
                .unwrap();
            client.request_text(req).await
        })
    });
    let text = h.join().unwrap().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "count": v.len(),
        "p50_s": percentile(&v, 0.5),
        "p99_s": percentile(&v, 0.99),
        "max_s": v.last(),
    })
}

fn pid_of(lab: &Lab, h: &Host) -> i32 {
    lab.director_pid(&h.name()).expect("a director pid")
}

fn memory(lab: &Lab) -> Value {
    let mut out = serde_json::Map::new();
    for h in directors() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(lab, &h)))
            .unwrap_or_default();
        out.insert(
            h.name(),
            json!({
                "rss_mib": status_kib(&status, "VmRSS").map(|k| k as f64 / 1024.0),
                "hwm_mib": status_kib(&status, "VmHWM").map(|k| k as f64 / 1024.0),
            }),
        );
    }
    Value::Object(out)
}

fn run_one(env: &LabEnv, director: &std::path::Path, n: u32) -> Value {
    let limit = Duration::from_secs(env_u64("KUBE_TIMEOUT_S", 900));
    let spec = LabSpec::new(3, 2)
        .with_prefix("bk-")
        .with_timing(TimingProfile::Lab)
        .with_kube(true);
    let mut lab = LabGuard::up(spec, env.clone()).expect("lab up");
    let pools = format!("  - name: bench\n    addresses: [\"{POOL}\"]\n");
    let configs: Vec<(Host, String)> = directors()
        .into_iter()
        .map(|h| {
            let dir = lab.env().state_dir.join(format!("bk-{}", h.name()));
            let mut c = director_config_with_services(lab.spec(), &h, &dir, &pools, "")
                .replace("services:\n", "services: []\n");
            c.push_str(&kubernetes_section(&lab.kubeconfig_path()));
            (h, c)
        })
        .collect();
    // Beyond what one client creates in reasonable time through the
    // server, the Services are in the server's store before the directors
    // start: they list them at once (the memory phase).
    let preload = n > NODE_PORTS;
    if preload {
        let objects: Vec<Value> = (0..n)
            .map(|i| serde_json::to_value(service(i, true)).unwrap())
            .collect();
        lab.restart_api_with(&objects)
            .expect("the API server with the Services");
    }
    let started = Instant::now();
    lab.start_directors_with_configs(director, &configs, Duration::from_secs(120))
        .expect("directors start");
    if preload {
        return preloaded(&mut lab, n, started, limit);
    }
    // Every director sees the API before the clock starts.
    let synced = Instant::now();
    while !directors().iter().all(|h| {
        lab::scenario::director_status(&lab, h)
            .is_some_and(|s| s["kubernetes"]["synced"] == true && !s["cluster"]["leader"].is_null())
    }) {
        assert!(
            synced.elapsed() < Duration::from_secs(120),
            "directors never synced"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = stats(&lab);

    // The watch of statuses and the creates, on the api host.
    let created: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let patched: Arc<Mutex<BTreeMap<String, (Instant, IpAddr)>>> = Arc::default();
    let (c2, p2) = (created.clone(), patched.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let t0 = Instant::now();
    let client_thread = in_api_netns(&lab, move |rt, client| {
        rt.block_on(async move {
            let api: Api<Service> = Api::namespaced(client, "default");
            let watch = {
                let api = api.clone();
                let p2 = p2.clone();
                tokio::spawn(async move {
                    let mut s =
                        std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
                    while let Ok(Some(ev)) = s.try_next().await {
                        if let watcher::Event::Apply(svc) | watcher::Event::InitApply(svc) = ev {
                            let ip = svc
                                .status
                                .as_ref()
                                .and_then(|s| s.load_balancer.as_ref())
                                .and_then(|l| l.ingress.as_ref())
                                .and_then(|i| i.first())
                                .and_then(|i| i.ip.as_ref())
                                .and_then(|ip| ip.parse().ok());
                            if let (Some(ip), Some(name)) = (ip, svc.metadata.name) {
                                p2.lock()
                                    .unwrap()
                                    .entry(name)
                                    .or_insert((Instant::now(), ip));
                            }
                        }
                    }
                })
            };
            futures_util::stream::iter(0..n)
                .map(|i| {
                    let api = api.clone();
                    let c2 = c2.clone();
                    async move {
                        let svc = service(i, n > NODE_PORTS);
                        match api.create(&PostParams::default(), &svc).await {
                            Ok(_) => {
                                c2.lock()
                                    .unwrap()
                                    .insert(format!("bench-{i}"), Instant::now());
                            }
                            Err(e) => eprintln!("create bench-{i}: {e}"),
                        }
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
            while !d2.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            watch.abort();
        })
    });

    // Every director's kernel, polled.
    let kernels: Vec<NetnsIpvs> = directors()
        .iter()
        .map(|h| NetnsIpvs::open(pid_of(&lab, h)).unwrap())
        .collect();
    // First time each VIP:80 was in all three kernels.
    let mut seen: Vec<BTreeMap<IpAddr, Instant>> = vec![BTreeMap::new(); 3];
    let mut last_report = Instant::now();
    let mut problems = Vec::new();
    loop {
        for (k, s) in kernels.iter().zip(seen.iter_mut()) {
            if let Ok(keys) = k.service_keys() {
                let now = Instant::now();
                for key in keys {
                    if let ServiceKey::Addr { addr, port: 80, .. } = key {
                        s.entry(addr).or_insert(now);
                    }
                }
            }
        }
        let patched_n = patched.lock().unwrap().len();
        let everywhere = seen.iter().map(|s| s.len()).min().unwrap_or(0);
        if patched_n >= n as usize && everywhere >= n as usize {
            break;
        }
        if t0.elapsed() > limit {
            problems.push(format!(
                "after {} s: {patched_n} statuses, {everywhere} VIPs in every kernel",
                limit.as_secs()
            ));
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "[{n}] {:.0} s: {} created, {patched_n} statuses, kernels {:?}",
                t0.elapsed().as_secs_f64(),
                created.lock().unwrap().len(),
                seen.iter().map(|s| s.len()).collect::<Vec<_>>()
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_s = t0.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    client_thread.join().unwrap();
    let after = stats(&lab);
    let created = created.lock().unwrap().clone();
    let patched = patched.lock().unwrap().clone();
    let mut to_status = Vec::new();
    let mut to_kernels = Vec::new();
    for (name, at) in &created {
        let Some((p, ip)) = patched.get(name) else {
            continue;
        };
        to_status.push(p.saturating_duration_since(*at).as_secs_f64());
        let everywhere = seen
            .iter()
            .map(|s| s.get(ip).copied())
            .collect::<Option<Vec<_>>>();
        if let Some(times) = everywhere {
            if let Some(last) = times.into_iter().max() {
                to_kernels.push(last.saturating_duration_since(*at).as_secs_f64());
            }
        }
    }
    // Requests the directors made (the benchmark's creates and its one
    // watch are taken out).
    let mut delta: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &after {
        let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
        if d > 0 {
            delta.insert(k.clone(), d);
        }
    }
    if let Some(c) = delta.get_mut("create services") {
        *c = c.saturating_sub(created.len() as u64);
    }
    let stats_after = delta.clone();
    let directors_total: u64 = delta
        .iter()
        .filter(|(k, _)| !k.starts_with("get _double") && !k.contains("stats"))
        .map(|(_, v)| *v)
        .sum::<u64>()
        .saturating_sub(2);
    let writes: u64 = delta
        .iter()
        .filter(|(k, _)| {
            k.starts_with("patch") || k.starts_with("create") || k.starts_with("update")
        })
        .map(|(_, v)| *v)
        .sum();
    // Memory once every Service is held (and a moment to settle).
    std::thread::sleep(Duration::from_secs(5));
    let mem = memory(&lab);
    let result = json!({
        "services": n,
        "forwarding": if n > NODE_PORTS { "dr" } else { "nat" },
        "created": created.len(),
        "all_done_s": all_s,
        "create_to_status": summary(to_status),
        "create_to_every_kernel": summary(to_kernels),
        "api_requests": stats_after,
        "api_requests_per_service": directors_total as f64 / f64::from(n.max(1)),
        "api_writes_per_service": writes as f64 / f64::from(n.max(1)),
        "memory": mem,
        "problems": problems,
    });
    println!("[{n}] {}", serde_json::to_string_pretty(&result).unwrap());
    drop(kernels);
    lab.down().expect("lab down");
    result
}

/// The memory phase: N Services already in the server when the directors
/// start; the time until every director's kernel holds them all, and then
/// the directors' memory.
fn preloaded(lab: &mut LabGuard, n: u32, started: Instant, limit: Duration) -> Value {
    let kernels: Vec<NetnsIpvs> = directors()
        .iter()
        .map(|h| NetnsIpvs::open(pid_of(lab, h)).unwrap())
        .collect();
    let mut problems = Vec::new();
    let mut last_report = Instant::now();
    let programmed_s = loop {
        let counts: Vec<usize> = kernels
            .iter()
            .map(|k| k.service_count().unwrap_or(0))
            .collect();
        if counts.iter().all(|c| *c >= n as usize) {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            problems.push(format!(
                "after {} s the kernels held {counts:?}",
                limit.as_secs()
            ));
            break None;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "[{n}] {:.0} s: kernels {counts:?}",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(5));
    let mem = memory(lab);
    let result = json!({
        "services": n,
        "forwarding": "dr",
        "preloaded": true,
        "start_to_every_kernel_s": programmed_s,
        "memory": mem,
        "problems": problems,
    });
    println!("[{n}] {}", serde_json::to_string_pretty(&result).unwrap());
    drop(kernels);
    result
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench kube` (in the VM)"]
fn kube_bench() {
    let counts: Vec<u32> = std::env::var("KUBE_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let director: PathBuf = lab::lab::workspace_binary("director").expect("the director binary");
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env.kube_double = lab::lab::workspace_binary("kube-double").expect("the kube-double binary");
    let mut runs = Vec::new();
    for n in counts {
        runs.push(run_one(&env, &director, n));
    }
    println!("\n| services | create -> status p50 / p99 / max (s) | create -> every kernel p50 / p99 / max (s) | API requests / Service | writes / Service | RSS d1 / d2 / d3 (MiB) |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        if r["preloaded"] == true {
            let m = &r["memory"];
            println!(
                "| {} (in the server before the directors start) | - | start -> every kernel {} s | - | - | {} / {} / {} |",
                r["services"],
                f(&r["start_to_every_kernel_s"]),
                f(&m["d1"]["rss_mib"]),
                f(&m["d2"]["rss_mib"]),
                f(&m["d3"]["rss_mib"]),
            );
            continue;
        }
        let s = &r["create_to_status"];
        let k = &r["create_to_every_kernel"];
        let m = &r["memory"];
        println!(
            "| {} | {} / {} / {} | {} / {} / {} | {} | {} | {} / {} / {} |",
            r["services"],
            f(&s["p50_s"]),
            f(&s["p99_s"]),
            f(&s["max_s"]),
            f(&k["p50_s"]),
            f(&k["p99_s"]),
            f(&k["max_s"]),
            f(&r["api_requests_per_service"]),
            f(&r["api_writes_per_service"]),
            f(&m["d1"]["rss_mib"]),
            f(&m["d2"]["rss_mib"]),
            f(&m["d3"]["rss_mib"]),
        );
    }
    println!("goal: create -> status and every kernel p99 at most {GOAL_P99_S} s (1,000 Services)");
    if let Ok(path) = std::env::var("KUBE_OUT") {
        let doc = json!({
            "revision": std::env::var("KUBE_REVISION").unwrap_or_default(),
            "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
