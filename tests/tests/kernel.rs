//! End-to-end tests against a real kernel with IPVS. `cargo xtask test` builds
//! them on the host and runs them all in one VM boot (or on the host when its
//! kernel has IPVS); a plain `cargo test` skips them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use lab::scenario::{director_status, http_tally, wait_for, NatService};
use lab::watch::OwnerWatch;
use lab::{Host, LabEnv, LabGuard, LabSpec};

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env
}

/// The template of every end-to-end test: the lab carries real IPVS traffic.
/// One director balances a VIP round robin over two nodes' NodePorts with
/// masquerade (DESIGN.md, the one-arm NAT data path); 100 requests from the
/// client, each on a new connection, split evenly.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn ipvs_round_robin_splits_client_requests_between_two_nodes() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("k-rr-"), env()).expect("lab up");
    let vip = lab::topology::vip_v4(0).unwrap();
    NatService {
        director: Host::director(1),
        vip,
        port: 80,
        scheduler: "rr".into(),
        nodes: vec![Host::node(1), Host::node(2)],
    }
    .program(&lab)
    .expect("programming IPVS with ipvsadm");

    let tally = http_tally(&lab, "client", &format!("{vip}:80"), 100).expect("client requests");
    let table = lab
        .exec("d1", &["ipvsadm", "-Ln", "--stats"])
        .unwrap_or_default();
    assert_eq!(tally.failed, 0, "{tally:?}\n{table}");
    let (n1, n2) = (tally.from("n1"), tally.from("n2"));
    assert_eq!(n1 + n2, 100, "{tally:?}");
    assert!(
        (45..=55).contains(&n1),
        "round robin gave n1 {n1} and n2 {n2}\n{table}"
    );
    // The kernel's own counters agree that IPVS, not something else, carried
    // it. They are summed by the kernel's rate estimator every 2 s, so poll.
    let mut conns = 0;
    let mut table = String::new();
    for _ in 0..50 {
        table = lab
            .exec("d1", &["ipvsadm", "-Ln", "--stats"])
            .unwrap_or_default();
        conns = service_conns(&table, &format!("{vip}:80"));
        if conns >= 100 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(conns, 100, "IPVS connection counter\n{table}");
    // The VIP is held without the kernel answering ARP for it.
    let arp = lab
        .exec("client", &["ip", "neigh", "show", &vip.to_string()])
        .unwrap();
    assert!(arp.contains("PERMANENT"), "{arp}");
    lab.down().expect("lab down");
}

/// The `Conns` column of a service line in `ipvsadm -Ln --stats`.
fn service_conns(table: &str, service: &str) -> u64 {
    table
        .lines()
        .find(|l| l.trim_start().starts_with("TCP") && l.contains(service))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(0)
}

/// The owner of the lab's VIP, if every one of `hosts` agrees on it.
fn agreed_owner(lab: &LabGuard, hosts: &[Host]) -> Option<(String, u64)> {
    lab::scenario::agreed_owner(lab, hosts, "10.10.0.200".parse().unwrap())
}

/// The agreed owner once every one of `hosts` also holds its lease.
fn settled(lab: &LabGuard, hosts: &[Host]) -> Option<(String, u64)> {
    let owner = agreed_owner(lab, hosts)?;
    hosts
        .iter()
        .all(|h| director_status(lab, h).is_some_and(|s| s["lease"]["held"] == true))
        .then_some(owner)
}

/// The daemon end to end in the real kernel: three `director run` in the lab
/// program the lab's service into IPVS on every director (hot standby),
/// agree on one owner, and move it when the owner's host dies or its process
/// is killed; a killed director's IPVS table stays (nothing is flushed).
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn directors_program_every_service_and_move_the_owner_on_death() {
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-dir-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    for h in &all {
        wait_for("IPVS hot standby", 120, || {
            let t = lab.exec(&h.name(), &["ipvsadm", "-Ln"]).ok()?;
            (t.contains("TCP  10.10.0.200:80 rr")
                && t.contains("10.10.0.21:30080")
                && t.contains("10.10.0.22:30080"))
            .then_some(())
        });
    }
    let (owner, epoch) = wait_for("an agreed owner", 120, || agreed_owner(&lab, &all));
    assert!(epoch >= 1);

    // Host death of the owner: the survivors agree on a new owner.
    lab.kill_host(&owner).unwrap();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    let (_moved_to, epoch2) = wait_for("a new owner after host death", 120, || {
        agreed_owner(&lab, &survivors).filter(|(o, _)| *o != owner)
    });
    assert!(epoch2 > epoch, "a move raises the epoch");
    // The dead host's IPVS table was not flushed by anyone.
    let dead = lab.exec(&owner, &["ipvsadm", "-Ln"]).unwrap();
    assert!(dead.contains("TCP  10.10.0.200:80 rr"), "{dead}");

    // It comes back and rejoins; then process death of the current owner.
    lab.start_host(&owner).unwrap();
    // All three agree again (the owner is whoever they agree on now).
    let (next, epoch_now) = wait_for("the old owner to rejoin", 120, || {
        agreed_owner(&lab, &all).filter(|(_, e)| *e >= epoch2)
    });
    lab.crash(&next).unwrap();
    let others: Vec<Host> = all.iter().filter(|h| h.name() != next).cloned().collect();
    let (third, epoch3) = wait_for("a new owner after process death", 120, || {
        agreed_owner(&lab, &others).filter(|(o, _)| *o != next)
    });
    assert_ne!(third, next);
    assert!(epoch3 > epoch_now, "a move raises the epoch");
    let kept = lab.exec(&next, &["ipvsadm", "-Ln"]).unwrap();
    assert!(
        kept.contains("TCP  10.10.0.200:80 rr"),
        "a killed director's IPVS stays: {kept}"
    );
    lab.down().expect("lab down");
}

/// Client traffic through the lab's VIP, held by the elected owner (its ARP
/// answered by the director process, SNAT and IPVS on the director), and
/// after the owner's host dies, through the survivor that took the VIP: the
/// client's neighbour entry follows to the survivor's MAC.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn client_traffic_through_the_vip_follows_the_owner() {
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-vip-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("an agreed owner", 120, || agreed_owner(&lab, &all));
    // The VIP answers: every request served, split over both nodes.
    let tally = wait_for("the VIP to answer", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.200:80", 20).ok()?;
        (t.failed == 0).then_some(t)
    });
    assert_eq!(tally.from("n1") + tally.from("n2"), 20, "{tally:?}");
    let tally = http_tally(&lab, "client", "10.10.0.200:80", 100).unwrap();
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!((40..=60).contains(&tally.from("n1")), "{tally:?}");
    // The client's neighbour entry points at the owner (read again: the
    // owner is what the directors agree on now).
    let (owner, _) = wait_for("an agreed owner", 120, || agreed_owner(&lab, &all));
    let owner_host = Host::parse(&owner).unwrap();
    let neigh = lab
        .exec("client", &["ip", "neigh", "show", "10.10.0.200"])
        .unwrap();
    assert!(neigh.contains(&owner_host.mac_string()), "{neigh}");

    // The owner's host dies.
    lab.kill_host(&owner).unwrap();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    let (next, _) = wait_for("a new owner", 120, || {
        agreed_owner(&lab, &survivors).filter(|(o, _)| *o != owner)
    });
    let next_host = Host::parse(&next).unwrap();
    wait_for("traffic through the new owner", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.200:80", 10).ok()?;
        (t.failed == 0).then_some(())
    });
    let neigh = lab
        .exec("client", &["ip", "neigh", "show", "10.10.0.200"])
        .unwrap();
    assert!(neigh.contains(&next_host.mac_string()), "{neigh}");
    lab.down().expect("lab down");
}

