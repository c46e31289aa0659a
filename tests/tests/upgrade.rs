//! Upgrading in place: a data directory written by director 0.1.0 (the
//! fixture `tests/fixtures/upgrade-0.1.0`: log, snapshot, applied state of a
//! cluster of d1 and the witness w1) is read by this checkout.
//!
//! - `the_fixture_reads_back_through_the_store` (no root): every stored
//!   record (vote, committed id, every log entry, the applied state, the
//!   snapshot) reads back as `manifest.json` says the writing release read it,
//!   and the snapshot plus the log after it replay to the applied state.
//! - `an_upgraded_daemon_keeps_the_vips_of_the_fixture` (root, lab
//!   namespaces, host kernel): `director run` of this checkout, started on the
//!   fixture with the configuration it was written with, serves the same
//!   services, keeps every VIP on d1 with the same epoch, applies past the
//!   fixture's log, and commits on top of it (a reload adds a service); a
//!   restart after SIGKILL reads the mixed log.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lab::scenario::wait_until;
use lab::upgrade::{self, missing_or_changed, Daemon, ARCHIVE, MEMBERS};
use lab::{LabEnv, LabGuard, LabSpec};
use nix::sys::signal::Signal;
use openraft::EntryPayload;
use serde_json::Value;

fn unpacked() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    upgrade::unpack(&upgrade::fixture_dir().join(ARCHIVE), dir.path()).unwrap();
    dir
}

/// The highest last log index of the fixture's directors.
fn fixture_last_log_index(manifest: &Value) -> u64 {
    manifest["directors"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d["last_log_index"].as_u64().unwrap())
        .max()
        .unwrap()
}

#[test]
fn the_fixture_reads_back_through_the_store() {
    let manifest = upgrade::manifest().unwrap();
    let dir = unpacked();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (host, _) in MEMBERS {
        let view = rt
            .block_on(upgrade::read_store(&dir.path().join(host)))
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let old = &manifest["directors"][host];
        let mut summary = view.summary();
        summary["id"] = old["id"].clone();
        let diff = missing_or_changed(old, &summary, host);
        assert!(diff.is_empty(), "{host} reads back differently:\n{diff:#?}");
        // The snapshot, installed as a follower installs one, and the log
        // after it, applied in order, give the applied state (Raft's state
        // machine safety across the stored forms).
        let scratch = tempfile::tempdir().unwrap();
        let installed = rt
            .block_on(upgrade::install_snapshot(&view, scratch.path()))
            .unwrap()
            .expect("the fixture has a snapshot");
        let from = installed.last_applied.map(|l| l.index).unwrap();
        let to = view.applied.last_applied.map(|l| l.index).unwrap();
        let mut replayed = installed.state.clone();
        let mut membership = installed.membership.clone();
        for e in view
            .entries
            .iter()
            .filter(|e| (from + 1..=to).contains(&e.log_id.index))
        {
            match &e.payload {
                EntryPayload::Normal(cmd) => {
                    consensus::apply(&mut replayed, cmd.clone());
                }
                EntryPayload::Membership(m) => {
                    membership = openraft::StoredMembership::new(Some(e.log_id), m.clone());
                }
                EntryPayload::Blank => {}
            }
        }
        assert_eq!(&replayed, view.state(), "{host}: snapshot + log != applied");
        assert_eq!(membership, view.applied.membership, "{host}: membership");
        assert!(
            view.entries.iter().any(|e| e.log_id.index > from),
            "{host}: the fixture should hold entries after its snapshot"
        );
    }
}

/// The `director status` key of one port of a service: `TCP 10.10.0.200:80`.
fn service_key(vip: &str, port: &Value) -> String {
    let addr: SocketAddr =
        SocketAddr::new(vip.parse().unwrap(), port["port"].as_u64().unwrap() as u16);
    format!(
        "{} {addr}",
        port["protocol"].as_str().unwrap().to_uppercase()
    )
}

/// Checks `status` (of d1 or w1) against the fixture's state: the same
/// services, ports, schedulers, forwarding and backends; every VIP allocated
/// to the same service, owned by the same director at the same epoch (a move
/// would raise it; with one data director nothing may move).
fn assert_serves_the_fixture(status: &Value, state: &Value) {
    let vips = status["vips"].as_array().unwrap();
    for (vip, service) in state["allocations"].as_object().unwrap() {
        let v = vips
            .iter()
            .find(|v| v["vip"] == vip.as_str())
            .unwrap_or_else(|| panic!("{vip} is gone: {status:#}"));
        assert_eq!(v["service"], *service, "{vip}");
        let owner = &state["owners"][vip];
        assert_eq!(v["owner"], owner["director"], "{vip} changed owner");
        assert_eq!(v["epoch"], owner["epoch"], "{vip} changed epoch");
    }
    let services = status["services"].as_array().unwrap();
    for (name, s) in state["services"].as_object().unwrap() {
        let vip = s["vip"].as_str().unwrap();
        for port in s["ports"].as_array().unwrap() {
            let key = service_key(vip, port);
            let got = services
                .iter()
                .find(|x| x["service"] == key.as_str())
                .unwrap_or_else(|| panic!("{name}: {key} is not served: {status:#}"));
            assert_eq!(got["scheduler"], s["scheduler"], "{key}");
            let forwarding = match s["forwarding"].as_str() {
                Some("dr") => "Route",
                _ => "Masq",
            };
            assert_eq!(got["forwarding"], forwarding, "{key}");
            let want: BTreeSet<(String, u64)> = port["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap().to_string(),
                        b["port"].as_u64().unwrap(),
                    )
                })
                .collect();
            let have: BTreeSet<(String, u64)> = got["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap().to_string(),
                        b["port"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(have, want, "{key}: backends");
        }
    }
}

