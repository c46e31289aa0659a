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
