//! End-to-end tests against a real kernel with IPVS. `cargo xtask test` builds
//! them on the host and runs them all in one VM boot (or on the host when its
//! kernel has IPVS); a plain `cargo test` skips them.

use lab::scenario::{http_tally, NatService};
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

/// `director status -o json` of a lab director.
fn director_status(lab: &LabGuard, host: &Host) -> Option<serde_json::Value> {
    let bin = lab::lab::workspace_binary("director")?;
    let out = std::process::Command::new(bin)
        .args(["status", "-o", "json", "--socket"])
        .arg(lab.admin_socket(host))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The owner of the lab's VIP, if every one of `hosts` agrees on it.
fn agreed_owner(lab: &LabGuard, hosts: &[Host]) -> Option<(String, u64)> {
    let mut seen = Vec::new();
    for h in hosts {
        let v = director_status(lab, h)?;
        let vip = v["vips"]
            .as_array()?
            .iter()
            .find(|x| x["vip"] == "10.10.0.200")?
            .clone();
        seen.push((
            vip["owner_name"].as_str()?.to_string(),
            vip["epoch"].as_u64()?,
        ));
    }
    let first = seen.first()?.clone();
    seen.iter().all(|s| *s == first).then_some(first)
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed().as_secs() < secs,
            "timed out waiting for {what} after {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
