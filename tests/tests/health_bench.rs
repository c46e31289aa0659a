//! The health-check benchmark: three directors in the namespace lab (no
//! IPVS needed: the checker runs whether or not the kernel has it), fifty
//! node hosts, and static services with HEALTH_BACKENDS backends in all
//! (default 10,000: each node's address on HEALTH_BACKENDS / 50 ports from
//! 31000, nothing listening, so every probe is a real TCP connect answered
//! by the node's kernel with a reset), checked by `tcp` every
//! HEALTH_INTERVAL_MS (default 1000, timeout half of it). It measures and
//! reports; it asserts nothing about speed:
//!
//! - each director's CPU (share of one core) and memory (VmRSS, VmHWM) over
//!   HEALTH_MEASURE_S (default 30) once every target has a result;
//! - the probes done per second (the checker's counters, from the
//!   metrics endpoint) against the targets per interval;
//! - the spread of the probes over the interval: when each target was last
//!   probed (`director status`), in ten buckets of a tenth of the interval
//!   (an even spread puts a tenth of the targets in each).
//!
//! Run: `cargo test -p director-tests --release --test health_bench --
//! --ignored --nocapture` (as root; `cargo build --release -p director`
//! first). HEALTH_OUT names a JSON file for the results.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use lab::configs::{director_config_with_services, TimingProfile};
use lab::measure::{cpu_percent, env_u64, process_sample};
use lab::scenario::{director_status, wait_for};
use lab::{Host, LabEnv, LabGuard, LabSpec};
use serde_json::{json, Value};

const NODES: u8 = 50;
const FIRST_PORT: u32 = 31000;

fn release_director() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("director");
        if p.exists() {
            return p;
        }
    }
    panic!("no director binary: cargo build --release -p director");
}

