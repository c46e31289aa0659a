//! The leader's writes to the API server: each Service's
//! `status.loadBalancer.ingress`, the finalizer that holds a deleted
//! Service until its VIP is withdrawn and released, and Events. Only the
//! Raft leader writes; every write is made only when the object differs
//! from what it should be, and a failed write is tried again on the next
//! round, never blocking the leader's loop or the data path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use consensus::domain::Forwarding;
use consensus::state::ClusterState;
use consensus::Node;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Api;
use serde_json::json;
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

use super::translate::{state_name, uid_of, Ours};
use super::Source;
use crate::leader::Decisions;

/// The finalizer on every Service director serves.
pub const FINALIZER: &str = "director.io/load-balancer-cleanup";

/// Written with the finalizer: the class of the director group that added
/// it, so that a group removes only its own finalizer from Services that
/// stopped being its.
pub const CLASS_ANNOTATION: &str = "director.io/finalizer-class";

/// The `reportingController` of director's Events.
pub const CONTROLLER: &str = "director.io/ipvs-controller";

/// How long one API write may take before it is abandoned (and retried on
/// the next round).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the writer looks again without a change (retries).
const ROUND: Duration = Duration::from_secs(5);

/// How soon it looks again when a round left writes for the next.
const AGAIN: Duration = Duration::from_millis(200);

/// A Warning's identity: (Service UID, reason, note).
type EventKey = (String, &'static str, String);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes the Events the rounds queue, [`IN_FLIGHT`] at a time.
async fn publish_events(
    recorder: Recorder,
    mut queue: mpsc::UnboundedReceiver<EventJob>,
    published: Arc<Mutex<BTreeSet<EventKey>>>,
) {
    let mut last_error: Option<String> = None;
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let jobs: Vec<_> = batch
            .drain(..)
            .map(|EventJob { key, ev, regarding }| {
                let recorder = recorder.clone();
                async move { (key, timed(recorder.publish(&ev, &regarding)).await) }
            })
            .collect();
        let results: Vec<_> = futures_util::stream::iter(jobs)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (key, result) in results {
            match result {
                Ok(()) => {
                    if last_error.take().is_some() {
                        tracing::info!("Kubernetes Events are published again");
                    }
                }
                Err(e) => {
                    // A Warning is queued again by the next round.
                    if let Some(key) = key {
                        locked(&published).remove(&key);
                    }
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "an Event was not published");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}

/// One ingress entry: the VIP and its ipMode.
type Ingress = Vec<(String, &'static str)>;

/// What the writer remembers between rounds.
#[derive(Debug)]
struct Memory {
    /// Per Service UID: the ingress last written and the resourceVersion
    /// the Service had then (skip rewriting until the watch shows a newer
    /// object).
    written: BTreeMap<String, (Ingress, Option<String>)>,
    /// Warnings published or on their way: (UID, reason, note). A Warning
    /// whose publishing failed leaves the set and is queued again.
    published: Arc<Mutex<BTreeSet<EventKey>>>,
    /// Where Events go: the Event task publishes them beside the rounds,
    /// so that statuses never wait for Events.
    events: mpsc::UnboundedSender<EventJob>,
    /// The state the allocation and owner Events were last computed from.
    seen: Option<Arc<ClusterState>>,
    /// The last error of each kind of write, logged once.
    errors: BTreeMap<&'static str, String>,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the writer until `stop`; it writes only while this director leads.
pub async fn run(
    node: Arc<Node>,
    source: Arc<Source>,
    instance: String,
    mut decisions: watch::Receiver<Arc<Decisions>>,
    mut stop: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        source.client(),
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(instance),
        },
    );
    let mut changes = node.watch();
    let mut kube = source.subscribe();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut memory = Memory {
        written: BTreeMap::new(),
        published: Arc::default(),
        events: tx,
        seen: None,
        errors: BTreeMap::new(),
    };
    let events = tokio::spawn(publish_events(recorder, rx, memory.published.clone()));
    let _events = AbortOnDrop(events);
    let mut more = false;
    loop {
        let wait = if more { AGAIN } else { ROUND };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = kube.changed() => {}
            _ = decisions.changed() => {}
            _ = stop.changed() => return,
        }
        if node.leader() != Some(node.id()) {
            // A new leader starts from what it sees, not from old events.
            memory.seen = None;
            continue;
        }
        if !source.ready() {
            continue;
        }
        let d = decisions.borrow_and_update().clone();
        let state = node.state();
        more = round(&source, &state, &d, &mut memory).await;
    }
}

/// The ingress a Service should show: its VIPs in the order of its
/// families, `ipMode: Proxy` for nat (kube-proxy leaves the address to the
/// load balancer), `VIP` for direct routing (the nodes accept it).
fn ingress(state: &ClusterState, ours: &Ours) -> Ingress {
    ours.families
        .iter()
        .filter_map(|v6| state.services.get(&state_name(&ours.uid, *v6)))
        .map(|s| {
            let mode = match s.forwarding {
                Forwarding::Dr => "VIP",
                Forwarding::Nat => "Proxy",
            };
            (s.vip.to_string(), mode)
        })
        .collect()
}

/// The ingress a Service shows now.
fn shown(svc: &Service) -> Ingress {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let ip = i.ip.clone()?;
            let mode = match i.ip_mode.as_deref() {
                Some("Proxy") => "Proxy",
                _ => "VIP",
            };
            Some((ip, mode))
        })
        .collect()
}

