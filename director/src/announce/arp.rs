//! ARP for the VIPs this director holds: frames as plain bytes (pure), and an
//! AF_PACKET socket on the VIP interface that answers requests for held VIPs
//! and sends gratuitous ARP bursts.
//!
//! The kernel never answers ARP for a VIP (it is a `local` route on `lo`, and
//! `arp_ignore=1` on the LAN interface), so the answers stop the moment this
//! process stops or its lease lapses: that is how process death is fenced.

use std::net::Ipv4Addr;

/// Ethernet type of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Length of an ARP frame over Ethernet (without padding).
pub const FRAME_LEN: usize = 42;

fn frame(
    dst: [u8; 6],
    src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// A gratuitous ARP as keepalived sends it: a broadcast ARP request whose
/// sender and target address are both the VIP, target MAC all ones.
pub fn gratuitous(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame([0xff; 6], mac, 1, mac, vip, [0xff; 6], vip)
}

/// The reply to `request` for `vip` from `mac`.
pub fn reply(mac: [u8; 6], vip: Ipv4Addr, request: &Request) -> [u8; FRAME_LEN] {
    frame(
        request.sender_mac,
        mac,
        2,
        mac,
        vip,
        request.sender_mac,
        request.sender_ip,
    )
}

/// An ARP request seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Who asks.
    pub sender_mac: [u8; 6],
    /// Its address.
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
}

/// Parses an Ethernet frame; the ARP request in it, if it is one.
pub fn parse_request(f: &[u8]) -> Option<Request> {
    if f.len() < FRAME_LEN || f[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let ok = f[14..16] == 1u16.to_be_bytes()
        && f[16..18] == 0x0800u16.to_be_bytes()
        && f[18] == 6
        && f[19] == 4
        && f[20..22] == 1u16.to_be_bytes();
    if !ok {
        return None;
    }
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&f[22..28]);
    let ip = |r: std::ops::Range<usize>| -> Option<Ipv4Addr> {
        let b: [u8; 4] = f.get(r)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    Some(Request {
        sender_mac,
        sender_ip: ip(28..32)?,
        target_ip: ip(38..42)?,
    })
}

/// The raw ARP socket of one interface.
pub struct ArpSocket {
    /// Sends frames.
    pub tx: Box<dyn pnet_datalink::DataLinkSender>,
    /// Receives ARP frames.
    pub rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    /// The interface's MAC.
    pub mac: [u8; 6],
}

impl std::fmt::Debug for ArpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpSocket").field("mac", &self.mac).finish()
    }
}

impl ArpSocket {
    /// Opens an AF_PACKET socket that sees only ARP on `ifname` (never
    /// promiscuous), with a read timeout so that a reader can stop.
    pub fn open(ifname: &str) -> std::io::Result<ArpSocket> {
        use std::os::fd::IntoRawFd;
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == ifname)
            .ok_or_else(|| std::io::Error::other(format!("no interface {ifname}")))?;
        let mac = iface
            .mac
            .map(|m| [m.0, m.1, m.2, m.3, m.4, m.5])
            .ok_or_else(|| std::io::Error::other(format!("{ifname} has no MAC address")))?;
        // A raw packet socket for ARP only: the kernel hands it nothing else.
        let socket = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )?;
        let config = pnet_datalink::Config {
            channel_type: pnet_datalink::ChannelType::Layer3(ETH_P_ARP),
            promiscuous: false,
            read_timeout: Some(super::READ_TIMEOUT),
            socket_fd: Some(socket.into_raw_fd()),
            ..Default::default()
        };
        match pnet_datalink::channel(&iface, config)? {
            pnet_datalink::Channel::Ethernet(tx, rx) => Ok(ArpSocket { tx, rx, mac }),
            _ => Err(std::io::Error::other("unexpected channel type")),
        }
    }
}

/// Sends one frame.
pub fn send(tx: &mut dyn pnet_datalink::DataLinkSender, frame: &[u8]) -> std::io::Result<()> {
    tx.send_to(frame, None)
        .unwrap_or_else(|| Err(std::io::Error::other("send_to gave no result")))
}

/// The next ARP request, or None after the read timeout.
pub fn next_request(rx: &mut dyn pnet_datalink::DataLinkReceiver) -> Option<Request> {
    match rx.next() {
        Ok(f) => parse_request(f),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x10, 0, 0, 0, 0x0c];

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_the_vip_itself() {
        let vip = Ipv4Addr::new(10, 10, 0, 200);
        let f = gratuitous(MAC, vip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[20..22], &[0, 1], "an ARP request");
        assert_eq!(&f[28..32], &vip.octets());
        assert_eq!(&f[38..42], &vip.octets());
        assert_eq!(&f[32..38], &[0xff; 6]);
        // A GARP parses as a request for the VIP from the VIP.
        let r = parse_request(&f).unwrap();
        assert_eq!((r.sender_ip, r.target_ip), (vip, vip));
    }

    #[test]
    fn a_reply_answers_the_asker() {
        let client = Request {
            sender_mac: [0x02, 0x10, 0, 0, 0, 0x64],
            sender_ip: Ipv4Addr::new(10, 10, 0, 100),
            target_ip: Ipv4Addr::new(10, 10, 0, 200),
        };
        let f = reply(MAC, client.target_ip, &client);
        assert_eq!(&f[0..6], &client.sender_mac);
        assert_eq!(&f[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 10, 0, 200]);
        assert_eq!(&f[38..42], &[10, 10, 0, 100]);
        assert_eq!(parse_request(&f), None, "a reply is not a request");
    }

    #[test]
    fn junk_is_not_a_request() {
        assert_eq!(parse_request(&[0u8; 10]), None);
        let mut f = gratuitous(MAC, Ipv4Addr::new(1, 2, 3, 4));
        f[12] = 0x08;
        f[13] = 0x00;
        assert_eq!(parse_request(&f), None);
    }
}
