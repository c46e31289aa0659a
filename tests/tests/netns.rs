//! Lab tests on the host kernel: namespaces, the bridged LAN, the NodePort
//! servers. They need root; `cargo xtask test` runs them (`--ignored`).

use lab::scenario::http_tally;
use lab::{Host, Lab, LabEnv, LabError, LabGuard, LabSpec};

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn hosts_reach_each_other_over_v4_and_v6() {
    let lab = LabGuard::up(
        LabSpec::new(3, 2)
            .with_prefix("t-reach-")
            .with_witness(true),
        env(),
    )
    .expect("lab up");
    for to in [
        Host::director(1),
        Host::director(3),
        Host::witness(),
        Host::node(2),
    ] {
        lab.exec(
            "client",
            &["ping", "-c", "1", "-W", "2", &to.ipv4().to_string()],
        )
        .unwrap_or_else(|e| panic!("client -> {to} over IPv4: {e}"));
        lab.exec(
            "client",
            &["ping", "-6", "-c", "1", "-W", "2", &to.ipv6().to_string()],
        )
        .unwrap_or_else(|e| panic!("client -> {to} over IPv6: {e}"));
    }
    // The neighbour entry carries the documented MAC.
    let neigh = lab
        .exec("client", &["ip", "neigh", "show", "10.10.0.11"])
        .unwrap();
    assert!(neigh.contains(&Host::director(1).mac_string()), "{neigh}");
    lab.down().expect("lab down");
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn node_servers_answer_http_tcp_and_udp_with_their_name() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("t-srv-"), env()).expect("lab up");
    for node in [Host::node(1), Host::node(2)] {
        let tally = http_tally(&lab, "client", &format!("{}:30080", node.ipv4()), 3).unwrap();
        assert_eq!(tally.from(&node.name()), 3, "{tally:?}");
        let tally6 = http_tally(&lab, "client", &format!("[{}]:30080", node.ipv6()), 2).unwrap();
        assert_eq!(tally6.from(&node.name()), 2, "{tally6:?}");
    }
    // Plain TCP: the banner is the node's name, then an echo.
    let out = lab
        .exec(
            "client",
            &["bash", "-c", "exec 3<>/dev/tcp/10.10.0.22/30081; read -r l <&3; echo $l; printf ping >&3; timeout 5 head -c 4 <&3"],
        )
        .unwrap();
    assert_eq!(out, "n2\nping");
    // UDP echo: "<name> <payload>".
    let out = lab
        .exec(
            "client",
            &[
                "bash",
                "-c",
                "exec 3<>/dev/udp/10.10.0.21/30080; printf hello >&3; timeout 5 head -c 8 <&3",
            ],
        )
        .unwrap();
    assert_eq!(out, "n1 hello");
    lab.down().expect("lab down");
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn a_second_lab_with_the_same_prefix_is_refused_and_the_first_survives() {
    let lab = LabGuard::up(LabSpec::new(1, 1).with_prefix("t-twice-"), env()).expect("lab up");
    match Lab::up(LabSpec::new(1, 1).with_prefix("t-twice-"), env()) {
        Err(LabError::AlreadyUp { .. }) => {}
        other => panic!("expected AlreadyUp, got {other:?}"),
    }
    let tally = http_tally(&lab, "client", "10.10.0.21:30080", 1).unwrap();
    assert_eq!(tally.from("n1"), 1);
    // A namespace of the same name made by someone else also blocks it.
    lab::lab::run(&["ip", "netns", "add", "t-other-client"]).unwrap();
    let refused = Lab::up(LabSpec::new(1, 1).with_prefix("t-other-"), env());
    lab::lab::run(&["ip", "netns", "delete", "t-other-client"]).unwrap();
    assert!(
        matches!(refused, Err(LabError::AlreadyUp { .. })),
        "{refused:?}"
    );
    assert!(
        !netns_exists("t-other-lan"),
        "a refused lab must create nothing"
    );
    lab.down().expect("lab down");
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn the_guard_tears_everything_down_when_a_test_panics() {
    let result = std::panic::catch_unwind(|| {
        let _lab = LabGuard::up(LabSpec::new(2, 2).with_prefix("t-panic-"), env()).expect("lab up");
        assert!(netns_exists("t-panic-d2"));
        panic!("a failing test");
    });
    assert!(result.is_err());
    for ns in [
        "t-panic-d1",
        "t-panic-d2",
        "t-panic-n1",
        "t-panic-n2",
        "t-panic-client",
        "t-panic-lan",
    ] {
        assert!(!netns_exists(ns), "{ns} was left behind");
    }
    // Its node servers were stopped too.
    let state = env().state_dir.join("t-panic-.json");
    assert!(!state.exists(), "{} was left behind", state.display());
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn down_stops_the_node_servers_it_started() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("t-pids-"), env()).expect("lab up");
    let pids: Vec<i32> = lab
        .status()
        .iter()
        .flat_map(|h| h.processes.clone())
        .filter_map(|p| p.split("pid ").nth(1)?.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    lab.down().expect("lab down");
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "labnet", "labnet pid {pid} still runs");
    }
}

