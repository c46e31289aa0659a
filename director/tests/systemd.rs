//! The sd_notify(3) protocol end to end: two `director run` processes (the
//! witnesses of a three-voter group whose data director never starts, so
//! nothing touches the kernel and no privilege is needed) on 127.0.0.1, each
//! with `$NOTIFY_SOCKET` naming a socket this test binds in place of
//! systemd: one a path, one in the abstract namespace. Checked: the status
//! while joining, `READY=1` once a leader is known, watchdog pings at half
//! `$WATCHDOG_USEC`, `RELOADING=1` and `READY=1` around SIGHUP, a new
//! status line when the leader is gone, `STOPPING=1` on SIGTERM and a clean
//! exit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration of witness `id` (1 or 2) of the group on `ports`.
fn config(dir: &Path, id: u64, ports: [u16; 3]) -> PathBuf {
    let path = dir.join(format!("w{id}.yaml"));
    let text = format!(
        "id: {id}
peers:
  - {{id: 1, name: w1, address: \"127.0.0.1:{}\", role: witness}}
  - {{id: 2, name: w2, address: \"127.0.0.1:{}\", role: witness}}
  - {{id: 3, name: d3, address: \"127.0.0.1:{}\"}}
data_dir: {dir}/w{id}
interface: lo
insecure: true
admin_socket: {dir}/w{id}.sock
",
        ports[0],
        ports[1],
        ports[2],
        dir = dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running director, killed if the test ends early.
struct Director {
    child: Child,
    log: PathBuf,
}

impl Director {
    fn start(config: &Path, notify_socket: &str, watchdog_usec: Option<u64>) -> Director {
        let log = config.with_extension("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_director"));
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--log-level", "info,openraft=off"])
            .env_remove("WATCHDOG_PID")
            .env_remove("WATCHDOG_USEC")
            .env("NOTIFY_SOCKET", notify_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(usec) = watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec.to_string());
        }
        Director {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit, at most `timeout`; true if it exited with 0.
    fn exited_cleanly(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket standing in for systemd's.
struct Systemd {
    socket: UnixDatagram,
    /// Every notification received, in order.
    seen: Vec<String>,
}

impl Systemd {
    fn new(socket: UnixDatagram) -> Systemd {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Systemd {
            socket,
            seen: Vec::new(),
        }
    }

    /// Receives until a notification satisfies `want` (returned), at most
    /// `timeout`.
    fn until(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let m = String::from_utf8(buf[..n].to_vec()).unwrap();
                self.seen.push(m.clone());
                if want(&m) {
                    return Some(m);
                }
            }
        }
        None
    }

    /// The notifications seen so far, other than watchdog pings.
    fn not_pings(&self) -> Vec<&str> {
        self.seen
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "WATCHDOG=1")
            .collect()
    }
}

#[test]
fn ready_status_watchdog_reload_and_stop_reach_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let path1 = dir.path().join("notify-w1");
    let mut systemd1 = Systemd::new(UnixDatagram::bind(&path1).unwrap());
    let abstract_name = format!("director-test-notify-{}", std::process::id());
    let mut systemd2 = Systemd::new(
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap(),
    );

    // Watchdog every 400 ms: pings every 200 ms.
    let w1 = Director::start(
        &config(dir.path(), 1, ports),
        path1.to_str().unwrap(),
        Some(400_000),
    );
    let w2 = Director::start(
        &config(dir.path(), 2, ports),
        &format!("@{abstract_name}"),
        None,
    );

    let wait = Duration::from_secs(30);
    let ready1 = systemd1.until(wait, |m| m.starts_with("READY=1"));
    let ready2 = systemd2.until(wait, |m| m.starts_with("READY=1"));
    let (Some(ready1), Some(ready2)) = (ready1, ready2) else {
        panic!(
            "no READY=1: w1 sent {:?}, w2 sent {:?}\nw1:\n{}\nw2:\n{}",
            systemd1.seen,
            systemd2.seen,
            w1.log(),
            w2.log()
        );
    };
    assert_eq!(
        systemd1.not_pings().first(),
        Some(&"STATUS=joining the Raft group")
    );
    assert_eq!(
        systemd2.seen.first().map(String::as_str),
        Some("STATUS=joining the Raft group")
    );
    // One of the two leads, the other follows it; neither holds VIPs.
    let readies = [ready1.as_str(), ready2.as_str()];
    for r in readies {
        assert!(r.starts_with("READY=1\nSTATUS="), "{r}");
        assert!(r.contains("(witness)") && r.ends_with(", 0 VIPs"), "{r}");
    }
    let leaders = readies
        .iter()
        .filter(|r| r.contains("STATUS=leader (witness)"))
        .count();
    let followers = readies
        .iter()
        .filter(|r| r.contains("STATUS=follower (witness), leader w"))
        .count();
    assert!(leaders <= 1 && leaders + followers >= 1, "{readies:?}");

    // The watchdog pings keep coming after readiness; w2 has no watchdog.
    systemd1.seen.clear();
    assert!(systemd1
        .until(Duration::from_secs(5), |m| m == "WATCHDOG=1")
        .is_some());
    assert!(!systemd2.seen.iter().any(|m| m == "WATCHDOG=1"));

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1.
    w1.signal(Signal::SIGHUP);
    let reloading = systemd1
        .until(Duration::from_secs(10), |m| m.starts_with("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {:?}\n{}", systemd1.seen, w1.log()));
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().is_ok(), "{reloading:?}");
    assert!(systemd1
        .until(Duration::from_secs(10), |m| m == "READY=1")
        .is_some());

    // SIGTERM to the leader: STOPPING=1 (a witness has no VIPs to hand
    // over), then exit 0; the other one's status line changes, since it
    // has no leader any more; then SIGTERM to it.
    let first_is_leader = ready1.contains("STATUS=leader") || ready2.contains("leader w1");
    let (mut leader, mut follower) = if first_is_leader {
        ((w1, systemd1), (w2, systemd2))
    } else {
        ((w2, systemd2), (w1, systemd1))
    };
    leader.0.signal(Signal::SIGTERM);
    let stopping = leader
        .1
        .until(Duration::from_secs(10), |m| m.starts_with("STOPPING=1"));
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\nSTATUS=stopping"));
    assert!(
        leader.0.exited_cleanly(Duration::from_secs(20)),
        "{}",
        leader.0.log()
    );
    let alone = follower.1.until(Duration::from_secs(10), |m| {
        m.starts_with("STATUS=") && !m.contains("leader w")
    });
    assert_eq!(alone.as_deref(), Some("STATUS=no leader (witness), 0 VIPs"));
    follower.0.signal(Signal::SIGTERM);
    let stopping = follower
        .1
        .until(Duration::from_secs(10), |m| m.starts_with("STOPPING=1"));
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\nSTATUS=stopping"));
    assert!(
        follower.0.exited_cleanly(Duration::from_secs(20)),
        "{}",
        follower.0.log()
    );
}