/// Partitions never give a VIP two owners. An independent watch samples
/// every director's local routes and asks for the VIP by ARP from the client
/// every 10 ms while the owner and then the leader are cut off both ways and
/// one way, each for longer than a lease, then healed. At no instant do two
/// directors hold the VIP or answer for it. The report names, per cut, the
/// prompt elections the directors logged and whether the owner's lease
/// lapsed (docs/fencing.md, "Losing the leader", says what this lab shows).
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn partitions_of_owner_and_leader_never_give_two_owners() {
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-part-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let names: Vec<String> = all.iter().map(Host::name).collect();
    let vip = "10.10.0.200".parse().unwrap();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    let watch = OwnerWatch::start(&lab, vip, &names, 10).expect("starting the watch");
    #[derive(Debug, Clone, Copy)]
    enum Cut {
        BothWays,
        From,
        To,
    }
    let scenarios = [
        ("owner", Cut::BothWays),
        ("owner", Cut::From),
        ("owner", Cut::To),
        ("leader", Cut::BothWays),
        ("leader", Cut::From),
    ];
    let mut log = Vec::new();
    for (who, cut) in scenarios {
        let (owner, _) = wait_for("a settled owner", 120, || settled(&lab, &all));
        let leader = wait_for("a leader", 60, || {
            director_status(&lab, &all[0])?["cluster"]["leader_name"]
                .as_str()
                .map(str::to_string)
        });
        let target = if who == "owner" {
            owner.clone()
        } else {
            leader.clone()
        };
        // Where each director's log stands before the cut.
        let logs_before: Vec<usize> = all
            .iter()
            .map(|h| std::fs::read_to_string(lab.director_log(h)).map_or(0, |l| l.len()))
            .collect();
        let others: Vec<&str> = names
            .iter()
            .filter(|n| **n != target)
            .map(String::as_str)
            .collect();
        match cut {
            // At one instant, as a host that dies.
            Cut::BothWays => lab.isolate(&target, &others).unwrap(),
            Cut::From | Cut::To => {
                for other in &others {
                    if matches!(cut, Cut::From) {
                        lab.partition(&target, other, true)
                    } else {
                        lab.partition(other, &target, true)
                    }
                    .unwrap();
                }
            }
        }
        // Longer than a lease plus margin of the lab's timing (3.3 s).
        std::thread::sleep(std::time::Duration::from_secs(8));
        let during = agreed_owner(&lab, &all);
        lab.heal().unwrap();
        // What each director logged during the cut: the prompt elections,
        // and whether the owner's lease lapsed.
        let mut asked = Vec::new();
        let mut owner_lapsed = false;
        for (h, from) in all.iter().zip(&logs_before) {
            let text = std::fs::read_to_string(lab.director_log(h)).unwrap_or_default();
            let new = text.get(*from..).unwrap_or("");
            asked.extend(
                new.lines()
                    .filter(|l| l.contains("asking for votes"))
                    .map(|l| format!("{}: {}", h.name(), l.trim())),
            );
            if h.name() == owner && new.contains("ownership lease lapsed") {
                owner_lapsed = true;
            }
        }
        log.push(format!(
            "{who} {target} (owner {owner}, leader {leader}) cut {cut:?}: agreed during: {during:?}; \
             owner's lease lapsed: {owner_lapsed}; prompt elections: {asked:?}"
        ));
    }
    wait_for("a settled owner after healing", 120, || settled(&lab, &all));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let seen = watch.stop();
    let report = format!("{}\n{}", log.join("\n"), seen.summary());
    eprintln!("{report}");
    assert_eq!(
        seen.two_holders_ms(),
        0.0,
        "two directors held the VIP: {report}"
    );
    assert!(
        seen.double_answers().is_empty(),
        "two MACs answered ARP for the VIP: {report}"
    );
    // The watch saw something: the VIP was answered, and held, most of the time.
    let answered = seen.answered_by_one();
    assert!(
        answered * 2 > seen.probes.len(),
        "the VIP went unanswered most of the time: {report}"
    );
    assert!(
        seen.held.values().any(|iv| !iv.is_empty()),
        "no director was ever seen holding the VIP: {report}"
    );
    lab.down().expect("lab down");
}

/// Restarts and planned handovers cost no request: under a client loop
/// through the VIP, a director that does not own it is killed and started
/// again (it rejoins, the VIP stays); `director drain` on the owner moves the
/// VIP away (and the drained director stays out of service), then SIGTERM of
/// the new owner hands it over again before that process exits. Every
/// request of the loop is answered: a drain lets the open connections finish
/// before the handover and turns new ones away meanwhile.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn drain_and_sigterm_hand_over_without_a_failed_request() {
    use std::time::Duration;
    let mut env = env();
    let director = lab::lab::workspace_binary("director").expect("the director binary");
    env.director = Some(director.clone());
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-drain-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let (owner, _) = wait_for("a settled owner", 120, || settled(&lab, &all));
    wait_for("the VIP to answer", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.200:80", 5).ok()?;
        (t.failed == 0).then_some(())
    });
    let client =
        lab::scenario::ClientLoop::start(&lab, "client", "10.10.0.200:80", Duration::from_secs(45))
            .unwrap();
    // When each phase began and ended (ms after the loop started), to read
    // the loop's failure times against.
    let t0 = std::time::Instant::now();
    let mut phases: Vec<(&str, u128)> = Vec::new();
    std::thread::sleep(Duration::from_secs(2));

    // Restart a director that does not own the VIP (SIGKILL, then start):
    // it rejoins, and the traffic through the VIP does not notice.
    let bystander = all.iter().find(|h| h.name() != owner).unwrap().clone();
    lab.crash(&bystander.name()).unwrap();
    lab.start_director(&bystander).unwrap();
    let (still, _) = wait_for("the restarted director to rejoin", 120, || {
        settled(&lab, &all)
    });
    assert_eq!(still, owner, "restarting {bystander} moved the VIP");

    // `director drain` on the owner.
    let owner_host = Host::parse(&owner).unwrap();
    phases.push(("drain", t0.elapsed().as_millis()));
    let out = std::process::Command::new(&director)
        .args(["drain", "--timeout", "30", "--socket"])
        .arg(lab.admin_socket(&owner_host))
        .output()
        .unwrap();
    phases.push(("drained", t0.elapsed().as_millis()));
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "director drain failed: {said}");
    assert!(said.contains("10.10.0.200 -> "), "{said}");
    if !said.contains("open connections: 0 cut") {
        let log = std::fs::read_to_string(lab.director_log(&owner_host)).unwrap_or_default();
        panic!("the drain cut connections: {said}\n{owner}'s log:\n{log}");
    }
    let (second, _) = wait_for("a new owner after the drain", 60, || {
        agreed_owner(&lab, &all).filter(|(o, _)| *o != owner)
    });
    let st = director_status(&lab, &owner_host).unwrap();
    let me = st["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == owner.as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["draining"], true, "{st}");
    std::thread::sleep(Duration::from_secs(3));

    // SIGTERM of the new owner: it drains before exiting.
    phases.push(("sigterm", t0.elapsed().as_millis()));
    lab.terminate(&second, Duration::from_secs(20)).unwrap();
    phases.push(("exited", t0.elapsed().as_millis()));
    let others: Vec<Host> = all.iter().filter(|h| h.name() != second).cloned().collect();
    let (third, _) = wait_for("an owner after the SIGTERM", 60, || {
        agreed_owner(&lab, &others).filter(|(o, _)| *o != second)
    });
    assert_ne!(third, owner, "the drained director stays out of service");

    let tally = client.finish().unwrap();
    // Requests that waited for a retransmitted SYN, against the phases.
    eprintln!(
        "slow requests [at ms, took ms]: {:?}; phases (ms): {phases:?}",
        tally.slow_at_ms
    );
    if tally.failed > 0 {
        for h in &all {
            let log = std::fs::read_to_string(lab.director_log(h)).unwrap_or_default();
            eprintln!("--- {h}'s log:\n{log}");
        }
    }
    // Both handovers let the open connections finish first and turn new
    // ones away meanwhile (the client's SYN is retried): nothing fails.
    assert_eq!(
        tally.failed, 0,
        "requests failed during drain ({owner} -> {second}) and SIGTERM ({second} -> {third}): {tally:?}; phases (ms): {phases:?}"
    );
    assert!(tally.requests > 50, "{tally:?}");
    assert_eq!(
        tally.from("n1") + tally.from("n2"),
        tally.requests,
        "{tally:?}"
    );
    lab.down().expect("lab down");
}

