//! From Kubernetes objects to wanted services. Pure: the Services, Nodes
//! and EndpointSlices the watches hold, the `kubernetes:` section, the
//! defaults and the pools in; wanted services and each Service's problems
//! out. docs/kubernetes.md states every rule written here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use consensus::domain::{check_flags, Persistence, Protocol, SchedulerFlag};
use consensus::state::{AddressFrom, Backend, Origin, ServicePort};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::health::HealthKind;
use crate::config::{Kubernetes, Pool, ServiceSettings};
use crate::sources::{VipRequest, Wanted};

/// Kubernetes services live in the state under this prefix, one virtual
/// service per Service UID and address family (`kube/UID/ipv4`).
pub const PREFIX: &str = "kube/";

/// The allocation holder of a sharing group: `kube-share/NAMESPACE/KEY/ipv4`.
pub const SHARE_PREFIX: &str = "kube-share/";

/// Requested addresses, comma-separated, at most one per family.
pub const ANN_IPS: &str = "director.io/load-balancer-ips";
/// The pool to take the address from.
pub const ANN_POOL: &str = "director.io/address-pool";
/// The IPVS scheduler.
pub const ANN_SCHEDULER: &str = "director.io/scheduler";
/// The scheduler's flags, comma-separated.
pub const ANN_FLAGS: &str = "director.io/scheduler-flags";
/// Client persistence: `SECONDS` or `SECONDS/PREFIXLEN` (0: none).
pub const ANN_PERSISTENCE: &str = "director.io/persistence";
/// The forwarding mode (`nat`, `dr`).
pub const ANN_FORWARDING: &str = "director.io/forwarding";
/// Services of one namespace with the same key share one VIP when their
/// ports do not collide.
pub const ANN_SHARING: &str = "director.io/sharing-key";
/// Annotation: `false` turns the source NAT of a `nat` Service off (the
/// nodes route its clients back through the directors).
pub const ANN_SNAT: &str = "director.io/snat";
/// Annotation: the backend health check, a YAML flow mapping with the
/// fields of a `health:` block (`{type: http, port: 8080, path: /ready}`).
pub const ANN_HEALTH: &str = "director.io/health-check";

/// Nodes with this label are no backends (KEP-3458).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Nodes with this taint are being removed by the cluster autoscaler.
pub const AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the watches hold.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Every Service.
    pub services: Vec<Arc<Service>>,
    /// Every Node.
    pub nodes: Vec<Arc<Node>>,
    /// Every EndpointSlice.
    pub slices: Vec<Arc<EndpointSlice>>,
}

/// The state name of the virtual service for a Service UID and family.
pub fn state_name(uid: &str, v6: bool) -> String {
    format!("{PREFIX}{uid}/{}", if v6 { "ipv6" } else { "ipv4" })
}

/// Whether a service of the state belongs to this source.
pub fn owns(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The Service UID of a state name of this source.
pub fn uid_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.split('/').next()
}

/// A problem with one Service: a Warning Event with this reason and note.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The Event's reason (`PascalCase`).
    pub reason: &'static str,
    /// What is wrong, naming the field or annotation.
    pub note: String,
}

impl Problem {
    fn new(reason: &'static str, note: impl Into<String>) -> Problem {
        Problem {
            reason,
            note: note.into(),
        }
    }
}

/// One Service director serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Being deleted (its deletion timestamp is set).
    pub deleting: bool,
    /// Whether both families are required (RequireDualStack): with one
    /// missing, the Service gets none.
    pub families: Vec<bool>,
    /// What is wrong with it (Warning Events).
    pub problems: Vec<Problem>,
}

/// The source's answer.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// The virtual services the state must hold.
    pub wanted: Vec<Wanted>,
    /// Every Service that is ours, by UID.
    pub ours: BTreeMap<String, Ours>,
}

/// Whether director serves `svc`: `type: LoadBalancer` with our class, or
/// without a class when `claim_unclassed` is set.
pub fn is_ours(svc: &Service, k: &Kubernetes) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match &spec.load_balancer_class {
        Some(c) => *c == k.class,
        None => k.claim_unclassed,
    }
}

