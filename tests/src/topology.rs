//! The lab's fixed address plan.
//!
//! Every lab host sits on one bridged LAN that exists only inside the lab's
//! network namespaces. The plan is a contract: scripts outside the repository
//! use these names and addresses, so they only ever grow.
//!
//! | host | IPv4 | IPv6 | MAC |
//! |---|---|---|---|
//! | `d1`..`d8` (directors) | 10.10.0.11..18 | fd10:10::11..18 | 02:10:00:00:00:0b.. |
//! | `w1` (witness) | 10.10.0.19 | fd10:10::19 | 02:10:00:00:00:13 |
//! | `n1`..`n50` (nodes) | 10.10.0.21..70 | fd10:10::21..70 | 02:10:00:00:00:15.. |
//! | `client` | 10.10.0.100 | fd10:10::100 | 02:10:00:00:00:64 |
//! | VIP range | 10.10.0.200..239 | fd10:10::200..239 | |
//!
//! The IPv6 host part is written with the same digits as the IPv4 last octet.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The LAN's IPv4 prefix length.
pub const LAN_V4_PREFIX_LEN: u8 = 24;
/// The LAN's IPv6 prefix length.
pub const LAN_V6_PREFIX_LEN: u8 = 64;
/// The LAN's IPv4 network, as text.
pub const LAN_V4: &str = "10.10.0.0/24";
/// The LAN's IPv6 network, as text.
pub const LAN_V6: &str = "fd10:10::/64";
/// TCP port of every node's HTTP responder (the Kubernetes NodePort stand-in).
pub const NODEPORT_HTTP: u16 = 30080;
/// TCP port of every node's plain TCP responder: it writes the node's name, then
/// echoes until the client closes.
pub const NODEPORT_TCP: u16 = 30081;
/// UDP port of every node's echo responder: the reply is the node's name, a
/// space, then the datagram received.
pub const NODEPORT_UDP: u16 = 30080;
/// TCP port of every node's stand-in for kube-proxy's health endpoint
/// (kube-proxy's default `healthzBindAddress` port): `GET /healthz` answers
/// `200 OK` with a small JSON body (`lastUpdated`, `currentTime`,
/// `nodeEligible`), or `503 Service Unavailable` while the node is marked
/// failing (`labnet serve --healthz-fail-file`, set by `cargo xtask lab node
/// healthz fail|ok nN` and `Lab::set_node_healthz`); any other path answers
/// `404`.
pub const KUBE_PROXY_HEALTHZ: u16 = 10256;
/// Largest number of directors a lab may have.
pub const MAX_DIRECTORS: u8 = 8;
/// Largest number of node hosts a lab may have.
pub const MAX_NODES: u8 = 50;
/// Number of addresses in the VIP range.
pub const VIP_COUNT: u8 = 40;
/// First last-octet of the VIP range.
const VIP_FIRST_OCTET: u8 = 200;

/// What a lab host stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A director host (`d1`..): runs IPVS and holds VIPs.
    Director,
    /// The witness (`w1`): takes part in consensus only.
    Witness,
    /// A Kubernetes node stand-in (`n1`..): runs the NodePort responders.
    Node,
    /// The client (`client`): sends traffic to the VIPs.
    Client,
    /// The Kubernetes API server (`api`, with `lab up --kube`).
    Api,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Director => "director",
            Role::Witness => "witness",
            Role::Node => "node",
            Role::Client => "client",
            Role::Api => "api",
        })
    }
}

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// What the host stands for.
    pub role: Role,
    /// 1-based index among hosts of the same role (always 1 for the client).
    pub index: u8,
}

impl Host {
    /// Director `d<index>`.
    pub fn director(index: u8) -> Self {
        Host {
            role: Role::Director,
            index,
        }
    }

    /// Node `n<index>`.
    pub fn node(index: u8) -> Self {
        Host {
            role: Role::Node,
            index,
        }
    }

    /// The witness `w1`.
    pub fn witness() -> Self {
        Host {
            role: Role::Witness,
            index: 1,
        }
    }

    /// The client.
    pub fn client() -> Self {
        Host {
            role: Role::Client,
            index: 1,
        }
    }

    /// The Kubernetes API server `api`.
    pub fn api() -> Self {
        Host {
            role: Role::Api,
            index: 1,
        }
    }