/// SIGHUP reloads the configuration: a service added to every director's
/// file is programmed into every IPVS table; a broken file is refused with
/// its file, line and field in the log, and the running configuration (and
/// everything programmed) stays.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn sighup_reloads_the_configuration_and_refuses_a_bad_one() {
    use nix::sys::signal::Signal;
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-hup-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    let extra = "  - name: api\n    vip: 10.10.0.201\n    scheduler: wrr\n    ports:\n      - {port: 8080, protocol: tcp}\n    backends: [\"10.10.0.21:30081\"]\n";
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text + extra).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    for h in &all {
        wait_for("the reloaded service in IPVS", 60, || {
            let t = lab.exec(&h.name(), &["ipvsadm", "-Ln"]).ok()?;
            (t.contains("TCP  10.10.0.201:8080 wrr") && t.contains("10.10.0.21:30081"))
                .then_some(())
        });
    }
    // A broken file: refused, named, and nothing lost.
    let d1 = Host::director(1);
    let path = lab.director_config_path(&d1);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("scheduler: wrr", "scheduler: nope")).unwrap();
    lab.signal_director("d1", Signal::SIGHUP).unwrap();
    let log = lab.director_log(&d1);
    let said = wait_for("the refusal in the log", 30, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("reload refused").then_some(text)
    });
    assert!(
        said.contains(&format!("{}:", path.display())) && said.contains("scheduler"),
        "the refusal names the file, line and field: {said}"
    );
    assert!(
        lab.director_running("d1"),
        "a bad reload must not stop the daemon"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t = lab.exec("d1", &["ipvsadm", "-Ln"]).unwrap();
    assert!(t.contains("TCP  10.10.0.201:8080 wrr"), "{t}");
    assert!(director_status(&lab, &d1).is_some(), "d1 still answers");
    lab.down().expect("lab down");
}

/// `labnet tcp-tally` in the client.
fn tcp_tally(lab: &LabGuard, target: &str, count: u32, hold_ms: u64) -> lab::scenario::HttpTally {
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    let out = lab
        .exec(
            "client",
            &[
                &labnet,
                "tcp-tally",
                target,
                "--count",
                &count.to_string(),
                "--hold-ms",
                &hold_ms.to_string(),
            ],
        )
        .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// The schedulers do what operators choose them for, through the daemon: a
/// reload adds an `sh` and an `lc` service next to the lab's `rr` one.
/// rr splits evenly; sh keeps the client on one node; lc sends new
/// connections to the node without a long-lived one.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn schedulers_rr_sh_and_lc_balance_as_chosen() {
    use nix::sys::signal::Signal;
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-sched-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    let extra = "  - name: sticky\n    vip: 10.10.0.202\n    scheduler: sh\n    ports:\n      - {port: 80, protocol: tcp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n  - name: least\n    vip: 10.10.0.203\n    scheduler: lc\n    ports:\n      - {port: 81, protocol: tcp}\n    backends: [\"10.10.0.21:30081\", \"10.10.0.22:30081\"]\n";
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text + extra).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    for target in ["10.10.0.202:80", "10.10.0.203:81"] {
        wait_for("the new services to answer", 120, || {
            let t = if target.ends_with(":81") {
                tcp_tally(&lab, target, 1, 0)
            } else {
                http_tally(&lab, "client", target, 1).ok()?
            };
            (t.failed == 0).then_some(())
        });
    }
    // rr: even.
    let rr = http_tally(&lab, "client", "10.10.0.200:80", 60).unwrap();
    assert_eq!(rr.failed, 0, "{rr:?}");
    assert_eq!((rr.from("n1"), rr.from("n2")), (30, 30), "rr: {rr:?}");
    // sh: one client, one node.
    let sh = http_tally(&lab, "client", "10.10.0.202:80", 40).unwrap();
    assert_eq!(sh.failed, 0, "{sh:?}");
    assert_eq!(
        sh.served.len(),
        1,
        "sh spread one client over nodes: {sh:?}"
    );
    // lc: a connection held open on one node; new ones go to the other.
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    let mut hold = lab.command("client", &labnet).unwrap();
    hold.args([
        "tcp-tally",
        "10.10.0.203:81",
        "--count",
        "1",
        "--hold-ms",
        "6000",
    ])
    .stdout(std::process::Stdio::piped());
    let holder = hold.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let lc = tcp_tally(&lab, "10.10.0.203:81", 10, 0);
    let held: lab::scenario::HttpTally =
        serde_json::from_slice(&holder.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(held.failed, 0, "{held:?}");
    let busy = held.served.keys().next().unwrap().clone();
    assert_eq!(lc.failed, 0, "{lc:?}");
    assert_eq!(
        lc.from(&busy),
        0,
        "lc sent new connections to the busy node {busy}: {lc:?}"
    );
    lab.down().expect("lab down");
}

/// IPv6 end to end: the lab's `web6` service at fd10:10::200 is answered
/// through IPVS (the owner answers neighbour solicitations for it, nothing
/// else does); when its owner's host dies a survivor takes it, announces it
/// with unsolicited neighbour advertisements, and the client's neighbour
/// entry follows to the survivor's MAC.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn ipv6_traffic_through_the_vip_follows_the_owner() {
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-v6-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let vip: std::net::IpAddr = "fd10:10::200".parse().unwrap();
    let target = "[fd10:10::200]:80";
    let owner_of = |lab: &LabGuard, hosts: &[Host]| lab::scenario::agreed_owner(lab, hosts, vip);
    wait_for("an agreed owner of the IPv6 VIP", 120, || {
        owner_of(&lab, &all)
    });
    let tally = wait_for("the IPv6 VIP to answer", 120, || {
        let t = http_tally(&lab, "client", target, 20).ok()?;
        (t.failed == 0).then_some(t)
    });
    assert_eq!(tally.from("n1") + tally.from("n2"), 20, "{tally:?}");
    assert!(tally.from("n1") >= 5 && tally.from("n2") >= 5, "{tally:?}");
    let (owner, _) = wait_for("an agreed owner", 120, || owner_of(&lab, &all));
    let owner_host = Host::parse(&owner).unwrap();
    let neigh = lab
        .exec("client", &["ip", "-6", "neigh", "show", "fd10:10::200"])
        .unwrap();
    assert!(neigh.contains(&owner_host.mac_string()), "{neigh}");

    lab.kill_host(&owner).unwrap();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    let (next, _) = wait_for("a new owner of the IPv6 VIP", 120, || {
        owner_of(&lab, &survivors).filter(|(o, _)| *o != owner)
    });
    let next_host = Host::parse(&next).unwrap();
    wait_for("IPv6 traffic through the new owner", 120, || {
        let t = http_tally(&lab, "client", target, 10).ok()?;
        (t.failed == 0).then_some(())
    });
    let neigh = lab
        .exec("client", &["ip", "-6", "neigh", "show", "fd10:10::200"])
        .unwrap();
    assert!(neigh.contains(&next_host.mac_string()), "{neigh}");
    lab.down().expect("lab down");
}

