//! Backend health checks: every data director probes the backends it
//! programs, on its own, and takes a failing one out of its own IPVS table
//! (weight 0, or out with `on_fail: remove`). A health verdict is a local
//! input of the data plane, like a drain: it never goes through Raft, so a
//! check costs no commit and a director that cannot reach a backend stops
//! using it whatever the others see.
//!
//! A target is one (check, address:port) pair: backends of many services
//! that share a check and a port (kube-proxy's `/healthz` of one node) are
//! probed once. Each target has its own task, started at a phase of its
//! interval taken from a hash of the target, so that many targets spread
//! over the interval instead of probing together; at most
//! [`MAX_IN_FLIGHT`] probes run at once. The first result of a new target
//! decides its state; after that it takes `fall` failures in a row to go
//! down and `rise` passes in a row to come back. Until its first result a
//! target counts as up.

pub mod probe;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use consensus::state::{Backend, ClusterState, HealthCheck, Protocol, VirtualService};
use tokio::sync::{watch, Semaphore};

/// The most probes in flight at once, over every target.
pub const MAX_IN_FLIGHT: usize = 256;

/// The address a check probes for a backend of a port of `protocol`: its
/// own port, or the check's; None when the check does not apply (a TCP or
/// HTTP check without a port of its own, on a UDP port).
pub fn target(check: &HealthCheck, protocol: Protocol, b: &Backend) -> Option<SocketAddr> {
    match check.probe.port() {
        Some(p) => Some(SocketAddr::new(b.address, p)),
        None if check.probe.protocol() == protocol => Some(SocketAddr::new(b.address, b.port)),
        None => None,
    }
}

/// Every target the committed state asks this director to probe.
pub fn targets(state: &ClusterState) -> HashSet<(HealthCheck, SocketAddr)> {
    let mut out = HashSet::new();
    for vs in state.services.values() {
        service_targets(vs, |check, t| {
            out.insert((check.clone(), t));
        });
    }
    out
}

/// The targets one service asks for, each given to `each` with its check.
fn service_targets(vs: &VirtualService, mut each: impl FnMut(&HealthCheck, SocketAddr)) {
    let Some(check) = vs.health.as_deref() else {
        return;
    };
    for p in &vs.ports {
        for b in &p.backends {
            if let Some(t) = target(check, p.protocol, b) {
                each(check, t);
            }
        }
    }
}

/// Whether `after` asks for the targets of `before`: every service that
/// changed between them asks for the same ones (a weight, a scheduler or
/// an owner changed, not a backend or a check). Only the changed services
/// are looked at.
pub fn same_targets(before: &ClusterState, after: &ClusterState) -> bool {
    let list = |vs: Option<&VirtualService>| {
        let mut out = Vec::new();
        if let Some(vs) = vs {
            service_targets(vs, |c, t| out.push((c.clone(), t)));
        }
        out
    };
    before
        .changed_services(after)
        .into_iter()
        .all(|(_, old, new)| list(old) == list(new))
}

/// The targets that are down, by check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Down(HashMap<HealthCheck, HashSet<SocketAddr>>);

impl Down {
    /// Whether `target` is down for `check`.
    pub fn contains(&self, check: &HealthCheck, target: SocketAddr) -> bool {
        self.0.get(check).is_some_and(|s| s.contains(&target))
    }

    /// Targets down.
    pub fn len(&self) -> usize {
        self.0.values().map(HashSet::len).sum()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `target` down (or not) for `check`.
    pub fn set(&mut self, check: &HealthCheck, target: SocketAddr, down: bool) {
        if down {
            self.0.entry(check.clone()).or_default().insert(target);
        } else if let Some(s) = self.0.get_mut(check) {
            s.remove(&target);
            if s.is_empty() {
                self.0.remove(check);
            }
        }
    }
}

/// What is known of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    /// Up, down, or not probed yet (None, counted as up).
    pub up: Option<bool>,
    /// Since when it is in that state.
    pub since: SystemTime,
    /// Results in a row against the state (failures while up, passes while
    /// down).
    pub streak: u32,
    /// The last probe's failure (None after a pass).
    pub last_error: Option<String>,
    /// When it was last probed.
    pub last_checked: Option<SystemTime>,
    /// How long the last probe took.
    pub last_duration: Duration,
}

