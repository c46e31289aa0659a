//! Readable types for what IPVS holds: services, destinations, counters, the
//! sync daemons, timeouts and version info, with their conversions to and from
//! attributes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::DecodeError;

use crate::constants::*;
use crate::nla::{DaemonNla, DestNla, ServiceNla, StatsNla};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The kernel's `AF_*` number.
    pub fn af(self) -> u16 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    /// From the kernel's `AF_*` number.
    pub fn from_af(af: u16) -> Result<Family, DecodeError> {
        match af {
            AF_INET => Ok(Family::V4),
            AF_INET6 => Ok(Family::V6),
            other => Err(format!("unknown address family {other}").into()),
        }
    }

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// The transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (`ipvsadm -t`).
    Tcp,
    /// UDP (`ipvsadm -u`).
    Udp,
    /// SCTP (`ipvsadm --sctp-service`).
    Sctp,
    /// Another IP protocol number.
    Other(u16),
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
            Protocol::Other(n) => n,
        }
    }

    /// From the IP protocol number.
    pub fn from_number(n: u16) -> Protocol {
        match n {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            IPPROTO_SCTP => Protocol::Sctp,
            other => Protocol::Other(other),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// A protocol, address and port (`ipvsadm -t|-u|--sctp-service ADDR:PORT`).
    Addr {
        /// Transport protocol.
        protocol: Protocol,
        /// Virtual address.
        addr: IpAddr,
        /// Virtual port.
        port: u16,
    },
    /// A firewall mark (`ipvsadm -f MARK`, with `-6` for IPv6).
    Fwmark {
        /// Address family of the service.
        family: Family,
        /// The mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// A TCP service.
    pub fn tcp(addr: IpAddr, port: u16) -> Self {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr,
            port,
        }
    }

    /// A UDP service.
    pub fn udp(addr: IpAddr, port: u16) -> Self {
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr,
            port,
        }
    }

    /// The service's address family.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes that identify the service in a request.
    pub fn to_nlas(&self) -> Vec<ServiceNla> {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => vec![
                ServiceNla::Af(Family::of(addr).af()),
                ServiceNla::Protocol(protocol.number()),
                ServiceNla::Addr(addr_bytes(addr)),
                ServiceNla::Port(*port),
            ],
            ServiceKey::Fwmark { family, mark } => {
                vec![ServiceNla::Af(family.af()), ServiceNla::Fwmark(*mark)]
            }
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => write!(f, "{protocol} {}", SocketText(addr, *port)),
            ServiceKey::Fwmark { family, mark } => match family {
                Family::V4 => write!(f, "FWM {mark}"),
                Family::V6 => write!(f, "FWM {mark} IPv6"),
            },
        }
    }
}

/// `addr:port`, with brackets around IPv6 addresses.
struct SocketText<'a>(&'a IpAddr, u16);

impl fmt::Display for SocketText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// The 16-byte `union nf_inet_addr` the kernel takes and sends.
pub(crate) fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn addr_from_bytes(family: Family, raw: &[u8]) -> Result<IpAddr, DecodeError> {
    match family {
        Family::V4 => {
            let b: [u8; 4] = raw
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| DecodeError::from(format!("IPv4 address of {} bytes", raw.len())))?;
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        Family::V6 => {
            let b: [u8; 16] = raw
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| DecodeError::from(format!("IPv6 address of {} bytes", raw.len())))?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
    }
}