/// Scheduler flags and persistence reach the kernel (`ipvsadm -Ln` shows
/// `sh-port` and `persistent 300`), and the IPVS reconciler repairs a
/// managed service changed behind its back at its next resync, while a
/// service that is not the cluster's is never touched.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn persistence_flags_reach_the_kernel_and_drift_is_repaired() {
    use nix::sys::signal::Signal;
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-drift-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    let extra = "  - name: sticky\n    vip: 10.10.0.204\n    scheduler: sh\n    scheduler_flags: [sh-port]\n    persistence_s: 300\n    persistence_netmask: 24\n    ports:\n      - {port: 82, protocol: tcp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n";
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text + extra).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    for h in &all {
        let line = wait_for("the persistent service in IPVS", 60, || {
            let t = lab.exec(&h.name(), &["ipvsadm", "-Ln"]).ok()?;
            t.lines()
                .find(|l| l.starts_with("TCP  10.10.0.204:82"))
                .map(str::to_string)
        });
        assert!(line.contains("sh"), "{h}: {line}");
        assert!(line.contains("sh-port"), "{h}: {line}");
        assert!(line.contains("persistent 300"), "{h}: {line}");
        assert!(line.contains("mask 255.255.255.0"), "{h}: {line}");
    }
    // Behind the director's back on d1: a managed backend deleted, a
    // managed weight changed, and a service that is not the cluster's.
    let run = |argv: &[&str]| lab.exec("d1", argv).unwrap();
    run(&[
        "ipvsadm",
        "-d",
        "-t",
        "10.10.0.200:80",
        "-r",
        "10.10.0.21:30080",
    ]);
    run(&[
        "ipvsadm",
        "-e",
        "-t",
        "10.10.0.204:82",
        "-r",
        "10.10.0.22:30080",
        "-m",
        "-w",
        "7",
    ]);
    run(&["ipvsadm", "-A", "-t", "192.0.2.9:99", "-s", "rr"]);
    // And its SNAT table (nftables), and a table that is not its own.
    run(&["nft", "list", "table", "inet", "director_snat"]);
    run(&["nft", "delete", "table", "inet", "director_snat"]);
    run(&["nft", "add", "table", "inet", "someone_else"]);
    // Repaired within a resync interval (30 s by default).
    wait_for("the repair", 75, || {
        lab.exec("d1", &["nft", "list", "table", "inet", "director_snat"])
            .ok()?;
        let t = lab.exec("d1", &["ipvsadm", "-Ln"]).ok()?;
        let web = t.split("TCP  10.10.0.200:80").nth(1)?;
        let web = web.split("TCP ").next()?;
        let sticky = t.split("TCP  10.10.0.204:82").nth(1)?;
        let sticky = sticky.split("TCP ").next()?;
        (web.contains("10.10.0.21:30080") && !sticky.contains(" 7 ")).then_some(())
    });
    let t = lab.exec("d1", &["ipvsadm", "-Ln"]).unwrap();
    assert!(
        t.contains("TCP  192.0.2.9:99 rr"),
        "an unmanaged service was touched: {t}"
    );
    let status = director_status(&lab, &Host::director(1)).expect("d1 answers");
    let ipvs = status["reconcilers"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["name"] == "ipvs"))
        .cloned()
        .expect("the ipvs reconciler in status");
    assert!(ipvs["drift_repairs"].as_u64() >= Some(1), "{ipvs}");
    let nft = status["reconcilers"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["name"] == "nft"))
        .cloned()
        .expect("the nft reconciler in status");
    assert!(nft["drift_repairs"].as_u64() >= Some(1), "{nft}");
    lab.exec("d1", &["nft", "list", "table", "inet", "someone_else"])
        .expect("a table that is not the director's is left alone");
    lab.exec("d1", &["nft", "delete", "table", "inet", "someone_else"])
        .unwrap();
    let log = std::fs::read_to_string(lab.director_log(&Host::director(1))).unwrap();
    assert!(
        log.contains("behind the director's back"),
        "the repair is logged: {log}"
    );
    lab.exec("d1", &["ipvsadm", "-D", "-t", "192.0.2.9:99"])
        .unwrap();
    lab.down().expect("lab down");
}

/// A director stopped (SIGSTOP) right after its first announcement of a VIP
/// it was taking, kept stopped past its lease while the VIP moves on, and
/// resumed, sends nothing more for it: every packet of a burst asks the
/// hold rule first. Watched from the client with a raw listener (ARP whose
/// sender is the VIP, neighbour advertisements for the IPv6 VIP).
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_director_frozen_while_taking_a_vip_sends_nothing_for_it_after_resuming() {
    use nix::sys::signal::Signal;
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let labnet = env.labnet.to_string_lossy().into_owned();
    let lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-frz-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let (owner, _) = wait_for("a settled owner", 120, || settled(&lab, &all));
    // Long bursts (20 packets, 300 ms apart), so that the freeze lands
    // in the middle of one.
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        let long = text.replace(
            "announce: {count: 5, interval_ms: 200",
            "announce: {count: 20, interval_ms: 300",
        );
        assert_ne!(text, long, "the lab's announce line changed");
        std::fs::write(&path, long).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let heard: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let mut listeners = Vec::new();
    for vip in ["10.10.0.200", "fd10:10::200"] {
        let mut cmd = lab.command("client", &labnet).unwrap();
        cmd.args(["neigh-listen", vip])
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let heard = heard.clone();
        let vip = vip.to_string();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 3 && (f[0] == "arp" || f[0] == "na") {
                    let t = lab::watch::monotonic_ns();
                    heard
                        .lock()
                        .unwrap()
                        .push((vip.clone(), f[2].to_string(), t));
                }
            }
        });
        listeners.push(child);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mac_of = |h: &Host| h.mac_string().to_lowercase();
    let host_of = |mac: &str| all.iter().find(|h| mac_of(h) == mac).cloned();
    // The owner drains: the VIP moves to another director, which announces.
    let drain = std::process::Command::new(lab.env().director.clone().unwrap())
        .args(["drain", "--timeout", "20", "--socket"])
        .arg(lab.admin_socket(&Host::parse(&owner).unwrap()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let new_owner = wait_for("the new owner's first announcement", 30, || {
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _, _)| v == "10.10.0.200")
            .filter_map(|(_, mac, _)| host_of(mac))
            .find(|h| h.name() != owner)
    });
    lab.signal_director(&new_owner.name(), Signal::SIGSTOP)
        .unwrap();
    let frozen_at = lab::watch::monotonic_ns();
    // Past its lease (3 s in the lab) the VIP moves on to the third one.
    let third = wait_for("the VIP taken by the third director", 60, || {
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _, t)| v == "10.10.0.200" && *t > frozen_at)
            .filter_map(|(_, mac, _)| host_of(mac))
            .find(|h| h.name() != owner && *h != new_owner)
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let resumed_at = lab::watch::monotonic_ns();
    lab.signal_director(&new_owner.name(), Signal::SIGCONT)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    let _ = drain.wait_with_output();
    for mut l in listeners {
        let _ = l.kill();
        let _ = l.wait();
    }
    let heard = heard.lock().unwrap().clone();
    let frozen_mac = mac_of(&new_owner);
    let before: usize = heard
        .iter()
        .filter(|(v, mac, t)| v == "10.10.0.200" && *mac == frozen_mac && *t <= frozen_at)
        .count();
    let after: Vec<&(String, String, u64)> = heard
        .iter()
        .filter(|(_, mac, t)| *mac == frozen_mac && *t > resumed_at)
        .collect();
    eprintln!(
        "{new_owner} announced {before} time(s) before the freeze; {third} took over; after resuming {new_owner} sent {} packet(s) for the VIPs",
        after.len()
    );
    assert!(
        (1..20).contains(&before),
        "the freeze landed in the burst: {before}"
    );
    assert!(
        after.is_empty(),
        "{new_owner} spoke for a VIP it no longer holds after resuming: {after:?}"
    );
    lab.down().expect("lab down");
}

