use super::*;
use std::collections::BTreeSet;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The families exposed before prometheus-client rendered them. Scripts
/// and alerts use these names and labels: they never change.
const KEPT: [&str; 25] = [
    "director_leader",
    "director_raft_term",
    "director_raft_applied_index",
    "director_lease_held",
    "director_member_last_contact_seconds",
    "director_member_draining",
    "director_vip_held",
    "director_vip_epoch",
    "director_backend_active_connections",
    "director_backend_inactive_connections",
    "director_backend_weight",
    "director_backend_up",
    "director_health_targets",
    "director_kubernetes_api_reachable",
    "director_kubernetes_api_state_seconds",
    "director_kubernetes_services",
    "director_reconcile_operations_total",
    "director_reconcile_errors_total",
    "director_reconcile_resyncs_total",
    "director_reconcile_drift_repairs_total",
    "director_reconcile_last_pass_seconds",
    "director_announcements_sent_total",
    "director_health_checks_total",
    "director_health_transitions_total",
    "director_health_check_duration_seconds",
];

/// The families added with them.
const ADDED: [&str; 16] = [
    "director_raft_role",
    "director_raft_leader_id",
    "director_lease_grants_total",
    "director_lease_renewals_total",
    "director_lease_lapses_total",
    "director_vip_owner_changes_total",
    "director_service_connections_total",
    "director_service_packets_total",
    "director_service_bytes_total",
    "director_backend_connections_total",
    "director_backend_packets_total",
    "director_backend_bytes_total",
    "director_reconcile_pass_duration_seconds",
    "director_sync_daemon_running",
    "director_heap_allocated_bytes",
    "director_heap_resident_bytes",
];

/// A status document with something in every part.
fn full_status() -> Status {
    serde_json::from_value(json!({
        "director": {"id": 2, "name": "d2"},
        "cluster": {"leader": 2, "term": 7, "role": "leader", "applied_index": 42, "members": [
            {"name": "d1", "last_contact_ms": 120, "draining": false},
            {"name": "d2", "last_contact_ms": null, "draining": true},
        ]},
        "lease": {"held": true},
        "vips": [{"vip": "10.10.0.200", "service": "static/web", "owner_name": "d2", "epoch": 3, "held_here": true}],
        "services": [{"service": "TCP 10.10.0.200:80", "programmed": true,
            "traffic": {"connections": 10, "packets_in": 100, "packets_out": 90, "bytes_in": 5000, "bytes_out": 70000},
            "backends": [
                {"address": "10.10.0.21", "port": 30080, "weight": 1, "active": 5, "inactive": 1,
                 "traffic": {"connections": 6, "packets_in": 60, "packets_out": 50, "bytes_in": 3000, "bytes_out": 40000},
                 "health_check": "http 10.10.0.21:30080/", "health": "up"},
                {"address": "10.10.0.22", "port": 30080, "weight": 0, "active": 0, "inactive": 2,
                 "health_check": "http 10.10.0.22:30080/", "health": "down"},
                {"address": "10.10.0.23", "port": 30080, "weight": 1,
                 "health_check": "http 10.10.0.23:30080/", "health": "unknown"},
            ]}],
        "reconcilers": [{"name": "ipvs", "operations": 9, "last_pass_us": 1500}],
        "health": {"targets": 3, "up": 1, "down": 1, "unknown": 1},
        "kubernetes": {"api_reachable": true, "api_since_ms_ago": 2500, "services": [{"service": "default/web"}]},
    }))
    .unwrap()
}

/// A snapshot with something in every family.
fn full() -> Snapshot {
    let passes = Histogram::new(crate::dataplane::driver::PASS_BUCKETS);
    passes.observe(0.0003);
    passes.observe(0.2);
    Snapshot {
        status: full_status(),
        leases: consensus::LeaseCounts {
            grants: 5,
            renewals_granted: 4,
            renewals_refused: 1,
            renewals_unanswered: 2,
            lapses: 1,
        },
        owner_changes: 3,
        passes: vec![("ipvs".into(), passes)],
        health: Some(HealthCounts {
            passed: 8,
            failed: 2,
            transitions: 1,
            buckets: vec![(0.001, 4), (0.01, 5), (f64::INFINITY, 1)],
            seconds: 0.25,
        }),
        heap: Some(crate::ops::memory::Heap {
            allocated: 40 << 20,
            resident: 52 << 20,
        }),
    }
}

