//! Draining: a director hands its VIPs over without failing a request.
//!
//! 1. Close the gate: new TCP connections to its VIPs (a SYN without ACK)
//!    are dropped before IPVS sees them (nftables, `table inet
//!    director_drain`). The client retransmits the SYN (after 1 s), by when
//!    the VIP answers elsewhere.
//! 2. Wait until the connections IPVS is carrying for those VIPs are done
//!    (with the connection sync running, only until the handshakes under
//!    way are: the open connections move with the VIPs)
//!    (`/proc/net/ip_vs_conn`: nothing but TIME_WAIT and CLOSE left, and
//!    no handshake once the gate has been closed for half a second), at
//!    most `drain.connection_wait_ms`. A connection still open then is cut
//!    by the handover: the next owner has never seen it.
//! 3. Stop holding (ARP/NDP answers, then the local routes), commit the
//!    draining flag through the leader, and wait until every VIP has
//!    another owner. Open the gate again five seconds later: until the new
//!    owner has announced, clients still send here, and a SYN dropped by
//!    the gate is sent again where a forwarded one would come back as
//!    "host unreachable".

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use consensus::Node;
use serde::{Deserialize, Serialize};

use crate::announce::hold::HoldRule;
use crate::config::ConfigCell;
use crate::dataplane::driver::Handle;
use crate::dataplane::nft::Gate;

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainReport {
    /// True after a drain, false after an undrain.
    pub drained: bool,
    /// Where each VIP went.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<Moved>,
    /// The open connections the drain waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<Connections>,
}

/// A VIP handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// The VIP.
    pub vip: String,
    /// Its new owner's name.
    pub owner: Option<String>,
}

/// The connection wait of a drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// How long it waited.
    pub waited_ms: u64,
    /// Connections still open when it stopped waiting (cut by the handover).
    pub left: usize,
    /// Open connections the connection sync carried to the new owners
    /// (nothing waited for them).
    #[serde(default)]
    pub handed_over: usize,
}

/// Why a drain or an undrain failed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Nothing to drain here.
    #[error("this director holds no VIPs (a witness, or no ARP socket)")]
    NothingToDrain,
    /// The gate could not be closed; nothing changed.
    #[error(
        "closing the VIPs to new connections failed ({0}); nothing changed, still holding its VIPs"
    )]
    Gate(String),
    /// The drain failed part way and was undone.
    #[error("{0}; back in service, holding its VIPs")]
    Undone(String),
    /// Committing the end of a drain failed.
    #[error("clearing the drain: {0}")]
    Undrain(consensus::ConsensusError),
}

/// How long a stopping director waits for its VIPs to move.
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(10);

/// Where the kernel lists IPVS connections (of this network namespace).
const IPVS_CONNECTIONS: &str = "/proc/net/ip_vs_conn";

/// How long after the gate closed a handshake in progress may take to
/// complete (many round trips on a LAN).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// How often the connection wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// How long the gate stays closed after the VIPs moved away: longer than
/// the new owner takes to announce them.
const GATE_LINGER: Duration = Duration::from_secs(5);

/// Drains this director: it stops taking connections for its VIPs, lets
/// the open ones finish, stops holding the VIPs, commits its draining flag,
/// and waits until the leader has moved every VIP it owned.
#[derive(Debug)]
pub struct Drainer {
    /// The Raft node.
    pub node: Arc<Node>,
    /// The running configuration.
    pub config: Arc<ConfigCell>,
    /// The hold rule the drain suspends; None on a witness or without the
    /// ARP socket: nothing to drain.
    pub rule: Option<HoldRule>,
    /// The drain gate (the nft reconciler applies it).
    pub gate: Arc<Gate>,
    /// The connection-sync reconciler (None without IPVS): while it runs,
    /// open connections are handed over instead of waited for.
    pub sync: Option<Handle>,
    /// conntrackd: `nat` connections are handed over only while it runs.
    pub conntrackd: Option<Arc<crate::dataplane::conntrack::Conntrackd>>,
    /// The VIP routes reconciler.
    pub routes: Option<Handle>,
    /// The nftables reconciler.
    pub nft: Option<Handle>,
}

