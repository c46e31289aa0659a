//! Writes the upgrade fixture, `tests/fixtures/upgrade-0.1.0` (its README
//! says what it holds and why), with the daemon and the storage code of this
//! checkout. It stands for the release it was written with, so it is
//! written again only on purpose, as root:
//!
//! ```text
//! cargo build -p director -p director-tests --bins
//! DIRECTOR_WRITE_UPGRADE_FIXTURE=1 cargo test -p director-tests \
//!     --test upgrade_fixture -- --ignored --nocapture
//! ```
//!
//! Without that variable the test does nothing (`cargo xtask test` does not
//! run it either).
//!
//! 1. `director run` on d1 (data) and w1 (witness) in the lab's namespaces,
//!    with the fixture's configuration, on empty data directories: the
//!    leader seeds the directors and the three static services, d1 takes
//!    every VIP. Then both are stopped with SIGTERM, d1 first (its drain
//!    finds nobody to take the VIPs and gives up, as on every stop of a
//!    lone data director).
//! 2. openraft builds a snapshot on each (`Raft::trigger().snapshot()`, the
//!    store's `build_snapshot`) and purges the log entries before the first
//!    command (`trigger().purge_log`), on a Raft that neither ticks nor
//!    elects, so nothing else changes.
//! 3. `director run` again on both: a new term, d1 holds its VIPs again with
//!    the same epochs; SIGTERM again.
//! 4. The two data directories are packed into `data.tar.gz`, and a copy is
//!    read back through the store into `manifest.json`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consensus::network::Network;
use consensus::store::{self, LogStore, StateMachineStore};
use consensus::tls::Tls;
use consensus::{NodeId, Security};
use lab::scenario::wait_until;
use lab::upgrade::{self, Daemon, ARCHIVE, MEMBERS};
use lab::{LabEnv, LabGuard, LabSpec};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, Raft, RaftLogReader};
use serde_json::{json, Value};

const WRITE: &str = "DIRECTOR_WRITE_UPGRADE_FIXTURE";

/// The daemons of one phase.
struct Pair {
    d1: Daemon,
    w1: Daemon,
}

fn start_pair(lab: &LabGuard, director: &Path, work: &Path, data: &Path) -> Pair {
    let start = |host: &str| {
        let dir = data.join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let config = work.join(format!("{host}.yaml"));
        std::fs::write(&config, upgrade::config(host, &dir).unwrap()).unwrap();
        Daemon::start(
            lab,
            host,
            director,
            &config,
            &dir.join("admin.sock"),
            &work.join(format!("{host}-director.log")),
        )
        .unwrap()
    };
    Pair {
        d1: start("d1"),
        w1: start("w1"),
    }
}

