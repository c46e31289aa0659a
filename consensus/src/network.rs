//! The Raft transport between directors: one TCP connection per peer, frames
//! of a 4-byte big-endian length and a JSON body, a request answered by one
//! reply. The server side hands each request to the local Raft node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::lease::{Grant, Refusal};
use crate::state::NodeId;
use crate::tls::{Io, Tls};
use crate::TypeConfig;

/// Largest frame accepted (a snapshot chunk or a batch of entries).
const MAX_FRAME: usize = 64 << 20;

/// A request frame: who sends it, and what.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: NodeId,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A lease renewal from the director named in the envelope.
    Lease,
    /// The director named in the envelope asks the leader to commit its own
    /// draining flag (a director drains only itself: docs/fencing.md).
    Drain(bool),
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Lease(Result<Grant, Refusal>),
    Drain(Result<(), String>),
}

/// Message loss between nodes, for partition tests: a blocked pair (A, B)
/// drops everything A sends to B (requests and replies). Empty in
/// production, where real partitions do this.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: std::sync::RwLock<std::collections::BTreeSet<(NodeId, NodeId)>>,
    /// Links on which Raft log entries are lost (heartbeats, votes and
    /// lease renewals pass).
    entries_blocked: std::sync::RwLock<std::collections::BTreeSet<(NodeId, NodeId)>>,
}

impl Faults {
    /// Drops what `from` sends to `to`.
    pub fn block(&self, from: NodeId, to: NodeId) {
        if let Ok(mut b) = self.blocked.write() {
            b.insert((from, to));
        }
    }

    /// Restores the link from `from` to `to` (not its log entries).
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        if let Ok(mut b) = self.blocked.write() {
            b.remove(&(from, to));
        }
    }

    /// Drops the log entries `from` replicates to `to`; the rest passes.
    pub fn block_entries(&self, from: NodeId, to: NodeId) {
        if let Ok(mut b) = self.entries_blocked.write() {
            b.insert((from, to));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        if let Ok(mut b) = self.blocked.write() {
            b.clear();
        }
        if let Ok(mut b) = self.entries_blocked.write() {
            b.clear();
        }
    }

    /// Whether log entries `from` sends to `to` are dropped.
    pub fn blocks_entries(&self, from: NodeId, to: NodeId) -> bool {
        self.entries_blocked
            .read()
            .map(|b| b.contains(&(from, to)))
            .unwrap_or(false)
    }

    /// Whether what `from` sends to `to` is dropped.
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked
            .read()
            .map(|b| b.contains(&(from, to)))
            .unwrap_or(false)
    }
}

/// What the transport's server side needs besides Raft: lease renewals.
pub trait LeaseService: Send + Sync + 'static {
    /// Answers a renewal from `director`.
    fn renew(&self, director: NodeId) -> Result<Grant, Refusal>;
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len =
        u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Frames read from a connection without losing bytes when a read is