/// Virtual service flags (`IP_VS_SVC_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// `IP_VS_SVC_F_PERSISTENT` (`ipvsadm -p`).
    pub const PERSISTENT: ServiceFlags = ServiceFlags(IP_VS_SVC_F_PERSISTENT);
    /// `IP_VS_SVC_F_HASHED`: kernel-internal, never set by users.
    pub const HASHED: ServiceFlags = ServiceFlags(IP_VS_SVC_F_HASHED);
    /// `IP_VS_SVC_F_ONEPACKET` (`ipvsadm -o`, UDP only).
    pub const ONE_PACKET: ServiceFlags = ServiceFlags(IP_VS_SVC_F_ONEPACKET);
    /// `IP_VS_SVC_F_SCHED1`: `sh-fallback` for sh, `mh-fallback` for mh.
    pub const SCHED1: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED1);
    /// `IP_VS_SVC_F_SCHED2`: `sh-port` for sh, `mh-port` for mh.
    pub const SCHED2: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED2);
    /// `IP_VS_SVC_F_SCHED3`: scheduler flag 3.
    pub const SCHED3: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED3);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags plus `other`.
    pub fn with(self, other: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | other.0)
    }

    /// These flags without `other`.
    pub fn without(self, other: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 & !other.0)
    }
}

/// The persistence netmask of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netmask {
    /// IPv4: a mask such as 255.255.255.0 (`ipvsadm -M`).
    V4(Ipv4Addr),
    /// IPv6: a prefix length, 1 to 128.
    V6(u32),
}

impl Netmask {
    /// The kernel's default: a single client address.
    pub fn host(family: Family) -> Netmask {
        match family {
            Family::V4 => Netmask::V4(Ipv4Addr::BROADCAST),
            Family::V6 => Netmask::V6(128),
        }
    }

    fn to_raw(self) -> [u8; 4] {
        match self {
            Netmask::V4(m) => m.octets(),
            Netmask::V6(len) => len.to_ne_bytes(),
        }
    }

    fn from_raw(family: Family, raw: [u8; 4]) -> Netmask {
        match family {
            Family::V4 => Netmask::V4(Ipv4Addr::from(raw)),
            Family::V6 => Netmask::V6(u32::from_ne_bytes(raw)),
        }
    }
}

impl fmt::Display for Netmask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netmask::V4(m) => write!(f, "{m}"),
            Netmask::V6(len) => write!(f, "{len}"),
        }
    }
}

/// Traffic counters and rates of a service or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets in.
    pub inpkts: u64,
    /// Packets out.
    pub outpkts: u64,
    /// Bytes in.
    pub inbytes: u64,
    /// Bytes out.
    pub outbytes: u64,
    /// Connections per second (estimated).
    pub cps: u64,
    /// Packets in per second.
    pub inpps: u64,
    /// Packets out per second.
    pub outpps: u64,
    /// Bytes in per second.
    pub inbps: u64,
    /// Bytes out per second.
    pub outbps: u64,
}

impl Stats {
    fn from_nlas(nlas: &[StatsNla]) -> Stats {
        let mut s = Stats::default();
        for nla in nlas {
            let (kind, value) = match nla {
                StatsNla::U32(k, v) => (*k, u64::from(*v)),
                StatsNla::U64(k, v) => (*k, *v),
                _ => continue,
            };
            match kind {
                IPVS_STATS_ATTR_CONNS => s.conns = value,
                IPVS_STATS_ATTR_INPKTS => s.inpkts = value,
                IPVS_STATS_ATTR_OUTPKTS => s.outpkts = value,
                IPVS_STATS_ATTR_INBYTES => s.inbytes = value,
                IPVS_STATS_ATTR_OUTBYTES => s.outbytes = value,
                IPVS_STATS_ATTR_CPS => s.cps = value,
                IPVS_STATS_ATTR_INPPS => s.inpps = value,
                IPVS_STATS_ATTR_OUTPPS => s.outpps = value,
                IPVS_STATS_ATTR_INBPS => s.inbps = value,
                IPVS_STATS_ATTR_OUTBPS => s.outbps = value,
                _ => {}
            }
        }
        s
    }
}

