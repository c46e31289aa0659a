//! The async client: one generic-netlink socket in the caller's network
//! namespace, the IPVS family resolved once.

use std::net::IpAddr;

use std::sync::Arc;

use futures::lock::Mutex;
use futures::stream::StreamExt;
use genetlink::{GenetlinkError, GenetlinkHandle};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;

use crate::bulk::{Bulk, Size};
use crate::error::{IpvsError, Operation};
use crate::message::{IpvsCmd, IpvsMessage};
use crate::nla::{IpvsNla, Nested};
use crate::types::{
    Destination, Family, Info, Service, ServiceKey, SyncDaemon, SyncState, Timeouts,
};

/// One change to the IPVS table, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// `ipvsadm -A`.
    AddService(Service),
    /// `ipvsadm -E`.
    EditService(Service),
    /// `ipvsadm -D`.
    DelService(ServiceKey),
    /// `ipvsadm -a`.
    AddDest(ServiceKey, Destination),
    /// `ipvsadm -e`.
    EditDest(ServiceKey, Destination),
    /// `ipvsadm -d`.
    DelDest(ServiceKey, IpAddr, u16),
}

impl Change {
    /// The request message of this change, the operation it is, and what it
    /// acts on in ipvsadm's notation.
    pub fn to_message(&self) -> (IpvsMessage, Operation, String) {
        (self.message(), self.operation(), self.target())
    }

    /// The request message of this change.
    pub(crate) fn message(&self) -> IpvsMessage {
        match self {
            Change::AddService(s) => IpvsMessage::new(
                IpvsCmd::NewService,
                vec![IpvsNla::Service(Nested::new(s.to_nlas()))],
            ),
            Change::EditService(s) => IpvsMessage::new(
                IpvsCmd::SetService,
                vec![IpvsNla::Service(Nested::new(s.to_nlas()))],
            ),
            Change::DelService(k) => IpvsMessage::new(
                IpvsCmd::DelService,
                vec![IpvsNla::Service(Nested::new(k.to_nlas()))],
            ),
            Change::AddDest(k, d) => IpvsMessage::new(
                IpvsCmd::NewDest,
                vec![
                    IpvsNla::Service(Nested::new(k.to_nlas())),
                    IpvsNla::Dest(Nested::new(d.to_nlas())),
                ],
            ),
            Change::EditDest(k, d) => IpvsMessage::new(
                IpvsCmd::SetDest,
                vec![
                    IpvsNla::Service(Nested::new(k.to_nlas())),
                    IpvsNla::Dest(Nested::new(d.to_nlas())),
                ],
            ),
            Change::DelDest(k, addr, port) => IpvsMessage::new(
                IpvsCmd::DelDest,
                vec![
                    IpvsNla::Service(Nested::new(k.to_nlas())),
                    IpvsNla::Dest(Nested::new(Destination::key_nlas(addr, *port))),
                ],
            ),
        }
    }

    /// The operation this change is.
    pub(crate) fn operation(&self) -> Operation {
        match self {
            Change::AddService(_) => Operation::AddService,
            Change::EditService(_) => Operation::EditService,
            Change::DelService(_) => Operation::DelService,
            Change::AddDest(..) => Operation::AddDest,
            Change::EditDest(..) => Operation::EditDest,
            Change::DelDest(..) => Operation::DelDest,
        }
    }

    /// What this change acts on, in ipvsadm's notation.
    pub(crate) fn target(&self) -> String {
        match self {
            Change::AddService(s) | Change::EditService(s) => s.key.to_string(),
            Change::DelService(k) => k.to_string(),
            Change::AddDest(k, d) | Change::EditDest(k, d) => dest_target(k, &d.addr, d.port),
            Change::DelDest(k, addr, port) => dest_target(k, addr, *port),
        }
    }
}

fn dest_target(k: &ServiceKey, addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port} of {k}"),
        IpAddr::V6(a) => format!("[{a}]:{port} of {k}"),
    }
}

/// How many requests [`IpvsHandle::execute`] sends at once by default (also
/// the most it sends at once).
pub const DEFAULT_WINDOW: usize = 256;

