//! `labnet`: the lab's traffic tools.
//!
//! - `labnet serve --name n1`: the NodePort stand-in of a node host. HTTP on
//!   TCP 30080 (every path answers `200` with the node's name as body, and
//!   headers `X-Node: NAME` and `X-Client: ADDRESS:PORT`), a plain TCP
//!   responder on 30081 (writes the node's name, then echoes until the client
//!   closes), a UDP echo on 30080 (replies `<name> <datagram>`) and
//!   kube-proxy's health endpoint on TCP 10256 (`/healthz` answers `200`, or
//!   `503` while the file of `--healthz-fail-file` exists).
//! - `labnet http-get ADDR:PORT --count N`: N requests, each on a new
//!   connection, and a JSON tally of which node answered how often.
//! - `labnet fetch ADDR:PORT [PATH] [--json]`: one GET; the body, or with
//!   `--json` status, headers and body as JSON.
//! - `labnet stream ADDR:PORT`: one TCP connection to the plain TCP
//!   responder for a fixed time, a counter sent every interval and its echo
//!   checked; a JSON report of whether the connection survived and how long
//!   its echoes stalled.
//! - `labnet ping`, `labnet arp-watch`, `labnet route-watch`: the observers of
//!   `lab::watch` (client-visible outage, ARP answers, local routes).
//! - `labnet ipvs-ops --family-id ID`: every change to IPVS that a process of
//!   this namespace asks the kernel for, seen on an nlmon device.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lab::scenario::{HttpReply, StreamReport};
use lab::topology::{KUBE_PROXY_HEALTHZ, NODEPORT_HTTP, NODEPORT_TCP, NODEPORT_UDP};
use lab::watch::monotonic_ns;

