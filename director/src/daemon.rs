//! `director run`: the daemon, wired together. Inputs (the configuration
//! and its sources) feed the leader's loop, which commits decisions through
//! Raft; every director's reconcilers make its kernel hold the committed
//! state; the admin socket and the metrics endpoint serve its view.
//!
//! Under systemd (`$NOTIFY_SOCKET`) it reports readiness once it has joined
//! the group and, on a data director, programmed IPVS; then its role and
//! held VIPs as status lines, watchdog pings, reloads and the stop.
//!
//! A witness runs the Raft node, the leader's loop (it may lead), the admin
//! socket and the metrics endpoint: it never opens IPVS, runs modprobe, or
//! touches routes, nftables or sysctls.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Node, NodeConfig, Security};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::announce::hold::HoldRule;
use crate::announce::{self, Announcer};
use crate::config::{self, Config, ConfigCell, PeerRole};
use crate::dataplane::driver::{self, Handle, Wakeups};
use crate::dataplane::nft::{Gate, Nft};
use crate::dataplane::onlink::OnLink;
use crate::dataplane::routes::{Routes, VipRoutes};
use crate::dataplane::{ipvs, sysctl};
use crate::health::Health;
use crate::ops::drain::{Drainer, DRAIN_ON_STOP};
use crate::ops::status::OwnerClock;
use crate::ops::systemd::{Field, Notifier, Summary};
use crate::ops::{admin, metrics, Daemon};
use crate::sources::kubernetes;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `id` names no peer.
    #[error("this director (id {0}) is not among the peers")]
    NotAPeer(u64),
    /// The Raft transport's address could not be bound.
    #[error("binding the Raft transport on {addr}: {source}")]
    BindTransport {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Raft node did not start.
    #[error("starting the Raft node: {0}")]
    Consensus(#[from] consensus::ConsensusError),
    /// The thread Raft runs on could not be started.
    #[error("starting the Raft thread: {0}")]
    ConsensusThread(std::io::Error),
    /// A signal handler could not be installed.
    #[error("installing the {signal} handler: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A thread with a runtime of its own, for the Raft node; it ends when
/// dropped (what still runs there is cancelled).
struct ConsensusThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsensusThread {
    fn start() -> std::io::Result<ConsensusThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(ConsensusThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ConsensusThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long before its lease ends a director stops holding: half the margin.
fn hold_guard(config: &Config) -> Duration {
    Duration::from_millis(config.lease.margin_ms / 2)
}

/// How long readiness waits for the first IPVS pass after joining before
/// it is reported anyway (with the failing pass in the status line).
const IPVS_READY_WAIT: Duration = Duration::from_secs(20);

/// Runs until SIGTERM or SIGINT; SIGHUP reloads `path`. `notifier` tells
/// systemd about readiness, status, reloads and the stop, and pings its
/// watchdog ([`Notifier::from_env`]; [`Notifier::disabled`] for none).
pub async fn run(config: Config, path: &Path, notifier: Arc<Notifier>) -> Result<(), RunError> {
    crate::ops::memory::return_freed_pages();
    let me = config
        .peers
        .iter()
        .find(|p| p.id == config.id)
        .ok_or(RunError::NotAPeer(config.id))?
        .clone();
    let addr = me.address;
    let bind_error = move |source| RunError::BindTransport { addr, source };
    let listener = std::net::TcpListener::bind(me.address).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let voters = config
        .peers
        .iter()
        .map(|p| (p.id, p.address.to_string()))
        .collect();
    let security = match &config.tls {
        Some(files) => Security::Mutual(files.clone()),
        None => Security::Insecure,
    };
    // Raft, its transport and the lease renewals run on a thread of their
    // own, so that a long pass of the data path (a resync of 10,000
    // services, a status document, a reload) never delays a heartbeat, a
    // vote or a renewal.
    let consensus = ConsensusThread::start().map_err(RunError::ConsensusThread)?;
    let node_config = NodeConfig {
        id: config.id,
        voters,
        data_dir: config.data_dir.clone(),
        timing: config.timing,
        lease: config.lease,
        faults: Default::default(),
        security,
    };
    let started = consensus
        .handle
        .spawn(async move {
            let listener = TcpListener::from_std(listener).map_err(bind_error)?;
            Ok::<_, RunError>(Node::start(node_config, listener).await?)
        })
        .await
        .map_err(|e| RunError::ConsensusThread(std::io::Error::other(e)))??;
    let node = Arc::new(started);
    tracing::info!(id = config.id, role = ?me.role, address = %me.address, "joined the Raft group");
    let data = me.role == PeerRole::Data;
    let interface = config.interface.clone();
    let guard = hold_guard(&config);
    let resync = config.reconcile_resync;
    let admin_path = config.admin_socket.clone();
    let metrics_addr = config.metrics;
    let config = Arc::new(ConfigCell::new(config));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(
        notifier.clone().watchdog_loop(stop_rx.clone()),
    )];
    let wake = Wakeups {
        state: node.watch(),
        config: config.subscribe(),
        stop: stop_rx.clone(),
    };
    let mut reconcilers: Vec<Handle> = Vec::new();

    // The data path (never on a witness).
    let mut ipvs_handle = None;
    let mut health = None;
    let mut onlinks = None;
    let mut announcer = None;
    let mut rule = None;
    let gate = Arc::new(Gate::default());
    let (mut routes_handle, mut nft_handle) = (None, None);
    let mut sync_handle = None;
    let mut conntrackd = None;
    if data {
        let (h, t) = driver::spawn(sysctl::Sysctl::new(interface.clone()), wake.clone(), resync);
        reconcilers.push(h);
        tasks.push(t);
        match crate::ipvs::connect().await {
            Ok(h) => ipvs_handle = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "IPVS unavailable, virtual services are not programmed")
            }
        }
        let checks = Arc::new(Health::default());
        tasks.push(tokio::spawn(crate::health::run(
            checks.clone(),
            node.watch(),
            stop_rx.clone(),
        )));
        let onlink = Arc::new(OnLink::default());
        tasks.push(tokio::spawn(
            onlink.clone().run(node.watch(), stop_rx.clone()),
        ));
        if let Some(h) = &ipvs_handle {
            let mut down = checks.down();
            let mut refused = onlink.refused();
            let r = ipvs::Ipvs::new(
                node.clone(),
                config.clone(),
                h.clone(),
                down.clone(),
                refused.clone(),
            );
            let (h, t) = driver::spawn(r, wake.clone(), resync);
            // A backend going down or coming back, or a dr backend refused
            // or accepted, is a pass now. It ends at the stop: the senders
            // live in `daemon`, dropped only after every task has ended (a
            // loop that waited for them held SIGTERM up until systemd's
            // TimeoutStopSec killed the daemon).
            let kick = h.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = down.changed() => if r.is_err() { break },
                        r = refused.changed() => if r.is_err() { break },
                        _ = stop.changed() => break,
                    }
                    kick.kick();
                }
            }));
            reconcilers.push(h);
            tasks.push(t);
        }
        if let Some(h) = &ipvs_handle {
            let (h, t) = driver::spawn(
                crate::dataplane::sync::Sync::new(config.clone(), h.clone()),
                wake.clone(),
                resync,
            );
            sync_handle = Some(h.clone());
            reconcilers.push(h);
            tasks.push(t);
        }
        health = Some(checks);
        onlinks = Some(onlink);
        let (h, t) = driver::spawn(Nft::new(node.clone(), gate.clone()), wake.clone(), resync);
        nft_handle = Some(h.clone());
        reconcilers.push(h);
        tasks.push(t);
        let ct = Arc::new(crate::dataplane::conntrack::Conntrackd::new(
            config.clone(),
            config.get().data_dir.clone(),
            me.address.ip(),
        ));
        tasks.push(tokio::spawn(
            ct.clone().run(config.subscribe(), stop_rx.clone()),
        ));
        conntrackd = Some(ct);
        let hold = HoldRule::new(node.clone(), guard);
        match Announcer::start(&interface, hold.clone()) {
            Ok(a) => {
                let a = Arc::new(a);
                match Routes::open() {
                    Ok(routes) => {
                        let r = VipRoutes::new(
                            routes,
                            a.clone(),
                            node.clone(),
                            config.clone(),
                            conntrackd.clone(),
                        );
                        let (h, t) = driver::spawn(r, wake.clone(), resync);
                        routes_handle = Some(h.clone());
                        reconcilers.push(h);
                        tasks.push(t);
                        tasks.push(tokio::spawn(announce::link_watch(
                            a.clone(),
                            config.clone(),
                            stop_rx.clone(),
                        )));
                        announcer = Some(a);
                        rule = Some(hold);
                    }
                    Err(e) => tracing::error!(error = %e, "VIPs are not held here"),
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot answer ARP; VIPs are not held here"),
        }
    }

    let drainer = Arc::new(Drainer {
        node: node.clone(),
        config: config.clone(),
        rule,
        gate,
        routes: routes_handle,
        nft: nft_handle,
        sync: sync_handle,
        conntrackd: conntrackd.clone(),
    });
    tasks.push(tokio::spawn(
        drainer.clone().keep_in_service(stop_rx.clone()),
    ));
    // The Kubernetes source: watches on every director (a new leader has
    // the view at hand); only the leader writes.
    let mut kube = None;
    let (decisions_tx, decisions_rx) =
        watch::channel(Arc::new(crate::leader::Decisions::default()));
    if let Some(k) = config.get().kubernetes.clone() {
        match kubernetes::connect(&k).await {
            Ok(client) => {
                let (source, watches) = kubernetes::Source::start(client, stop_rx.clone());
                tasks.extend(watches);
                tasks.push(tokio::spawn(kubernetes::writer::run(
                    node.clone(),
                    source.clone(),
                    me.name.clone(),
                    decisions_rx,
                    stop_rx.clone(),
                )));
                tracing::info!(kubeconfig = %k.kubeconfig.display(), class = %k.class, "watching Kubernetes");
                kube = Some(source);
            }
            Err(e) => tracing::error!(
                error = %e,
                "Kubernetes Services are not served: their virtual services stay as they are until a restart with a working kubeconfig"
            ),
        }
    }
    let clock = Arc::new(OwnerClock::default());
    let daemon = Daemon {
        node: node.clone(),
        config: config.clone(),
        ipvs: ipvs_handle,
        drainer: drainer.clone(),
        announcer: announcer.clone(),
        clock: clock.clone(),
        reconcilers,
        kube: kube.clone(),
        health,
        conntrackd,
        onlink: onlinks,
    };
    {
        let (d, p, s) = (daemon.clone(), admin_path.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = admin::serve(d, p, s).await {
                tracing::error!(error = %e, "the admin socket is not served");
            }
        }));
    }
    if let Some(addr) = metrics_addr {
        tasks.push(tokio::spawn(metrics::serve(
            addr,
            daemon.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::leader::run(
        node.clone(),
        config.clone(),
        clock,
        kube.clone(),
        decisions_tx,
        stop_rx.clone(),
    )));
    let status_lines = notifier.enabled().then(|| {
        tokio::spawn(notify_systemd(
            daemon.clone(),
            notifier.clone(),
            stop_rx.clone(),
        ))
    });

    let signal = |kind, name| {
        tokio::signal::unix::signal(kind).map_err(|source| RunError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                // Before readiness systemd knows of no reload; after it,
                // READY=1 ends the reload whether the file was taken or
                // refused (the director serves either way).
                let ready = notifier.is_ready();
                if ready {
                    notifier.reloading();
                }
                // Reading a big file takes a while: off the runtime that
                // answers Raft and renews the lease.
                let reloaded = {
                    let cell = config.clone();
                    let file = path.to_path_buf();
                    tokio::task::spawn_blocking(move || config::reload(&cell, &file)).await
                };
                match reloaded {
                    Ok(Ok(c)) => tracing::info!(
                        file = %path.display(),
                        services = c.services.len(),
                        pools = c.pools.len(),
                        "configuration reloaded"
                    ),
                    Ok(Err(e)) => tracing::error!("reload refused, the running configuration stays: {e}"),
                    Err(e) => tracing::error!("reload failed, the running configuration stays: {e}"),
                }
                if ready {
                    notifier.notify(&[Field::Ready]);
                }
            }
        }
    }
    tracing::info!("stopping");
    if let Some(t) = status_lines {
        t.abort();
    }
    notifier.stopping(if drainer.rule.is_some() {
        "stopping: handing the VIPs over"
    } else {
        "stopping"
    });
    // Hand the VIPs over before leaving, so that stopping a director (a
    // package upgrade, a reboot) costs no failed request.
    if drainer.rule.is_some() {
        match drainer.drain(DRAIN_ON_STOP).await {
            Ok(r) => tracing::info!(moved = r.moved.len(), "drained before stopping"),
            Err(e) => tracing::warn!(error = %e, "stopping without a handover"),
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&admin_path);
    // The ARP threads and the drainer hold the node too; a request still in
    // flight on the admin socket may hold it a moment longer.
    drop(daemon);
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
    tracing::warn!("shutting down with tasks still holding the node");
    Ok(())
}

/// Tells systemd when this director serves, and then what it is doing.
///
/// Ready means joined (a leader is known) and, on a data director with
/// IPVS, a successful IPVS pass started after joining (at most
/// [`IPVS_READY_WAIT`]; without IPVS, at once). After that a status line
/// (role, leader, held VIPs, problems) is sent whenever it changes, checked
/// every second.
async fn notify_systemd(d: Daemon, notifier: Arc<Notifier>, mut stop: watch::Receiver<bool>) {
    notifier.status("joining the Raft group");
    loop {
        tokio::select! {
            r = d.node.wait_for_leader(Duration::from_secs(60)) => if r.is_ok() { break },
            _ = stop.changed() => return,
        }
    }
    if let Some(ipvs) = d.reconcilers.iter().find(|h| h.name == "ipvs") {
        notifier.status("joined; programming IPVS");
        let programmed = tokio::select! {
            ok = ipvs.applied(IPVS_READY_WAIT) => ok,
            _ = stop.changed() => return,
        };
        if !programmed {
            tracing::warn!(
                wait = ?IPVS_READY_WAIT,
                error = ipvs.stats.error().unwrap_or_default(),
                "IPVS is not programmed yet; reporting ready anyway"
            );
        }
    }
    let mut last = Summary::of(&d).line();
    notifier.ready(&last);
    tracing::info!(status = %last, "ready (systemd notified)");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let line = Summary::of(&d).line();
        if line != last {
            notifier.status(&line);
            last = line;
        }
    }
}
