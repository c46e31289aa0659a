//! Telling systemd how the daemon is doing, in the sd_notify(3) protocol:
//! `READY=1` once the director serves, `STATUS=` lines with its role and
//! held VIPs, `WATCHDOG=1` pings, `RELOADING=1` around a reload and
//! `STOPPING=1` before the drain (`Type=notify` or `Type=notify-reload` in
//! the unit, `WatchdogSec=` for the pings).
//!
//! Each notification is one datagram of `NAME=VALUE` lines sent to the
//! socket `$NOTIFY_SOCKET` names: a path, or `@name` for a socket in the
//! abstract namespace. Without `$NOTIFY_SOCKET` (not started by systemd,
//! or `Type=exec`) every call does nothing. A failed send is logged once and
//! never stops the daemon: systemd then acts on its own timeouts.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Daemon;
use crate::config::PeerRole;

/// Why a notification could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("NOTIFY_SOCKET={value:?}: {reason}")]
    Address {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The datagram socket to send from could not be opened.
    #[error("opening a Unix datagram socket: {0}")]
    OpenSocket(io::Error),
    /// A notification was not delivered.
    #[error("sending {message:?} to NOTIFY_SOCKET: {source}")]
    Send {
        /// The notification's first line (`READY=1`).
        message: String,
        /// The OS error.
        source: io::Error,
    },
    /// `$WATCHDOG_USEC` is not a positive number of microseconds.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    WatchdogUsec(String),
    /// `$WATCHDOG_PID` is not a process id.
    #[error("WATCHDOG_PID={0:?} is not a process id")]
    WatchdogPid(String),
}

impl NotifyError {
    /// Whether the same notification may get through later: only a failed
    /// send (systemd busy or restarting); a bad variable stays bad.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NotifyError::Send { .. })
    }
}

/// One `NAME=VALUE` line of a notification (sd_notify(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field<'a> {
    /// `READY=1`: startup, or a reload, is finished.
    Ready,
    /// `RELOADING=1`, with `MONOTONIC_USEC=` (CLOCK_MONOTONIC when the
    /// reload began) when the clock could be read; `Type=notify-reload`
    /// needs it.
    Reloading {
        /// CLOCK_MONOTONIC in microseconds.
        monotonic_usec: Option<u64>,
    },
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `STATUS=...`: one line for `systemctl status`.
    Status(&'a str),
    /// `WATCHDOG=1`: still alive.
    Watchdog,
}

/// The datagram carrying `fields`, one line each. A status line loses its
/// line breaks, which would start a new field.
pub fn encode(fields: &[Field<'_>]) -> String {
    let lines: Vec<String> = fields
        .iter()
        .map(|f| match f {
            Field::Ready => "READY=1".to_string(),
            Field::Reloading {
                monotonic_usec: Some(t),
            } => format!("RELOADING=1\nMONOTONIC_USEC={t}"),
            Field::Reloading {
                monotonic_usec: None,
            } => "RELOADING=1".to_string(),
            Field::Stopping => "STOPPING=1".to_string(),
            Field::Status(s) => format!("STATUS={}", s.replace(['\n', '\r'], " ")),
            Field::Watchdog => "WATCHDOG=1".to_string(),
        })
        .collect();
    lines.join("\n")
}

/// The socket address `$NOTIFY_SOCKET` names: `/path`, or `@name` in the
/// abstract namespace; None when it is unset or empty.
pub fn socket_address(value: Option<&OsStr>) -> Result<Option<SocketAddr>, NotifyError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |reason: String| NotifyError::Address {
        value: value.to_string_lossy().into_owned(),
        reason,
    };
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])
            .map(Some)
            .map_err(|e| bad(e.to_string())),
        _ => Err(bad(
            "not an absolute path or @name (other socket kinds are not supported)".into(),
        )),
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, as systemd
/// advises, when it is set and `$WATCHDOG_PID` is unset or names `pid`
/// (this process); None otherwise.
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let micros = match usec.trim().parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => return Err(NotifyError::WatchdogUsec(usec.to_string())),
    };
    if let Some(p) = watchdog_pid {
        let owner = p
            .trim()
            .parse::<u32>()
            .map_err(|_| NotifyError::WatchdogPid(p.to_string()))?;
        if owner != pid {
            return Ok(None);
        }
    }
    Ok(Some(
        Duration::from_micros(micros / 2).max(Duration::from_millis(1)),
    ))
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is read on.
fn monotonic_usec() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    secs.checked_mul(1_000_000)?.checked_add(nanos / 1000)
}

/// Where notifications go.
#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
}