#[derive(Debug, Parser)]
#[command(name = "labnet", about = "Traffic tools of the director lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve HTTP, TCP and UDP as a node's NodePort stand-in, and
    /// kube-proxy's health endpoint (`GET /healthz`).
    Serve {
        /// The name every answer carries (the node's host name).
        #[arg(long)]
        name: String,
        /// TCP port of the HTTP responder.
        #[arg(long, default_value_t = NODEPORT_HTTP)]
        http_port: u16,
        /// TCP port of the plain TCP responder.
        #[arg(long, default_value_t = NODEPORT_TCP)]
        tcp_port: u16,
        /// UDP port of the echo responder.
        #[arg(long, default_value_t = NODEPORT_UDP)]
        udp_port: u16,
        /// TCP port of the health endpoint (kube-proxy's `healthzBindAddress`).
        #[arg(long, default_value_t = KUBE_PROXY_HEALTHZ)]
        healthz_port: u16,
        /// While this file exists, `/healthz` answers `503 Service
        /// Unavailable` (looked at on every request).
        #[arg(long)]
        healthz_fail_file: Option<PathBuf>,
        /// File created once every socket is bound.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Send HTTP GETs, each on a new connection, and tally who answered.
    HttpGet {
        /// Target, e.g. 10.10.0.200:80 or [fd10:10::200]:80.
        target: String,
        /// Number of requests.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Per-request timeout in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Keep sending for this many milliseconds instead of `--count`.
        #[arg(long)]
        for_ms: Option<u64>,
    },
    /// Open COUNT TCP connections to the plain TCP responder one after
    /// another, read each banner (the node's name), and print a JSON tally;
    /// with `--hold-ms` every connection stays open that long before closing.
    TcpTally {
        /// Target, e.g. 10.10.0.203:81.
        target: String,
        /// Number of connections.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Keep every connection open this long before closing them all.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// One HTTP GET of PATH from ADDR:PORT; prints the body (exit 1 unless 200).
    Fetch {
        /// Target, e.g. 10.10.0.11:9469 or [fd10:10::200]:80.
        target: SocketAddr,
        /// The path.
        #[arg(default_value = "/")]
        path: String,
        /// Print one JSON object instead of the body:
        /// `{"status":200,"headers":{"X-Node":"n1",...},"body":"n1\n"}`.
        #[arg(long)]
        json: bool,
        /// How long to wait for each read of the answer, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Hold ONE TCP connection to the plain TCP responder (e.g. through a
    /// VIP) for `--for-ms`: read its first line (the node's name), send a
    /// counter line (`1`, `2`, ...) every interval and check that each comes
    /// back, in order. Stops at the first error (reset, EOF, wrong echo, no
    /// echo for `--timeout-ms`) and prints one JSON report; exits 0 either
    /// way.
    Stream {
        /// Target, e.g. 10.10.0.203:81 or [fd10:10::203]:81.
        target: SocketAddr,
        /// Milliseconds between counters.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Milliseconds to keep sending (from the start, connect included).
        #[arg(long, default_value_t = 20_000)]
        for_ms: u64,
        /// Longest wait for the connection, the name line and each echo
        /// (after the last send too), in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// ICMP echo to ADDR every interval; prints `reply T_NS SEQ` per reply.
    Ping {
        /// The IPv4 address to probe.
        addr: Ipv4Addr,
        /// Milliseconds between probes.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Broadcast an ARP request for VIP every interval; prints `probe T_NS`
    /// per request and `reply T_NS MAC` per reply.
    ArpWatch {
        /// The IPv4 address asked for.
        vip: Ipv4Addr,
        /// Milliseconds between requests.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// The interface to probe on.
        #[arg(long, default_value = "eth0")]
        interface: String,
    },
    /// Listen on an interface for everything that speaks for an address:
    /// ARP (requests and replies, gratuitous included) whose sender address
    /// is ADDR, and IPv6 neighbour advertisements whose target is ADDR;
    /// prints `arp T_NS MAC` or `na T_NS MAC` per packet (MAC: the frame's
    /// source).
    NeighListen {
        /// The address (IPv4 or IPv6).
        addr: IpAddr,
        /// The interface to listen on.
        #[arg(long, default_value = "eth0")]
        interface: String,
    },
    /// Sample this namespace's local routes every interval; prints
    /// `sample T_NS 1|0 T_PREV_NS` whenever VIP's presence changes (and the
    /// first), with the time of the sample before, which saw the old state.
    RouteWatch {
        /// The address looked for.
        vip: IpAddr,
        /// Milliseconds between samples.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// The LAN interface: without carrier the host holds nothing.
        #[arg(long, default_value = "eth0")]
        interface: String,
    },
    /// Print `op T_NS COMMAND` for every IPVS request that changes the table
    /// (a service or destination added, edited or deleted, ...) sent to the
    /// kernel in this namespace. Needs an nlmon device that is up here
    /// (`ip link add nlmon0 type nlmon`); reads (dumps) are not printed.
    IpvsOps {
        /// The IPVS generic-netlink family id (`genl ctrl get name IPVS`).
        #[arg(long)]
        family_id: u16,
        /// File created once the capture socket is open.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Serve {
            name,
            http_port,
            tcp_port,
            udp_port,
            healthz_port,
            healthz_fail_file,
            ready_file,
        } => serve(
            &name,
            http_port,
            tcp_port,
            udp_port,
            healthz_port,
            healthz_fail_file,
            ready_file,
        ),
        Cmd::HttpGet {
            target,
            count,
            timeout_ms,
            for_ms,
        } => http_get(
            &target,
            count,
            for_ms.map(Duration::from_millis),
            Duration::from_millis(timeout_ms),
        ),
        Cmd::TcpTally {
            target,
            count,
            hold_ms,
        } => tcp_tally(&target, count, Duration::from_millis(hold_ms)),
        Cmd::Fetch {
            target,
            path,
            json,
            timeout_s,
        } => fetch(target, &path, json, Duration::from_secs(timeout_s)),
        Cmd::Stream {
            target,
            interval_ms,
            for_ms,
            timeout_ms,
        } => {
            let report = stream(
                target,
                StreamPlan {
                    interval: Duration::from_millis(interval_ms),
                    span: Duration::from_millis(for_ms),
                    timeout: Duration::from_millis(timeout_ms),
                },
            );
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Ping { addr, interval_ms } => ping(addr, Duration::from_millis(interval_ms)),
        Cmd::ArpWatch {
            vip,
            interval_ms,
            interface,
        } => arp_watch(vip, &interface, Duration::from_millis(interval_ms)),
        Cmd::RouteWatch {
            vip,
            interval_ms,
            interface,
        } => route_watch(vip, &interface, Duration::from_millis(interval_ms)),
        Cmd::NeighListen { addr, interface } => neigh_listen(addr, &interface),
        Cmd::IpvsOps {
            family_id,
            ready_file,
        } => ipvs_ops(family_id, ready_file),
    }
}

/// Prints one event line and flushes it (the reader may stop us any time).
fn emit(line: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ping(addr: Ipv4Addr, interval: Duration) -> Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("opening a raw ICMP socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(2)))?;
    let id = (std::process::id() & 0xffff) as u16;
    let to = SockAddr::from(SocketAddr::from((addr, 0)));
    let mut seq: u16 = 0;
    let mut next = Instant::now();
    let mut buf = [0u8; 1500];
    loop {
        if Instant::now() >= next {
            let mut pkt = [0u8; 16];
            pkt[0] = 8; // echo request
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&seq.to_be_bytes());
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            // A send can fail while the neighbour is unresolved: keep probing.
            let _ = sock.send_to(&pkt, &to);
            seq = seq.wrapping_add(1);
            next += interval;
        }
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let (Some(src), Some(icmp)) = (buf.get(12..16), buf.get(ihl..n)) else {
            continue;
        };
        if src != addr.octets() || icmp.len() < 8 || icmp[0] != 0 || icmp[4..6] != id.to_be_bytes()
        {
            continue;
        }
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        emit(format_args!("reply {} {seq}", monotonic_ns()))?;
    }
}

/// Whether frame `f` speaks for `addr`: an ARP packet with `addr` as its
/// sender address, or an ICMPv6 neighbour advertisement (type 136) for it.
fn speaks_for(f: &[u8], addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == a.octets() => {
            Some("arp")
        }
        // Ethernet 14 + IPv6 40; next header ICMPv6 (58) at 14+6; type at
        // 54; the target address at 54+8.
        IpAddr::V6(a)
            if f.len() >= 78
                && f[12..14] == [0x86, 0xdd]
                && f[20] == 58
                && f[54] == 136
                && f[62..78] == a.octets() =>
        {
            Some("na")
        }
        _ => None,
    }
}

fn neigh_listen(addr: IpAddr, interface: &str) -> Result<()> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)
        .with_context(|| format!("no interface {interface}"))?;
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let mut rx = match pnet_datalink::channel(&iface, config)? {
        pnet_datalink::Channel::Ethernet(_, rx) => rx,
        _ => bail!("unexpected channel type"),
    };
    emit(format_args!("listening {}", monotonic_ns()))?;
    loop {
        let Ok(f) = rx.next() else { continue };
        if let Some(kind) = speaks_for(f, addr) {
            let m = &f[6..12];
            emit(format_args!(
                "{kind} {} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                monotonic_ns(),
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5]
            ))?;
        }
    }
}

fn arp_watch(vip: Ipv4Addr, interface: &str, interval: Duration) -> Result<()> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)
        .with_context(|| format!("no interface {interface}"))?;
    let mac = iface.mac.context("the interface has no MAC")?;
    let mac = [mac.0, mac.1, mac.2, mac.3, mac.4, mac.5];
    let ip = iface
        .ips
        .iter()
        .find_map(|n| match n.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .context("the interface has no IPv4 address")?;
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(2)),
        ..Default::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface, config)? {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => bail!("unexpected channel type"),
    };
    // who-has VIP tell <client>, broadcast.
    let mut req = [0u8; 42];
    req[0..6].copy_from_slice(&[0xff; 6]);
    req[6..12].copy_from_slice(&mac);
    req[12..14].copy_from_slice(&[0x08, 0x06]);
    req[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    req[22..28].copy_from_slice(&mac);
    req[28..32].copy_from_slice(&ip.octets());
    req[38..42].copy_from_slice(&vip.octets());
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            emit(format_args!("probe {}", monotonic_ns()))?;
            if let Some(r) = tx.send_to(&req, None) {
                r.context("sending an ARP request")?;
            }
            next += interval;
        }
        let Ok(f) = rx.next() else { continue };
        // An ARP reply (op 2) whose sender address is the VIP.
        if f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 2]
            && f[28..32] == vip.octets()
        {
            let m = &f[22..28];
            emit(format_args!(
                "reply {} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                monotonic_ns(),
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5]
            ))?;
        }
    }
}