/// The owner watch (lab::watch) can see two owners: keepalived, a real VRRP
/// peer, holds the VIP on both routers once the master's adverts stop
/// reaching the backup (a one-way partition). The watch must report it, from
/// the routes and from the ARP answers the client gets; otherwise its "no two
/// owners" verdict on director would mean nothing.
#[test]
#[ignore = "needs root, network namespaces and keepalived: run by `cargo xtask test`"]
fn the_owner_watch_sees_keepalived_split_brain() {
    use lab::configs::keepalived_config;
    use lab::scenario::wait_until;
    use lab::watch::OwnerWatch;
    use std::time::Duration;
    let mut lab = LabGuard::up(LabSpec::new(2, 1).with_prefix("t-split-"), env()).expect("lab up");
    let vip = lab::topology::vip_v4(0).unwrap();
    let holds = |lab: &Lab, host: &str| {
        lab.exec(host, &["ip", "-o", "addr", "show", "dev", "eth0"])
            .map(|s| s.contains(&format!(" {vip}/32 ")))
            .unwrap_or(false)
    };
    for i in 1..=2 {
        let h = Host::director(i);
        lab.start_keepalived(&h, &keepalived_config(&h, true))
            .expect("starting keepalived");
    }
    wait_until("d1 to be the VRRP master", Duration::from_secs(30), || {
        (holds(&lab, "d1") && !holds(&lab, "d2")).then_some(())
    })
    .unwrap();
    let names = vec!["d1".to_string(), "d2".to_string()];
    let watch = OwnerWatch::start(&lab, vip.into(), &names, 10).expect("watch");
    std::thread::sleep(Duration::from_millis(500));
    lab.partition("d1", "d2", true).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    lab.heal().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let seen = watch.stop();
    let summary = seen.summary();
    assert!(
        seen.two_holders_ms() > 1000.0,
        "the route samplers missed two holders: {summary}"
    );
    assert!(
        !seen.double_answers().is_empty(),
        "the ARP prober missed two answering MACs: {summary}"
    );
    assert_eq!(
        seen.answering_macs(),
        [
            Host::director(1).mac_string(),
            Host::director(2).mac_string()
        ]
        .into(),
        "{summary}"
    );
    lab.down().expect("lab down");
}