/// cancelled: what came in stays here for the next call.
#[derive(Debug, Default)]
struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole frame's body. Cancel-safe: a read that did not
    /// complete consumed nothing (tokio's `read`), and what did come in is
    /// kept.
    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(head) = self.buf.get(..4) {
                let mut len = [0u8; 4];
                len.copy_from_slice(head);
                let len = u32::from_be_bytes(len) as usize;
                if len > MAX_FRAME {
                    return Err(std::io::Error::other(format!(
                        "frame of {len} bytes exceeds {MAX_FRAME}"
                    )));
                }
                if self.buf.len() >= 4 + len {
                    let body = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Ok(body);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a reply",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The server side of one node.
#[derive(Clone)]
pub struct Server {
    /// This node's id.
    pub id: NodeId,
    /// Its Raft.
    pub raft: Raft<TypeConfig>,
    /// Its lease service.
    pub leases: Arc<dyn LeaseService>,
    /// Injected message loss.
    pub faults: Arc<Faults>,
    /// Transport security.
    pub tls: Tls,
    /// When this node last accepted the leader's entries or heartbeat.
    pub contact: Arc<LeaderContact>,
}

/// The last time a follower accepted an AppendEntries (entries or a
/// heartbeat) from a leader, on tokio's clock, the clock openraft's own
/// election timers and vote refusal count on; and the gate a prompt
/// election closes while it asks openraft for the election.
#[derive(Debug, Default)]
pub struct LeaderContact {
    inner: std::sync::Mutex<Contact>,
}

#[derive(Debug, Default)]
struct Contact {
    last: Option<(NodeId, tokio::time::Instant)>,
    /// A prompt election is being asked for: no AppendEntries is handed to
    /// openraft or acknowledged.
    closed: bool,
    /// Raised by every closing: an AppendEntries handed to openraft before
    /// a closing is not acknowledged after it.
    generation: u64,
}

impl LeaderContact {
    /// Before an AppendEntries is handed to openraft: `None` while the gate
    /// is closed (the request is dropped), else the generation to give
    /// [`LeaderContact::heard`] after.
    pub fn admit(&self) -> Option<u64> {
        let c = self.inner.lock().ok()?;
        (!c.closed).then_some(c.generation)
    }

    /// Notes that `leader`'s AppendEntries, admitted at `generation`, was
    /// accepted just now, and says whether it may be acknowledged: false
    /// when a prompt election closed the gate since it was admitted. The
    /// note and the check are one step, so an acknowledgement either came
    /// before the closing (and the election sees it and is not asked for)
    /// or is never sent.
    pub fn heard(&self, leader: NodeId, generation: u64) -> bool {
        let Ok(mut c) = self.inner.lock() else {
            return false;
        };
        if c.closed || c.generation != generation {
            return false;
        }
        c.last = Some((leader, tokio::time::Instant::now()));
        true
    }

    /// The leader last heard, and when.
    pub fn last(&self) -> Option<(NodeId, tokio::time::Instant)> {
        self.inner.lock().ok().and_then(|c| c.last)
    }

    /// Before a prompt election: closes the gate unless an AppendEntries
    /// was accepted after `heard` (the silence the election was decided on
    /// is over: no election). True when the gate closed; the caller asks
    /// openraft for the election and then [`LeaderContact::reopen`]s it.
    pub fn close_unless_heard_since(&self, heard: tokio::time::Instant) -> bool {
        let Ok(mut c) = self.inner.lock() else {
            return false;
        };
        if c.last.is_some_and(|(_, at)| at > heard) {
            return false;
        }
        c.closed = true;
        c.generation += 1;
        true
    }

    /// The election is in openraft's queue: AppendEntries handed to it from
    /// now on are handled after this node's vote for itself.
    pub fn reopen(&self) {
        if let Ok(mut c) = self.inner.lock() {
            c.closed = false;
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("id", &self.id).finish()
    }
}

/// Serves Raft RPCs and lease renewals from peers until `shutdown` turns true.
pub async fn serve(listener: TcpListener, server: Server, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let server = server.clone();
                    let stop = shutdown.clone();
                    tokio::spawn(async move { connection(stream, peer, server, stop).await });
                }
                Err(e) => {
                    tracing_warn(&format!("raft transport: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

fn tracing_warn(msg: &str) {
    eprintln!("{msg}");
}

async fn connection(
    tcp: TcpStream,
    _peer: SocketAddr,
    server: Server,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // A peer without a valid certificate fails here and is dropped.
    let Ok(mut stream) = server.tls.accept(tcp).await else {
        return;
    };
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut stream) => f,
            _ = shutdown.changed() => return,
        };
        let Ok(frame) = frame else { return };
        let Ok(Envelope { from, request }) = serde_json::from_slice::<Envelope>(&frame) else {
            return;
        };
        if server.faults.blocks(from, server.id) {
            // Lost on the way in: the sender times out.
            continue;
        }
        let raft = &server.raft;
        let reply = match request {
            Request::Append(rpc) => {
                // A prompt election is being asked for: the connection is
                // closed (the leader's next request reconnects).
                let Some(generation) = server.contact.admit() else {
                    return;
                };
                let r = raft.append_entries(rpc).await;
                // Anything but a refusal of the sender's vote: openraft has
                // just renewed the leader lease this follower grants it.
                // Stamped after openraft handled it, and every quorum-round
                // acknowledgement comes through here: a prompt election
                // (node.rs) counts its wait from no earlier than the last
                // acknowledgement, which the safety argument needs
                // (docs/fencing.md, "Losing the leader"). Never stamp
                // earlier, or from anywhere else. A prompt election asked
                // for since this request was admitted: no acknowledgement.
                if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_)))
                    && !server.contact.heard(from, generation)
                {
                    return;
                }
                Reply::Append(r)
            }
            Request::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
            Request::Snapshot(rpc) => Reply::Snapshot(raft.install_snapshot(rpc).await),
            Request::Lease => Reply::Lease(server.leases.renew(from)),
            Request::Drain(draining) => Reply::Drain(
                raft.client_write(crate::state::Command::SetDraining {
                    director: from,
                    draining,
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            ),
        };
        if server.faults.blocks(server.id, from) {
            // Lost on the way back.
            continue;
        }
        let Ok(body) = serde_json::to_vec(&reply) else {
            return;
        };
        if write_frame(&mut stream, &body).await.is_err() {
            return;
        }
    }
}

/// Makes a [`Peer`] client for each target node.
#[derive(Debug, Clone)]
pub struct Network {
    /// This node's id (the sender of every request).
    pub id: NodeId,
    /// Injected message loss.
    pub faults: Arc<Faults>,
    /// Transport security.
    pub tls: Tls,
    /// Idle connections, shared by the clients this factory makes.
    pub pool: Pool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let mut peer = Peer::new(
            self.id,
            target,
            node.addr.clone(),
            self.faults.clone(),
            self.tls.clone(),
        );
        peer.pool = Some(self.pool.clone());
        peer
    }
}

/// Idle connections per target and address. openraft makes a new client for
/// every heartbeat round it is asked for (the quorum rounds of the leases,
/// every renewal interval) and for every election; without the pool each
/// would open a TCP connection and do a TLS handshake.
#[derive(Clone, Default)]
pub struct Pool(Arc<std::sync::Mutex<BTreeMap<(NodeId, String), Idle>>>);

/// The idle connections to one target.
type Idle = Vec<Box<dyn Io>>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self
            .0
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0);
        f.debug_struct("Pool").field("idle", &idle).finish()
    }
}

