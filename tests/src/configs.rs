//! The lab's director configs. For the lab of three directors they are the
//! files kept in the repository (`tests/lab/d1.yaml`..), which a test keeps
//! identical to what this writes.

use std::fmt::Write as _;
use std::path::Path;

use crate::lab::LabSpec;
use crate::topology::{self, Host, Role};

/// The Raft transport port of every director.
pub const RAFT_PORT: u16 = 7946;

/// Which timing the lab's directors run with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimingProfile {
    /// Relaxed for the software-emulated VM: robust tests (the repo's configs).
    #[default]
    Lab,
    /// The daemon's defaults (no `timing` block).
    Default,
    /// Tight timing for a quiet LAN, as in the failover benchmark.
    Tuned,
}

impl TimingProfile {
    /// The profile of that name.
    pub fn parse(name: &str) -> Option<TimingProfile> {
        match name {
            "lab" => Some(TimingProfile::Lab),
            "default" => Some(TimingProfile::Default),
            "tuned" => Some(TimingProfile::Tuned),
            _ => None,
        }
    }

    /// The config's `timing` block for this profile.
    pub fn yaml(self) -> &'static str {
        match self {
            TimingProfile::Lab => "# Relaxed for the lab VM (software emulation is several times slower than\n# hardware); the defaults are heartbeat 40, election 100..200, lease 300.\ntiming:\n  heartbeat_ms: 150\n  election_min_ms: 1000\n  election_max_ms: 2000\n  lease_ms: 3000\n  margin_ms: 300\n  renew_ms: 300\n",
            TimingProfile::Default => "# The daemon's default timing (docs/configuration.md).\n",
            TimingProfile::Tuned => "# Tuned for a quiet LAN (docs/benchmarks.md).\ntiming:\n  heartbeat_ms: 20\n  election_min_ms: 50\n  election_max_ms: 80\n  lease_ms: 140\n  margin_ms: 20\n  renew_ms: 20\n",
        }
    }
}

/// The config of director (or witness) `host` in a lab of shape `spec`, with
/// its state under `data_dir`.
pub fn director_config(spec: &LabSpec, host: &Host, data_dir: &Path) -> String {
    director_config_with_services(spec, host, data_dir, "", &lab_services(spec))
}

/// The same config with `pools` (YAML list items, each line indented as under
/// `pools:`) after the lab's pool, and `services` (the same) instead of the
/// lab's two HTTP services: for generated configs such as the scale
/// benchmark's.
pub fn director_config_with_services(
    spec: &LabSpec,
    host: &Host,
    data_dir: &Path,
    pools: &str,
    services: &str,
) -> String {
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
    // The lab profile is relaxed for the VM, which runs under software
    // emulation several times slower than hardware (docs/lab.md).
    s.push_str(spec.timing.yaml());
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
    s.push_str(pools);
    s.push_str("defaults:\n  scheduler: rr\n  forwarding: nat\n");
    s.push_str("services:\n");
    s.push_str(services);
    s
}

/// The lab's static services: HTTP on port 80 at the first IPv4 and the
/// first IPv6 address of the VIP range, over every node's NodePort.
fn lab_services(spec: &LabSpec) -> String {
    let first = topology::vip_v4(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let first6 = topology::vip_v6(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str("  # The lab's HTTP service: the first address of the VIP range, port 80,\n");
    s.push_str("  # balanced over the node hosts' NodePort.\n");
    let _ = writeln!(s, "  - name: web\n    vip: {first}\n    scheduler: rr\n    ports:\n      - {{port: 80, protocol: tcp}}");
    let backends: Vec<String> = (1..=spec.nodes)
        .map(|i| format!("\"{}:{}\"", Host::node(i).ipv4(), topology::NODEPORT_HTTP))
        .collect();
    let _ = writeln!(s, "    backends: [{}]", backends.join(", "));
    s.push_str("  # The same over IPv6: the first address of the IPv6 VIP range.\n");
    let _ = writeln!(s, "  - name: web6\n    vip: {first6}\n    scheduler: rr\n    ports:\n      - {{port: 80, protocol: tcp}}");
    let backends6: Vec<String> = (1..=spec.nodes)
        .map(|i| format!("\"[{}]:{}\"", Host::node(i).ipv6(), topology::NODEPORT_HTTP))
        .collect();
    let _ = writeln!(s, "    backends: [{}]", backends6.join(", "));
    s
}

/// The `kubernetes:` section of a lab director's config: the lab's API
/// server through `kubeconfig`, the default class.
pub fn kubernetes_section(kubeconfig: &Path) -> String {
    format!(
        "# The lab's Kubernetes API server on host api (docs/lab.md).\nkubernetes:\n  kubeconfig: {}\n",
        kubeconfig.display()
    )
}

/// The Node object of node host `host`: Ready, its lab addresses as
/// InternalIPs, as a kubelet would register it.
pub fn node_object(host: &Host) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": host.name(),
            "labels": {
                "kubernetes.io/hostname": host.name(),
                "kubernetes.io/os": "linux"
            }
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": host.ipv4().to_string()},
                {"type": "InternalIP", "address": host.ipv6().to_string()},
                {"type": "Hostname", "address": host.name()}
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
            ]
        }
    })
}

/// keepalived's VRRP config for director host `host` of the failover
/// benchmark: one instance holding the lab's first VIP on eth0, priority by
/// host index (d1 highest). `tuned` gives VRRPv3 with `advert_int 0.1`;
/// otherwise keepalived's defaults (VRRPv2, `advert_int 1`).
pub fn keepalived_config(host: &Host, tuned: bool) -> String {
    let vip = topology::vip_v4(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let priority = 250u32.saturating_sub(50 * u32::from(host.index));
    let (version, advert) = if tuned { (3, "0.1") } else { (2, "1") };
    format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
         vrrp_instance lab {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}/32 dev eth0\n  }}\n}}\n",
        name = host.name()
    )
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
