//! conntrackd (conntrack-tools): the netfilter connection table, synced
//! between the directors, for `nat` with its source NAT.
//!
//! The IPVS sync daemons carry IPVS's own connection entries, but a
//! connection that `nat` source-NATs also has netfilter state on its owner:
//! the conntrack entry that maps the node's replies (to VIP:PORT) back to
//! the client. A new owner without it takes the connection's next packet
//! for a new flow and the node resets it. conntrackd keeps every director's
//! entries in the others' external caches (FTFW over multicast on the
//! interface); a director about to take a VIP commits that cache into its
//! kernel first ([`Conntrackd::commit`]), so the connection's packets find
//! their NAT state when they arrive.
//!
//! Director runs conntrackd as its child, with a configuration it writes to
//! the data directory, restarts it when it exits, and stops it when
//! director stops.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use crate::config::ConfigCell;

/// The multicast group conntrackd syncs on.
pub const GROUP: &str = "225.0.0.50";
/// Its port, plus the sync ID (two clusters on one LAN apart).
pub const PORT_BASE: u16 = 3780;
/// The longest a commit may delay taking a VIP.
pub const COMMIT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The name of its control socket in the data directory.
const SOCKET: &str = "conntrackd.ctl";

/// conntrackd's control request "commit the external cache" (`conntrackd
/// -c ct`; conntrack-tools' `CT_COMMIT`).
const CT_COMMIT: i32 = 18;

/// One request on conntrackd's control socket, as its own client makes
/// it: the request code (a native-endian C `int`), then its reply until
/// conntrackd closes the connection (for a commit: once it is done). In
/// process rather than `conntrackd -c`: starting that program (which reads
/// the whole configuration to find the socket) cost a takeover hundreds of
/// milliseconds under emulation.
async fn request(socket: &Path, code: i32) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream.write_all(&code.to_ne_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// conntrackd's configuration for a director: FTFW sync over multicast on
/// `interface` from `address`, its lock and control socket in `dir`, the
/// directors' own traffic (`ignore`: their addresses) left out.
pub fn config_text(
    interface: &str,
    address: IpAddr,
    sync_id: u8,
    dir: &Path,
    ignore: &[IpAddr],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by director: changes are overwritten.");
    let _ = writeln!(s, "Sync {{");
    let _ = writeln!(s, "    Mode FTFW {{");
    let _ = writeln!(s, "        DisableExternalCache Off");
    let _ = writeln!(s, "        CommitTimeout 1800");
    let _ = writeln!(s, "        PurgeTimeout 5");
    // A director started while the others carry connections asks them for
    // their whole table, so that it knows those connections' NAT state when
    // their VIP moves to it.
    let _ = writeln!(s, "        StartupResync on");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    Multicast {{");
    let _ = writeln!(s, "        IPv4_address {GROUP}");
    let _ = writeln!(s, "        Group {}", PORT_BASE + u16::from(sync_id));
    if let IpAddr::V4(a) = address {
        let _ = writeln!(s, "        IPv4_interface {a}");
    }
    let _ = writeln!(s, "        Interface {interface}");
    let _ = writeln!(s, "        SndSocketBuffer 1249280");
    let _ = writeln!(s, "        RcvSocketBuffer 1249280");
    let _ = writeln!(s, "        Checksum on");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "General {{");
    let _ = writeln!(s, "    HashSize 32768");
    let _ = writeln!(s, "    HashLimit 262144");
    let _ = writeln!(s, "    LogFile off");
    let _ = writeln!(s, "    Syslog off");
    let _ = writeln!(s, "    LockFile {}", dir.join("conntrackd.lock").display());
    let _ = writeln!(s, "    UNIX {{");
    let _ = writeln!(s, "        Path {}", dir.join(SOCKET).display());
    let _ = writeln!(s, "        Backlog 20");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    NetlinkBufferSize 2097152");
    let _ = writeln!(s, "    NetlinkBufferSizeMaxGrowth 8388608");
    let _ = writeln!(s, "    Filter From Userspace {{");
    let _ = writeln!(s, "        Protocol Accept {{");
    let _ = writeln!(s, "            TCP");
    let _ = writeln!(s, "            UDP");
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "        Address Ignore {{");
    let mut list: Vec<IpAddr> = vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    list.extend(ignore.iter().copied());
    list.sort();
    list.dedup();
    for a in list {
        let family = if a.is_ipv4() { "IPv4" } else { "IPv6" };
        let _ = writeln!(s, "            {family}_address {a}");
    }
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "}}");
    s
}

