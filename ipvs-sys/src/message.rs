//! An IPVS generic-netlink message: a command and its attributes.

use netlink_packet_core::{DecodeError, Emitable, NlasIterator, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::constants::*;
use crate::nla::IpvsNla;

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpvsCmd {
    /// `IPVS_CMD_NEW_SERVICE`: add a service (also each entry of a service dump).
    NewService,
    /// `IPVS_CMD_SET_SERVICE`: edit a service.
    SetService,
    /// `IPVS_CMD_DEL_SERVICE`: delete a service.
    DelService,
    /// `IPVS_CMD_GET_SERVICE`: get one service, or dump all.
    GetService,
    /// `IPVS_CMD_NEW_DEST`: add a destination (also each entry of a dump).
    NewDest,
    /// `IPVS_CMD_SET_DEST`: edit a destination.
    SetDest,
    /// `IPVS_CMD_DEL_DEST`: delete a destination.
    DelDest,
    /// `IPVS_CMD_GET_DEST`: dump a service's destinations.
    GetDest,
    /// `IPVS_CMD_NEW_DAEMON`: start a sync daemon (also each entry of a dump).
    NewDaemon,
    /// `IPVS_CMD_DEL_DAEMON`: stop a sync daemon.
    DelDaemon,
    /// `IPVS_CMD_GET_DAEMON`: dump the sync daemons.
    GetDaemon,
    /// `IPVS_CMD_SET_CONFIG`: set timeouts (also the `GET_CONFIG` reply).
    SetConfig,
    /// `IPVS_CMD_GET_CONFIG`: get timeouts.
    GetConfig,
    /// `IPVS_CMD_SET_INFO`: the `GET_INFO` reply.
    SetInfo,
    /// `IPVS_CMD_GET_INFO`: version and connection table size.
    GetInfo,
    /// `IPVS_CMD_ZERO`: zero counters (of one service, or all).
    Zero,
    /// `IPVS_CMD_FLUSH`: delete every service.
    Flush,
    /// A command this crate does not know.
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        use IpvsCmd::*;
        match cmd {
            NewService => IPVS_CMD_NEW_SERVICE,
            SetService => IPVS_CMD_SET_SERVICE,
            DelService => IPVS_CMD_DEL_SERVICE,
            GetService => IPVS_CMD_GET_SERVICE,
            NewDest => IPVS_CMD_NEW_DEST,
            SetDest => IPVS_CMD_SET_DEST,
            DelDest => IPVS_CMD_DEL_DEST,
            GetDest => IPVS_CMD_GET_DEST,
            NewDaemon => IPVS_CMD_NEW_DAEMON,
            DelDaemon => IPVS_CMD_DEL_DAEMON,
            GetDaemon => IPVS_CMD_GET_DAEMON,
            SetConfig => IPVS_CMD_SET_CONFIG,
            GetConfig => IPVS_CMD_GET_CONFIG,
            SetInfo => IPVS_CMD_SET_INFO,
            GetInfo => IPVS_CMD_GET_INFO,
            Zero => IPVS_CMD_ZERO,
            Flush => IPVS_CMD_FLUSH,
            Other(c) => c,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(c: u8) -> IpvsCmd {
        use IpvsCmd::*;
        match c {
            IPVS_CMD_NEW_SERVICE => NewService,
            IPVS_CMD_SET_SERVICE => SetService,
            IPVS_CMD_DEL_SERVICE => DelService,
            IPVS_CMD_GET_SERVICE => GetService,
            IPVS_CMD_NEW_DEST => NewDest,
            IPVS_CMD_SET_DEST => SetDest,
            IPVS_CMD_DEL_DEST => DelDest,
            IPVS_CMD_GET_DEST => GetDest,
            IPVS_CMD_NEW_DAEMON => NewDaemon,
            IPVS_CMD_DEL_DAEMON => DelDaemon,
            IPVS_CMD_GET_DAEMON => GetDaemon,
            IPVS_CMD_SET_CONFIG => SetConfig,
            IPVS_CMD_GET_CONFIG => GetConfig,
            IPVS_CMD_SET_INFO => SetInfo,
            IPVS_CMD_GET_INFO => GetInfo,
            IPVS_CMD_ZERO => Zero,
            IPVS_CMD_FLUSH => Flush,
            other => Other(other),
        }
    }
}

/// The payload of an IPVS generic-netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: IpvsCmd,
    /// Its first-level attributes.
    pub nlas: Vec<IpvsNla>,
}

impl IpvsMessage {
    /// A message with command `cmd` and attributes `nlas`.
    pub fn new(cmd: IpvsCmd, nlas: Vec<IpvsNla>) -> Self {
        IpvsMessage { cmd, nlas }
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd.into()
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.nlas.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.nlas.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut nlas = Vec::new();
        for nla in NlasIterator::new(buf) {
            nlas.push(IpvsNla::parse(&nla?, header.cmd)?);
        }
        Ok(IpvsMessage {
            cmd: header.cmd.into(),
            nlas,
        })
    }
}
