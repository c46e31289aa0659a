//! `director status`: asks the daemon over its admin socket and prints its
//! view as tables (or JSON/YAML).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human tables.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The daemon's status document.
pub async fn fetch(socket: &Path) -> Result<Value, String> {
    request(socket, &serde_json::json!({"op": "status"})).await
}

/// Sends one request to the daemon's admin socket; its reply.
pub async fn request(socket: &Path, req: &Value) -> Result<Value, String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "director is not running here (no answer on the admin socket {}: {e})",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = req.to_string();
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("admin socket {}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("admin socket {}: {e}", socket.display()))?;
    serde_json::from_str(&line)
        .map_err(|e| format!("admin socket {}: bad reply: {e}", socket.display()))
}

/// "12.3s ago", "4m10s ago", "2h05m ago", or "-".
fn ago(v: &Value) -> String {
    let Some(ms) = v.as_u64() else {
        return "-".into();
    };
    let secs = ms / 1000;
    if secs < 60 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else if secs < 3600 {
        format!("{}m{:02}s ago", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m ago", secs / 3600, (secs % 3600) / 60)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// Renders the status document.
pub fn render(v: &Value, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Yaml => serde_saphyr::to_string(v).unwrap_or_default(),
        Format::Table => table(v),
    }
}

fn table(v: &Value) -> String {
    let mut o = String::new();
    let c = &v["cluster"];
    let _ = writeln!(
        o,
        "director {} (id {})   leader {} (id {})   term {}   applied {}   lease {}",
        s(&v["director"]["name"]),
        s(&v["director"]["id"]),
        s(&c["leader_name"]),
        s(&c["leader"]),
        s(&c["term"]),
        s(&c["applied_index"]),
        if v["lease"]["held"] == Value::Bool(true) {
            format!("held ({} ms left)", s(&v["lease"]["remaining_ms"]))
        } else {
            "not held".into()
        }
    );
    let _ = writeln!(o, "\nMEMBERS");
    let _ = writeln!(
        o,
        "  {:<6} {:<4} {:<8} {:<22} {:<7} {:<9} LAST CONTACT",
        "NAME", "ID", "ROLE", "ADDRESS", "LEADER", "DRAINING"
    );
    for m in c["members"].as_array().into_iter().flatten() {
        let yes = |f: &Value| if *f == Value::Bool(true) { "yes" } else { "" };
        let _ = writeln!(
            o,
            "  {:<6} {:<4} {:<8} {:<22} {:<7} {:<9} {}",
            s(&m["name"]),
            s(&m["id"]),
            s(&m["role"]),
            s(&m["address"]),
            yes(&m["leader"]),
            yes(&m["draining"]),
            m["last_contact_ms"]
                .as_u64()
                .map(|ms| format!("{ms} ms ago"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(o, "\nVIPS");
    let _ = writeln!(
        o,
        "  {:<26} {:<18} {:<8} {:<6} {:<12} {:<12} HELD HERE",
        "VIP", "SERVICE", "OWNER", "EPOCH", "SINCE", "ANNOUNCED"
    );
    for x in v["vips"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<26} {:<18} {:<8} {:<6} {:<12} {:<12} {}",
            s(&x["vip"]),
            s(&x["service"]),
            s(&x["owner_name"]),
            s(&x["epoch"]),
            ago(&x["since_ms_ago"]),
            ago(&x["last_announced_ms_ago"]),
            if x["held_here"] == Value::Bool(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    let _ = writeln!(o, "\nSERVICES");
    for x in v["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {} {} {}{}",
            s(&x["service"]),
            s(&x["scheduler"]),
            s(&x["forwarding"]),
            if x["programmed"] == Value::Bool(true) {
                ""
            } else {
                "   (not programmed here)"
            }
        );
        for b in x["backends"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "    -> {:<26} weight {:<4} active {:<6} inactive {}",
                format!("{}:{}", s(&b["address"]), s(&b["port"])),
                s(&b["weight"]),
                s(&b["active"]),
                s(&b["inactive"])
            );
        }
    }
    o
}
