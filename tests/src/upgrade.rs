//! The upgrade fixture (`tests/fixtures/upgrade-0.1.0`, its README says what
//! it is): the data directories an earlier release left behind, the
//! configuration it ran with, and what its store held then
//! (`manifest.json`). Helpers to unpack it, to start `director run` on it in
//! a lab host, and to read a data directory through this checkout's storage
//! code (`consensus::store`).

use std::fs;
use std::ops::RangeFull;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consensus::state::{ClusterState, NodeId};
use consensus::store::{self, Applied, LogStore, StateMachineStore};
use consensus::TypeConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader, SnapshotMeta, Vote};
use serde_json::{json, Value};

use crate::lab::{Lab, LabError};

/// The fixture's folder name under `tests/fixtures`.
pub const FIXTURE: &str = "upgrade-0.1.0";

/// The fixture's Raft members: host name and Raft id (d1 holds every VIP, w1
/// is the witness).
pub const MEMBERS: [(&str, NodeId); 2] = [("d1", 1), ("w1", 9)];

/// The archive of the data directories (`d1/raft.redb`, `w1/raft.redb`).
pub const ARCHIVE: &str = "data.tar.gz";

/// What can go wrong with the fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A lab step (a command, a file) failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// Reading a data directory through the store failed.
    #[error("reading the {what} of {path}: {message}")]
    Store {
        /// What was read.
        what: &'static str,
        /// The database file.
        path: PathBuf,
        /// The storage error.
        message: String,
    },
}

/// The fixture's folder in this checkout.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(FIXTURE)
}

/// The fixture's configuration of `host` (`d1` or `w1`) with its state under
/// `data_dir` (the files say `DATA_DIR`).
pub fn config(host: &str, data_dir: &Path) -> Result<String, FixtureError> {
    let path = fixture_dir().join(format!("{host}.yaml"));
    let text = fs::read_to_string(&path).map_err(|source| LabError::Io {
        op: "reading",
        path,
        source,
    })?;
    Ok(text.replace("DATA_DIR", &data_dir.to_string_lossy()))
}