fn reference(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..Default::default()
    }
}

fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Whether the state still holds a virtual service of Service `uid`.
fn in_state(state: &ClusterState, uid: &str) -> bool {
    state.services.contains_key(&state_name(uid, false))
        || state.services.contains_key(&state_name(uid, true))
}

/// Finalizer writes per round (the rest wait for the next round).
const METAS_PER_ROUND: usize = 64;

/// Writes in flight at once.
const IN_FLIGHT: usize = 16;

/// One write the round decided on.
enum Job {
    /// `status.loadBalancer.ingress` of a Service.
    Status {
        uid: String,
        name: String,
        api: Api<Service>,
        want: Ingress,
        rv: Option<String>,
    },
    /// A merge patch of a Service's metadata (the finalizer), guarded by
    /// the Service's resourceVersion.
    Meta {
        uid: String,
        name: String,
        api: Api<Service>,
        patch: serde_json::Value,
        removing: bool,
    },
}

/// An Event for the Event task (a Warning carries the key it is published
/// once under).
struct EventJob {
    key: Option<EventKey>,
    ev: Event,
    regarding: ObjectReference,
}

/// What a job that succeeded did.
enum Done {
    Status {
        uid: String,
        want: Ingress,
        rv: Option<String>,
        /// The Service as the write left it.
        now: Box<Service>,
    },
    Meta {
        name: String,
        removing: bool,
    },
}

/// `f` within [`WRITE_TIMEOUT`].
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(WRITE_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {} s", WRITE_TIMEOUT.as_secs()).into(),
        )),
    }
}