/// A command running `binary` as a child that dies with director: through
/// util-linux's `setpriv --pdeathsig KILL` where it is installed (a
/// director killed outright, not stopped, leaves no conntrackd behind; under
/// systemd the unit's control group does the same).
fn child_command(binary: &Path) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if Path::new(SETPRIV).exists() {
        let mut c = Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

/// The conntrackd of this director.
#[derive(Debug)]
pub struct Conntrackd {
    config: Arc<ConfigCell>,
    /// Where its configuration, lock and control socket live.
    dir: PathBuf,
    /// This director's address on the interface.
    address: IpAddr,
    /// Why it is not running, if it is not.
    problem: Mutex<Option<String>>,
}

impl Conntrackd {
    /// conntrackd for the director at `address`, its files in `dir`.
    pub fn new(config: Arc<ConfigCell>, dir: PathBuf, address: IpAddr) -> Self {
        Conntrackd {
            config,
            dir,
            address,
            problem: Mutex::new(None),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }

    /// Its control socket.
    fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Why conntrackd is not running now (None: running for a few seconds
    /// at least, starting, or not wanted).
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p;
        }
    }

    /// Whether the configuration asks for it.
    fn wanted(&self) -> bool {
        let c = self.config.get();
        c.sync.enabled && c.sync.conntrack
    }

    /// The configuration it runs with now.
    fn text(&self) -> String {
        let c = self.config.get();
        let interface = c.sync.interface.clone().unwrap_or(c.interface.clone());
        let ignore: Vec<IpAddr> = c.peers.iter().map(|p| p.address.ip()).collect();
        config_text(&interface, self.address, c.sync.sync_id, &self.dir, &ignore)
    }

    /// Puts the external cache (the other directors' connections) into
    /// the kernel's connection table, at most [`COMMIT_TIMEOUT`]; before
    /// this director takes a VIP.
    pub async fn commit(&self) {
        if !self.wanted() || self.problem().is_some() {
            return;
        }
        let socket = self.socket();
        let started = std::time::Instant::now();
        match tokio::time::timeout(COMMIT_TIMEOUT, request(&socket, CT_COMMIT)).await {
            Ok(Ok(reply)) => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                reply = %reply.trim(),
                "conntrackd: external cache committed"
            ),
            Ok(Err(e)) => tracing::warn!(
                socket = %socket.display(),
                error = %e,
                "conntrackd: commit failed; NAT connections of the VIPs taken now may reset"
            ),
            Err(_) => tracing::warn!(
                "conntrackd: commit took over {COMMIT_TIMEOUT:?}; taking the VIP without it"
            ),
        }
    }

    /// Runs conntrackd while the configuration asks for it, until `stop`:
    /// restarted when it exits (after a second) or its configuration
    /// changes, stopped with director.
    pub async fn run(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if !self.wanted() {
                self.set_problem(None);
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
                continue;
            }
            let text = self.text();
            let binary = self.config.get().sync.conntrackd.clone();
            // A lock left by a conntrackd that was killed would keep the
            // next one from starting.
            let _ = std::fs::remove_file(self.dir.join("conntrackd.lock"));
            let _ = std::fs::remove_file(self.socket());
            let started = std::fs::write(self.conf(), &text)
                .map_err(|e| format!("writing {}: {e}", self.conf().display()))
                .and_then(|()| {
                    child_command(&binary)
                        .arg("-C")
                        .arg(self.conf())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| format!("starting {}: {e}", binary.display()))
                });
            let mut child = match started {
                Ok(c) => c,
                Err(e) => {
                    if self.problem().as_deref() != Some(&e) {
                        tracing::error!(
                            error = %e,
                            "conntrackd is not running: nat connections reset when their VIP moves"
                        );
                    }
                    self.set_problem(Some(e));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        r = changes.changed() => if r.is_err() { return },
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            };
            tracing::info!(pid = child.id(), "conntrackd started");
            // Running: the problem of an earlier start clears once this one
            // has lasted a few seconds.
            let settled = tokio::time::sleep(Duration::from_secs(3));
            tokio::pin!(settled);
            let mut cleared = false;
            let exited = loop {
                tokio::select! {
                    () = &mut settled, if !cleared => {
                        cleared = true;
                        self.set_problem(None);
                    }
                    r = child.wait() => break Some(r),
                    r = changes.changed() => {
                        if r.is_err()
                            || self.text() != text
                            || !self.wanted()
                            || self.config.get().sync.conntrackd != binary
                        {
                            break None;
                        }
                    }
                    _ = stop.changed() => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return;
                    }
                }
            };
            match exited {
                Some(r) => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use tokio::io::AsyncReadExt;
                        let mut buf = Vec::new();
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            e.read_to_end(&mut buf),
                        )
                        .await;
                        err = String::from_utf8_lossy(&buf).trim().to_string();
                    }
                    let why = match r {
                        Ok(s) => format!("conntrackd exited ({s}): {err}"),
                        Err(e) => format!("conntrackd: {e}"),
                    };
                    // Once per distinct reason: a conntrackd that cannot
                    // start exits the same way every second.
                    if self.problem().as_deref() != Some(&why) {
                        tracing::error!(error = %why, "conntrackd stopped; starting it again");
                    }
                    self.set_problem(Some(why));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
                None => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    tracing::info!("conntrackd: configuration changed; restarting it");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_syncs_on_the_interface_and_ignores_the_directors() {
        let t = config_text(
            "eth0",
            "10.10.0.11".parse().unwrap(),
            1,
            Path::new("/var/lib/director"),
            &["10.10.0.11".parse().unwrap(), "10.10.0.12".parse().unwrap()],
        );
        assert!(t.contains("Mode FTFW {"), "{t}");
        assert!(t.contains("StartupResync on"), "{t}");
        assert!(t.contains("IPv4_address 225.0.0.50"), "{t}");
        assert!(t.contains("Group 3781"), "{t}");
        assert!(t.contains("IPv4_interface 10.10.0.11"), "{t}");
        assert!(t.contains("Interface eth0"), "{t}");
        assert!(
            t.contains("LockFile /var/lib/director/conntrackd.lock"),
            "{t}"
        );
        assert!(t.contains("Path /var/lib/director/conntrackd.ctl"), "{t}");
        assert!(t.contains("IPv4_address 10.10.0.12"), "{t}");
        assert!(t.contains("IPv6_address ::1"), "{t}");
        // Balanced braces: conntrackd refuses the file otherwise.
        assert_eq!(t.matches('{').count(), t.matches('}').count());
    }

    /// The request as conntrackd's own client sends it (the code as a
    /// native-endian int), and the reply read until conntrackd closes.
    #[tokio::test]
    async fn a_commit_is_the_request_code_then_the_reply_until_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conntrackd.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut code = [0u8; 4];
            s.read_exact(&mut code).await.unwrap();
            s.write_all(b"done\n").await.unwrap();
            i32::from_ne_bytes(code)
        });
        let reply = request(&path, CT_COMMIT).await.unwrap();
        assert_eq!(server.await.unwrap(), 18);
        assert_eq!(reply, "done\n");
        // No conntrackd listening: an error naming the cause.
        let gone = request(&dir.path().join("absent.ctl"), CT_COMMIT).await;
        assert_eq!(gone.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
}