/// A virtual service (`ipvsadm -A|-E`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// What identifies it.
    pub key: ServiceKey,
    /// Scheduler name: rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos.
    pub scheduler: String,
    /// Flags (never `HASHED`: decoding strips it).
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with `PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask.
    pub netmask: Netmask,
    /// Persistence engine (`ipvsadm --pe`), e.g. `sip`.
    pub persistence_engine: Option<String>,
    /// Counters, when read from the kernel (boxed: a table built to be
    /// programmed carries none, and each would cost 80 bytes).
    pub stats: Option<Box<Stats>>,
}

impl Service {
    /// A service with the kernel's defaults: no flags, no persistence.
    pub fn new(key: ServiceKey, scheduler: &str) -> Self {
        Service {
            key,
            scheduler: scheduler.to_string(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: Netmask::host(key.family()),
            persistence_engine: None,
            stats: None,
        }
    }

    /// The full attribute set the kernel needs to add or edit a service.
    pub fn to_nlas(&self) -> Vec<ServiceNla> {
        let mut nlas = self.key.to_nlas();
        nlas.push(ServiceNla::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.persistence_engine {
            nlas.push(ServiceNla::PeName(pe.clone()));
        }
        nlas.push(ServiceNla::Flags {
            flags: self.flags.without(ServiceFlags::HASHED).0,
            mask: u32::MAX,
        });
        nlas.push(ServiceNla::Timeout(self.timeout));
        nlas.push(ServiceNla::Netmask(self.netmask.to_raw()));
        nlas
    }

    /// Decodes a service from the kernel's attributes.
    pub fn from_nlas(nlas: &[ServiceNla]) -> Result<Service, DecodeError> {
        let mut af = None;
        let mut protocol = None;
        let mut addr = None;
        let mut port = None;
        let mut fwmark = None;
        let mut scheduler = None;
        let mut flags = ServiceFlags::default();
        let mut timeout = 0;
        let mut netmask = None;
        let mut pe = None;
        let mut stats = None;
        let mut stats64 = None;
        for nla in nlas {
            match nla {
                ServiceNla::Af(v) => af = Some(Family::from_af(*v)?),
                ServiceNla::Protocol(v) => protocol = Some(Protocol::from_number(*v)),
                ServiceNla::Addr(v) => addr = Some(v.clone()),
                ServiceNla::Port(v) => port = Some(*v),
                ServiceNla::Fwmark(v) => fwmark = Some(*v),
                ServiceNla::SchedName(v) => scheduler = Some(v.clone()),
                ServiceNla::Flags { flags: f, .. } => flags = ServiceFlags(*f),
                ServiceNla::Timeout(v) => timeout = *v,
                ServiceNla::Netmask(v) => netmask = Some(*v),
                ServiceNla::PeName(v) if !v.is_empty() => pe = Some(v.clone()),
                ServiceNla::Stats(v) => stats = Some(Stats::from_nlas(v)),
                ServiceNla::Stats64(v) => stats64 = Some(Stats::from_nlas(v)),
                _ => {}
            }
        }
        let family = af.ok_or("service without IPVS_SVC_ATTR_AF")?;
        let key = match fwmark {
            Some(mark) if mark != 0 => ServiceKey::Fwmark { family, mark },
            _ => ServiceKey::Addr {
                protocol: protocol.ok_or("service without IPVS_SVC_ATTR_PROTOCOL")?,
                addr: addr_from_bytes(family, &addr.ok_or("service without IPVS_SVC_ATTR_ADDR")?)?,
                port: port.ok_or("service without IPVS_SVC_ATTR_PORT")?,
            },
        };
        Ok(Service {
            key,
            scheduler: scheduler.unwrap_or_default(),
            flags: flags.without(ServiceFlags::HASHED),
            timeout,
            netmask: netmask
                .map(|raw| Netmask::from_raw(family, raw))
                .unwrap_or_else(|| Netmask::host(family)),
            persistence_engine: pe,
            stats: stats64.or(stats).map(Box::new),
        })
    }
}

/// Tunnel encapsulation of a tunnelling destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum TunnelType {
    /// IP in IP (the default).
    #[default]
    Ipip,
    /// Generic UDP encapsulation.
    Gue,
    /// GRE.
    Gre,
    /// Another type number.
    Other(u8),
}

impl TunnelType {
    fn number(self) -> u8 {
        match self {
            TunnelType::Ipip => IP_VS_CONN_F_TUNNEL_TYPE_IPIP,
            TunnelType::Gue => IP_VS_CONN_F_TUNNEL_TYPE_GUE,
            TunnelType::Gre => IP_VS_CONN_F_TUNNEL_TYPE_GRE,
            TunnelType::Other(n) => n,
        }
    }

    fn from_number(n: u8) -> TunnelType {
        match n {
            IP_VS_CONN_F_TUNNEL_TYPE_IPIP => TunnelType::Ipip,
            IP_VS_CONN_F_TUNNEL_TYPE_GUE => TunnelType::Gue,
            IP_VS_CONN_F_TUNNEL_TYPE_GRE => TunnelType::Gre,
            other => TunnelType::Other(other),
        }
    }
}

/// Tunnel settings (`ipvsadm -i --tun-type ... --tun-port ... --tun-nocsum|--tun-csum|--tun-remcsum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Tunnel {
    /// Encapsulation.
    pub kind: TunnelType,
    /// Destination UDP port (GUE).
    pub port: u16,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_*`.
    pub flags: u16,
}

/// How IPVS forwards to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Forward {
    /// NAT (`-m`).
    Masquerade,
    /// Local node (a destination that is this host).
    Local,
    /// IP tunnelling (`-i`).
    Tunnel(Tunnel),
    /// Direct routing (`-g`).
    DirectRoute,
    /// Cache bypass (kernel-internal).
    Bypass,
}

impl Forward {
    fn conn_flags(self) -> u32 {
        match self {
            Forward::Masquerade => IP_VS_CONN_F_MASQ,
            Forward::Local => IP_VS_CONN_F_LOCALNODE,
            Forward::Tunnel(_) => IP_VS_CONN_F_TUNNEL,
            Forward::DirectRoute => IP_VS_CONN_F_DROUTE,
            Forward::Bypass => IP_VS_CONN_F_BYPASS,
        }
    }

    /// The `ipvsadm -Ln` name: Masq, Local, Tunnel, Route, Bypass.
    pub fn ipvsadm_name(self) -> &'static str {
        match self {
            Forward::Masquerade => "Masq",
            Forward::Local => "Local",
            Forward::Tunnel(_) => "Tunnel",
            Forward::DirectRoute => "Route",
            Forward::Bypass => "Bypass",
        }
    }
}

/// Connection counts of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestCounters {
    /// Active (established) connections.
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
    /// Persistence templates.
    pub persistent: u32,
}

/// A destination (real server) of a service (`ipvsadm -a|-e`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Address (may be of the other family where the kernel allows).
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Forwarding method.
    pub forward: Forward,
    /// Weight (0 stops new connections).
    pub weight: i32,
    /// Upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0: none).
    pub lower_threshold: u32,
    /// Connection counts, when read from the kernel.
    pub counters: Option<DestCounters>,
    /// Traffic counters, when read from the kernel (boxed, as a service's).
    pub stats: Option<Box<Stats>>,
}

impl Destination {
    /// A destination with weight 1 and no thresholds.
    pub fn new(addr: IpAddr, port: u16, forward: Forward) -> Self {
        Destination {
            addr,
            port,
            forward,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            counters: None,
            stats: None,
        }
    }

    /// The attributes that identify the destination (for delete).
    pub fn key_nlas(addr: &IpAddr, port: u16) -> Vec<DestNla> {
        vec![
            DestNla::AddrFamily(Family::of(addr).af()),
            DestNla::Addr(addr_bytes(addr)),
            DestNla::Port(port),
        ]
    }

    /// The full attribute set the kernel needs to add or edit a destination.
    pub fn to_nlas(&self) -> Vec<DestNla> {
        let mut nlas = Destination::key_nlas(&self.addr, self.port);
        nlas.push(DestNla::FwdMethod(self.forward.conn_flags()));
        nlas.push(DestNla::Weight(self.weight));
        // Sent for every method, zero unless tunnelling, as ipvsadm does.
        let t = match self.forward {
            Forward::Tunnel(t) => t,
            _ => Tunnel::default(),
        };
        nlas.push(DestNla::TunType(t.kind.number()));
        nlas.push(DestNla::TunPort(t.port));
        nlas.push(DestNla::TunFlags(t.flags));
        nlas.push(DestNla::UThresh(self.upper_threshold));
        nlas.push(DestNla::LThresh(self.lower_threshold));
        nlas
    }

    /// Decodes a destination of a service of `service_family`.
    pub fn from_nlas(nlas: &[DestNla], service_family: Family) -> Result<Destination, DecodeError> {
        let mut addr = None;
        let mut family = service_family;
        let mut port = None;
        let mut fwd = 0;
        let mut weight = 0;
        let mut upper = 0;
        let mut lower = 0;
        let mut counters = DestCounters::default();
        let mut have_counters = false;
        let mut stats = None;
        let mut stats64 = None;
        let mut tunnel = Tunnel::default();
        for nla in nlas {
            match nla {
                DestNla::Addr(v) => addr = Some(v.clone()),
                DestNla::AddrFamily(v) => family = Family::from_af(*v)?,
                DestNla::Port(v) => port = Some(*v),
                DestNla::FwdMethod(v) => fwd = *v & IP_VS_CONN_F_FWD_MASK,
                DestNla::Weight(v) => weight = *v,
                DestNla::UThresh(v) => upper = *v,
                DestNla::LThresh(v) => lower = *v,
                DestNla::ActiveConns(v) => {
                    counters.active = *v;
                    have_counters = true;
                }
                DestNla::InactConns(v) => counters.inactive = *v,
                DestNla::PersistConns(v) => counters.persistent = *v,
                DestNla::Stats(v) => stats = Some(Stats::from_nlas(v)),
                DestNla::Stats64(v) => stats64 = Some(Stats::from_nlas(v)),
                DestNla::TunType(v) => tunnel.kind = TunnelType::from_number(*v),
                DestNla::TunPort(v) => tunnel.port = *v,
                DestNla::TunFlags(v) => tunnel.flags = *v,
                _ => {}
            }
        }
        let forward = match fwd {
            IP_VS_CONN_F_MASQ => Forward::Masquerade,
            IP_VS_CONN_F_LOCALNODE => Forward::Local,
            IP_VS_CONN_F_TUNNEL => Forward::Tunnel(tunnel),
            IP_VS_CONN_F_DROUTE => Forward::DirectRoute,
            _ => Forward::Bypass,
        };
        Ok(Destination {
            addr: addr_from_bytes(
                family,
                &addr.ok_or("destination without IPVS_DEST_ATTR_ADDR")?,
            )?,
            port: port.ok_or("destination without IPVS_DEST_ATTR_PORT")?,
            forward,
            weight,
            upper_threshold: upper,
            lower_threshold: lower,
            counters: have_counters.then_some(counters),
            stats: stats64.or(stats).map(Box::new),
        })
    }
}

/// IPVS version and connection table size (`ipvsadm -Ln` first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `IP_VS_VERSION_CODE`, e.g. 0x010201.
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_table_size: u32,
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IP Virtual Server version {}.{}.{} (size={})",
            (self.version >> 16) & 0xff,
            (self.version >> 8) & 0xff,
            self.version & 0xff,
            self.conn_table_size
        )
    }
}

/// Connection timeouts in seconds (`ipvsadm --set TCP TCPFIN UDP`). When
/// setting, 0 leaves a timeout unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: u32,
    /// TCP after FIN.
    pub tcp_fin: u32,
    /// UDP.
    pub udp: u32,
}

/// The role of a connection-sync daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// Sends connection state (`--start-daemon master`).
    Master,
    /// Receives it (`--start-daemon backup`).
    Backup,
}

impl SyncState {
    /// The kernel's `IP_VS_STATE_*`.
    pub fn number(self) -> u32 {
        match self {
            SyncState::Master => IP_VS_STATE_MASTER,
            SyncState::Backup => IP_VS_STATE_BACKUP,
        }
    }
}

/// A connection-sync daemon (`ipvsadm --start-daemon`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDaemon {
    /// Master or backup.
    pub state: SyncState,
    /// Interface (`--mcast-interface`).
    pub interface: String,
    /// Sync ID (`--syncid`).
    pub sync_id: u32,
    /// UDP payload size (`--sync-maxlen`).
    pub max_len: Option<u16>,
    /// Multicast group (`--mcast-group`).
    pub group: Option<IpAddr>,
    /// Multicast port (`--mcast-port`).
    pub port: Option<u16>,
    /// Multicast TTL (`--mcast-ttl`).
    pub ttl: Option<u8>,
}

impl SyncDaemon {
    /// The attributes of `--start-daemon`.
    pub fn to_nlas(&self) -> Vec<DaemonNla> {
        let mut nlas = vec![
            DaemonNla::State(self.state.number()),
            DaemonNla::McastIfn(self.interface.clone()),
            DaemonNla::SyncId(self.sync_id),
        ];
        if let Some(v) = self.max_len {
            nlas.push(DaemonNla::SyncMaxlen(v));
        }
        match self.group {
            Some(IpAddr::V4(a)) => nlas.push(DaemonNla::McastGroup(a.octets())),
            Some(IpAddr::V6(a)) => nlas.push(DaemonNla::McastGroup6(a.octets())),
            None => {}
        }
        if let Some(v) = self.port {
            nlas.push(DaemonNla::McastPort(v));
        }
        if let Some(v) = self.ttl {
            nlas.push(DaemonNla::McastTtl(v));
        }
        nlas
    }

    /// Decodes a daemon from the kernel's attributes.
    pub fn from_nlas(nlas: &[DaemonNla]) -> Result<SyncDaemon, DecodeError> {
        let mut state = None;
        let mut interface = None;
        let mut sync_id = 0;
        let mut d = SyncDaemon {
            state: SyncState::Master,
            interface: String::new(),
            sync_id: 0,
            max_len: None,
            group: None,
            port: None,
            ttl: None,
        };
        for nla in nlas {
            match nla {
                DaemonNla::State(IP_VS_STATE_MASTER) => state = Some(SyncState::Master),
                DaemonNla::State(IP_VS_STATE_BACKUP) => state = Some(SyncState::Backup),
                DaemonNla::State(other) => {
                    return Err(format!("unknown sync daemon state {other}").into())
                }
                DaemonNla::McastIfn(v) => interface = Some(v.clone()),
                DaemonNla::SyncId(v) => sync_id = *v,
                DaemonNla::SyncMaxlen(v) => d.max_len = Some(*v),
                DaemonNla::McastGroup(v) => d.group = Some(IpAddr::V4(Ipv4Addr::from(*v))),
                DaemonNla::McastGroup6(v) => d.group = Some(IpAddr::V6(Ipv6Addr::from(*v))),
                DaemonNla::McastPort(v) => d.port = Some(*v),
                DaemonNla::McastTtl(v) => d.ttl = Some(*v),
                _ => {}
            }
        }
        d.state = state.ok_or("sync daemon without IPVS_DAEMON_ATTR_STATE")?;
        d.interface = interface.ok_or("sync daemon without IPVS_DAEMON_ATTR_MCAST_IFN")?;
        d.sync_id = sync_id;
        Ok(d)
    }
}