/// Sends notifications to systemd; does nothing without `$NOTIFY_SOCKET`.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    /// READY=1 has been sent.
    ready: AtomicBool,
    /// A failed send has been logged.
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier systemd's variables ask for (`$NOTIFY_SOCKET`,
    /// `$WATCHDOG_USEC`, `$WATCHDOG_PID`). A variable it cannot use is
    /// logged and leaves that part off.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no systemd watchdog pings");
                None
            });
        let notifier =
            socket_address(socket.as_deref()).and_then(|address| Notifier::new(address, watchdog));
        match notifier {
            Ok(n) => {
                if n.enabled() {
                    tracing::debug!(watchdog = ?n.watchdog, "notifying systemd");
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "systemd is not notified");
                Notifier::disabled()
            }
        }
    }

    /// A notifier sending to `address` (None: sending nothing), pinging
    /// the watchdog every `watchdog` if set.
    pub fn new(
        address: Option<SocketAddr>,
        watchdog: Option<Duration>,
    ) -> Result<Notifier, NotifyError> {
        let enabled = address.is_some();
        let target = match address {
            Some(address) => {
                let socket = UnixDatagram::unbound().map_err(NotifyError::OpenSocket)?;
                // A full receive queue must not stall the runtime: the
                // notification is dropped and logged instead.
                socket
                    .set_nonblocking(true)
                    .map_err(NotifyError::OpenSocket)?;
                Some(Target { socket, address })
            }
            None => None,
        };
        Ok(Notifier {
            target,
            watchdog: watchdog.filter(|_| enabled),
            ..Default::default()
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often [`Notifier::watchdog_loop`] pings, when systemd watches.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Whether READY=1 has been sent.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sends `fields` as one datagram; Ok(()) without a socket.
    pub fn try_notify(&self, fields: &[Field<'_>]) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        let message = encode(fields);
        t.socket
            .send_to_addr(message.as_bytes(), &t.address)
            .map_err(|source| NotifyError::Send {
                message: message.lines().next().unwrap_or_default().to_string(),
                source,
            })?;
        if fields.contains(&Field::Ready) {
            self.ready.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Sends `fields` as one datagram; a failure is logged (the first
    /// only) and otherwise ignored.
    pub fn notify(&self, fields: &[Field<'_>]) {
        if let Err(e) = self.try_notify(fields) {
            if !self.warned.swap(true, Ordering::SeqCst) {
                tracing::warn!(error = %e, "cannot notify systemd (further failures are not logged)");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&[Field::Ready, Field::Status(status)]);
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.notify(&[Field::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.notify(&[Field::Watchdog]);
    }

    /// `RELOADING=1` and `MONOTONIC_USEC=` now.
    pub fn reloading(&self) {
        self.notify(&[Field::Reloading {
            monotonic_usec: monotonic_usec(),
        }]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&[Field::Stopping, Field::Status(status)]);
    }

    /// Pings the watchdog every [`Notifier::watchdog_interval`] until `stop`
    /// is set; returns at once when systemd does not watch. It runs on the
    /// daemon's runtime, so a runtime that stops making progress stops the
    /// pings and systemd restarts the daemon.
    pub async fn watchdog_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(every) = self.watchdog else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = tick.tick() => self.watchdog(),
                r = stop.changed() => if r.is_err() { return },
            }
        }
    }
}

/// What the `STATUS=` line says about this director.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// This director leads the Raft group.
    pub leads: bool,
    /// The leader's name, when another director leads.
    pub leader: Option<String>,
    /// This director is a witness.
    pub witness: bool,
    /// VIPs this director holds now; None when it cannot hold any (a
    /// witness, or no ARP or rtnetlink socket).
    pub held: Option<usize>,
    /// VIPs allocated in the group.
    pub vips: usize,
    /// This director is draining.
    pub draining: bool,
    /// What is wrong here (`IPVS unavailable`, `ipvs: last pass failed`).
    pub problems: Vec<String>,
}

impl Summary {
    /// This director now: the Raft leader, the hold rule's VIPs (as
    /// `director status` shows them under `held_here`), the allocations,
    /// and what is not working (no IPVS, no ARP or rtnetlink socket, a
    /// reconciler whose last pass failed).
    pub fn of(d: &Daemon) -> Summary {
        let config = d.config.get();
        let me = d.node.id();
        let leader = d.node.leader();
        let state = d.node.state();
        let witness = config
            .peers
            .iter()
            .any(|p| p.id == me && p.role == PeerRole::Witness);
        let name = |id: u64| {
            config
                .peers
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| format!("id {id}"))
        };
        let mut problems = Vec::new();
        if !witness {
            if d.ipvs.is_none() {
                problems.push("IPVS unavailable".to_string());
            }
            if d.announcer.is_none() {
                problems.push("no VIP held here (no ARP or rtnetlink socket)".to_string());
            }
        }
        for r in &d.reconcilers {
            if r.stats.error().is_some() {
                problems.push(format!("{}: last pass failed", r.name));
            }
        }
        Summary {
            leads: leader == Some(me),
            leader: leader.filter(|l| *l != me).map(name),
            witness,
            held: d.announcer.as_ref().map(|a| a.rule().held().len()),
            vips: state.allocations.len(),
            draining: state.draining.contains_key(&me),
            problems,
        }
    }

    /// The line: `leader, holding 3 of 12 VIPs`,
    /// `follower, leader d1, holding 0 of 12 VIPs`,
    /// `follower (witness), leader d1, 12 VIPs`, then `, draining` and
    /// `; PROBLEM` for each problem.
    pub fn line(&self) -> String {
        let mut s = String::new();
        s.push_str(match (self.leads, &self.leader) {
            (true, _) => "leader",
            (false, Some(_)) => "follower",
            (false, None) => "no leader",
        });
        if self.witness {
            s.push_str(" (witness)");
        }
        if let (false, Some(l)) = (self.leads, &self.leader) {
            s.push_str(", leader ");
            s.push_str(l);
        }
        let plural = |n: usize| if n == 1 { "VIP" } else { "VIPs" };
        match self.held {
            Some(h) => s.push_str(&format!(
                ", holding {h} of {} {}",
                self.vips,
                plural(self.vips)
            )),
            None => s.push_str(&format!(", {} {}", self.vips, plural(self.vips))),
        }
        if self.draining {
            s.push_str(", draining");
        }
        for p in &self.problems {
            s.push_str("; ");
            s.push_str(p);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket standing in for systemd's notification socket.
    struct Systemd {
        socket: UnixDatagram,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    impl Systemd {
        fn bind() -> Systemd {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Systemd {
                socket,
                _dir: dir,
                path,
            }
        }

        fn notifier(&self, watchdog: Option<Duration>) -> Notifier {
            let addr = socket_address(Some(self.path.as_os_str())).unwrap();
            Notifier::new(addr, watchdog).unwrap()
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        fn nothing_queued(&self) -> bool {
            self.socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 16];
            let r = self.socket.recv(&mut buf);
            self.socket.set_nonblocking(false).unwrap();
            matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }

    // sd_notify(3): "READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1",
    // "RELOADING=1" with "MONOTONIC_USEC=", newline-separated in one datagram.
    #[test]
    fn each_notification_is_one_datagram_of_the_documented_lines() {
        let systemd = Systemd::bind();
        let n = systemd.notifier(None);
        assert!(n.enabled());
        assert!(!n.is_ready());
        n.ready("leader, holding 1 of 1 VIP");
        assert_eq!(systemd.recv(), "READY=1\nSTATUS=leader, holding 1 of 1 VIP");
        assert!(n.is_ready());
        n.status("follower, leader d1, holding 0 of 2 VIPs");
        assert_eq!(
            systemd.recv(),
            "STATUS=follower, leader d1, holding 0 of 2 VIPs"
        );
        n.watchdog();
        assert_eq!(systemd.recv(), "WATCHDOG=1");
        n.stopping("stopping");
        assert_eq!(systemd.recv(), "STOPPING=1\nSTATUS=stopping");
        assert!(systemd.nothing_queued());
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let systemd = Systemd::bind();
        let n = systemd.notifier(None);
        let before = monotonic_usec().unwrap();
        n.reloading();
        let got = systemd.recv();
        let after = monotonic_usec().unwrap();
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let t: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn a_status_line_cannot_start_another_field() {
        assert_eq!(
            encode(&[Field::Status("a\nREADY=1\r")]),
            "STATUS=a READY=1 "
        );
        assert_eq!(
            encode(&[Field::Reloading {
                monotonic_usec: None
            }]),
            "RELOADING=1"
        );
    }

    #[test]
    fn abstract_socket_names_start_with_an_at_sign() {
        let name = format!("director-notify-test-{}", std::process::id());
        let listen = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&listen).unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let value = std::ffi::OsString::from(format!("@{name}"));
        let addr = socket_address(Some(&value)).unwrap().unwrap();
        assert_eq!(addr.as_abstract_name(), Some(name.as_bytes()));
        let n = Notifier::new(Some(addr), None).unwrap();
        n.ready("ready");
        let mut buf = [0u8; 64];
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ready");
    }

    #[test]
    fn notify_socket_values() {
        assert!(socket_address(None).unwrap().is_none());
        assert!(socket_address(Some(OsStr::new(""))).unwrap().is_none());
        let p = socket_address(Some(OsStr::new("/run/systemd/notify")))
            .unwrap()
            .unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        for bad in ["relative/path", "vsock:2:1234"] {
            let e = socket_address(Some(OsStr::new(bad))).unwrap_err();
            assert!(matches!(e, NotifyError::Address { .. }), "{bad}: {e}");
            assert!(!e.is_retryable());
        }
        // Longer than sun_path.
        let long = format!("/{}", "x".repeat(200));
        assert!(socket_address(Some(OsStr::from_bytes(long.as_bytes()))).is_err());
    }

    // systemd.service(5), WatchdogSec=: the daemon should ping at about half
    // the interval; sd_watchdog_enabled(3): WATCHDOG_PID, when set, names
    // the process that is to ping.
    #[test]
    fn the_watchdog_is_pinged_at_half_its_interval_by_the_named_process() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_interval(None, None, 42).unwrap(), None);
        assert_eq!(watchdog_interval(Some("10000000"), None, 42).unwrap(), half);
        assert_eq!(
            watchdog_interval(Some("10000000"), Some("42"), 42).unwrap(),
            half
        );
        assert_eq!(
            watchdog_interval(Some("10000000"), Some("43"), 42).unwrap(),
            None
        );
        assert_eq!(
            watchdog_interval(Some("3"), None, 42).unwrap(),
            Some(Duration::from_millis(1))
        );
        assert!(matches!(
            watchdog_interval(Some("0"), None, 42),
            Err(NotifyError::WatchdogUsec(_))
        ));
        assert!(matches!(
            watchdog_interval(Some("ten"), None, 42),
            Err(NotifyError::WatchdogUsec(_))
        ));
        assert!(matches!(
            watchdog_interval(Some("10000000"), Some("me"), 42),
            Err(NotifyError::WatchdogPid(_))
        ));
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::new(None, Some(Duration::from_secs(1))).unwrap();
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("ready");
        n.watchdog();
        assert!(n.try_notify(&[Field::Stopping]).is_ok());
        assert!(!Notifier::disabled().enabled());
    }

    #[test]
    fn a_failed_send_is_an_error_but_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("no-such-socket");
        let addr = socket_address(Some(gone.as_os_str())).unwrap();
        let n = Notifier::new(addr, None).unwrap();
        let e = n.try_notify(&[Field::Ready]).unwrap_err();
        assert!(matches!(e, NotifyError::Send { .. }), "{e}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains("READY=1"), "{e}");
        assert!(!n.is_ready());
        n.ready("ready");
        n.ready("ready");
        assert!(n.warned.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_loop_pings_every_interval_until_stopped() {
        let systemd = Systemd::bind();
        let n = Arc::new(systemd.notifier(Some(Duration::from_secs(5))));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(n.clone().watchdog_loop(stop_rx));
        // The first tick is immediate, then one every 5 s.
        tokio::time::sleep(Duration::from_millis(14_900)).await;
        for _ in 0..3 {
            assert_eq!(systemd.recv(), "WATCHDOG=1");
        }
        assert!(systemd.nothing_queued());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(systemd.nothing_queued());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_the_loop_returns_at_once() {
        let systemd = Systemd::bind();
        let n = Arc::new(systemd.notifier(None));
        let (_stop_tx, stop_rx) = watch::channel(false);
        n.watchdog_loop(stop_rx).await;
        assert!(systemd.nothing_queued());
    }

    #[test]
    fn status_lines() {
        let follower = Summary {
            leads: false,
            leader: Some("d1".into()),
            witness: false,
            held: Some(0),
            vips: 12,
            draining: false,
            problems: vec![],
        };
        assert_eq!(follower.line(), "follower, leader d1, holding 0 of 12 VIPs");
        let leader = Summary {
            leads: true,
            leader: None,
            held: Some(3),
            ..follower.clone()
        };
        assert_eq!(leader.line(), "leader, holding 3 of 12 VIPs");
        let witness = Summary {
            witness: true,
            held: None,
            vips: 1,
            ..follower.clone()
        };
        assert_eq!(witness.line(), "follower (witness), leader d1, 1 VIP");
        let alone = Summary {
            leader: None,
            draining: true,
            problems: vec!["IPVS unavailable".into(), "routes: last pass failed".into()],
            ..follower
        };
        assert_eq!(
            alone.line(),
            "no leader, holding 0 of 12 VIPs, draining; IPVS unavailable; routes: last pass failed"
        );
    }
}
