//! The decoder must not panic on any input: whole netlink messages, bare IPVS
//! payloads under every command, and the readable types built from them.
#![no_main]

use ipvs_sys::nla::IpvsNla;
use ipvs_sys::{Destination, Family, IpvsMessage, Service, SyncDaemon};
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{Emitable, NetlinkMessage, ParseableParametrized};
use netlink_packet_generic::{GenlHeader, GenlMessage};

fn exercise(m: &IpvsMessage) {
    for nla in &m.nlas {
        match nla {
            IpvsNla::Service(s) => {
                let _ = Service::from_nlas(&s.nlas);
            }
            IpvsNla::Dest(d) => {
                let _ = Destination::from_nlas(&d.nlas, Family::V4);
                let _ = Destination::from_nlas(&d.nlas, Family::V6);
            }
            IpvsNla::Daemon(d) => {
                let _ = SyncDaemon::from_nlas(&d.nlas);
            }
            _ => {}
        }
    }
    // Whatever decoded re-encodes without panicking.
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(data) {
        if let netlink_packet_core::NetlinkPayload::InnerMessage(g) = &msg.payload {
            exercise(&g.payload);
        }
    }
    if let Some((&cmd, rest)) = data.split_first() {
        let header = GenlHeader { cmd, version: 1 };
        if let Ok(m) = IpvsMessage::parse_with_param(rest, header) {
            exercise(&m);
        }
    }
});
