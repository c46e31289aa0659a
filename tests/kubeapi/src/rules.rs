//! Per-kind defaulting and validation, after the apiserver's registry strategies
//! (`pkg/registry/core/service`, `pkg/apis/core/validation`, `pkg/apis/events`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Map, Value};

use crate::resources::{ResourceType, ENDPOINT_SLICES, EVENTS, NAMESPACES, SERVICES};
use crate::status::Cause;
use crate::store::{holdings, name_of, namespace_of, Allocations, Store};

/// The Service cluster IP range: 10.43.0.0/16 (k3s's default).
const CLUSTER_IP_PREFIX: [u8; 2] = [10, 43];
/// The Service node port range.
const NODE_PORTS: std::ops::RangeInclusive<u64> = 30000..=32767;
const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// A random number below `bound`.
pub fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    // The system random source failing leaves zeros: still a valid, if poor, pick.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes) % bound.max(1)
}

/// Default and validate `new` (the object about to be stored) against `old` (the stored
/// one, on update). `status_write` is a write to the `/status` subresource.
pub fn prepare(
    rt: &ResourceType,
    store: &Store,
    old: Option<&Value>,
    new: &mut Value,
    status_write: bool,
) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    match rt.key() {
        k if k == SERVICES.key() => {
            if !status_write {
                service_spec(store, old, new, &mut causes);
            }
            service_status(new, &mut causes);
        }
        k if k == EVENTS.key() => event(new, &mut causes),
        k if k == NAMESPACES.key() && old.is_none() && new.pointer("/status/phase").is_none() => {
            ensure_object(new, "status").insert("phase".into(), json!("Active"));
        }
        k if k == ENDPOINT_SLICES.key()
            && new.get("addressType").and_then(Value::as_str).is_none() =>
        {
            causes.push(Cause::required("addressType", ""));
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

fn ensure_object<'a>(value: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    let Value::Object(map) = value else {
        unreachable!("made an object above")
    };
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    match entry {
        Value::Object(inner) => inner,
        _ => unreachable!("made an object above"),
    }
}

fn str_of<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Node ports and cluster IPs held by Services other than the one being
/// written: the store's counts less what its stored version holds.
struct Held<'a> {
    all: &'a Allocations,
    /// What the stored version of the Service being written holds.
    own_ports: Vec<u64>,
    own_ip: Option<String>,
    /// Ports this write has taken so far.
    taken: BTreeSet<u64>,
}

impl Held<'_> {
    fn port(&self, port: u64) -> bool {
        let own = self.own_ports.iter().filter(|p| **p == port).count();
        self.all.port(port) > own || self.taken.contains(&port)
    }

    fn ip(&self, ip: &str) -> bool {
        let own = usize::from(self.own_ip.as_deref() == Some(ip));
        self.all.ip(ip) > own
    }
}

/// Node ports and cluster IPs held by Services other than `(namespace, name)`.
fn held_by_others<'a>(store: &'a Store, namespace: &str, name: &str) -> Held<'a> {
    let stored = store.get(&SERVICES, Some(namespace), name);
    let (own_ports, own_ip) = stored.map(holdings).unwrap_or_default();
    Held {
        all: store.allocations(),
        own_ports,
        own_ip: own_ip.map(str::to_string),
        taken: BTreeSet::new(),
    }
}

fn allocate_port(used: impl Fn(u64) -> bool) -> Option<u64> {
    let size = NODE_PORTS.end() - NODE_PORTS.start() + 1;
    let start = random_below(size);
    (0..size)
        .map(|i| NODE_PORTS.start() + (start + i) % size)
        .find(|p| !used(*p))
}

fn allocate_ip(used: impl Fn(&str) -> bool) -> Option<String> {
    let size: u64 = 65536;
    let start = random_below(size);
    (0..size)
        .map(|i| (start + i) % size)
        .filter(|n| *n > 1 && *n < 65535)
        .map(|n| {
            Ipv4Addr::new(
                CLUSTER_IP_PREFIX[0],
                CLUSTER_IP_PREFIX[1],
                (n >> 8) as u8,
                (n & 0xff) as u8,
            )
            .to_string()
        })
        .find(|ip| !used(ip))
}

fn needs_node_ports(kind: &str) -> bool {
    kind == "NodePort" || kind == "LoadBalancer"
}

