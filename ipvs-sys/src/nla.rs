//! The attributes of IPVS messages, one enum per nesting level, close to the
//! wire: integers keep the kernel's widths and byte orders, addresses keep their
//! raw bytes, and attributes this crate does not know (from newer kernels) are
//! kept as [`DefaultNla`] instead of failing the decode.

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, emit_u64, parse_string, parse_u16, parse_u16_be, parse_u32,
    parse_u64, parse_u8, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator,
    Parseable,
};

use crate::constants::*;

/// Statistics nests come only from the kernel, which does not set
/// `NLA_F_NESTED` on them.
const NESTED_FLAG: bool = false;

/// A nest of attributes (`IPVS_CMD_ATTR_SERVICE`, `_DEST`, `_DAEMON`).
///
/// `ipvsadm` (libnl) sets `NLA_F_NESTED` on the nests it sends and the kernel
/// does not on the nests it replies with; the kernel accepts both. The flag is
/// kept so that a decoded message re-encodes to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested<T> {
    /// The attributes inside.
    pub nlas: Vec<T>,
    /// Whether the nest carries `NLA_F_NESTED`.
    pub flagged: bool,
}

impl<T> Nested<T> {
    /// A nest as a request carries it (flagged, as ipvsadm sends it).
    pub fn new(nlas: Vec<T>) -> Self {
        Nested {
            nlas,
            flagged: true,
        }
    }
}

/// Emits a string with its terminating NUL, as `nla_put_string` does.
fn emit_cstr(buf: &mut [u8], s: &str) {
    let n = s.len();
    buf[..n].copy_from_slice(s.as_bytes());
    buf[n] = 0;
}

fn parse_nested<T, F>(payload: &[u8], parse: F) -> Result<Vec<T>, DecodeError>
where
    F: Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
{
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        let nla = nla?;
        out.push(parse(&nla)?);
    }
    Ok(out)
}

fn other(buf: &NlaBuffer<&[u8]>) -> Result<DefaultNla, DecodeError> {
    DefaultNla::parse(buf)
}

fn fixed<const N: usize>(payload: &[u8], what: &str) -> Result<[u8; N], DecodeError> {
    payload.try_into().map_err(|_| {
        DecodeError::from(format!("{what}: expected {N} bytes, got {}", payload.len()))
    })
}

/// A counter inside a statistics nest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsNla {
    /// A 32-bit counter (`IPVS_*_ATTR_STATS` carries most counters so).
    U32(u16, u32),
    /// A 64-bit counter.
    U64(u16, u64),
    /// Padding or an attribute this crate does not know.
    Other(DefaultNla),
}