    /// Parses a host name (`d2`, `n1`, `w1`, `client`, `api`).
    pub fn parse(name: &str) -> Option<Self> {
        if name == "client" {
            return Some(Host::client());
        }
        if name == "api" {
            return Some(Host::api());
        }
        let (role, digits) = match name.split_at_checked(1)? {
            ("d", rest) => (Role::Director, rest),
            ("n", rest) => (Role::Node, rest),
            ("w", rest) => (Role::Witness, rest),
            _ => return None,
        };
        if digits.starts_with('0') {
            return None;
        }
        let index: u8 = digits.parse().ok()?;
        let max = match role {
            Role::Director => MAX_DIRECTORS,
            Role::Node => MAX_NODES,
            Role::Witness => 1,
            Role::Client | Role::Api => 1,
        };
        (1..=max).contains(&index).then_some(Host { role, index })
    }

    /// The host's name: `d1`, `n2`, `w1` or `client`.
    pub fn name(&self) -> String {
        match self.role {
            Role::Director => format!("d{}", self.index),
            Role::Node => format!("n{}", self.index),
            Role::Witness => format!("w{}", self.index),
            Role::Client => "client".to_string(),
            Role::Api => "api".to_string(),
        }
    }

    /// Last octet of the host's IPv4 address; also its IPv6 host part's digits.
    fn octet(&self) -> u8 {
        match self.role {
            Role::Director => 10 + self.index,
            Role::Witness => 19,
            Role::Node => 20 + self.index,
            Role::Client => 100,
            Role::Api => 5,
        }
    }

    /// The host's IPv4 address on the LAN.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 10, 0, self.octet())
    }

    /// The host's IPv6 address on the LAN.
    pub fn ipv6(&self) -> Ipv6Addr {
        decimal_suffix_v6(self.octet())
    }

    /// The MAC address of the host's LAN interface.
    pub fn mac(&self) -> [u8; 6] {
        [0x02, 0x10, 0, 0, 0, self.octet()]
    }

    /// The MAC address as `ip link` prints it.
    pub fn mac_string(&self) -> String {
        let m = self.mac();
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `fd10:10::<n>` where `<n>` is written with the decimal digits of `n`.
fn decimal_suffix_v6(n: u8) -> Ipv6Addr {
    // "21" -> 0x21: the decimal digits read as hexadecimal.
    let digits = n.to_string();
    let group = u16::from_str_radix(&digits, 16).unwrap_or(0);
    Ipv6Addr::new(0xfd10, 0x10, 0, 0, 0, 0, 0, group)
}

/// The `i`-th IPv4 VIP of the lab's range (0-based), if it is in range.
pub fn vip_v4(i: u8) -> Option<Ipv4Addr> {
    (i < VIP_COUNT).then(|| Ipv4Addr::new(10, 10, 0, VIP_FIRST_OCTET + i))
}

/// The `i`-th IPv6 VIP of the lab's range (0-based), if it is in range.
pub fn vip_v6(i: u8) -> Option<Ipv6Addr> {
    (i < VIP_COUNT).then(|| decimal_suffix_v6(VIP_FIRST_OCTET + i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in [
            Host::director(1),
            Host::director(8),
            Host::node(50),
            Host::witness(),
            Host::client(),
        ] {
            assert_eq!(Host::parse(&h.name()), Some(h));
        }
        for bad in ["d0", "d9", "n51", "w2", "x1", "d", "d01", "clients", ""] {
            assert_eq!(Host::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn documented_addresses() {
        assert_eq!(Host::director(1).ipv4().to_string(), "10.10.0.11");
        assert_eq!(Host::director(1).ipv6().to_string(), "fd10:10::11");
        assert_eq!(Host::witness().ipv4().to_string(), "10.10.0.19");
        assert_eq!(Host::node(2).ipv4().to_string(), "10.10.0.22");
        assert_eq!(Host::node(50).ipv6().to_string(), "fd10:10::70");
        assert_eq!(Host::client().ipv6().to_string(), "fd10:10::100");
        assert_eq!(Host::client().mac_string(), "02:10:00:00:00:64");
        assert_eq!(
            vip_v4(0).map(|a| a.to_string()).as_deref(),
            Some("10.10.0.200")
        );
        assert_eq!(
            vip_v6(39).map(|a| a.to_string()).as_deref(),
            Some("fd10:10::239")
        );
        assert_eq!(vip_v4(40), None);
    }
}