async fn run_job(job: Job) -> (&'static str, Result<Done, kube::Error>) {
    match job {
        Job::Status {
            uid,
            name,
            api,
            want,
            rv,
        } => {
            let list: Vec<serde_json::Value> = want
                .iter()
                .map(|(ip, mode)| json!({"ip": ip, "ipMode": mode}))
                .collect();
            let patch = json!({"status": {"loadBalancer": {"ingress": list}}});
            let r = timed(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                .await;
            (
                "status",
                r.map(|svc| Done::Status {
                    uid,
                    want,
                    rv,
                    now: Box::new(svc),
                }),
            )
        }
        Job::Meta {
            uid: _,
            name,
            api,
            patch,
            removing,
        } => {
            let short = name.rsplit('/').next().unwrap_or(&name).to_string();
            let r = timed(api.patch(&short, &PatchParams::default(), &Patch::Merge(&patch))).await;
            ("finalizer", r.map(|_| Done::Meta { name, removing }))
        }
    }
}

/// Runs the jobs, [`IN_FLIGHT`] at once, and notes what they came to. Each
/// Service a status write returned, by the UID it was written for.
async fn run_jobs(jobs: Vec<Job>, memory: &mut Memory) -> BTreeMap<String, Box<Service>> {
    let mut versions = BTreeMap::new();
    if jobs.is_empty() {
        return versions;
    }
    let results: Vec<_> = futures_util::stream::iter(jobs)
        .map(run_job)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for (what, result) in results {
        match result {
            Ok(done) => {
                if memory.errors.remove(what).is_some() {
                    tracing::info!(write = what, "Kubernetes writes succeed again");
                }
                match done {
                    Done::Status { uid, want, rv, now } => {
                        tracing::debug!(%uid, ingress = ?want, "status updated");
                        versions.insert(uid.clone(), now);
                        memory.written.insert(uid, (want, rv));
                    }
                    Done::Meta { name, removing } => {
                        if removing {
                            tracing::info!(service = %name, "finalizer removed; the Service may go");
                        }
                    }
                }
            }
            // The object is gone: nothing left to write to it.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => note_error(memory, what, e.to_string()),
        }
    }
    versions
}

/// One pass: statuses first (what users wait for), then finalizers, then
/// Events; of each kind [`IN_FLIGHT`] writes at a time. True when writes
/// were left for the next round.
async fn round(
    source: &Source,
    state: &Arc<ClusterState>,
    d: &Decisions,
    memory: &mut Memory,
) -> bool {
    let view = source.view();
    let client = source.client();
    let by_uid: BTreeMap<&str, &Arc<Service>> = view
        .services
        .iter()
        .filter_map(|s| Some((s.metadata.uid.as_deref()?, s)))
        .collect();
    let (mut statuses, mut metas, mut events) = (Vec::new(), Vec::new(), Vec::new());

    for (uid, ours) in &d.translation.ours {
        let Some(svc) = by_uid.get(uid.as_str()) else {
            continue;
        };
        let api: Api<Service> = Api::namespaced(client.clone(), &ours.namespace);
        let rv = svc.metadata.resource_version.clone();
        let in_state = in_state(state, uid);
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        let who = format!("{}/{}", ours.namespace, ours.name);
        if ours.deleting {
            // The VIP is withdrawn (the removal is committed) and released:
            // the Service may go.
            if has_finalizer(svc) && !in_state {
                finalizers.retain(|f| f != FINALIZER);
                metas.push(Job::Meta {
                    uid: uid.clone(),
                    name: who,
                    api,
                    patch: json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}}),
                    removing: true,
                });
            }
            continue;
        }
        if !has_finalizer(svc) {
            finalizers.push(FINALIZER.to_string());
            // The class goes with the finalizer: a director group removes
            // the finalizer only from Services its own class marked.
            metas.push(Job::Meta {
                uid: uid.clone(),
                name: who,
                api: api.clone(),
                patch: json!({"metadata": {
                    "finalizers": finalizers,
                    "annotations": {CLASS_ANNOTATION: d.class},
                    "resourceVersion": rv,
                }}),
                removing: false,
            });
        }
        let want = ingress(state, ours);
        let already = memory
            .written
            .get(uid)
            .is_some_and(|(w, at)| *w == want && *at == rv);
        if want != shown(svc) && !already {
            statuses.push(Job::Status {
                uid: uid.clone(),
                name: ours.name.clone(),
                api,
                want,
                rv,
            });
        }
        // Problems found in the Service (annotations, pools): one Warning
        // each, once.
        let mut problems: Vec<(&'static str, String)> = ours
            .problems
            .iter()
            .map(|p| (p.reason, p.note.clone()))
            .collect();
        for v6 in &ours.families {
            if let Some(why) = d.pending.get(&state_name(uid, *v6)) {
                problems.push(("AllocationFailed", why.to_string()));
            }
        }
        for (reason, note) in problems {
            let key = (uid.clone(), reason, note.clone());
            if !locked(&memory.published).insert(key.clone()) {
                continue;
            }
            events.push(EventJob {
                key: Some(key),
                ev: Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Allocate".into(),
                    secondary: None,
                },
                regarding: reference(&ours.namespace, &ours.name, uid),
            });
        }
    }

    // A Service that stopped being ours (its type changed, or unclassed
    // Services are no longer claimed) keeps no finalizer of ours once its
    // VIP is gone.
    for svc in &view.services {
        let Some(uid) = svc.metadata.uid.as_deref() else {
            continue;
        };
        if d.translation.ours.contains_key(uid) || !has_finalizer(svc) || in_state(state, uid) {
            continue;
        }
        let marked = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .is_some_and(|c| *c == d.class);
        if !marked {
            // Another director group's (or one without the mark): not ours
            // to remove.
            continue;
        }
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        metas.push(Job::Meta {
            uid: uid.to_string(),
            name: format!("{ns}/{name}"),
            api: Api::namespaced(client.clone(), ns),
            patch: json!({"metadata": {"finalizers": finalizers, "resourceVersion": svc.metadata.resource_version}}),
            removing: true,
        });
    }

    let versions = run_jobs(statuses, memory).await;
    // Finalizers in bounded portions: a burst of new Services gets its
    // statuses first, round after round, and its finalizers meanwhile.
    let more = metas.len() > METAS_PER_ROUND;
    metas.truncate(METAS_PER_ROUND);
    // A status written just now changed its Service's resourceVersion: with
    // the view's, adding the finalizer would fail with a conflict and wait
    // for the next round. It is made again from the Service the write
    // returned (its finalizers, its version).
    metas.retain_mut(|job| match job {
        Job::Meta {
            uid,
            patch,
            removing: false,
            ..
        } => versions
            .get(uid.as_str())
            .is_none_or(|now| add_finalizer_to(now, uid, patch)),
        Job::Meta { .. } | Job::Status { .. } => true,
    });
    run_jobs(metas, memory).await;
    events.extend(changes(state, memory));
    for job in events {
        let _ = memory.events.send(job);
    }
    memory
        .written
        .retain(|uid, _| d.translation.ours.contains_key(uid));
    locked(&memory.published).retain(|(uid, _, _)| d.translation.ours.contains_key(uid));
    more
}

