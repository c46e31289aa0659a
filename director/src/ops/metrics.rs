//! The Prometheus endpoint (`metrics:` in the configuration): `GET /metrics`.
//!
//! A scrape takes a [`Snapshot`]: the status document (the same as
//! `director status`, so the two never disagree) and the counters and
//! histograms that are not part of it. [`render`] encodes it with
//! `prometheus-client`, in Prometheus' text format or, when the scraper asks
//! for it, in OpenMetrics; docs/metrics.md lists every family, and the names
//! and labels are a contract. [`run`] serves it with hyper, one request per
//! connection, bounded against slow and malformed clients ([`Limits`]).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::status::{self, Status};
use super::Daemon;

/// What one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The status document.
    pub status: Status,
    /// This director's ownership-lease counters.
    pub leases: consensus::LeaseCounts,
    /// VIP owner changes this director has seen since it started.
    pub owner_changes: u64,
    /// Each reconciler's pass durations, by its name.
    pub passes: Vec<(String, Histogram)>,
    /// The health checker's counters (None on a witness).
    pub health: Option<HealthCounts>,
    /// The heap (None where jemalloc is not the allocator).
    pub heap: Option<super::memory::Heap>,
}

/// The health checker's counters, read at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthCounts {
    /// Probes that passed.
    pub passed: u64,
    /// Probes that failed.
    pub failed: u64,
    /// Changes of a target between up and down.
    pub transitions: u64,
    /// Probe durations: (upper bound in seconds, probes in that bucket and
    /// not in the one before), the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the probe durations, seconds.
    pub seconds: f64,
}

