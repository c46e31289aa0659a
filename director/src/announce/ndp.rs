//! Neighbour discovery for IPv6 VIPs: what ARP is for IPv4 (arp.rs).
//!
//! An IPv6 VIP is held as a `local` route on `lo` like an IPv4 one; the
//! kernel answers neighbour solicitations only for addresses configured on
//! the interface, so it never answers for a VIP. This process does, from a raw
//! ICMPv6 socket on the VIP interface, checking ownership and lease on every
//! solicitation, and sends unsolicited neighbour advertisements (override
//! flag set, to all-nodes) when it takes a VIP. To receive solicitations
//! (sent to the VIP's solicited-node multicast group) it joins that group
//! while it holds the VIP. The kernel fills in the ICMPv6 checksum; the hop
//! limit is 255, as RFC 4861 requires.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

/// ICMPv6 type of a neighbour solicitation.
pub const NEIGHBOR_SOLICITATION: u8 = 135;
/// ICMPv6 type of a neighbour advertisement.
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// All-nodes link-local multicast.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast group of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        (u16::from(o[14]) << 8) | u16::from(o[15]),
    )
}

/// A neighbour advertisement for `target` from `mac` (ICMPv6 message, the
/// checksum left for the kernel): `solicited` sets S; O is always set, so
/// the receiver replaces what it had.
pub fn advertisement(mac: [u8; 6], target: Ipv6Addr, solicited: bool) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = NEIGHBOR_ADVERTISEMENT;
    // Flags: R (0x80) no, S (0x40) if solicited, O (0x20) yes.
    m[4] = if solicited { 0x60 } else { 0x20 };
    m[8..24].copy_from_slice(&target.octets());
    // Option 2: target link-layer address, length 1 (8 octets).
    m[24] = 2;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// The target of a neighbour solicitation (an ICMPv6 message as a raw
/// ICMPv6 socket delivers it), if `m` is one.
pub fn solicitation_target(m: &[u8]) -> Option<Ipv6Addr> {
    if m.len() < 24 || m[0] != NEIGHBOR_SOLICITATION || m[1] != 0 {
        return None;
    }
    let t: [u8; 16] = m[8..24].try_into().ok()?;
    let target = Ipv6Addr::from(t);
    // A multicast target is invalid (RFC 4861 7.1.1).
    (!target.is_multicast()).then_some(target)
}

/// The raw ICMPv6 socket of the VIP interface.
#[derive(Debug)]
pub struct NdpSocket {
    sock: UdpSocket,
    ifindex: u32,
    joined: std::sync::Mutex<BTreeSet<Ipv6Addr>>,
}