/// `VIP=OWNER@EPOCH(held)` for every VIP of `status`.
fn owners(status: &Value) -> String {
    status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{}={}@{}{}",
                v["vip"].as_str().unwrap_or("?"),
                v["owner_name"].as_str().unwrap_or("-"),
                v["epoch"],
                if v["held_here"] == true { "(held)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// d1's status once it holds `count` VIPs under its lease.
fn holding(d1: &Daemon, count: usize) -> Value {
    wait_until("d1 to hold its VIPs", Duration::from_secs(90), || {
        let s = d1.status()?;
        let vips = s["vips"].as_array()?;
        let held = s["lease"]["held"] == true
            && vips.len() == count
            && vips.iter().all(|v| v["held_here"] == true);
        held.then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}\n{}", d1.status().unwrap_or_default(), d1.log()))
}

fn write_config(work: &Path, host: &str, extra: &str) -> std::path::PathBuf {
    let path = work.join(format!("{host}.yaml"));
    let text = upgrade::config(host, &work.join(host)).unwrap() + extra;
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
#[ignore = "needs root and network namespaces: run by `cargo xtask test`"]
fn an_upgraded_daemon_keeps_the_vips_of_the_fixture() {
    let manifest = upgrade::manifest().unwrap();
    let state = &manifest["state"];
    let vips = state["allocations"].as_object().unwrap().len();
    assert!(
        state["owners"]
            .as_object()
            .unwrap()
            .values()
            .all(|o| o["director"] == 1),
        "the fixture's VIPs are all d1's"
    );
    let director = lab::lab::workspace_binary("director").expect("the director binary");
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    let lab = LabGuard::up(
        LabSpec::new(1, 2).with_prefix("t-upg-").with_witness(true),
        env,
    )
    .expect("lab up");
    let work = unpacked();
    let start = |host: &str| {
        let config = work.path().join(format!("{host}.yaml"));
        Daemon::start(
            &lab,
            host,
            &director,
            &config,
            &work.path().join(host).join("admin.sock"),
            &work.path().join(format!("{host}-director.log")),
        )
        .unwrap()
    };
    for (host, _) in MEMBERS {
        write_config(work.path(), host, "");
    }
    let mut d1 = start("d1");
    let w1 = start("w1");

    // The fixture's services and owners, and nothing moved.
    let status = holding(&d1, vips);
    assert_eq!(status["director"]["id"], 1);
    assert_serves_the_fixture(&status, state);
    let applied = status["cluster"]["applied_index"].as_u64().unwrap();
    let last = fixture_last_log_index(&manifest);
    assert!(
        applied >= last,
        "applied {applied}, the fixture's log ends at {last}"
    );
    eprintln!(
        "d1 on the fixture: term {}, applied {applied} (the fixture's log ends at {last}), VIPs {}",
        status["cluster"]["term"],
        owners(&status)
    );
    let ws = wait_until("w1 to catch up", Duration::from_secs(30), || {
        let s = w1.status()?;
        (s["cluster"]["applied_index"].as_u64()? >= applied).then_some(s)
    })
    .unwrap();
    assert_serves_the_fixture(&ws, state);

    // A commit on top of the old log: a reload adds a service, d1 takes its
    // VIP; the fixture's VIPs keep their epochs.
    let added = "  - name: added\n    vip: 10.10.0.210\n    ports:\n      - {port: 8443, protocol: tcp}\n    backends: [\"10.10.0.22:30080\"]\n";
    for (host, _) in MEMBERS {
        write_config(work.path(), host, added);
    }
    d1.signal(Signal::SIGHUP).unwrap();
    w1.signal(Signal::SIGHUP).unwrap();
    let status = holding(&d1, vips + 1);
    assert_serves_the_fixture(&status, state);
    let new = status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == "10.10.0.210")
        .unwrap();
    assert_eq!(new["service"], "static/added");
    assert_eq!((&new["owner"], &new["epoch"]), (&1.into(), &1.into()));
    assert!(status["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["service"] == "TCP 10.10.0.210:8443"));
    let after = status["cluster"]["applied_index"].as_u64().unwrap();
    assert!(after > applied, "the reload committed nothing");
    eprintln!(
        "after the reload: applied {after}, VIPs {}",
        owners(&status)
    );

    // Process death and a restart: the log now holds both releases' entries.
    d1.kill();
    d1 = start("d1");
    let status = holding(&d1, vips + 1);
    assert_serves_the_fixture(&status, state);
    assert!(status["cluster"]["applied_index"].as_u64().unwrap() >= after);
    eprintln!(
        "after SIGKILL and a restart: term {}, applied {}, VIPs {}",
        status["cluster"]["term"],
        status["cluster"]["applied_index"],
        owners(&status)
    );

    drop(d1);
    drop(w1);
    lab.down().expect("lab down");
}