fn route_watch(vip: IpAddr, interface: &str, interval: Duration) -> Result<()> {
    let mut last: Option<bool> = None;
    let mut prev = monotonic_ns();
    loop {
        let text = std::fs::read_to_string("/proc/net/fib_trie").context("reading fib_trie")?;
        // A host whose link is cut holds nothing on the LAN, whatever its
        // routes say (`lab kill` leaves them, as a dead host would).
        let carrier = std::fs::read_to_string(format!("/sys/class/net/{interface}/carrier"))
            .map(|c| c.trim() == "1")
            .unwrap_or(false);
        let t = monotonic_ns();
        let now = carrier && lab::watch::fib_trie_has_local(&text, vip);
        if last != Some(now) {
            // The previous sample still saw the old state.
            emit(format_args!("sample {t} {} {prev}", u8::from(now)))?;
            last = Some(now);
        }
        prev = t;
        thread::sleep(interval);
    }
}

fn serve(
    name: &str,
    http_port: u16,
    tcp_port: u16,
    udp_port: u16,
    healthz_port: u16,
    healthz_fail_file: Option<PathBuf>,
    ready_file: Option<PathBuf>,
) -> Result<()> {
    // "[::]" takes IPv4 too (bindv6only is 0 in a fresh namespace).
    let http =
        TcpListener::bind(("::", http_port)).with_context(|| format!("binding TCP {http_port}"))?;
    let tcp =
        TcpListener::bind(("::", tcp_port)).with_context(|| format!("binding TCP {tcp_port}"))?;
    let udp =
        UdpSocket::bind(("::", udp_port)).with_context(|| format!("binding UDP {udp_port}"))?;
    let healthz = TcpListener::bind(("::", healthz_port))
        .with_context(|| format!("binding TCP {healthz_port}"))?;
    if let Some(path) = ready_file {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "labnet: {name} serving http/{http_port} tcp/{tcp_port} udp/{udp_port} healthz/{healthz_port}"
    );
    let n = name.to_string();
    thread::spawn(move || accept_loop(http, n, answer_http));
    let n = name.to_string();
    thread::spawn(move || accept_loop(tcp, n, answer_tcp));
    thread::spawn(move || {
        for conn in healthz.incoming() {
            match conn {
                Ok(stream) => {
                    let fail = healthz_fail_file.clone();
                    thread::spawn(move || answer_healthz(stream, fail.as_deref()));
                }
                Err(e) => eprintln!("labnet: accept: {e}"),
            }
        }
    });
    udp_echo(udp, name)
}

fn accept_loop(listener: TcpListener, name: String, answer: fn(TcpStream, &str)) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let n = name.clone();
                thread::spawn(move || answer(stream, &n));
            }
            Err(e) => eprintln!("labnet: accept: {e}"),
        }
    }
}

/// Reads a request's head (up to the blank line, at most 16 KiB).
fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

fn answer_http(mut stream: TcpStream, name: &str) {
    let buf = read_head(&mut stream);
    let body = format!("{name}\n");
    let first_line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let reply = if first_line.windows(5).any(|w| w == b"HTTP/") {
        let client = stream
            .peer_addr()
            .map(|peer| format!("X-Client: {}\r\n", client_address(peer)))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Node: {name}\r\n{client}Connection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        body
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// A connection's peer as the `X-Client` header gives it, `ADDRESS:PORT`:
/// an IPv4 client of a `[::]` listener (an IPv4-mapped IPv6 address,
/// `::ffff:a.b.c.d`) in its plain IPv4 form, every other address as it is
/// (`[fd10:10::100]:40000`).
fn client_address(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())).to_string(),
            None => peer.to_string(),
        },
        SocketAddr::V4(_) => peer.to_string(),
    }
}

/// Answers one request to the health endpoint; `/healthz` fails while
/// `fail_file` exists (its modification time is when the node stopped being
/// healthy).
fn answer_healthz(mut stream: TcpStream, fail_file: Option<&Path>) {
    let head = read_head(&mut stream);
    let first_line =
        String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
            .into_owned();
    let path = first_line.split_whitespace().nth(1).unwrap_or_default();
    let now = SystemTime::now();
    let failing_since = fail_file
        .and_then(|f| std::fs::metadata(f).ok())
        .map(|m| m.modified().unwrap_or(now));
    let reply = healthz_reply(path, failing_since, now);
    let _ = stream.write_all(reply.to_http().as_bytes());
}

/// One answer of the health endpoint.
#[derive(Debug, PartialEq, Eq)]
struct HealthzReply {
    /// Status code and reason, e.g. `200 OK`.
    status: &'static str,
    /// `Content-Type` of the body.
    content_type: &'static str,
    body: String,
}

impl HealthzReply {
    fn to_http(&self) -> String {
        format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
    }
}

/// What kube-proxy's health server (`--healthz-bind-address`, port 10256)
/// answers for `path` (the request target): `/healthz` is `200 OK` with
/// `{"lastUpdated": ..., "currentTime": ..., "nodeEligible": true}`, or, when
/// `failing_since` is set, `503 Service Unavailable` with that time as
/// `lastUpdated`; any other path is `404` with Go's not-found body.
fn healthz_reply(path: &str, failing_since: Option<SystemTime>, now: SystemTime) -> HealthzReply {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != "/healthz" {
        return HealthzReply {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: "404 page not found\n".into(),
        };
    }
    let body = serde_json::json!({
        "lastUpdated": rfc3339(failing_since.unwrap_or(now)),
        "currentTime": rfc3339(now),
        "nodeEligible": true,
    })
    .to_string();
    HealthzReply {
        status: if failing_since.is_some() {
            "503 Service Unavailable"
        } else {
            "200 OK"
        },
        content_type: "application/json",
        body,
    }
}

/// `t` as RFC 3339 UTC with whole seconds, e.g. `2023-11-14T22:13:20Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's
    // `civil_from_days`), in eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn answer_tcp(mut stream: TcpStream, name: &str) {
    if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    echo_until_closed(stream);
}