impl HealthCounts {
    /// Reads the checker's counters.
    pub fn read(h: &crate::health::Health) -> HealthCounts {
        use crate::health::DURATION_BUCKETS;
        let s = &h.stats;
        let buckets = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&s.buckets)
            .map(|(bound, n)| (bound, n.load(Relaxed)))
            .collect();
        HealthCounts {
            passed: s.passed.load(Relaxed),
            failed: s.failed.load(Relaxed),
            transitions: s.transitions.load(Relaxed),
            buckets,
            seconds: s.duration_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// This director's snapshot now.
pub async fn snapshot(d: &Daemon) -> Snapshot {
    // The heap first: the status document built for this scrape is
    // megabytes at ten thousand services, and not the daemon's.
    let heap = super::memory::heap();
    Snapshot {
        status: status::build(d).await,
        leases: d.node.lease_counts(),
        owner_changes: d.clock.changes(),
        passes: d
            .reconcilers
            .iter()
            .map(|h| (h.name.to_string(), h.stats.pass_seconds.clone()))
            .collect(),
        health: d.health.as_deref().map(HealthCounts::read),
        heap,
    }
}

/// The exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text format, version 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper whose `Accept` names it.
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics if it names
    /// `application/openmetrics-text` (as Prometheus does), else Prometheus'
    /// text format.
    pub fn accepted(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition of `snapshot` in `format`.
pub fn render(snapshot: Snapshot, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

// Label sets, one type per shape.

#[derive(Debug, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

#[derive(Debug, EncodeLabelSet)]
struct VipOwnerLabels {
    vip: String,
    service: String,
    owner: String,
}

#[derive(Debug, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Debug, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, EncodeLabelSet)]
struct ServiceDirectionLabels {
    service: String,
    direction: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Debug, EncodeLabelSet)]
struct BackendDirectionLabels {
    service: String,
    backend: String,
    direction: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct BackendCheckLabels {
    service: String,
    backend: String,
    check: String,
}

#[derive(Debug, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct ReconcilerLabels {
    reconciler: String,
}

/// A histogram read elsewhere: buckets as in [`HealthCounts::buckets`].
struct Buckets<'a> {
    buckets: &'a [(f64, u64)],
    sum: f64,
}

impl EncodeMetric for Buckets<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let count = self.buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The name to register: a counter's without `_total`, which
/// prometheus-client appends itself (the exposed name is `name`).
fn registered(name: &str, kind: MetricType) -> &str {
    match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// One family named `name` as exposed: its descriptor, then a sample per
/// label set (none: the family is still described).
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(registered(name, kind), help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One family of a single sample without labels.
fn single<M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: M,
) -> fmt::Result {
    let kind = metric.metric_type();
    metric.encode(e.encode_descriptor(registered(name, kind), help, None, kind)?)
}

fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(e, name, help, MetricType::Gauge, samples)
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(e, name, help, MetricType::Counter, samples)
}

/// The label set of a sample without labels, in a family that may have
/// none.
const NO_LABELS: [(&str, &str); 0] = [];

fn one(v: bool) -> i64 {
    i64::from(v)
}

fn seconds_of_ms(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Snapshot {
    fn raft(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let c = &self.status.cluster;
        single(
            e,
            "director_leader",
            "1 if this director is the Raft leader.",
            ConstGauge::new(one(c.leader == Some(self.status.director.id))),
        )?;
        let role = c.role.as_deref().unwrap_or_default();
        gauges(
            e,
            "director_raft_role",
            "1 for this director's Raft role, 0 for the others.",
            consensus::RAFT_ROLES
                .iter()
                .map(|r| (RoleLabels { role: r }, one(*r == role))),
        )?;
        gauges(
            e,
            "director_raft_leader_id",
            "The Raft id of the leader this director knows (no sample while it knows none).",
            c.leader.map(|id| (NO_LABELS, id)),
        )?;
        single(
            e,
            "director_raft_term",
            "The current Raft term.",
            ConstGauge::new(c.term),
        )?;
        single(
            e,
            "director_raft_applied_index",
            "The last log index applied here.",
            ConstGauge::new(c.applied_index.unwrap_or(0)),
        )
    }

    fn lease(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let l = &self.leases;
        single(
            e,
            "director_lease_held",
            "1 while this director holds its ownership lease.",
            ConstGauge::new(one(self.status.lease.held)),
        )?;
        single(
            e,
            "director_lease_grants_total",
            "Ownership leases this director granted while it led (to every director, itself included).",
            ConstCounter::new(l.grants),
        )?;
        counters(
            e,
            "director_lease_renewals_total",
            "Lease renewals this director asked the leader for, by result.",
            [
                ("granted", l.renewals_granted),
                ("refused", l.renewals_refused),
                ("unanswered", l.renewals_unanswered),
            ]
            .map(|(result, n)| (ResultLabels { result }, n)),
        )?;
        single(
            e,
            "director_lease_lapses_total",
            "Times this director's ownership lease ran out before a renewal extended it.",
            ConstCounter::new(l.lapses),
        )
    }

    fn members(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let members = &self.status.cluster.members;
        let label = |name: &str| MemberLabels {
            member: name.to_string(),
        };
        gauges(
            e,
            "director_member_last_contact_seconds",
            "Seconds since the leader last heard from each member (on the leader).",
            members
                .iter()
                .filter_map(|m| Some((label(&m.name), seconds_of_ms(m.last_contact_ms?)))),
        )?;
        gauges(
            e,
            "director_member_draining",
            "1 for a member that is draining.",
            members.iter().map(|m| (label(&m.name), one(m.draining))),
        )
    }

    fn vips(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let vips = &self.status.vips;
        gauges(
            e,
            "director_vip_held",
            "1 if this director holds the VIP now (owner with a lease).",
            vips.iter().map(|v| {
                let labels = VipOwnerLabels {
                    vip: v.vip.clone(),
                    service: v.service.clone(),
                    owner: v.owner_name.clone().unwrap_or_default(),
                };
                (labels, one(v.held_here))
            }),
        )?;
        gauges(
            e,
            "director_vip_epoch",
            "The VIP's ownership epoch (raised by every move).",
            vips.iter()
                .map(|v| (VipLabels { vip: v.vip.clone() }, v.epoch.unwrap_or(0))),
        )?;
        single(
            e,
            "director_vip_owner_changes_total",
            "VIP owner changes (new ownership epochs) this director has seen since it started.",
            ConstCounter::new(self.owner_changes),
        )?;
        single(
            e,
            "director_announcements_sent_total",
            "Gratuitous ARPs and unsolicited neighbour advertisements sent.",
            ConstCounter::new(self.status.announcements_sent),
        )
    }

    fn services(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let services = &self.status.services;
        let traffic = || {
            services
                .iter()
                .filter_map(|s| Some((s.service.clone(), s.traffic?)))
        };
        counters(
            e,
            "director_service_connections_total",
            "Connections the kernel scheduled for each virtual service.",
            traffic().map(|(service, t)| (ServiceLabels { service }, t.connections)),
        )?;
        let by_direction = |pick: fn(&status::Traffic) -> (u64, u64)| {
            traffic().flat_map(move |(service, t)| {
                let (i, o) = pick(&t);
                [("in", i), ("out", o)].map(|(direction, n)| {
                    let service = service.clone();
                    (ServiceDirectionLabels { service, direction }, n)
                })
            })
        };
        counters(
            e,
            "director_service_packets_total",
            "Packets of each virtual service, in (from clients) and out (to clients).",
            by_direction(|t| (t.packets_in, t.packets_out)),
        )?;
        counters(
            e,
            "director_service_bytes_total",
            "Bytes of each virtual service, in (from clients) and out (to clients).",
            by_direction(|t| (t.bytes_in, t.bytes_out)),
        )
    }

    fn backends(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let all = || {
            self.status.services.iter().flat_map(|s| {
                s.backends.iter().map(move |b| {
                    let labels = BackendLabels {
                        service: s.service.clone(),
                        backend: format!("{}:{}", b.address, b.port),
                    };
                    (labels, b)
                })
            })
        };
        gauges(
            e,
            "director_backend_weight",
            "Each backend's weight in this director's IPVS table (0 while its health check fails).",
            all().map(|(l, b)| (l, b.weight)),
        )?;
        gauges(
            e,
            "director_backend_up",
            "1 if the backend passes its health check here, 0 if it fails it (checked backends that have had a result).",
            all().filter_map(|(l, b)| {
                let up = match b.health.as_deref()? {
                    "up" => true,
                    "down" => false,
                    _ => return None,
                };
                let labels = BackendCheckLabels {
                    service: l.service,
                    backend: l.backend,
                    check: b.health_check.clone()?,
                };
                Some((labels, one(up)))
            }),
        )?;
        gauges(
            e,
            "director_backend_active_connections",
            "Active connections per backend, from the kernel's IPVS table.",
            all().map(|(l, b)| (l, b.active)),
        )?;
        gauges(
            e,
            "director_backend_inactive_connections",
            "Inactive connections per backend, from the kernel's IPVS table.",
            all().map(|(l, b)| (l, b.inactive)),
        )?;
        let traffic = || all().filter_map(|(l, b)| Some((l, b.traffic?)));
        counters(
            e,
            "director_backend_connections_total",
            "Connections the kernel scheduled to each backend.",
            traffic().map(|(l, t)| (l, t.connections)),
        )?;
        let by_direction = |pick: fn(&status::Traffic) -> (u64, u64)| {
            traffic().flat_map(move |(l, t)| {
                let (i, o) = pick(&t);
                [("in", i), ("out", o)].map(|(direction, n)| {
                    let labels = BackendDirectionLabels {
                        service: l.service.clone(),
                        backend: l.backend.clone(),
                        direction,
                    };
                    (labels, n)
                })
            })
        };
        counters(
            e,
            "director_backend_packets_total",
            "Packets to and from each backend through this director, in (from clients) and out (to clients).",
            by_direction(|t| (t.packets_in, t.packets_out)),
        )?;
        counters(
            e,
            "director_backend_bytes_total",
            "Bytes to and from each backend through this director, in (from clients) and out (to clients).",
            by_direction(|t| (t.bytes_in, t.bytes_out)),
        )
    }

    fn health(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(h) = &self.status.health {
            gauges(
                e,
                "director_health_targets",
                "Health-check targets (check and address:port) by state.",
                [("up", h.up), ("down", h.down), ("unknown", h.unknown)]
                    .map(|(state, n)| (StateLabels { state }, n)),
            )?;
        }
        let Some(h) = &self.health else {
            return Ok(());
        };
        counters(
            e,
            "director_health_checks_total",
            "Health-check probes run here, by result.",
            [("pass", h.passed), ("fail", h.failed)]
                .map(|(result, n)| (ResultLabels { result }, n)),
        )?;
        single(
            e,
            "director_health_transitions_total",
            "Changes of a health-check target between up and down.",
            ConstCounter::new(h.transitions),
        )?;
        single(
            e,
            "director_health_check_duration_seconds",
            "How long health-check probes take.",
            Buckets {
                buckets: &h.buckets,
                sum: h.seconds,
            },
        )
    }

    fn reconcilers(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let per = |f: fn(&status::ReconcilerStatus) -> u64| {
            self.status.reconcilers.iter().map(move |r| {
                let labels = ReconcilerLabels {
                    reconciler: r.name.clone(),
                };
                (labels, f(r))
            })
        };
        counters(
            e,
            "director_reconcile_operations_total",
            "Kernel operations applied by each reconciler.",
            per(|r| r.operations),
        )?;
        counters(
            e,
            "director_reconcile_errors_total",
            "Reconcile passes that failed.",
            per(|r| r.errors),
        )?;
        counters(
            e,
            "director_reconcile_resyncs_total",
            "Full reads of the kernel's state.",
            per(|r| r.resyncs),
        )?;
        counters(
            e,
            "director_reconcile_drift_repairs_total",
            "Resyncs that found a change made behind the director's back and repaired it.",
            per(|r| r.drift_repairs),
        )?;
        gauges(
            e,
            "director_reconcile_last_pass_seconds",
            "Duration of each reconciler's last pass.",
            per(|r| r.last_pass_us).map(|(l, us)| (l, us as f64 / 1e6)),
        )?;
        family(
            e,
            "director_reconcile_pass_duration_seconds",
            "Durations of each reconciler's passes.",
            MetricType::Histogram,
            self.passes.iter().map(|(name, h)| {
                let labels = ReconcilerLabels {
                    reconciler: name.clone(),
                };
                (labels, h.clone())
            }),
        )
    }

    /// The connection-sync daemons (the `sync` reconciler's passes and
    /// errors are in the reconcile families).
    fn sync(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        // Described on every data director (the health checker runs on
        // those only); samples while the kernel's daemons could be read.
        if self.health.is_none() && self.status.sync.is_none() {
            return Ok(());
        }
        let known = self.status.sync.as_ref().filter(|sy| sy.error.is_none());
        gauges(
            e,
            "director_sync_daemon_running",
            "1 if the kernel runs this director's IPVS connection-sync daemon of the role.",
            known.into_iter().flat_map(|sy| {
                ["master", "backup"].into_iter().map(move |role| {
                    (
                        RoleLabels { role },
                        one(sy.daemons.iter().any(|d| d.role == role)),
                    )
                })
            }),
        )
    }

    fn kubernetes(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let Some(k) = &self.status.kubernetes else {
            return Ok(());
        };
        single(
            e,
            "director_kubernetes_api_reachable",
            "1 if the Kubernetes API server answers the watches.",
            ConstGauge::new(one(k.api_reachable)),
        )?;
        single(
            e,
            "director_kubernetes_api_state_seconds",
            "Seconds since the API server became reachable or unreachable.",
            ConstGauge::new(seconds_of_ms(k.api_since_ms_ago.unwrap_or(0))),
        )?;
        single(
            e,
            "director_kubernetes_services",
            "Kubernetes Services with at least one VIP.",
            ConstGauge::new(k.services.len() as u64),
        )
    }
}

impl Snapshot {
    fn memory(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let Some(h) = self.heap else {
            return Ok(());
        };
        single(
            e,
            "director_heap_allocated_bytes",
            "Bytes of heap the daemon holds (jemalloc's count of live allocations).",
            ConstGauge::new(h.allocated),
        )?;
        single(
            e,
            "director_heap_resident_bytes",
            "Bytes of the allocator's pages resident in memory: the heap, its fragmentation and freed pages not yet returned.",
            ConstGauge::new(h.resident),
        )
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        self.raft(&mut e)?;
        self.lease(&mut e)?;
        self.members(&mut e)?;
        self.vips(&mut e)?;
        self.services(&mut e)?;
        self.backends(&mut e)?;
        self.health(&mut e)?;
        self.reconcilers(&mut e)?;
        self.kubernetes(&mut e)?;
        self.sync(&mut e)?;
        self.memory(&mut e)
    }
}

/// Where a scrape's text comes from: the daemon, or a test's stand-in.
pub trait Scrape: Clone + Send + Sync + 'static {
    /// The exposition in `format`, now.
    fn scrape(&self, format: Format) -> impl Future<Output = Result<String, fmt::Error>> + Send;
}

impl Scrape for Daemon {
    async fn scrape(&self, format: Format) -> Result<String, fmt::Error> {
        render(snapshot(self).await, format)
    }
}

/// How the endpoint bounds its clients, so that a slow or malformed one
/// can neither stall a scrape nor hold the daemon's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send its request head; then the connection is
    /// closed.
    pub header_timeout: Duration,
    /// Time a connection may last in all, from accept to the end of the
    /// answer (a client that reads the answer slowly is cut then).
    pub connection_deadline: Duration,
    /// Connections served at once; a connection beyond them is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 5 s for the head, 30 s in all, 32 connections (Prometheus sends its
    /// head at once and times a scrape out after 10 s by default).
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(30),
            max_connections: 32,
        }
    }
}

