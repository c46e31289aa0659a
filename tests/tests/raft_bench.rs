//! Raft benchmark (reports; asserts nothing about speed): commit latency and
//! leader failover of `labraft` processes in the lab's namespaces, with the
//! default and the tight timing of docs/fencing.md. Run by
//! `cargo xtask bench raft`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

use std::time::{Duration, Instant};

use lab::raftlab::RaftLab;
use lab::LabEnv;
use serde_json::json;

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "benchmark: run by `cargo xtask bench raft`"]
fn raft_commit_latency_and_failover() {
    let commits: usize = std::env::var("RAFT_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let failovers: usize = std::env::var("RAFT_BENCH_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!(
        "| timing | commit p50 ms | commit p99 ms | failover median ms | failover max ms | runs |"
    );
    println!("|---|---|---|---|---|---|");
    for timing in ["default", "tight"] {
        let mut r = RaftLab::up(
            &format!("rb-{timing}-"),
            3,
            env(),
            env!("CARGO_BIN_EXE_labraft").into(),
            timing,
        );
        let all = [1u64, 2, 3];
        r.propose(
            &all,
            json!({"PutDirector": {"id": 1, "name": "d1", "address": "", "role": "data"}}),
        );
        // Commit latency: sequential proposals on the leader, through its
        // control socket (one local round trip included).
        let leader = r.leader(&all);
        let mut lat = Vec::with_capacity(commits);
        for i in 0..commits {
            let cmd = json!({"op": "propose", "command": {"SetDraining": {"director": 1, "draining": i % 2 == 0}}});
            let t = Instant::now();
            let resp = r.try_ask(leader, &cmd).unwrap();
            lat.push(t.elapsed());
            assert!(resp.get("response").is_some(), "{resp}");
        }
        lat.sort();
        // Failover: kill -9 the leader; time until a new leader has committed.
        let mut fo = Vec::new();
        for run in 0..failovers {
            let leader = r.leader(&all);
            let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
            r.kill9(leader);
            let t = Instant::now();
            let cmd = json!({"op": "propose", "command": {"SetDraining": {"director": 1, "draining": run % 2 == 0}}});
            loop {
                let done = rest.iter().any(|id| {
                    r.try_ask(*id, &cmd)
                        .is_some_and(|v| v.get("response").is_some())
                });
                if done {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no new leader committed"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            fo.push(t.elapsed());
            r.spawn(leader);
            let l = r.leader(&all);
            let target = r.applied(l);
            r.until("catch-up", || r.applied(leader) >= target);
        }
        fo.sort();
        println!(
            "| {timing} | {:.2} | {:.2} | {:.0} | {:.0} | {commits} commits, {failovers} failovers |",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            ms(pct(&fo, 0.5)),
            ms(fo[fo.len() - 1]),
        );
        println!(
            "  failovers (ms): {:?}",
            fo.iter().map(|d| ms(*d).round() as u64).collect::<Vec<_>>()
        );
    }
}