/// Writes back everything read until the client closes.
fn echo_until_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn udp_echo(sock: UdpSocket, name: &str) -> Result<()> {
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).context("receiving UDP")?;
        let mut reply = Vec::with_capacity(name.len() + 1 + n);
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = sock.send_to(&reply, from) {
            eprintln!("labnet: udp reply to {from}: {e}");
        }
    }
}

fn http_get(target: &str, count: u32, span: Option<Duration>, timeout: Duration) -> Result<()> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .with_context(|| format!("target {target:?} is not ADDR:PORT"))?
        .next()
        .with_context(|| format!("target {target:?} resolves to nothing"))?;
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed_at = Vec::new();
    let mut slow = Vec::new();
    let start = Instant::now();
    let mut sent = 0u32;
    loop {
        let more = match span {
            Some(d) => start.elapsed() < d,
            None => sent < count,
        };
        if !more {
            break;
        }
        sent += 1;
        let began = start.elapsed();
        let result = one_get(addr, timeout);
        let took = start.elapsed() - began;
        // When (ms after the start) and for how long: failures, and
        // requests that took a retransmitted SYN (over 900 ms).
        let at = serde_json::json!([began.as_millis() as u64, took.as_millis() as u64]);
        match result {
            Ok(node) => {
                *served.entry(node).or_default() += 1;
                if took > Duration::from_millis(900) && slow.len() < 100 {
                    slow.push(at);
                }
            }
            Err(e) => {
                *errors.entry(format!("{e:#}")).or_default() += 1;
                if failed_at.len() < 1000 {
                    failed_at.push(at);
                }
            }
        }
    }
    let report = serde_json::json!({
        "target": addr.to_string(),
        "requests": sent,
        "served": served,
        "failed": errors.values().sum::<u32>(),
        "errors": errors,
        "failed_at_ms": failed_at,
        "slow_at_ms": slow,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    });
    println!("{report}");
    Ok(())
}

fn tcp_tally(target: &str, count: u32, hold: Duration) -> Result<()> {
    let addr: SocketAddr = target
        .parse()
        .with_context(|| format!("target {target:?} is not ADDR:PORT"))?;
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = 0u32;
    let mut open = Vec::new();
    for _ in 0..count {
        let banner = (|| -> Result<(String, TcpStream)> {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut line = String::new();
            std::io::BufReader::new(stream.try_clone()?).read_line(&mut line)?;
            Ok((line.trim().to_string(), stream))
        })();
        match banner {
            Ok((name, stream)) => {
                *served.entry(name).or_default() += 1;
                open.push(stream);
            }
            Err(_) => failed += 1,
        }
        if hold.is_zero() {
            open.clear();
        }
    }
    thread::sleep(hold);
    drop(open);
    println!(
        "{}",
        serde_json::json!({
            "target": addr.to_string(),
            "requests": count,
            "served": served,
            "failed": failed,
            "errors": {},
        })
    );
    Ok(())
}

/// How `labnet stream` runs.
#[derive(Debug, Clone, Copy)]
struct StreamPlan {
    /// Time between two counters.
    interval: Duration,
    /// How long to keep sending, from the start (connect included).
    span: Duration,
    /// The longest wait for the connection, for the name line, and for echo
    /// progress while counters are outstanding.
    timeout: Duration,
}

/// What the reader thread of `labnet stream` hands over, with the time it
/// was read.
#[derive(Debug)]
enum Received {
    /// A whole line, without its newline.
    Line(String),
    /// The peer closed the connection.
    Eof,
    /// Reading failed (a reset, ...).
    Failed(String),
}

/// The longest line the stream's reader buffers (a counter is 20 digits).
const STREAM_LINE_MAX: usize = 64 * 1024;

/// Reads `stream` until it ends and sends each line as it completes; the
/// echo may come in any chunks.
fn read_lines(mut stream: TcpStream, to: mpsc::Sender<(Instant, Received)>) {
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                let _ = to.send((Instant::now(), Received::Eof));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = to.send((Instant::now(), Received::Failed(format!("read: {e}"))));
                return;
            }
        };
        let at = Instant::now();
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            if to.send((at, Received::Line(text))).is_err() {
                return;
            }
        }
        if pending.len() > STREAM_LINE_MAX {
            let what = format!("a line longer than {STREAM_LINE_MAX} bytes");
            let _ = to.send((at, Received::Failed(what)));
            return;
        }
    }
}

/// Where a stream stands; becomes its [`StreamReport`].
#[derive(Debug)]
struct StreamProgress {
    start: Instant,
    node: Option<String>,
    sent: u64,
    echoed: u64,
    /// When each counter not yet echoed was sent, oldest first.
    outstanding: VecDeque<Instant>,
    /// When the last counter came back.
    last_echo: Option<Instant>,
    max_gap: Duration,
    gaps_over_100ms: Vec<(u64, u64)>,
}