#[allow(clippy::too_many_lines)]
fn service_spec(store: &Store, old: Option<&Value>, new: &mut Value, causes: &mut Vec<Cause>) {
    let namespace = namespace_of(new).unwrap_or_default();
    let name = name_of(new);
    let mut held = held_by_others(store, &namespace, &name);
    let old_spec = old
        .and_then(|o| o.get("spec"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let old_type = old.map(|_| str_of(&old_spec, "type").unwrap_or("ClusterIP").to_string());
    let spec = ensure_object(new, "spec");

    let kind = str_of(spec, "type").unwrap_or("ClusterIP").to_string();
    if !SERVICE_TYPES.contains(&kind.as_str()) {
        causes.push(Cause::unsupported("spec.type", &json!(kind), SERVICE_TYPES));
        return;
    }
    spec.insert("type".into(), json!(kind));

    // Values allocated before are kept when the update leaves them out.
    if old.is_some() && kind != "ExternalName" {
        let given = str_of(spec, "clusterIP").unwrap_or_default().to_string();
        let before = str_of(&old_spec, "clusterIP")
            .unwrap_or_default()
            .to_string();
        if given.is_empty() && !before.is_empty() {
            spec.insert("clusterIP".into(), json!(before));
            if let Some(ips) = old_spec.get("clusterIPs") {
                spec.insert("clusterIPs".into(), ips.clone());
            }
        } else if !before.is_empty() && given != before {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(given),
                "may not change once set",
            ));
        }
    }
    let old_ports: Vec<Value> = old_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    // loadBalancerClass: only with LoadBalancer, and fixed once the Service is one.
    let class = spec
        .get("loadBalancerClass")
        .filter(|v| !v.is_null())
        .cloned();
    if class.is_some() && kind != "LoadBalancer" {
        causes.push(Cause::forbidden(
            "spec.loadBalancerClass",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if old_type.as_deref() == Some("LoadBalancer") && kind == "LoadBalancer" {
        let before = old_spec
            .get("loadBalancerClass")
            .filter(|v| !v.is_null())
            .cloned();
        if before != class {
            causes.push(Cause::invalid(
                "spec.loadBalancerClass",
                &class.clone().unwrap_or(Value::Null),
                "may not change once set",
            ));
        }
    }

    if kind == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    } else if let Some(v) = spec.remove("allocateLoadBalancerNodePorts") {
        if old_spec.get("allocateLoadBalancerNodePorts") != Some(&v) {
            causes.push(Cause::forbidden(
                "spec.allocateLoadBalancerNodePorts",
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
    }
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if kind != "ExternalName" {
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if needs_node_ports(&kind) {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    } else {
        spec.remove("externalTrafficPolicy");
    }

    // Cluster IP.
    if kind == "ExternalName" {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    } else {
        let given = str_of(spec, "clusterIP").unwrap_or_default().to_string();
        let unchanged = str_of(&old_spec, "clusterIP") == Some(given.as_str());
        let ip = if given.is_empty() {
            match allocate_ip(|ip| held.ip(ip)) {
                Some(ip) => ip,
                None => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([]),
                        "failed to allocate IP: range is full",
                    ));
                    return;
                }
            }
        } else if given == "None" || unchanged {
            given
        } else {
            match given.parse::<Ipv4Addr>() {
                Ok(addr) if addr.octets()[..2] == CLUSTER_IP_PREFIX => {
                    if held.ip(&given) {
                        causes.push(Cause::invalid(
                            "spec.clusterIPs",
                            &json!([given]),
                            &format!(
                                "failed to allocate IP {given}: provided IP is already allocated"
                            ),
                        ));
                    }
                    given
                }
                _ => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([given]),
                        &format!("failed to allocate IP {given}: the provided IP ({given}) is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
                    ));
                    given
                }
            }
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    }
    let headless = str_of(spec, "clusterIP") == Some("None");

    // Ports.
    let allocate = kind == "NodePort"
        || (kind == "LoadBalancer"
            && spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false));
    let mut ports: Vec<Value> = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports", ""));
    }
    let count = ports.len();
    let mut own_ports = BTreeSet::new();
    for (i, port) in ports.iter_mut().enumerate() {
        let Some(p) = port.as_object_mut() else {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}]"),
                port,
                "must be an object",
            ));
            continue;
        };
        let number = p.get("port").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                p.get("port").unwrap_or(&json!(0)),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if count > 1 && str_of(p, "name").unwrap_or_default().is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name"), ""));
        }
        let protocol = str_of(p, "protocol").unwrap_or("TCP").to_string();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            causes.push(Cause::unsupported(
                format!("spec.ports[{i}].protocol"),
                &json!(protocol),
                PROTOCOLS,
            ));
        }
        p.insert("protocol".into(), json!(protocol));
        if !p.contains_key("targetPort") || p.get("targetPort") == Some(&json!(0)) {
            p.insert("targetPort".into(), json!(number));
        }
        let old_match = old_ports.iter().find(|o| {
            o.get("port").and_then(Value::as_u64) == Some(number)
                && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
        });
        let old_node_port = old_match
            .and_then(|o| o.get("nodePort"))
            .and_then(Value::as_u64);
        let given = p
            .get("nodePort")
            .and_then(Value::as_u64)
            .filter(|n| *n != 0);
        if !needs_node_ports(&kind) {
            if let Some(n) = given {
                if Some(n) != old_node_port {
                    causes.push(Cause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        &format!("may not be used when `type` is '{kind}'"),
                    ));
                }
            }
            p.remove("nodePort");
            continue;
        }
        let given = given.or(if old_type.as_deref().is_some_and(needs_node_ports) {
            old_node_port
        } else {
            None
        });
        match given {
            Some(n) if !NODE_PORTS.contains(&n) => causes.push(Cause::invalid(
                format!("spec.ports[{i}].nodePort"),
                &json!(n),
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            )),
            Some(n) if held.port(n) => causes.push(Cause::invalid(
                format!("spec.ports[{i}].nodePort"),
                &json!(n),
                "provided port is already allocated",
            )),
            Some(n) => {
                own_ports.insert(n);
                p.insert("nodePort".into(), json!(n));
            }
            None if allocate => match allocate_port(|p| held.port(p) || own_ports.contains(&p)) {
                Some(n) => {
                    own_ports.insert(n);
                    p.insert("nodePort".into(), json!(n));
                }
                None => causes.push(Cause::invalid(
                    format!("spec.ports[{i}].nodePort"),
                    &json!(0),
                    "failed to allocate a nodePort: range is full",
                )),
            },
            None => {}
        }
    }
    if spec.contains_key("ports") || !ports.is_empty() {
        spec.insert("ports".into(), Value::Array(ports));
    }
    held.taken.extend(own_ports);

    // Health check node port: LoadBalancer with externalTrafficPolicy Local.
    let local = str_of(spec, "externalTrafficPolicy") == Some("Local");
    if kind == "LoadBalancer" && local {
        let given = spec
            .get("healthCheckNodePort")
            .and_then(Value::as_u64)
            .filter(|n| *n != 0)
            .or_else(|| old_spec.get("healthCheckNodePort").and_then(Value::as_u64));
        match given {
            Some(n)
                if held.port(n)
                    && Some(n) != old_spec.get("healthCheckNodePort").and_then(Value::as_u64) =>
            {
                causes.push(Cause::invalid(
                    "spec.healthCheckNodePort",
                    &json!(n),
                    "provided port is already allocated",
                ));
            }
            Some(n) => {
                spec.insert("healthCheckNodePort".into(), json!(n));
            }
            None => {
                if let Some(n) = allocate_port(|p| held.port(p)) {
                    spec.insert("healthCheckNodePort".into(), json!(n));
                }
            }
        }
    } else {
        spec.remove("healthCheckNodePort");
    }

    // A Service that stops being a LoadBalancer loses its load balancer status.
    if old_type.as_deref() == Some("LoadBalancer") && kind != "LoadBalancer" {
        ensure_object(new, "status").insert("loadBalancer".into(), json!({}));
    }
}