/// With every CPU of the VM kept busy (one spinning process per CPU) for
/// HOG_S seconds, three directors at the daemon's default timing (lease
/// 300 ms, renew 40 ms) keep their leases: the VIP keeps its owner and
/// epoch, and no director logs a lapsed lease.
///
/// It does not hold in the emulated lab VM (docs/fencing.md, "CPU
/// starvation"), so `cargo xtask test` leaves it out: it runs only when
/// HOG_S is set, e.g. `cargo xtask vm -- env HOG_S=60 KERNEL_TEST_BINARY
/// --ignored --exact a_cpu_hog_moves_no_vip_at_the_default_timing`.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_cpu_hog_moves_no_vip_at_the_default_timing() {
    let Some(hog_s) = std::env::var("HOG_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        eprintln!("HOG_S is not set: the CPU-hog check is not run");
        return;
    };
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let spec = LabSpec::new(3, 2)
        .with_prefix("k-hog-")
        .with_timing(lab::configs::TimingProfile::Default);
    let lab = LabGuard::up(spec, env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let before = wait_for("a settled owner", 120, || settled(&lab, &all));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut hogs: Vec<std::process::Child> = (0..cpus)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("a CPU hog")
        })
        .collect();
    let start = std::time::Instant::now();
    let mut moved = None;
    while start.elapsed() < std::time::Duration::from_secs(hog_s) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Some(now) = agreed_owner(&lab, &all) {
            if now != before {
                moved = Some((start.elapsed(), now));
                break;
            }
        }
    }
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let lapsed: Vec<String> = all
        .iter()
        .filter(|h| {
            std::fs::read_to_string(lab.director_log(h))
                .is_ok_and(|l| l.contains("ownership lease lapsed"))
        })
        .map(|h| h.name())
        .collect();
    lab.down().expect("lab down");
    assert_eq!(
        moved, None,
        "{cpus} CPU hogs: the VIP moved from {before:?}"
    );
    assert!(
        lapsed.is_empty(),
        "{cpus} CPU hogs: leases lapsed on {lapsed:?}"
    );
}

/// `kubectl` against the lab's API server; None when it fails.
fn kubectl(lab: &LabGuard, args: &[&str]) -> Option<String> {
    lab.kubectl(args).ok()
}

/// Every director's `ipvsadm -Ln`.
fn tables(lab: &LabGuard, hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| lab.exec(&h.name(), &["ipvsadm", "-Ln"]).unwrap_or_default())
        .collect()
}

/// Kubernetes end to end (docs/kubernetes.md): with the lab's API server, a
/// LoadBalancer Service created with the real kubectl gets the pool's next
/// address in its status, every director programs it, and the client
/// reaches the node hosts through it; its owner's host dies and it still
/// answers; with the API server stopped its owner's host dies again and it
/// still answers, and the address never changes; deleted, it is withdrawn
/// from every director's IPVS and released before the object goes.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_kubernetes_service_gets_a_pool_address_and_survives_owner_and_api_loss() {
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    env.kube_double = lab::lab::workspace_binary("kube-double").expect("the kube-double binary");
    let mut lab = LabGuard::up(
        LabSpec::new(3, 2).with_prefix("k-kube-").with_kube(true),
        env,
    )
    .expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("an agreed owner of the static VIP", 120, || {
        agreed_owner(&lab, &all)
    });
    let nodes = kubectl(&lab, &["get", "nodes", "-o", "name"]).unwrap();
    assert!(
        nodes.contains("node/n1") && nodes.contains("node/n2"),
        "{nodes}"
    );

    let manifest = std::env::temp_dir().join("k-kube-web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n\
         spec:\n  type: LoadBalancer\n  loadBalancerClass: director.io/ipvs\n  selector:\n    app: web\n\
         \x20 ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: 30080\n",
    )
    .unwrap();
    let manifest_path = manifest.to_str().unwrap();
    kubectl(&lab, &["create", "-f", manifest_path]).expect("kubectl create");
    let ingress = |lab: &LabGuard| {
        kubectl(
            lab,
            &["get", "service", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}/{.status.loadBalancer.ingress[0].ipMode}"],
        )
        .filter(|s| !s.starts_with('/'))
    };
    // The lab's static service has the pool's first address; this gets the next.
    let got = wait_for("the Service's status", 120, || ingress(&lab));
    assert_eq!(got, "10.10.0.201/Proxy");
    let finalizers = kubectl(
        &lab,
        &[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
    )
    .unwrap();
    assert!(
        finalizers.contains("director.io/load-balancer-cleanup"),
        "{finalizers}"
    );
    wait_for("every director to program the Service", 120, || {
        tables(&lab, &all)
            .iter()
            .all(|t| {
                t.contains("TCP  10.10.0.201:80 rr")
                    && t.contains("10.10.0.21:30080")
                    && t.contains("10.10.0.22:30080")
            })
            .then_some(())
    });
    let vip: std::net::IpAddr = "10.10.0.201".parse().unwrap();
    let owner_of = |lab: &LabGuard, hosts: &[Host]| lab::scenario::agreed_owner(lab, hosts, vip);
    let tally = wait_for("the Service's VIP to answer", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.201:80", 20).ok()?;
        (t.failed == 0).then_some(t)
    });
    assert_eq!(tally.from("n1") + tally.from("n2"), 20, "{tally:?}");
    let events = kubectl(&lab, &["describe", "service", "web"]).unwrap();
    assert!(events.contains("IPAllocated"), "{events}");

    // The owner's host dies: the VIP answers from a survivor.
    let (owner, _) = wait_for("an owner of the Service's VIP", 120, || {
        owner_of(&lab, &all)
    });
    lab.kill_host(&owner).unwrap();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    wait_for("a new owner", 120, || {
        owner_of(&lab, &survivors).filter(|(o, _)| *o != owner)
    });
    wait_for("the VIP to answer from the new owner", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.201:80", 10).ok()?;
        (t.failed == 0).then_some(())
    });
    lab.start_host(&owner).unwrap();
    wait_for("three directors again", 120, || {
        all.iter()
            .all(|h| director_status(&lab, h).is_some_and(|s| s["lease"]["held"] == true))
            .then_some(())
    });

    // The API server goes away for a minute: nothing is removed, and
    // failover still works meanwhile.
    lab.stop_api().unwrap();
    let api_down = std::time::Instant::now();
    let (owner, _) = wait_for("an owner of the Service's VIP", 120, || {
        owner_of(&lab, &all)
    });
    let status = director_status(&lab, &all[0]).unwrap();
    wait_for("status to say the API is unreachable", 60, || {
        let s = director_status(&lab, &all[0])?;
        (s["kubernetes"]["api_reachable"] == false).then_some(())
    });
    assert!(
        status["kubernetes"]["services"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{status}"
    );
    lab.kill_host(&owner).unwrap();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    wait_for("a new owner without the API", 120, || {
        owner_of(&lab, &survivors).filter(|(o, _)| *o != owner)
    });
    wait_for("the VIP to answer without the API", 120, || {
        let t = http_tally(&lab, "client", "10.10.0.201:80", 10).ok()?;
        (t.failed == 0).then_some(())
    });
    for t in tables(&lab, &survivors) {
        assert!(
            t.contains("TCP  10.10.0.201:80 rr"),
            "nothing is removed while the API is away: {t}"
        );
    }
    lab.start_host(&owner).unwrap();
    if let Some(left) = std::time::Duration::from_secs(60).checked_sub(api_down.elapsed()) {
        std::thread::sleep(left);
    }
    for t in tables(&lab, &survivors) {
        assert!(
            t.contains("TCP  10.10.0.201:80 rr"),
            "after a minute without the API: {t}"
        );
    }
    lab.start_api().unwrap();
    assert_eq!(
        wait_for("the Service's status", 60, || ingress(&lab)),
        "10.10.0.201/Proxy",
        "the address never changes"
    );

    // Deleted: withdrawn from every director, then the object goes.
    kubectl(&lab, &["delete", "service", "web", "--wait=false"]).expect("kubectl delete");
    wait_for("the Service to leave every director's IPVS", 120, || {
        tables(&lab, &all)
            .iter()
            .all(|t| !t.contains("10.10.0.201:80"))
            .then_some(())
    });
    wait_for("the Service object to go", 60, || {
        let out = lab.kubectl(&["get", "service", "web"]);
        out.err()
            .filter(|e| e.to_string().contains("NotFound"))
            .map(|_| ())
    });
    let _ = std::fs::remove_file(&manifest);
    lab.down().expect("lab down");
}