/// The error that ended a stream, and when it was noticed.
#[derive(Debug)]
struct StreamFailure {
    at: Instant,
    what: String,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StreamProgress {
    fn new(start: Instant) -> Self {
        StreamProgress {
            start,
            node: None,
            sent: 0,
            echoed: 0,
            outstanding: VecDeque::new(),
            last_echo: None,
            max_gap: Duration::ZERO,
            gaps_over_100ms: Vec::new(),
        }
    }

    /// Takes one echoed line read at `at`: it must be the oldest counter
    /// not yet echoed.
    fn echo(&mut self, at: Instant, line: &str) -> Result<(), StreamFailure> {
        let due = self.echoed + 1;
        if self.outstanding.is_empty() || line != due.to_string() {
            let what = if self.outstanding.is_empty() {
                format!("echo {line:?} when nothing was due (sent {})", self.sent)
            } else {
                format!("echo {line:?} where {due} was due")
            };
            return Err(StreamFailure { at, what });
        }
        self.outstanding.pop_front();
        self.echoed = due;
        if let Some(before) = self.last_echo {
            let gap = at.saturating_duration_since(before);
            self.max_gap = self.max_gap.max(gap);
            if gap > Duration::from_millis(100) && self.gaps_over_100ms.len() < 100 {
                self.gaps_over_100ms
                    .push((ms(before.saturating_duration_since(self.start)), ms(gap)));
            }
        }
        self.last_echo = Some(at);
        Ok(())
    }

    fn report(self, failure: Option<StreamFailure>) -> StreamReport {
        let start = self.start;
        StreamReport {
            node: self.node,
            sent: self.sent,
            echoed: self.echoed,
            survived: failure.is_none() && self.outstanding.is_empty(),
            error_at_ms: failure
                .as_ref()
                .map(|f| ms(f.at.saturating_duration_since(start))),
            error: failure.map(|f| f.what),
            max_gap_ms: ms(self.max_gap),
            gaps_over_100ms: self.gaps_over_100ms,
            duration_ms: ms(start.elapsed()),
        }
    }
}

/// `labnet stream`: one connection to the plain TCP responder at `addr`,
/// held and checked as `plan` says.
fn stream(addr: SocketAddr, plan: StreamPlan) -> StreamReport {
    // Deadlines are `Instant`s: a year is as good as forever and cannot
    // overflow them.
    let year = Duration::from_secs(365 * 86_400);
    let plan = StreamPlan {
        interval: plan.interval.clamp(Duration::from_millis(1), year),
        span: plan.span.min(year),
        timeout: plan.timeout.min(year),
    };
    let start = Instant::now();
    let mut progress = StreamProgress::new(start);
    let failure = stream_session(addr, plan, &mut progress).err();
    progress.report(failure)
}

fn stream_session(
    addr: SocketAddr,
    plan: StreamPlan,
    p: &mut StreamProgress,
) -> Result<(), StreamFailure> {
    let fail = |what: String| StreamFailure {
        at: Instant::now(),
        what,
    };
    let mut conn = TcpStream::connect_timeout(&addr, plan.timeout)
        .map_err(|e| fail(format!("connect: {e}")))?;
    // Each counter goes out when it is due, not when Nagle lets it.
    conn.set_nodelay(true)
        .and_then(|()| conn.set_write_timeout(Some(plan.timeout)))
        .map_err(|e| fail(format!("setting up the socket: {e}")))?;
    let reading = conn
        .try_clone()
        .map_err(|e| fail(format!("cloning the socket: {e}")))?;
    let (to, from) = mpsc::channel();
    let reader = thread::spawn(move || read_lines(reading, to));
    let result = stream_exchange(&mut conn, &from, plan, p);
    // Wakes the reader, which then sees the end.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    result
}

/// The name line, then the counters until `plan.span` ends and every
/// counter is back.
fn stream_exchange(
    conn: &mut TcpStream,
    from: &mpsc::Receiver<(Instant, Received)>,
    plan: StreamPlan,
    p: &mut StreamProgress,
) -> Result<(), StreamFailure> {
    match from.recv_timeout(plan.timeout) {
        Ok((_, Received::Line(name))) => p.node = Some(name),
        Ok((at, other)) => return Err(stream_ended(at, other)),
        Err(_) => {
            return Err(StreamFailure {
                at: Instant::now(),
                what: format!("no name line within {} ms", ms(plan.timeout)),
            })
        }
    }
    let end = p.start + plan.span;
    let mut next_send = Instant::now();
    // When echo progress was last seen (the name line counts).
    let mut progress_at = Instant::now();
    loop {
        let now = Instant::now();
        let sending = now < end;
        if sending && now >= next_send {
            let counter = p.sent + 1;
            conn.write_all(format!("{counter}\n").as_bytes())
                .map_err(|e| StreamFailure {
                    at: Instant::now(),
                    what: format!("write: {e}"),
                })?;
            p.sent = counter;
            p.outstanding.push_back(now);
            // Late ticks are skipped, not sent in a burst.
            while next_send <= now {
                next_send += plan.interval;
            }
        }
        if !sending && p.outstanding.is_empty() {
            return Ok(());
        }
        // The oldest counter outstanding must come back within the timeout
        // of its send or of the last progress, whichever is later.
        let stall_deadline = p
            .outstanding
            .front()
            .map(|sent| (*sent).max(progress_at) + plan.timeout);
        let now = Instant::now();
        if let Some(deadline) = stall_deadline.filter(|d| now >= *d) {
            // An echo read in time but not yet taken is progress.
            if let Ok((at, got)) = from.try_recv() {
                take_echo(p, &mut progress_at, at, got)?;
                continue;
            }
            let waited = now.saturating_duration_since(deadline) + plan.timeout;
            return Err(StreamFailure {
                at: now,
                what: format!(
                    "no echo for {} ms: counters {}..={} outstanding",
                    ms(waited),
                    p.echoed + 1,
                    p.sent
                ),
            });
        }
        let wake = [sending.then_some(next_send), stall_deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        let wait = if sending { wake.min(end) } else { wake };
        match from.recv_timeout(wait.saturating_duration_since(now)) {
            Ok((at, got)) => take_echo(p, &mut progress_at, at, got)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StreamFailure {
                    at: Instant::now(),
                    what: "the reader stopped".into(),
                })
            }
        }
    }
}

/// Takes what the reader read at `at`: an echo, or the end of the stream.
fn take_echo(
    p: &mut StreamProgress,
    progress_at: &mut Instant,
    at: Instant,
    got: Received,
) -> Result<(), StreamFailure> {
    match got {
        Received::Line(line) => {
            p.echo(at, &line)?;
            *progress_at = at;
            Ok(())
        }
        other => Err(stream_ended(at, other)),
    }
}

/// The failure of a stream whose reader read `what` where an echo was due.
fn stream_ended(at: Instant, what: Received) -> StreamFailure {
    StreamFailure {
        at,
        what: match what {
            Received::Line(line) => format!("unexpected line {line:?}"),
            Received::Eof => "the peer closed the connection (EOF)".into(),
            Received::Failed(e) => e,
        },
    }
}

/// NETLINK_GENERIC: nlmon gives each frame its netlink protocol as the
/// packet's protocol.
const NETLINK_GENERIC: u16 = 16;
/// The hardware type of an nlmon device (`ARPHRD_NETLINK`).
const ARPHRD_NETLINK: u16 = 824;
/// `nlmsg_flags` bit of a request (as opposed to a reply from the kernel).
const NLM_F_REQUEST: u16 = 1;