/// `manifest.json`: what the release that wrote the fixture read back from it.
pub fn manifest() -> Result<Value, FixtureError> {
    let path = fixture_dir().join("manifest.json");
    let text = fs::read_to_string(&path).map_err(|source| LabError::Io {
        op: "reading",
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LabError::BadState { path, source }.into())
}

/// Unpacks `archive` into `into` (which then holds `d1/` and `w1/`).
pub fn unpack(archive: &Path, into: &Path) -> Result<(), FixtureError> {
    fs::create_dir_all(into).map_err(|source| LabError::Io {
        op: "creating",
        path: into.to_path_buf(),
        source,
    })?;
    crate::lab::run(&[
        "tar",
        "-xzf",
        &archive.to_string_lossy(),
        "-C",
        &into.to_string_lossy(),
    ])?;
    Ok(())
}

/// Packs `from/d1/raft.redb` and `from/w1/raft.redb` into `archive`, the
/// same bytes for the same files (sorted, no owners, no times).
pub fn pack(from: &Path, archive: &Path) -> Result<(), FixtureError> {
    let script = "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
                  -C \"$1\" -cf - d1/raft.redb w1/raft.redb | gzip -9n > \"$2\"";
    crate::lab::run(&[
        "sh",
        "-ec",
        script,
        "pack",
        &from.to_string_lossy(),
        &archive.to_string_lossy(),
    ])?;
    Ok(())
}

/// A `director run` started in a lab host, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    director: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `director run --config CONFIG` in `host` of `lab`, its output
    /// in `log`, and waits until its admin socket `socket` answers.
    pub fn start(
        lab: &Lab,
        host: &str,
        director: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Daemon, FixtureError> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| LabError::Io {
                op: "opening",
                path: log.to_path_buf(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| LabError::Io {
            op: "duplicating",
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = lab.command(host, &director.to_string_lossy())?;
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let _ = fs::remove_file(socket);
        let child = cmd.spawn().map_err(|source| LabError::Io {
            op: "starting",
            path: director.to_path_buf(),
            source,
        })?;
        let mut daemon = Daemon {
            child: Some(child),
            director: director.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let start = Instant::now();
        while daemon.status().is_none() {
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                return Err(LabError::ServerNotReady {
                    host: host.to_string(),
                    what: "director".into(),
                    secs: 30,
                    log: log.to_path_buf(),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// `director status -o json` of this daemon, or None if it does not answer.
    pub fn status(&self) -> Option<Value> {
        let out = Command::new(&self.director)
            .args(["status", "-o", "json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Runs `director ARGS --socket SOCKET`; its exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String), FixtureError> {
        let out = Command::new(&self.director)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .map_err(|source| LabError::Io {
                op: "running",
                path: self.director.clone(),
                source,
            })?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (SIGHUP: reload).
    pub fn signal(&self, signal: Signal) -> Result<(), FixtureError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        kill(pid, signal)
            .map_err(|e| LabError::Teardown(format!("signalling director (pid {pid}): {e}")).into())
    }

    /// Stops it as an operator does: SIGTERM (it drains first), SIGKILL after
    /// `grace`. Its exit status, or None if it had to be killed.
    pub fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL: process death, no cleanup.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<Pid> {
        let id = self.child.as_ref()?.id();
        Some(Pid::from_raw(i32::try_from(id).ok()?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything a data directory's store holds, read with this checkout's
/// storage code (the same calls openraft makes).
#[derive(Debug)]
pub struct StoreView {
    /// The saved vote.
    pub vote: Option<Vote<NodeId>>,
    /// The saved committed log id.
    pub committed: Option<LogId<NodeId>>,
    /// The last purged log id.
    pub last_purged: Option<LogId<NodeId>>,
    /// The last log id (or the last purged one when the log is empty).
    pub last_log: Option<LogId<NodeId>>,
    /// Every log entry still stored.
    pub entries: Vec<Entry<TypeConfig>>,
    /// The applied state machine (log id, membership, cluster state).
    pub applied: Applied,
    /// The stored snapshot: its meta and its bytes.
    pub snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
}

fn index(id: &Option<LogId<NodeId>>) -> Value {
    id.map(|l| json!(l.index)).unwrap_or(Value::Null)
}

/// What an entry carries: `membership`, `blank`, or the command's name.
pub fn entry_kind(e: &Entry<TypeConfig>) -> String {
    match &e.payload {
        EntryPayload::Blank => "blank".into(),
        EntryPayload::Membership(_) => "membership".into(),
        EntryPayload::Normal(cmd) => match serde_json::to_value(cmd) {
            Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
            Ok(Value::String(s)) => s,
            _ => "?".into(),
        },
    }
}

impl StoreView {
    /// The facts `manifest.json` records per director: indexes, the vote,
    /// the snapshot, the log (`INDEX term TERM: WHAT` per entry), the applied
    /// state.
    pub fn summary(&self) -> Value {
        let log: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                let id = e.log_id;
                format!("{} term {}: {}", id.index, id.leader_id.term, entry_kind(e))
            })
            .collect();
        let voters = |m: &openraft::StoredMembership<NodeId, openraft::BasicNode>| {
            m.membership()
                .nodes()
                .map(|(id, n)| (id.to_string(), json!(n.addr)))
                .collect::<serde_json::Map<_, _>>()
        };
        json!({
            "vote_term": self.vote.map(|v| v.leader_id.term),
            "committed_index": index(&self.committed),
            "last_purged_index": index(&self.last_purged),
            "last_log_index": index(&self.last_log),
            "applied_index": index(&self.applied.last_applied),
            "membership": voters(&self.applied.membership),
            "snapshot": self.snapshot.as_ref().map(|(meta, data)| json!({
                "id": meta.snapshot_id,
                "last_log_index": index(&meta.last_log_id),
                "bytes": data.len(),
            })),
            "log": log,
            "state": serde_json::to_value(&self.applied.state).unwrap_or_default(),
        })
    }

    /// The applied cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.applied.state
    }
}

fn store_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(openraft::StorageError<NodeId>) -> FixtureError + 'a {
    move |e| FixtureError::Store {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads `data_dir/raft.redb` through `consensus::store`. Opening writes to
/// the file (its tables are created if missing): read a copy of a fixture.
pub async fn read_store(data_dir: &Path) -> Result<StoreView, FixtureError> {
    let path = data_dir.join("raft.redb");
    let db = store::open(&path).map_err(store_error("database", &path))?;
    let mut log = LogStore::new(db.clone());
    let mut machine = StateMachineStore::new(db).map_err(store_error("applied state", &path))?;
    let vote = log.read_vote().await.map_err(store_error("vote", &path))?;
    let committed = log
        .read_committed()
        .await
        .map_err(store_error("committed id", &path))?;
    let state = log
        .get_log_state()
        .await
        .map_err(store_error("log state", &path))?;
    let entries = log
        .try_get_log_entries(RangeFull)
        .await
        .map_err(store_error("log", &path))?;
    let (last_applied, membership) = machine
        .applied_state()
        .await
        .map_err(store_error("applied state", &path))?;
    let snapshot = machine
        .get_current_snapshot()
        .await
        .map_err(store_error("snapshot", &path))?
        .map(|s| (s.meta, s.snapshot.into_inner()));
    Ok(StoreView {
        vote,
        committed,
        last_purged: state.last_purged_log_id,
        last_log: state.last_log_id,
        entries,
        applied: Applied {
            last_applied,
            membership,
            state: (*machine.state()).clone(),
        },
        snapshot,
    })
}

/// Installs `view`'s snapshot into a new store in `scratch` (what a follower
/// does with a snapshot sent by its leader) and returns the state it holds
/// then.
pub async fn install_snapshot(
    view: &StoreView,
    scratch: &Path,
) -> Result<Option<Applied>, FixtureError> {
    let Some((meta, data)) = &view.snapshot else {
        return Ok(None);
    };
    let path = scratch.join("raft.redb");
    let db = store::open(&path).map_err(store_error("database", &path))?;
    let mut machine =
        StateMachineStore::new(db.clone()).map_err(store_error("applied state", &path))?;
    machine
        .install_snapshot(meta, Box::new(std::io::Cursor::new(data.clone())))
        .await
        .map_err(store_error("installed snapshot", &path))?;
    let (last_applied, membership) = machine
        .applied_state()
        .await
        .map_err(store_error("applied state", &path))?;
    Ok(Some(Applied {
        last_applied,
        membership,
        state: (*machine.state()).clone(),
    }))
}

/// Where `new` differs from `old`, as `path: old != new` lines: every field
/// of `old` must be in `new` with the same value; `new` may have more
/// fields. Arrays compare element by element.
pub fn missing_or_changed(old: &Value, new: &Value, path: &str) -> Vec<String> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => o
            .iter()
            .flat_map(|(k, v)| match n.get(k) {
                Some(nv) => missing_or_changed(v, nv, &format!("{path}.{k}")),
                None => vec![format!("{path}.{k}: {v} is missing")],
            })
            .collect(),
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => o
            .iter()
            .zip(n)
            .enumerate()
            .flat_map(|(i, (ov, nv))| missing_or_changed(ov, nv, &format!("{path}[{i}]")))
            .collect(),
        _ if old == new => Vec::new(),
        _ => vec![format!("{path}: {old} != {new}")],
    }
}
