//! One shape for every reconciler, and one driver that runs them.
//!
//! A reconciler manages one kind of kernel object. Each pass is
//! observe -> desired (pure) -> plan (pure; operations as data, in a
//! deterministic order) -> apply. Observing is the expensive part (a dump
//! of the kernel's table), so the driver keeps what it last made the kernel
//! hold and plans against that; it observes for real at start, every resync
//! interval and after any failed operation. A resync that finds the kernel
//! different from what the driver believed has repaired a change made
//! behind its back: that is logged and counted.
//!
//! The driver wakes on a committed-state change, a configuration reload, a
//! kick of its own ([`Handle::kick`]: a local input such as a drain changed), the reconciler's own deadline (a lease
//! about to lapse), the resync timer and the retry backoff; it reports an
//! error once per distinct error and once when it clears, and on shutdown
//! gives the reconciler its last word ([`Reconciler::stop`]).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::ClusterState;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{watch, Notify};

/// A failed kernel operation or observation: which one, on what, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} {target}: {cause}")]
pub struct OpError {
    /// What was being done (`adding service`, `listing local routes`).
    pub operation: String,
    /// What it was done to (`TCP 10.10.0.200:80`).
    pub target: String,
    /// The kernel's or the tool's error.
    pub cause: String,
}

impl OpError {
    /// An error of `operation` on `target`.
    pub fn new(
        operation: impl Into<String>,
        target: impl fmt::Display,
        cause: impl fmt::Display,
    ) -> OpError {
        OpError {
            operation: operation.into(),
            target: target.to_string(),
            cause: cause.to_string(),
        }
    }
}

/// What a reconciler wants the kernel to hold now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<S> {
    /// The kernel state of the objects it manages.
    pub state: S,
    /// When the wanted state changes by itself (a lease running out), if
    /// it does: the driver wakes then.
    pub changes_in: Option<Duration>,
}

impl<S> Desired<S> {
    /// A wanted state that changes only with the inputs.
    pub fn steady(state: S) -> Self {
        Desired {
            state,
            changes_in: None,
        }
    }
}

/// One kind of kernel object, managed by observe -> desired -> plan -> apply.
pub trait Reconciler: Send + 'static {
    /// The state of the managed objects, as observed or wanted.
    type State: Clone + Send + Sync + fmt::Debug;
    /// One kernel operation.
    type Op: fmt::Debug + Send + Sync;

    /// Its name in logs, status and metrics (`ipvs`, `routes`, `nft`).
    fn name(&self) -> &'static str;

    /// What the kernel should hold now, from the committed state and local
    /// inputs. Reads its inputs and calls a pure function of them.
    fn desired(&mut self) -> Desired<Self::State>;

    /// The operations that turn `observed` into `desired`. Pure; applying
    /// them and planning again gives nothing.
    fn plan(&self, desired: &Self::State, observed: &Self::State) -> Vec<Self::Op>;

    /// Whether the inputs of [`Reconciler::desired`] are the very ones of
    /// its last call (default: never assumed). When they are, the last
    /// pass succeeded and no resync is due, the driver skips the pass: its
    /// plan could only be empty.
    fn unchanged(&mut self) -> bool {
        false
    }

    /// A pass over what changed only. `known` is what the kernel holds,
    /// which is what the last pass wanted (its inputs are the
    /// reconciler's to remember). Returns the operations for what the
    /// inputs changed since, with `known` brought to the new wanted state
    /// as if they were applied; None to plan the whole state instead (the
    /// default). Called only between resyncs, after a successful pass
    /// whose wanted state did not change by itself; only a reconciler
    /// whose wanted state never changes by itself (no `changes_in`) may
    /// answer, since the pass it stands for has no deadline.
    fn plan_changes(&mut self, known: &mut Self::State) -> Option<Vec<Self::Op>> {
        let _ = known;
        None
    }

    /// Whether a resync may be abandoned while it reads the kernel when a
    /// newly committed state with other services arrives, so that the
    /// change goes first (the resync follows at once; it gives way once).
    /// For a reconciler whose read is long (the IPVS table of 10,000
    /// services), whose wanted state follows the services, and whose read
    /// may be dropped at any point (default: no).
    fn resync_gives_way(&self) -> bool {
        false
    }

    /// Reads the managed objects from the kernel.
    fn observe(&mut self) -> impl Future<Output = Result<Self::State, OpError>> + Send;

    /// Carries `ops` out in order; stops at the first failure.
    fn apply(&mut self, ops: Vec<Self::Op>) -> impl Future<Output = Result<(), OpError>> + Send;

    /// The last pass, when the daemon stops (default: nothing).
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What wakes the reconcilers besides their timers.
#[derive(Debug, Clone)]
pub struct Wakeups {
    /// Every newly applied committed state.
    pub state: watch::Receiver<Arc<ClusterState>>,
    /// Every configuration reload.
    pub config: watch::Receiver<u64>,
    /// Set once, at shutdown.
    pub stop: watch::Receiver<bool>,
}

