//! The Raft group as real processes (`labraft`) in the lab's director
//! namespaces, over real sockets, with real packet loss (nftables in the
//! namespaces): kill -9 of the leader and of a follower, restarts from disk,
//! partitions both ways and one way, and the partial partition of openraft
//! #2080. An independent checker samples every director's control socket and
//! fails if two directors ever hold the same VIP. Needs root; `cargo xtask
//! test` runs them on the host kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lab::raftlab::{RaftLab, PORT, VIP};
use lab::LabEnv;
use serde_json::{json, Value};

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env
}

fn up(prefix: &str) -> RaftLab {
    RaftLab::up(
        prefix,
        3,
        env(),
        env!("CARGO_BIN_EXE_labraft").into(),
        "default",
    )
}

fn put_director(id: u64) -> Value {
    json!({"PutDirector": {"id": id, "name": format!("d{id}"), "address": format!("10.10.0.{}:{PORT}", 10 + id), "role": "data"}})
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn kill_9_of_leader_and_follower_then_restart_from_disk() {
    let mut r = up("r-kill-");
    let all = [1, 2, 3];
    for id in all {
        assert_eq!(r.propose(&all, put_director(id)), json!("Ok"));
    }
    let leader = r.leader(&all);
    r.kill9(leader);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = r.leader(&rest);
    assert_ne!(new_leader, leader);
    r.propose(
        &rest,
        json!({"SetDraining": {"director": leader, "draining": true}}),
    );

    // The killed leader restarts from its disk and catches up.
    r.spawn(leader);
    let target = r.applied(new_leader);
    r.until("the restarted leader to catch up", || {
        r.applied(leader) >= target
    });

    // Now a follower dies; the other two go on; it comes back and catches up.
    let follower = all
        .iter()
        .copied()
        .find(|id| *id != r.leader(&all))
        .unwrap();
    r.kill9(follower);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != follower).collect();
    r.propose(
        &rest,
        json!({"SetDraining": {"director": leader, "draining": false}}),
    );
    r.spawn(follower);
    let l = r.leader(&all);
    let target = r.applied(l);
    r.until("the restarted follower to catch up", || {
        r.applied(follower) >= target
    });
}

/// Samples every director's control socket; counts holders of the VIP.
struct Checker {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    handle: thread::JoinHandle<Vec<String>>,
}

