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
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Api;
use serde_json::json;
use tokio::sync::watch;

use super::translate::{state_name, uid_of, Ours};
use super::Source;
use crate::leader::Decisions;

/// The finalizer on every Service director serves.
pub const FINALIZER: &str = "director.io/load-balancer-cleanup";

/// The `reportingController` of director's Events.
pub const CONTROLLER: &str = "director.io/ipvs-controller";

/// How long one API write may take before it is abandoned (and retried on
/// the next round).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the writer looks again without a change (retries).
const ROUND: Duration = Duration::from_secs(5);

/// One ingress entry: the VIP and its ipMode.
type Ingress = Vec<(String, &'static str)>;

/// What the writer remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    /// Per Service UID: the ingress last written and the resourceVersion
    /// the Service had then (skip rewriting until the watch shows a newer
    /// object).
    written: BTreeMap<String, (Ingress, Option<String>)>,
    /// Events already published: (UID, reason, note).
    published: BTreeSet<(String, &'static str, String)>,
    /// The state the allocation and owner Events were last computed from.
    seen: Option<Arc<ClusterState>>,
    /// The last error of each kind of write, logged once.
    errors: BTreeMap<&'static str, String>,
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
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
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
        round(&source, &recorder, &state, &d, &mut memory).await;
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

/// One pass: status, finalizers, Events.
async fn round(
    source: &Source,
    recorder: &Recorder,
    state: &Arc<ClusterState>,
    d: &Decisions,
    memory: &mut Memory,
) {
    let view = source.view();
    let client = source.client();
    let by_uid: BTreeMap<&str, &Arc<Service>> = view
        .services
        .iter()
        .filter_map(|s| Some((s.metadata.uid.as_deref()?, s)))
        .collect();

    for (uid, ours) in &d.ours {
        let Some(svc) = by_uid.get(uid.as_str()) else {
            continue;
        };
        let api: Api<Service> = Api::namespaced(client.clone(), &ours.namespace);
        let rv = svc.metadata.resource_version.clone();
        let in_state = in_state(state, uid);
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        if ours.deleting {
            // The VIP is withdrawn (the removal is committed) and released:
            // the Service may go.
            if has_finalizer(svc) && !in_state {
                finalizers.retain(|f| f != FINALIZER);
                let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
                if write(
                    memory,
                    "finalizer",
                    api.patch(&ours.name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                {
                    tracing::info!(service = %format!("{}/{}", ours.namespace, ours.name), "finalizer removed; the Service may go");
                }
            }
            continue;
        }
        if !has_finalizer(svc) {
            finalizers.push(FINALIZER.to_string());
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
            write(
                memory,
                "finalizer",
                api.patch(&ours.name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
        }
        let want = ingress(state, ours);
        let have = shown(svc);
        let already = memory
            .written
            .get(uid)
            .is_some_and(|(w, at)| *w == want && *at == rv);
        if want != have && !already {
            let list: Vec<serde_json::Value> = want
                .iter()
                .map(|(ip, mode)| json!({"ip": ip, "ipMode": mode}))
                .collect();
            let patch = json!({"status": {"loadBalancer": {"ingress": list}}});
            if write(
                memory,
                "status",
                api.patch_status(&ours.name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            {
                tracing::info!(service = %format!("{}/{}", ours.namespace, ours.name), ingress = ?want, "status updated");
                memory.written.insert(uid.clone(), (want, rv));
            }
        }
        // Problems found in the Service (annotations, pools): one Warning
        // each, once.
        let mut warnings: Vec<(&'static str, String)> = ours
            .problems
            .iter()
            .map(|p| (p.reason, p.note.clone()))
            .collect();
        for v6 in &ours.families {
            if let Some(why) = d.pending.get(&state_name(uid, *v6)) {
                warnings.push(("AllocationFailed", why.to_string()));
            }
        }
        for (reason, note) in warnings {
            let ev = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note.clone()),
                action: "Allocate".into(),
                secondary: None,
            };
            publish(
                memory,
                recorder,
                (uid.clone(), reason, note),
                &ev,
                &reference(&ours.namespace, &ours.name, uid),
            )
            .await;
        }
    }

    // A Service that stopped being ours (its type changed, or unclassed
    // Services are no longer claimed) keeps no finalizer of ours once its
    // VIP is gone.
    for svc in &view.services {
        let Some(uid) = svc.metadata.uid.as_deref() else {
            continue;
        };
        if d.ours.contains_key(uid) || !has_finalizer(svc) || in_state(state, uid) {
            continue;
        }
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": svc.metadata.resource_version}});
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        write(
            memory,
            "finalizer",
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
    }

    events(state, recorder, memory).await;
    memory.written.retain(|uid, _| d.ours.contains_key(uid));
    memory
        .published
        .retain(|(uid, _, _)| d.ours.contains_key(uid));
}

/// Normal Events for what changed in the state since the last round:
/// an address allocated or released, a VIP's owner changed.
async fn events(state: &Arc<ClusterState>, recorder: &Recorder, memory: &mut Memory) {
    let Some(before) = memory.seen.replace(state.clone()) else {
        return;
    };
    if Arc::ptr_eq(&before, state) {
        return;
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
        if let Some(now) = owner(state) {
            if owner(&before) != Some(now) {
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
            out.push((
                o.clone(),
                "IPReleased",
                format!("released {} and withdrew it from every director", svc.vip),
            ));
        }
    }
    for (o, reason, note) in out {
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        let r = reference(&o.namespace, &o.name, &o.uid);
        if let Err(e) = timed(recorder.publish(&ev, &r)).await {
            note_error(memory, "event", e);
        }
    }
}

async fn publish(
    memory: &mut Memory,
    recorder: &Recorder,
    key: (String, &'static str, String),
    ev: &Event,
    r: &ObjectReference,
) {
    if memory.published.contains(&key) {
        return;
    }
    match timed(recorder.publish(ev, r)).await {
        Ok(()) => {
            memory.published.insert(key);
        }
        Err(e) => note_error(memory, "event", e),
    }
}

/// An API call with [`WRITE_TIMEOUT`].
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", WRITE_TIMEOUT.as_secs())),
    }
}

/// Runs one write; false (and the error logged once) when it failed.
async fn write<T>(
    memory: &mut Memory,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> bool {
    match timed_raw(f).await {
        // The object is gone: nothing left to write to it.
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => false,
        Ok(Err(e)) => {
            note_error(memory, what, e.to_string());
            false
        }
        Ok(Ok(_)) => {
            if memory.errors.remove(what).is_some() {
                tracing::info!(write = what, "Kubernetes writes succeed again");
            }
            true
        }
        Err(e) => {
            note_error(memory, what, e);
            false
        }
    }
}

/// An API call with [`WRITE_TIMEOUT`]; the call's own result inside.
async fn timed_raw<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, String> {
    tokio::time::timeout(WRITE_TIMEOUT, f)
        .await
        .map_err(|_| format!("no answer within {} s", WRITE_TIMEOUT.as_secs()))
}

fn note_error(memory: &mut Memory, what: &'static str, e: String) {
    if memory.errors.get(what) != Some(&e) {
        tracing::warn!(write = what, error = %e, "Kubernetes write failed; tried again on the next round");
        memory.errors.insert(what, e);
    }
}
