//! The scale benchmark (`cargo xtask bench scale`): three directors in the
//! lab, each started with the same generated config of N static services x 4
//! backends. Each service has a VIP of its own (the replicated state gives a
//! VIP to one service), from a test pool of 10.20.0.0/16 added to the lab's,
//! one TCP port and the lab nodes' NodePorts 30080 and 30081 as backends. It
//! measures and reports; it asserts nothing about speed:
//!
//! - convergence: from starting the three daemons until every director's
//!   kernel holds all N services and the three tables are equal (polled from
//!   netlink from inside each director's namespace, then confirmed with `ipvsadm -Sn` in each
//!   director's namespace);
//! - idle: the CPU each director uses over the next IDLE seconds (percent of
//!   one CPU, all threads), its peak (VmHWM) and steady (VmRSS) memory (with
//!   RssAnon, RssFile and the threads), and its heap from /metrics;
//! - one change: one backend's weight changed in all three config files and
//!   SIGHUP sent to all three (when the config has no per-backend weight yet,
//!   one backend added to one service instead: also exactly one kernel
//!   operation); the time until every kernel shows it (the service polled in
//!   over netlink, then checked with `ipvsadm -Ln -t`) and the IPVS
//!   changes each director made for it: the
//!   daemon's counter `director_reconcile_operations_total{reconciler="ipvs"}`
//!   before and after when it exports one, otherwise every IPVS change request
//!   its namespace sent to the kernel, seen on an nlmon device.
//!
//! Every phase has a time limit; a phase that runs out is reported as such
//! and the next N still runs.
//!
//! Environment: SCALE_SERVICES (comma-separated, default "1000,10000"),
//! SCALE_IDLE_S (60), SCALE_READY_TIMEOUT_S (300), SCALE_CONVERGE_TIMEOUT_S
//! (900), SCALE_CHANGE_TIMEOUT_S (60), SCALE_OUT (a JSON file for the results),
//! SCALE_REVISION (the source revision, for the record), SCALE_RESYNC_S (the
//! directors' `reconcile.resync_s`, default the daemon's 30).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ipvs_sys::ServiceKey;
use lab::configs::{director_config_with_services, TimingProfile};
use lab::measure::{
    cpu_percent, env_u64, ip_vs_hex, ipvs_family_id, ipvsadm_saved_sorted, process_sample,
    prometheus_sum, IpvsOpsWatch, IpvsTable, NetnsIpvs, ProcessSample,
};
use lab::scenario::director_status;
use lab::watch::monotonic_ns;
use lab::{Host, Lab, LabEnv, LabGuard, LabSpec};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Backends per service.
const BACKENDS: usize = 4;
/// The test pool the services' VIPs come from: service i has the address
/// i + 1 of it, port 80.
const POOL: &str = "10.20.0.0/16";
const POOL_BASE: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 0);
/// Services that fit in the pool.
const MAX_SERVICES: u32 = 65_000;
/// The daemon's counter of kernel operations, and its IPVS label.
const OPS_METRIC: &str = "director_reconcile_operations_total";
/// Time allowed after the last kernel shows the change, for operations that
/// come late (a second, redundant one would count).
const CHANGE_GRACE: Duration = Duration::from_secs(3);
/// Goals (issue: the daemon at rest with 10,000 services).
const GOAL_IDLE_CPU_PERCENT: f64 = 2.0;
const GOAL_RSS_MIB: f64 = 64.0;
const GOAL_VISIBLE_MS: f64 = 1000.0;
const GOAL_OPS: u64 = 1;

fn directors() -> Vec<Host> {
    (1..=3).map(Host::director).collect()
}

/// What the change phase does to the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// The first backend of the changed service gets weight 2.
    Weight,
    /// The changed service gets a fifth backend.
    AddBackend,
}

impl Edit {
    fn describe(self) -> &'static str {
        match self {
            Edit::Weight => "one backend's weight 1 -> 2",
            Edit::AddBackend => {
                "one backend added to one service (the config has no per-backend weight)"
            }
        }
    }
}

/// The generated services.
#[derive(Debug, Clone, Copy)]
struct Layout {
    services: u32,
}

impl Layout {
    /// VIP and port of service `i`.
    fn address(i: u32) -> (Ipv4Addr, u32) {
        (Ipv4Addr::from(u32::from(POOL_BASE) + 1 + i), 80)
    }

    /// The `pools:` item of the test pool.
    fn pool() -> String {
        format!("  - name: scale\n    addresses: [\"{POOL}\"]\n")
    }

    fn backends() -> Vec<String> {
        let n = |i: u8| Host::node(i).ipv4();
        vec![
            format!("{}:30080", n(1)),
            format!("{}:30080", n(2)),
            format!("{}:30081", n(1)),
            format!("{}:30081", n(2)),
        ]
    }

    /// The service the change phase edits.
    fn changed(&self) -> u32 {
        self.services / 2
    }

    /// The backend the change adds.
    fn added_backend() -> String {
        format!("{}:30082", Host::node(1).ipv4())
    }