impl Checker {
    fn start(controls: Vec<(u64, PathBuf)>) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), most.clone());
        let handle = thread::spawn(move || {
            // Per node: (its own clock when it answered, whether it held).
            let mut samples: std::collections::BTreeMap<u64, Vec<(u64, bool)>> = Default::default();
            while !s.load(Ordering::Relaxed) {
                let mut holders = Vec::new();
                for (id, path) in &controls {
                    let Ok(mut sock) = UnixStream::connect(path) else {
                        continue;
                    };
                    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
                    if writeln!(sock, "{}", json!({"op": "status"})).is_err() {
                        continue;
                    }
                    let mut line = String::new();
                    if BufReader::new(sock).read_line(&mut line).is_err() {
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    let held = v["owners"][VIP]["director"].as_u64() == Some(*id)
                        && v["holds_lease"] == json!(true);
                    if held {
                        holders.push(*id);
                    }
                    if let Some(t) = v["now_ns"].as_u64() {
                        samples.entry(*id).or_default().push((t, held));
                    }
                }
                m.fetch_max(holders.len(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
            // One round asks the nodes one after another, so two holders in
            // one round may be a handover between two answers. Two holders
            // at once means: node B was seen holding between two samples in
            // which node A was seen holding (by the nodes' own clocks).
            let runs: Vec<(u64, u64, u64)> = samples
                .iter()
                .flat_map(|(id, ss)| {
                    let mut out = Vec::new();
                    let mut run: Option<(u64, u64)> = None;
                    for (t, held) in ss {
                        match (&mut run, held) {
                            (Some((_, last)), true) => *last = *t,
                            (None, true) => run = Some((*t, *t)),
                            (Some(r), false) => {
                                out.push((*id, r.0, r.1));
                                run = None;
                            }
                            (None, false) => {}
                        }
                    }
                    out.extend(run.map(|r| (*id, r.0, r.1)));
                    out
                })
                .collect();
            let mut violations = Vec::new();
            for a in &runs {
                for b in &runs {
                    if a.0 < b.0 && a.1 < b.2 && b.1 < a.2 {
                        violations.push(format!(
                            "two holders: {} held {}..{} ns and {} held {}..{} ns",
                            a.0, a.1, a.2, b.0, b.1, b.2
                        ));
                    }
                }
            }
            violations
        });
        Checker { stop, most, handle }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let v = self.handle.join().unwrap();
        assert!(v.is_empty(), "{v:?}");
        self.most.load(Ordering::Relaxed)
    }
}

/// Members, the VIP, and a follower as its owner.
fn setup_owner(r: &RaftLab) -> (u64, u64) {
    let all = [1, 2, 3];
    for id in all {
        r.propose(&all, put_director(id));
    }
    r.propose(
        &all,
        json!({"Allocate": {"vip": VIP, "service": "default/web"}}),
    );
    let leader = r.leader(&all);
    let owner = all.iter().copied().find(|id| *id != leader).unwrap();
    r.until("the new-leader wait", || {
        r.ask_bool(leader, json!({"op": "may_assign"}))
    });
    let resp = r.propose(
        &all,
        json!({"SetOwner": {"vip": VIP, "director": owner, "expected_epoch": 0}}),
    );
    assert_eq!(resp, json!({"Epoch": 1}));
    r.until("the owner to hold", || {
        let s = r.status(owner);
        s["holds_lease"] == json!(true) && s["owners"][VIP]["director"] == json!(owner)
    });
    (leader, owner)
}

fn move_vip(r: &RaftLab, leader: u64, from: u64, to: u64, epoch: u64) {
    r.until("the fence to pass", || {
        r.ask_bool(leader, json!({"op": "may_take_from", "director": from}))
    });
    let resp = r
        .try_ask(
            leader,
            &json!({"op": "propose", "command": {"SetOwner": {"vip": VIP, "director": to, "expected_epoch": epoch}}}),
        )
        .unwrap();
    assert_eq!(resp["response"], json!({"Epoch": epoch + 1}), "{resp}");
    r.until("the new owner to hold", || {
        let s = r.status(to);
        s["holds_lease"] == json!(true) && s["owners"][VIP]["director"] == json!(to)
    });
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn partitions_both_ways_and_one_way_never_give_two_holders() {
    let r = up("r-part-");
    let (leader, owner) = setup_owner(&r);
    let controls: Vec<(u64, PathBuf)> = (1..=3).map(|id| (id, r.control(id))).collect();
    let checker = Checker::start(controls);

    // 1. The owner is cut off both ways: its lease lapses, the VIP moves.
    r.isolate(owner);
    let lapse = r.until("the isolated owner to lapse", || {
        r.status(owner)["holds_lease"] == json!(false)
    });
    assert!(
        lapse < Duration::from_millis(1500),
        "lapsed after {lapse:?}"
    );
    let successor = (1..=3).find(|id| *id != leader && *id != owner).unwrap();
    move_vip(&r, leader, owner, successor, 1);
    r.heal();
    r.until("the old owner to learn the move", || {
        r.status(owner)["owners"][VIP]["epoch"] == json!(2)
    });

    // 2. One way: everything the new owner sends is lost; it still hears.
    for other in 1..=3 {
        if other != successor {
            r.drop_from(successor, other);
        }
    }
    r.until("the one-way owner to lapse", || {
        r.status(successor)["holds_lease"] == json!(false)
    });
    move_vip(&r, leader, successor, owner, 2);
    r.heal();

    // 3. The leader is cut off: a new leader, which waits before moving.
    r.isolate(leader);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = r.leader(&rest);
    r.until("the deposed leader's lease to lapse", || {
        r.status(leader)["holds_lease"] == json!(false)
    });
    assert!(!r.ask_bool(leader, json!({"op": "may_assign"})));
    r.propose(
        &rest,
        json!({"SetDraining": {"director": leader, "draining": true}}),
    );
    assert_ne!(new_leader, leader);
    r.heal();
    thread::sleep(Duration::from_millis(500));
    assert!(checker.finish() <= 1);
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn a_partial_partition_does_not_stall_commits() {
    // openraft #2080: the leader still reaches one follower but not the other.
    let r = up("r-partial-");
    let all = [1, 2, 3];
    r.propose(&all, put_director(1));
    let leader = r.leader(&all);
    let far = all.iter().copied().find(|id| *id != leader).unwrap();
    r.cut(leader, far);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        // Any node may take it: the leader, or a follower that forwards to
        // nobody (a refusal), in which case another is tried.
        let cmd = json!({"op": "propose", "command": {"SetDraining": {"director": 1, "draining": n % 2 == 0}}});
        loop {
            let done = all.iter().any(|id| {
                r.try_ask(*id, &cmd)
                    .is_some_and(|v| v.get("response").is_some())
            });
            if done {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "commits stalled for 5 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        slowest = slowest.max(t.elapsed());
        n += 1;
        thread::sleep(Duration::from_millis(50));
    }
    r.heal();
    assert!(n > 10, "only {n} commits in 5 s");
    eprintln!("partial partition: {n} commits in 5 s, slowest {slowest:?}");
}
