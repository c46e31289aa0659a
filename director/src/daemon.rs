//! `director run`: the daemon. It joins the Raft group, and then, every
//! reconcile interval or when the committed state changes:
//! - on the leader: seeds the configured members and static services, and
//!   commits VIP owners (control::assign, fenced by the leases);
//! - on every director: programs every virtual service into IPVS (hot
//!   standby), touching only the services it manages.
//!
//! It serves its view on the admin socket (`director status`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use consensus::{Node, NodeConfig, Security};
use ipvs_sys::{IpvsHandle, DEFAULT_WINDOW};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::control;
use crate::drain::{Drainer, DRAIN_ON_STOP};
use crate::ipvs::plan;
use crate::vip;

/// How often the daemon reconciles even without state changes.
const RECONCILE: Duration = Duration::from_millis(250);

/// The running configuration; SIGHUP replaces it.
#[derive(Debug)]
pub struct ConfigCell(std::sync::RwLock<Arc<Config>>);

impl ConfigCell {
    fn new(config: Config) -> Self {
        ConfigCell(std::sync::RwLock::new(Arc::new(config)))
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, config: Config) {
        match self.0.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
        }
    }
}

/// Since when (as this director saw it) each VIP has had its current owner.
#[derive(Debug, Default)]
struct OwnerClock(std::sync::Mutex<BTreeMap<std::net::IpAddr, (u64, std::time::SystemTime)>>);

impl OwnerClock {
    /// Notes the epochs of `state`; a new epoch starts now.
    fn observe(&self, state: &consensus::state::ClusterState) {
        let Ok(mut seen) = self.0.lock() else { return };
        seen.retain(|vip, _| state.owners.contains_key(vip));
        for (vip, o) in &state.owners {
            if seen.get(vip).map(|(e, _)| *e) != Some(o.epoch) {
                seen.insert(*vip, (o.epoch, std::time::SystemTime::now()));
            }
        }
    }

    fn since(&self, vip: &std::net::IpAddr) -> Option<std::time::SystemTime> {
        self.0.lock().ok()?.get(vip).map(|(_, t)| *t)
    }
}

/// Milliseconds since the Unix epoch, and milliseconds ago, of `t`.
fn when(t: Option<std::time::SystemTime>) -> (Option<u64>, Option<u64>) {
    let Some(t) = t else { return (None, None) };
    let unix = t
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64);
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .ok()
        .map(|d| d.as_millis() as u64);
    (unix, ago)
}

