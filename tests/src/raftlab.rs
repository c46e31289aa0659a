//! The Raft group as real processes (`labraft`) in the lab's director
//! namespaces, driven through their control sockets, with packet loss made by
//! nftables inside the namespaces. Shared by the namespace tests and the Raft
//! benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a lab helper fails loudly"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{Host, LabEnv, LabGuard, LabSpec};

/// The Raft transport port of every director.
pub const PORT: u16 = 7946;
/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// The VIP the tests move around.
pub const VIP: &str = "10.10.0.200";

/// A lab whose directors run `labraft`.
#[derive(Debug)]
pub struct RaftLab {
    lab: LabGuard,
    dir: PathBuf,
    labraft: PathBuf,
    timing: String,
    procs: BTreeMap<u64, Child>,
    n: u64,
}

impl Drop for RaftLab {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RaftLab {
    /// A lab with `n` directors each running `labraft` (at `labraft`), with
    /// `timing` `default` or `tight`; data and control sockets under the
    /// lab's state directory.
    pub fn up(prefix: &str, n: u8, env: LabEnv, labraft: PathBuf, timing: &str) -> RaftLab {
        let lab = LabGuard::up(LabSpec::new(n, 1).with_prefix(prefix), env).unwrap();
        let dir = lab.env().state_dir.join(format!("{prefix}raft"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RaftLab {
            lab,
            dir,
            labraft,
            timing: timing.to_string(),
            procs: BTreeMap::new(),
            n: u64::from(n),
        };
        for id in 1..=r.n {
            r.spawn(id);
        }
        r
    }

    /// The control socket of director `id`.
    pub fn control(&self, id: u64) -> PathBuf {
        self.dir.join(format!("d{id}.sock"))
    }

    /// Starts (or restarts) director `id`'s process.
    pub fn spawn(&mut self, id: u64) {
        let host = Host::director(id as u8);
        let labraft = self.labraft.to_string_lossy().into_owned();
        let mut cmd = self.lab.command(&host.name(), &labraft).unwrap();
        cmd.args(["--id", &id.to_string()])
            .args(["--listen", &format!("{}:{PORT}", host.ipv4())])
            .args(["--timing", &self.timing])
            .arg("--data")
            .arg(self.dir.join(format!("d{id}")))
            .arg("--control")
            .arg(self.control(id));
        for v in 1..=self.n {
            cmd.args([
                "--voter",
                &format!("{v}={}:{PORT}", Host::director(v as u8).ipv4()),
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = std::fs::remove_file(self.control(id));
        self.procs.insert(id, cmd.spawn().unwrap());
        let start = Instant::now();
        while self.try_ask(id, &json!({"op": "status"})).is_none() {
            assert!(start.elapsed() < WAIT, "labraft {id} did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies without any cleanup.
    pub fn kill9(&mut self, id: u64) {
        let mut c = self.procs.remove(&id).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// One request on a control socket; `None` if the process does not answer.
    pub fn try_ask(&self, id: u64, req: &Value) -> Option<Value> {
        let mut s = UnixStream::connect(self.control(id)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        writeln!(s, "{req}").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// `{"op":"status"}` of director `id`.
    pub fn status(&self, id: u64) -> Value {
        self.try_ask(id, &json!({"op": "status"})).unwrap()
    }

    /// The leader the directors `among` agree on.
    pub fn leader(&self, among: &[u64]) -> u64 {
        let start = Instant::now();
        loop {
            let seen: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.status(*id)["leader"].as_u64())
                .collect();
            if let Some(Some(l)) = seen.first() {
                if among.contains(l) && seen.iter().all(|s| *s == Some(*l)) {
                    return *l;
                }
            }
            assert!(
                start.elapsed() < WAIT,
                "no common leader among {among:?}: {seen:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Proposes on the leader `among` agree on, retrying while it moves.
    pub fn propose(&self, among: &[u64], command: Value) -> Value {
        let start = Instant::now();
        loop {
            let l = self.leader(among);
            let r = self
                .try_ask(l, &json!({"op": "propose", "command": command}))
                .unwrap_or(json!({"error": "no reply"}));
            if r.get("response").is_some() {
                return r["response"].clone();
            }
            assert!(start.elapsed() < WAIT, "{command}: {r}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A yes/no question (`may_assign`, `may_take_from`).
    pub fn ask_bool(&self, id: u64, req: Value) -> bool {
        self.try_ask(id, &req)
            .and_then(|v| v["result"].as_bool())
            .unwrap_or(false)
    }

    /// Drops, in `to`'s namespace, every packet from `from` (a one-way loss).
    pub fn drop_from(&self, from: u64, to: u64) {
        let ip = Host::director(from as u8).ipv4().to_string();
        let d = format!("d{to}");
        let _ = self
            .lab
            .exec(&d, &["nft", "add", "table", "inet", "labpart"]);
        let _ = self.lab.exec(
            &d,
            &[
                "nft", "add", "chain", "inet", "labpart", "input", "{", "type", "filter", "hook",
                "input", "priority", "-10", ";", "}",
            ],
        );
        self.lab
            .exec(
                &d,
                &[
                    "nft", "add", "rule", "inet", "labpart", "input", "ip", "saddr", &ip, "drop",
                ],
            )
            .unwrap();
    }

    /// Drops everything between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        self.drop_from(a, b);
        self.drop_from(b, a);
    }

    /// Cuts `id` off from every other director.
    pub fn isolate(&self, id: u64) {
        for other in 1..=self.n {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Removes every packet filter.
    pub fn heal(&self) {
        for id in 1..=self.n {
            let _ = self.lab.exec(
                &format!("d{id}"),
                &["nft", "delete", "table", "inet", "labpart"],
            );
        }
    }

    /// The last applied log index of director `id`.
    pub fn applied(&self, id: u64) -> Option<u64> {
        self.status(id)["last_applied"].as_u64()
    }

    /// Waits until `f` holds; how long it took.
    pub fn until(&self, what: &str, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }
}
