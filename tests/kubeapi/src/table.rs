//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, with the columns the
//! apiserver's printers give the served kinds.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// What a row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// `None`.
    Nothing,
    /// `Metadata` (the default): a PartialObjectMetadata.
    Metadata,
    /// `Object`: the whole object.
    Object,
}

impl Include {
    /// From the `includeObject` query parameter.
    pub fn from_param(param: Option<&str>) -> Self {
        match param {
            Some("None") => Include::Nothing,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Human age as kubectl prints it (`45s`, `3m12s`, `5h`, `2d3h`).
fn age(timestamp: Option<&str>) -> String {
    let Some(then) = timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let secs = jiff::Timestamp::now().as_second() - then.as_second();
    if secs < 0 {
        return "<invalid>".to_string();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        _ if h < 1 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

fn list<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Column names, types and priorities (1: only with `-o wide`).
fn columns(rt: &ResourceType) -> Vec<(&'static str, &'static str, u8)> {
    let mut cols = vec![("Name", "string", 0)];
    cols.extend(match rt.kind {
        "Service" => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "Node" => vec![
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
        ],
        "Namespace" => vec![("Status", "string", 0), ("Age", "string", 0)],
        "EndpointSlice" => vec![
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "Event" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _ => vec![("Age", "string", 0)],
    });
    cols
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = text(o, "/metadata/name").to_string();
    let created = age(o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str));
    let rest: Vec<String> = match rt.kind {
        "Service" => {
            let kind = text(o, "/spec/type");
            let mut external: Vec<String> = list(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                })
                .map(str::to_string)
                .collect();
            external.extend(
                list(o, "/spec/externalIPs")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            );
            let external = match (kind, external.is_empty()) {
                ("LoadBalancer", true) => "<pending>".to_string(),
                ("ExternalName", _) => text(o, "/spec/externalName").to_string(),
                _ => or_none(external.join(",")),
            };
            let ports: Vec<String> = list(o, "/spec/ports")
                .iter()
                .map(|p| {
                    let port = p.get("port").map(Value::to_string).unwrap_or_default();
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort") {
                        Some(n) => format!("{port}:{n}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect();
            let selector: Vec<String> = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                kind.to_string(),
                or_none(text(o, "/spec/clusterIP").to_string()),
                external,
                or_none(ports.join(",")),
                created,
                or_none(selector.join(",")),
            ]
        }
        "Node" => {
            let ready = list(o, "/status/conditions")
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                .and_then(|c| c.get("status").and_then(Value::as_str));
            let mut status = match ready {
                Some("True") => "Ready",
                Some("False") => "NotReady",
                _ => "Unknown",
            }
            .to_string();
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            let internal = list(o, "/status/addresses")
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .unwrap_or_default();
            vec![
                status,
                or_none(roles.join(",")),
                created,
                text(o, "/status/nodeInfo/kubeletVersion").to_string(),
                or_none(internal.to_string()),
            ]
        }
        "Namespace" => vec![text(o, "/status/phase").to_string(), created],
        "EndpointSlice" => {
            let ports: Vec<String> = list(o, "/ports")
                .iter()
                .filter_map(|p| p.get("port").map(Value::to_string))
                .collect();
            let addresses: Vec<&str> = list(o, "/endpoints")
                .iter()
                .flat_map(|e| list(e, "/addresses"))
                .filter_map(Value::as_str)
                .collect();
            vec![
                text(o, "/addressType").to_string(),
                or_none(ports.join(",")),
                or_none(addresses.join(",")),
                created,
            ]
        }
        "Event" => {
            let last = [
                "/series/lastObservedTime",
                "/lastTimestamp",
                "/eventTime",
                "/deprecatedLastTimestamp",
            ]
            .iter()
            .find_map(|p| o.pointer(p).and_then(Value::as_str));
            let regarding = o.get("regarding").or_else(|| o.get("involvedObject"));
            let object = regarding.map_or(String::new(), |r| {
                format!("{}/{}", text(r, "/kind").to_lowercase(), text(r, "/name"))
            });
            let message = o
                .get("note")
                .or_else(|| o.get("message"))
                .and_then(Value::as_str);
            vec![
                age(last),
                text(o, "/type").to_string(),
                text(o, "/reason").to_string(),
                object,
                message.unwrap_or_default().to_string(),
            ]
        }
        _ => vec![created],
    };
    std::iter::once(name)
        .chain(rest)
        .map(Value::String)
        .collect()
}

fn row(rt: &ResourceType, object: &Value, include: Include) -> Value {
    let mut row = json!({"cells": cells(rt, object)});
    let attached = match include {
        Include::Nothing => None,
        Include::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
        Include::Object => Some(object.clone()),
    };
    if let (Some(map), Some(attached)) = (row.as_object_mut(), attached) {
        map.insert("object".into(), attached);
    }
    row
}

/// A Table of these objects; `metadata` is the list's (resourceVersion, continue).
pub fn table(rt: &ResourceType, objects: &[Value], metadata: Value, include: Include) -> Value {
    let definitions: Vec<Value> = columns(rt)
        .into_iter()
        .map(|(name, kind, priority)| {
            json!({
                "name": name,
                "type": kind,
                "format": if name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(rt, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SERVICES;

    #[test]
    fn service_row_shows_addresses_and_ports() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.10.0.240"}]}}
        });
        let cells = cells(&SERVICES, &svc);
        assert_eq!(
            &cells[..5],
            &[
                json!("web"),
                json!("LoadBalancer"),
                json!("10.43.0.10"),
                json!("10.10.0.240"),
                json!("80:30080/TCP")
            ]
        );
        let pending = json!({"metadata": {"name": "p"}, "spec": {"type": "LoadBalancer"}});
        assert_eq!(cells_of(&pending)[3], json!("<pending>"));
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }

    fn cells_of(o: &Value) -> Vec<Value> {
        cells(&SERVICES, o)
    }

    #[test]
    fn ages_read_like_kubectl() {
        let at = |secs: i64| {
            let t =
                jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - secs).unwrap();
            age(Some(&t.to_string()))
        };
        assert_eq!(at(5), "5s");
        assert_eq!(at(190), "3m10s");
        assert_eq!(at(1800), "30m");
        assert_eq!(at(3 * 3600), "3h");
        assert_eq!(at(3 * 86400 + 3600), "3d1h");
    }
}