/// The whole translation.
pub fn translate(
    view: &View,
    k: &Kubernetes,
    defaults: &ServiceSettings,
    pools: &[Pool],
) -> Translation {
    let nodes = NodeSet::of(&view.nodes);
    let mut out = Translation::default();
    // Oldest first: when Services compete (a nearly full pool, a shared
    // VIP's ports), the earlier one wins, whichever director leads.
    let mut services: Vec<&Arc<Service>> = view.services.iter().collect();
    services.sort_by(|a, b| {
        let key = |s: &Service| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.metadata.namespace.clone(),
                s.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    for svc in services {
        if !is_ours(svc, k) {
            continue;
        }
        let meta = &svc.metadata;
        let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid)
        else {
            continue;
        };
        let mut ours = Ours {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            deleting: meta.deletion_timestamp.is_some(),
            families: Vec::new(),
            problems: Vec::new(),
        };
        if !ours.deleting {
            let wanted = service(svc, &mut ours, k, defaults, pools, &nodes, &view.slices);
            out.wanted.extend(wanted);
        }
        out.ours.insert(uid.clone(), ours);
    }
    out
}

/// The wanted services of one Service (one per family it gets).
fn service(
    svc: &Service,
    ours: &mut Ours,
    k: &Kubernetes,
    defaults: &ServiceSettings,
    pools: &[Pool],
    nodes: &NodeSet,
    slices: &[Arc<EndpointSlice>],
) -> Vec<Wanted> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = svc.metadata.labels.as_ref().unwrap_or(&empty);
    let key = format!("{}/{}", ours.namespace, ours.name);
    let base = k.services.get(&key).unwrap_or(defaults);
    let settings = settings(annotations, base, &mut ours.problems);

    // Families, as the API server settled them.
    let mut families: Vec<bool> = spec
        .ip_families
        .as_ref()
        .map(|f| f.iter().map(|f| f == "IPv6").collect())
        .unwrap_or_else(|| vec![false]);
    families.dedup();
    let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
    if policy == "SingleStack" {
        families.truncate(1);
    }
    let require_all = policy == "RequireDualStack";
    ours.families = families.clone();

    let requested = requested(
        annotations,
        spec.load_balancer_ip.as_deref(),
        &mut ours.problems,
    );
    let sharing = annotations
        .get(ANN_SHARING)
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    let pool_choice = annotations.get(ANN_POOL).map(|p| p.trim().to_string());

    let mut requests = Vec::new();
    for (i, v6) in families.iter().copied().enumerate() {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let admitted: Vec<&Pool> = pools
            .iter()
            .filter(|p| p.has_family(v6) && p.admits(&ours.namespace, labels))
            .collect();
        // PreferDualStack takes what there is: only the first family must
        // get an address.
        let must = require_all || i == 0;
        let request = if let Some(ip) = requested.iter().find(|ip| ip.is_ipv6() == v6) {
            match admitted.iter().find(|p| p.contains(ip)) {
                Some(p) => Some((
                    VipRequest::Address(*ip),
                    AddressFrom::Requested,
                    p.name.clone(),
                )),
                None => {
                    ours.problems.push(Problem::new(
                        "AllocationFailed",
                        format!("requested address {ip} is in no pool this Service may use"),
                    ));
                    None
                }
            }
        } else if let Some(pool) = &pool_choice {
            match pools.iter().find(|p| &p.name == pool) {
                None => {
                    ours.problems.push(Problem::new(
                        "AllocationFailed",
                        format!("annotation {ANN_POOL}: no pool named {pool:?}"),
                    ));
                    None
                }
                Some(p) if !p.admits(&ours.namespace, labels) => {
                    ours.problems.push(Problem::new(
                        "AllocationFailed",
                        format!(
                            "annotation {ANN_POOL}: pool {pool:?} does not admit Services of namespace {} with these labels",
                            ours.namespace
                        ),
                    ));
                    None
                }
                Some(p) if !p.has_family(v6) => {
                    if must {
                        ours.problems.push(Problem::new(
                            "AllocationFailed",
                            format!(
                                "annotation {ANN_POOL}: pool {pool:?} has no {family} addresses"
                            ),
                        ));
                    }
                    None
                }
                Some(p) => Some((
                    VipRequest::Pool {
                        name: p.name.clone(),
                        v6: Some(v6),
                    },
                    AddressFrom::Pool(p.name.clone()),
                    p.name.clone(),
                )),
            }
        } else if admitted.is_empty() {
            if must {
                ours.problems.push(Problem::new(
                    "AllocationFailed",
                    format!("no pool with {family} addresses admits this Service"),
                ));
            }
            None
        } else {
            let keep: Vec<String> = admitted.iter().map(|p| p.name.clone()).collect();
            let assign: Vec<String> = admitted
                .iter()
                .filter(|p| p.auto_assign)
                .map(|p| p.name.clone())
                .collect();
            Some((
                VipRequest::Pools { keep, assign, v6 },
                // The leader names the pool the address is in.
                AddressFrom::Pool(String::new()),
                String::new(),
            ))
        };
        match request {
            Some(r) => requests.push((v6, r)),
            // RequireDualStack: all families or none.
            None if must && require_all => return Vec::new(),
            None => {}
        }
    }

    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let serving = local.then(|| serving_nodes(slices, &ours.namespace, &ours.name));
    let direct = settings.forwarding == consensus::domain::Forwarding::Dr;
    // kube-proxy answers for a Service of externalTrafficPolicy Local on its
    // healthCheckNodePort: healthy only where the Service has an endpoint.
    let local_port = spec
        .health_check_node_port
        .filter(|_| local)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0);
    let health = settings
        .health
        .resolve(HealthKind::KubeProxy, local_port)
        .map(Box::new);
    let mut out = Vec::new();
    for (v6, (vip, mut from, _)) in requests {
        let share = sharing.as_ref().map(|key| {
            from = AddressFrom::Shared(key.clone());
            format!(
                "{SHARE_PREFIX}{}/{key}/{}",
                ours.namespace,
                if v6 { "ipv6" } else { "ipv4" }
            )
        });
        let mut ports = Vec::new();
        for (j, p) in spec.ports.iter().flatten().enumerate() {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    ours.problems.push(Problem::new(
                        "UnsupportedPort",
                        format!("spec.ports[{j}]: protocol {other:?} is not TCP, UDP or SCTP"),
                    ));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            // NAT forwards to the NodePort; direct routing keeps the port.
            let target = if direct {
                Some(port)
            } else {
                p.node_port.and_then(|n| u16::try_from(n).ok())
            };
            let Some(target) = target else {
                continue;
            };
            let backends = nodes
                .backends(v6, serving.as_ref())
                .into_iter()
                .map(|(address, weight)| Backend {
                    address,
                    port: target,
                    weight,
                })
                .collect();
            ports.push(ServicePort {
                protocol,
                port,
                backends,
            });
        }
        if ports.is_empty() {
            if !direct && spec.allocate_load_balancer_node_ports == Some(false) {
                ours.problems.push(Problem::new(
                    "NoNodePorts",
                    "allocateLoadBalancerNodePorts is false: nat mode has no NodePort to forward to",
                ));
            }
            continue;
        }
        out.push(Wanted {
            name: state_name(&ours.uid, v6),
            vip,
            scheduler: settings.scheduler,
            scheduler_flags: settings.scheduler_flags.clone(),
            forwarding: settings.forwarding,
            snat: settings.snat,
            persistence: settings.persistence,
            ports,
            health: health.clone(),
            origin: Some(Origin {
                namespace: ours.namespace.clone(),
                name: ours.name.clone(),
                uid: ours.uid.clone(),
                address: from,
            }),
            share,
        });
    }
    ours.problems.sort();
    ours.problems.dedup();
    out
}