/// The services: ten VIPs on port 80, the backends dealt out over them.
fn services(backends: u32) -> String {
    let per_node = backends.div_ceil(u32::from(NODES));
    let mut all = Vec::new();
    for port in FIRST_PORT..FIRST_PORT + per_node {
        for n in 1..=NODES {
            if all.len() < backends as usize {
                all.push(format!("\"{}:{port}\"", Host::node(n).ipv4()));
            }
        }
    }
    let mut s = String::new();
    for (i, chunk) in all.chunks(all.len().div_ceil(10)).enumerate() {
        let _ = writeln!(
            s,
            "  - name: h{i}\n    vip: 10.10.0.{}\n    ports:\n      - {{port: 80, protocol: tcp}}\n    backends: [{}]",
            200 + i,
            chunk.join(", ")
        );
    }
    s
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(lab: &LabGuard, host: &Host) -> String {
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    let addr = format!("{}:9469", host.ipv4());
    lab.exec(&host.name(), &[&labnet, "fetch", &addr, "/metrics"])
        .unwrap_or_default()
}

fn checks_done(lab: &LabGuard, host: &Host) -> Option<f64> {
    Some(metric(&scrape(lab, host), "director_health_checks_total"))
}

/// The probe-duration histogram's cumulative buckets, as `le=count`.
fn durations(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("director_health_check_duration_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            Some(format!("{le}={}", l.rsplit(' ').next()?))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "a benchmark: run by hand (see the file's header)"]
fn health_checking_ten_thousand_backends() {
    let backends = u32::try_from(env_u64("HEALTH_BACKENDS", 10_000)).unwrap();
    let interval = env_u64("HEALTH_INTERVAL_MS", 1000);
    let measure = Duration::from_secs(env_u64("HEALTH_MEASURE_S", 30));
    let director = release_director();
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env.director = None;
    let spec = LabSpec::new(3, NODES)
        .with_prefix("hb-")
        .with_timing(TimingProfile::Lab);
    let mut lab = LabGuard::up(spec, env).expect("lab up");
    let directors: Vec<Host> = (1..=3).map(Host::director).collect();
    let health = format!(
        "defaults:\n  scheduler: rr\n  forwarding: nat\n  health: {{type: tcp, interval_ms: {interval}, timeout_ms: {}, rise: 2, fall: 3}}\n",
        interval / 2
    );
    let configs: Vec<(Host, String)> = directors
        .iter()
        .map(|h| {
            let data = lab
                .env()
                .state_dir
                .join(format!("{}{}", lab.spec().prefix, h.name()));
            let c = director_config_with_services(lab.spec(), h, &data, "", &services(backends))
                .replace("defaults:\n  scheduler: rr\n  forwarding: nat\n", &health);
            (h.clone(), c)
        })
        .collect();
    if let Err(e) = lab.start_directors_with_configs(&director, &configs, Duration::from_secs(120))
    {
        let log = std::fs::read_to_string(lab.director_log(&directors[0])).unwrap_or_default();
        panic!("directors up: {e}\nd1's log:\n{log}");
    }
    println!(
        "health bench: {backends} backends, tcp every {interval} ms, 3 directors, {NODES} nodes"
    );
    let t0 = Instant::now();
    wait_for("every target probed on every director", 300, || {
        directors
            .iter()
            .all(|h| {
                director_status(&lab, h).is_some_and(|s| {
                    s["health"]["targets"].as_u64() == Some(u64::from(backends))
                        && s["health"]["unknown"].as_u64() == Some(0)
                })
            })
            .then_some(())
    });
    println!(
        "every target probed on every director {:.1} s after start",
        t0.elapsed().as_secs_f64()
    );
    let pids: Vec<i32> = directors
        .iter()
        .map(|h| lab.director_pid(&h.name()).expect("director running"))
        .collect();
    let before: Vec<_> = pids.iter().map(|p| process_sample(*p).unwrap()).collect();
    let checks_before: Vec<f64> = directors
        .iter()
        .map(|h| checks_done(&lab, h).unwrap_or(0.0))
        .collect();
    let start = Instant::now();
    std::thread::sleep(measure);
    let elapsed = start.elapsed();
    let after: Vec<_> = pids.iter().map(|p| process_sample(*p).unwrap()).collect();
    let checks_after: Vec<f64> = directors
        .iter()
        .map(|h| checks_done(&lab, h).unwrap_or(0.0))
        .collect();
    let mut per = Vec::new();
    for (i, h) in directors.iter().enumerate() {
        let cpu = cpu_percent(&before[i], &after[i], elapsed);
        let rate = (checks_after[i] - checks_before[i]) / elapsed.as_secs_f64();
        // The spread: when each target was last probed, by tenth of the
        // interval.
        let status = director_status(&lab, h).unwrap_or(Value::Null);
        let mut buckets = [0u64; 10];
        let mut seen = 0u64;
        for svc in status["services"].as_array().into_iter().flatten() {
            for b in svc["backends"].as_array().into_iter().flatten() {
                if let Some(ago) = b["health_checked_ms_ago"].as_u64() {
                    let slot = (ago % interval) * 10 / interval;
                    buckets[slot as usize] += 1;
                    seen += 1;
                }
            }
        }
        let (min, max) = (
            buckets.iter().min().copied().unwrap_or(0),
            buckets.iter().max().copied().unwrap_or(0),
        );
        println!(
            "{}: CPU {cpu:.1}% of a core, RSS {:.1} MiB (peak {:.1} MiB), {rate:.0} probes/s for {backends} targets per {interval} ms; probes per tenth of the interval: min {min}, max {max} of {seen} (even: {})",
            h.name(),
            after[i].rss_kib as f64 / 1024.0,
            after[i].peak_rss_kib as f64 / 1024.0,
            seen / 10
        );
        let hist = durations(&scrape(&lab, h));
        println!(
            "{}: probe durations (cumulative, seconds): {hist}",
            h.name()
        );
        per.push(json!({
            "director": h.name(), "cpu_percent": cpu,
            "rss_mib": after[i].rss_kib as f64 / 1024.0,
            "peak_rss_mib": after[i].peak_rss_kib as f64 / 1024.0,
            "probes_per_s": rate, "spread_buckets": buckets,
            "probe_durations": hist,
        }));
    }
    let out = json!({
        "backends": backends, "interval_ms": interval,
        "measure_s": measure.as_secs(), "directors": per,
    });
    if let Some(path) = std::env::var_os("HEALTH_OUT") {
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    }
    lab.down().expect("lab down");
}