/// Idle connections kept per target.
const POOL_PER_TARGET: usize = 4;

impl Pool {
    fn take(&self, target: NodeId, addr: &str) -> Option<Box<dyn Io>> {
        self.0
            .lock()
            .ok()?
            .get_mut(&(target, addr.to_string()))?
            .pop()
    }

    fn put(&self, target: NodeId, addr: &str, stream: Box<dyn Io>) {
        if let Ok(mut m) = self.0.lock() {
            let idle = m.entry((target, addr.to_string())).or_default();
            if idle.len() < POOL_PER_TARGET {
                idle.push(stream);
            }
        }
    }
}

/// The client side of one peer: connects when needed, reconnects after an
/// error.
pub struct Peer {
    from: NodeId,
    target: NodeId,
    addr: String,
    stream: Option<Box<dyn Io>>,
    faults: Arc<Faults>,
    tls: Tls,
    /// Where the connection comes from and goes back to, if pooled.
    pool: Option<Pool>,
    /// What came in on the connection and was not used yet: a call
    /// cancelled in the middle of a reply loses no byte of it.
    inbox: FrameBuf,
    /// A request is being written (a call cancelled now leaves half a
    /// frame: that connection is closed).
    writing: bool,
    /// A request was written and its reply not read yet (a call cancelled
    /// while waiting leaves it set), since when: the next call on this
    /// client reads that reply first and drops it, so no caller takes
    /// another's reply; a connection whose late reply has not come within
    /// [`LATE_REPLY`] is closed. Never given back to the pool while set.
    late: Option<std::time::Instant>,
    /// How many bytes of log entries one AppendEntries request may carry
    /// (see [`EntryBudget`]).
    budget: EntryBudget,
    /// An AppendEntries call with entries is under way; still set at the
    /// next call when openraft gave up on it (its own timeout cancelled it).
    sending_entries: bool,
}

/// How long a client waits, over its next calls, for the late reply of a
/// call it gave up on before it closes the connection.
pub const LATE_REPLY: Duration = Duration::from_secs(2);

/// The size of the log entries one AppendEntries request carries.
///
/// openraft gives an AppendEntries call one heartbeat interval (40 ms at
/// the default timing) and, when it times out, sends the same entries
/// again: a follower far behind (thousands of services committed at start)
/// would be sent megabytes that never arrive in time, again and again,
/// while the leader spends its CPU encoding them. So a request carries a
/// prefix of the entries of at most `bytes` (always at least one entry) and
/// reports the prefix as a partial success; the budget halves after a
/// request with entries timed out and doubles after one that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryBudget {
    /// Bytes of encoded entries per request.
    pub bytes: usize,
}

