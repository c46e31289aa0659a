//! Building blocks of end-to-end scenarios: programming a director by hand with
//! the kernel's own tools, and measuring what the client sees.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabError};
use crate::topology::{Host, NODEPORT_HTTP};

/// The one-arm NAT data path of DESIGN.md, set up with `ipvsadm`, `ip` and
/// `nft` in one director host:
///
/// - the VIP is local but unannounced: `ip route add local VIP/32 dev lo table
///   local` with `arp_ignore=1` on eth0, so the kernel accepts traffic for it
///   but never answers ARP for it;
/// - `ipvsadm -A -t VIP:PORT -s SCHEDULER` with one masquerading destination
///   per node at its HTTP NodePort;
/// - `net.ipv4.ip_forward=1`, `net.ipv4.vs.conntrack=1` and an nftables
///   postrouting masquerade for traffic to the nodes' NodePort, so replies come
///   back through the director without routes on the nodes;
/// - the client is told the VIP's MAC with a permanent neighbour entry (the
///   director daemon announces it with gratuitous ARP instead).
#[derive(Debug, Clone)]
pub struct NatService {
    /// The director that holds the VIP.
    pub director: Host,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The IPVS scheduler name (rr, lc, sh, ...).
    pub scheduler: String,
    /// The backend nodes, each served at its HTTP NodePort.
    pub nodes: Vec<Host>,
}

impl NatService {
    /// Programs the service into the lab. Needs a kernel with IPVS.
    pub fn program(&self, lab: &Lab) -> Result<(), LabError> {
        let d = self.director.name();
        let vip = self.vip.to_string();
        let service = format!("{vip}:{}", self.port);
        lab.exec(&d, &["modprobe", "ip_vs"])?;
        lab.exec(&d, &["modprobe", &format!("ip_vs_{}", self.scheduler)])?;
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.vs.conntrack=1",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_ignore=1",
        ] {
            lab.exec(&d, &["sysctl", "-qw", sysctl])?;
        }
        lab.exec(
            &d,
            &[
                "ip",
                "route",
                "replace",
                "local",
                &format!("{vip}/32"),
                "dev",
                "lo",
                "table",
                "local",
            ],
        )?;
        lab.exec(
            &d,
            &["ipvsadm", "-A", "-t", &service, "-s", &self.scheduler],
        )?;
        for node in &self.nodes {
            let real = format!("{}:{NODEPORT_HTTP}", node.ipv4());
            lab.exec(
                &d,
                &[
                    "ipvsadm", "-a", "-t", &service, "-r", &real, "-m", "-w", "1",
                ],
            )?;
        }
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.ipv4().to_string()).collect();
        let ruleset = format!(
            "table ip lab_snat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip daddr {{ {} }} tcp dport {NODEPORT_HTTP} masquerade\n  }}\n}}\n",
            addrs.join(", ")
        );
        let path = lab
            .env()
            .state_dir
            .join(format!("{}{d}-snat.nft", lab.spec().prefix));
        std::fs::write(&path, ruleset).map_err(|source| LabError::Io {
            op: "writing",
            path: path.clone(),
            source,
        })?;
        lab.exec(&d, &["nft", "-f", &path.to_string_lossy()])?;
        lab.exec(
            "client",
            &[
                "ip",
                "neigh",
                "replace",
                &vip,
                "lladdr",
                &self.director.mac_string(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        Ok(())
    }
}

/// What `labnet http-get` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpTally {
    /// Requests sent.
    pub requests: u32,
    /// Answers per node name.
    pub served: BTreeMap<String, u32>,
    /// Requests that got no good answer.
    pub failed: u32,
    /// Failures by reason.
    pub errors: BTreeMap<String, u32>,
    /// [ms after the start, ms taken] of the first failures (loops only).
    #[serde(default)]
    pub failed_at_ms: Vec<(u64, u64)>,
    /// [ms after the start, ms taken] of answers that took over 900 ms.
    #[serde(default)]
    pub slow_at_ms: Vec<(u64, u64)>,
}

