//! The Prometheus endpoint (`metrics:` in the configuration): `GET /metrics`
//! in the text exposition format, rendered from the same status document as
//! `director status`, so the two never disagree.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::status::{self, Status};
use super::Daemon;

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
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn one(v: bool) -> f64 {
    f64::from(u8::from(v))
}

/// The metrics text of a status document.
pub fn render(status: &Status) -> String {
    let mut o = String::new();
    let c = &status.cluster;
    let me = status.director.id;
    let gauge = |o: &mut String, name, help, v: f64| {
        family(o, name, "gauge", help, &[(String::new(), v)]);
    };
    gauge(
        &mut o,
        "director_leader",
        "1 if this director is the Raft leader.",
        one(c.leader == Some(me)),
    );
    gauge(
        &mut o,
        "director_raft_term",
        "The current Raft term.",
        c.term as f64,
    );
    gauge(
        &mut o,
        "director_raft_applied_index",
        "The last log index applied here.",
        c.applied_index.unwrap_or(0) as f64,
    );
    gauge(
        &mut o,
        "director_lease_held",
        "1 while this director holds its ownership lease.",
        one(status.lease.held),
    );
    let member = |name: &str| format!("member=\"{}\"", label(name));
    let contact: Vec<(String, f64)> = c
        .members
        .iter()
        .filter_map(|m| Some((member(&m.name), m.last_contact_ms? as f64 / 1000.0)))
        .collect();
    family(
        &mut o,
        "director_member_last_contact_seconds",
        "gauge",
        "Seconds since the leader last heard from each member (on the leader).",
        &contact,
    );
    let draining: Vec<(String, f64)> = c
        .members
        .iter()
        .map(|m| (member(&m.name), one(m.draining)))
        .collect();
    family(
        &mut o,
        "director_member_draining",
        "gauge",
        "1 for a member that is draining.",
        &draining,
    );
    let held: Vec<(String, f64)> = status
        .vips
        .iter()
        .map(|v| {
            (
                format!(
                    "vip=\"{}\",service=\"{}\",owner=\"{}\"",
                    label(&v.vip),
                    label(&v.service),
                    label(v.owner_name.as_deref().unwrap_or(""))
                ),
                one(v.held_here),
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
    let epochs: Vec<(String, f64)> = status
        .vips
        .iter()
        .map(|v| {
            (
                format!("vip=\"{}\"", label(&v.vip)),
                v.epoch.unwrap_or(0) as f64,
            )
        })
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
    let mut weight = Vec::new();
    let mut up = Vec::new();
    for s in &status.services {
        for b in &s.backends {
            let l = format!(
                "service=\"{}\",backend=\"{}:{}\"",
                label(&s.service),
                label(&b.address),
                b.port
            );
            active.push((l.clone(), f64::from(b.active)));
            inactive.push((l.clone(), f64::from(b.inactive)));
            weight.push((l.clone(), b.weight as f64));
            if let (Some(h @ ("up" | "down")), Some(check)) = (b.health.as_deref(), &b.health_check)
            {
                up.push((format!("{l},check=\"{}\"", label(check)), one(h == "up")));
            }
        }
    }
    family(
        &mut o,
        "director_backend_weight",
        "gauge",
        "Each backend's weight in this director's IPVS table (0 while its health check fails).",
        &weight,
    );
    family(
        &mut o,
        "director_backend_up",
        "gauge",
        "1 if the backend passes its health check here, 0 if it fails it (checked backends that have had a result).",
        &up,
    );
    if let Some(h) = &status.health {
        family(
            &mut o,
            "director_health_targets",
            "gauge",
            "Health-check targets (check and address:port) by state.",
            &[
                ("state=\"up\"".into(), h.up as f64),
                ("state=\"down\"".into(), h.down as f64),
                ("state=\"unknown\"".into(), h.unknown as f64),
            ],
        );
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
    if let Some(k) = &status.kubernetes {
        family(
            &mut o,
            "director_kubernetes_api_reachable",
            "gauge",
            "1 if the Kubernetes API server answers the watches.",
            &[(String::new(), one(k.api_reachable))],
        );
        family(
            &mut o,
            "director_kubernetes_api_state_seconds",
            "gauge",
            "Seconds since the API server became reachable or unreachable.",
            &[(
                String::new(),
                k.api_since_ms_ago.unwrap_or(0) as f64 / 1000.0,
            )],
        );
        family(
            &mut o,
            "director_kubernetes_services",
            "gauge",
            "Kubernetes Services with at least one VIP.",
            &[(String::new(), k.services.len() as f64)],
        );
    }
    let per = |f: &dyn Fn(&status::ReconcilerStatus) -> f64| -> Vec<(String, f64)> {
        status
            .reconcilers
            .iter()
            .map(|r| (format!("reconciler=\"{}\"", label(&r.name)), f(r)))
            .collect()
    };
    family(
        &mut o,
        "director_reconcile_operations_total",
        "counter",
        "Kernel operations applied by each reconciler.",
        &per(&|r| r.operations as f64),
    );
    family(
        &mut o,
        "director_reconcile_errors_total",
        "counter",
        "Reconcile passes that failed.",
        &per(&|r| r.errors as f64),
    );
    family(
        &mut o,
        "director_reconcile_resyncs_total",
        "counter",
        "Full reads of the kernel's state.",
        &per(&|r| r.resyncs as f64),
    );
    family(
        &mut o,
        "director_reconcile_drift_repairs_total",
        "counter",
        "Resyncs that found a change made behind the director's back and repaired it.",
        &per(&|r| r.drift_repairs as f64),
    );
    family(
        &mut o,
        "director_reconcile_last_pass_seconds",
        "gauge",
        "Duration of each reconciler's last pass.",
        &per(&|r| r.last_pass_us as f64 / 1e6),
    );
    gauge(
        &mut o,
        "director_announcements_sent_total",
        "Gratuitous ARPs and unsolicited neighbour advertisements sent.",
        status.announcements_sent as f64,
    );
    o
}

/// The health checker's counters and probe-duration histogram.
pub fn render_health(h: &crate::health::Health) -> String {
    use crate::health::DURATION_BUCKETS;
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = String::new();
    let s = &h.stats;
    family(
        &mut o,
        "director_health_checks_total",
        "counter",
        "Health-check probes run here, by result.",
        &[
            ("result=\"pass\"".into(), s.passed.load(Relaxed) as f64),
            ("result=\"fail\"".into(), s.failed.load(Relaxed) as f64),
        ],
    );
    family(
        &mut o,
        "director_health_transitions_total",
        "counter",
        "Changes of a health-check target between up and down.",
        &[(String::new(), s.transitions.load(Relaxed) as f64)],
    );
    let name = "director_health_check_duration_seconds";
    let _ = writeln!(o, "# HELP {name} How long health-check probes take.");
    let _ = writeln!(o, "# TYPE {name} histogram");
    let mut total = 0u64;
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        total += s.buckets[i].load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {total}");
    }
    total += s.buckets[DURATION_BUCKETS.len()].load(Relaxed);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(o, "{name}_sum {}", s.duration_us.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {total}");
    o
}

/// Serves `GET /metrics` on `addr` until stopped.
pub async fn serve(addr: SocketAddr, d: Daemon, mut stop: watch::Receiver<bool>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics; metrics are off");
            return;
        }
    };
    loop {
        let mut stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let d = d.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            // The request head; bodies are not read.
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf[got..]),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => got += n,
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let mut text = render(&status::build(&d).await);
                if let Some(h) = &d.health {
                    text.push_str(&render_health(h));
                }
                ("200 OK", text)
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_becomes_metrics() {
        let status: Status = serde_json::from_value(json!({
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
            "reconcilers": [{"name": "ipvs", "operations": 9}],
        }))
        .unwrap();
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
        assert!(
            m.contains("director_reconcile_operations_total{reconciler=\"ipvs\"} 9\n"),
            "{m}"
        );
    }
}