/// Upper bounds of the pass-duration histogram, seconds: a pass with
/// nothing to do takes well under a millisecond; a full IPVS resync of
/// thousands of services takes seconds.
pub const PASS_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Counters and the last result of one reconciler, for status and metrics.
#[derive(Debug)]
pub struct Stats {
    /// Passes done.
    pub passes: AtomicU64,
    /// Kernel operations applied.
    pub operations: AtomicU64,
    /// Failed passes.
    pub errors: AtomicU64,
    /// Full observations of the kernel.
    pub resyncs: AtomicU64,
    /// Resyncs that found (and repaired) a change made behind its back.
    pub drift_repairs: AtomicU64,
    /// Duration of the last pass, in microseconds.
    pub last_pass_us: AtomicU64,
    /// Durations of every pass, seconds ([`PASS_BUCKETS`]).
    pub pass_seconds: Histogram,
    /// The error of the last pass, if it failed.
    pub last_error: Mutex<Option<String>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            passes: AtomicU64::default(),
            operations: AtomicU64::default(),
            errors: AtomicU64::default(),
            resyncs: AtomicU64::default(),
            drift_repairs: AtomicU64::default(),
            last_pass_us: AtomicU64::default(),
            pass_seconds: Histogram::new(PASS_BUCKETS),
            last_error: Mutex::default(),
        }
    }
}

impl Stats {
    /// The last error, if the last pass failed.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// How a running reconciler is seen from outside.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Its name.
    pub name: &'static str,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Passes done and whether the last one succeeded; a caller that needs
    /// a change applied waits for a later successful pass.
    pub passes: watch::Receiver<Pass>,
    /// Wakes this reconciler (its own: a kick wakes exactly it).
    kick: Arc<Notify>,
}

/// The count of passes and the outcome of the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Passes started.
    pub started: u64,
    /// Passes done.
    pub count: u64,
    /// Whether the last one left the kernel as wanted.
    pub ok: bool,
}

impl Handle {
    /// Wakes the reconciler for a pass now (a local input changed).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Kicks the reconciler and waits until a pass that started after this
    /// call has succeeded, at most `timeout`; false if none did.
    pub async fn applied(&self, timeout: Duration) -> bool {
        let kick = &self.kick;
        let mut passes = self.passes.clone();
        // A pass already started may have read its inputs before the
        // change: the first sure to see it is the next one to start.
        let need = passes.borrow_and_update().started + 1;
        kick.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let p = *passes.borrow_and_update();
            if p.count >= need && p.ok {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero()
                || tokio::time::timeout(left, passes.changed())
                    .await
                    .map_or(true, |r| r.is_err())
            {
                return false;
            }
            kick.notify_one();
        }
    }
}