    /// The `services:` items, with `edit` applied to the changed service.
    fn yaml(&self, edit: Option<Edit>) -> String {
        let quoted: Vec<String> = Self::backends()
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect();
        let plain = quoted.join(", ");
        let mut s = String::with_capacity(self.services as usize * 160);
        for i in 0..self.services {
            let (vip, port) = Self::address(i);
            let backends = match edit {
                Some(Edit::Weight) if i == self.changed() => {
                    let mut items: Vec<String> = Self::backends()
                        .iter()
                        .map(|b| format!("{{address: \"{b}\"}}"))
                        .collect();
                    items[0] = format!("{{address: \"{}\", weight: 2}}", Self::backends()[0]);
                    items.join(", ")
                }
                Some(Edit::AddBackend) if i == self.changed() => {
                    format!("{plain}, \"{}\"", Self::added_backend())
                }
                _ => plain.clone(),
            };
            let _ = writeln!(
                s,
                "  - {{name: s{i:05}, vip: {vip}, ports: [{{port: {port}}}], backends: [{backends}]}}"
            );
        }
        s
    }

    /// `VIP:PORT` of the changed service.
    fn changed_target(&self) -> String {
        let (vip, port) = Self::address(self.changed());
        format!("{vip}:{port}")
    }

    /// Whether the changed service's destinations, with addresses as `/proc/net/ip_vs`
    /// lists them, show `edit`.
    fn shows(edit: Edit, dests: &[(String, String, u32)]) -> bool {
        let hex = |b: &str| ip_vs_hex(b.parse().unwrap());
        match edit {
            Edit::Weight => {
                let first = hex(&Self::backends()[0]);
                dests.iter().any(|(a, _, w)| *a == first && *w == 2)
            }
            Edit::AddBackend => {
                let added = hex(&Self::added_backend());
                dests.iter().any(|(a, _, _)| *a == added)
            }
        }
    }

    /// Whether `ipvsadm -Ln -t VIP:PORT` of the changed service shows `edit`.
    fn ipvsadm_shows(edit: Edit, listing: &str) -> bool {
        match edit {
            Edit::Weight => {
                let first = &Self::backends()[0];
                listing.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 4 && f[0] == "->" && f[1] == first && f[3] == "2"
                })
            }
            Edit::AddBackend => listing.contains(&Self::added_backend()),
        }
    }
}

fn config_for(lab: &Lab, host: &Host, layout: &Layout, edit: Option<Edit>) -> String {
    let data_dir = lab
        .env()
        .state_dir
        .join(format!("{}{}", lab.spec().prefix, host.name()));
    let mut text = director_config_with_services(
        lab.spec(),
        host,
        &data_dir,
        &Layout::pool(),
        &layout.yaml(edit),
    );
    // SCALE_RESYNC_S: the reconcilers' full-read interval (default 30 s).
    if let Ok(s) = std::env::var("SCALE_RESYNC_S") {
        text.push_str(&format!("reconcile:\n  resync_s: {s}\n"));
    }
    text
}