/// The addresses a Service asks for: the annotation, else the deprecated
/// `spec.loadBalancerIP` (honoured, with a Warning).
fn requested(
    annotations: &BTreeMap<String, String>,
    field: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Some(list) = annotations.get(ANN_IPS) {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<IpAddr>() {
                Ok(ip) if out.iter().any(|o| o.is_ipv6() == ip.is_ipv6()) => {
                    problems.push(Problem::new(
                        "InvalidAnnotation",
                        format!("annotation {ANN_IPS}: more than one address of the family of {ip}; {ip} is ignored"),
                    ));
                }
                Ok(ip) => out.push(ip),
                Err(_) => problems.push(Problem::new(
                    "InvalidAnnotation",
                    format!("annotation {ANN_IPS}: {item:?} is not an IP address; ignored"),
                )),
            }
        }
        return out;
    }
    if let Some(f) = field.map(str::trim).filter(|f| !f.is_empty()) {
        problems.push(Problem::new(
            "DeprecatedField",
            format!("spec.loadBalancerIP is deprecated; use the annotation {ANN_IPS}"),
        ));
        match f.parse::<IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(_) => problems.push(Problem::new(
                "InvalidField",
                format!("spec.loadBalancerIP: {f:?} is not an IP address; ignored"),
            )),
        }
    }
    out
}