impl TargetState {
    /// Not probed yet.
    pub fn new(now: SystemTime) -> Self {
        TargetState {
            up: None,
            since: now,
            streak: 0,
            last_error: None,
            last_checked: None,
            last_duration: Duration::ZERO,
        }
    }

    /// Takes one result in; true when whether it serves changed (not
    /// probed yet counts as serving). The first result decides; after it, `fall` failures in a row
    /// take an up target down and `rise` passes bring a down one back.
    pub fn record(
        &mut self,
        result: &Result<(), String>,
        rise: u32,
        fall: u32,
        now: SystemTime,
        took: Duration,
    ) -> bool {
        self.last_checked = Some(now);
        self.last_duration = took;
        let ok = result.is_ok();
        self.last_error = result.as_ref().err().cloned();
        let flip = match self.up {
            None => true,
            Some(up) if up == ok => {
                self.streak = 0;
                false
            }
            Some(_) => {
                self.streak += 1;
                self.streak >= if ok { rise } else { fall }
            }
        };
        if flip {
            let was_serving = self.up != Some(false);
            self.up = Some(ok);
            self.since = now;
            self.streak = 0;
            return was_serving != ok;
        }
        false
    }
}

/// Upper bounds of the probe-duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// Counters of the checker, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Probes that passed.
    pub passed: AtomicU64,
    /// Probes that failed.
    pub failed: AtomicU64,
    /// Changes between up and down.
    pub transitions: AtomicU64,
    /// Probes per duration bucket (the last: above every bound).
    pub buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of probe durations, microseconds.
    pub duration_us: AtomicU64,
}

/// The checker's table, shared with the data plane, status and metrics.
#[derive(Debug)]
pub struct Health {
    table: Mutex<Table>,
    down: watch::Sender<Arc<Down>>,
    /// Counters.
    pub stats: Stats,
}

#[derive(Debug, Default)]
struct Table {
    targets: HashMap<(HealthCheck, SocketAddr), TargetState>,
    down: Down,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            table: Mutex::new(Table::default()),
            down: watch::channel(Arc::new(Down::default())).0,
            stats: Stats::default(),
        }
    }
}

impl Health {
    /// The targets down now; changes with every change between up and down.
    pub fn down(&self) -> watch::Receiver<Arc<Down>> {
        self.down.subscribe()
    }

    /// The state of one target, if it is probed.
    pub fn state_of(&self, check: &HealthCheck, target: SocketAddr) -> Option<TargetState> {
        self.lock().targets.get(&(check.clone(), target)).cloned()
    }

    /// Every target with its state.
    pub fn report(&self) -> Vec<(HealthCheck, SocketAddr, TargetState)> {
        let t = self.lock();
        let mut out: Vec<_> = t
            .targets
            .iter()
            .map(|((c, a), s)| (c.clone(), *a, s.clone()))
            .collect();
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still
        // consistent (every update is one insert).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, key: &(HealthCheck, SocketAddr), result: Result<(), String>, took: Duration) {
        let s = &self.stats;
        match &result {
            Ok(()) => s.passed.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.failed.fetch_add(1, Ordering::Relaxed),
        };
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        s.duration_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let now = SystemTime::now();
        let mut t = self.lock();
        let Some(state) = t.targets.get_mut(key) else {
            return; // forgotten while probing
        };
        let before = state.up;
        let changed = state.record(&result, key.0.rise, key.0.fall, now, took);
        let up = state.up;
        if !changed {
            return;
        }
        let (check, target) = key;
        match (before, &result) {
            (_, Err(e)) => tracing::warn!(
                target = %target, check = check.probe.kind(), error = %e,
                "backend down"
            ),
            (Some(false), Ok(())) => tracing::info!(
                target = %target, check = check.probe.kind(),
                "backend up again"
            ),
            _ => {}
        }
        s.transitions.fetch_add(1, Ordering::Relaxed);
        t.down.set(check, *target, up == Some(false));
        let down = Arc::new(t.down.clone());
        drop(t);
        self.down.send_replace(down);
    }