/// Whether the daemon's config takes a per-backend weight: `director config
/// check` of a one-service config with one.
fn weights_supported(lab: &Lab, director: &Path) -> bool {
    let host = Host::director(1);
    let text = config_for(lab, &host, &Layout { services: 1 }, Some(Edit::Weight));
    let path = lab
        .env()
        .state_dir
        .join(format!("{}weight-probe.yaml", lab.spec().prefix));
    std::fs::write(&path, text).unwrap();
    let ok = std::process::Command::new(director)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let _ = std::fs::remove_file(&path);
    ok
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// A director's value in a report cell, `-` when it has none.
fn shown<T>(values: &BTreeMap<String, T>, host: &str, show: impl Fn(&T) -> String) -> String {
    values.get(host).map(show).unwrap_or_else(|| "-".into())
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// The last lines of a director's log, for a report.
fn log_tail(lab: &Lab, host: &Host) -> String {
    let text = std::fs::read_to_string(lab.director_log(host)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// How many VIPs have an owner in a director's status document.
fn vips_with_owner(status: &Value) -> usize {
    status["vips"].as_array().map_or(0, |a| {
        a.iter().filter(|x| x["owner_name"].is_string()).count()
    })
}

/// What a director's status says about the replicated state: services and
/// VIPs with an owner (to tell a slow Raft from a slow kernel).
fn state_summary(lab: &Lab, host: &Host) -> (String, Value) {
    match director_status(lab, host) {
        Some(v) => {
            let services = v["services"].as_array().map_or(0, Vec::len);
            let owned = vips_with_owner(&v);
            let ipvs = v["reconcilers"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["name"] == "ipvs"))
                .map(|r| {
                    format!(
                        "; ipvs reconciler: {} passes, {} operations, {} errors, {} resyncs, last error {}",
                        r["passes"], r["operations"], r["errors"], r["resyncs"], r["last_error"]
                    )
                })
                .unwrap_or_default();
            (
                format!("state: {services} services, {owned} VIPs with an owner{ipvs}"),
                json!({"state_services": services, "vips_with_owner": owned}),
            )
        }
        None => ("status: no answer".into(), json!({"status": null})),
    }
}

/// The PIDs of the three directors, or which one is gone.
fn pids(lab: &Lab) -> Result<Vec<i32>, String> {
    directors()
        .iter()
        .map(|h| {
            lab.director_pid(&h.name()).ok_or_else(|| {
                format!(
                    "the director of {} is not running; its log ends: {}",
                    h.name(),
                    log_tail(lab, h)
                )
            })
        })
        .collect()
}

/// One N's results, filled in phase by phase.
#[derive(Debug, Default)]
struct Run {
    services: u32,
    /// Seconds from start until every admin socket existed.
    ready_s: Option<f64>,
    /// Seconds from start until each director's table was first complete.
    complete_s: BTreeMap<String, f64>,
    /// Seconds from start until all three tables were complete and equal.
    converged_s: Option<f64>,
    /// CPU seconds each director had used when they converged.
    converge_cpu_s: BTreeMap<String, f64>,
    /// Seconds from start until every VIP had an owner on all three and
    /// exactly one director answered for each.
    placed_s: Option<f64>,
    ipvsadm_equal: Option<bool>,
    /// Whether CPU and memory were measured at rest (false: after the
    /// convergence timed out, while the directors still worked).
    at_rest: Option<bool>,
    idle_cpu_percent: BTreeMap<String, f64>,
    peak_rss_mib: BTreeMap<String, f64>,
    rss_mib: BTreeMap<String, f64>,
    /// At rest, from each director's /metrics: the heap's live bytes and
    /// the allocator's resident pages, MiB.
    heap_mib: BTreeMap<String, (f64, f64)>,
    /// At rest: the steady RSS's anonymous and file-backed parts (MiB),
    /// and the threads.
    rss_parts: BTreeMap<String, (f64, f64, u64)>,
    edit: Option<Edit>,
    ops_method: Option<String>,
    /// Milliseconds from SIGHUP until the first poll that saw the change
    /// ended (an upper bound), and until the poll before it started (lower).
    visible_ms: BTreeMap<String, (f64, f64)>,
    ops: BTreeMap<String, u64>,
    ops_detail: BTreeMap<String, Vec<String>>,
    /// Milliseconds from SIGHUP until each director logged that its new
    /// configuration was read, and until the leader logged its commit (from
    /// the log lines' clock): where the time to the kernel went.
    reloaded_ms: BTreeMap<String, f64>,
    committed_ms: Option<f64>,
    /// While converging, every 30 s: services in each kernel and what each
    /// director's status says of the replicated state.
    progress: Vec<Value>,
    /// Problems, by phase.
    problems: Vec<String>,
}

impl Run {
    fn json(&self) -> Value {
        let visible: BTreeMap<&String, Value> = self
            .visible_ms
            .iter()
            .map(|(h, (up, low))| (h, json!({"at_most_ms": up, "after_ms": low})))
            .collect();
        json!({
            "services": self.services,
            "backends_per_service": BACKENDS,
            "ready_s": self.ready_s,
            "complete_s": self.complete_s,
            "converged_s": self.converged_s,
            "converge_cpu_s": self.converge_cpu_s,
            "placed_s": self.placed_s,
            "ipvsadm_sn_equal": self.ipvsadm_equal,
            "cpu_memory_at_rest": self.at_rest,
            "idle_cpu_percent_of_one_cpu": self.idle_cpu_percent,
            "peak_rss_mib": self.peak_rss_mib,
            "steady_rss_mib": self.rss_mib,
            "heap_allocated_resident_mib": self.heap_mib,
            "rss_anon_file_mib_threads": self.rss_parts,
            "change": self.edit.map(Edit::describe),
            "change_visible": visible,
            "change_visible_on_all_ms": self.all_visible_ms(),
            "change_ops": self.ops,
            "change_ops_detail": self.ops_detail,
            "change_ops_method": self.ops_method,
            "change_reloaded_ms": self.reloaded_ms,
            "change_committed_ms": self.committed_ms,
            "converge_progress": self.progress,
            "problems": self.problems,
        })
    }

    fn all_visible_ms(&self) -> Option<f64> {
        (self.visible_ms.len() == 3).then(|| {
            self.visible_ms
                .values()
                .map(|(up, _)| *up)
                .fold(0.0, f64::max)
        })
    }
}

/// Phase 1: start the three daemons with the generated config and wait until
/// their kernels agree on all N services.
fn converge(lab: &mut Lab, director: &Path, layout: &Layout, r: &mut Run) -> Result<(), String> {
    let n = layout.services as usize;
    let configs: Vec<(Host, String)> = directors()
        .into_iter()
        .map(|h| {
            let c = config_for(lab, &h, layout, None);
            (h, c)
        })
        .collect();
    println!(
        "[{n}] config: {} KiB per director; starting d1 d2 d3",
        configs[0].1.len() / 1024
    );
    let ready_limit = Duration::from_secs(env_u64("SCALE_READY_TIMEOUT_S", 300));
    let limit = Duration::from_secs(env_u64("SCALE_CONVERGE_TIMEOUT_S", 900));
    let t0 = Instant::now();
    lab.start_directors_with_configs(director, &configs, ready_limit)
        .map_err(|e| format!("start: {e}"))?;
    r.ready_s = Some(secs(t0.elapsed()));
    println!(
        "[{n}] admin sockets up after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut last_report = Instant::now();
    let kernels: Vec<NetnsIpvs> = pids(lab)?
        .iter()
        .map(|p| NetnsIpvs::open(*p))
        .collect::<Result<_, _>>()?;
    loop {
        let pids = pids(lab)?;
        // The service count first (one dump); the whole table only once a
        // kernel holds every service.
        let counts: Vec<usize> = kernels
            .iter()
            .map(|k| k.service_count().unwrap_or(0))
            .collect();
        let tables: Vec<IpvsTable> = kernels
            .iter()
            .zip(&counts)
            .map(|(k, c)| {
                if *c == n {
                    k.table().unwrap_or_default()
                } else {
                    IpvsTable::default()
                }
            })
            .collect();
        let at = t0.elapsed();
        let complete = |t: &IpvsTable| t.services() == n && t.destinations() == n * BACKENDS;
        for (h, t) in directors().iter().zip(&tables) {
            if complete(t) {
                r.complete_s.entry(h.name()).or_insert(secs(at));
            }
        }
        if tables.iter().all(complete) && tables.windows(2).all(|w| w[0] == w[1]) {
            r.converged_s = Some(secs(at));
            for (h, p) in directors().iter().zip(&pids) {
                if let Some(s) = process_sample(*p) {
                    let cpu = s.cpu_ticks as f64 / lab::measure::clock_ticks_per_second() as f64;
                    r.converge_cpu_s
                        .insert(h.name(), secs(Duration::from_secs_f64(cpu)));
                }
            }
            println!(
                "[{n}] all three kernels hold the same {n} services after {:.1} s",
                at.as_secs_f64()
            );
            break;
        }
        let report = last_report.elapsed() > Duration::from_secs(30) || at > limit;
        if !report {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let mut sample = serde_json::Map::new();
        sample.insert("s".into(), json!(secs(at)));
        let counts: Vec<String> = directors()
            .iter()
            .zip(&counts)
            .map(|(h, c)| {
                let (text, mut state) = state_summary(lab, h);
                state["kernel_services"] = json!(c);
                sample.insert(h.name(), state);
                format!("{} {c}/{n} ({text})", h.name())
            })
            .collect();
        r.progress.push(Value::Object(sample));
        if at > limit {
            let logs: Vec<String> = directors()
                .iter()
                .map(|h| format!("{} log ends: {}", h.name(), log_tail(lab, h)))
                .collect();
            return Err(format!(
                "converge: timed out after {} s with services in the kernels: {}; {}",
                limit.as_secs(),
                counts.join(", "),
                logs.join("; ")
            ));
        }
        println!(
            "[{n}] {:.0} s: services in the kernels: {}",
            at.as_secs_f64(),
            counts.join(", ")
        );
        last_report = Instant::now();
    }
    // Then the VIPs: an owner for each in every director's view, and each
    // held by exactly one director (routes added, announced); only then is
    // the cluster at rest.
    loop {
        let views: Vec<Option<Value>> = directors()
            .iter()
            .map(|h| director_status(lab, h))
            .collect();
        let held: usize = views
            .iter()
            .flatten()
            .map(|v| {
                v["vips"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|x| x["held_here"] == true).count())
            })
            .sum();
        let at = t0.elapsed();
        if views
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| vips_with_owner(v) == n))
            && held == n
        {
            r.placed_s = Some(secs(at));
            println!(
                "[{n}] every VIP owned and held by one director after {:.1} s",
                at.as_secs_f64()
            );
            // Let the last gratuitous bursts end.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if at > limit {
            r.problems.push(format!(
                "placement: after {} s, VIPs with an owner: {:?}, held: {held} of {n}",
                limit.as_secs(),
                views
                    .iter()
                    .map(|v| v.as_ref().map(vips_with_owner))
                    .collect::<Vec<_>>()
            ));
            break;
        }
        // A status answer at this size is large: do not make the poll
        // itself the load.
        std::thread::sleep(Duration::from_secs(2));
    }
    // The same in ipvsadm's words.
    let saved: Vec<Vec<String>> = directors()
        .iter()
        .map(|h| ipvsadm_saved_sorted(lab, &h.name()).unwrap_or_default())
        .collect();
    let services_listed = saved[0].iter().filter(|l| l.starts_with("-A ")).count();
    let equal = saved.windows(2).all(|w| w[0] == w[1]) && services_listed == n;
    r.ipvsadm_equal = Some(equal);
    if !equal {
        r.problems.push(format!(
            "converge: the netlink dumps agreed but `ipvsadm -Sn` differs ({} services listed in d1; lines {}/{}/{})",
            services_listed,
            saved[0].len(),
            saved[1].len(),
            saved[2].len()
        ));
    }
    Ok(())
}

/// The line count of each director's log now.
fn log_lengths(lab: &Lab) -> Vec<usize> {
    directors()
        .iter()
        .map(|h| {
            std::fs::read_to_string(lab.director_log(h))
                .map(|t| t.lines().count())
                .unwrap_or(0)
        })
        .collect()
}

/// Milliseconds from `at` to the time a log line starts with (RFC 3339,
/// UTC, as the daemon writes them), if it starts with one.
fn logged_ms_after(line: &str, at: std::time::SystemTime) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 (the civil-from-days inverse).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let logged = (days * 86_400 + hh * 3600 + mm * 60) as f64 + ss;
    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    Some(((logged - at) * 1000.0).round())
}

/// What each director logged since `from` (line counts), summed by kind
/// (one line per VIP is counted, not printed), and the other lines (at most
/// `keep` each), for a phase's report.
fn log_summary(lab: &Lab, from: &[usize], keep: usize) -> Vec<String> {
    const KINDS: [&str; 8] = [
        "VIP taken",
        "VIP released",
        "VIP owner changed",
        "announcing",
        "ownership lease lapsed",
        "ownership lease regained",
        "leadership",
        "asking for votes",
    ];
    let mut out = Vec::new();
    for (h, from) in directors().iter().zip(from) {
        let text = std::fs::read_to_string(lab.director_log(h)).unwrap_or_default();
        let mut counts = BTreeMap::new();
        let mut other = Vec::new();
        for line in text.lines().skip(*from) {
            match KINDS.iter().find(|k| line.contains(*k)) {
                Some(k) => {
                    let e = counts.entry(*k).or_insert((0usize, String::new()));
                    e.0 += 1;
                    if e.1.is_empty() {
                        e.1 = line
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                    }
                }
                None if other.len() < keep => other.push(line.to_string()),
                None => {}
            }
        }
        let counted: Vec<String> = counts
            .iter()
            .map(|(k, (n, first))| format!("{k} x{n} (first {first})"))
            .collect();
        out.push(format!("{}: {}", h.name(), counted.join("; ")));
        for l in other {
            out.push(format!("{}: {l}", h.name()));
        }
    }
    out
}

/// SCALE_PROFILE=DIR: a CPU profile of each director over a phase (`perf
/// record`, read afterwards with `perf report -i DIR/perf-PHASE-dN.data`);
/// with SCALE_STRACE=1 a system-call count (`strace -c`) instead.
struct Profilers(Vec<std::process::Child>);

impl Profilers {
    fn start(phase: &str, pids: &[i32]) -> Profilers {
        let Some(dir) = std::env::var_os("SCALE_PROFILE") else {
            return Profilers(Vec::new());
        };
        let _ = std::fs::copy("/proc/kallsyms", Path::new(&dir).join("kallsyms"));
        let strace = std::env::var_os("SCALE_STRACE").is_some();
        let children = directors()
            .iter()
            .zip(pids)
            .filter_map(|(h, p)| {
                let out = Path::new(&dir).join(format!(
                    "{}-{phase}-{}.{}",
                    if strace { "strace" } else { "perf" },
                    h.name(),
                    if strace { "txt" } else { "data" }
                ));
                let pid = p.to_string();
                let mut cmd = if strace {
                    let mut c = std::process::Command::new("strace");
                    c.args(["-c", "-f", "-p", &pid, "-o"]).arg(out);
                    c
                } else {
                    let mut c = std::process::Command::new("perf");
                    c.args(["record", "-q", "-F", "199", "-g", "-p", &pid, "-o"])
                        .arg(out);
                    c
                };
                cmd.spawn().ok()
            })
            .collect();
        Profilers(children)
    }

    /// Ends every profiler (SIGINT, so that each writes its file).
    fn stop(self) {
        for mut c in self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
            }
            let _ = c.wait();
        }
    }
}