/// Retry waits after a failed pass: 100 ms doubling to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts `r` on the current runtime; it runs until `wake.stop` is set.
pub fn spawn<R: Reconciler>(
    r: R,
    wake: Wakeups,
    resync: Duration,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(Stats::default());
    let (tx, rx) = watch::channel(Pass::default());
    let kick = Arc::new(Notify::new());
    let handle = Handle {
        name: r.name(),
        stats: stats.clone(),
        passes: rx,
        kick: kick.clone(),
    };
    let task = tokio::spawn(drive(r, wake, kick, resync, stats, tx));
    (handle, task)
}

/// A pass at least this long is logged (debug): what holds a change up.
const SLOW_PASS: Duration = Duration::from_millis(100);

/// The driver loop of one reconciler.
async fn drive<R: Reconciler>(
    mut r: R,
    mut wake: Wakeups,
    kick: Arc<Notify>,
    resync: Duration,
    stats: Arc<Stats>,
    passes: watch::Sender<Pass>,
) {
    let name = r.name();
    // What the kernel holds as far as the driver knows; None: observe.
    let mut known: Option<R::State> = None;
    let mut last_observed = tokio::time::Instant::now();
    let mut reported: Option<String> = None;
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    // Whether the last desired state depends on nothing but its inputs
    // (no time at which it changes by itself).
    let mut steady = false;
    // When the last wanted state changes by itself (kept across a pass
    // that failed before computing one).
    let mut deadline: Option<tokio::time::Instant> = None;
    // A resync gave way to a commit: the next pass applies the change,
    // and the resync comes after it.
    let mut deferred = false;
    // Whether the resync now due has given way once already (it does not
    // again: commits that never stop must not keep the kernel unread).
    let mut gave_way = false;
    loop {
        let started = Instant::now();
        passes.send_modify(|p| p.started += 1);
        let overdue = last_observed.elapsed() >= resync;
        let deferred_now = std::mem::take(&mut deferred);
        let due = known.is_none() || (overdue && !deferred_now);
        if !due && !failing && steady && r.unchanged() {
            // Nothing to do: a pass that finds the kernel as wanted.
            stats.passes.fetch_add(1, Ordering::Relaxed);
            passes.send_modify(|p| {
                p.count += 1;
                p.ok = true;
            });
            let wait = resync.saturating_sub(last_observed.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.state.changed() => {}
                _ = wake.config.changed() => {}
                _ = kick.notified() => {}
                _ = wake.stop.changed() => break,
            }
            continue;
        }
        let changes = match known.as_mut() {
            Some(k) if !due && !failing && steady => r.plan_changes(k),
            _ => None,
        };
        let outcome = match changes {
            Some(ops) => {
                deadline = None;
                apply(&mut r, ops, &mut known, false, &stats).await
            }
            None => {
                // A resync gives way, once, to a commit that changes the
                // services.
                let give_way =
                    (due && known.is_some() && !failing && !gave_way && r.resync_gives_way())
                        .then_some(&mut wake.state);
                match pass(&mut r, &mut known, due, give_way, &stats).await {
                    Passed::Ran(outcome, changes_in) => {
                        if let Some(c) = changes_in {
                            steady = c.is_none();
                            deadline = c.map(|d| tokio::time::Instant::now() + d);
                        }
                        outcome
                    }
                    Passed::GaveWay => {
                        tracing::debug!(
                            reconciler = name,
                            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "a resync gave way to a commit"
                        );
                        // Not a pass: nothing was computed or applied.
                        passes.send_modify(|p| p.started -= 1);
                        gave_way = true;
                        deferred = true;
                        continue;
                    }
                }
            }
        };
        if due && outcome.is_ok() {
            last_observed = tokio::time::Instant::now();
            gave_way = false;
        }
        stats.passes.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        stats.last_pass_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        stats.pass_seconds.observe(took.as_secs_f64());
        if took >= SLOW_PASS {
            tracing::debug!(
                reconciler = name,
                ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                observed = due,
                "a long pass"
            );
        }
        match &outcome {
            Ok(()) => {
                if let Some(e) = reported.take() {
                    tracing::info!(reconciler = name, previous_error = %e, "reconciler recovered");
                }
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = None;
                }
                failing = false;
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let text = e.to_string();
                if reported.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        reconciler = name,
                        operation = %e.operation,
                        target = %e.target,
                        error = %e.cause,
                        "reconcile failed; retrying"
                    );
                    reported = Some(text.clone());
                }
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(text);
                }
                if failing {
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                failing = true;
            }
        }
        passes.send_modify(|p| {
            p.count += 1;
            p.ok = outcome.is_ok();
        });
        let mut wait = resync.saturating_sub(last_observed.elapsed());
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(tokio::time::Instant::now()));
        }
        if failing {
            wait = wait.min(backoff);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.state.changed() => {}
            _ = wake.config.changed() => {}
            _ = kick.notified() => {}
            _ = wake.stop.changed() => break,
        }
    }
    r.stop().await;
}