/// `base` with the Service's annotations applied; a bad value is a problem
/// and leaves the setting as it was.
fn settings(
    annotations: &BTreeMap<String, String>,
    base: &ServiceSettings,
    problems: &mut Vec<Problem>,
) -> ServiceSettings {
    let mut out = base.clone();
    let mut bad = |ann: &str, value: &str, why: String| {
        problems.push(Problem::new(
            "InvalidAnnotation",
            format!("annotation {ann}: {value:?}: {why}; the default is used"),
        ));
    };
    if let Some(v) = annotations.get(ANN_SCHEDULER) {
        match v.trim().parse() {
            Ok(s) => out.scheduler = s,
            Err(e) => bad(ANN_SCHEDULER, v, format!("{e}")),
        }
    }
    if let Some(v) = annotations.get(ANN_FLAGS) {
        let parsed: Result<BTreeSet<SchedulerFlag>, _> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect();
        match parsed {
            Ok(f) => out.scheduler_flags = f,
            Err(e) => bad(ANN_FLAGS, v, format!("{e}")),
        }
    } else if out.scheduler != base.scheduler {
        // The default flags belong to the default scheduler.
        out.scheduler_flags
            .retain(|f| f.scheduler() == out.scheduler);
    }
    if let Err(e) = check_flags(out.scheduler, &out.scheduler_flags) {
        bad(
            ANN_FLAGS,
            annotations.get(ANN_FLAGS).map_or("", |s| s.as_str()),
            format!("{e}"),
        );
        out.scheduler = base.scheduler;
        out.scheduler_flags = base.scheduler_flags.clone();
    }
    if let Some(v) = annotations.get(ANN_FORWARDING) {
        match v.trim().parse() {
            Ok(f) => out.forwarding = f,
            Err(e) => bad(ANN_FORWARDING, v, format!("{e}")),
        }
    }
    if let Some(v) = annotations.get(ANN_PERSISTENCE) {
        match persistence(v.trim()) {
            Ok(p) => out.persistence = p,
            Err(why) => bad(ANN_PERSISTENCE, v, why),
        }
    }
    if let Some(v) = annotations.get(ANN_SNAT) {
        match v.trim() {
            "true" => out.snat = true,
            "false" => out.snat = false,
            _ => bad(ANN_SNAT, v, "not true or false".into()),
        }
    }
    if let Some(v) = annotations.get(ANN_HEALTH) {
        match crate::config::health::apply_text(v, &out.health) {
            Ok(h) => out.health = h,
            Err(why) => bad(ANN_HEALTH, v, why),
        }
    }
    if let Some(v) = annotations.get(ANN_SNAT) {
        if out.forwarding == consensus::domain::Forwarding::Dr {
            problems.push(Problem::new(
                "InvalidAnnotation",
                format!(
                    "annotation {ANN_SNAT}: {v:?}: source NAT applies to nat forwarding only; \
                     ignored under dr (the nodes answer the clients directly)"
                ),
            ));
        }
    }
    out
}

/// `SECONDS` or `SECONDS/PREFIXLEN`; 0 seconds: no persistence.
fn persistence(v: &str) -> Result<Option<Persistence>, String> {
    let (secs, mask) = match v.split_once('/') {
        Some((s, m)) => (s, Some(m)),
        None => (v, None),
    };
    let timeout_s: u32 = secs
        .parse()
        .map_err(|_| "not SECONDS or SECONDS/PREFIXLEN".to_string())?;
    let netmask = match mask {
        Some(m) => Some(
            m.parse::<u8>()
                .ok()
                .filter(|n| *n <= 128)
                .ok_or_else(|| format!("prefix length {m:?} is not 0..=128"))?,
        ),
        None => None,
    };
    Ok((timeout_s > 0).then_some(Persistence { timeout_s, netmask }))
}

/// The nodes that may be backends (KEP-3458), with their addresses and
/// readiness.
#[derive(Debug, Default)]
struct NodeSet {
    /// Name -> (InternalIPs, ready).
    nodes: BTreeMap<String, (Vec<IpAddr>, bool)>,
}

impl NodeSet {
    fn of(nodes: &[Arc<Node>]) -> NodeSet {
        let mut set = NodeSet::default();
        for n in nodes {
            let meta = &n.metadata;
            let Some(name) = &meta.name else { continue };
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            if meta
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
            {
                continue;
            }
            let spec = n.spec.as_ref();
            if spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == AUTOSCALER_TAINT))
            {
                continue;
            }
            let status = n.status.as_ref();
            let addresses: Vec<IpAddr> = status
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
            // Until health checks decide, a node that is not Ready takes no
            // new connections (weight 0) but stays a backend.
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            set.nodes.insert(name.clone(), (addresses, ready));
        }
        set
    }

    /// (address, weight) of every node with an address of the family,
    /// limited to `only` when given; in address order.
    fn backends(&self, v6: bool, only: Option<&BTreeSet<String>>) -> Vec<(IpAddr, u32)> {
        let mut out: Vec<(IpAddr, u32)> = self
            .nodes
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o.contains(*name)))
            .filter_map(|(_, (addrs, ready))| {
                addrs
                    .iter()
                    .find(|a| a.is_ipv6() == v6)
                    .map(|a| (*a, u32::from(*ready)))
            })
            .collect();
        out.sort();
        out.dedup_by_key(|(a, _)| *a);
        out
    }
}

/// The nodes with a ready endpoint of Service `namespace/name`.
fn serving_nodes(slices: &[Arc<EndpointSlice>], namespace: &str, name: &str) -> BTreeSet<String> {
    slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| n == name)
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