impl EntryBudget {
    /// Where the budget starts.
    pub const START: usize = 64 * 1024;
    /// It never shrinks below this (one entry is always sent).
    pub const MIN: usize = 4 * 1024;
    /// It never grows above this.
    pub const MAX: usize = 1024 * 1024;

    fn shrink(&mut self) {
        self.bytes = (self.bytes / 2).max(Self::MIN);
    }

    fn grow(&mut self) {
        self.bytes = self.bytes.saturating_mul(2).min(Self::MAX);
    }
}

impl Default for EntryBudget {
    fn default() -> Self {
        EntryBudget { bytes: Self::START }
    }
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `value` as the transport and the log encode it, in bytes
/// (`usize::MAX` if it cannot be encoded).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut c = Counter(0);
    match serde_json::to_writer(&mut c, value) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// Keeps the longest prefix of `entries` whose encoding fits in `budget`
/// bytes (at least one entry); returns the log id of the last entry kept
/// when some were left out.
fn trim_entries(
    entries: &mut Vec<openraft::Entry<TypeConfig>>,
    budget: usize,
) -> Option<openraft::LogId<NodeId>> {
    let mut used: usize = 0;
    let mut keep = 0;
    for e in entries.iter() {
        let len = encoded_len(e);
        if keep > 0 && used.saturating_add(len) > budget {
            break;
        }
        used = used.saturating_add(len);
        keep += 1;
    }
    let keep = keep.max(1);
    if keep >= entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.writing || self.late.is_some() || !self.inbox.is_empty() {
            return;
        }
        if let (Some(pool), Some(stream)) = (&self.pool, self.stream.take()) {
            pool.put(self.target, &self.addr, stream);
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("from", &self.from)
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("connected", &self.stream.is_some())
            .finish()
    }
}

impl Peer {
    /// A client from `from` to node `target` at `addr`.
    pub fn new(from: NodeId, target: NodeId, addr: String, faults: Arc<Faults>, tls: Tls) -> Self {
        Peer {
            from,
            target,
            addr,
            stream: None,
            faults,
            tls,
            pool: None,
            inbox: FrameBuf::default(),
            writing: false,
            late: None,
            budget: EntryBudget::default(),
            sending_entries: false,
        }
    }

    /// The current entry budget of AppendEntries requests to this peer.
    pub fn entry_budget(&self) -> EntryBudget {
        self.budget
    }

    /// Asks the target (the leader) to renew `from`'s lease.
    pub async fn renew_lease(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<Grant, Refusal>, std::io::Error> {
        match self.call(Request::Lease, timeout).await? {
            Reply::Lease(r) => Ok(r),
            _ => Err(std::io::Error::other("mismatched reply")),
        }
    }

    /// Asks the target (the leader) to commit `from`'s draining flag.
    pub async fn set_draining(
        &mut self,
        draining: bool,
        timeout: Duration,
    ) -> Result<Result<(), String>, std::io::Error> {
        match self.call(Request::Drain(draining), timeout).await? {
            Reply::Drain(r) => Ok(r),
            _ => Err(std::io::Error::other("mismatched reply")),
        }
    }

    /// Drops the connection and whatever was pending on it.
    fn disconnect(&mut self) {
        self.stream = None;
        self.inbox = FrameBuf::default();
        self.writing = false;
        self.late = None;
    }

    /// One request and its reply on the current connection. The late reply
    /// of a call given up on comes first: it is read and dropped. Keeping
    /// the connection matters: the peer is still working on that request (a
    /// follower storing entries), and a new connection would cost a TLS
    /// handshake inside the next call's short time (openraft gives
    /// AppendEntries one heartbeat interval).
    async fn exchange(&mut self, body: &[u8]) -> Result<Vec<u8>, std::io::Error> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        if self.late.is_some() {
            self.inbox.next(stream).await?;
            self.late = None;
        }
        self.writing = true;
        write_frame(stream, body).await?;
        self.writing = false;
        self.late = Some(std::time::Instant::now());
        let frame = self.inbox.next(stream).await?;
        self.late = None;
        Ok(frame)
    }

