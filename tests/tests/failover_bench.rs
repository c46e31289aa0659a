//! The failover benchmark (`cargo xtask bench failover`): the same lab, once
//! with keepalived (VRRP) on d1..d3 and once with director, default and tuned
//! timing each. It measures, it asserts nothing about speed:
//!
//! - owner host death (link cut, process SIGKILLed): the client pings the VIP
//!   every 10 ms; the outage is the longest gap between replies after the kill;
//! - two owners under a one-way partition (the owner's packets to the other
//!   two dropped, nothing else) for a fixed time: the total time during which
//!   two hosts held the VIP or answered ARP for it (lab::watch).
//!
//! Environment: FAILOVER_RUNS (runs per system, default 10), FAILOVER_PARTITION_S
//! (default 5), FAILOVER_OUT (a JSON file for the results), FAILOVER_ONLY
//! (comma-separated system names, to run a subset), FAILOVER_OWNER_LEADS (1:
//! before each director run the Raft leader is killed and restarted until the
//! VIP's owner leads, so that the kill takes the leader with the owner).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use std::net::IpAddr;
use std::time::Duration;

use lab::configs::{keepalived_config, TimingProfile};
use lab::measure::env_u64;
use lab::scenario::{agreed_owner, director_status, wait_until};
use lab::watch::{monotonic_ns, outage_ms, OwnerWatch, Pinger};
use lab::{Host, Lab, LabEnv, LabError, LabGuard, LabSpec};
use serde_json::json;

fn vip() -> IpAddr {
    IpAddr::V4(lab::topology::vip_v4(0).unwrap())
}

/// One system's results.
#[derive(Debug, Default)]
struct Results {
    name: String,
    outages_ms: Vec<f64>,
    failed_runs: Vec<String>,
    two_owner_ms: Option<f64>,
    partition_summary: String,
    /// director only: per run, whether the killed owner was also the Raft
    /// leader (its death then needs an election before the VIP can move).
    owner_led: Vec<bool>,
    /// director only: per run, what the survivors logged in the first
    /// seconds after the kill, each line with its time since the kill.
    timelines: Vec<Vec<String>>,
}

impl Results {
    fn median(&self) -> Option<f64> {
        let mut v = self.outages_ms.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn max(&self) -> Option<f64> {
        self.outages_ms.iter().copied().reduce(f64::max)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "system": self.name,
            "outages_ms": self.outages_ms,
            "median_ms": self.median(),
            "max_ms": self.max(),
            "failed_runs": self.failed_runs,
            "two_owner_ms": self.two_owner_ms,
            "partition": self.partition_summary,
            "owner_was_raft_leader": self.owner_led,
            "timelines": self.timelines,
        })
    }
}

/// Pings through one failure: starts the pinger, lets it run 1 s, calls
/// `fail`, waits for `recovered`, lets it run 1 s more; the outage.
fn measure(
    lab: &mut Lab,
    fail: impl FnOnce(&mut Lab) -> Result<(), LabError>,
    mut recovered: impl FnMut(&Lab) -> Option<()>,
) -> Result<f64, String> {
    let pinger = Pinger::start(lab, vip(), 10).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1));
    let t = monotonic_ns();
    fail(lab).map_err(|e| e.to_string())?;
    let waited = wait_until("the failover", Duration::from_secs(30), || recovered(lab));
    std::thread::sleep(Duration::from_secs(1));
    let replies = pinger.stop();
    waited.map_err(|e| e.to_string())?;
    let before = replies.iter().filter(|r| **r < t).count();
    if before == 0 {
        return Err("the VIP did not answer before the failure".into());
    }
    outage_ms(&replies, t).ok_or_else(|| "the VIP never answered after the failure".into())
}