/// Makes `patch` (adding the finalizer) from `now`, the Service a status
/// write returned. False when no patch is needed any more (it has the
/// finalizer, or is being deleted); a Service of another UID (replaced
/// under the same name) leaves the patch as it was, for the API to refuse.
fn add_finalizer_to(now: &Service, uid: &str, patch: &mut serde_json::Value) -> bool {
    if now.metadata.uid.as_deref() != Some(uid) {
        return true;
    }
    if now.metadata.deletion_timestamp.is_some() || has_finalizer(now) {
        return false;
    }
    let mut finalizers = now.metadata.finalizers.clone().unwrap_or_default();
    finalizers.push(FINALIZER.to_string());
    patch["metadata"]["finalizers"] = json!(finalizers);
    patch["metadata"]["resourceVersion"] = json!(now.metadata.resource_version);
    true
}

/// Normal Events for what changed in the state since the last round:
/// an address allocated or released, a VIP's owner changed.
fn changes(state: &Arc<ClusterState>, memory: &mut Memory) -> Vec<EventJob> {
    let Some(before) = memory.seen.replace(state.clone()) else {
        return Vec::new();
    };
    if Arc::ptr_eq(&before, state) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (name, svc) in &state.services {
        let Some(o) = &svc.origin else { continue };
        let old = before.services.get(name);
        if old.map(|s| s.vip) != Some(svc.vip) {
            out.push((
                o.clone(),
                "IPAllocated",
                format!("assigned {} ({})", svc.vip, o.address),
            ));
        }
        let owner = |s: &ClusterState| s.owners.get(&svc.vip).map(|w| w.director);
        // A move (the first placement is part of the allocation).
        if let (Some(now), Some(was)) = (owner(state), owner(&before)) {
            if was != now {
                let who = state
                    .directors
                    .get(&now)
                    .map_or_else(|| now.to_string(), |d| d.name.clone());
                out.push((
                    o.clone(),
                    "OwnerChanged",
                    format!("{} is held by director {who}", svc.vip),
                ));
            }
        }
    }
    for (name, svc) in &before.services {
        let Some(o) = &svc.origin else { continue };
        if !state.services.contains_key(name) && uid_of(name).is_some() {
            let note = if state.allocations.contains_key(&svc.vip) {
                format!(
                    "no longer uses {} (the other Services of its sharing key keep it)",
                    svc.vip
                )
            } else {
                format!("released {} and withdrew it from every director", svc.vip)
            };
            out.push((o.clone(), "IPReleased", note));
        }
    }
    out.into_iter()
        .map(|(o, reason, note)| EventJob {
            key: None,
            ev: Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            },
            regarding: reference(&o.namespace, &o.name, &o.uid),
        })
        .collect()
}

fn note_error(memory: &mut Memory, what: &'static str, e: String) {
    if memory.errors.get(what) != Some(&e) {
        tracing::warn!(write = what, error = %e, "Kubernetes write failed; tried again on the next round");
        memory.errors.insert(what, e);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn service(uid: &str, rv: &str, finalizers: &[&str]) -> Service {
        let mut s = Service::default();
        s.metadata.uid = Some(uid.into());
        s.metadata.resource_version = Some(rv.into());
        s.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        s
    }

    #[test]
    fn the_finalizer_patch_is_made_again_from_what_the_status_write_returned() {
        let view = json!({"metadata": {
            "finalizers": [FINALIZER],
            "annotations": {CLASS_ANNOTATION: "director.io/ipvs"},
            "resourceVersion": "7",
        }});
        // Another controller added its finalizer after the view: it is kept,
        // and the patch is guarded by the version the write left.
        let mut patch = view.clone();
        let now = service("u1", "9", &["example.com/other"]);
        assert!(add_finalizer_to(&now, "u1", &mut patch));
        assert_eq!(
            patch["metadata"]["finalizers"],
            json!(["example.com/other", FINALIZER])
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
        assert_eq!(
            patch["metadata"]["annotations"],
            view["metadata"]["annotations"]
        );
        // Already there, or the Service is going: no patch.
        assert!(!add_finalizer_to(
            &service("u1", "9", &[FINALIZER]),
            "u1",
            &mut view.clone()
        ));
        let mut going = service("u1", "9", &[]);
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert!(!add_finalizer_to(&going, "u1", &mut view.clone()));
        // Replaced under the same name: the patch stays as the view made it.
        let mut patch = view.clone();
        assert!(add_finalizer_to(&service("u2", "9", &[]), "u1", &mut patch));
        assert_eq!(patch, view);
    }
}