/// (exposed name, type) of every family in a Prometheus-format text.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split(' ');
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The names of the families documented in docs/metrics.md, with their
/// type (the first column of its tables is the name, the second the type).
fn documented() -> Vec<(String, String)> {
    include_str!("../../../../docs/metrics.md")
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `director_")?.split('|');
            let name = format!("director_{}", cells.next()?.trim().strip_suffix('`')?);
            Some((name, cells.next()?.trim().to_string()))
        })
        .collect()
}

fn names(list: &[(String, String)]) -> BTreeSet<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn status_becomes_metrics() {
    let m = render(full(), Format::Prometheus).unwrap();
    for line in [
        "director_leader 1",
        "director_raft_term 7",
        "director_raft_role{role=\"leader\"} 1",
        "director_raft_role{role=\"follower\"} 0",
        "director_raft_leader_id 2",
        "director_member_last_contact_seconds{member=\"d1\"} 0.12",
        "director_member_draining{member=\"d2\"} 1",
        "director_vip_held{vip=\"10.10.0.200\",service=\"static/web\",owner=\"d2\"} 1",
        "director_vip_epoch{vip=\"10.10.0.200\"} 3",
        "director_vip_owner_changes_total 3",
        "director_lease_grants_total 5",
        "director_lease_renewals_total{result=\"unanswered\"} 2",
        "director_lease_lapses_total 1",
        "director_backend_active_connections{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.21:30080\"} 5",
        "director_backend_weight{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.22:30080\"} 0",
        "director_backend_up{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.22:30080\",check=\"http 10.10.0.22:30080/\"} 0",
        "director_backend_bytes_total{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.21:30080\",direction=\"out\"} 40000",
        "director_service_packets_total{service=\"TCP 10.10.0.200:80\",direction=\"in\"} 100",
        "director_service_connections_total{service=\"TCP 10.10.0.200:80\"} 10",
        "director_health_targets{state=\"down\"} 1",
        "director_reconcile_operations_total{reconciler=\"ipvs\"} 9",
        "director_reconcile_last_pass_seconds{reconciler=\"ipvs\"} 0.0015",
        "director_reconcile_pass_duration_seconds_bucket{reconciler=\"ipvs\",le=\"0.0005\"} 1",
        "director_reconcile_pass_duration_seconds_bucket{reconciler=\"ipvs\",le=\"+Inf\"} 2",
        "director_reconcile_pass_duration_seconds_count{reconciler=\"ipvs\"} 2",
        "director_health_check_duration_seconds_bucket{le=\"0.01\"} 9",
        "director_health_check_duration_seconds_bucket{le=\"+Inf\"} 10",
        "director_health_check_duration_seconds_sum 0.25",
        "director_health_check_duration_seconds_count 10",
        "director_kubernetes_api_state_seconds 2.5",
        "director_kubernetes_services 1",
        "director_heap_allocated_bytes 41943040",
        "director_heap_resident_bytes 54525952",
    ] {
        assert!(m.lines().any(|l| l == line), "no line {line:?} in\n{m}");
    }
    // Absent: a member the leader has no contact time for, the traffic
    // of a backend the kernel gave none for, the result of an unprobed
    // backend.
    for prefix in [
        "director_member_last_contact_seconds{member=\"d2\"}",
        "director_backend_connections_total{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.22:30080\"}",
        "director_backend_up{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.23:30080\"",
    ] {
        assert!(!m.contains(prefix), "{prefix} in\n{m}");
    }
    assert!(m.contains("# TYPE director_vip_epoch gauge\n"), "{m}");
    assert!(
        m.contains("# TYPE director_announcements_sent_total counter\n"),
        "{m}"
    );
}