/// The weight of `backend` under the kernel service whose `ipvsadm -Ln`
/// line starts with `service` on `host`; None when either is missing.
fn kernel_weight(lab: &LabGuard, host: &str, service: &str, backend: &str) -> Option<u32> {
    let t = lab.exec(host, &["ipvsadm", "-Ln"]).ok()?;
    let mut lines = t.lines().skip_while(|l| !l.starts_with(service)).skip(1);
    lines
        .by_ref()
        .take_while(|l| l.trim_start().starts_with("->"))
        .find(|l| l.split_whitespace().nth(1) == Some(backend))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
}

/// Waits until every director's kernel has `backend` of `service` at
/// `weight`; how long that took.
fn until_weight(
    lab: &LabGuard,
    hosts: &[Host],
    service: &str,
    backend: &str,
    weight: u32,
) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    wait_for(&format!("{backend} at weight {weight}"), 60, || {
        hosts
            .iter()
            .all(|h| kernel_weight(lab, &h.name(), service, backend) == Some(weight))
            .then_some(())
    });
    t0.elapsed()
}

/// Health checks in the kernel: a node's NodePort server stops, and on
/// every director its weight goes to 0 within fall x interval (+ the probe
/// timeout); a client loop through the VIP sees no failed request after
/// that; restarted, it is back within rise x interval. kube-proxy's
/// `/healthz` failing takes the node out of the services checked by it
/// (and only those).
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_stopped_node_drops_out_and_returns_as_its_health_check_says() {
    use nix::sys::signal::Signal;
    use std::time::Duration;
    let mut env = env();
    env.director = Some(lab::lab::workspace_binary("director").expect("the director binary"));
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-health-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    // interval 500 ms, timeout 300 ms, fall 2, rise 2, for every service;
    // a second service checked by kube-proxy's healthz.
    let (interval, timeout, fall, rise) = (500u64, 300u64, 2u64, 2u64);
    let defaults = format!(
        "defaults:\n  scheduler: rr\n  forwarding: nat\n  health: {{type: http, path: /, interval_ms: {interval}, timeout_ms: {timeout}, rise: {rise}, fall: {fall}}}\n"
    );
    let extra = "  - name: kp\n    vip: 10.10.0.205\n    health: {type: kube-proxy}\n    ports:\n      - {port: 81, protocol: tcp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n";
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("defaults:\n  scheduler: rr\n  forwarding: nat\n", &defaults);
        assert!(text.contains("health:"), "{text}");
        std::fs::write(&path, text + extra).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    const WEB: &str = "TCP  10.10.0.200:80";
    const KP: &str = "TCP  10.10.0.205:81";
    let n1 = "10.10.0.21:30080";
    let n2 = "10.10.0.22:30080";
    // Every backend up on every director, as status says.
    wait_for("every backend checked and up", 60, || {
        all.iter()
            .all(|h| {
                let Some(s) = director_status(&lab, h) else {
                    return false;
                };
                let svcs = s["services"].as_array().cloned().unwrap_or_default();
                let checked: Vec<&serde_json::Value> = svcs
                    .iter()
                    .filter(|x| {
                        x["service"] == "TCP 10.10.0.200:80" || x["service"] == "TCP 10.10.0.205:81"
                    })
                    .flat_map(|x| x["backends"].as_array().into_iter().flatten())
                    .collect();
                checked.len() == 4 && checked.iter().all(|b| b["health"] == "up")
            })
            .then_some(())
    });
    for h in &all {
        for (svc, b) in [(WEB, n1), (WEB, n2), (KP, n1), (KP, n2)] {
            assert_eq!(
                kernel_weight(&lab, &h.name(), svc, b),
                Some(1),
                "{h} {svc} {b}"
            );
        }
    }

    // What one look at the three kernels costs (the slowest of three):
    // `until_weight` notices a change up to one look and its 100 ms pause
    // after it happened.
    let look = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            for h in &all {
                let _ = kernel_weight(&lab, &h.name(), WEB, n1);
            }
            t.elapsed()
        })
        .max()
        .unwrap_or_default();
    // The slack: one look and its pause, and half a second for the IPVS pass
    // and scheduling under emulation.
    let slack = look + Duration::from_millis(600);
    eprintln!(
        "health: one look at the three kernels takes {} ms",
        look.as_millis()
    );

    // n1's servers stop while a client loops on the VIP.
    let t_loop = std::time::Instant::now();
    let client =
        lab::scenario::ClientLoop::start(&lab, "client", "10.10.0.200:80", Duration::from_secs(12))
            .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.stop_node("n1").unwrap();
    let stopped_at_ms = t_loop.elapsed().as_millis();
    let out = until_weight(&lab, &all, WEB, n1, 0);
    let zeroed_ms = u64::try_from(t_loop.elapsed().as_millis()).unwrap();
    let window = Duration::from_millis(fall * interval + timeout);
    eprintln!(
        "health: n1 stopped -> weight 0 on every director after {} ms (fall x interval + timeout = {} ms)",
        out.as_millis(),
        window.as_millis()
    );
    assert!(out <= window + slack, "took {out:?} (slack {slack:?})");
    let tally = client.finish().unwrap();
    eprintln!(
        "health: client loop: {} served, {} failed at {:?} ms (n1 stopped at {stopped_at_ms} ms, out at {zeroed_ms} ms)",
        tally.requests - tally.failed,
        tally.failed,
        tally.failed_at_ms
    );
    assert_eq!(tally.failed_at_ms.len(), tally.failed as usize, "{tally:?}");
    assert!(
        tally.failed_at_ms.iter().all(|(at, _)| *at <= zeroed_ms),
        "a request failed after the fall window: {tally:?}"
    );
    assert!(tally.from("n2") > 0, "{tally:?}");
    let after = http_tally(&lab, "client", "10.10.0.200:80", 30).unwrap();
    assert_eq!((after.failed, after.from("n2")), (0, 30), "{after:?}");
    // Status names the failure.
    let st = director_status(&lab, &all[0]).unwrap();
    let b = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == "TCP 10.10.0.200:80")
        .and_then(|x| {
            x["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == "10.10.0.21")
                .cloned()
        })
        .unwrap();
    assert_eq!(b["health"], "down", "{b}");
    assert!(
        b["health_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{b}"
    );
    // n1 over IPv4 and IPv6 for web and web6, and its kube-proxy healthz.
    assert_eq!(st["health"]["down"].as_u64(), Some(3), "{st}");

    // Back: within rise x interval (+ the slack), and traffic splits again.
    lab.start_node("n1").unwrap();
    let back = until_weight(&lab, &all, WEB, n1, 1);
    eprintln!(
        "health: n1 started -> weight 1 on every director after {} ms (rise x interval = {} ms)",
        back.as_millis(),
        rise * interval
    );
    assert!(
        back <= Duration::from_millis(rise * interval + timeout) + slack,
        "took {back:?} (slack {slack:?})"
    );
    let split = http_tally(&lab, "client", "10.10.0.200:80", 20).unwrap();
    assert_eq!(split.failed, 0, "{split:?}");
    assert!(split.from("n1") > 0 && split.from("n2") > 0, "{split:?}");

    // kube-proxy's healthz fails on n2: out of the service it checks, and
    // only of that one.
    lab.set_node_healthz("n2", false).unwrap();
    let kp_out = until_weight(&lab, &all, KP, n2, 0);
    eprintln!(
        "health: n2 healthz 503 -> out of {KP} after {} ms",
        kp_out.as_millis()
    );
    for h in &all {
        assert_eq!(kernel_weight(&lab, &h.name(), WEB, n2), Some(1), "{h}");
    }
    lab.set_node_healthz("n2", true).unwrap();
    until_weight(&lab, &all, KP, n2, 1);
    lab.down().expect("lab down");
}

/// One forwarding mode of the stream test: its VIP and port, the service's
/// settings, and what the nodes need.
struct Mode {
    name: &'static str,
    vip: &'static str,
    port: u16,
    /// The service's extra lines (forwarding, snat).
    settings: &'static str,
}

/// Connections that survive a failover, per forwarding mode: one TCP
/// connection through the VIP sends a counter every 10 ms for 20 s (the
/// node echoes it) while the VIP's owner host is killed, and again while
/// the owner is drained. The connection-sync daemons give the new owner the
/// IPVS connection; `nat` source-NATs to the VIP and conntrackd gives the
/// new owner the NAT state; with `snat: false` the nodes route the client
/// through the VIP; `dr` nodes answer the client directly. Every mode keeps
/// the connection (docs/forwarding.md). A `dr` node sees the client's own
/// address, a `nat` node the VIP. UDP through a VIP is answered by both
/// nodes.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_tcp_stream_survives_an_owner_kill_and_a_drain_in_every_forwarding_mode() {
    use lab::scenario::Stream;
    use nix::sys::signal::Signal;
    use std::time::Duration;
    let mut env = env();
    let director = lab::lab::workspace_binary("director").expect("the director binary");
    env.director = Some(director.clone());
    let mut lab = LabGuard::up(LabSpec::new(3, 2).with_prefix("k-fwd-"), env).expect("lab up");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    wait_for("a settled owner", 120, || settled(&lab, &all));
    let modes = [
        Mode {
            name: "nat",
            vip: "10.10.0.206",
            port: 7000,
            settings: "",
        },
        Mode {
            name: "nat, snat: false",
            vip: "10.10.0.207",
            port: 7000,
            settings: "    snat: false\n",
        },
        Mode {
            name: "dr",
            vip: "10.10.0.208",
            port: lab::topology::NODEPORT_TCP,
            settings: "    forwarding: dr\n",
        },
    ];
    let mut extra = String::new();
    for (i, m) in modes.iter().enumerate() {
        extra.push_str(&format!(
            "  - name: stream{i}\n    vip: {}\n{}    ports:\n      - {{port: {}, protocol: tcp}}\n    backends: [\"10.10.0.21:{tcp}\", \"10.10.0.22:{tcp}\"]\n",
            m.vip,
            m.settings,
            m.port,
            tcp = lab::topology::NODEPORT_TCP
        ));
    }
    // And UDP (the nodes' echo responder), balanced round robin.
    extra.push_str("  - name: udp\n    vip: 10.10.0.210\n    ports:\n      - {port: 5353, protocol: udp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n");
    // And HTTP by direct routing, to see what address the node sees.
    extra.push_str("  - name: dr-http\n    vip: 10.10.0.209\n    forwarding: dr\n    ports:\n      - {port: 30080, protocol: tcp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n");
    // And direct routing to a backend behind a gateway, which the
    // directors must refuse (192.0.2.0/24 is routed via n1).
    extra.push_str("  - name: dr-offlink\n    vip: 10.10.0.211\n    forwarding: dr\n    ports:\n      - {port: 30080, protocol: tcp}\n    backends: [\"10.10.0.21:30080\", \"192.0.2.10:30080\"]\n");
    // And SCTP, balanced round robin over the nodes' SCTP echo servers.
    extra.push_str("  - name: sctp\n    vip: 10.10.0.212\n    ports:\n      - {port: 9000, protocol: sctp}\n    backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\"]\n");
    for h in &all {
        lab.exec(
            &h.name(),
            &["ip", "route", "add", "192.0.2.0/24", "via", "10.10.0.21"],
        )
        .unwrap();
    }
    // The nodes' SCTP servers: each answers with its name and what it got.
    let sctp_server = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 30080))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    data = c.recv(512)
    c.send(sys.argv[1].encode() + b" " + data)
    c.close()
