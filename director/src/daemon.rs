//! `director run`: the daemon. It joins the Raft group, and then, every
//! reconcile interval or when the committed state changes:
//! - on the leader: seeds the configured members and static services, and
//!   commits VIP owners (control::assign, fenced by the leases);
//! - on every director: programs every virtual service into IPVS (hot
//!   standby), touching only the services it manages.
//!
//! It serves its view on the admin socket (`director status`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use consensus::{Node, NodeConfig, Security};
use ipvs_sys::{IpvsHandle, DEFAULT_WINDOW};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::config::Config;
use crate::control;
use crate::ipvs::plan;
use crate::vip;

/// How often the daemon reconciles even without state changes.
const RECONCILE: Duration = Duration::from_millis(250);

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let me = config
        .peers
        .iter()
        .find(|p| p.id == config.id)
        .context("this director is not among the peers")?
        .clone();
    let listener = TcpListener::bind(me.address)
        .await
        .with_context(|| format!("binding the Raft transport on {}", me.address))?;
    let voters = config
        .peers
        .iter()
        .map(|p| (p.id, p.address.to_string()))
        .collect();
    let security = match &config.tls {
        Some(files) => Security::Mutual(files.clone()),
        None => Security::Insecure,
    };
    let node = Arc::new(
        Node::start(
            NodeConfig {
                id: config.id,
                voters,
                data_dir: config.data_dir.clone(),
                timing: config.timing,
                lease: config.lease,
                faults: Default::default(),
                security,
            },
            listener,
        )
        .await?,
    );
    let ipvs = match crate::ipvs::connect().await {
        // A witness takes part in consensus only: no IPVS, no VIPs.
        _ if me.role == crate::config::PeerRole::Witness => None,
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("director: IPVS unavailable, virtual services are not programmed: {e}");
            None
        }
    };
    // The data path: VIPs held without kernel ARP, answered from here.
    let announcer = if me.role == crate::config::PeerRole::Data {
        for problem in vip::prepare_kernel(&config.interface) {
            eprintln!("director: sysctl {problem}");
        }
        match vip::Announcer::start(&config.interface, node.clone()) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                eprintln!(
                    "director: cannot answer ARP on {}: {e}; VIPs are not held here",
                    config.interface
                );
                None
            }
        }
    } else {
        None
    };
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::spawn(admin_server(
        node.clone(),
        config.clone(),
        ipvs.clone(),
        stop_rx.clone(),
    ));
    let leader = tokio::spawn(leader_loop(node.clone(), config.clone(), stop_rx.clone()));
    let ipvs_task = tokio::spawn(ipvs_loop(
        node.clone(),
        config.clone(),
        ipvs,
        stop_rx.clone(),
    ));
    let vips = match announcer {
        Some(a) => match vip::Routes::open() {
            Ok(routes) => Some(tokio::spawn(vip_loop(
                node.clone(),
                config.clone(),
                a,
                routes,
                stop_rx,
            ))),
            Err(e) => {
                eprintln!("director: {e}; VIPs are not held here");
                None
            }
        },
        None => None,
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    let _ = leader.await;
    let _ = ipvs_task.await;
    if let Some(v) = vips {
        let _ = v.await;
    }
    let _ = admin.await;
    let _ = std::fs::remove_file(&config.admin_socket);
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await?,
        Err(_) => eprintln!("director: shutting down with tasks still holding the node"),
    }
    Ok(())
}

/// The leader's loop: seed the state and commit owner moves. It ticks
/// faster than the data-path loops so that a fenced director's VIPs move
/// within a few milliseconds of its fence expiring.
async fn leader_loop(node: Arc<Node>, config: Arc<Config>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis((config.lease.margin_ms / 2).clamp(5, 50));
    let mut changes = node.watch();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = changes.changed() => {}
            _ = stop.changed() => return,
        }
        if node.leader() == Some(node.id()) {
            lead(&node, &config).await;
        }
    }
}

/// Programs every virtual service into IPVS (hot standby), on every state
/// change and every reconcile interval (drift repair).
async fn ipvs_loop(
    node: Arc<Node>,
    config: Arc<Config>,
    ipvs: Option<IpvsHandle>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(h) = ipvs else { return };
    let mut changes = node.watch();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE) => {}
            _ = changes.changed() => {}
            _ = stop.changed() => return,
        }
        match reconcile_ipvs(&node, &config, &h).await {
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_error {
                    eprintln!("director: IPVS reconcile: {msg}");
                    last_error = msg;
                }
            }
            Ok(()) => last_error.clear(),
        }
    }
}

/// Holds the VIPs this director owns under its lease: local routes, GARP
/// when taken, the SNAT table. Wakes on state changes, every reconcile
/// interval, and when the lease would lapse (routes go with the lease).
async fn vip_loop(
    node: Arc<Node>,
    config: Arc<Config>,
    announcer: Arc<vip::Announcer>,
    routes: vip::Routes,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = node.watch();
    let mut last_error = String::new();
    let mut snat_applied = String::new();
    loop {
        let wait = match node.lease_remaining() {
            Some(left) => RECONCILE.min(left + Duration::from_millis(1)),
            None => RECONCILE,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = stop.changed() => break,
        }
        match reconcile_vips(&node, &config, &announcer, &routes, &mut snat_applied).await {
            Ok(()) => last_error.clear(),
            Err(e) if e != last_error => {
                eprintln!("director: VIP reconcile: {e}");
                last_error = e;
            }
            Err(_) => {}
        }
    }
    // Stopping: give up every VIP at once (the next owner announces).
    let state = node.state();
    let _ = routes
        .reconcile(&Default::default(), |ip| {
            control::managed_addr(&(*ip).into(), &state, &config)
        })
        .await;
}