impl Drainer {
    /// The drain; on success, where each VIP went.
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, DrainError> {
        let (Some(rule), Some(routes), Some(nft)) = (&self.rule, &self.routes, &self.nft) else {
            return Err(DrainError::NothingToDrain);
        };
        tracing::info!(timeout_ms = timeout.as_millis() as u64, "drain started");
        let deadline = tokio::time::Instant::now() + timeout;
        let me = self.node.id();
        let before: BTreeSet<IpAddr> = self
            .node
            .state()
            .owners
            .iter()
            .filter(|(_, o)| o.director == me)
            .map(|(v, _)| *v)
            .collect();
        // 1 and 2. No new connections; the open ones finish here. At most
        //    half of the drain's time, so that the move has the rest.
        let wait = self.config.get().drain_connection_wait.min(timeout / 2);
        let connections = if before.is_empty() || wait.is_zero() {
            Connections::default()
        } else {
            self.gate.close(before.clone());
            if !nft.applied(timeout / 4).await {
                self.gate.open();
                nft.kick();
                let why = nft
                    .stats
                    .error()
                    .unwrap_or_else(|| "the nftables reconciler did not run".into());
                return Err(DrainError::Gate(why));
            }
            let started = tokio::time::Instant::now();
            // With the connection sync running, the other directors know
            // the open connections: they move with the VIPs, and only the
            // handshakes under way are waited for.
            // `nat` with its source NAT needs conntrackd too.
            let nat = {
                let state = self.node.state();
                state.services.values().any(|vs| {
                    before.contains(&vs.vip)
                        && vs.forwarding == consensus::state::Forwarding::Nat
                        && vs.snat
                })
            };
            let conntrack_ok = self
                .conntrackd
                .as_ref()
                .is_some_and(|c| c.problem().is_none());
            let synced = self.config.get().sync.enabled
                && (!nat || (self.config.get().sync.conntrack && conntrack_ok))
                && self.sync.as_ref().is_some_and(|h| {
                    let p = *h.passes.borrow();
                    p.count > 0 && p.ok
                });
            let mut handed_over = 0;
            let left = loop {
                let table = read_connections();
                let handshakes = started.elapsed() < HANDSHAKE_GRACE;
                let open: Vec<&str> = open_lines(&table, &before, handshakes).collect();
                if open.is_empty() {
                    break 0;
                }
                if synced && !handshakes {
                    handed_over = open.len();
                    tracing::info!(
                        open = open.len(),
                        "drain: open connections handed over by the connection sync"
                    );
                    break 0;
                }
                if started.elapsed() >= wait {
                    tracing::warn!(
                        open = open.len(),
                        connections = %open.join("; "),
                        "drain: connections still open after {wait:?}, cut by the handover"
                    );
                    break open.len();
                }
                tokio::time::sleep(POLL).await;
            };
            Connections {
                waited_ms: started.elapsed().as_millis() as u64,
                left,
                handed_over,
            }
        };
        // 3. Stop holding: ARP answers stop at once, the routes go with the
        //    next reconcile, which this waits for.
        rule.set_releasing(true);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !routes.applied(left).await {
            return Err(self.undo("the VIP routes reconciler did not run").await);
        }
        //    Commit the draining flag; the leader then moves the VIPs.
        loop {
            match self.node.set_draining(true).await {
                Ok(()) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(self.undo(&format!("committing the drain: {e}")).await),
            }
        }
        //    Wait until no VIP is owned here any more.
        let mut changes = self.node.watch();
        loop {
            let state = self.node.state();
            if state.owners.values().all(|o| o.director != me) {
                self.open_gate_later();
                let moved: Vec<Moved> = before
                    .iter()
                    .map(|v| {
                        let to = state
                            .owners
                            .get(v)
                            .and_then(|o| state.directors.get(&o.director));
                        Moved {
                            vip: v.to_string(),
                            owner: to.map(|d| d.name.clone()),
                        }
                    })
                    .collect();
                tracing::info!(
                    moved = moved.len(),
                    waited_ms = connections.waited_ms,
                    cut = connections.left,
                    "drain done"
                );
                return Ok(DrainReport {
                    drained: true,
                    moved,
                    connections: Some(connections),
                });
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let stuck: Vec<String> = state
                    .owners
                    .iter()
                    .filter(|(_, o)| o.director == me)
                    .map(|(v, _)| v.to_string())
                    .collect();
                return Err(self
                    .undo(&format!(
                        "no other director took {} within {timeout:?}",
                        stuck.join(", ")
                    ))
                    .await);
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(100)), changes.changed()).await;
        }
    }

    /// Back in service after a failed drain; the reason, for the caller.
    async fn undo(&self, why: &str) -> DrainError {
        tracing::warn!(reason = why, "drain failed; back in service");
        let _ = self.node.set_draining(false).await;
        if let Some(r) = &self.rule {
            r.set_releasing(false);
        }
        self.open_gate();
        DrainError::Undone(why.to_string())
    }

    /// Ends a drain: back in service.
    pub async fn undrain(&self) -> Result<DrainReport, DrainError> {
        self.node
            .set_draining(false)
            .await
            .map_err(DrainError::Undrain)?;
        if let Some(r) = &self.rule {
            r.set_releasing(false);
        }
        self.open_gate();
        tracing::info!("back in service");
        Ok(DrainReport::default())
    }

    /// A director drained earlier (by a stop or `director drain`) and
    /// running again without a drain in progress is back in service: clears
    /// its draining flag whenever the state shows it (retried every second).
    pub async fn keep_in_service(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.rule.is_none() {
            return;
        }
        let mut changes = self.node.watch();
        let me = self.node.id();
        loop {
            let draining = self.node.state().draining.contains_key(&me);
            if draining && !self.releasing() {
                match self.node.set_draining(false).await {
                    Ok(()) => tracing::info!("back in service after a drain that did not end here"),
                    Err(e) => tracing::debug!(error = %e, "clearing an old drain"),
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Whether a drain has stopped this director holding.
    pub fn releasing(&self) -> bool {
        self.rule.as_ref().is_some_and(|r| r.releasing())
    }

    /// After a handover: the clients' neighbour entries still point here
    /// until the new owner has announced. A SYN that arrives meanwhile is
    /// dropped by the gate (the client sends it again, to the new owner),
    /// never forwarded onto the LAN, where no one answers for the VIP and
    /// the client would be told the host is unreachable. The gate opens
    /// [`GATE_LINGER`] later, unless a drain closed it again meanwhile.
    fn open_gate_later(&self) {
        if let Some(r) = &self.routes {
            r.kick();
        }
        let gate = self.gate.clone();
        let nft = self.nft.clone();
        let closed = gate.closed();
        tokio::spawn(async move {
            tokio::time::sleep(GATE_LINGER).await;
            if gate.closed() == closed {
                open(&gate, nft.as_ref());
                tracing::debug!("drain gate opened after the handover");
            }
        });
    }

    /// Takes new connections again (at the nft reconciler's next pass).
    fn open_gate(&self) {
        open(&self.gate, self.nft.as_ref());
        if let Some(r) = &self.routes {
            r.kick();
        }
    }
}

/// Opens the gate and wakes the nft reconciler that removes it.
fn open(gate: &Gate, nft: Option<&Handle>) {
    gate.open();
    if let Some(n) = nft {
        n.kick();
    }
}

/// The kernel's IPVS connection list (empty without IPVS).
fn read_connections() -> String {
    std::fs::read_to_string(IPVS_CONNECTIONS).unwrap_or_default()
}

/// The TCP connections in `table` (the text of `/proc/net/ip_vs_conn`) to
/// one of `vips` that are still open: every state but TIME_WAIT and CLOSE
/// (the handshake, ESTABLISHED, and a close under way). With `handshakes`
/// false, connections still in the handshake do not count: once the gate has
/// been closed for [`HANDSHAKE_GRACE`], a handshake IPVS still shows is one
/// that will not complete (the client gave up, a SYN-ACK was lost); the
/// kernel keeps it for a minute.
fn open_lines<'a>(
    table: &'a str,
    vips: &'a BTreeSet<IpAddr>,
    handshakes: bool,
) -> impl Iterator<Item = &'a str> + 'a {
    table.lines().filter(move |line| {
        connection(line).is_some_and(|c| {
            c.protocol == "TCP"
                && vips.contains(&c.vip)
                && !matches!(c.state, "TIME_WAIT" | "CLOSE" | "NONE")
                && (handshakes || !matches!(c.state, "SYN_RECV" | "SYN_SENT" | "SYNACK"))
        })
    })
}

/// One line of `/proc/net/ip_vs_conn`.
#[derive(Debug, PartialEq, Eq)]
struct Connection<'a> {
    protocol: &'a str,
    vip: IpAddr,
    state: &'a str,
}

/// Parses `PRO CADDR CPORT VADDR VPORT DADDR DPORT STATE EXPIRES ...`:
/// IPv4 addresses as 8 hex digits, IPv6 in full colon form. None for the
/// header and anything else.
fn connection(line: &str) -> Option<Connection<'_>> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 9 || f[0] == "Pro" {
        return None;
    }
    let vip = if f[3].contains(':') {
        IpAddr::V6(f[3].parse::<Ipv6Addr>().ok()?)
    } else if f[3].len() == 8 {
        IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(f[3], 16).ok()?))
    } else {
        return None;
    };
    Some(Connection {
        protocol: f[0],
        vip,
        state: f[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A0A0064 C350 0A0A00C8 0050 0A0A0015 7560 ESTABLISHED 899
TCP 0A0A0064 C351 0A0A00C8 0050 0A0A0016 7560 TIME_WAIT   119
TCP 0A0A0064 C352 0A0A00C8 0050 0A0A0016 7560 SYN_RECV     59
TCP 0A0A0064 C353 0A0A00C8 0050 0A0A0015 7560 FIN_WAIT    110
TCP 0A0A0064 C354 0A0A00C9 0050 0A0A0015 7560 ESTABLISHED 899
UDP 0A0A0064 C355 0A0A00C8 0035 0A0A0015 7595 UDP         299
TCP 0A0A0064 C356 0A0A00C8 0050 0A0A0015 7560 CLOSE         9
TCP fd10:0010:0000:0000:0000:0000:0000:0100 C350 fd10:0010:0000:0000:0000:0000:0000:0200 0050 fd10:0010:0000:0000:0000:0000:0000:0021 7560 ESTABLISHED 899
";

    fn vips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn open_tcp_connections_to_the_drained_vips_count() {
        // ESTABLISHED, SYN_RECV and FIN_WAIT to .200; not TIME_WAIT, CLOSE,
        // UDP, nor the connection to .201.
        assert_eq!(open_lines(TABLE, &vips(&["10.10.0.200"]), true).count(), 3);
        assert_eq!(open_lines(TABLE, &vips(&["fd10:10::200"]), true).count(), 1);
        assert_eq!(
            open_lines(
                TABLE,
                &vips(&["10.10.0.200", "10.10.0.201", "fd10:10::200"]),
                true
            )
            .count(),
            5
        );
        assert_eq!(open_lines(TABLE, &vips(&["10.10.0.202"]), true).count(), 0);
        assert_eq!(open_lines("", &vips(&["10.10.0.200"]), true).count(), 0);
        // After the grace, a handshake that is still one does not count.
        assert_eq!(open_lines(TABLE, &vips(&["10.10.0.200"]), false).count(), 2);
    }

    #[test]
    fn a_line_that_is_not_a_connection_is_skipped() {
        assert_eq!(
            connection("Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires x y"),
            None
        );
        assert_eq!(
            connection("TCP zz 1 0A0A 0050 0A0A0015 7560 ESTABLISHED 899"),
            None
        );
        assert_eq!(connection("TCP 0A0A0064 C350"), None);
        assert_eq!(
            connection("TCP 0A0A0064 C350 0A0A00C8 0050 0A0A0015 7560 ESTABLISHED 899"),
            Some(Connection {
                protocol: "TCP",
                vip: "10.10.0.200".parse().unwrap(),
                state: "ESTABLISHED"
            })
        );
    }
}