"#;
    let mut sctp_servers = Vec::new();
    for n in ["n1", "n2"] {
        let mut cmd = lab.command(n, "/usr/bin/python3").unwrap();
        cmd.args(["-c", sctp_server, n])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        sctp_servers.push(cmd.spawn().expect("an SCTP server"));
    }
    for h in &all {
        let path = lab.director_config_path(h);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text + &extra).unwrap();
        lab.signal_director(&h.name(), Signal::SIGHUP).unwrap();
    }
    // The nodes: the dr VIPs on lo, never answering ARP for them.
    for n in ["n1", "n2"] {
        for argv in [
            vec!["ip", "addr", "add", "10.10.0.208/32", "dev", "lo"],
            vec!["ip", "addr", "add", "10.10.0.209/32", "dev", "lo"],
            vec!["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
            vec!["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"],
            vec!["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"],
            vec!["sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=2"],
        ] {
            lab.exec(n, &argv).unwrap();
        }
    }
    // Sync daemons on every director.
    for h in &all {
        let d = lab.exec(&h.name(), &["ipvsadm", "-L", "--daemon"]).unwrap();
        assert!(d.contains("master sync daemon"), "{h}: {d}");
        assert!(d.contains("backup sync daemon"), "{h}: {d}");
    }
    // UDP through a VIP: 20 datagrams, each from a new socket (a new IPVS
    // connection), all answered, by both nodes.
    let udp = r#"
import socket, sys
seen = {}
for i in range(20):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"ping %d" % i, ("10.10.0.210", 5353))
    try:
        node = s.recv(512).split()[0].decode()
    except OSError:
        node = "lost"
    seen[node] = seen.get(node, 0) + 1
    s.close()
