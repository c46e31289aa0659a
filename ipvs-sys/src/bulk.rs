//! Bulk requests on generic-netlink sockets of their own: many changes in
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
//!
//! How large the kernel makes the datagrams of a dump matters too, see
//! [`Size`].

use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
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

/// Dumps between two yields to the runtime, so that reading a large table
/// does not hold up the caller's other tasks.
const YIELD_EVERY: usize = 256;

/// The receive buffer of a socket, which decides the size of the datagrams
/// of the dumps it reads: the kernel makes each as large as the largest
/// buffer the socket has offered to `recvmsg` (at least `NLMSG_GOODSIZE`, at
/// most 32 KiB) and allocates that much, zeroed, for every datagram, the last
/// one holding nothing but `NLMSG_DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// For the destinations of one service: mostly two datagrams, the first
    /// a few hundred bytes. `NLMSG_GOODSIZE` of a 4 KiB-page kernel (a page
    /// less the 320-byte `skb_shared_info`), the smallest the kernel makes. A
    /// kernel that sends more (larger pages) gets the large buffer from the
    /// first datagram that did not fit on, and the dump is read again.
    Small,
    /// For all services: the kernel walks its service table from the start
    /// for every datagram of that dump, so the fewer datagrams the better.
    Large,
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::Small => 4096 - 320,
            Size::Large => 32 * 1024,
        }
    }
}

/// A non-blocking generic-netlink socket talking to the kernel, and its
/// receive buffer.
struct Channel {
    socket: TokioSocket,
    /// The receive buffer (its length is what `recvmsg` is offered).
    inp: Vec<u8>,
    /// The length of the datagram last read.
    got: usize,
    /// False while an exchange is under way: if it never finished (its
    /// future was dropped, or the socket failed), replies may still be
    /// queued, so the socket is replaced before the next one.
    clean: bool,
}

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

impl Channel {
    fn open(size: Size) -> io::Result<Channel> {
        Ok(Channel {
            socket: open_socket()?,
            inp: vec![0; size.bytes()],
            got: 0,
            clean: true,
        })
    }

    /// Starts an exchange by sending `datagram`, on a fresh socket if the
    /// last exchange did not finish.
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if !self.clean {
            self.socket = open_socket()?;
        }
        self.clean = false;
        let sent = self.socket.socket_ref().send(datagram, 0)?;
        if sent != datagram.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                datagram.len()
            )));
        }
        Ok(())
    }

    /// Reads the next datagram into `inp`, waiting for one if none is queued
    /// (the kernel has always queued it already, see above). False if it did
    /// not fit: the buffer is then enlarged, and the exchange must be redone.
    async fn recv(&mut self) -> io::Result<bool> {
        let size = self.inp.len();
        let mut buf = &mut self.inp[..];
        let n = match self.socket.socket_ref().recv(&mut buf, libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let socket = &self.socket;
                std::future::poll_fn(|cx| socket.poll_recv(cx, &mut buf)).await?;
                // Without MSG_TRUNC, a datagram that fills the buffer may
                // have been cut: count it as cut.
                match size - buf.len() {
                    n if n == size => n + 1,
                    n => n,
                }
            }
            Err(e) => return Err(e),
        };
        if n > size {
            let large = Size::Large.bytes();
            if size >= large {
                return Err(io::Error::other(format!(
                    "a {n}-byte datagram did not fit in {size} bytes"
                )));
            }
            self.inp = vec![0; large];
            self.got = 0;
            return Ok(false);
        }
        self.got = n;
        Ok(true)
    }

    /// The messages of the datagram last read.
    fn replies(&self) -> impl Iterator<Item = Result<Reply, DecodeError>> + '_ {
        let buf = &self.inp[..self.got];
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
}

/// The sockets for bulk requests to the IPVS family.
pub(crate) struct Bulk {
    family_id: u16,
    seq: u32,
    /// The datagram being built.
    out: Vec<u8>,
    /// For changes and destination dumps.
    small: Channel,
    /// For service dumps; opened on first use.
    large: Option<Channel>,
}

impl std::fmt::Debug for Bulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulk")
            .field("family_id", &self.family_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Bulk {
    /// Opens the sockets (on the current tokio runtime).
    pub(crate) fn open(family_id: u16) -> io::Result<Bulk> {
        Ok(Bulk {
            family_id,
            seq: 0,
            out: Vec::with_capacity(64 * 1024),
            small: Channel::open(Size::Small)?,
            large: None,
        })
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
        self.out.clear();
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
        let chan = &mut self.small;
        chan.send(&self.out)?;
        loop {
            if !chan.recv().await? {
                // Refusals are small (NETLINK_CAP_ACK): this is a kernel
                // that sends more than it should.
                return Err(io::Error::other("a reply did not fit in the buffer"));
            }
            let mut done = false;
            for reply in chan.replies() {
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
                chan.clean = true;
                return Ok(());
            }
        }
    }

    /// Sends `request` as a dump on the socket for `size` and hands each
    /// reply's payload to `each`. False if a datagram did not fit in the
    /// receive buffer: the buffer is larger now, and the dump must be read
    /// again from the start.
    pub(crate) async fn dump(
        &mut self,
        size: Size,
        request: IpvsMessage,
        op: Operation,
        target: &(dyn Fn() -> String + Sync),
        each: &mut (dyn FnMut(IpvsMessage) -> Result<(), DecodeError> + Send),
    ) -> Result<bool, IpvsError> {
        self.out.clear();
        let seq = self.push(request, NLM_F_REQUEST | NLM_F_DUMP);
        let chan = match size {
            Size::Small => &mut self.small,
            Size::Large => match &mut self.large {
                Some(chan) => chan,
                empty => empty.insert(Channel::open(Size::Large).map_err(IpvsError::Socket)?),
            },
        };
        chan.send(&self.out).map_err(|e| IpvsError::Send {
            op,
            target: target(),
            message: e.to_string(),
        })?;
        let decode = |source| IpvsError::Decode {
            op,
            target: target(),
            source,
        };
        loop {
            if !chan.recv().await.map_err(IpvsError::Socket)? {
                // The rest of this dump is left on the socket, which is
                // replaced before its next use (`Channel::send`).
                return Ok(false);
            }
            let mut end = None;
            for reply in chan.replies() {
                let reply = reply.map_err(decode)?;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => each(m.payload).map_err(decode)?,
                    NetlinkPayload::Done(d) => {
                        end = Some(if d.code < 0 {
                            Err(IpvsError::kernel(op, target(), -d.code))
                        } else {
                            Ok(true)
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
                chan.clean = true;
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