/// The IPVS commands that change the kernel's state, by number
/// (`include/uapi/linux/ip_vs.h`); the others only read.
fn ipvs_change(cmd: u8) -> Option<&'static str> {
    Some(match cmd {
        1 => "IPVS_CMD_NEW_SERVICE",
        2 => "IPVS_CMD_SET_SERVICE",
        3 => "IPVS_CMD_DEL_SERVICE",
        5 => "IPVS_CMD_NEW_DEST",
        6 => "IPVS_CMD_SET_DEST",
        7 => "IPVS_CMD_DEL_DEST",
        9 => "IPVS_CMD_NEW_DAEMON",
        10 => "IPVS_CMD_DEL_DAEMON",
        12 => "IPVS_CMD_SET_CONFIG",
        16 => "IPVS_CMD_ZERO",
        17 => "IPVS_CMD_FLUSH",
        _ => return None,
    })
}

/// The IPVS changes among the generic-netlink messages of one captured
/// frame: each message is `nlmsghdr` (len, type, flags, seq, pid) then
/// `genlmsghdr` (cmd, version, reserved).
fn ipvs_changes_in(frame: &[u8], family_id: u16) -> Vec<&'static str> {
    let mut found = Vec::new();
    let mut rest = frame;
    while rest.len() >= 20 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        if len < 20 || len > rest.len() {
            break;
        }
        if kind == family_id && flags & NLM_F_REQUEST != 0 {
            if let Some(name) = ipvs_change(rest[16]) {
                found.push(name);
            }
        }
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or_default();
    }
    found
}

/// A classic BPF program that accepts a frame only if it is generic netlink
/// (the packet's protocol, which nlmon sets to the netlink protocol) and its
/// first message is a request (`NLM_F_REQUEST`) of the IPVS family. BPF
/// loads are big-endian and the netlink header is in host order.
fn ipvs_request_filter(family_id: u16) -> Vec<libc::sock_filter> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // BPF_LD|BPF_H|BPF_ABS, BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K,
    // BPF_JMP|BPF_JSET|BPF_K, BPF_RET|BPF_K.
    let (ldh, ldb, jeq, jset, ret) = (0x28, 0x30, 0x15, 0x45, 0x06);
    // SKF_AD_OFF + SKF_AD_PROTOCOL: the packet's protocol, host order.
    let protocol = 0xffff_f000;
    let kind = u32::from(u16::from_be_bytes(family_id.to_ne_bytes()));
    let flags_low_byte = if cfg!(target_endian = "little") { 6 } else { 7 };
    vec![
        op(ldh, 0, 0, protocol),
        op(jeq, 0, 5, u32::from(NETLINK_GENERIC)),
        op(ldh, 0, 0, 4),
        op(jeq, 0, 3, kind),
        op(ldb, 0, 0, flags_low_byte),
        op(jset, 0, 1, u32::from(NLM_F_REQUEST)),
        op(ret, 0, 0, 0x4_0000),
        op(ret, 0, 0, 0),
    ]
}

/// Reads every frame the nlmon device of this namespace copies and prints
/// the IPVS changes among the generic-netlink ones. nlmon hands its frames
/// to packet sockets as transmitted packets, which only sockets of
/// `ETH_P_ALL` see; the frame's protocol and hardware type come with its
/// source address.
fn ipvs_ops(family_id: u16, ready_file: Option<PathBuf>) -> Result<()> {
    use nix::sys::socket::{
        recvfrom, socket, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )
    .context("opening a packet socket (ETH_P_ALL)")?;
    // Every frame of the namespace reaches an ETH_P_ALL socket, the
    // daemon's table dumps and Raft traffic included: the kernel keeps only
    // the IPVS requests, so that a busy namespace cannot overflow the
    // socket's buffer while this process waits for a CPU.
    let sock = socket2::Socket::from(sock);
    sock.attach_filter(&ipvs_request_filter(family_id))
        .context("attaching the socket filter")?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    if let Some(path) = ready_file {
        std::fs::write(&path, b"")
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let (n, from) = recvfrom::<LinkAddr>(sock.as_raw_fd(), &mut buf)
            .context("reading from the packet socket")?;
        let generic = from.is_some_and(|a| {
            a.hatype() == ARPHRD_NETLINK && u16::from_be(a.protocol()) == NETLINK_GENERIC
        });
        if !generic {
            continue;
        }
        for name in ipvs_changes_in(&buf[..n.min(buf.len())], family_id) {
            emit(format_args!("op {} {name}", monotonic_ns()))?;
        }
    }
}

/// Prints the body of `GET path` from `addr`, or with `json` the whole
/// answer as an [`HttpReply`]; fails unless the status is 200.
fn fetch(addr: SocketAddr, path: &str, json: bool, timeout: Duration) -> Result<()> {
    let reply = fetch_reply(addr, path, timeout)?;
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        print!("{}", reply.body);
    }
    if reply.status != 200 {
        bail!("status {}", reply.status);
    }
    Ok(())
}

/// One `GET path` from `addr` on a new connection, read to its end.
fn fetch_reply(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpReply> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).context("receive")?;
    parse_reply(&String::from_utf8_lossy(&reply))
}