/// Phase 2: the directors at rest.
fn idle(lab: &Lab, r: &mut Run) -> Result<(), String> {
    let span = Duration::from_secs(env_u64("SCALE_IDLE_S", 60));
    let what = if r.at_rest == Some(false) {
        "not converged; measured anyway"
    } else {
        r.at_rest = Some(true);
        "idle"
    };
    println!(
        "[{}] {what}: CPU and memory of each director over {} s",
        r.services,
        span.as_secs()
    );
    let pids = pids(lab)?;
    let before: Vec<Option<ProcessSample>> = pids.iter().map(|p| process_sample(*p)).collect();
    let logged = log_lengths(lab);
    let profilers = Profilers::start("idle", &pids);
    let t = Instant::now();
    std::thread::sleep(span);
    let elapsed = t.elapsed();
    profilers.stop();
    for l in log_summary(lab, &logged, 20) {
        println!("[{}] idle: {l}", r.services);
    }
    for ((h, p), b) in directors().iter().zip(&pids).zip(&before) {
        let (Some(b), Some(a)) = (b, process_sample(*p)) else {
            return Err(format!(
                "idle: the director of {} exited; its log ends: {}",
                h.name(),
                log_tail(lab, h)
            ));
        };
        let pct = (cpu_percent(b, &a, elapsed) * 100.0).round() / 100.0;
        r.idle_cpu_percent.insert(h.name(), pct);
        r.peak_rss_mib.insert(h.name(), mib(a.peak_rss_kib));
        r.rss_mib.insert(h.name(), mib(a.rss_kib));
        r.rss_parts.insert(
            h.name(),
            (mib(a.rss_anon_kib), mib(a.rss_file_kib), a.threads),
        );
    }
    for (h, heap) in directors().iter().zip(heap_counts(lab)) {
        if let Some(heap) = heap {
            r.heap_mib.insert(h.name(), heap);
        }
    }
    Ok(())
}