/// A client of the kernel's IPVS in the caller's network namespace.
///
/// It holds two generic-netlink sockets: one (through `genetlink`) for single
/// requests, one for bulk work (reading the whole table, making many
/// changes), which clones of the handle share and take turns on.
#[derive(Debug, Clone)]
pub struct IpvsHandle {
    genl: GenetlinkHandle,
    family_id: u16,
    bulk: Arc<Mutex<Bulk>>,
}

impl IpvsHandle {
    /// Opens a generic-netlink socket (its I/O runs as a task on the current
    /// tokio runtime) and resolves the IPVS family.
    pub async fn connect() -> Result<IpvsHandle, IpvsError> {
        let (conn, genl, _) = genetlink::new_connection().map_err(IpvsError::Socket)?;
        tokio::spawn(conn);
        let family = genl
            .resolve_family::<IpvsMessage>()
            .await
            .map_err(|e| match e {
                GenetlinkError::NetlinkError(io) if io.raw_os_error() == Some(2) => {
                    IpvsError::NotAvailable
                }
                GenetlinkError::NetlinkError(io) => IpvsError::Socket(io),
                other => IpvsError::Socket(std::io::Error::other(other.to_string())),
            })?;
        let bulk = Bulk::open(family.id).map_err(IpvsError::Socket)?;
        Ok(IpvsHandle {
            genl,
            family_id: family.id,
            bulk: Arc::new(Mutex::new(bulk)),
        })
    }