/// Applies `ops`; `known` is already what they make the kernel hold, and
/// is forgotten if they fail (part of them may have been applied: the next
/// pass looks again).
async fn apply<R: Reconciler>(
    r: &mut R,
    ops: Vec<R::Op>,
    known: &mut Option<R::State>,
    observed: bool,
    stats: &Stats,
) -> Result<(), OpError> {
    if ops.is_empty() {
        return Ok(());
    }
    let n = ops.len() as u64;
    let first = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| format!("{:?}", ops.first()))
        .unwrap_or_default();
    match r.apply(ops).await {
        Ok(()) => {
            stats.operations.fetch_add(n, Ordering::Relaxed);
            tracing::debug!(
                reconciler = r.name(),
                operations = n,
                observed,
                first = %first,
                "plan applied"
            );
            Ok(())
        }
        Err(e) => {
            *known = None;
            Err(e)
        }
    }
}

/// What a pass of the whole state came to.
enum Passed {
    /// It ran: its outcome, and, when it got as far as the wanted state,
    /// when that changes by itself.
    Ran(Result<(), OpError>, Option<Option<Duration>>),
    /// It was a resync, and a committed state arrived while it read the
    /// kernel: nothing was computed or applied.
    GaveWay,
}

/// One pass: observe when `observe` (giving way to a commit on
/// `give_way`), compute the wanted state, plan against what is observed or
/// known, apply, and remember what the kernel now holds. The wanted state
/// is computed after the read: it is the newest, and a resync that gives
/// way has not touched the reconciler's record of its inputs.
async fn pass<R: Reconciler>(
    r: &mut R,
    known: &mut Option<R::State>,
    observe: bool,
    give_way: Option<&mut watch::Receiver<Arc<ClusterState>>>,
    stats: &Stats,
) -> Passed {
    match base(r, known, observe, give_way, stats).await {
        Some(Ok(base)) => {
            let desired = r.desired();
            let changes_in = desired.changes_in;
            let ops = r.plan(&desired.state, &base);
            let outcome = if ops.is_empty() {
                *known = Some(base);
                Ok(())
            } else {
                // The desired state moves into `known` once applied: at
                // rest the driver keeps one table, not two.
                *known = Some(desired.state);
                apply(r, ops, known, observe, stats).await
            };
            Passed::Ran(outcome, Some(changes_in))
        }
        Some(Err(e)) => Passed::Ran(Err(e), None),
        None => Passed::GaveWay,
    }
}