/// Each director's /metrics text (None where it did not answer).
fn metrics_texts(lab: &Lab) -> Vec<Option<String>> {
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    directors()
        .iter()
        .map(|h| {
            let addr = format!("{}:9469", h.ipv4());
            // At 10,000 services a scrape reads the whole IPVS table:
            // seconds under emulation.
            lab.exec(
                &h.name(),
                &[&labnet, "fetch", "--timeout-s", "30", &addr, "/metrics"],
            )
            .ok()
        })
        .collect()
}

/// Each director's heap from its /metrics: (allocated, resident) in MiB.
fn heap_counts(lab: &Lab) -> Vec<Option<(f64, f64)>> {
    let to_mib = |b: f64| (b / 1048576.0 * 10.0).round() / 10.0;
    metrics_texts(lab)
        .into_iter()
        .map(|text| {
            let text = text?;
            let allocated = prometheus_sum(&text, "director_heap_allocated_bytes", &[])?;
            let resident = prometheus_sum(&text, "director_heap_resident_bytes", &[])?;
            Some((to_mib(allocated), to_mib(resident)))
        })
        .collect()
}

/// The IPVS operation counter of every director, if each exports it.
fn ops_counters(lab: &Lab) -> Option<Vec<f64>> {
    metrics_texts(lab)
        .into_iter()
        .map(|text| prometheus_sum(&text?, OPS_METRIC, &[("reconciler", "ipvs")]))
        .collect()
}