/// The daemon on the host kernel (no IPVS needed for this part): three
/// `director run` elect an owner who answers ARP for the VIP; its metrics
/// endpoint says so; `director drain` moves the VIP and the metrics follow.
#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn the_daemon_serves_metrics_and_drains_on_the_host_kernel() {
    use lab::scenario::{agreed_owner, wait_until};
    use std::time::Duration;
    let mut env = env();
    let director = lab::lab::workspace_binary("director").expect("the director binary");
    env.director = Some(director.clone());
    let lab = LabGuard::up(LabSpec::new(3, 1).with_prefix("t-met-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let vip: std::net::IpAddr = "10.10.0.200".parse().unwrap();
    let (owner, _) = wait_until("an agreed owner", Duration::from_secs(60), || {
        agreed_owner(&lab, &all, vip)
    })
    .unwrap();
    let owner_host = Host::parse(&owner).unwrap();
    let labnet = env!("CARGO_BIN_EXE_labnet");
    let metrics = |h: &Host| {
        lab.exec(
            "client",
            &[labnet, "fetch", &format!("{}:9469", h.ipv4()), "/metrics"],
        )
        .unwrap_or_default()
    };
    let held_line = "director_vip_held{vip=\"10.10.0.200\",service=\"static/web\"";
    wait_until("the owner's metrics", Duration::from_secs(30), || {
        let m = metrics(&owner_host);
        m.lines()
            .any(|l| l.starts_with(held_line) && l.ends_with(" 1"))
            .then_some(())
    })
    .unwrap();
    let m = metrics(&owner_host);
    assert!(m.contains("director_lease_held 1"), "{m}");
    assert!(m.contains("# TYPE director_leader gauge"), "{m}");

    let out = std::process::Command::new(&director)
        .args(["drain", "--timeout", "20", "--socket"])
        .arg(lab.admin_socket(&owner_host))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (next, _) = wait_until("a new owner", Duration::from_secs(30), || {
        agreed_owner(&lab, &all, vip).filter(|(o, _)| *o != owner)
    })
    .unwrap();
    let m = metrics(&owner_host);
    assert!(
        m.lines()
            .any(|l| l.starts_with(held_line) && l.ends_with(" 0")),
        "the drained director still holds: {m}"
    );
    assert!(
        m.contains(&format!("director_member_draining{{member=\"{owner}\"}} 1")),
        "{m}"
    );
    let next_host = Host::parse(&next).unwrap();
    wait_until("the new owner's metrics", Duration::from_secs(30), || {
        metrics(&next_host)
            .lines()
            .any(|l| l.starts_with(held_line) && l.ends_with(" 1"))
            .then_some(())
    })
    .unwrap();
    // `lab down` below sends SIGTERM: each director drains, then stops.
    lab.down().expect("lab down");
}

/// Fetches `URL` twice (no `Accept`: Prometheus' text format; then the
/// `Accept` Prometheus sends: OpenMetrics), parses each answer with the
/// Python `prometheus_client` parser for its format, and prints what they
/// found as JSON: per format the Content-Type and every family with its
/// type and samples.
const PARSE_METRICS: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics

def fetch(accept):
    headers = {"Accept": accept} if accept else {}
    with urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=5) as r:
        return r.headers.get("Content-Type"), r.read().decode()

out = {}
for name, accept, parse in [
    ("prometheus", None, prometheus),
    ("openmetrics", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", openmetrics),
]:
    content_type, text = fetch(accept)
    families = {}
    for f in parse(text):
        families[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    out[name] = {"content_type": content_type, "families": families}
print(json.dumps(out))
"#;

/// Debian's python3 (with python3-prometheus-client), else the first on PATH.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The families docs/metrics.md lists, each with its type and where it
/// appears (`every director`, `data directors`, `with kubernetes:`).
fn documented_metrics() -> Vec<(String, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`director_")?
                .strip_suffix('`')?;
            Some((
                format!("director_{name}"),
                cells.get(2)?.to_string(),
                cells.get(4)?.to_string(),
            ))
        })
        .collect()
}

