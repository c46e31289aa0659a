//! The sysctls reconciler: what a data director's forwarding needs from
//! the kernel of its network namespace.
//!
//! - no ARP answers from the kernel for VIPs (`arp_ignore=1`, and
//!   `arp_announce=2` so that its own requests never carry a VIP);
//! - IPv4 and IPv6 forwarding;
//! - conntrack for IPVS (`net.ipv4.vs.conntrack=1`), which the SNAT table
//!   needs;
//! - conntrack that takes up a TCP connection in the middle without
//!   judging its sequence numbers (`nf_conntrack_tcp_be_liberal=1`): after a
//!   failover the new owner sees a connection's packets for the first time
//!   and must source-NAT them as the old owner did, not drop them as out of
//!   window.

use std::collections::BTreeMap;

use super::driver::{Desired, OpError, Reconciler};

/// Sysctl path under /proc/sys -> value.
pub type Sysctls = BTreeMap<String, String>;

/// The sysctls a data director on `interface` needs.
pub fn desired(interface: &str) -> Sysctls {
    [
        ("net/ipv4/conf/all/arp_ignore".to_string(), "1"),
        (format!("net/ipv4/conf/{interface}/arp_ignore"), "1"),
        ("net/ipv4/conf/all/arp_announce".to_string(), "2"),
        (format!("net/ipv4/conf/{interface}/arp_announce"), "2"),
        ("net/ipv4/ip_forward".to_string(), "1"),
        ("net/ipv4/vs/conntrack".to_string(), "1"),
        ("net/netfilter/nf_conntrack_tcp_be_liberal".to_string(), "1"),
        ("net/ipv6/conf/all/forwarding".to_string(), "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

/// The sysctls of `desired` whose value differs in `observed`, in path order.
pub fn plan(desired: &Sysctls, observed: &Sysctls) -> Vec<(String, String)> {
    desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The sysctls reconciler.
#[derive(Debug)]
pub struct Sysctl {
    interface: String,
}

impl Sysctl {
    /// A reconciler for a data director on `interface`.
    pub fn new(interface: String) -> Self {
        Sysctl { interface }
    }
}

impl Reconciler for Sysctl {
    type State = Sysctls;
    type Op = (String, String);

    fn name(&self) -> &'static str {
        "sysctl"
    }

    fn desired(&mut self) -> Desired<Sysctls> {
        Desired::steady(desired(&self.interface))
    }

    fn plan(&self, desired: &Sysctls, observed: &Sysctls) -> Vec<(String, String)> {
        plan(desired, observed)
    }

    async fn observe(&mut self) -> Result<Sysctls, OpError> {
        Ok(desired(&self.interface)
            .into_keys()
            .filter_map(|k| {
                let v = std::fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
                Some((k, v.trim().to_string()))
            })
            .collect())
    }

    async fn apply(&mut self, ops: Vec<(String, String)>) -> Result<(), OpError> {
        // Every one is tried; the first failure is reported.
        let mut first = None;
        for (path, value) in ops {
            if let Err(e) = std::fs::write(format!("/proc/sys/{path}"), &value) {
                first.get_or_insert(OpError::new("setting sysctl", format!("{path}={value}"), e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_sysctls_are_written_and_then_nothing() {
        let want = desired("eth0");
        let mut kernel: Sysctls = want.clone();
        kernel.insert("net/ipv4/ip_forward".into(), "0".into());
        kernel.remove("net/ipv4/vs/conntrack");
        let ops = plan(&want, &kernel);
        assert_eq!(
            ops,
            vec![
                ("net/ipv4/ip_forward".to_string(), "1".to_string()),
                ("net/ipv4/vs/conntrack".to_string(), "1".to_string())
            ]
        );
        kernel.extend(ops);
        assert!(plan(&want, &kernel).is_empty());
    }
}