/// One poll of the changed service in one director: (start ns, end ns, seen).
type Poll = (u64, u64, bool);

/// Polls the changed service over netlink (no process started,
/// so the polls are close together) until it shows `edit` or `deadline`
/// passes; waits at `start` after the first poll.
fn poll_change(
    pid: i32,
    layout: &Layout,
    edit: Edit,
    start: &Barrier,
    deadline: Instant,
) -> Vec<Poll> {
    let (vip, port) = Layout::address(layout.changed());
    let key = ServiceKey::Addr {
        protocol: ipvs_sys::Protocol::Tcp,
        addr: vip.into(),
        port: u16::try_from(port).unwrap(),
    };
    let kernel = NetnsIpvs::open(pid).unwrap();
    let once = || {
        let a = monotonic_ns();
        let seen = kernel
            .destinations(key)
            .ok()
            .flatten()
            .is_some_and(|d| Layout::shows(edit, &d));
        (a, monotonic_ns(), seen)
    };
    let mut polls = vec![once()];
    start.wait();
    while Instant::now() < deadline {
        let p = once();
        polls.push(p);
        if p.2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    polls
}

/// Phase 3: one change to the config, SIGHUP to all three.
fn change(lab: &Lab, director: &Path, layout: &Layout, r: &mut Run) -> Result<(), String> {
    let edit = if weights_supported(lab, director) {
        Edit::Weight
    } else {
        Edit::AddBackend
    };
    r.edit = Some(edit);
    let target = layout.changed_target();
    println!(
        "[{}] change: {} of {target}, SIGHUP to d1 d2 d3",
        r.services,
        edit.describe()
    );
    // How the kernel operations are counted.
    let before = ops_counters(lab);
    let mut watches = Vec::new();
    if before.is_some() {
        r.ops_method = Some(format!(
            "{OPS_METRIC}{{reconciler=\"ipvs\"}}, before and after"
        ));
    } else {
        match ipvs_family_id() {
            Ok(id) => {
                for h in directors() {
                    match IpvsOpsWatch::start(lab, &h.name(), id) {
                        Ok(w) => watches.push(w),
                        Err(e) => {
                            r.problems
                                .push(format!("change: no nlmon watch in {}: {e}", h.name()));
                            break;
                        }
                    }
                }
                if watches.len() == 3 {
                    r.ops_method = Some(format!(
                        "{OPS_METRIC} is not exported: IPVS change requests (NEW/SET/DEL service or destination, ...) each director's namespace sent to the kernel, seen on an nlmon device"
                    ));
                }
            }
            Err(e) => r.problems.push(format!("change: no IPVS family id: {e}")),
        }
    }
    for h in directors() {
        let path = lab.director_config_path(&h);
        std::fs::write(&path, config_for(lab, &h, layout, Some(edit)))
            .map_err(|e| format!("change: writing {}: {e}", path.display()))?;
    }
    let limit = Duration::from_secs(env_u64("SCALE_CHANGE_TIMEOUT_S", 60));
    let start = Barrier::new(4);
    let mut sighup_ns = 0;
    let mut sighup_wall = std::time::SystemTime::now();
    let pids = pids(lab)?;
    let logged = log_lengths(lab);
    let profilers = Profilers::start("change", &pids);
    let polls: Vec<Vec<Poll>> = std::thread::scope(|s| {
        let handles: Vec<_> = pids
            .iter()
            .map(|pid| {
                let start = &start;
                s.spawn(move || poll_change(*pid, layout, edit, start, Instant::now() + limit))
            })
            .collect();
        start.wait();
        sighup_ns = monotonic_ns();
        sighup_wall = std::time::SystemTime::now();
        for h in directors() {
            if let Err(e) = lab.signal_director(&h.name(), Signal::SIGHUP) {
                eprintln!("SIGHUP to {}: {e}", h.name());
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    profilers.stop();
    // What each director logged from SIGHUP on (where the time went).
    for l in log_summary(lab, &logged, 30) {
        println!("[{}] change: {l}", r.services);
    }
    let ms = |ns: u64| ((ns.saturating_sub(sighup_ns)) as f64 / 1e6).round();
    let mut missing = Vec::new();
    for (h, p) in directors().iter().zip(&polls) {
        if p.first().is_some_and(|first| first.2) {
            r.problems.push(format!(
                "change: {} showed the change before SIGHUP",
                h.name()
            ));
        }
        match p.iter().position(|x| x.2) {
            Some(i) if i > 0 => {
                r.visible_ms
                    .insert(h.name(), (ms(p[i].1), ms(p[i - 1].0.max(sighup_ns))));
            }
            _ => missing.push(h.name()),
        }
    }
    std::thread::sleep(CHANGE_GRACE);
    // The reloads end after the kernels changed: read their lines now.
    let since = |line: &str| logged_ms_after(line, sighup_wall);
    for (h, from) in directors().iter().zip(&logged) {
        let text = std::fs::read_to_string(lab.director_log(h)).unwrap_or_default();
        for line in text.lines().skip(*from) {
            if line.contains("configuration reloaded") {
                if let Some(ms) = since(line) {
                    r.reloaded_ms.insert(h.name(), ms);
                }
            }
            if line.contains("committing catalogue changes") && r.committed_ms.is_none() {
                r.committed_ms = since(line);
            }
        }
    }
    println!(
        "[{}] change: configuration read, ms after SIGHUP: {:?}; the leader committed the change at {:?} ms",
        r.services, r.reloaded_ms, r.committed_ms
    );
    // The same in ipvsadm's words.
    for h in directors() {
        let listing = lab
            .exec(&h.name(), &["ipvsadm", "-Ln", "-t", &target])
            .unwrap_or_default();
        if r.visible_ms.contains_key(&h.name()) && !Layout::ipvsadm_shows(edit, &listing) {
            r.problems.push(format!(
                "change: the netlink dump of {} showed it, `ipvsadm -Ln -t {target}` does not",
                h.name()
            ));
        }
    }
    if let Some(before) = before {
        match ops_counters(lab) {
            Some(after) => {
                for ((h, b), a) in directors().iter().zip(&before).zip(&after) {
                    r.ops.insert(h.name(), (a - b).max(0.0) as u64);
                }
            }
            None => r
                .problems
                .push("change: the metric vanished after SIGHUP".into()),
        }
    }
    for (h, w) in directors().iter().zip(watches) {
        let seen = w.stop(lab);
        let early = seen.iter().filter(|(t, _)| *t < sighup_ns).count();
        if early > 0 {
            r.problems.push(format!(
                "change: {} made {early} IPVS change(s) before SIGHUP, not counted",
                h.name()
            ));
        }
        let after: Vec<String> = seen
            .into_iter()
            .filter(|(t, _)| *t >= sighup_ns)
            .map(|(t, name)| format!("{name} at +{} ms", ms(t)))
            .collect();
        r.ops.insert(h.name(), after.len() as u64);
        r.ops_detail.insert(h.name(), after);
    }
    if !missing.is_empty() {
        return Err(format!(
            "change: not visible in {} within {} s of SIGHUP",
            missing.join(", "),
            limit.as_secs()
        ));
    }
    Ok(())
}

fn run_one(env: &LabEnv, director: &Path, services: u32) -> Run {
    let mut r = Run {
        services,
        ..Default::default()
    };
    let layout = Layout { services };
    let spec = LabSpec::new(3, 2)
        .with_prefix("bs-")
        .with_timing(TimingProfile::Lab);
    let mut lab = match LabGuard::up(spec, env.clone()) {
        Ok(lab) => lab,
        Err(e) => {
            r.problems.push(format!("lab up: {e}"));
            return r;
        }
    };
    let phases = match converge(&mut lab, director, &layout, &mut r) {
        Ok(()) => idle(&lab, &mut r).and_then(|()| change(&lab, director, &layout, &mut r)),
        Err(e) => {
            println!("[{services}] {e}");
            r.problems.push(e);
            // Still running but not converged: what they cost meanwhile.
            if r.ready_s.is_some() && pids(&lab).is_ok() {
                r.at_rest = Some(false);
                idle(&lab, &mut r)
            } else {
                Ok(())
            }
        }
    };
    if let Err(e) = phases {
        println!("[{services}] {e}");
        r.problems.push(e);
    }
    println!("[{services}] tearing the lab down");
    if let Err(e) = lab.down() {
        r.problems.push(format!("lab down: {e}"));
    }
    r
}

fn cell(m: &BTreeMap<String, f64>, h: &str, digits: usize) -> String {
    m.get(h)
        .map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not evaluated",
    }
}

fn print_table(runs: &[Run]) {
    println!("\n| services | measure | d1 | d2 | d3 | goal | |\n|---|---|---|---|---|---|---|");
    for r in runs {
        let n = r.services;
        let row = |what: &str, f: &dyn Fn(&str) -> String, goal: &str, ok: Option<bool>| {
            let g = if goal.is_empty() { "" } else { verdict(ok) };
            println!(
                "| {n} | {what} | {} | {} | {} | {goal} | {g} |",
                f("d1"),
                f("d2"),
                f("d3")
            );
        };
        row(
            "admin socket up, s (all three)",
            &|_| r.ready_s.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
            "",
            None,
        );
        row(
            "own table complete, s after start",
            &|h| cell(&r.complete_s, h, 1),
            "",
            None,
        );
        row(
            "all three tables equal (`ipvsadm -Sn`), s after start",
            &|_| match (r.converged_s, r.ipvsadm_equal) {
                (Some(v), Some(true)) => format!("{v:.1}"),
                (Some(v), _) => format!("{v:.1} (ipvsadm differs)"),
                _ => "not reached".into(),
            },
            "",
            None,
        );
        row(
            "CPU used until then, s",
            &|h| cell(&r.converge_cpu_s, h, 1),
            "",
            None,
        );
        row(
            "every VIP owned and held, s after start",
            &|_| {
                r.placed_s
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or("not reached".into())
            },
            "",
            None,
        );
        let cpu_ok = (r.at_rest == Some(true) && r.idle_cpu_percent.len() == 3).then(|| {
            r.idle_cpu_percent
                .values()
                .all(|v| *v < GOAL_IDLE_CPU_PERCENT)
        });
        let span = if r.at_rest == Some(false) {
            "CPU while NOT converged"
        } else {
            "idle CPU"
        };
        row(
            &format!("{span}, % of one CPU"),
            &|h| cell(&r.idle_cpu_percent, h, 2),
            "< 2 %",
            cpu_ok,
        );
        let rss_ok = (r.at_rest == Some(true) && r.peak_rss_mib.len() == 3)
            .then(|| r.peak_rss_mib.values().all(|v| *v <= GOAL_RSS_MIB));
        row(
            &format!(
                "RSS peak / {}, MiB",
                if r.at_rest == Some(false) {
                    "at the end"
                } else {
                    "steady"
                }
            ),
            &|h| {
                format!(
                    "{} / {}",
                    cell(&r.peak_rss_mib, h, 1),
                    cell(&r.rss_mib, h, 1)
                )
            },
            "<= 64 MiB",
            rss_ok,
        );
        row(
            "RSS anonymous / file-backed at rest, MiB (threads)",
            &|h| {
                shown(&r.rss_parts, h, |(a, f, t)| {
                    format!("{a:.1} / {f:.1} ({t})")
                })
            },
            "",
            None,
        );
        row(
            "heap allocated / resident at rest, MiB",
            &|h| shown(&r.heap_mib, h, |(a, res)| format!("{a:.1} / {res:.1}")),
            "",
            None,
        );
        let vis_ok = r.all_visible_ms().map(|v| v <= GOAL_VISIBLE_MS);
        row(
            "change visible, ms after SIGHUP (at most)",
            &|h| shown(&r.visible_ms, h, |(up, _)| format!("{up:.0}")),
            "all within 1000 ms",
            vis_ok,
        );
        let ops_ok = (r.ops.len() == 3).then(|| r.ops.values().all(|v| *v == GOAL_OPS));
        row(
            "kernel operations for the change",
            &|h| r.ops.get(h).map(u64::to_string).unwrap_or("-".into()),
            "exactly 1",
            ops_ok,
        );
    }
    for r in runs {
        if let Some(e) = r.edit {
            println!("{}: the change was {}", r.services, e.describe());
        }
        if let Some(m) = &r.ops_method {
            println!("{}: kernel operations counted by: {m}", r.services);
        }
        for (h, d) in &r.ops_detail {
            println!(
                "{}: {h}: {}",
                r.services,
                if d.is_empty() {
                    "none".into()
                } else {
                    d.join(", ")
                }
            );
        }
        for p in &r.problems {
            println!("{}: {p}", r.services);
        }
    }
    println!("(goals as stated for 10,000 services: idle CPU under 2 % of one CPU, RSS at most 64 MiB, one change = one kernel operation per director, on all three within 1 s)");
}

fn write_json(path: &Path, runs: &[Run]) {
    let doc = json!({
        "directors": 3,
        "timing": "lab (docs/lab.md: heartbeat 150, election 1000..2000, lease 3000 ms)",
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "revision": std::env::var("SCALE_REVISION").unwrap_or_default(),
        "idle_s": env_u64("SCALE_IDLE_S", 60),
        "resync_s": env_u64("SCALE_RESYNC_S", 30),
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench scale` (in the VM)"]
fn scale_three_directors_static_services() {
    let list = std::env::var("SCALE_SERVICES").unwrap_or_else(|_| "1000,10000".into());
    let counts: Vec<u32> = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SCALE_SERVICES: comma-separated numbers")
        })
        .collect();
    assert!(
        counts.iter().all(|n| (1..=MAX_SERVICES).contains(n)),
        "SCALE_SERVICES: each 1..={MAX_SERVICES}"
    );
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    let director: PathBuf = lab::lab::workspace_binary("director").expect("the director binary");
    let out = std::env::var_os("SCALE_OUT").map(PathBuf::from);
    let mut runs = Vec::new();
    for n in counts {
        runs.push(run_one(&env, &director, n));
        if let Some(path) = &out {
            write_json(path, &runs);
        }
    }
    print_table(&runs);
}

#[test]
fn log_stamps_read_as_the_daemon_writes_them() {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_796_065_249);
    let line = "2026-11-30T19:00:49.621959Z  INFO committing catalogue changes commands=1";
    assert_eq!(logged_ms_after(line, at), Some(622.0));
    assert_eq!(logged_ms_after("no stamp here", at), None);
}