fn service_status(new: &mut Value, causes: &mut Vec<Cause>) {
    let Some(ingress) = new
        .pointer_mut("/status/loadBalancer/ingress")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for (i, entry) in ingress.iter_mut().enumerate() {
        let Some(e) = entry.as_object_mut() else {
            continue;
        };
        let ip = e
            .get("ip")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(ip) = ip {
            if ip.parse::<IpAddr>().is_err() {
                causes.push(Cause::invalid(
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    &json!(ip),
                    "must be a valid IP address",
                ));
            }
        }
        match e.get("ipMode").and_then(Value::as_str) {
            None if ip.is_some() => {
                e.insert("ipMode".into(), json!("VIP"));
            }
            None => {}
            Some(mode) => {
                if mode != "VIP" && mode != "Proxy" {
                    causes.push(Cause::unsupported(
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        &json!(mode),
                        &["Proxy", "VIP"],
                    ));
                } else if ip.is_none() {
                    causes.push(Cause::forbidden(
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        "may not be specified when `ip` is not set",
                    ));
                }
            }
        }
    }
}

fn event(new: &Value, causes: &mut Vec<Cause>) {
    let text = |key: &str| new.get(key).and_then(Value::as_str).unwrap_or_default();
    if new.get("eventTime").is_none_or(Value::is_null) {
        causes.push(Cause::required("eventTime", ""));
    }
    if text("reportingController").is_empty() {
        causes.push(Cause::required("reportingController", ""));
    }
    for key in ["reportingInstance", "action", "reason"] {
        let value = text(key);
        if value.is_empty() {
            causes.push(Cause::required(key, ""));
        } else if value.len() > 128 {
            causes.push(Cause::too_long(key, 128));
        }
    }
    if text("reportingController").len() > 128 {
        causes.push(Cause::too_long("reportingController", 128));
    }
    if text("note").len() > 1024 {
        causes.push(Cause::too_long("note", 1024));
    }
    let kind = text("type");
    if kind != "Normal" && kind != "Warning" {
        causes.push(Cause::unsupported(
            "type",
            &json!(kind),
            &["Normal", "Warning"],
        ));
    }
}
