//! The Prometheus endpoint (`metrics:` in the configuration): `GET /metrics`
//! in the text exposition format, rendered from the same document as
//! `director status`, so the two never disagree.

use std::fmt::Write as _;

use serde_json::Value;

/// One metric family: its help and type lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value, escaped as the exposition format wants.
fn label(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// The metrics text of a status document.
pub fn render(status: &Value) -> String {
    let mut o = String::new();
    let c = &status["cluster"];
    let me = &status["director"]["id"];
    family(
        &mut o,
        "director_leader",
        "gauge",
        "1 if this director is the Raft leader.",
        &[(String::new(), f64::from(u8::from(c["leader"] == *me)))],
    );
    family(
        &mut o,
        "director_raft_term",
        "gauge",
        "The current Raft term.",
        &[(String::new(), num(&c["term"]))],
    );
    family(
        &mut o,
        "director_raft_applied_index",
        "gauge",
        "The last log index applied here.",
        &[(String::new(), num(&c["applied_index"]))],
    );
    family(
        &mut o,
        "director_lease_held",
        "gauge",
        "1 while this director holds its ownership lease.",
        &[(String::new(), num(&status["lease"]["held"]))],
    );
    let members: Vec<&Value> = c["members"].as_array().into_iter().flatten().collect();
    let contact: Vec<(String, f64)> = members
        .iter()
        .filter(|m| m["last_contact_ms"].is_number())
        .map(|m| {
            (
                format!("member=\"{}\"", label(&m["name"])),
                num(&m["last_contact_ms"]) / 1000.0,
            )
        })
        .collect();
    family(
        &mut o,
        "director_member_last_contact_seconds",
        "gauge",
        "Seconds since the leader last heard from each member (on the leader).",
        &contact,
    );
    let draining: Vec<(String, f64)> = members
        .iter()
        .map(|m| {
            (
                format!("member=\"{}\"", label(&m["name"])),
                num(&m["draining"]),
            )
        })
        .collect();
    family(
        &mut o,
        "director_member_draining",
        "gauge",
        "1 for a member that is draining.",
        &draining,
    );
    let vips: Vec<&Value> = status["vips"].as_array().into_iter().flatten().collect();
    let held: Vec<(String, f64)> = vips
        .iter()
        .map(|v| {
            (
                format!(
                    "vip=\"{}\",service=\"{}\",owner=\"{}\"",
                    label(&v["vip"]),
                    label(&v["service"]),
                    label(&v["owner_name"])
                ),
                num(&v["held_here"]),
            )
        })
        .collect();
    family(
        &mut o,
        "director_vip_held",
        "gauge",
        "1 if this director holds the VIP now (owner with a lease).",
        &held,
    );
    let epochs: Vec<(String, f64)> = vips
        .iter()
        .map(|v| (format!("vip=\"{}\"", label(&v["vip"])), num(&v["epoch"])))
        .collect();
    family(
        &mut o,
        "director_vip_epoch",
        "counter",
        "The VIP's ownership epoch (raised by every move).",
        &epochs,
    );
    let mut active = Vec::new();
    let mut inactive = Vec::new();
    for s in status["services"].as_array().into_iter().flatten() {
        for b in s["backends"].as_array().into_iter().flatten() {
            let l = format!(
                "service=\"{}\",backend=\"{}:{}\"",
                label(&s["service"]),
                label(&b["address"]),
                label(&b["port"])
            );
            active.push((l.clone(), num(&b["active"])));
            inactive.push((l, num(&b["inactive"])));
        }
    }
    family(
        &mut o,
        "director_backend_active_connections",
        "gauge",
        "Active connections per backend, from the kernel's IPVS table.",
        &active,
    );
    family(
        &mut o,
        "director_backend_inactive_connections",
        "gauge",
        "Inactive connections per backend, from the kernel's IPVS table.",
        &inactive,
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_becomes_metrics() {
        let status = json!({
            "director": {"id": 2, "name": "d2"},
            "cluster": {"leader": 2, "term": 7, "applied_index": 42, "members": [
                {"name": "d1", "last_contact_ms": 120, "draining": false},
                {"name": "d2", "last_contact_ms": null, "draining": true},
            ]},
            "lease": {"held": true},
            "vips": [{"vip": "10.10.0.200", "service": "static/web", "owner_name": "d2", "epoch": 3, "held_here": true}],
            "services": [{"service": "TCP 10.10.0.200:80", "backends": [
                {"address": "10.10.0.21", "port": 30080, "active": 5, "inactive": 1}
            ]}],
        });
        let m = render(&status);
        assert!(m.contains("director_leader 1\n"), "{m}");
        assert!(m.contains("director_raft_term 7\n"), "{m}");
        assert!(
            m.contains("director_member_last_contact_seconds{member=\"d1\"} 0.12\n"),
            "{m}"
        );
        assert!(
            !m.contains("director_member_last_contact_seconds{member=\"d2\"}"),
            "{m}"
        );
        assert!(
            m.contains("director_member_draining{member=\"d2\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains(
                "director_vip_held{vip=\"10.10.0.200\",service=\"static/web\",owner=\"d2\"} 1\n"
            ),
            "{m}"
        );
        assert!(
            m.contains("director_backend_active_connections{service=\"TCP 10.10.0.200:80\",backend=\"10.10.0.21:30080\"} 5\n"),
            "{m}"
        );
        assert!(m.contains("# TYPE director_vip_epoch counter\n"), "{m}");
    }
}