    /// The IPVS family's generic-netlink id.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// Sends one request; the replies' payloads (none for an acknowledged
    /// change, one per entry for a dump).
    pub async fn request(
        &self,
        msg: IpvsMessage,
        dump: bool,
        op: Operation,
        target: &str,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family_id);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        nl.finalize();
        let mut replies = self
            .genl
            .clone()
            .send_request(nl)
            .map_err(|e| IpvsError::Send {
                op,
                target: target.to_string(),
                message: e.to_string(),
            })?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|source| IpvsError::Decode {
                op,
                target: target.to_string(),
                source,
            })?;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m.payload),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(IpvsError::kernel(op, target.to_string(), -code.get()));
                    }
                }
                NetlinkPayload::Done(_) => break,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Version and connection table size (`ipvsadm -Ln`, first line).
    pub async fn info(&self) -> Result<Info, IpvsError> {
        let replies = self
            .request(
                IpvsMessage::new(IpvsCmd::GetInfo, vec![]),
                false,
                Operation::Info,
                "",
            )
            .await?;
        let mut info = Info {
            version: 0,
            conn_table_size: 0,
        };
        for nla in replies.iter().flat_map(|m| m.nlas.iter()) {
            match nla {
                IpvsNla::InfoVersion(v) => info.version = *v,
                IpvsNla::InfoConnTabSize(v) => info.conn_table_size = *v,
                _ => {}
            }
        }
        Ok(info)
    }

    /// Every service (`ipvsadm -Ln`, without destinations).
    pub async fn services(&self) -> Result<Vec<Service>, IpvsError> {
        let mut bulk = self.bulk.lock().await;
        services(&mut bulk).await
    }

    /// One service (`ipvsadm -Ln -t ADDR:PORT`, without destinations).
    pub async fn service(&self, key: &ServiceKey) -> Result<Service, IpvsError> {
        let op = Operation::GetService;
        let target = key.to_string();
        let msg = IpvsMessage::new(
            IpvsCmd::GetService,
            vec![IpvsNla::Service(Nested::new(key.to_nlas()))],
        );
        let replies = self.request(msg, false, op, &target).await?;
        replies
            .iter()
            .flat_map(|m| m.nlas.iter())
            .find_map(|nla| match nla {
                IpvsNla::Service(s) => Some(Service::from_nlas(&s.nlas)),
                _ => None,
            })
            .unwrap_or_else(|| Err("the reply holds no service".into()))
            .map_err(|source| decode_error(op, &target, source))
    }

    /// The destinations of a service.
    pub async fn destinations(&self, key: &ServiceKey) -> Result<Vec<Destination>, IpvsError> {
        let mut bulk = self.bulk.lock().await;
        destinations(&mut bulk, key).await
    }

    /// Every service with its destinations, in the kernel's order: one
    /// service dump, then one destination dump per service, read on the bulk
    /// socket one after the other (the kernel runs one dump per socket at a
    /// time).
    pub async fn table(&self) -> Result<Vec<(Service, Vec<Destination>)>, IpvsError> {
        let mut bulk = self.bulk.lock().await;
        let services = services(&mut bulk).await?;
        let mut table = Vec::with_capacity(services.len());
        for (i, s) in services.into_iter().enumerate() {
            Bulk::pace(i).await;
            let dests = destinations(&mut bulk, &s.key).await?;
            table.push((s, dests));
        }
        Ok(table)
    }

    /// Applies one change.
    pub async fn apply(&self, change: &Change) -> Result<(), IpvsError> {
        let (msg, op, target) = change.to_message();
        self.request(msg, false, op, &target).await.map(|_| ())
    }

    /// Applies changes in order, sending up to `window` (at most
    /// [`DEFAULT_WINDOW`]) in one datagram; the kernel handles them one after
    /// another, in order, and answers only the ones it refuses (and the last
    /// of each datagram). Every change is attempted; the result of each, in
    /// order.
    pub async fn execute(&self, changes: &[Change], window: usize) -> Vec<Result<(), IpvsError>> {
        let mut bulk = self.bulk.lock().await;
        bulk.execute(changes, window).await
    }

    /// `ipvsadm -A`.
    pub async fn add_service(&self, service: &Service) -> Result<(), IpvsError> {
        self.apply(&Change::AddService(service.clone())).await
    }

    /// `ipvsadm -E`.
    pub async fn edit_service(&self, service: &Service) -> Result<(), IpvsError> {
        self.apply(&Change::EditService(service.clone())).await
    }

    /// `ipvsadm -D`.
    pub async fn del_service(&self, key: &ServiceKey) -> Result<(), IpvsError> {
        self.apply(&Change::DelService(*key)).await
    }

    /// `ipvsadm -a`.
    pub async fn add_destination(
        &self,
        key: &ServiceKey,
        dest: &Destination,
    ) -> Result<(), IpvsError> {
        self.apply(&Change::AddDest(*key, dest.clone())).await
    }

    /// `ipvsadm -e`.
    pub async fn edit_destination(
        &self,
        key: &ServiceKey,
        dest: &Destination,
    ) -> Result<(), IpvsError> {
        self.apply(&Change::EditDest(*key, dest.clone())).await
    }

    /// `ipvsadm -d`.
    pub async fn del_destination(
        &self,
        key: &ServiceKey,
        addr: IpAddr,
        port: u16,
    ) -> Result<(), IpvsError> {
        self.apply(&Change::DelDest(*key, addr, port)).await
    }

    /// `ipvsadm -C`: deletes every service.
    pub async fn flush(&self) -> Result<(), IpvsError> {
        self.request(
            IpvsMessage::new(IpvsCmd::Flush, vec![]),
            false,
            Operation::Flush,
            "",
        )
        .await
        .map(|_| ())
    }

    /// `ipvsadm -Z [-t ...]`: zeroes the counters of one service, or of all.
    pub async fn zero(&self, key: Option<&ServiceKey>) -> Result<(), IpvsError> {
        let nlas = key
            .map(|k| vec![IpvsNla::Service(Nested::new(k.to_nlas()))])
            .unwrap_or_default();
        let target = key.map(|k| k.to_string()).unwrap_or_default();
        self.request(
            IpvsMessage::new(IpvsCmd::Zero, nlas),
            false,
            Operation::Zero,
            &target,
        )
        .await
        .map(|_| ())
    }

    /// `ipvsadm -L --timeout`.
    pub async fn timeouts(&self) -> Result<Timeouts, IpvsError> {
        let replies = self
            .request(
                IpvsMessage::new(IpvsCmd::GetConfig, vec![]),
                false,
                Operation::GetTimeouts,
                "",
            )
            .await?;
        let mut t = Timeouts::default();
        for nla in replies.iter().flat_map(|m| m.nlas.iter()) {
            match nla {
                IpvsNla::TimeoutTcp(v) => t.tcp = *v,
                IpvsNla::TimeoutTcpFin(v) => t.tcp_fin = *v,
                IpvsNla::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        Ok(t)
    }

    /// `ipvsadm --set TCP TCPFIN UDP` (0 leaves a timeout unchanged).
    pub async fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError> {
        let nlas = vec![
            IpvsNla::TimeoutTcp(t.tcp),
            IpvsNla::TimeoutTcpFin(t.tcp_fin),
            IpvsNla::TimeoutUdp(t.udp),
        ];
        self.request(
            IpvsMessage::new(IpvsCmd::SetConfig, nlas),
            false,
            Operation::SetTimeouts,
            "",
        )
        .await
        .map(|_| ())
    }

    /// `ipvsadm -L --daemon`.
    pub async fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        let op = Operation::ListDaemons;
        let replies = self
            .request(IpvsMessage::new(IpvsCmd::GetDaemon, vec![]), true, op, "")
            .await?;
        replies
            .iter()
            .flat_map(|m| m.nlas.iter())
            .filter_map(|nla| match nla {
                IpvsNla::Daemon(d) => Some(SyncDaemon::from_nlas(&d.nlas)),
                _ => None,
            })
            .map(|r| r.map_err(|source| decode_error(op, "", source)))
            .collect()
    }

    /// `ipvsadm --start-daemon`.
    pub async fn start_sync_daemon(&self, daemon: &SyncDaemon) -> Result<(), IpvsError> {
        let msg = IpvsMessage::new(
            IpvsCmd::NewDaemon,
            vec![IpvsNla::Daemon(Nested::new(daemon.to_nlas()))],
        );
        self.request(msg, false, Operation::StartDaemon, &daemon.interface)
            .await
            .map(|_| ())
    }

    /// `ipvsadm --stop-daemon master|backup`.
    pub async fn stop_sync_daemon(&self, state: SyncState) -> Result<(), IpvsError> {
        let msg = IpvsMessage::new(
            IpvsCmd::DelDaemon,
            vec![IpvsNla::Daemon(Nested::new(vec![
                crate::nla::DaemonNla::State(state.number()),
            ]))],
        );
        let target = match state {
            SyncState::Master => "master",
            SyncState::Backup => "backup",
        };
        self.request(msg, false, Operation::StopDaemon, target)
            .await
            .map(|_| ())
    }
}