/// Local routes for held VIPs (GARP when newly taken), and the SNAT table.
async fn reconcile_vips(
    node: &Node,
    config: &Config,
    announcer: &vip::Announcer,
    routes: &vip::Routes,
    snat_applied: &mut String,
) -> Result<(), String> {
    let state = node.state();
    let held = vip::held(&state, node.id(), node.holds_lease());
    let managed = |ip: &std::net::Ipv4Addr| control::managed_addr(&(*ip).into(), &state, config);
    for taken in routes.reconcile(&held, managed).await? {
        announcer.announce(
            taken,
            config.announce.count,
            Duration::from_millis(config.announce.interval_ms),
        );
    }
    let ruleset = vip::snat_ruleset(&state);
    if *snat_applied != ruleset {
        vip::apply_snat(&ruleset)?;
        *snat_applied = ruleset;
    }
    Ok(())
}

/// The leader's work: seed the state, then commit owner moves.
async fn lead(node: &Node, config: &Config) {
    for cmd in control::seed(config, &node.state()) {
        if node.propose(cmd).await.is_err() {
            return;
        }
    }
    let state = node.state();
    let contact = node.last_contact();
    let fence = Duration::from_millis(config.lease.lease_ms);
    let mut live = control::Liveness {
        leader: node.id(),
        may_assign: node.may_assign(),
        ..Default::default()
    };
    for id in state.directors.keys() {
        let fresh = if *id == node.id() {
            node.holds_lease()
        } else {
            contact.get(id).is_some_and(|d| *d < fence)
        };
        if fresh {
            live.live.insert(*id);
        }
        if *id != node.id() && node.may_take_from(*id) && !fresh {
            live.fenced.insert(*id);
        }
    }
    for cmd in control::assign(&state, &live) {
        let _ = node.propose(cmd).await;
    }
}

async fn reconcile_ipvs(node: &Node, config: &Config, ipvs: &IpvsHandle) -> Result<()> {
    let state = node.state();
    let desired = control::desired_ipvs(&state);
    let kernel: Vec<plan::Entry> = ipvs
        .table()
        .await?
        .into_iter()
        .filter(|(s, _)| control::managed(&s.key, &state, config))
        .collect();
    let ops = plan::plan(&desired, &kernel, true);
    if ops.is_empty() {
        return Ok(());
    }
    let failed: Vec<String> = ipvs
        .execute(&ops, DEFAULT_WINDOW)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}

/// The admin socket: one JSON request per line (`{"op":"status"}`).
async fn admin_server(
    node: Arc<Node>,
    config: Arc<Config>,
    ipvs: Option<IpvsHandle>,
    mut stop: watch::Receiver<bool>,
) {
    let path = &config.admin_socket;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("director: admin socket {}: {e}", path.display());
            return;
        }
    };
    // Root-only by default.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let node = node.clone();
        let config = config.clone();
        let ipvs = ipvs.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let reply = match req["op"].as_str() {
                    Some("status") => status(&node, &config, ipvs.as_ref()).await,
                    _ => json!({"error": format!("unknown request {line:?}")}),
                };
                let mut text = reply.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// This director's view, as `director status` prints it.
async fn status(node: &Node, config: &Config, ipvs: Option<&IpvsHandle>) -> Value {
    let m = node.metrics();
    let state = node.state();
    let contact = node.last_contact();
    let members: Vec<Value> = config
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "address": p.address.to_string(),
                "role": match p.role { crate::config::PeerRole::Data => "data", crate::config::PeerRole::Witness => "witness" },
                "leader": m.current_leader == Some(p.id),
                "last_contact_ms": contact.get(&p.id).map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let names: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|p| (p.id, p.name.clone()))
        .collect();
    let vips: Vec<Value> = state
        .allocations
        .iter()
        .map(|(vip, service)| {
            let owner = state.owners.get(vip);
            json!({
                "vip": vip.to_string(),
                "service": service,
                "owner": owner.map(|o| o.director),
                "owner_name": owner.and_then(|o| names.get(&o.director)),
                "epoch": owner.map(|o| o.epoch),
                "held_here": owner.is_some_and(|o| o.director == node.id()) && node.holds_lease(),
            })
        })
        .collect();
    let kernel: BTreeMap<String, Vec<ipvs_sys::Destination>> = match ipvs {
        Some(h) => h
            .table()
            .await
            .map(|t| t.into_iter().map(|(s, d)| (s.key.to_string(), d)).collect())
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let services: Vec<Value> = control::desired_ipvs(&state)
        .iter()
        .map(|(s, dests)| {
            let key = s.key.to_string();
            let programmed = kernel.get(&key);
            json!({
                "service": key,
                "scheduler": s.scheduler,
                "forwarding": dests.first().map(|d| d.forward.ipvsadm_name()),
                "programmed": programmed.is_some(),
                "backends": dests.iter().map(|d| {
                    let k = programmed.and_then(|p| p.iter().find(|x| x.addr == d.addr && x.port == d.port));
                    let c = k.and_then(|x| x.counters).unwrap_or_default();
                    json!({
                        "address": d.addr.to_string(),
                        "port": d.port,
                        "weight": k.map(|x| x.weight).unwrap_or(d.weight),
                        "active": c.active,
                        "inactive": c.inactive,
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "director": {"id": node.id(), "name": names.get(&node.id())},
        "cluster": {
            "leader": m.current_leader,
            "leader_name": m.current_leader.and_then(|l| names.get(&l)),
            "term": m.current_term,
            "last_log_index": m.last_log_index,
            "applied_index": m.last_applied.map(|l| l.index),
            "members": members,
        },
        "lease": {
            "held": node.holds_lease(),
            "remaining_ms": node.lease_remaining().map(|d| d.as_millis() as u64),
        },
        "vips": vips,
        "services": services,
    })
}
