//! The lab's director configs. For the lab of three directors they are the
//! files kept in the repository (`tests/lab/d1.yaml`..), which a test keeps
//! identical to what this writes.

use std::fmt::Write as _;
use std::path::Path;

use crate::lab::LabSpec;
use crate::topology::{self, Host, Role};

/// The Raft transport port of every director.
pub const RAFT_PORT: u16 = 7946;

/// The config of director (or witness) `host` in a lab of shape `spec`, with
/// its state under `data_dir`.
pub fn director_config(spec: &LabSpec, host: &Host, data_dir: &Path) -> String {
    let voters: Vec<Host> = spec
        .hosts()
        .into_iter()
        .filter(|h| matches!(h.role, Role::Director | Role::Witness))
        .collect();
    let id = |h: &Host| match h.role {
        Role::Witness => 9,
        _ => u64::from(h.index),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# The lab's director {} (see docs/lab.md for the address plan and",
        host.name()
    );
    let _ = writeln!(s, "# docs/configuration.md for every field).");
    let _ = writeln!(s, "id: {}", id(host));
    let _ = writeln!(s, "peers:");
    for v in &voters {
        let role = if v.role == Role::Witness {
            ", role: witness"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  - {{id: {}, name: {}, address: \"{}:{RAFT_PORT}\"{role}}}",
            id(v),
            v.name(),
            v.ipv4()
        );
    }
    let _ = writeln!(s, "data_dir: {}", data_dir.display());
    s.push_str("interface: eth0\n");
    s.push_str("# The lab runs inside private namespaces; production uses tls: {ca, cert, key}.\n");
    s.push_str("insecure: true\n");
    // Relaxed for the lab VM, which runs under software emulation several
    // times slower than hardware (docs/lab.md); production defaults are
    // tighter (docs/fencing.md).
    s.push_str("# Relaxed for the lab VM (software emulation is several times slower than\n# hardware); the defaults are heartbeat 50, election 150..300, lease 600.\n");
    s.push_str("timing:\n  heartbeat_ms: 150\n  election_min_ms: 1000\n  election_max_ms: 2000\n  lease_ms: 3000\n  margin_ms: 300\n  renew_ms: 300\n");
    let _ = writeln!(s, "admin_socket: {}", data_dir.join("admin.sock").display());
    let _ = writeln!(s, "metrics: \"{}:9469\"", host.ipv4());
    s.push_str("announce: {count: 5, interval_ms: 200, refresh_s: 0}\n");
    let first = topology::vip_v4(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let last = topology::vip_v4(topology::VIP_COUNT - 1)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let first6 = topology::vip_v6(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let last6 = topology::vip_v6(topology::VIP_COUNT - 1)
        .map(|a| a.to_string())
        .unwrap_or_default();
    s.push_str("pools:\n  - name: lab\n");
    let _ = writeln!(
        s,
        "    addresses: [\"{first}-{last}\", \"{first6}-{last6}\"]"
    );
    s.push_str("defaults:\n  scheduler: rr\n  forwarding: nat\n");
    s.push_str("services:\n");
    s.push_str("  # The lab's HTTP service: the first address of the VIP range, port 80,\n");
    s.push_str("  # balanced over the node hosts' NodePort.\n");
    let _ = writeln!(s, "  - name: web\n    vip: {first}\n    scheduler: rr\n    ports:\n      - {{port: 80, protocol: tcp}}");
    let backends: Vec<String> = (1..=spec.nodes)
        .map(|i| format!("\"{}:{}\"", Host::node(i).ipv4(), topology::NODEPORT_HTTP))
        .collect();
    let _ = writeln!(s, "    backends: [{}]", backends.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_configs_are_what_the_lab_writes() {
        let spec = LabSpec::new(3, 2);
        for i in 1..=3u8 {
            let host = Host::director(i);
            let dir = std::path::PathBuf::from(format!("/run/director-lab/d{i}"));
            let ours = director_config(&spec, &host, &dir);
            let path = format!("{}/lab/d{i}.yaml", env!("CARGO_MANIFEST_DIR"));
            let file = std::fs::read_to_string(&path).unwrap();
            assert_eq!(ours, file, "{path} differs from the generated config");
        }
    }
}