/// Waits until d1 holds all three VIPs and w1 has applied what d1 has; the
/// VIPs' epochs.
fn settle(pair: &Pair) -> Value {
    let held = wait_until("d1 to hold every VIP", Duration::from_secs(90), || {
        let s = pair.d1.status()?;
        let vips = s["vips"].as_array()?.clone();
        let all = vips.len() == 3
            && vips
                .iter()
                .all(|v| v["owner_name"] == "d1" && v["held_here"] == true);
        all.then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.d1.log()));
    wait_until("w1 to apply d1's log", Duration::from_secs(30), || {
        let d = pair.d1.status()?;
        let w = pair.w1.status()?;
        let last = &d["cluster"]["last_log_index"];
        (d["cluster"]["applied_index"] == *last && w["cluster"]["applied_index"] == *last)
            .then_some(())
    })
    .unwrap();
    held["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vip"].as_str().unwrap().to_string(), v["epoch"].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// SIGTERM, d1 first: what an operator's `systemctl stop` does.
fn stop_pair(pair: Pair) {
    let d1 = pair.d1.stop(Duration::from_secs(30));
    assert!(d1.is_some_and(|s| s.success()), "d1 did not stop cleanly");
    let w1 = pair.w1.stop(Duration::from_secs(30));
    assert!(w1.is_some_and(|s| s.success()), "w1 did not stop cleanly");
}

/// Phase 2 on one data directory: a snapshot of everything applied, then the
/// entries before the first command purged. Both by openraft itself.
async fn snapshot_and_purge(id: NodeId, dir: &Path) {
    let db = store::open(&dir.join("raft.redb")).unwrap();
    let mut log = LogStore::new(db.clone());
    let machine = StateMachineStore::new(db).unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    let first_command = entries
        .iter()
        .position(|e| matches!(e.payload, EntryPayload::Normal(_)))
        .expect("a command in the log");
    assert!(first_command > 0, "nothing before the first command");
    let purge_to = entries[first_command - 1].log_id;
    let (applied, _) = machine.clone().applied_state().await.unwrap();
    let applied = applied.expect("an applied log id");
    let config = openraft::Config {
        cluster_name: "director".into(),
        enable_tick: false,
        enable_heartbeat: false,
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let network = Network {
        id,
        faults: Default::default(),
        tls: Tls::load(&Security::Insecure).unwrap(),
        pool: Default::default(),
    };
    let raft = Raft::new(id, Arc::new(config), network, log, machine)
        .await
        .unwrap();
    let wait = || raft.wait(Some(Duration::from_secs(10)));
    raft.trigger().snapshot().await.unwrap();
    wait().snapshot(applied, "the snapshot").await.unwrap();
    raft.trigger().purge_log(purge_to.index).await.unwrap();
    wait().purged(Some(purge_to), "the purge").await.unwrap();
    raft.shutdown().await.unwrap();
    eprintln!(
        "node {id}: snapshot at {}, purged up to {}",
        applied.index, purge_to.index
    );
}

/// Whether redb finds the file cleanly closed (no repair needed on open).
fn closed_cleanly(path: &Path) -> bool {
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Database::builder()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(path)
        .unwrap();
    drop(db);
    !repaired.load(Ordering::SeqCst)
}

fn git(args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root; rewrites tests/fixtures/upgrade-0.1.0 only with DIRECTOR_WRITE_UPGRADE_FIXTURE=1"]
fn write_the_upgrade_fixture() {
    if std::env::var_os(WRITE).is_none() {
        eprintln!(
            "skipped: set {WRITE}=1 to rewrite {}",
            upgrade::fixture_dir().display()
        );
        return;
    }
    let director: PathBuf = lab::lab::workspace_binary("director")
        .expect("the director binary (cargo build -p director)");
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    let lab = LabGuard::up(
        LabSpec::new(1, 2)
            .with_prefix("t-upgfx-")
            .with_witness(true),
        env,
    )
    .expect("lab up");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");

    // 1. Seeded by the daemons; d1 takes every VIP.
    let pair = start_pair(&lab, &director, work.path(), &data);
    let epochs = settle(&pair);
    eprintln!("phase 1: d1 holds {epochs}");
    stop_pair(pair);

    // 2. A snapshot and a purge, by openraft.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (host, id) in MEMBERS {
        rt.block_on(snapshot_and_purge(id, &data.join(host)));
    }

    // 3. The daemons again, on data with a snapshot: the VIPs stay d1's.
    let pair = start_pair(&lab, &director, work.path(), &data);
    let again = settle(&pair);
    assert_eq!(again, epochs, "the restart moved a VIP");
    stop_pair(pair);
    lab.down().expect("lab down");

    // 4. Packed, and a copy read back for the manifest.
    let dir = upgrade::fixture_dir();
    let archive = dir.join(ARCHIVE);
    upgrade::pack(&data, &archive).unwrap();
    let copy = work.path().join("copy");
    upgrade::unpack(&archive, &copy).unwrap();
    let mut directors = serde_json::Map::new();
    let mut newest: Option<(u64, Value)> = None;
    for (host, id) in MEMBERS {
        let path = copy.join(host).join("raft.redb");
        assert!(closed_cleanly(&path), "{} needs a repair", path.display());
        let view = rt.block_on(upgrade::read_store(&copy.join(host))).unwrap();
        let summary = view.summary();
        let snapshot = view.snapshot.as_ref().expect("a snapshot");
        let snap_index = snapshot.0.last_log_id.unwrap().index;
        let last = view.last_log.unwrap().index;
        assert!(view.last_purged.is_some(), "{host}: nothing purged");
        assert!(last > snap_index, "{host}: no entry after the snapshot");
        eprintln!("{host}: {summary}");
        let mut summary = summary;
        summary["id"] = json!(id);
        directors.insert(host.to_string(), summary);
        let applied = view.applied.last_applied.map(|l| l.index).unwrap_or(0);
        if newest.as_ref().is_none_or(|(a, _)| applied > *a) {
            newest = Some((applied, serde_json::to_value(view.state()).unwrap()));
        }
    }
    let version = std::process::Command::new(&director)
        .arg("--version")
        .output()
        .unwrap();
    let manifest = json!({
        "written_by": String::from_utf8_lossy(&version.stdout).trim(),
        "commit": git(&["rev-parse", "HEAD"]),
        "uncommitted_source_changes": !git(&["status", "--porcelain", "--", "../consensus", "../director", "../ipvs-sys"]).is_empty(),
        "directors": directors,
        "state": newest.map(|(_, s)| s),
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap() + "\n",
    )
    .unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!(
        "wrote {} ({size} bytes) and manifest.json",
        archive.display()
    );
}
