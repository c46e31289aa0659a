//! `labraft`: one director's Raft node as a process of its own, for the
//! namespace tests (kill -9, restarts, real packet loss). It serves a control
//! socket (a unix socket, reachable from any network namespace) that answers
//! one JSON request per line:
//!
//! - `{"op":"status"}` -> id, leader, term, lease, owners, directors, voters
//! - `{"op":"propose","command":{...}}` -> the response, or an error
//! - `{"op":"may_take_from","director":N}` / `{"op":"may_assign"}` -> bool

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use consensus::{Command, LeaseTiming, Node, NodeConfig, NodeId, Security, Timing, TlsFiles};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Parser)]
#[command(name = "labraft", about = "A director's Raft node for the lab")]
struct Cli {
    /// This node's id.
    #[arg(long)]
    id: NodeId,
    /// Address to serve the Raft transport on.
    #[arg(long)]
    listen: String,
    /// A voter, as ID=HOST:PORT (repeat for each, this node included).
    #[arg(long = "voter", value_parser = parse_voter)]
    voters: Vec<(NodeId, String)>,
    /// Data directory (raft.redb).
    #[arg(long)]
    data: PathBuf,
    /// Control socket path.
    #[arg(long)]
    control: PathBuf,
    /// Raft and lease timing: `default` or `tight`.
    #[arg(long, default_value = "default")]
    timing: String,
    /// CA, certificate and key PEM files for mutual TLS; plaintext without.
    #[arg(long, num_args = 3, value_names = ["CA", "CERT", "KEY"])]
    tls: Option<Vec<PathBuf>>,
}

fn parse_voter(s: &str) -> Result<(NodeId, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    Ok((
        id.parse().map_err(|_| format!("{id:?} is not a node id"))?,
        addr.to_string(),
    ))
}

/// The timing presets of docs/fencing.md.
fn timing(name: &str) -> Result<(Timing, LeaseTiming)> {
    Ok(match name {
        "default" => (Timing::default(), LeaseTiming::default()),
        "tight" => (
            Timing {
                heartbeat_ms: 20,
                election_min_ms: 60,
                election_max_ms: 120,
            },
            LeaseTiming {
                lease_ms: 220,
                margin_ms: 20,
                renew_ms: 40,
            },
        ),
        other => bail!("unknown timing {other:?} (default or tight)"),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (raft_timing, lease) = timing(&cli.timing)?;
    let security = match &cli.tls {
        Some(f) if f.len() == 3 => Security::Mutual(TlsFiles {
            ca: f[0].clone(),
            cert: f[1].clone(),
            key: f[2].clone(),
        }),
        _ => Security::Insecure,
    };
    let listener = TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let voters: BTreeMap<NodeId, String> = cli.voters.into_iter().collect();
    let node = Arc::new(
        Node::start(
            NodeConfig {
                id: cli.id,
                voters,
                data_dir: cli.data,
                timing: raft_timing,
                lease,
                faults: Default::default(),
                security,
            },
            listener,
        )
        .await?,
    );
    let _ = std::fs::remove_file(&cli.control);
    let control = UnixListener::bind(&cli.control)
        .with_context(|| format!("binding {}", cli.control.display()))?;
    loop {
        let (stream, _) = control.accept().await?;
        let node = node.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = answer(&node, &line).await;
                let mut text = reply.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn answer(node: &Node, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"error": format!("bad request: {e}")}),
    };
    match req["op"].as_str() {
        Some("status") => {
            let m = node.metrics();
            let state = node.state();
            let owners: BTreeMap<String, Value> = state
                .owners
                .iter()
                .map(|(vip, o)| {
                    (
                        vip.to_string(),
                        json!({"director": o.director, "epoch": o.epoch}),
                    )
                })
                .collect();
            json!({
                "id": node.id(),
                "leader": m.current_leader,
                "term": m.current_term,
                "last_applied": m.last_applied.map(|l| l.index),
                "holds_lease": node.holds_lease(),
                // When this answer was decided (CLOCK_MONOTONIC, shared by
                // every process of the host): the checker orders samples by it.
                "now_ns": lab::watch::monotonic_ns(),
                "lease_remaining_ms": node.lease_remaining().map(|d| d.as_millis() as u64),
                "owners": owners,
                "directors": state.directors.keys().collect::<Vec<_>>(),
                "voters": node.voters(),
            })
        }
        Some("propose") => match serde_json::from_value::<Command>(req["command"].clone()) {
            Ok(cmd) => {
                let r = node.propose(cmd).await;
                // The test drives the leader's moves: they are in the log now.
                node.moves_done();
                match r {
                    Ok(r) => json!({"response": r}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            Err(e) => json!({"error": format!("bad command: {e}")}),
        },
        Some("may_take_from") => match req["director"].as_u64() {
            Some(d) => json!({"result": node.may_take_from(d)}),
            None => json!({"error": "director missing"}),
        },
        Some("may_assign") => json!({"result": node.may_assign()}),
        other => json!({"error": format!("unknown op {other:?}")}),
    }
}
