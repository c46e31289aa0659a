//! Bulk requests on a generic-netlink socket of their own: many changes in
//! one datagram, and dumps read straight off the socket into a reused buffer.
//!
//! The kernel handles a request to a generic-netlink family while the sender
//! is still in `sendmsg`, one message after the other, in order: when
//! `sendmsg` returns, every reply is already queued on the socket. So a batch
//! of changes is one `sendmsg` of many messages, only the last asking for an
//! acknowledgement (`NLM_F_ACK`); the kernel answers the others only if they
//! fail (`netlink_rcv_skb`), and the acknowledgement of the last says that
//! every answer has been read. A dump is one `sendmsg` and one `recvmsg` per
//! datagram of replies. This is what makes a 50,000-change apply or a
//! 10,000-service table read cost a few system calls per hundred entries
//! instead of a few per entry.

use std::io;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, AsyncSocket, SocketAddr, TokioSocket};

use crate::error::{IpvsError, Operation};
use crate::handle::Change;
use crate::message::IpvsMessage;

/// The most changes sent in one datagram. Every one of them may be refused,
/// and each refusal is a datagram the socket must hold until it is read
/// (about 768 bytes of the default 208 KiB receive buffer); 256 fit.
pub(crate) const MAX_BATCH: usize = 256;

/// Room for the largest datagram the kernel sends: dumps come in at most
/// 32 KiB (`netlink_dump`).
const RECV_BUFFER: usize = 64 * 1024;

/// Dumps between two yields to the runtime, so that reading a large table
/// does not hold up the caller's other tasks.
const YIELD_EVERY: usize = 256;

/// A generic-netlink socket for bulk requests to the IPVS family.
pub(crate) struct Bulk {
    socket: TokioSocket,
    family_id: u16,
    seq: u32,
    /// The datagram being built.
    out: Vec<u8>,
    /// The datagram last read.
    inp: Vec<u8>,
    /// False while an exchange is under way: if it never finished (its
    /// future was dropped, or the socket failed), replies may still be
    /// queued, so the socket is replaced before the next one.
    clean: bool,
}

impl std::fmt::Debug for Bulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulk")
            .field("family_id", &self.family_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// A non-blocking generic-netlink socket talking to the kernel.
fn open_socket() -> io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(NETLINK_GENERIC)?;
    let inner = socket.socket_mut();
    inner.bind_auto()?;
    inner.connect(&SocketAddr::new(0, 0))?;
    // Refusals without a copy of the request: smaller replies. Kernels
    // before 4.3 lack the option and copy it; that is fine too.
    let _ = inner.set_cap_ack(true);
    Ok(socket)
}

type Reply = NetlinkMessage<GenlMessage<IpvsMessage>>;

impl Bulk {
    /// Opens the socket (on the current tokio runtime).
    pub(crate) fn open(family_id: u16) -> io::Result<Bulk> {
        Ok(Bulk {
            socket: open_socket()?,
            family_id,
            seq: 0,
            out: Vec::with_capacity(64 * 1024),
            inp: Vec::with_capacity(RECV_BUFFER),
            clean: true,
        })
    }

    /// Starts an exchange, on a fresh socket if the last one did not finish.
    fn begin(&mut self) -> io::Result<()> {
        if !self.clean {
            self.socket = open_socket()?;
        }
        self.clean = false;
        self.out.clear();
        Ok(())
    }