    async fn call(&mut self, request: Request, timeout: Duration) -> Result<Reply, std::io::Error> {
        if self.faults.blocks(self.from, self.target) {
            tokio::time::sleep(timeout).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply from node {} within {timeout:?}", self.target),
            ));
        }
        let envelope = Envelope {
            from: self.from,
            request,
        };
        let body = serde_json::to_vec(&envelope).map_err(std::io::Error::other)?;
        if self.writing || self.late.is_some_and(|since| since.elapsed() > LATE_REPLY) {
            // Half a request went out, or a reply that late is not coming:
            // a new connection.
            self.disconnect();
        }
        let result = tokio::time::timeout(timeout, async {
            // An idle connection from the pool may have been closed by the
            // peer (a restart) meanwhile: on an error, once more on a new one.
            if self.stream.is_none() {
                self.stream = self
                    .pool
                    .as_ref()
                    .and_then(|p| p.take(self.target, &self.addr));
                if self.stream.is_some() {
                    match self.exchange(&body).await {
                        Ok(frame) => return Ok(frame),
                        Err(_) => self.disconnect(),
                    }
                }
            }
            if self.stream.is_none() {
                let stream = self.tls.connect(&self.addr).await?;
                self.disconnect();
                self.stream = Some(stream);
            }
            self.exchange(&body).await
        })
        .await;
        let frame = match result {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                self.disconnect();
                return Err(e);
            }
            Err(_) => {
                // The connection stays; what is pending on it is noted.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply from node {} within {timeout:?}", self.target),
                ));
            }
        };
        serde_json::from_slice(&frame).map_err(std::io::Error::other)
    }

    fn unreachable<E: std::error::Error>(
        &self,
        e: std::io::Error,
    ) -> RPCError<NodeId, BasicNode, E> {
        match e.kind() {
            std::io::ErrorKind::TimedOut => RPCError::Network(NetworkError::new(&e)),
            _ => RPCError::Unreachable(Unreachable::new(&e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if !rpc.entries.is_empty() && self.faults.blocks_entries(self.from, self.target) {
            return Err(self.unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "log entries lost (injected)",
            )));
        }
        if std::mem::take(&mut self.sending_entries) {
            // The last one never finished: it was too big for the time.
            self.budget.shrink();
        }
        let carries = !rpc.entries.is_empty();
        let sent_up_to = trim_entries(&mut rpc.entries, self.budget.bytes);
        self.sending_entries = carries;
        let result = self.call(Request::Append(rpc), option.hard_ttl()).await;
        self.sending_entries = false;
        match result {
            Ok(Reply::Append(Ok(r))) => {
                if carries {
                    self.budget.grow();
                }
                // The follower took the prefix: report that much.
                Ok(match (r, sent_up_to) {
                    (AppendEntriesResponse::Success, Some(last)) => {
                        AppendEntriesResponse::PartialSuccess(Some(last))
                    }
                    (r, _) => r,
                })
            }
            Err(e) if carries && e.kind() == std::io::ErrorKind::TimedOut => {
                self.budget.shrink();
                Err(self.unreachable(e))
            }
            Ok(Reply::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.unreachable(std::io::Error::other("mismatched reply"))),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Request::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.unreachable(std::io::Error::other("mismatched reply"))),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(self.unreachable(std::io::Error::other("mismatched reply"))),
            Err(e) => Err(self.unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The prompt election's gate: an acknowledgement and the decision to
    /// ask for votes never both happen.
    #[test]
    fn an_acknowledgement_and_a_prompt_election_exclude_each_other() {
        let c = LeaderContact::default();
        let g = c.admit().unwrap();
        assert!(c.heard(1, g));
        let (_, silence) = c.last().unwrap();
        // An entry accepted after the silence was read: no election.
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.heard(1, c.admit().unwrap()));
        assert!(!c.close_unless_heard_since(silence));
        assert!(c.admit().is_some());
        // The silence holds. An entry admitted before the gate closes is
        // not acknowledged after it, and none is admitted while it is
        // closed, from any leader.
        let (_, silence) = c.last().unwrap();
        let before = c.admit().unwrap();
        assert!(c.close_unless_heard_since(silence));
        assert!(c.admit().is_none());
        assert!(!c.heard(1, before));
        assert!(!c.heard(2, before));
        assert_eq!(c.last().unwrap().1, silence);
        // The election is in openraft's queue: entries admitted from now
        // on are handled after the vote, and acknowledged as ever.
        c.reopen();
        assert!(!c.heard(1, before));
        let after = c.admit().unwrap();
        assert!(c.heard(2, after));
    }

    /// A leader stand-in on loopback: counts the connections it accepts and
    /// answers every renewal with a grant whose term is the request's number
    /// on its connection, after `delay`.
    async fn leader(delay: Duration) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) as u64;
                tokio::spawn(async move {
                    let mut term = n * 100;
                    while read_frame(&mut s).await.is_ok() {
                        term += 1;
                        tokio::time::sleep(delay).await;
                        let reply = Reply::Lease(Ok(Grant {
                            lease_ms: 1,
                            term,
                            log_index: 0,
                        }));
                        let body = serde_json::to_vec(&reply).unwrap();
                        if write_frame(&mut s, &body).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn peer(addr: &str, pool: &Pool) -> Peer {
        let tls = Tls::load(&crate::Security::Insecure).unwrap();
        let mut p = Peer::new(1, 2, addr.to_string(), Arc::default(), tls);
        p.pool = Some(pool.clone());
        p
    }

    async fn term(p: &mut Peer) -> u64 {
        p.renew_lease(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .term
    }

    fn entries(n: u64, size: usize) -> Vec<openraft::Entry<TypeConfig>> {
        (1..=n)
            .map(|i| openraft::Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: openraft::EntryPayload::Normal(crate::Command::PutDirector(
                    crate::state::Director {
                        id: 1,
                        name: "x".repeat(size),
                        address: "10.10.0.11:7946".into(),
                        role: crate::state::Role::Data,
                    },
                )),
            })
            .collect()
    }

    /// A request keeps the longest prefix that fits the budget, never less
    /// than one entry, and names the last entry it kept.
    #[test]
    fn entries_are_trimmed_to_the_budget() {
        let one = encoded_len(&entries(1, 1000)[0]);
        let mut e = entries(10, 1000);
        assert_eq!(trim_entries(&mut e, 3 * one + one / 2), Some(e[2].log_id));
        assert_eq!(e.len(), 3);
        let mut e = entries(10, 1000);
        assert_eq!(trim_entries(&mut e, 1), Some(e[0].log_id));
        assert_eq!(e.len(), 1);
        let mut e = entries(10, 1000);
        assert_eq!(trim_entries(&mut e, 11 * one), None);
        assert_eq!(e.len(), 10);
        let mut e = entries(0, 1000);
        assert_eq!(trim_entries(&mut e, 1), None);
        let mut b = EntryBudget::default();
        for _ in 0..20 {
            b.shrink();
        }
        assert_eq!(b.bytes, EntryBudget::MIN);
        for _ in 0..20 {
            b.grow();
        }
        assert_eq!(b.bytes, EntryBudget::MAX);
    }

    #[tokio::test]
    async fn clients_reuse_idle_connections() {
        let (addr, accepted) = leader(Duration::ZERO).await;
        let pool = Pool::default();
        for want in 1..=3 {
            let mut p = peer(&addr, &pool);
            assert_eq!(term(&mut p).await, want);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A call cancelled after its request was written leaves a reply on the
    /// way: the next call on that client reads it first and drops it, on the
    /// same connection, so no caller takes a reply meant for another
    /// request; a client dropped with a reply on the way does not give its
    /// connection back to the pool.
    #[tokio::test]
    async fn a_late_reply_is_dropped_never_taken_for_another() {
        let (addr, accepted) = leader(Duration::from_millis(200)).await;
        let pool = Pool::default();
        let mut p = peer(&addr, &pool);
        assert_eq!(term(&mut p).await, 1);
        let cut = tokio::time::timeout(Duration::from_millis(50), term(&mut p)).await;
        assert!(cut.is_err());
        // The same client, the same connection: 2 was the late reply.
        assert_eq!(term(&mut p).await, 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // A client dropped halfway does not give its connection back.
        let mut q = peer(&addr, &pool);
        let cut = tokio::time::timeout(Duration::from_millis(50), term(&mut q)).await;
        assert!(cut.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(q);
        drop(p);
        let mut r = peer(&addr, &pool);
        // p's connection came back; q's did not.
        assert_eq!(term(&mut r).await, 4);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A frame read cancelled halfway loses nothing: the next read returns
    /// the whole frame.
    #[tokio::test]
    async fn a_cancelled_read_keeps_what_came_in() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut inbox = FrameBuf::default();
        a.write_all(&[0, 0]).await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(20), inbox.next(&mut b)).await;
        assert!(cut.is_err());
        a.write_all(&[0, 3, b'a']).await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(20), inbox.next(&mut b)).await;
        assert!(cut.is_err());
        a.write_all(b"bc").await.unwrap();
        assert_eq!(inbox.next(&mut b).await.unwrap(), b"abc");
        assert!(inbox.is_empty());
    }
}