/// What a pass plans from: the kernel observed (a resync, repairing and
/// reporting what changed behind the driver's back) or what it is known
/// to hold; None if the resync gave way to a commit.
async fn base<R: Reconciler>(
    r: &mut R,
    known: &mut Option<R::State>,
    observe: bool,
    give_way: Option<&mut watch::Receiver<Arc<ClusterState>>>,
    stats: &Stats,
) -> Option<Result<R::State, OpError>> {
    let base = if observe {
        let read = match give_way {
            Some(commits) => {
                let before = commits.borrow_and_update().clone();
                let read = r.observe();
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        read = &mut read => break read,
                        // A closed channel (shutdown) is no commit to give
                        // way to.
                        Ok(()) = commits.changed() => {
                            // An owner move, a lease: the services are the
                            // same, and the read goes on.
                            if !before.same_services(&commits.borrow_and_update()) {
                                return None;
                            }
                        }
                    }
                }
            }
            None => r.observe().await,
        };
        let observed = match read {
            Ok(o) => o,
            Err(e) => {
                *known = None;
                return Some(Err(e));
            }
        };
        stats.resyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(believed) = known.as_ref() {
            let drift = r.plan(believed, &observed);
            if !drift.is_empty() {
                stats.drift_repairs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reconciler = r.name(),
                    changes = drift.len(),
                    first = ?drift.first(),
                    "the kernel was changed behind the director's back; repairing"
                );
            }
        }
        observed
    } else {
        match known.take() {
            Some(k) => k,
            None => match r.observe().await {
                Ok(o) => o,
                Err(e) => return Some(Err(e)),
            },
        }
    };
    Some(Ok(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A kernel table of numbers, for exercising the driver.
    #[derive(Debug, Default)]
    struct Numbers {
        want: Arc<Mutex<BTreeSet<u32>>>,
        kernel: Arc<Mutex<BTreeSet<u32>>>,
        observed: Arc<AtomicU64>,
        fail_once: Arc<Mutex<bool>>,
        /// What `unchanged` answers, and how often `desired` ran.
        same: Arc<std::sync::atomic::AtomicBool>,
        computed: Arc<AtomicU64>,
        /// Whether `plan_changes` answers, and how often it did.
        partial: Arc<std::sync::atomic::AtomicBool>,
        partials: Arc<AtomicU64>,
        /// Whether a read takes ten seconds, and gives way to a commit.
        slow: Arc<std::sync::atomic::AtomicBool>,
    }

    #[derive(Debug, PartialEq)]
    enum Op {
        Add(u32),
        Del(u32),
    }

    impl Reconciler for Numbers {
        type State = BTreeSet<u32>;
        type Op = Op;
        fn name(&self) -> &'static str {
            "numbers"
        }
        fn desired(&mut self) -> Desired<BTreeSet<u32>> {
            self.computed.fetch_add(1, Ordering::SeqCst);
            Desired::steady(self.want.lock().unwrap().clone())
        }
        fn unchanged(&mut self) -> bool {
            self.same.load(Ordering::SeqCst)
        }
        fn plan_changes(&mut self, known: &mut BTreeSet<u32>) -> Option<Vec<Op>> {
            if !self.partial.load(Ordering::SeqCst) {
                return None;
            }
            self.partials.fetch_add(1, Ordering::SeqCst);
            let want = self.want.lock().unwrap().clone();
            let ops = self.plan(&want, known);
            *known = want;
            Some(ops)
        }
        fn plan(&self, d: &BTreeSet<u32>, o: &BTreeSet<u32>) -> Vec<Op> {
            let mut ops: Vec<Op> = o.difference(d).map(|n| Op::Del(*n)).collect();
            ops.extend(d.difference(o).map(|n| Op::Add(*n)));
            ops
        }
        fn resync_gives_way(&self) -> bool {
            self.slow.load(Ordering::SeqCst)
        }
        async fn observe(&mut self) -> Result<BTreeSet<u32>, OpError> {
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            self.observed.fetch_add(1, Ordering::SeqCst);
            Ok(self.kernel.lock().unwrap().clone())
        }
        async fn apply(&mut self, ops: Vec<Op>) -> Result<(), OpError> {
            let mut fail = self.fail_once.lock().unwrap();
            if *fail {
                *fail = false;
                return Err(OpError::new("adding", "a number", "EBUSY"));
            }
            let mut k = self.kernel.lock().unwrap();
            for op in ops {
                match op {
                    Op::Add(n) => k.insert(n),
                    Op::Del(n) => k.remove(&n),
                };
            }
            Ok(())
        }
    }

    /// Changes are applied without observing; a resync observes and
    /// repairs drift; a failure makes the next pass observe.
    #[tokio::test(start_paused = true)]
    async fn the_driver_plans_against_what_it_knows_and_resyncs() {
        let want = Arc::new(Mutex::new(BTreeSet::from([1, 2])));
        let kernel = Arc::new(Mutex::new(BTreeSet::from([2, 3])));
        let observed = Arc::new(AtomicU64::new(0));
        let fail_once = Arc::new(Mutex::new(false));
        let (handle, task, state_tx, stop_tx, _config) = start(Numbers {
            want: want.clone(),
            kernel: kernel.clone(),
            observed: observed.clone(),
            fail_once: fail_once.clone(),
            ..Default::default()
        });
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2]));
        assert_eq!(observed.load(Ordering::SeqCst), 1);
        // A change of the wanted state: applied without a dump.
        want.lock().unwrap().insert(7);
        state_tx.send_replace(Arc::new(ClusterState::default()));
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 7]));
        assert_eq!(observed.load(Ordering::SeqCst), 1);
        assert_eq!(handle.stats.operations.load(Ordering::SeqCst), 2 + 1);
        // Behind its back: repaired at the next resync, and counted.
        kernel.lock().unwrap().remove(&2);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 7]));
        assert_eq!(handle.stats.drift_repairs.load(Ordering::SeqCst), 1);
        // A failed apply: reported, and the next pass observes again.
        let before = observed.load(Ordering::SeqCst);
        *fail_once.lock().unwrap() = true;
        want.lock().unwrap().insert(8);
        handle.kick();
        assert!(handle.applied(Duration::from_secs(10)).await);
        assert_eq!(handle.stats.errors.load(Ordering::SeqCst), 1);
        assert!(observed.load(Ordering::SeqCst) > before);
        assert!(kernel.lock().unwrap().contains(&8));
        assert_eq!(handle.stats.error(), None);
        stop_tx.send_replace(true);
        task.await.unwrap();
    }

    /// Unchanged inputs skip the pass (nothing computed, the pass counts
    /// as done); a due resync still observes and repairs; changed inputs
    /// are applied.
    #[tokio::test(start_paused = true)]
    async fn a_pass_with_unchanged_inputs_is_skipped_but_not_a_resync() {
        let want = Arc::new(Mutex::new(BTreeSet::from([1])));
        let kernel = Arc::new(Mutex::new(BTreeSet::new()));
        let same = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let computed = Arc::new(AtomicU64::new(0));
        let (handle, task, _state_tx, stop_tx, _config) = start(Numbers {
            want: want.clone(),
            kernel: kernel.clone(),
            same: same.clone(),
            computed: computed.clone(),
            ..Default::default()
        });
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1]));
        same.store(true, Ordering::SeqCst);
        let before = computed.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert!(handle.applied(Duration::from_secs(1)).await);
        }
        assert_eq!(computed.load(Ordering::SeqCst), before);
        // Behind its back, inputs unchanged: the resync still repairs.
        kernel.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1]));
        // Changed inputs: computed and applied.
        same.store(false, Ordering::SeqCst);
        want.lock().unwrap().insert(2);
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2]));
        stop_tx.send_replace(true);
        task.await.unwrap();
    }

    /// A running test reconciler: its handle and task, and the senders
    /// that drive it.
    type Started = (
        Handle,
        tokio::task::JoinHandle<()>,
        watch::Sender<Arc<ClusterState>>,
        watch::Sender<bool>,
        watch::Sender<u64>,
    );

    /// Runs `n` with a resync every 30 s; its handle and task, and the
    /// senders of committed states, of the stop and of reloads (kept, or
    /// the driver would see the reloads' channel closed).
    fn start(n: Numbers) -> Started {
        let (state_tx, state) = watch::channel(Arc::new(ClusterState::default()));
        let (config_tx, config) = watch::channel(0);
        let (stop_tx, stop) = watch::channel(false);
        let (handle, task) = spawn(
            n,
            Wakeups {
                state,
                config,
                stop,
            },
            Duration::from_secs(30),
        );
        (handle, task, state_tx, stop_tx, config_tx)
    }

    /// A state with one service named `name`.
    fn with_service(name: &str) -> ClusterState {
        let mut s = ClusterState::default();
        let vs = consensus::state::VirtualService::new("10.10.0.200".parse().unwrap(), Vec::new());
        s.services.insert(name.into(), Arc::new(vs));
        s
    }

    /// A reconciler that plans the changes only: used between resyncs,
    /// not at a resync nor after a failure (those observe and plan the
    /// whole state).
    #[tokio::test(start_paused = true)]
    async fn changes_are_planned_alone_between_resyncs() {
        let want = Arc::new(Mutex::new(BTreeSet::from([1])));
        let kernel = Arc::new(Mutex::new(BTreeSet::new()));
        let observed = Arc::new(AtomicU64::new(0));
        let fail_once = Arc::new(Mutex::new(false));
        let computed = Arc::new(AtomicU64::new(0));
        let partial = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let partials = Arc::new(AtomicU64::new(0));
        let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (handle, task, state_tx, stop_tx, _config) = start(Numbers {
            want: want.clone(),
            kernel: kernel.clone(),
            observed: observed.clone(),
            fail_once: fail_once.clone(),
            computed: computed.clone(),
            partial,
            partials: partials.clone(),
            slow: slow.clone(),
            ..Default::default()
        });
        // The first pass observes and plans the whole state.
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        // A change: the changes alone.
        want.lock().unwrap().insert(2);
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2]));
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert!(partials.load(Ordering::SeqCst) >= 1);
        // A failure: forgotten, then observed and planned whole.
        *fail_once.lock().unwrap() = true;
        want.lock().unwrap().insert(3);
        let seen = observed.load(Ordering::SeqCst);
        assert!(handle.applied(Duration::from_secs(10)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 3]));
        assert!(observed.load(Ordering::SeqCst) > seen);
        assert_eq!(computed.load(Ordering::SeqCst), 2);
        // A resync observes and plans whole; behind its back is repaired.
        kernel.lock().unwrap().remove(&1);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(handle.applied(Duration::from_secs(1)).await);
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 3]));
        assert_eq!(computed.load(Ordering::SeqCst), 3);
        // A slow resync: a commit of the same services does not stop it
        // (the change waits for it) ...
        slow.store(true, Ordering::SeqCst);
        let reads = observed.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(31)).await;
        want.lock().unwrap().insert(4);
        state_tx.send_replace(Arc::new(ClusterState::default()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 3]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 3, 4]));
        assert_eq!(observed.load(Ordering::SeqCst), reads + 1);
        // ... one with other services does, once: that change is applied
        // at once, the resync right after; a second one waits for it.
        let reads = observed.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(31)).await;
        want.lock().unwrap().insert(5);
        state_tx.send_replace(Arc::new(with_service("a")));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*kernel.lock().unwrap(), BTreeSet::from([1, 2, 3, 4, 5]));
        assert_eq!(observed.load(Ordering::SeqCst), reads);
        want.lock().unwrap().insert(6);
        state_tx.send_replace(Arc::new(with_service("b")));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!kernel.lock().unwrap().contains(&6));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(observed.load(Ordering::SeqCst), reads + 1);
        assert!(kernel.lock().unwrap().contains(&6));
        assert_eq!(handle.stats.error(), None);
        // Every pass that started was done: none is left counted.
        let p = *handle.passes.borrow();
        assert_eq!(p.started, p.count);
        stop_tx.send_replace(true);
        task.await.unwrap();
    }
}