/// Seconds since midnight (UTC) of a director log line's timestamp
/// (`2026-11-30T14:50:01.123456Z ...`).
fn log_line_secs(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight (UTC) now.
fn now_secs() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// What each of `hosts` logged from line `from` on, within `span` seconds of
/// `at` (seconds since midnight): "+MS host: line".
fn timeline(lab: &Lab, hosts: &[(Host, usize)], at: f64, span: f64) -> Vec<String> {
    let mut out: Vec<(f64, String)> = Vec::new();
    for (h, from) in hosts {
        let text = std::fs::read_to_string(lab.director_log(h)).unwrap_or_default();
        for line in text.lines().skip(*from) {
            let Some(t) = log_line_secs(line) else {
                continue;
            };
            let since = t - at;
            if (-0.05..=span).contains(&since) {
                let rest = line.split_once(' ').map_or(line, |(_, r)| r.trim_start());
                out.push((
                    since,
                    format!("+{:.0} ms {}: {rest}", since * 1000.0, h.name()),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.into_iter().map(|(_, l)| l).collect()
}

fn log_lines(lab: &Lab, h: &Host) -> usize {
    std::fs::read_to_string(lab.director_log(h))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn holds_vip(lab: &Lab, host: &str) -> bool {
    lab.exec(host, &["ip", "-o", "addr", "show", "dev", "eth0"])
        .map(|s| s.contains(&format!(" {}/32 ", vip())))
        .unwrap_or(false)
}

fn keepalived(tuned: bool, runs: u64, partition_s: u64, env: &LabEnv) -> Results {
    let name = if tuned {
        "keepalived VRRPv3 advert_int 0.1"
    } else {
        "keepalived default (advert_int 1)"
    };
    let mut r = Results {
        name: name.into(),
        ..Default::default()
    };
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("bk-"), env.clone()).unwrap();
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    for h in &all {
        lab.start_keepalived(h, &keepalived_config(h, tuned))
            .unwrap();
    }
    let settle = |lab: &LabGuard| {
        wait_until("d1 to be the VRRP master", Duration::from_secs(30), || {
            (holds_vip(lab, "d1") && !holds_vip(lab, "d2") && !holds_vip(lab, "d3")).then_some(())
        })
    };
    settle(&lab).unwrap();
    for i in 0..runs {
        std::thread::sleep(Duration::from_secs(2));
        let outcome = measure(
            &mut lab,
            |lab| lab.kill_host("d1"),
            |lab| (holds_vip(lab, "d2") || holds_vip(lab, "d3")).then_some(()),
        );
        match outcome {
            Ok(ms) => r.outages_ms.push(ms),
            Err(e) => r.failed_runs.push(format!("run {i}: {e}")),
        }
        // The dead host comes back as from a reboot: without the address the
        // killed keepalived left behind.
        let _ = lab.exec(
            "d1",
            &["ip", "addr", "del", &format!("{}/32", vip()), "dev", "eth0"],
        );
        lab.set_link("d1", true).unwrap();
        lab.start_keepalived(
            &Host::director(1),
            &keepalived_config(&Host::director(1), tuned),
        )
        .unwrap();
        settle(&lab).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let watch = OwnerWatch::start(&lab, vip(), &names(&all), 10).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    for other in ["d2", "d3"] {
        lab.partition("d1", other, true).unwrap();
    }
    std::thread::sleep(Duration::from_secs(partition_s));
    lab.heal().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let seen = watch.stop();
    r.two_owner_ms = Some(seen.two_owner_ms());
    r.partition_summary = seen.summary();
    lab.down().unwrap();
    r
}

fn names(hosts: &[Host]) -> Vec<String> {
    hosts.iter().map(Host::name).collect()
}

/// The Raft leader as the first of `hosts` that answers names it (its
/// status document, whatever the command's exit code).
fn leader_name(lab: &Lab, hosts: &[Host]) -> Option<String> {
    let bin = lab.env().director.clone()?;
    hosts.iter().find_map(|h| {
        let out = std::process::Command::new(&bin)
            .args(["status", "-o", "json", "--socket"])
            .arg(lab.admin_socket(h))
            .output()
            .ok()?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        s["cluster"]["leader_name"].as_str().map(str::to_owned)
    })
}

/// Kills and restarts the Raft leader until the VIP's owner `owner` leads
/// (a holder keeps its VIPs through a change of leader).
fn make_owner_lead(lab: &mut LabGuard, all: &[Host], owner: &str) -> Result<(), String> {
    for _ in 0..8 {
        let Some(leader) = leader_name(lab, all) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        if leader == owner {
            return Ok(());
        }
        lab.kill_host(&leader)
            .map_err(|e| format!("killing the leader {leader}: {e}"))?;
        let others: Vec<Host> = all.iter().filter(|h| h.name() != leader).cloned().collect();
        let elected = wait_until("a new leader", Duration::from_secs(30), || {
            leader_name(lab, &others).filter(|l| *l != leader)
        });
        lab.start_host(&leader)
            .map_err(|e| format!("restarting {leader}: {e}"))?;
        elected.map_err(|e| format!("after killing the leader {leader}: {e}"))?;
        // The restarted director catches up and renews before the next try.
        let _ = wait_until(
            "the restarted director to hold a lease",
            Duration::from_secs(60),
            || {
                let h = all.iter().find(|h| h.name() == leader)?;
                director_status(lab, h)
                    .is_some_and(|s| s["lease"]["held"] == true)
                    .then_some(())
            },
        );
    }
    Err(format!("{owner} was not elected in 8 tries"))
}

fn director(profile: TimingProfile, runs: u64, partition_s: u64, env: &LabEnv) -> Results {
    let owner_leads = env_u64("FAILOVER_OWNER_LEADS", 0) == 1;
    let name = match profile {
        TimingProfile::Tuned => "director tuned (lease 140 ms)",
        TimingProfile::Default => "director default (lease 300 ms)",
        TimingProfile::Lab => "director lab timing (lease 3000 ms)",
    };
    let mut r = Results {
        name: name.into(),
        ..Default::default()
    };
    let spec = LabSpec::new(3, 2).with_prefix("bd-").with_timing(profile);
    let mut lab = LabGuard::up(spec, env.clone()).unwrap();
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    // Settled: all agree on the owner, and every director holds its lease.
    let settle = |lab: &LabGuard| {
        wait_until("the directors to settle", Duration::from_secs(60), || {
            let owner = agreed_owner(lab, &all, vip())?;
            all.iter()
                .all(|h| director_status(lab, h).is_some_and(|s| s["lease"]["held"] == true))
                .then_some(owner)
        })
    };
    settle(&lab).unwrap();
    for i in 0..runs {
        std::thread::sleep(Duration::from_secs(2));
        let Ok((owner, _)) = settle(&lab) else {
            r.failed_runs.push(format!("run {i}: no settled owner"));
            continue;
        };
        if owner_leads {
            if let Err(e) = make_owner_lead(&mut lab, &all, &owner) {
                r.failed_runs.push(format!(
                    "run {i}: the owner {owner} could not be made the leader: {e}"
                ));
                continue;
            }
        }
        let owner = if owner_leads {
            match settle(&lab) {
                Ok((o, _)) => o,
                Err(_) => {
                    r.failed_runs.push(format!("run {i}: no settled owner"));
                    continue;
                }
            }
        } else {
            owner
        };
        let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
        let led = leader_name(&lab, &all).is_some_and(|l| l == owner);
        let from: Vec<(Host, usize)> = survivors
            .iter()
            .map(|h| (h.clone(), log_lines(&lab, h)))
            .collect();
        let killed_at = std::cell::Cell::new(0.0);
        let outcome = measure(
            &mut lab,
            |lab| {
                killed_at.set(now_secs());
                lab.kill_host(&owner)
            },
            |lab| {
                agreed_owner(lab, &survivors, vip()).and_then(|(o, _)| (o != owner).then_some(()))
            },
        );
        match outcome {
            Ok(ms) => {
                r.outages_ms.push(ms);
                r.owner_led.push(led);
                let lines = timeline(&lab, &from, killed_at.get(), 2.0);
                for l in &lines {
                    println!("{name} run {i} ({ms:.0} ms, {owner} killed): {l}");
                }
                r.timelines.push(lines);
            }
            Err(e) => r.failed_runs.push(format!("run {i}: {e}")),
        }
        lab.start_host(&owner).unwrap();
        if settle(&lab).is_err() {
            r.failed_runs
                .push(format!("run {i}: {owner} did not rejoin within 60 s"));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    if let Ok((owner, _)) = settle(&lab) {
        let watch = OwnerWatch::start(&lab, vip(), &names(&all), 10).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        for other in all.iter().filter(|h| h.name() != owner) {
            lab.partition(&owner, &other.name(), true).unwrap();
        }
        std::thread::sleep(Duration::from_secs(partition_s));
        lab.heal().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let seen = watch.stop();
        r.two_owner_ms = Some(seen.two_owner_ms());
        r.partition_summary = format!("owner {owner} cut off one way; {}", seen.summary());
    }
    lab.down().unwrap();
    r
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench failover`"]
fn failover_director_vs_keepalived() {
    let runs = env_u64("FAILOVER_RUNS", 10);
    let partition_s = env_u64("FAILOVER_PARTITION_S", 5);
    let only = std::env::var("FAILOVER_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.is_empty() || only.split(',').any(|o| o == n);
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    let mut with_director = env.clone();
    with_director.director =
        Some(lab::lab::workspace_binary("director").expect("the director binary"));

    let mut results = Vec::new();
    if wanted("keepalived-default") {
        results.push(keepalived(false, runs, partition_s, &env));
    }
    if wanted("keepalived-tuned") {
        results.push(keepalived(true, runs, partition_s, &env));
    }
    if wanted("director-default") {
        results.push(director(
            TimingProfile::Default,
            runs,
            partition_s,
            &with_director,
        ));
    }
    if wanted("director-tuned") {
        results.push(director(
            TimingProfile::Tuned,
            runs,
            partition_s,
            &with_director,
        ));
    }

    println!("\nowner host death, client-visible outage (ICMP every 10 ms), {runs} runs each;");
    println!("two owners during a {partition_s} s one-way partition of the owner\n");
    println!("| system | runs ok | median ms | max ms | two owners ms |\n|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {}/{} | {} | {} | {} |",
            r.name,
            r.outages_ms.len(),
            runs,
            fmt_ms(r.median()),
            fmt_ms(r.max()),
            fmt_ms(r.two_owner_ms)
        );
    }
    let find = |prefix: &str| results.iter().find(|r| r.name.starts_with(prefix));
    let mut ratios = serde_json::Map::new();
    for (d, k, label) in [
        ("director default", "keepalived default", "default"),
        ("director tuned", "keepalived VRRPv3", "tuned"),
    ] {
        if let (Some(d), Some(k)) = (find(d), find(k)) {
            if let (Some(dm), Some(km)) = (d.median(), k.median()) {
                println!(
                    "{label}: director median {dm:.0} ms vs keepalived {km:.0} ms: keepalived/director = {:.1}x",
                    km / dm
                );
                ratios.insert(label.into(), json!(km / dm));
            }
        }
    }
    for r in results.iter().filter(|r| !r.owner_led.is_empty()) {
        let split = |led: bool| -> Vec<String> {
            r.outages_ms
                .iter()
                .zip(&r.owner_led)
                .filter(|(_, l)| **l == led)
                .map(|(ms, _)| format!("{ms:.0}"))
                .collect()
        };
        println!(
            "{}: outages when the owner was also the Raft leader: [{}] ms; when it was not: [{}] ms",
            r.name,
            split(true).join(", "),
            split(false).join(", ")
        );
    }
    for r in &results {
        for f in &r.failed_runs {
            println!("{}: {f}", r.name);
        }
        println!("{} partition: {}", r.name, r.partition_summary);
    }
    if let Some(path) = std::env::var_os("FAILOVER_OUT") {
        let doc = json!({
            "runs": runs,
            "partition_s": partition_s,
            "results": results.iter().map(Results::json).collect::<Vec<_>>(),
            "keepalived_over_director": ratios,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