/// The contract: every family exposed before keeps its name (prometheus-
/// client appends `_total` to counters itself, so a counter registered
/// with it would otherwise gain a second one), and docs/metrics.md lists
/// exactly what is exposed, with its type.
#[test]
fn every_family_keeps_its_name_and_docs_list_exactly_what_is_exposed() {
    let text = render(full(), Format::Prometheus).unwrap();
    let exposed = families(&text);
    let got = names(&exposed);
    let want: BTreeSet<&str> = KEPT.iter().chain(&ADDED).copied().collect();
    assert_eq!(got, want, "exposed families differ from the contract");
    assert_eq!(exposed.len(), got.len(), "a family is described twice");
    let docs = documented();
    assert_eq!(
        names(&docs),
        got,
        "docs/metrics.md and the exposed families differ"
    );
    for (name, kind) in &exposed {
        let doc = docs.iter().find(|(n, _)| n == name).map(|(_, k)| k);
        assert_eq!(doc, Some(kind), "the type of {name} in docs/metrics.md");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: counters, and only they, end in _total"
        );
    }
}

/// Every sample line belongs to the family described just before it.
#[test]
fn every_sample_follows_its_family() {
    let text = render(full(), Format::Prometheus).unwrap();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, k) = rest.split_once(' ').unwrap();
            current = Some((n.into(), k.into()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (family, kind) = current.as_ref().expect("a sample before any family");
        let name = line.split(['{', ' ']).next().unwrap();
        let ok = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family)),
            _ => name == family,
        };
        assert!(ok, "{line:?} under {family}");
    }
}

/// OpenMetrics (what Prometheus asks for): the same samples, counters
/// described without `_total` as that format wants, and the end marker.
#[test]
fn openmetrics_has_the_same_samples() {
    let prom = render(full(), Format::Prometheus).unwrap();
    let open = render(full(), Format::OpenMetrics).unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE director_lease_grants counter\n"),
        "{open}"
    );
    // Name and label set of each sample; OpenMetrics writes `le` first,
    // and bounds as floats (`1.0`). No label value here has a comma.
    let samples = |t: &str| -> BTreeSet<(String, BTreeSet<String>)> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let series = l.rsplit_once(' ')?.0.replace(".0\"", "\"");
                let (name, labels) = series.split_once('{').unwrap_or((&series, "}"));
                let labels = labels.strip_suffix('}')?.split(',');
                let labels = labels.filter(|x| !x.is_empty()).map(String::from);
                Some((name.to_string(), labels.collect()))
            })
            .collect()
    };
    assert_eq!(samples(&prom), samples(&open));
}

/// A witness's snapshot: no health families, and the Kubernetes ones only
/// with `kubernetes:`.
#[test]
fn families_that_need_a_part_are_left_out_without_it() {
    let mut s = full();
    s.health = None;
    s.status.health = None;
    s.status.kubernetes = None;
    s.status.cluster.leader = None;
    let text = render(s, Format::Prometheus).unwrap();
    let got = families(&text);
    for absent in [
        "director_health_targets",
        "director_health_checks_total",
        "director_health_transitions_total",
        "director_health_check_duration_seconds",
        "director_kubernetes_api_reachable",
        "director_kubernetes_services",
    ] {
        assert!(!names(&got).contains(absent), "{absent}:\n{text}");
    }
    // Described, without a sample while no leader is known.
    assert!(text.contains("# TYPE director_raft_leader_id gauge\n"));
    assert!(!text.contains("\ndirector_raft_leader_id "), "{text}");
}

#[test]
fn the_accept_header_chooses_the_format() {
    assert_eq!(Format::accepted(None), Format::Prometheus);
    assert_eq!(
        Format::accepted(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
        Format::Prometheus
    );
    // Prometheus' own header.
    assert_eq!(
        Format::accepted(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )),
        Format::OpenMetrics
    );
}

// The endpoint, over real sockets on loopback.

/// A stand-in for the daemon: the full snapshot.
#[derive(Debug, Clone)]
struct Fixed;

impl Scrape for Fixed {
    async fn scrape(&self, format: Format) -> Result<String, fmt::Error> {
        render(full(), format)
    }
}

/// Short limits, so that the tests see them act.
const TEST_LIMITS: Limits = Limits {
    header_timeout: Duration::from_millis(500),
    connection_deadline: Duration::from_secs(5),
    max_connections: 4,
};

struct Endpoint {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(listener, Fixed, limits, stopped));
    Endpoint { addr, stop, task }
}