async fn services(bulk: &mut Bulk) -> Result<Vec<Service>, IpvsError> {
    loop {
        let mut out = Vec::new();
        let whole = bulk
            .dump(
                Size::Large,
                IpvsMessage::new(IpvsCmd::GetService, vec![]),
                Operation::ListServices,
                &String::new,
                &mut |m| {
                    for nla in m.nlas {
                        if let IpvsNla::Service(s) = nla {
                            out.push(Service::from_nlas(&s.nlas)?);
                        }
                    }
                    Ok(())
                },
            )
            .await?;
        if whole {
            return Ok(out);
        }
    }
}

async fn destinations(bulk: &mut Bulk, key: &ServiceKey) -> Result<Vec<Destination>, IpvsError> {
    let family: Family = key.family();
    loop {
        let mut out = Vec::new();
        let whole = bulk
            .dump(
                Size::Small,
                IpvsMessage::new(
                    IpvsCmd::GetDest,
                    vec![IpvsNla::Service(Nested::new(key.to_nlas()))],
                ),
                Operation::ListDests,
                &|| key.to_string(),
                &mut |m| {
                    for nla in m.nlas {
                        if let IpvsNla::Dest(d) = nla {
                            out.push(Destination::from_nlas(&d.nlas, family)?);
                        }
                    }
                    Ok(())
                },
            )
            .await?;
        if whole {
            return Ok(out);
        }
    }
}

fn decode_error(
    op: Operation,
    target: &str,
    source: netlink_packet_core::DecodeError,
) -> IpvsError {
    IpvsError::Decode {
        op,
        target: target.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handle's futures can be spawned on a multi-threaded runtime (the
    /// daemon does): a compile-time check.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        #[expect(dead_code, reason = "only type-checked")]
        fn check(h: &IpvsHandle, key: &ServiceKey) {
            send(&h.table());
            send(&h.services());
            send(&h.destinations(key));
            send(&h.execute(&[], 1));
            send(&h.info());
        }
    }
}
