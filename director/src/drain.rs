//! Draining: a director hands its VIPs over without failing a request.
//!
//! 1. Close the gate: new TCP connections to its VIPs (a SYN without ACK)
//!    are dropped before IPVS sees them (nftables, `table inet
//!    director_drain`). The client retransmits the SYN (after 1 s), by when
//!    the VIP answers elsewhere.
//! 2. Wait until the connections IPVS is carrying for those VIPs are done
//!    (`/proc/net/ip_vs_conn`: nothing but TIME_WAIT and CLOSE left, and
//!    no handshake once the gate has been closed for half a second), at
//!    most `drain.connection_wait_ms`. A connection still open then is cut
//!    by the handover: the next owner has never seen it.
//! 3. Stop holding (ARP/NDP answers, then the local routes), commit the
//!    draining flag through the leader, and wait until every VIP has
//!    another owner. Open the gate again.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consensus::Node;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::daemon::ConfigCell;

/// How long a stopping director waits for its VIPs to move.
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(10);

/// Where the kernel lists IPVS connections (of this network namespace).
const IPVS_CONNECTIONS: &str = "/proc/net/ip_vs_conn";

/// How long after the gate closed a handshake in progress may take to
/// complete (many round trips on a LAN).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// How often the connection wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Drains this director: it stops taking connections for its VIPs, lets
/// the open ones finish, stops holding the VIPs, commits its draining flag,
/// and waits until the leader has moved every VIP it owned.
pub struct Drainer {
    pub node: Arc<Node>,
    pub config: Arc<ConfigCell>,
    pub releasing: Arc<AtomicBool>,
    pub kick: Arc<Notify>,
    pub reconciled: watch::Receiver<u64>,
    /// False on a witness or without the ARP socket: nothing to drain.
    pub holds_vips: bool,
}

impl Drainer {
    /// The drain; on success, where each VIP went.
    pub async fn drain(&self, timeout: Duration) -> Result<Value, String> {
        if !self.holds_vips {
            return Err("this director holds no VIPs (a witness, or no ARP socket)".into());
        }
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
            json!({"waited_ms": 0, "left": 0})
        } else {
            if let Err(e) = close_gate(&before) {
                return Err(format!("{e}; nothing changed, still holding its VIPs"));
            }
            let started = tokio::time::Instant::now();
            let left = loop {
                let table = read_connections();
                let handshakes = started.elapsed() < HANDSHAKE_GRACE;
                let open: Vec<&str> = open_lines(&table, &before, handshakes).collect();
                if open.is_empty() {
                    break 0;
                }
                if started.elapsed() >= wait {
                    eprintln!(
                        "director: drain: {} connection(s) still open after {wait:?}, cut by the handover:\n{}",
                        open.len(),
                        open.join("\n")
                    );
                    break open.len();
                }
                tokio::time::sleep(POLL).await;
            };
            json!({"waited_ms": started.elapsed().as_millis() as u64, "left": left})
        };
        // 3. Stop holding: ARP answers stop at once, the routes go with the
        //    next reconcile, which this waits for.
        self.releasing.store(true, Ordering::SeqCst);
        let mut reconciled = self.reconciled.clone();
        let seen = *reconciled.borrow_and_update();
        self.kick.notify_one();
        loop {
            if *reconciled.borrow_and_update() > seen + 1 {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, reconciled.changed())
                .await
                .is_err()
            {
                return Err(self.undo("the VIP reconciler did not run").await);
            }
            self.kick.notify_one();
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
                open_gate_logged();
                let moved: Vec<Value> = before
                    .iter()
                    .map(|v| {
                        let to = state
                            .owners
                            .get(v)
                            .and_then(|o| state.directors.get(&o.director));
                        json!({"vip": v.to_string(), "owner": to.map(|d| d.name.clone())})
                    })
                    .collect();
                return Ok(json!({"drained": true, "moved": moved, "connections": connections}));
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
    async fn undo(&self, why: &str) -> String {
        let _ = self.node.set_draining(false).await;
        self.releasing.store(false, Ordering::SeqCst);
        open_gate_logged();
        self.kick.notify_one();
        format!("{why}; back in service, holding its VIPs")
    }

    /// Ends a drain: back in service.
    pub async fn undrain(&self) -> Result<Value, String> {
        self.node
            .set_draining(false)
            .await
            .map_err(|e| format!("clearing the drain: {e}"))?;
        self.releasing.store(false, Ordering::SeqCst);
        open_gate_logged();
        self.kick.notify_one();
        Ok(json!({"drained": false}))
    }
}

/// The nftables table that drops new TCP connections to `vips`: a SYN
/// without ACK, before connection tracking and IPVS (priority raw).
pub fn gate_ruleset(vips: &BTreeSet<IpAddr>) -> String {
    let list = |v4: bool| {
        vips.iter()
            .filter(|v| v.is_ipv4() == v4)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::from(
        "table inet director_drain {\n  chain prerouting {\n    type filter hook prerouting priority raw; policy accept;\n",
    );
    for (family, v4) in [("ip", true), ("ip6", false)] {
        let addrs = list(v4);
        if !addrs.is_empty() {
            s.push_str(&format!(
                "    {family} daddr {{ {addrs} }} tcp flags & (syn | ack) == syn drop\n"
            ));
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Stops new TCP connections to `vips` on this host.
pub fn close_gate(vips: &BTreeSet<IpAddr>) -> Result<(), String> {
    crate::vip::nft(&format!(
        "add table inet director_drain\ndelete table inet director_drain\n{}",
        gate_ruleset(vips)
    ))
    .map_err(|e| format!("closing the VIPs to new connections: {e}"))
}

/// Takes new connections again (also clears a gate a killed drain left).
pub fn open_gate() -> Result<(), String> {
    crate::vip::nft("add table inet director_drain\ndelete table inet director_drain\n")
}

fn open_gate_logged() {
    if let Err(e) = open_gate() {
        eprintln!("director: drain: opening the VIPs to new connections: {e}");
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

    #[test]
    fn the_gate_drops_only_new_tcp_connections_to_the_vips() {
        let r = gate_ruleset(&vips(&["10.10.0.200", "10.10.0.201", "fd10:10::200"]));
        assert!(r.starts_with("table inet director_drain {"), "{r}");
        assert!(r.contains("priority raw; policy accept;"), "{r}");
        assert!(
            r.contains("ip daddr { 10.10.0.200, 10.10.0.201 } tcp flags & (syn | ack) == syn drop"),
            "{r}"
        );
        assert!(
            r.contains("ip6 daddr { fd10:10::200 } tcp flags & (syn | ack) == syn drop"),
            "{r}"
        );
        let v4 = gate_ruleset(&vips(&["10.10.0.200"]));
        assert!(!v4.contains("ip6"), "{v4}");
    }
}