/// An HTTP/1.1 answer's status, headers and body.
fn parse_reply(text: &str) -> Result<HttpReply> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("reply without a header end")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    Ok(HttpReply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn one_get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .context("send")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).context("receive")?;
    let text = String::from_utf8_lossy(&reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("reply without a header end");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("status line {:?}", head.lines().next().unwrap_or_default());
    }
    Ok(body.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy's health server (pkg/proxy/healthcheck): `/healthz` is 200
    /// when healthy and 503 when not, JSON either way; other paths are 404.
    #[test]
    fn healthz_answers_like_kube_proxy() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ok = healthz_reply("/healthz", None, now);
        assert_eq!(ok.status, "200 OK");
        assert_eq!(ok.content_type, "application/json");
        let body: serde_json::Value = serde_json::from_str(&ok.body).expect("JSON body");
        assert_eq!(
            body,
            serde_json::json!({
                "lastUpdated": "2023-11-14T22:13:20Z",
                "currentTime": "2023-11-14T22:13:20Z",
                "nodeEligible": true,
            })
        );
        assert_eq!(
            healthz_reply("/healthz?verbose", None, now).status,
            "200 OK"
        );

        let since = now - Duration::from_secs(60);
        let failing = healthz_reply("/healthz", Some(since), now);
        assert_eq!(failing.status, "503 Service Unavailable");
        let body: serde_json::Value = serde_json::from_str(&failing.body).expect("JSON body");
        assert_eq!(body["lastUpdated"], "2023-11-14T22:12:20Z");
        assert_eq!(body["currentTime"], "2023-11-14T22:13:20Z");

        for other in ["/", "/livez", "/healthz/", "", "/metrics"] {
            for since in [None, Some(since)] {
                let r = healthz_reply(other, since, now);
                assert_eq!(r.status, "404 Not Found", "{other:?}");
                assert_eq!(r.body, "404 page not found\n");
            }
        }
    }

    #[test]
    fn the_healthz_reply_is_one_complete_http_response() {
        let r = healthz_reply("/healthz", None, SystemTime::UNIX_EPOCH);
        let text = r.to_http();
        let (head, body) = text.split_once("\r\n\r\n").expect("header end");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        assert!(head.contains("\r\nContent-Type: application/json"));
        assert_eq!(body, r.body);
    }

    /// A client of the `[::]` listener over IPv4 shows as the IPv4 address
    /// it connected from (`ss -tn` prints such a peer as
    /// `[::ffff:10.10.0.100]:40000`).
    #[test]
    fn x_client_gives_a_v4_mapped_peer_in_its_ipv4_form() {
        let at = |s: &str| client_address(s.parse().expect("socket address"));
        assert_eq!(at("[::ffff:10.10.0.100]:40000"), "10.10.0.100:40000");
        assert_eq!(at("10.10.0.100:40000"), "10.10.0.100:40000");
        assert_eq!(at("[fd10:10::100]:40000"), "[fd10:10::100]:40000");
        // IPv4-compatible (deprecated, not mapped) stays IPv6.
        assert_eq!(at("[::10.10.0.100]:1"), "[::a0a:64]:1");
    }

    /// A listener like `labnet serve`'s HTTP one on loopback.
    fn http_responder(bind: &str, name: &'static str) -> Option<u16> {
        let listener = TcpListener::bind(bind).ok()?;
        let port = listener.local_addr().ok()?.port();
        thread::spawn(move || accept_loop(listener, name.to_string(), answer_http));
        Some(port)
    }

    #[test]
    fn the_http_answer_names_the_node_and_the_client() {
        // "[::]" as `labnet serve` binds; without IPv6 on this host, plain IPv4.
        let port = http_responder("[::]:0", "n1")
            .or_else(|| http_responder("0.0.0.0:0", "n1"))
            .expect("a loopback listener");
        let reply = fetch_reply(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/",
            Duration::from_secs(5),
        )
        .expect("fetch");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "n1\n");
        assert_eq!(reply.header("x-node"), Some("n1"));
        let client: SocketAddr = reply
            .header("X-Client")
            .expect("X-Client")
            .parse()
            .expect("ADDRESS:PORT");
        assert_eq!(client.ip(), IpAddr::from([127, 0, 0, 1]), "{reply:?}");
        assert_ne!(client.port(), port);

        if let Ok(reply) = fetch_reply(
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            "/",
            Duration::from_secs(5),
        ) {
            let client: SocketAddr = reply
                .header("X-Client")
                .expect("X-Client")
                .parse()
                .expect("ADDRESS:PORT");
            assert_eq!(client.ip(), IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        }
    }

    #[test]
    fn fetch_json_keeps_status_headers_and_body() {
        let reply = parse_reply(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nX-Node: n2\r\nX-Client: [fd10:10::100]:5\r\n\r\nn2\n",
        )
        .expect("an answer");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("X-Client"), Some("[fd10:10::100]:5"));
        assert_eq!(reply.body, "n2\n");
        let json = serde_json::to_value(&reply).expect("JSON");
        assert_eq!(json["headers"]["X-Node"], "n2");
        assert_eq!(json["status"], 503);
        assert!(parse_reply("HTTP/1.1 200 OK\r\n").is_err(), "no header end");
        assert!(parse_reply("hello\r\n\r\n").is_err(), "no status line");
    }

    /// A loopback stand-in of the plain TCP responder: accepts one
    /// connection and hands it to `then`.
    fn tcp_responder(then: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                then(conn);
            }
        });
        addr
    }

    /// Writes `n1\n`, then echoes for `echo_for`.
    fn echo_then(conn: &mut TcpStream, echo_for: Duration) {
        conn.write_all(b"n1\n").expect("name");
        conn.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let until = Instant::now() + echo_for;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => conn.write_all(&buf[..n]).expect("echo"),
                Err(_) => {}
            }
        }
    }

    /// Reads until the client closes, echoing nothing.
    fn swallow(conn: &mut TcpStream) {
        let _ = conn.set_read_timeout(None);
        let mut buf = [0u8; 4096];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn plan(span_ms: u64, timeout_ms: u64) -> StreamPlan {
        StreamPlan {
            interval: Duration::from_millis(10),
            span: Duration::from_millis(span_ms),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn a_stream_to_the_tcp_responder_survives() {
        let addr = tcp_responder(|conn| answer_tcp(conn, "n1"));
        let r = stream(addr, plan(1000, 1000));
        assert!(r.survived, "{r:?}");
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert_eq!((r.error.as_deref(), r.error_at_ms), (None, None));
        assert!(r.sent >= 30 && r.sent <= 101, "{r:?}");
        assert_eq!(r.echoed, r.sent);
        assert!(r.max_gap_ms < 1000, "{r:?}");
        assert!(r.duration_ms >= 1000, "{r:?}");
        // The report is what `StreamReport` reads back.
        let json = serde_json::to_string(&r).expect("JSON");
        let back: StreamReport = serde_json::from_str(&json).expect("a StreamReport");
        assert_eq!(back, r);
    }

    /// A stall shorter than the timeout (as during a failover) is survived
    /// and shows as a gap.
    #[test]
    fn a_stalled_echo_that_resumes_shows_as_a_gap() {
        let addr = tcp_responder(|mut conn| {
            echo_then(&mut conn, Duration::from_millis(200));
            thread::sleep(Duration::from_millis(300));
            conn.set_read_timeout(None).expect("blocking reads");
            echo_until_closed(conn);
        });
        let r = stream(addr, plan(800, 2000));
        assert!(r.survived, "{r:?}");
        assert_eq!(r.echoed, r.sent);
        assert!(r.max_gap_ms >= 250, "{r:?}");
        assert!(
            r.gaps_over_100ms
                .iter()
                .any(|(at, gap)| *at >= 100 && *gap >= 250),
            "{r:?}"
        );
    }

    #[test]
    fn a_connection_closed_midway_is_an_error_with_its_time() {
        let addr = tcp_responder(|mut conn| echo_then(&mut conn, Duration::from_millis(300)));
        let r = stream(addr, plan(3000, 1000));
        assert!(!r.survived, "{r:?}");
        assert!(r.error.is_some(), "{r:?}");
        let at = r.error_at_ms.expect("error_at_ms");
        assert!((250..1500).contains(&at), "{r:?}");
        assert!(r.echoed > 0 && r.echoed <= r.sent, "{r:?}");
        assert!(r.duration_ms < 2500, "{r:?}");
    }

    #[test]
    fn an_echo_that_stops_is_a_timeout() {
        let addr = tcp_responder(|mut conn| {
            echo_then(&mut conn, Duration::from_millis(200));
            swallow(&mut conn);
        });
        let r = stream(addr, plan(3000, 300));
        assert!(!r.survived, "{r:?}");
        let error = r.error.clone().expect("an error");
        assert!(error.starts_with("no echo for"), "{r:?}");
        let at = r.error_at_ms.expect("error_at_ms");
        assert!((400..1500).contains(&at), "{r:?}");
        assert!(r.echoed < r.sent, "{r:?}");
        assert!(r.duration_ms < 2500, "{r:?}");
    }

    #[test]
    fn a_wrong_echo_or_a_refused_connection_is_an_error() {
        let addr = tcp_responder(|mut conn| {
            conn.write_all(b"n1\n").expect("name");
            let mut buf = [0u8; 64];
            if conn.read(&mut buf).is_ok() {
                let _ = conn.write_all(b"2\n");
            }
            swallow(&mut conn);
        });
        let r = stream(addr, plan(3000, 1000));
        assert!(!r.survived);
        assert_eq!(
            r.error.as_deref(),
            Some("echo \"2\" where 1 was due"),
            "{r:?}"
        );
        assert_eq!(r.echoed, 0);

        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let r = stream(closed, plan(3000, 1000));
        assert!(!r.survived);
        assert_eq!(r.node, None);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("connect:")),
            "{r:?}"
        );
        assert!(r.error_at_ms.is_some());
    }

    /// Dates as `date -u -d @SECS +%FT%TZ` prints them.
    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    /// The request `ipvsadm -e -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 3`
    /// sends (strace -x -e trace=sendmsg, Debian's ipvsadm 1.31 on kernel
    /// 6.1), with the IPVS family id 0x20 it had there, and before it the
    /// `IPVS_CMD_GET_INFO` it asks first.
    #[test]
    fn a_destination_edit_is_one_change_and_reads_are_none() {
        let header = |len: u32, flags: u16| {
            let mut h = Vec::new();
            h.extend_from_slice(&len.to_ne_bytes());
            h.extend_from_slice(&0x20u16.to_ne_bytes());
            h.extend_from_slice(&flags.to_ne_bytes());
            h.extend_from_slice(&1_795_975_101u32.to_ne_bytes());
            h.extend_from_slice(&1_287_651_480u32.to_ne_bytes());
            h
        };
        let payload: &[u8] = b"\x06\x01\x00\x00\x54\x00\x01\x80\x06\x00\x01\x00\x02\x00\x00\x00\x06\x00\x02\x00\x06\x00\x00\x00\x14\x00\x03\x00\x0a\x0a\x00\xc8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x04\x00\x00\x50\x00\x00\x05\x00\x06\x00\x00\x00\x00\x00\x0c\x00\x07\x00\x00\x00\x00\x00\xff\xff\xff\xff\x08\x00\x08\x00\x00\x00\x00\x00\x08\x00\x09\x00\xff\xff\xff\xff\x60\x00\x02\x80\x06\x00\x0b\x00\x02\x00\x00\x00\x14\x00\x01\x00\x0a\x0a\x00\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x02\x00\x75\x80\x00\x00\x08\x00\x03\x00\x00\x00\x00\x00\x08\x00\x04\x00\x03\x00\x00\x00\x05\x00\x0d\x00\x00\x00\x00\x00\x06\x00\x0e\x00\x00\x00\x00\x00\x06\x00\x0f\x00\x00\x00\x00\x00\x08\x00\x05\x00\x00\x00\x00\x00\x08\x00\x06\x00\x00\x00\x00\x00";
        // NLM_F_REQUEST | NLM_F_ACK
        let mut edit = header(200, 0x5);
        edit.extend_from_slice(payload);
        assert_eq!(ipvs_changes_in(&edit, 0x20), vec!["IPVS_CMD_SET_DEST"]);
        let mut info = header(20, 0x5);
        info.extend_from_slice(b"\x0f\x01\x00\x00");
        assert!(ipvs_changes_in(&info, 0x20).is_empty(), "GET_INFO reads");
        assert!(ipvs_changes_in(&edit, 0x21).is_empty(), "another family");
        // The kernel's answer to a dump carries NEW_DEST without NLM_F_REQUEST.
        let mut reply = header(200, 0x2);
        reply.extend_from_slice(payload);
        reply[16] = 5;
        assert!(ipvs_changes_in(&reply, 0x20).is_empty(), "a reply");
        // Two messages in one frame, the second an edit.
        let mut both = info.clone();
        both.extend_from_slice(&edit);
        assert_eq!(ipvs_changes_in(&both, 0x20), vec!["IPVS_CMD_SET_DEST"]);
    }
}
