//! Golden bytes: netlink messages captured from real `ipvsadm` runs against
//! the kernel (`tests/golden/*.txt`, made by `tests/golden/capture.py`; each
//! file names the ipvsadm command that produced it). Every message decodes
//! and re-encodes to the same bytes; the requests this crate builds equal
//! ipvsadm's byte for byte where both send the same attributes; the kernel's
//! replies decode to the expected services, destinations and settings.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on what it cannot decode"
)]

use std::net::{IpAddr, Ipv4Addr};

use ipvs_sys::nla::{IpvsNla, Nested};
use ipvs_sys::*;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;

type Msg = NetlinkMessage<GenlMessage<IpvsMessage>>;

struct Captured {
    command: String,
    /// (sent by ipvsadm?, bytes)
    messages: Vec<(bool, Vec<u8>)>,
}

fn load(name: &str) -> Captured {
    let path = format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut command = String::new();
    let mut messages = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ipvsadm ") {
            command = c.to_string();
        } else if let Some(hex) = line.strip_prefix("> ") {
            messages.push((true, decode_hex(hex)));
        } else if let Some(hex) = line.strip_prefix("< ") {
            messages.push((false, decode_hex(hex)));
        }
    }
    Captured { command, messages }
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn parse(bytes: &[u8]) -> Msg {
    Msg::deserialize(bytes).unwrap_or_else(|e| panic!("decoding {bytes:02x?}: {e}"))
}

fn emit(msg: &Msg) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The IPVS payloads of the messages one side sent (acks and dones skipped).
fn payloads(c: &Captured, sent: bool) -> Vec<IpvsMessage> {
    c.messages
        .iter()
        .filter(|(s, _)| *s == sent)
        .filter_map(|(_, b)| match parse(b).payload {
            NetlinkPayload::InnerMessage(m) => Some(m.payload),
            _ => None,
        })
        .collect()
}

/// The last request ipvsadm sent (the first is always IPVS_CMD_GET_INFO).
fn last_request(c: &Captured) -> (Vec<u8>, Msg) {
    let bytes = c
        .messages
        .iter()
        .rev()
        .find(|(sent, _)| *sent)
        .map(|(_, b)| b.clone())
        .unwrap();
    let msg = parse(&bytes);
    (bytes, msg)
}

/// Our encoding of `payload` with the captured request's header.
fn ours_like(captured: &Msg, payload: IpvsMessage) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(captured.header.message_type);
    let mut msg = NetlinkMessage::from(genl);
    msg.header = captured.header;
    msg.finalize();
    emit(&msg)
}

const ALL: &[&str] = &[
    "add_service_tcp_rr",
    "add_dest_masq",
    "edit_dest_weight",
    "add_dest_tunnel_gue",
    "add_service_udp_sh_persistent",
    "edit_service_scheduler",
    "add_service_fwmark",
    "add_service_v6_mh",
    "add_dest_v6_route_thresholds",
    "list",
    "set_timeouts",
    "get_timeouts",
    "start_daemon",
    "list_daemons",
    "stop_daemon",
    "del_dest",
    "zero",
    "del_service",
    "error_no_such_scheduler",
    "error_exists",
    "flush",
];

#[test]
fn every_captured_message_round_trips_byte_for_byte() {
    let mut count = 0;
    for name in ALL {
        let c = load(name);
        assert!(!c.messages.is_empty(), "{name}: no messages");
        for (sent, bytes) in &c.messages {
            let msg = parse(bytes);
            assert_eq!(
                &emit(&msg),
                bytes,
                "{name} (ipvsadm {}): {} message re-encodes differently: {msg:?}",
                c.command,
                if *sent { "sent" } else { "received" }
            );
            count += 1;
        }
    }
    assert!(count > 80, "only {count} messages");
}

fn vip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 10, 0, last))
}

#[test]
fn add_service_request_equals_ipvsadm() {
    // ipvsadm -A -t 10.10.0.200:80 -s rr
    let c = load("add_service_tcp_rr");
    let (bytes, msg) = last_request(&c);
    let service = Service::new(ServiceKey::tcp(vip(200), 80), "rr");
    let (ours, _, _) = Change::AddService(service).to_message();
    assert_eq!(ours_like(&msg, ours), bytes);
}