impl Nla for StatsNla {
    fn value_len(&self) -> usize {
        match self {
            StatsNla::U32(..) => 4,
            StatsNla::U64(..) => 8,
            StatsNla::Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            StatsNla::U32(k, _) | StatsNla::U64(k, _) => *k,
            StatsNla::Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            StatsNla::U32(_, v) => {
                let _ = emit_u32(buf, *v);
            }
            StatsNla::U64(_, v) => {
                let _ = emit_u64(buf, *v);
            }
            StatsNla::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl StatsNla {
    fn parse(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match (buf.kind(), v.len()) {
            (IPVS_STATS_ATTR_PAD, _) => StatsNla::Other(other(buf)?),
            (k, 4) => StatsNla::U32(k, parse_u32(v)?),
            (k, 8) => StatsNla::U64(k, parse_u64(v)?),
            _ => StatsNla::Other(other(buf)?),
        })
    }
}

/// An attribute of a virtual service (inside `IPVS_CMD_ATTR_SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceNla {
    /// `IPVS_SVC_ATTR_AF`: address family.
    Af(u16),
    /// `IPVS_SVC_ATTR_PROTOCOL`: IP protocol number.
    Protocol(u16),
    /// `IPVS_SVC_ATTR_ADDR`: the address, as sent (16 bytes, IPv4 in the first 4).
    Addr(Vec<u8>),
    /// `IPVS_SVC_ATTR_PORT`: the port (big-endian on the wire).
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK`: firewall mark.
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`: scheduler name.
    SchedName(String),
    /// `IPVS_SVC_ATTR_FLAGS`: `struct ip_vs_flags` (flags, and which of them to set).
    Flags {
        /// Flag values.
        flags: u32,
        /// Flags to change.
        mask: u32,
    },
    /// `IPVS_SVC_ATTR_TIMEOUT`: persistence timeout in seconds.
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`: persistence netmask, raw (IPv4: the mask in
    /// network order; IPv6: the prefix length as a host-order u32).
    Netmask([u8; 4]),
    /// `IPVS_SVC_ATTR_STATS`: statistics (mostly 32-bit counters).
    Stats(Vec<StatsNla>),
    /// `IPVS_SVC_ATTR_PE_NAME`: persistence engine name.
    PeName(String),
    /// `IPVS_SVC_ATTR_STATS64`: statistics (64-bit counters).
    Stats64(Vec<StatsNla>),
    /// An attribute this crate does not know.
    Other(DefaultNla),
}

impl Nla for ServiceNla {
    fn value_len(&self) -> usize {
        use ServiceNla::*;
        match self {
            Af(_) | Protocol(_) | Port(_) => 2,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            Addr(a) => a.len(),
            SchedName(s) | PeName(s) => s.len() + 1,
            Flags { .. } => 8,
            Stats(v) | Stats64(v) => v.as_slice().buffer_len(),
            Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use ServiceNla::*;
        match self {
            Af(_) => IPVS_SVC_ATTR_AF,
            Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Addr(_) => IPVS_SVC_ATTR_ADDR,
            Port(_) => IPVS_SVC_ATTR_PORT,
            Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Stats(_) => IPVS_SVC_ATTR_STATS,
            PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            Stats64(_) => IPVS_SVC_ATTR_STATS64,
            Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use ServiceNla::*;
        match self {
            Af(v) | Protocol(v) => {
                let _ = emit_u16(buf, *v);
            }
            Port(v) => {
                let _ = emit_u16_be(buf, *v);
            }
            Fwmark(v) | Timeout(v) => {
                let _ = emit_u32(buf, *v);
            }
            Addr(a) => buf[..a.len()].copy_from_slice(a),
            Netmask(m) => buf[..4].copy_from_slice(m),
            SchedName(s) | PeName(s) => emit_cstr(buf, s),
            Flags { flags, mask } => {
                let _ = emit_u32(&mut buf[..4], *flags);
                let _ = emit_u32(&mut buf[4..8], *mask);
            }
            Stats(v) | Stats64(v) => v.as_slice().emit(buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
    fn is_nested(&self) -> bool {
        NESTED_FLAG && matches!(self, ServiceNla::Stats(_) | ServiceNla::Stats64(_))
    }
}

impl ServiceNla {
    /// Decodes one service attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            IPVS_SVC_ATTR_AF => ServiceNla::Af(parse_u16(v)?),
            IPVS_SVC_ATTR_PROTOCOL => ServiceNla::Protocol(parse_u16(v)?),
            IPVS_SVC_ATTR_ADDR => ServiceNla::Addr(v.to_vec()),
            IPVS_SVC_ATTR_PORT => ServiceNla::Port(parse_u16_be(v)?),
            IPVS_SVC_ATTR_FWMARK => ServiceNla::Fwmark(parse_u32(v)?),
            IPVS_SVC_ATTR_SCHED_NAME => ServiceNla::SchedName(parse_string(v)?),
            IPVS_SVC_ATTR_FLAGS => {
                let raw: [u8; 8] = fixed(v, "IPVS_SVC_ATTR_FLAGS")?;
                ServiceNla::Flags {
                    flags: parse_u32(&raw[..4])?,
                    mask: parse_u32(&raw[4..])?,
                }
            }
            IPVS_SVC_ATTR_TIMEOUT => ServiceNla::Timeout(parse_u32(v)?),
            IPVS_SVC_ATTR_NETMASK => ServiceNla::Netmask(fixed(v, "IPVS_SVC_ATTR_NETMASK")?),
            IPVS_SVC_ATTR_STATS => ServiceNla::Stats(parse_nested(v, StatsNla::parse)?),
            IPVS_SVC_ATTR_PE_NAME => ServiceNla::PeName(parse_string(v)?),
            IPVS_SVC_ATTR_STATS64 => ServiceNla::Stats64(parse_nested(v, StatsNla::parse)?),
            _ => ServiceNla::Other(other(buf)?),
        })
    }
}

/// An attribute of a destination (inside `IPVS_CMD_ATTR_DEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestNla {
    /// `IPVS_DEST_ATTR_ADDR`: the address, as sent.
    Addr(Vec<u8>),
    /// `IPVS_DEST_ATTR_PORT` (big-endian on the wire).
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD`: `IP_VS_CONN_F_*` forwarding method.
    FwdMethod(u32),
    /// `IPVS_DEST_ATTR_WEIGHT`.
    Weight(i32),
    /// `IPVS_DEST_ATTR_U_THRESH`: upper connection threshold.
    UThresh(u32),
    /// `IPVS_DEST_ATTR_L_THRESH`: lower connection threshold.
    LThresh(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS` (read only).
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS` (read only).
    InactConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS` (read only).
    PersistConns(u32),
    /// `IPVS_DEST_ATTR_STATS` (read only).
    Stats(Vec<StatsNla>),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY`.
    AddrFamily(u16),
    /// `IPVS_DEST_ATTR_STATS64` (read only).
    Stats64(Vec<StatsNla>),
    /// `IPVS_DEST_ATTR_TUN_TYPE`.
    TunType(u8),
    /// `IPVS_DEST_ATTR_TUN_PORT` (big-endian on the wire).
    TunPort(u16),
    /// `IPVS_DEST_ATTR_TUN_FLAGS`.
    TunFlags(u16),
    /// An attribute this crate does not know.
    Other(DefaultNla),
}

impl Nla for DestNla {
    fn value_len(&self) -> usize {
        use DestNla::*;
        match self {
            Addr(a) => a.len(),
            Port(_) | AddrFamily(_) | TunPort(_) | TunFlags(_) => 2,
            TunType(_) => 1,
            FwdMethod(_) | Weight(_) | UThresh(_) | LThresh(_) | ActiveConns(_) | InactConns(_)
            | PersistConns(_) => 4,
            Stats(v) | Stats64(v) => v.as_slice().buffer_len(),
            Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use DestNla::*;
        match self {
            Addr(_) => IPVS_DEST_ATTR_ADDR,
            Port(_) => IPVS_DEST_ATTR_PORT,
            FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            UThresh(_) => IPVS_DEST_ATTR_U_THRESH,
            LThresh(_) => IPVS_DEST_ATTR_L_THRESH,
            ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            InactConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Stats(_) => IPVS_DEST_ATTR_STATS,
            AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Stats64(_) => IPVS_DEST_ATTR_STATS64,
            TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use DestNla::*;
        match self {
            Addr(a) => buf[..a.len()].copy_from_slice(a),
            Port(v) | TunPort(v) => {
                let _ = emit_u16_be(buf, *v);
            }
            AddrFamily(v) | TunFlags(v) => {
                let _ = emit_u16(buf, *v);
            }
            TunType(v) => buf[0] = *v,
            Weight(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            FwdMethod(v) | UThresh(v) | LThresh(v) | ActiveConns(v) | InactConns(v)
            | PersistConns(v) => {
                let _ = emit_u32(buf, *v);
            }
            Stats(v) | Stats64(v) => v.as_slice().emit(buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
    fn is_nested(&self) -> bool {
        NESTED_FLAG && matches!(self, DestNla::Stats(_) | DestNla::Stats64(_))
    }
}

impl DestNla {
    /// Decodes one destination attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            IPVS_DEST_ATTR_ADDR => DestNla::Addr(v.to_vec()),
            IPVS_DEST_ATTR_PORT => DestNla::Port(parse_u16_be(v)?),
            IPVS_DEST_ATTR_FWD_METHOD => DestNla::FwdMethod(parse_u32(v)?),
            IPVS_DEST_ATTR_WEIGHT => {
                DestNla::Weight(i32::from_ne_bytes(fixed(v, "IPVS_DEST_ATTR_WEIGHT")?))
            }
            IPVS_DEST_ATTR_U_THRESH => DestNla::UThresh(parse_u32(v)?),
            IPVS_DEST_ATTR_L_THRESH => DestNla::LThresh(parse_u32(v)?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => DestNla::ActiveConns(parse_u32(v)?),
            IPVS_DEST_ATTR_INACT_CONNS => DestNla::InactConns(parse_u32(v)?),
            IPVS_DEST_ATTR_PERSIST_CONNS => DestNla::PersistConns(parse_u32(v)?),
            IPVS_DEST_ATTR_STATS => DestNla::Stats(parse_nested(v, StatsNla::parse)?),
            IPVS_DEST_ATTR_ADDR_FAMILY => DestNla::AddrFamily(parse_u16(v)?),
            IPVS_DEST_ATTR_STATS64 => DestNla::Stats64(parse_nested(v, StatsNla::parse)?),
            IPVS_DEST_ATTR_TUN_TYPE => DestNla::TunType(parse_u8(v)?),
            IPVS_DEST_ATTR_TUN_PORT => DestNla::TunPort(parse_u16_be(v)?),
            IPVS_DEST_ATTR_TUN_FLAGS => DestNla::TunFlags(parse_u16(v)?),
            _ => DestNla::Other(other(buf)?),
        })
    }
}

/// An attribute of a connection-sync daemon (inside `IPVS_CMD_ATTR_DAEMON`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonNla {
    /// `IPVS_DAEMON_ATTR_STATE`: `IP_VS_STATE_MASTER` or `IP_VS_STATE_BACKUP`.
    State(u32),
    /// `IPVS_DAEMON_ATTR_MCAST_IFN`: the interface.
    McastIfn(String),
    /// `IPVS_DAEMON_ATTR_SYNC_ID`.
    SyncId(u32),
    /// `IPVS_DAEMON_ATTR_SYNC_MAXLEN`: UDP payload size.
    SyncMaxlen(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP`: IPv4 multicast group (network order).
    McastGroup([u8; 4]),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP6`: IPv6 multicast group.
    McastGroup6([u8; 16]),
    /// `IPVS_DAEMON_ATTR_MCAST_PORT`.
    McastPort(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_TTL`.
    McastTtl(u8),
    /// An attribute this crate does not know.
    Other(DefaultNla),
}

impl Nla for DaemonNla {
    fn value_len(&self) -> usize {
        use DaemonNla::*;
        match self {
            State(_) | SyncId(_) | McastGroup(_) => 4,
            McastIfn(s) => s.len() + 1,
            SyncMaxlen(_) | McastPort(_) => 2,
            McastGroup6(_) => 16,
            McastTtl(_) => 1,
            Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use DaemonNla::*;
        match self {
            State(_) => IPVS_DAEMON_ATTR_STATE,
            McastIfn(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            SyncMaxlen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            McastGroup(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            McastGroup6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            McastPort(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            McastTtl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use DaemonNla::*;
        match self {
            State(v) | SyncId(v) => {
                let _ = emit_u32(buf, *v);
            }
            McastIfn(s) => emit_cstr(buf, s),
            SyncMaxlen(v) | McastPort(v) => {
                let _ = emit_u16(buf, *v);
            }
            McastGroup(a) => buf[..4].copy_from_slice(a),
            McastGroup6(a) => buf[..16].copy_from_slice(a),
            McastTtl(v) => buf[0] = *v,
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl DaemonNla {
    /// Decodes one sync-daemon attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            IPVS_DAEMON_ATTR_STATE => DaemonNla::State(parse_u32(v)?),
            IPVS_DAEMON_ATTR_MCAST_IFN => DaemonNla::McastIfn(parse_string(v)?),
            IPVS_DAEMON_ATTR_SYNC_ID => DaemonNla::SyncId(parse_u32(v)?),
            IPVS_DAEMON_ATTR_SYNC_MAXLEN => DaemonNla::SyncMaxlen(parse_u16(v)?),
            IPVS_DAEMON_ATTR_MCAST_GROUP => {
                DaemonNla::McastGroup(fixed(v, "IPVS_DAEMON_ATTR_MCAST_GROUP")?)
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP6 => {
                DaemonNla::McastGroup6(fixed(v, "IPVS_DAEMON_ATTR_MCAST_GROUP6")?)
            }
            IPVS_DAEMON_ATTR_MCAST_PORT => DaemonNla::McastPort(parse_u16(v)?),
            IPVS_DAEMON_ATTR_MCAST_TTL => DaemonNla::McastTtl(parse_u8(v)?),
            _ => DaemonNla::Other(other(buf)?),
        })
    }
}

/// A first-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpvsNla {
    /// `IPVS_CMD_ATTR_SERVICE`.
    Service(Nested<ServiceNla>),
    /// `IPVS_CMD_ATTR_DEST`.
    Dest(Nested<DestNla>),
    /// `IPVS_CMD_ATTR_DAEMON`.
    Daemon(Nested<DaemonNla>),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP`, seconds.
    TimeoutTcp(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`, seconds.
    TimeoutTcpFin(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP`, seconds.
    TimeoutUdp(u32),
    /// `IPVS_INFO_ATTR_VERSION` (only in the `IPVS_CMD_GET_INFO` reply).
    InfoVersion(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE` (only in the `IPVS_CMD_GET_INFO` reply).
    InfoConnTabSize(u32),
    /// An attribute this crate does not know.
    Other(DefaultNla),
}

impl Nla for IpvsNla {
    fn value_len(&self) -> usize {
        use IpvsNla::*;
        match self {
            Service(v) => v.nlas.as_slice().buffer_len(),
            Dest(v) => v.nlas.as_slice().buffer_len(),
            Daemon(v) => v.nlas.as_slice().buffer_len(),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | InfoVersion(_)
            | InfoConnTabSize(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use IpvsNla::*;
        match self {
            Service(_) => IPVS_CMD_ATTR_SERVICE,
            Dest(_) => IPVS_CMD_ATTR_DEST,
            Daemon(_) => IPVS_CMD_ATTR_DAEMON,
            TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            InfoVersion(_) => IPVS_INFO_ATTR_VERSION,
            InfoConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use IpvsNla::*;
        match self {
            Service(v) => v.nlas.as_slice().emit(buf),
            Dest(v) => v.nlas.as_slice().emit(buf),
            Daemon(v) => v.nlas.as_slice().emit(buf),
            TimeoutTcp(v) | TimeoutTcpFin(v) | TimeoutUdp(v) | InfoVersion(v)
            | InfoConnTabSize(v) => {
                let _ = emit_u32(buf, *v);
            }
            Other(nla) => nla.emit_value(buf),
        }
    }
    fn is_nested(&self) -> bool {
        match self {
            IpvsNla::Service(n) => n.flagged,
            IpvsNla::Dest(n) => n.flagged,
            IpvsNla::Daemon(n) => n.flagged,
            _ => false,
        }
    }
}

impl IpvsNla {
    /// Decodes one first-level attribute of a message with command `cmd`
    /// (the `IPVS_CMD_GET_INFO` reply numbers its attributes differently).
    pub fn parse(buf: &NlaBuffer<&[u8]>, cmd: u8) -> Result<Self, DecodeError> {
        let v = buf.value();
        if cmd == IPVS_CMD_SET_INFO || cmd == IPVS_CMD_GET_INFO {
            return Ok(match buf.kind() {
                IPVS_INFO_ATTR_VERSION => IpvsNla::InfoVersion(parse_u32(v)?),
                IPVS_INFO_ATTR_CONN_TAB_SIZE => IpvsNla::InfoConnTabSize(parse_u32(v)?),
                _ => IpvsNla::Other(other(buf)?),
            });
        }
        Ok(match buf.kind() {
            IPVS_CMD_ATTR_SERVICE => IpvsNla::Service(Nested {
                nlas: parse_nested(v, ServiceNla::parse)?,
                flagged: buf.nested_flag(),
            }),
            IPVS_CMD_ATTR_DEST => IpvsNla::Dest(Nested {
                nlas: parse_nested(v, DestNla::parse)?,
                flagged: buf.nested_flag(),
            }),
            IPVS_CMD_ATTR_DAEMON => IpvsNla::Daemon(Nested {
                nlas: parse_nested(v, DaemonNla::parse)?,
                flagged: buf.nested_flag(),
            }),
            IPVS_CMD_ATTR_TIMEOUT_TCP => IpvsNla::TimeoutTcp(parse_u32(v)?),
            IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => IpvsNla::TimeoutTcpFin(parse_u32(v)?),
            IPVS_CMD_ATTR_TIMEOUT_UDP => IpvsNla::TimeoutUdp(parse_u32(v)?),
            _ => IpvsNla::Other(other(buf)?),
        })
    }
}