/// SIGHUP: reads `path` again. A file that does not load, or that changes
/// what only a restart can, is refused and the running configuration stays.
fn reload(cell: &ConfigCell, path: &std::path::Path) {
    let new = match crate::config::load(path) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("director: reload refused, the running configuration stays:\n{msg}");
            return;
        }
    };
    let fixed = cell.get().restart_only_changes(&new);
    if !fixed.is_empty() {
        eprintln!(
            "director: reload refused, the running configuration stays: {}: {} changed (these take a restart)",
            path.display(),
            fixed.join(", ")
        );
        return;
    }
    eprintln!(
        "director: reloaded {}: {} static service(s), {} pool(s)",
        path.display(),
        new.services.len(),
        new.pools.len()
    );
    cell.set(new);
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads `path`.
pub async fn run(config: Config, path: &std::path::Path) -> Result<()> {
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
    // VIPs are given up this long before the lease ends (vip::lease_ok).
    let guard = hold_guard(&config);
    // Set while draining: this director holds no VIP, whatever the state says.
    let releasing = Arc::new(AtomicBool::new(false));
    // The data path: VIPs held without kernel ARP, answered from here.
    let announcer = if me.role == crate::config::PeerRole::Data {
        for problem in vip::prepare_kernel(&config.interface) {
            eprintln!("director: sysctl {problem}");
        }
        // A drain cut short (SIGKILL) may have left new connections shut out.
        if let Err(e) = crate::drain::open_gate() {
            eprintln!("director: {e}");
        }
        match vip::Announcer::start(&config.interface, node.clone(), releasing.clone(), guard) {
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
    let admin_path = config.admin_socket.clone();
    let config = Arc::new(ConfigCell::new(config));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reconciled_tx, reconciled_rx) = watch::channel(0u64);
    let drainer = Arc::new(Drainer {
        node: node.clone(),
        config: config.clone(),
        releasing: releasing.clone(),
        kick: Arc::new(Notify::new()),
        reconciled: reconciled_rx,
        holds_vips: announcer.is_some(),
    });
    let clock = Arc::new(OwnerClock::default());
    let admin = tokio::spawn(admin_server(
        Admin {
            clock: clock.clone(),
            node: node.clone(),
            config: config.clone(),
            ipvs: ipvs.clone(),
            drainer: drainer.clone(),
            announcer: announcer.clone(),
        },
        stop_rx.clone(),
    ));
    let metrics = config.get().metrics.map(|addr| {
        tokio::spawn(metrics_server(
            addr,
            Admin {
                node: node.clone(),
                config: config.clone(),
                ipvs: ipvs.clone(),
                drainer: drainer.clone(),
                announcer: announcer.clone(),
                clock: clock.clone(),
            },
            stop_rx.clone(),
        ))
    });
    let leader = tokio::spawn(leader_loop(
        node.clone(),
        config.clone(),
        clock.clone(),
        stop_rx.clone(),
    ));
    let ipvs_task = tokio::spawn(ipvs_loop(
        node.clone(),
        config.clone(),
        ipvs,
        stop_rx.clone(),
    ));
    let vips = match announcer.clone() {
        Some(a) => match vip::Routes::open() {
            Ok(routes) => Some(tokio::spawn(vip_loop(
                VipLoop {
                    node: node.clone(),
                    config: config.clone(),
                    announcer: a,
                    routes,
                    releasing,
                    kick: drainer.kick.clone(),
                    reconciled: reconciled_tx,
                },
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
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload(&config, path),
        }
    }
    // Hand the VIPs over before leaving, so that stopping a director (a
    // package upgrade, a reboot) costs no failed request.
    if drainer.holds_vips {
        match drainer.drain(DRAIN_ON_STOP).await {
            Ok(v) => eprintln!("director: drained before stopping: {v}"),
            Err(e) => eprintln!("director: stopping without a handover: {e}"),
        }
    }
    let _ = stop_tx.send(true);
    let _ = leader.await;
    let _ = ipvs_task.await;
    if let Some(v) = vips {
        let _ = v.await;
    }
    let _ = admin.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&admin_path);
    // The ARP thread and the drainer hold the node too; a request still in
    // flight on the admin socket may hold it a moment longer.
    drop(drainer);
    drop(announcer);
    let mut node = node;
    for _ in 0..40 {
        match Arc::try_unwrap(node) {
            Ok(n) => return Ok(n.shutdown().await?),
            Err(still) => node = still,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("director: shutting down with tasks still holding the node");
    Ok(())
}

/// The leader's loop: seed the state and commit owner moves. It ticks
/// faster than the data-path loops so that a fenced director's VIPs move
/// within a few milliseconds of its fence expiring.
async fn leader_loop(
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    clock: Arc<OwnerClock>,
    mut stop: watch::Receiver<bool>,
) {
    let lease = config.get().lease;
    let tick = Duration::from_millis((lease.margin_ms / 2).clamp(5, 50));
    // While a director has been silent for two renewals its fence may expire
    // any moment: check every 5 ms until well after it did.
    let suspicious = Duration::from_millis(lease.renew_ms * 2)
        ..Duration::from_millis(lease.lease_ms + lease.margin_ms + 500);
    let mut changes = node.watch();
    loop {
        let silent = node.leader() == Some(node.id())
            && node.last_contact().values().any(|d| suspicious.contains(d));
        let wait = if silent {
            tick.min(Duration::from_millis(5))
        } else {
            tick
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = stop.changed() => return,
        }
        clock.observe(&node.state());
        if node.leader() == Some(node.id()) {
            lead(&node, &config.get()).await;
        }
    }
}

/// Programs every virtual service into IPVS (hot standby), on every state
/// change and every reconcile interval (drift repair).
async fn ipvs_loop(
    node: Arc<Node>,
    config: Arc<ConfigCell>,
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
        match reconcile_ipvs(&node, &config.get(), &h).await {
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

/// What the VIP loop works with.
struct VipLoop {
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    announcer: Arc<vip::Announcer>,
    routes: vip::Routes,
    releasing: Arc<AtomicBool>,
    /// Wakes the loop at once (a drain started).
    kick: Arc<Notify>,
    /// Counts the reconciles done, for a drain to wait on.
    reconciled: watch::Sender<u64>,
}

/// Holds the VIPs this director owns under its lease: local routes, GARP
/// when taken, the SNAT table. Wakes on state changes, every reconcile
/// interval, when the lease would lapse (routes go with the lease), and
/// when a drain starts.
async fn vip_loop(l: VipLoop, mut stop: watch::Receiver<bool>) {
    let node = &l.node;
    let mut changes = node.watch();
    let mut last_error = String::new();
    let mut snat_applied = String::new();
    let mut link_was_up = None;
    let mut undrain_asked: Option<std::time::Instant> = None;
    loop {
        // Wake when the lease would leave the guard: the routes go then.
        let guard = hold_guard(&l.config.get());
        let wait = match node.lease_remaining() {
            Some(left) if left > guard => RECONCILE.min(left - guard + Duration::from_millis(1)),
            _ => RECONCILE,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = l.kick.notified() => {}
            _ = stop.changed() => break,
        }
        let releasing = l.releasing.load(Ordering::SeqCst);
        let may_hold = vip::lease_ok(node, guard) && !releasing;
        let config = l.config.get();
        match reconcile_vips(
            node,
            &config,
            &l.announcer,
            &l.routes,
            may_hold,
            &mut snat_applied,
            &mut link_was_up,
        )
        .await
        {
            Ok(()) => last_error.clear(),
            Err(e) if e != last_error => {
                eprintln!("director: VIP reconcile: {e}");
                last_error = e;
            }
            Err(_) => {}
        }
        l.reconciled.send_modify(|n| *n += 1);
        // Drained earlier (by a stop or `director drain`) and running again
        // without a drain in progress: back in service.
        let draining = node.state().draining.contains_key(&node.id());
        if draining
            && !releasing
            && undrain_asked.is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            undrain_asked = Some(std::time::Instant::now());
            let n = node.clone();
            let r = l.releasing.clone();
            tokio::spawn(async move {
                if !r.load(Ordering::SeqCst) {
                    let _ = n.set_draining(false).await;
                }
            });
        }
    }
    // Stopping: give up every VIP at once (the next owner announces).
    let state = node.state();
    let config = l.config.get();
    let _ = l
        .routes
        .reconcile(&Default::default(), |ip| {
            control::managed_addr(ip, &state, &config)
        })
        .await;
}

/// How long before its lease ends a director stops holding: half the margin.
fn hold_guard(config: &Config) -> Duration {
    Duration::from_millis(config.lease.margin_ms / 2)
}

/// Local routes for held VIPs (GARP when newly taken), and the SNAT table.
async fn reconcile_vips(
    node: &Node,
    config: &Config,
    announcer: &vip::Announcer,
    routes: &vip::Routes,
    may_hold: bool,
    snat_applied: &mut String,
    link_was_up: &mut Option<bool>,
) -> Result<(), String> {
    let state = node.state();
    let held = vip::held(&state, node.id(), may_hold);
    // Listen for neighbour solicitations before the routes appear.
    announcer.listen_for(&held)?;
    let managed = |ip: &std::net::IpAddr| control::managed_addr(ip, &state, config);
    let burst = |vip| {
        announcer.announce(
            vip,
            config.announce.count,
            Duration::from_millis(config.announce.interval_ms),
        )
    };
    for taken in routes.reconcile(&held, managed).await? {
        burst(taken);
    }
    // The link came back (a cable, a switch port, a VM migration): switches
    // and neighbours may have forgotten us; announce everything again.
    let up = vip::link_up(&config.interface);
    if up && *link_was_up == Some(false) {
        held.iter().copied().for_each(burst);
    }
    *link_was_up = Some(up);
    // The optional periodic refresh: one announcement per VIP.
    if config.announce.refresh_s > 0 {
        let every = Duration::from_secs(config.announce.refresh_s);
        for vip in &held {
            let due = announcer
                .last_announced(*vip)
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age >= every);
            if due {
                announcer.announce(*vip, 1, Duration::ZERO);
            }
        }
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
    // The moves are in the log: a fenced director that comes back may be
    // granted a lease again (it must apply them before the lease counts).
    node.moves_done();
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

/// What the admin socket serves from.
#[derive(Clone)]
struct Admin {
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    ipvs: Option<IpvsHandle>,
    drainer: Arc<Drainer>,
    announcer: Option<Arc<vip::Announcer>>,
    clock: Arc<OwnerClock>,
}

impl Admin {
    async fn answer(&self, line: &str) -> Value {
        let req: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        match req["op"].as_str() {
            Some("status") => status(self).await,
            Some("drain") => {
                let ms = req["timeout_ms"].as_u64().unwrap_or(30_000);
                match self.drainer.drain(Duration::from_millis(ms)).await {
                    Ok(v) => v,
                    Err(e) => json!({"error": e}),
                }
            }
            Some("undrain") => match self.drainer.undrain().await {
                Ok(v) => v,
                Err(e) => json!({"error": e}),
            },
            _ => json!({"error": format!("unknown request {line:?}")}),
        }
    }
}

/// Serves `GET /metrics` on `addr` (Prometheus text format) until stopped.
async fn metrics_server(addr: std::net::SocketAddr, admin: Admin, mut stop: watch::Receiver<bool>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("director: metrics on {addr}: {e}; metrics are off");
            return;
        }
    };
    loop {
        let mut stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            // The request head; bodies are not read.
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf[got..]),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => got += n,
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                ("200 OK", crate::metrics::render(&status(&admin).await))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

/// The admin socket: one JSON request per line (`{"op":"status"}`,
/// `{"op":"drain","timeout_ms":N}`, `{"op":"undrain"}`).
async fn admin_server(admin: Admin, mut stop: watch::Receiver<bool>) {
    let path = admin.config.get().admin_socket.clone();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("director: admin socket {}: {e}", path.display());
            return;
        }
    };
    // Root-only by default.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = admin.answer(&line).await.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// This director's view, as `director status` prints it.
async fn status(admin: &Admin) -> Value {
    let node = &admin.node;
    let config = &admin.config.get();
    let ipvs = admin.ipvs.as_ref();
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
                "draining": state.draining.contains_key(&p.id),
                "last_contact_ms": contact.get(&p.id).map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let names: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|p| (p.id, p.name.clone()))
        .collect();
    // The same rule the VIP loop and the ARP/NDP threads apply.
    let may_hold =
        vip::lease_ok(node, hold_guard(config)) && !admin.drainer.releasing.load(Ordering::SeqCst);
    let held_here = vip::held(&state, node.id(), may_hold);
    let vips: Vec<Value> = state
        .allocations
        .iter()
        .map(|(vip, service)| {
            let owner = state.owners.get(vip);
            let (since_unix_ms, since_ms_ago) = when(admin.clock.since(vip));
            let announced = admin
                .announcer
                .as_ref()
                .and_then(|a| a.last_announced(*vip));
            let (announced_unix_ms, announced_ms_ago) = when(announced);
            json!({
                "since_unix_ms": since_unix_ms,
                "since_ms_ago": since_ms_ago,
                "last_announced_unix_ms": announced_unix_ms,
                "last_announced_ms_ago": announced_ms_ago,
                "vip": vip.to_string(),
                "service": service,
                "owner": owner.map(|o| o.director),
                "owner_name": owner.and_then(|o| names.get(&o.director)),
                "epoch": owner.map(|o| o.epoch),
                "held_here": held_here.contains(vip),
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