/// The metrics endpoint of running directors (two data directors and a
/// witness, on the host kernel: no IPVS), scraped in both formats and
/// parsed with the Python prometheus_client's parsers: each answer parses,
/// both carry the same families, and those are exactly the ones
/// docs/metrics.md lists for that kind of director, with the documented
/// types.
#[test]
#[ignore = "needs root, network namespaces and python3-prometheus-client: run by `cargo xtask test`"]
fn the_metrics_endpoint_parses_and_carries_every_documented_family() {
    use lab::scenario::{agreed_owner, wait_until};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::time::Duration;
    let docs = documented_metrics();
    assert!(docs.len() > 30, "docs/metrics.md lists {docs:?}");
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(
        LabSpec::new(2, 1).with_prefix("t-prom-").with_witness(true),
        env,
    )
    .expect("lab up");
    let data: Vec<Host> = (1..=2).map(Host::director).collect();
    let vip: std::net::IpAddr = "10.10.0.200".parse().unwrap();
    let (owner, _) = wait_until("an agreed owner", Duration::from_secs(60), || {
        agreed_owner(&lab, &data, vip)
    })
    .unwrap();
    let scrape = |h: &Host| -> Value {
        let url = format!("http://{}:9469/metrics", h.ipv4());
        let out = lab
            .exec("client", &[python(), "-c", PARSE_METRICS, &url])
            .unwrap_or_else(|e| panic!("scraping and parsing {url}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    // A sample's value by family, sample name and labels.
    let value = |m: &Value, family: &str, sample: &str, labels: &[(&str, &str)]| {
        m["prometheus"]["families"][family]["samples"]
            .as_array()?
            .iter()
            .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k] == *v))?[2]
            .as_f64()
    };
    let mut sampled = BTreeMap::new();
    for host in [Host::director(1), Host::director(2), Host::witness()] {
        let witness = host == Host::witness();
        let m = scrape(&host);
        let name = host.name();
        assert_eq!(
            m["prometheus"]["content_type"], "text/plain; version=0.0.4; charset=utf-8",
            "{name}"
        );
        assert_eq!(
            m["openmetrics"]["content_type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{name}"
        );
        // The names queries use: a counter's samples end in `_total`,
        // which both parsers take off the family's name.
        let exposed = |format: &str| -> BTreeMap<String, String> {
            m[format]["families"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} {format}: {m}"))
                .iter()
                .map(|(family, f)| {
                    let kind = f["type"].as_str().unwrap_or_default().to_string();
                    let exposed = match kind.as_str() {
                        "counter" => format!("{family}_total"),
                        _ => family.clone(),
                    };
                    (exposed, kind)
                })
                .collect()
        };
        let prometheus = exposed("prometheus");
        assert_eq!(
            prometheus,
            exposed("openmetrics"),
            "{name}: the formats differ"
        );
        let wanted: BTreeMap<String, String> = docs
            .iter()
            .filter(|(_, _, on)| match on.as_str() {
                "every director" => true,
                "data directors" => !witness,
                _ => false,
            })
            .map(|(n, kind, _)| (n.clone(), kind.clone()))
            .collect();
        assert_eq!(
            prometheus, wanted,
            "{name}: the families exposed and those docs/metrics.md lists for it differ"
        );
        // A few values that must be there on any such group.
        let roles: f64 = ["leader", "follower", "candidate", "learner", "shutdown"]
            .iter()
            .filter_map(|r| {
                value(
                    &m,
                    "director_raft_role",
                    "director_raft_role",
                    &[("role", r)],
                )
            })
            .sum();
        assert_eq!(roles, 1.0, "{name}: one role at a time");
        // The binary allocates through jemalloc, which counts its heap.
        let heap = |family: &str| value(&m, family, family, &[]).unwrap_or_default();
        let (allocated, resident) = (
            heap("director_heap_allocated_bytes"),
            heap("director_heap_resident_bytes"),
        );
        assert!(
            allocated > 0.0 && resident >= allocated,
            "{name}: heap allocated {allocated}, resident {resident}"
        );
        assert!(
            value(
                &m,
                "director_raft_leader_id",
                "director_raft_leader_id",
                &[]
            )
            .is_some_and(|id| [1.0, 2.0, 9.0].contains(&id)),
            "{name}: {m}"
        );
        assert!(
            value(
                &m,
                "director_lease_renewals",
                "director_lease_renewals_total",
                &[("result", "granted")]
            )
            .is_some_and(|n| n > 0.0),
            "{name}: no renewal granted: {m}"
        );
        let held = value(
            &m,
            "director_vip_held",
            "director_vip_held",
            &[("vip", "10.10.0.200")],
        );
        assert!(held.is_some(), "{name}: no sample for the VIP: {m}");
        if !witness {
            for r in ["sysctl", "nft", "routes"] {
                assert!(
                    value(
                        &m,
                        "director_reconcile_pass_duration_seconds",
                        "director_reconcile_pass_duration_seconds_count",
                        &[("reconciler", r)]
                    )
                    .is_some_and(|n| n > 0.0),
                    "{name}: no pass of {r}: {m}"
                );
            }
        }
        sampled.insert(name, held);
    }
    // The owner holds the VIP (its lease came with the renewals above), and
    // nobody else does.
    wait_until(
        "the owner's metrics to say it holds",
        Duration::from_secs(30),
        || {
            let m = scrape(&Host::parse(&owner).unwrap());
            (value(
                &m,
                "director_vip_held",
                "director_vip_held",
                &[("vip", "10.10.0.200")],
            ) == Some(1.0))
            .then_some(())
        },
    )
    .unwrap();
    for (name, held) in &sampled {
        if *name != owner {
            assert_eq!(*held, Some(0.0), "{name} is not the owner: {sampled:?}");
        }
    }
    lab.down().expect("lab down");
}

/// When the owner's link comes back, it announces its VIPs again: the client's
/// neighbour entry, pointed elsewhere while the link was down, is corrected
/// by the owner's gratuitous ARP (the link is down for less than a lease, so
/// the VIP does not move).
#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn the_owner_announces_again_when_its_link_comes_back() {
    use lab::scenario::{agreed_owner, wait_until};
    use std::time::Duration;
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(LabSpec::new(3, 1).with_prefix("t-link-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let vip: std::net::IpAddr = "10.10.0.200".parse().unwrap();
    let (owner, epoch) = wait_until("an agreed owner", Duration::from_secs(60), || {
        agreed_owner(&lab, &all, vip)
    })
    .unwrap();
    let owner_mac = Host::parse(&owner).unwrap().mac_string();
    let neigh = || {
        lab.exec("client", &["ip", "neigh", "show", "10.10.0.200"])
            .unwrap_or_default()
    };
    lab.set_link(&owner, false).unwrap();
    // Somebody else's MAC, as a stale entry the client would keep using.
    lab.exec(
        "client",
        &[
            "ip",
            "neigh",
            "replace",
            "10.10.0.200",
            "lladdr",
            "02:10:00:00:00:99",
            "dev",
            "eth0",
            "nud",
            "stale",
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.set_link(&owner, true).unwrap();
    wait_until("the owner's announcement", Duration::from_secs(10), || {
        neigh().contains(&owner_mac).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", neigh()));
    let (still, epoch2) = agreed_owner(&lab, &all, vip).unwrap();
    assert_eq!(
        (still, epoch2),
        (owner, epoch),
        "a short link flap moved the VIP"
    );
    lab.down().expect("lab down");
}

/// A witness takes part in consensus only: run under strace from its first
/// instruction, it opens no generic-netlink socket (IPVS is a
/// generic-netlink family), runs neither modprobe nor nft, and changes no
/// route; it still answers `director status` and sees the leader. This
/// host's kernel has no IPVS, so a witness that tried would also log it.
#[test]
#[ignore = "needs root, network namespaces and strace: run by `cargo xtask test`"]
fn a_witness_never_touches_ipvs_routes_or_nftables() {
    use lab::scenario::wait_until;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;
    let mut env = env();
    let director = lab::lab::workspace_binary("director").expect("the director binary");
    env.director = Some(director.clone());
    let mut lab = LabGuard::up(
        LabSpec::new(2, 1).with_prefix("t-wit-").with_witness(true),
        env,
    )
    .expect("lab up");
    let w = Host::witness();
    lab.terminate(&w.name(), Duration::from_secs(5))
        .expect("stopping the witness");
    let trace = lab.director_log(&w).with_extension("strace");
    let _ = std::fs::remove_file(&trace);
    let config = lab.director_config_path(&w);
    let mut cmd = lab
        .command(&w.name(), "strace")
        .expect("strace in the witness");
    cmd.args(["-f", "-qq", "-e", "trace=socket,execve", "-o"])
        .arg(&trace)
        .arg(&director)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("strace director run");
    let status = wait_until("the witness's status", Duration::from_secs(60), || {
        let s = lab::scenario::director_status(&lab, &w)?;
        s["cluster"]["leader"].is_u64().then_some(s)
    });
    // Stop it the way systemd does, and let strace write everything.
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().expect("strace ends");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let calls = std::fs::read_to_string(&trace).expect("the strace output");
    let status = status.expect("the witness answers status and knows the leader");
    assert_eq!(status["director"]["name"], "w1", "{status}");
    assert!(
        status["services"].as_array().is_some_and(|s| s.is_empty())
            || status["services"]
                .as_array()
                .is_some_and(|s| s.iter().all(|x| x["programmed"] == false)),
        "a witness programs nothing: {status}"
    );
    assert!(calls.contains("execve("), "strace saw the start: {calls}");
    assert!(
        !calls.contains("NETLINK_GENERIC"),
        "the witness opened a generic-netlink (IPVS) socket:\n{calls}"
    );
    assert!(
        !calls.contains("NETLINK_ROUTE"),
        "the witness opened an rtnetlink (routes) socket:\n{calls}"
    );
    for tool in ["modprobe", "/nft", "\"nft\""] {
        assert!(
            !calls
                .lines()
                .any(|l| l.contains("execve(") && l.contains(tool)),
            "the witness ran {tool}:\n{calls}"
        );
    }
    assert!(
        !log.contains("IPVS unavailable"),
        "the witness looked for IPVS: {log}"
    );
    let _ = std::fs::remove_file(&trace);
    lab.down().expect("lab down");
}