print(" ".join("%s=%d" % kv for kv in sorted(seen.items())))
"#;
    let tally = wait_for("UDP through the VIP", 60, || {
        let out = lab.exec("client", &["/usr/bin/python3", "-c", udp]).ok()?;
        (!out.contains("lost")).then_some(out)
    });
    eprintln!("forwarding: UDP through 10.10.0.210:5353: {}", tally.trim());
    assert!(tally.contains("n1=") && tally.contains("n2="), "{tally}");
    // SCTP through a VIP: 10 associations, each answered, by both nodes.
    let sctp = r#"
import socket
seen = {}
for i in range(10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    s.settimeout(3)
    try:
        s.connect(("10.10.0.212", 9000))
        s.send(b"ping %d" % i)
        node = s.recv(512).split()[0].decode()
    except OSError:
        node = "lost"
    seen[node] = seen.get(node, 0) + 1
    s.close()
print(" ".join("%s=%d" % kv for kv in sorted(seen.items())))
"#;
    let tally = wait_for("SCTP through the VIP", 90, || {
        let out = lab.exec("client", &["/usr/bin/python3", "-c", sctp]).ok()?;
        (!out.contains("lost")).then_some(out)
    });
    eprintln!(
        "forwarding: SCTP through 10.10.0.212:9000: {}",
        tally.trim()
    );
    assert!(tally.contains("n1=") && tally.contains("n2="), "{tally}");
    for mut c in sctp_servers {
        let _ = c.kill();
        let _ = c.wait();
    }
    // dr to a backend behind a gateway: refused on every director, with
    // the reason in the status, and the other backend programmed.
    for h in &all {
        let why = wait_for("the off-link dr backend refused", 60, || {
            let st = director_status(&lab, h)?;
            let svc = st["services"]
                .as_array()?
                .iter()
                .find(|s| s["service"].as_str() == Some("TCP 10.10.0.211:30080"))?
                .clone();
            let b = svc["backends"]
                .as_array()?
                .iter()
                .find(|b| b["address"] == "192.0.2.10")?
                .clone();
            b["refused"].as_str().map(str::to_string)
        });
        assert!(why.contains("through the gateway 10.10.0.21"), "{h}: {why}");
        let table = lab
            .exec(&h.name(), &["ipvsadm", "-Ln", "-t", "10.10.0.211:30080"])
            .unwrap();
        assert!(table.contains("10.10.0.21:30080"), "{h}: {table}");
        assert!(!table.contains("192.0.2.10"), "{h}: {table}");
        let human = std::process::Command::new(lab.env().director.clone().unwrap())
            .args(["status", "--socket"])
            .arg(lab.admin_socket(h))
            .output()
            .unwrap();
        let human = String::from_utf8_lossy(&human.stdout);
        assert!(human.contains("refused: dr: 192.0.2.10"), "{h}: {human}");
    }
    // dr: the node sees the client's own address.
    let reply = wait_for("the dr VIP to answer", 60, || {
        lab::scenario::http_fetch(&lab, "client", "10.10.0.209:30080", "/").ok()
    });
    let seen = reply.header("X-Client").unwrap_or_default().to_string();
    assert!(seen.starts_with("10.10.0.100:"), "{reply:?}");
    // nat: the node sees the VIP (the source NAT), not the director.
    let reply = wait_for("the nat VIP to answer", 60, || {
        lab::scenario::http_fetch(&lab, "client", "10.10.0.200:80", "/").ok()
    });
    let seen = reply.header("X-Client").unwrap_or_default().to_string();
    assert!(seen.starts_with("10.10.0.200:"), "{reply:?}");
    let mut results = Vec::new();
    let route = |lab: &LabGuard, add: bool| {
        for n in ["n1", "n2"] {
            let verb = if add { "add" } else { "del" };
            lab.exec(
                n,
                &["ip", "route", verb, "10.10.0.100/32", "via", "10.10.0.207"],
            )
            .unwrap();
        }
    };
    for m in &modes {
        let vip: std::net::IpAddr = m.vip.parse().unwrap();
        let target = format!("{}:{}", m.vip, m.port);
        // snat: false: the nodes route the client through the VIP (a
        // gateway that moves with it); only for this mode, since the
        // others' replies must not pass a director.
        let gateway = m.settings.contains("snat: false");
        if gateway {
            route(&lab, true);
        }
        wait_for(&format!("{} to answer", m.name), 60, || {
            let s = Stream::start(
                &lab,
                "client",
                &target,
                Duration::from_millis(300),
                Duration::from_millis(10),
            )
            .ok()?;
            s.finish().ok().filter(|r| r.survived).map(drop)
        });
        for how in ["kill", "drain"] {
            let (owner, _) = wait_for("an agreed owner", 120, || {
                let o = lab::scenario::agreed_owner(&lab, &all, vip)?;
                all.iter()
                    .all(|h| director_status(&lab, h).is_some_and(|s| s["lease"]["held"] == true))
                    .then_some(o)
            });
            let stream = Stream::start_with_timeout(
                &lab,
                "client",
                &target,
                Duration::from_secs(20),
                Duration::from_millis(10),
                Duration::from_secs(10),
            )
            .unwrap();
            std::thread::sleep(Duration::from_secs(5));
            let owner_host = Host::parse(&owner).unwrap();
            match how {
                "kill" => lab.kill_host(&owner).unwrap(),
                _ => {
                    let out = std::process::Command::new(&director)
                        .args(["drain", "--timeout", "30", "--socket"])
                        .arg(lab.admin_socket(&owner_host))
                        .output()
                        .unwrap();
                    let said = String::from_utf8_lossy(&out.stdout).into_owned();
                    assert!(out.status.success(), "drain: {said}");
                    eprintln!("forwarding {}: {said}", m.name);
                }
            }
            let r = stream.finish().unwrap();
            eprintln!(
                "forwarding {} / owner {how} ({owner}): survived {} node {:?} sent {} echoed {} max gap {} ms gaps {:?} error {:?} at {:?} ms",
                m.name, r.survived, r.node, r.sent, r.echoed, r.max_gap_ms, r.gaps_over_100ms, r.error, r.error_at_ms
            );
            results.push((m.name, how, r));
            match how {
                "kill" => lab.start_host(&owner).unwrap(),
                _ => {
                    let out = std::process::Command::new(&director)
                        .args(["undrain", "--socket"])
                        .arg(lab.admin_socket(&owner_host))
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                }
            }
        }
        if gateway {
            route(&lab, false);
        }
    }
    // What docs/forwarding.md promises: every mode keeps the connection.
    for (mode, how, r) in &results {
        assert!(r.survived, "{mode} / {how}: {r:?}");
    }
    lab.down().expect("lab down");
}