impl HttpTally {
    /// How many answers came from `node`.
    pub fn from(&self, node: &str) -> u32 {
        self.served.get(node).copied().unwrap_or(0)
    }
}

/// Sends `count` HTTP requests from `host` to `target` (ADDR:PORT), each on a
/// new connection, and tallies which node answered.
pub fn http_tally(lab: &Lab, host: &str, target: &str, count: u32) -> Result<HttpTally, LabError> {
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    let out = lab.exec(
        host,
        &[&labnet, "http-get", target, "--count", &count.to_string()],
    )?;
    serde_json::from_str(out.trim()).map_err(|source| LabError::BadOutput {
        command: format!("[{host}] labnet http-get {target}"),
        source,
    })
}

/// A `labnet` command running in the background in a lab host, whose JSON
/// report is read when it ends.
#[derive(Debug)]
struct Background {
    child: std::process::Child,
    what: String,
}

impl Background {
    /// Starts `labnet ARGS` in `host`.
    fn start(lab: &Lab, host: &str, args: &[String]) -> Result<Self, LabError> {
        let labnet = lab.env().labnet.clone();
        let mut cmd = lab.command(host, &labnet.to_string_lossy())?;
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().map_err(|source| LabError::Io {
            op: "starting",
            path: labnet,
            source,
        })?;
        Ok(Background {
            child,
            what: format!(
                "[{host}] labnet {}",
                args.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
            ),
        })
    }

    /// Waits until it ends; its report.
    fn finish<T: serde::de::DeserializeOwned>(self) -> Result<T, LabError> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|source| LabError::Io {
                op: "waiting for",
                path: self.what.clone().into(),
                source,
            })?;
        serde_json::from_slice(&out.stdout).map_err(|source| LabError::BadOutput {
            command: self.what,
            source,
        })
    }
}

/// A client loop in the background: HTTP GETs, each on a new connection,
/// one after another for a fixed time (`labnet http-get --for-ms`).
#[derive(Debug)]
pub struct ClientLoop(Background);

impl ClientLoop {
    /// Starts it in `host` against `target` for `span`.
    pub fn start(lab: &Lab, host: &str, target: &str, span: Duration) -> Result<Self, LabError> {
        let args = [
            "http-get".to_string(),
            target.to_string(),
            "--for-ms".into(),
            span.as_millis().to_string(),
            "--timeout-ms".into(),
            "5000".into(),
        ];
        Background::start(lab, host, &args).map(ClientLoop)
    }

    /// Waits until it ends; its tally.
    pub fn finish(self) -> Result<HttpTally, LabError> {
        self.0.finish()
    }
}

/// What `labnet fetch --json` prints: one HTTP answer, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpReply {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Every header as the server wrote it (name as written, value trimmed);
    /// of a name written twice, the last. Look names up with
    /// [`HttpReply::header`].
    pub headers: BTreeMap<String, String>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl HttpReply {
    /// The value of header `name`, whatever its case; `labnet serve` sends
    /// `X-Node` (the node's name) and `X-Client` (the connection's peer as
    /// the node saw it, `ADDRESS:PORT`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP GET of `path` from `host` to `target` (ADDR:PORT) with `labnet
/// fetch --json`: status, headers and body. Fails unless the answer is 200.
pub fn http_fetch(lab: &Lab, host: &str, target: &str, path: &str) -> Result<HttpReply, LabError> {
    let labnet = lab.env().labnet.to_string_lossy().into_owned();
    let out = lab.exec(host, &[&labnet, "fetch", "--json", target, path])?;
    serde_json::from_str(out.trim()).map_err(|source| LabError::BadOutput {
        command: format!("[{host}] labnet fetch --json {target} {path}"),
        source,
    })
}

/// What `labnet stream` reports: one TCP connection to the plain TCP
/// responder (through a VIP), a counter line sent every interval and its
/// echo checked, for a fixed time. Times are milliseconds after the start
/// (CLOCK_MONOTONIC), taken when the client read or noticed the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// The node that answered (the responder's first line); None when the
    /// connection failed before it came.
    pub node: Option<String>,
    /// Counters sent (`1\n`, `2\n`, ...).
    pub sent: u64,
    /// Counters echoed back correctly and in order.
    pub echoed: u64,
    /// True iff nothing went wrong and every counter sent came back before
    /// the end (`--timeout-ms` after the last send at the latest): the
    /// connection survived whatever happened meanwhile.
    pub survived: bool,
    /// The first error, which ended the run: the connection refused, reset or
    /// closed (EOF), a wrong or out-of-order echo, or no echo progress for
    /// longer than `--timeout-ms`.
    pub error: Option<String>,
    /// When the error happened.
    pub error_at_ms: Option<u64>,
    /// The longest time between two consecutive echoed counters (a stall
    /// during a failover shows here).
    pub max_gap_ms: u64,
    /// [when the gap began, its length] of every gap between consecutive
    /// echoes over 100 ms, the first 100.
    pub gaps_over_100ms: Vec<(u64, u64)>,
    /// The whole run, connect to close.
    pub duration_ms: u64,
}