    /// Appends a request to the datagram being built; its sequence number.
    fn push(&mut self, msg: IpvsMessage, flags: u16) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family_id);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let start = self.out.len();
        let len = nl.buffer_len();
        // Messages in one datagram start at 4-byte boundaries (NLMSG_ALIGN).
        self.out.resize(start + ((len + 3) & !3), 0);
        nl.serialize(&mut self.out[start..start + len]);
        self.seq
    }

    /// Sends the datagram built.
    fn send(&self) -> io::Result<()> {
        let sent = self.socket.socket_ref().send(&self.out, 0)?;
        if sent != self.out.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                self.out.len()
            )));
        }
        Ok(())
    }

    /// Reads the next datagram into `inp`, waiting for one if none is queued
    /// (the kernel has always queued it already, see above).
    async fn recv(&mut self) -> io::Result<()> {
        self.inp.clear();
        let n = match self.socket.socket_ref().recv(&mut self.inp, libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let (socket, inp) = (&self.socket, &mut self.inp);
                std::future::poll_fn(|cx| socket.poll_recv(cx, inp)).await?;
                self.inp.len()
            }
            Err(e) => return Err(e),
        };
        if n > self.inp.len() || n == self.inp.capacity() {
            return Err(io::Error::other(format!(
                "a {n}-byte datagram did not fit in {} bytes",
                self.inp.capacity()
            )));
        }
        Ok(())
    }

    /// The messages of the datagram last read.
    fn replies(&self) -> impl Iterator<Item = Result<Reply, netlink_packet_core::DecodeError>> + '_ {
        let buf = &self.inp[..];
        let mut at = 0;
        std::iter::from_fn(move || {
            let rest = buf.get(at..).filter(|r| r.len() >= 16)?;
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < 16 || len > rest.len() {
                at = buf.len();
                return Some(Err(format!(
                    "a {len}-byte netlink message in {} bytes",
                    rest.len()
                )
                .into()));
            }
            at += (len + 3) & !3;
            Some(Reply::deserialize(&rest[..len]))
        })
    }

    /// Makes `changes` in order, up to `window` (at most [`MAX_BATCH`]) in
    /// one datagram. Every change is attempted; the result of each, in order.
    pub(crate) async fn execute(
        &mut self,
        changes: &[Change],
        window: usize,
    ) -> Vec<Result<(), IpvsError>> {
        let mut results: Vec<Result<(), IpvsError>> = Vec::with_capacity(changes.len());
        for batch in changes.chunks(window.clamp(1, MAX_BATCH)) {
            let base = results.len();
            results.extend(batch.iter().map(|_| Ok(())));
            if let Err(e) = self.execute_batch(batch, &mut results[base..]).await {
                // Whatever was not answered failed with the socket.
                let message = e.to_string();
                for (change, result) in batch.iter().zip(&mut results[base..]) {
                    if result.is_ok() {
                        *result = Err(IpvsError::Send {
                            op: change.operation(),
                            target: change.target(),
                            message: message.clone(),
                        });
                    }
                }
            }
        }
        results
    }

    /// One datagram of changes; refusals go into `results`.
    async fn execute_batch(
        &mut self,
        batch: &[Change],
        results: &mut [Result<(), IpvsError>],
    ) -> io::Result<()> {
        self.begin()?;
        let first = self.seq.wrapping_add(1);
        for (i, change) in batch.iter().enumerate() {
            let flags = if i + 1 == batch.len() {
                NLM_F_REQUEST | NLM_F_ACK
            } else {
                NLM_F_REQUEST
            };
            self.push(change.message(), flags);
        }
        let last = self.seq;
        self.send()?;
        loop {
            self.recv().await?;
            let mut done = false;
            for reply in self.replies() {
                let reply = reply.map_err(|e| io::Error::other(e.to_string()))?;
                let seq = reply.header.sequence_number;
                let i = seq.wrapping_sub(first) as usize;
                let Some(change) = batch.get(i) else {
                    continue;
                };
                if let NetlinkPayload::Error(e) = reply.payload {
                    if let Some(code) = e.code {
                        results[i] = Err(IpvsError::kernel(
                            change.operation(),
                            change.target(),
                            -code.get(),
                        ));
                    }
                    done |= seq == last;
                }
            }
            if done {
                self.clean = true;
                return Ok(());
            }
        }
    }

    /// Sends `request` as a dump and hands each reply's payload to `each`.
    pub(crate) async fn dump(
        &mut self,
        request: IpvsMessage,
        op: Operation,
        target: &(dyn Fn() -> String + Sync),
        each: &mut (dyn FnMut(IpvsMessage) -> Result<(), netlink_packet_core::DecodeError> + Send),
    ) -> Result<(), IpvsError> {
        self.begin().map_err(IpvsError::Socket)?;
        let seq = self.push(request, NLM_F_REQUEST | NLM_F_DUMP);
        self.send().map_err(|e| IpvsError::Send {
            op,
            target: target(),
            message: e.to_string(),
        })?;
        loop {
            self.recv().await.map_err(IpvsError::Socket)?;
            let mut end = None;
            for reply in self.replies() {
                let reply = reply.map_err(|source| IpvsError::Decode {
                    op,
                    target: target(),
                    source,
                })?;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        each(m.payload).map_err(|source| IpvsError::Decode {
                            op,
                            target: target(),
                            source,
                        })?;
                    }
                    NetlinkPayload::Done(d) => {
                        end = Some(if d.code < 0 {
                            Err(IpvsError::kernel(op, target(), -d.code))
                        } else {
                            Ok(())
                        });
                    }
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            end = Some(Err(IpvsError::kernel(op, target(), -code.get())));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(end) = end {
                self.clean = true;
                return end;
            }
        }
    }

    /// Yields to the runtime now and then during a long series of dumps.
    pub(crate) async fn pace(count: usize) {
        if count > 0 && count % YIELD_EVERY == 0 {
            tokio::task::yield_now().await;
        }
    }
}
