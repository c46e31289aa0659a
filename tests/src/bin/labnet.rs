//! `labnet`: the lab's traffic tools.
//!
//! - `labnet serve --name n1`: the NodePort stand-in of a node host. HTTP on
//!   TCP 30080 (every path answers `200` with the node's name), a plain TCP
//!   responder on 30081 (writes the node's name, then echoes until the client
//!   closes) and a UDP echo on 30080 (replies `<name> <datagram>`).
//! - `labnet http-get ADDR:PORT --count N`: N requests, each on a new
//!   connection, and a JSON tally of which node answered how often.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lab::topology::{NODEPORT_HTTP, NODEPORT_TCP, NODEPORT_UDP};

#[derive(Debug, Parser)]
#[command(name = "labnet", about = "Traffic tools of the director lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve HTTP, TCP and UDP as a node's NodePort stand-in.
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
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Serve {
            name,
            http_port,
            tcp_port,
            udp_port,
            ready_file,
        } => serve(&name, http_port, tcp_port, udp_port, ready_file),
        Cmd::HttpGet {
            target,
            count,
            timeout_ms,
        } => http_get(&target, count, Duration::from_millis(timeout_ms)),
    }
}

fn serve(
    name: &str,
    http_port: u16,
    tcp_port: u16,
    udp_port: u16,
    ready_file: Option<PathBuf>,
) -> Result<()> {
    // "[::]" takes IPv4 too (bindv6only is 0 in a fresh namespace).
    let http =
        TcpListener::bind(("::", http_port)).with_context(|| format!("binding TCP {http_port}"))?;
    let tcp =
        TcpListener::bind(("::", tcp_port)).with_context(|| format!("binding TCP {tcp_port}"))?;
    let udp =
        UdpSocket::bind(("::", udp_port)).with_context(|| format!("binding UDP {udp_port}"))?;
    if let Some(path) = ready_file {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("labnet: {name} serving http/{http_port} tcp/{tcp_port} udp/{udp_port}");
    let n = name.to_string();
    thread::spawn(move || accept_loop(http, n, answer_http));
    let n = name.to_string();
    thread::spawn(move || accept_loop(tcp, n, answer_tcp));
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

fn answer_http(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = format!("{name}\n");
    let first_line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let reply = if first_line.windows(5).any(|w| w == b"HTTP/") {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Node: {name}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        body
    };
    let _ = stream.write_all(reply.as_bytes());
}

fn answer_tcp(mut stream: TcpStream, name: &str) {
    if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
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

fn http_get(target: &str, count: u32, timeout: Duration) -> Result<()> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .with_context(|| format!("target {target:?} is not ADDR:PORT"))?
        .next()
        .with_context(|| format!("target {target:?} resolves to nothing"))?;
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let start = Instant::now();
    for _ in 0..count {
        match one_get(addr, timeout) {
            Ok(node) => *served.entry(node).or_default() += 1,
            Err(e) => *errors.entry(format!("{e:#}")).or_default() += 1,
        }
    }
    let report = serde_json::json!({
        "target": addr.to_string(),
        "requests": count,
        "served": served,
        "failed": errors.values().sum::<u32>(),
        "errors": errors,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    });
    println!("{report}");
    Ok(())
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