/// Sends `request` on a new connection and reads the answer to its end;
/// fails after 2 s.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let talk = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // A server that refuses early may close before taking it all.
        let _ = s.write_all(request).await;
        let mut reply = Vec::new();
        // A reset after a refused request is an answer too.
        let _ = s.read_to_end(&mut reply).await;
        String::from_utf8_lossy(&reply).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(2), talk)
        .await
        .expect("an answer within 2 s")
}

async fn scrape(addr: SocketAddr) -> String {
    let reply = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: d\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    reply
}

/// Waits at most `within` for the server to close `s`; what it sent.
async fn closed(s: &mut TcpStream, within: Duration) -> String {
    let mut reply = Vec::new();
    let read = tokio::time::timeout(within, s.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "still open after {within:?}");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn get_metrics_is_served_and_nothing_else() {
    let e = start(TEST_LIMITS).await;
    let reply = scrape(e.addr).await;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert!(body.contains("director_raft_term 7\n"), "{body}");
    let open = exchange(
        e.addr,
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: d\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    )
    .await;
    assert!(open.starts_with("HTTP/1.1 200 OK\r\n"), "{open}");
    assert!(
        open.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{open}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    for request in [
        &b"GET / HTTP/1.1\r\nHost: d\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.1\r\nHost: d\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let reply = exchange(e.addr, request).await;
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
    }
    e.stop.send(true).unwrap();
    e.task.await.unwrap();
}

/// A client that sends half a request and holds its connection does not
/// stall a scrape; it is closed at the header timeout.
#[tokio::test]
async fn a_half_request_held_open_does_not_stall_a_scrape() {
    let e = start(TEST_LIMITS).await;
    let mut slow = TcpStream::connect(e.addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: d\r\nX-Slo")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    scrape(e.addr).await;
    assert!(
        started.elapsed() < TEST_LIMITS.header_timeout,
        "the scrape waited for the slow client: {:?}",
        started.elapsed()
    );
    let left = closed(&mut slow, TEST_LIMITS.header_timeout * 4).await;
    assert!(!left.contains("200 OK"), "{left}");
    scrape(e.addr).await;
}

/// Garbage gets an error answer and a close, and does not stall the next
/// scrape; nor does a head longer than the read buffer, which is refused
/// once the buffer is full.
#[tokio::test]
async fn garbage_is_refused_and_the_next_scrape_is_served() {
    let e = start(TEST_LIMITS).await;
    // A TLS ClientHello's first bytes, then binary noise.
    let reply = exchange(
        e.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    scrape(e.addr).await;
    // A request line with no end that fills the read buffer (exactly, so
    // that nothing is left unread and the close is not a reset).
    let long = [b"GET /".as_slice(), &[b'a'; READ_BUFFER - 5]].concat();
    let reply = exchange(e.addr, &long).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );
    // A well-formed request line with a broken header line.
    let reply = exchange(e.addr, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    scrape(e.addr).await;
}

/// Beyond the connection bound a new connection is closed at once, and
/// the endpoint serves again as soon as a slot is free.
#[tokio::test]
async fn connections_beyond_the_bound_are_closed_at_once() {
    let limits = Limits {
        max_connections: 2,
        ..TEST_LIMITS
    };
    let e = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(e.addr).await.unwrap();
        s.write_all(b"GET /met").await.unwrap();
        held.push(s);
    }
    // Let the server accept both before the third comes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = TcpStream::connect(e.addr).await.unwrap();
    let _ = third.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
    let started = tokio::time::Instant::now();
    let reply = closed(&mut third, Duration::from_millis(300)).await;
    assert!(reply.is_empty(), "{reply}");
    assert!(started.elapsed() < limits.header_timeout);
    // The held ones time out; then scrapes are served.
    for mut s in held {
        closed(&mut s, limits.header_timeout * 4).await;
    }
    scrape(e.addr).await;
}

/// Stopping closes the listener and the connections still open.
#[tokio::test]
async fn stopping_closes_everything() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        connection_deadline: Duration::from_secs(60),
        max_connections: 4,
    };
    let e = start(limits).await;
    let mut held = TcpStream::connect(e.addr).await.unwrap();
    held.write_all(b"GET /met").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), e.task)
        .await
        .expect("the server stops")
        .unwrap();
    closed(&mut held, Duration::from_secs(2)).await;
    assert!(TcpStream::connect(e.addr).await.is_err());
}