/// The read buffer of a connection, and so the largest request head: the
/// least hyper allows (a scraper's head is a few hundred bytes).
const READ_BUFFER: usize = 8192;

/// Serves `GET /metrics` on `addr` until stopped, with the default
/// [`Limits`].
pub async fn serve(addr: SocketAddr, d: Daemon, stop: watch::Receiver<bool>) {
    match TcpListener::bind(addr).await {
        Ok(listener) => run(listener, d, Limits::default(), stop).await,
        Err(e) => tracing::error!(%addr, error = %e, "cannot serve metrics; metrics are off"),
    }
}

/// Serves `GET /metrics` from `source` on `listener` until `stop` changes;
/// the connections still open then are closed.
pub async fn run<S: Scrape>(
    listener: TcpListener,
    source: S,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: try again shortly.
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many connections; closing a new one");
            continue;
        };
        let source = source.clone();
        connections.spawn(async move {
            connection(stream, source, limits).await;
            drop(slot);
        });
    }
}

/// One connection: one request, answered, then closed.
async fn connection<S: Scrape>(stream: TcpStream, source: S, limits: Limits) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let source = source.clone();
        async move { Ok::<_, Infallible>(answer(req, source).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(READ_BUFFER);
    let served = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_deadline, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: connection failed"),
        Err(_) => tracing::debug!("metrics: connection cut at its deadline"),
    }
}

/// The answer to one request.
async fn answer<S: Scrape>(req: Request<Incoming>, source: S) -> Response<Full<Bytes>> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "try GET /metrics\n");
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::accepted(accept);
    match source.scrape(format).await {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            r
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests;