    /// Makes the table hold exactly `want` (new targets not probed yet).
    fn track(&self, want: &HashSet<(HealthCheck, SocketAddr)>) {
        let now = SystemTime::now();
        let mut t = self.lock();
        let before = t.down.len();
        t.targets.retain(|k, _| want.contains(k));
        let kept: Vec<(HealthCheck, SocketAddr)> = t
            .down
            .0
            .iter()
            .flat_map(|(c, s)| s.iter().map(move |a| (c.clone(), *a)))
            .filter(|k| want.contains(k))
            .collect();
        let mut down = Down::default();
        for (c, a) in &kept {
            down.set(c, *a, true);
        }
        t.down = down;
        for k in want {
            if !t.targets.contains_key(k) {
                t.targets.insert(k.clone(), TargetState::new(now));
            }
        }
        if t.down.len() != before {
            let d = Arc::new(t.down.clone());
            drop(t);
            self.down.send_replace(d);
        }
    }
}

/// Runs the checker until `stop`: one probing task per target of the
/// committed state, started and stopped as the state changes.
pub async fn run(
    health: Arc<Health>,
    mut state: watch::Receiver<Arc<ClusterState>>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut running: HashMap<(HealthCheck, SocketAddr), tokio::task::JoinHandle<()>> =
        HashMap::new();
    // The services the running targets were taken from.
    let mut from: Option<Arc<ClusterState>> = None;
    loop {
        let now = state.borrow_and_update().clone();
        // An owner move, a lease or a weight leaves the targets as they
        // are; the next change is compared with this state.
        if from
            .as_ref()
            .is_some_and(|f| f.same_services(&now) || same_targets(f, &now))
        {
            from = Some(now);
        } else {
            let want = targets(&now);
            from = Some(now);
            running.retain(|k, task| {
                let keep = want.contains(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            health.track(&want);
            for k in want {
                if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(k) {
                    let key = slot.key().clone();
                    slot.insert(tokio::spawn(probe_loop(health.clone(), key, limit.clone())));
                }
            }
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

/// Where in its interval a target is first probed, from its start: a hash
/// of the target, so that many targets started together spread over the
/// interval.
fn phase(key: &(HealthCheck, SocketAddr), interval: Duration) -> Duration {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    let ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(h.finish() % ms)
}

async fn probe_loop(health: Arc<Health>, key: (HealthCheck, SocketAddr), limit: Arc<Semaphore>) {
    let interval = Duration::from_millis(u64::from(key.0.interval_ms.max(1)));
    let timeout = Duration::from_millis(u64::from(key.0.timeout_ms.max(1)));
    let start = tokio::time::Instant::now() + phase(&key, interval);
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let started = tokio::time::Instant::now();
        // Boxed: the probe's future (TLS and HTTP included) exists only
        // while probing, so ten thousand waiting targets stay small.
        let result = Box::pin(probe::run(&key.0.probe, key.1, timeout)).await;
        drop(permit);
        health.record(&key, result, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::domain::{OnFail, Probe};

    fn check() -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: None },
            interval_ms: 100,
            timeout_ms: 50,
            rise: 2,
            fall: 3,
            on_fail: OnFail::Weight0,
            fallback: None,
        }
    }

    #[test]
    fn the_first_result_decides_then_rise_and_fall_count() {
        let t0 = SystemTime::UNIX_EPOCH;
        let ok: Result<(), String> = Ok(());
        let bad: Result<(), String> = Err("connect: refused".into());
        let ms = Duration::from_millis(1);
        let mut s = TargetState::new(t0);
        // First result: up (no change to report: it was counted as up).
        assert!(!s.record(&ok, 2, 3, t0, ms));
        assert_eq!(s.up, Some(true));
        // Two failures: still up; a pass resets the count.
        assert!(!s.record(&bad, 2, 3, t0, ms));
        assert!(!s.record(&bad, 2, 3, t0, ms));
        assert!(!s.record(&ok, 2, 3, t0, ms));
        assert!(!s.record(&bad, 2, 3, t0, ms));
        assert!(!s.record(&bad, 2, 3, t0, ms));
        let t1 = t0 + Duration::from_secs(1);
        assert!(s.record(&bad, 2, 3, t1, ms));
        assert_eq!((s.up, s.since), (Some(false), t1));
        assert_eq!(s.last_error.as_deref(), Some("connect: refused"));
        // Back after two passes in a row.
        assert!(!s.record(&ok, 2, 3, t1, ms));
        assert!(s.record(&ok, 2, 3, t1, ms));
        assert_eq!((s.up, s.last_error.as_deref()), (Some(true), None));
        // A new target whose first result fails is down at once.
        let mut n = TargetState::new(t0);
        assert!(n.record(&bad, 2, 3, t0, ms));
        assert_eq!(n.up, Some(false));
    }

    #[test]
    fn targets_follow_the_check_port_and_protocol() {
        let b = Backend {
            address: "10.0.0.1".parse().unwrap(),
            port: 30080,
            weight: 1,
        };
        let c = check();
        assert_eq!(
            target(&c, Protocol::Tcp, &b),
            Some("10.0.0.1:30080".parse().unwrap())
        );
        assert_eq!(target(&c, Protocol::Udp, &b), None);
        let kube = HealthCheck {
            probe: Probe::Http {
                port: Some(10256),
                path: "/healthz".into(),
                host: None,
                expect: vec![],
                tls: false,
            },
            ..c
        };
        assert_eq!(
            target(&kube, Protocol::Udp, &b),
            Some("10.0.0.1:10256".parse().unwrap())
        );
    }

    /// A weight leaves the targets as they are; a backend, a check or a
    /// service removed changes them; `same_targets` never says "the same"
    /// when `targets` differ.
    #[test]
    fn same_targets_agrees_with_the_whole_list() {
        use consensus::state::ServicePort;
        let service = |port: u16, weight: u32| {
            let backend = Backend {
                address: "10.0.0.1".parse().unwrap(),
                port,
                weight,
            };
            let ports = vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                backends: vec![backend],
            }];
            Arc::new(VirtualService {
                health: Some(Box::new(check())),
                ..VirtualService::new("10.10.0.200".parse().unwrap(), ports)
            })
        };
        let mut before = ClusterState::default();
        before.services.insert("a".into(), service(30080, 1));
        before.services.insert("b".into(), service(30081, 1));
        let with = |name: &str, vs: Option<Arc<VirtualService>>| {
            let mut s = before.clone();
            match vs {
                Some(vs) => s.services.insert(name.into(), vs),
                None => s.services.remove(name),
            };
            s
        };
        let mut unchecked = (*service(30080, 1)).clone();
        unchecked.health = None;
        for (after, same) in [
            (with("a", Some(service(30080, 7))), true),
            (with("a", Some(service(30082, 1))), false),
            (with("a", Some(Arc::new(unchecked))), false),
            (with("b", None), false),
        ] {
            assert_eq!(same_targets(&before, &after), same);
            assert_eq!(targets(&before) == targets(&after), same);
        }
        // A new service whose target is already probed for "a": the list
        // is computed again (and comes out the same).
        let c = with("c", Some(service(30080, 1)));
        assert!(!same_targets(&before, &c));
        assert_eq!(targets(&before), targets(&c));
    }

    #[tokio::test]
    async fn a_dead_backend_goes_down_and_comes_back() {
        // A listener we close and reopen on the same port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let mut down = health.down();
        let key = (
            HealthCheck {
                rise: 1,
                fall: 1,
                ..check()
            },
            addr,
        );
        health.track(&[key.clone()].into());
        let h = health.clone();
        let limit = Arc::new(Semaphore::new(4));
        let task = tokio::spawn(probe_loop(h, key.clone(), limit));
        // Up: nothing is down.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(health.state_of(&key.0, addr).unwrap().up, Some(true));
        drop(l);
        tokio::time::timeout(Duration::from_secs(2), down.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(down.borrow_and_update().contains(&key.0, addr));
        let _l = std::net::TcpListener::bind(addr).unwrap();
        tokio::time::timeout(Duration::from_secs(2), down.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(down.borrow().is_empty());
        // Forgetting the target forgets its state.
        health.track(&HashSet::new());
        assert!(health.report().is_empty());
        task.abort();
    }
}