impl NdpSocket {
    /// Opens it on `ifname`, with hop limit 255 and a read timeout so that a
    /// reader can stop.
    pub fn open(ifname: &str) -> std::io::Result<NdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?
            .trim()
            .parse()
            .map_err(|e| std::io::Error::other(format!("ifindex of {ifname}: {e}")))?;
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        s.bind_device(Some(ifname.as_bytes()))?;
        s.set_multicast_hops_v6(255)?;
        s.set_unicast_hops_v6(255)?;
        s.set_multicast_if_v6(ifindex)?;
        s.set_multicast_loop_v6(false)?;
        s.set_read_timeout(Some(super::READ_TIMEOUT))?;
        Ok(NdpSocket {
            sock: s.into(),
            ifindex,
            joined: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// The next neighbour solicitation: its source and target. None after
    /// the read timeout or for anything else.
    pub fn next_solicitation(&self) -> Option<(Ipv6Addr, Ipv6Addr)> {
        let mut buf = [0u8; 1500];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        let SocketAddr::V6(from) = from else {
            return None;
        };
        let target = solicitation_target(&buf[..n])?;
        Some((*from.ip(), target))
    }

    /// Answers a solicitation from `from` for `target` (duplicate address
    /// detection, from `::`, is answered to all-nodes, unsolicited).
    pub fn answer(&self, mac: [u8; 6], from: Ipv6Addr, target: Ipv6Addr) -> std::io::Result<()> {
        if from.is_unspecified() {
            return self.announce(mac, target);
        }
        self.send(&advertisement(mac, target, true), from)
    }

    /// An unsolicited advertisement of `target` to all nodes.
    pub fn announce(&self, mac: [u8; 6], target: Ipv6Addr) -> std::io::Result<()> {
        self.send(&advertisement(mac, target, false), ALL_NODES)
    }

    fn send(&self, m: &[u8], to: Ipv6Addr) -> std::io::Result<()> {
        // Link-local and multicast destinations need the interface.
        let scope = if to.is_multicast() || to.is_unicast_link_local() {
            self.ifindex
        } else {
            0
        };
        self.sock
            .send_to(m, SocketAddrV6::new(to, 0, 0, scope))
            .map(|_| ())
    }

    /// Joins the solicited-node groups of `held` and leaves those of VIPs no
    /// longer held, so that solicitations for held VIPs reach this socket.
    pub fn set_groups(&self, held: &BTreeSet<Ipv6Addr>) -> Result<(), JoinError> {
        let want: BTreeSet<Ipv6Addr> = held.iter().map(|v| solicited_node(*v)).collect();
        let mut joined = match self.joined.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        for g in joined.difference(&want).copied().collect::<Vec<_>>() {
            let _ = self.sock.leave_multicast_v6(&g, self.ifindex);
            joined.remove(&g);
        }
        for g in want.difference(&joined.clone()) {
            self.sock
                .join_multicast_v6(g, self.ifindex)
                .map_err(|source| JoinError {
                    group: *g,
                    ifindex: self.ifindex,
                    source,
                })?;
            joined.insert(*g);
        }
        Ok(())
    }
}

/// Joining a solicited-node multicast group failed.
#[derive(Debug, thiserror::Error)]
#[error("joining {group} on interface {ifindex}: {source}")]
pub struct JoinError {
    /// The group.
    pub group: Ipv6Addr,
    /// The interface index.
    pub ifindex: u32,
    /// The OS error.
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x10, 0, 0, 0, 0x0c];

    #[test]
    fn solicited_node_groups() {
        let vip: Ipv6Addr = "fd10:10::200".parse().unwrap();
        assert_eq!(
            solicited_node(vip),
            "ff02::1:ff00:200".parse::<Ipv6Addr>().unwrap()
        );
        let a: Ipv6Addr = "2001:db8::abcd:ef12".parse().unwrap();
        assert_eq!(
            solicited_node(a),
            "ff02::1:ffcd:ef12".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn advertisements_carry_the_flags_and_our_mac() {
        let vip: Ipv6Addr = "fd10:10::200".parse().unwrap();
        let na = advertisement(MAC, vip, true);
        assert_eq!(na[0], 136);
        assert_eq!(na[4], 0x60, "solicited and override");
        assert_eq!(&na[8..24], &vip.octets());
        assert_eq!(&na[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&na[26..32], &MAC);
        assert_eq!(advertisement(MAC, vip, false)[4], 0x20, "override only");
        assert_eq!(
            solicitation_target(&na),
            None,
            "an advertisement is not a solicitation"
        );
    }

    #[test]
    fn solicitations_parse_and_junk_does_not() {
        let vip: Ipv6Addr = "fd10:10::200".parse().unwrap();
        let mut ns = [0u8; 32];
        ns[0] = 135;
        ns[8..24].copy_from_slice(&vip.octets());
        assert_eq!(solicitation_target(&ns), Some(vip));
        assert_eq!(solicitation_target(&ns[..20]), None);
        ns[8..24].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(solicitation_target(&ns), None, "multicast target");
        ns[0] = 128;
        assert_eq!(solicitation_target(&ns), None, "an echo request");
    }
}