/// `labnet stream` in the background: one TCP connection kept busy for a
/// fixed time, to see whether it survives a failover and how long it
/// stalled.
#[derive(Debug)]
pub struct Stream(Background);

impl Stream {
    /// Starts it in `host` against `target` (ADDR:PORT of the plain TCP
    /// responder, e.g. through a VIP) for `span`, one counter every
    /// `interval`; an echo may lag up to 3 s (`labnet stream`'s default
    /// `--timeout-ms`).
    pub fn start(
        lab: &Lab,
        host: &str,
        target: &str,
        span: Duration,
        interval: Duration,
    ) -> Result<Self, LabError> {
        Self::start_with_timeout(lab, host, target, span, interval, Duration::from_secs(3))
    }

    /// [`Stream::start`], an echo lagging up to `timeout` (a failover at
    /// the lab's relaxed timing takes over 3 s).
    pub fn start_with_timeout(
        lab: &Lab,
        host: &str,
        target: &str,
        span: Duration,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Self, LabError> {
        let args = [
            "stream".to_string(),
            target.to_string(),
            "--for-ms".into(),
            span.as_millis().to_string(),
            "--interval-ms".into(),
            interval.as_millis().to_string(),
            "--timeout-ms".into(),
            timeout.as_millis().to_string(),
        ];
        Background::start(lab, host, &args).map(Stream)
    }

    /// Waits until it ends; its report.
    pub fn finish(self) -> Result<StreamReport, LabError> {
        self.0.finish()
    }
}

/// `director status -o json` of a lab director (the lab's director binary),
/// or None when it does not answer.
pub fn director_status(lab: &Lab, host: &Host) -> Option<serde_json::Value> {
    let bin = lab.env().director.clone()?;
    let out = std::process::Command::new(bin)
        .args(["status", "-o", "json", "--socket"])
        .arg(lab.admin_socket(host))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The owner (host name) and epoch of `vip` if every one of `hosts` answers
/// and agrees on them.
pub fn agreed_owner(lab: &Lab, hosts: &[Host], vip: IpAddr) -> Option<(String, u64)> {
    let mut seen = Vec::new();
    for h in hosts {
        let v = director_status(lab, h)?;
        let entry = v["vips"]
            .as_array()?
            .iter()
            .find(|x| x["vip"] == vip.to_string())?
            .clone();
        seen.push((
            entry["owner_name"].as_str()?.to_string(),
            entry["epoch"].as_u64()?,
        ));
    }
    let first = seen.first()?.clone();
    seen.iter().all(|s| *s == first).then_some(first)
}

/// Polls `f` every 50 ms until it gives a value, for at most `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(LabError::Timeout {
                what: what.to_string(),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 100 ms until it gives a value; panics naming `what` after
/// `secs` seconds. For tests.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
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