#[test]
fn add_and_edit_destination_requests_equal_ipvsadm() {
    // ipvsadm -a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 1
    let c = load("add_dest_masq");
    let (_, msg) = last_request(&c);
    let key = ServiceKey::tcp(vip(200), 80);
    let dest = Destination::new(vip(21), 30080, Forward::Masquerade);
    let (ours, _, _) = Change::AddDest(key, dest.clone()).to_message();
    // ipvsadm also sends the full service in a destination request; compare
    // the destination nest, which is what the kernel reads.
    let theirs = match msg.payload {
        NetlinkPayload::InnerMessage(ref m) => m.payload.clone(),
        _ => panic!("not a request"),
    };
    assert_eq!(dest_nest(&ours), dest_nest(&theirs));

    // ipvsadm -e -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 5
    let c = load("edit_dest_weight");
    let theirs = payloads(&c, true).pop().unwrap();
    assert_eq!(theirs.cmd, IpvsCmd::SetDest);
    let (ours, _, _) = Change::EditDest(key, Destination { weight: 5, ..dest }).to_message();
    assert_eq!(dest_nest(&ours), dest_nest(&theirs));
}

fn dest_nest(m: &IpvsMessage) -> Vec<ipvs_sys::nla::DestNla> {
    m.nlas
        .iter()
        .find_map(|n| match n {
            IpvsNla::Dest(Nested { nlas, .. }) => Some(nlas.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn persistent_sh_service_decodes_and_encodes_like_ipvsadm() {
    // ipvsadm -A -u 10.10.0.201:53 -s sh -b sh-fallback,sh-port -p 300 -M 255.255.255.0
    let c = load("add_service_udp_sh_persistent");
    let (bytes, msg) = last_request(&c);
    let expected = Service {
        key: ServiceKey::udp(vip(201), 53),
        scheduler: "sh".into(),
        flags: ServiceFlags::PERSISTENT
            .with(ServiceFlags::SCHED1)
            .with(ServiceFlags::SCHED2),
        timeout: 300,
        netmask: Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)),
        persistence_engine: None,
        stats: None,
    };
    let (ours, _, _) = Change::AddService(expected.clone()).to_message();
    assert_eq!(ours_like(&msg, ours), bytes);
}

#[test]
fn ipv6_and_fwmark_services_encode_like_ipvsadm() {
    // ipvsadm -A -t [fd10:10::200]:443 -s mh -b mh-port -p 60
    let c = load("add_service_v6_mh");
    let (bytes, msg) = last_request(&c);
    let s = Service {
        flags: ServiceFlags::PERSISTENT.with(ServiceFlags::SCHED2),
        timeout: 60,
        ..Service::new(ServiceKey::tcp("fd10:10::200".parse().unwrap(), 443), "mh")
    };
    let (ours, _, _) = Change::AddService(s).to_message();
    assert_eq!(ours_like(&msg, ours), bytes);

    // ipvsadm -A -f 7 -s wlc
    let c = load("add_service_fwmark");
    let (bytes, msg) = last_request(&c);
    let s = Service::new(
        ServiceKey::Fwmark {
            family: Family::V4,
            mark: 7,
        },
        "wlc",
    );
    let (ours, _, _) = Change::AddService(s).to_message();
    assert_eq!(ours_like(&msg, ours), bytes);
}

#[test]
fn the_kernels_dump_decodes_to_what_was_programmed() {
    // ipvsadm -Ln --stats, after the add/edit commands above.
    let c = load("list");
    let replies = payloads(&c, false);
    let info = replies
        .iter()
        .find(|m| m.cmd == IpvsCmd::SetInfo)
        .expect("GET_INFO reply");
    assert!(
        info.nlas.contains(&IpvsNla::InfoVersion(0x010201)),
        "{info:?}"
    );

    let services: Vec<Service> = replies
        .iter()
        .flat_map(|m| m.nlas.iter())
        .filter_map(|n| match n {
            IpvsNla::Service(s) => Some(Service::from_nlas(&s.nlas).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(services.len(), 4, "{services:#?}");
    let sh = services
        .iter()
        .find(|s| s.key == ServiceKey::udp(vip(201), 53))
        .unwrap();
    // `ipvsadm -E -u 10.10.0.201:53 -s wrr` sends a whole service: the
    // scheduler changed and the persistence it did not repeat is gone.
    assert_eq!(sh.scheduler, "wrr");
    assert_eq!(sh.timeout, 0);
    assert_eq!(sh.netmask, Netmask::V4(Ipv4Addr::BROADCAST));
    assert_eq!(sh.flags, ServiceFlags::default(), "HASHED is stripped");
    assert!(sh.stats.is_some());
    let v6 = services
        .iter()
        .find(|s| s.key.family() == Family::V6)
        .unwrap();
    assert_eq!(v6.netmask, Netmask::V6(128));
    assert!(services
        .iter()
        .any(|s| matches!(s.key, ServiceKey::Fwmark { mark: 7, .. })));

    let dests: Vec<Destination> = replies
        .iter()
        .flat_map(|m| m.nlas.iter())
        .filter_map(|n| match n {
            IpvsNla::Dest(d) => Some(Destination::from_nlas(&d.nlas, Family::V4).unwrap()),
            _ => None,
        })
        .collect();
    let masq = dests.iter().find(|d| d.addr == vip(21)).unwrap();
    assert_eq!(
        (masq.port, masq.weight, masq.forward),
        (30080, 5, Forward::Masquerade)
    );
    assert_eq!(masq.counters, Some(DestCounters::default()));
    let gue = dests.iter().find(|d| d.addr == vip(22)).unwrap();
    assert_eq!(
        gue.forward,
        Forward::Tunnel(Tunnel {
            kind: TunnelType::Gue,
            port: 6080,
            flags: 1
        })
    );
    let routed = dests
        .iter()
        .find(|d| d.addr == "fd10:10::21".parse::<IpAddr>().unwrap())
        .unwrap();
    assert_eq!(
        (
            routed.forward,
            routed.weight,
            routed.upper_threshold,
            routed.lower_threshold
        ),
        (Forward::DirectRoute, 2, 100, 10)
    );
}

#[test]
fn timeouts_and_sync_daemons_decode() {
    // ipvsadm -L --timeout, after ipvsadm --set 900 120 300
    let replies = payloads(&load("get_timeouts"), false);
    let nlas: Vec<&IpvsNla> = replies.iter().flat_map(|m| m.nlas.iter()).collect();
    for expected in [
        IpvsNla::TimeoutTcp(900),
        IpvsNla::TimeoutTcpFin(120),
        IpvsNla::TimeoutUdp(300),
    ] {
        assert!(nlas.contains(&&expected), "{nlas:?}");
    }
    let set = payloads(&load("set_timeouts"), true).pop().unwrap();
    assert_eq!(set.cmd, IpvsCmd::SetConfig);

    // ipvsadm -L --daemon, after --start-daemon master --mcast-interface sync0 --syncid 5
    let replies = payloads(&load("list_daemons"), false);
    let daemons: Vec<SyncDaemon> = replies
        .iter()
        .flat_map(|m| m.nlas.iter())
        .filter_map(|n| match n {
            IpvsNla::Daemon(d) => Some(SyncDaemon::from_nlas(&d.nlas).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    assert_eq!(
        (
            daemons[0].state,
            daemons[0].interface.as_str(),
            daemons[0].sync_id
        ),
        (SyncState::Master, "sync0", 5)
    );
    let start = payloads(&load("start_daemon"), true).pop().unwrap();
    let ours = SyncDaemon {
        state: SyncState::Master,
        interface: "sync0".into(),
        sync_id: 5,
        max_len: None,
        group: None,
        port: None,
        ttl: None,
    };
    match &start.nlas[0] {
        IpvsNla::Daemon(d) => assert_eq!(d.nlas, ours.to_nlas()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kernel_errors_carry_the_errno() {
    for (name, errno) in [("error_no_such_scheduler", 2), ("error_exists", 17)] {
        let c = load(name);
        let code = c
            .messages
            .iter()
            .filter(|(sent, _)| !sent)
            .filter_map(|(_, b)| match parse(b).payload {
                NetlinkPayload::Error(e) => e.code.map(|c| -c.get()),
                _ => None,
            })
            .next_back();
        assert_eq!(code, Some(errno), "{name}");
    }
}
