//! Holding VIPs: a director answers for a VIP only while it is the committed
//! owner AND holds its lease (docs/fencing.md).
//!
//! - The VIP is made local without being announced by the kernel: a `local`
//!   route for VIP/32 (IPv6: VIP/128) in the local table on `lo`, with
//!   `arp_ignore=1` on the LAN interface. The kernel then accepts (and IPVS
//!   forwards) traffic for it but never answers ARP or neighbour
//!   solicitations for it (it answers those only for interface addresses).
//! - This process answers ARP requests (AF_PACKET socket) and neighbour
//!   solicitations (raw ICMPv6 socket, joined to the VIP's solicited-node
//!   group while it holds it) for held VIPs, checking ownership and lease on
//!   every request, and sends a gratuitous ARP or unsolicited neighbour
//!   advertisement burst when it takes a VIP. When the process dies the
//!   answers stop.
//! - Operators see held VIPs in `director status` and in
//!   `ip route show table local` / `ip -6 route show table local`, not in
//!   `ip addr`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use consensus::state::ClusterState;
use consensus::{Node, NodeId};

use crate::arp::{self, ArpSocket};
use crate::ndp::NdpSocket;

/// The VIPs `me` may answer for now, in `state`: owned in the committed state
/// and covered by a valid lease (`may_hold`: the lease is held and this
/// director is not releasing its VIPs), and `me` is not draining.
pub fn held(state: &ClusterState, me: NodeId, may_hold: bool) -> BTreeSet<IpAddr> {
    state
        .owners
        .keys()
        .filter(|vip| holds(state, me, may_hold, vip))
        .copied()
        .collect()
}

/// Whether `me` may answer for `vip` now: the rule of [`held`] for one VIP
/// (what the ARP and NDP threads ask on every request).
pub fn holds(state: &ClusterState, me: NodeId, may_hold: bool, vip: &IpAddr) -> bool {
    may_hold
        && !state.draining.contains_key(&me)
        && state.owners.get(vip).is_some_and(|o| o.director == me)
}

/// Whether `interface` has carrier (the kernel's `carrier` is 1; it reads
/// 0 without carrier and fails while the interface is administratively
/// down). Carrier follows the link at once; `operstate` lags behind it.
pub fn link_up(interface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/carrier"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// Whether `node` may hold VIPs now: it holds its lease with more than
/// `guard` of it left. Stopping `guard` before the lease ends covers the time
/// between deciding to answer and the answer leaving (a thread scheduled out
/// in between), so that no answer leaves after the lease has ended.
pub fn lease_ok(node: &Node, guard: Duration) -> bool {
    node.lease_remaining().is_some_and(|left| left > guard)
}

/// Writes a sysctl of this network namespace.
fn sysctl(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(format!("/proc/sys/{path}"), value).map_err(|e| format!("{path}: {e}"))
}

/// What the data path needs from the kernel: no ARP answers from the kernel
/// for VIPs, forwarding, and conntrack for IPVS (for the SNAT rule).
pub fn prepare_kernel(interface: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, value) in [
        ("net/ipv4/conf/all/arp_ignore".to_string(), "1"),
        (format!("net/ipv4/conf/{interface}/arp_ignore"), "1"),
        ("net/ipv4/conf/all/arp_announce".to_string(), "2"),
        (format!("net/ipv4/conf/{interface}/arp_announce"), "2"),
        ("net/ipv4/ip_forward".to_string(), "1"),
        ("net/ipv4/vs/conntrack".to_string(), "1"),
        ("net/ipv6/conf/all/forwarding".to_string(), "1"),
    ] {
        if let Err(e) = sysctl(&path, value) {
            problems.push(e);
        }
    }
    problems
}

/// The answering side: threads that reply to ARP requests (IPv4) and
/// neighbour solicitations (IPv6) for held VIPs, and the announcements sent
/// when a VIP is taken.
pub struct Announcer {
    tx: Arc<Mutex<Box<dyn pnet_datalink::DataLinkSender>>>,
    ndp: Option<Arc<NdpSocket>>,
    mac: [u8; 6],
    /// When each VIP's last announcement burst started.
    announced: Mutex<BTreeMap<IpAddr, SystemTime>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").field("mac", &self.mac).finish()
    }
}

impl Announcer {
    /// Opens the ARP socket (and, when IPv6 is up on it, the ICMPv6 socket)
    /// on `interface` and starts answering.
    pub fn start(
        interface: &str,
        node: Arc<Node>,
        releasing: Arc<AtomicBool>,
        guard: Duration,
    ) -> std::io::Result<Announcer> {
        let ArpSocket { tx, mut rx, mac } = ArpSocket::open(interface)?;
        let tx = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        // Ownership and lease, checked at the moment of answering.
        let mine = {
            let node = node.clone();
            let releasing = releasing.clone();
            move |vip: IpAddr| {
                let may = lease_ok(&node, guard) && !releasing.load(Ordering::SeqCst);
                holds(&node.state(), node.id(), may, &vip)
            }
        };
        let mut threads = Vec::new();
        let (t, s, m) = (tx.clone(), stop.clone(), mine.clone());
        threads.push(
            std::thread::Builder::new()
                .name("arp".into())
                .spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        let Some(req) = arp::next_request(rx.as_mut()) else {
                            continue;
                        };
                        if req.sender_ip == req.target_ip {
                            continue; // someone's gratuitous ARP
                        }
                        if m(IpAddr::V4(req.target_ip)) {
                            let frame = arp::reply(mac, req.target_ip, &req);
                            if let Ok(mut tx) = t.lock() {
                                let _ = arp::send(tx.as_mut(), &frame);
                            }
                        }
                    }
                })?,
        );
        let ndp = match NdpSocket::open(interface) {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                eprintln!("director: no IPv6 neighbour discovery on {interface}: {e}; IPv6 VIPs are not answered");
                None
            }
        };
        if let Some(n) = ndp.clone() {
            let s = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("ndp".into())
                    .spawn(move || {
                        while !s.load(Ordering::Relaxed) {
                            let Some((from, target)) = n.next_solicitation() else {
                                continue;
                            };
                            if mine(IpAddr::V6(target)) {
                                let _ = n.answer(mac, from, target);
                            }
                        }
                    })?,
            );
        }
        Ok(Announcer {
            tx,
            ndp,
            mac,
            announced: Mutex::new(BTreeMap::new()),
            stop,
            threads,
        })
    }

    /// Sends an announcement burst for `vip` in the background: gratuitous
    /// ARP for IPv4, unsolicited neighbour advertisements for IPv6.
    pub fn announce(&self, vip: IpAddr, count: u32, interval: Duration) {
        if let Ok(mut a) = self.announced.lock() {
            a.insert(vip, SystemTime::now());
        }
        let send: Box<dyn Fn() + Send> = match vip {
            IpAddr::V4(v4) => {
                let tx = self.tx.clone();
                let frame = arp::gratuitous(self.mac, v4);
                Box::new(move || {
                    if let Ok(mut tx) = tx.lock() {
                        let _ = arp::send(tx.as_mut(), &frame);
                    }
                })
            }
            IpAddr::V6(v6) => match self.ndp.clone() {
                Some(n) => {
                    let mac = self.mac;
                    Box::new(move || {
                        let _ = n.announce(mac, v6);
                    })
                }
                None => return,
            },
        };
        std::thread::spawn(move || {
            for i in 0..count {
                send();
                if i + 1 < count {
                    std::thread::sleep(interval);
                }
            }
        });
    }

    /// Listens for neighbour solicitations of the IPv6 VIPs in `held`.
    pub fn listen_for(&self, held: &BTreeSet<IpAddr>) -> Result<(), String> {
        let v6: BTreeSet<Ipv6Addr> = held
            .iter()
            .filter_map(|v| match v {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        match &self.ndp {
            Some(n) => n.set_groups(&v6),
            None if v6.is_empty() => Ok(()),
            None => Err("IPv6 VIPs are held but neighbour discovery is unavailable".into()),
        }
    }

    /// When the last announcement burst for `vip` started, if any.
    pub fn last_announced(&self, vip: IpAddr) -> Option<SystemTime> {
        self.announced.lock().ok()?.get(&vip).copied()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The kernel's local routes of VIPs, over rtnetlink: `local VIP/32 dev lo
/// table local`, as `ip route add local ...` would write them.
#[derive(Debug, Clone)]
pub struct Routes {
    handle: rtnetlink::Handle,
    lo: u32,
}

/// The kernel's local routing table.
const TABLE_LOCAL: u32 = 255;

impl Routes {
    /// Opens an rtnetlink connection (its task runs on the current runtime).
    pub fn open() -> Result<Routes, String> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("rtnetlink: {e}"))?;
        tokio::spawn(conn);
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        Ok(Routes { handle, lo })
    }

    fn message(&self, vip: IpAddr) -> rtnetlink::packet_route::route::RouteMessage {
        use rtnetlink::packet_route::route::{RouteScope, RouteType};
        match vip {
            IpAddr::V4(v4) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .output_interface(self.lo)
                .table_id(TABLE_LOCAL)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build(),
            IpAddr::V6(v6) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .output_interface(self.lo)
                .table_id(TABLE_LOCAL)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build(),
        }
    }

    /// The VIP-shaped local routes present now: host (/32, /128) local
    /// routes on `lo` in the local table.
    pub async fn present(&self) -> Result<BTreeSet<IpAddr>, String> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
        let mut out = BTreeSet::new();
        let queries = [
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(TABLE_LOCAL)
                .build(),
            rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(TABLE_LOCAL)
                .build(),
        ];
        for query in queries {
            let mut dump = self.handle.route().get(query).execute();
            while let Some(r) = dump
                .try_next()
                .await
                .map_err(|e| format!("listing local routes: {e}"))?
            {
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                let on_lo = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == self.lo));
                if table != TABLE_LOCAL || r.header.kind != RouteType::Local || !on_lo {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
                    _ => None,
                });
                let host_len = match dst {
                    Some(IpAddr::V4(_)) => 32,
                    _ => 128,
                };
                if let Some(dst) = dst {
                    if r.header.destination_prefix_length == host_len {
                        out.insert(dst);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the local route of `vip`.
    pub async fn add(&self, vip: IpAddr) -> Result<(), String> {
        self.handle
            .route()
            .add(self.message(vip))
            .replace()
            .execute()
            .await
            .map_err(|e| format!("adding local route {vip}: {e}"))
    }

    /// Removes the local route of `vip`.
    pub async fn del(&self, vip: IpAddr) -> Result<(), String> {
        self.handle
            .route()
            .del(self.message(vip))
            .execute()
            .await
            .map_err(|e| format!("removing local route {vip}: {e}"))
    }

    /// Makes the kernel's local routes match `held` among the addresses this
    /// cluster manages (`managed`); routes of other addresses are never
    /// touched. Returns the VIPs newly taken.
    pub async fn reconcile(
        &self,
        held: &BTreeSet<IpAddr>,
        managed: impl Fn(&IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, String> {
        let present = self.present().await?;
        // Give up first, then take: never more held than the state says.
        for vip in &present {
            if managed(vip) && !held.contains(vip) {
                self.del(*vip).await?;
            }
        }
        let mut taken = Vec::new();
        for vip in held {
            if !present.contains(vip) {
                self.add(*vip).await?;
                taken.push(*vip);
            }
        }
        Ok(taken)
    }
}

/// The source NAT that brings replies back through this director in `nat`
/// mode (DESIGN: IPVS masquerade with conntrack and an nftables masquerade for
/// traffic to the backends). The whole table is replaced atomically.
pub fn snat_ruleset(state: &ClusterState) -> String {
    let mut rules = BTreeSet::new();
    for vs in state.services.values() {
        if vs.forwarding != "nat" {
            continue;
        }
        for p in &vs.ports {
            for b in &p.backends {
                let family = match b.address {
                    IpAddr::V4(_) => "ip",
                    IpAddr::V6(_) => "ip6",
                };
                rules.insert(format!(
                    "    {family} daddr {} {} dport {} masquerade\n",
                    b.address, p.protocol, b.port
                ));
            }
        }
    }
    let mut s = String::from(
        "table inet director_snat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for r in rules {
        s.push_str(&r);
    }
    s.push_str("  }\n}\n");
    s
}

/// Replaces the SNAT table with `ruleset`.
pub fn apply_snat(ruleset: &str) -> Result<(), String> {
    // Replaces the table whole (and removes the IPv4-only table of older
    // versions).
    nft(&format!(
        "add table ip director_snat\ndelete table ip director_snat\nadd table inet director_snat\ndelete table inet director_snat\n{ruleset}"
    ))
}

/// Runs an nftables script (`nft -f -`), all of it or nothing.
pub fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::{Owner, VirtualService};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let vip: IpAddr = "10.10.0.200".parse().unwrap();
        s.allocations.insert(vip, "static/web".into());
        s.owners.insert(
            vip,
            Owner {
                director: 2,
                epoch: 1,
            },
        );
        s.services.insert(
            "static/web".into(),
            VirtualService {
                vip,
                scheduler: "rr".into(),
                forwarding: "nat".into(),
                ports: vec![consensus::state::ServicePort {
                    protocol: "tcp".into(),
                    port: 80,
                    backends: vec![consensus::state::Backend {
                        address: "10.10.0.21".parse().unwrap(),
                        port: 30080,
                        weight: 1,
                    }],
                }],
            },
        );
        s
    }

    #[test]
    fn only_the_owner_with_a_lease_holds() {
        let s = state();
        let vip = IpAddr::V4(Ipv4Addr::new(10, 10, 0, 200));
        assert_eq!(held(&s, 2, true), [vip].into());
        assert!(held(&s, 2, false).is_empty(), "no lease, no VIP");
        assert!(held(&s, 1, true).is_empty(), "not the owner");
    }

    #[test]
    fn snat_masquerades_traffic_to_nat_backends() {
        let r = snat_ruleset(&state());
        assert!(
            r.contains("ip daddr 10.10.0.21 tcp dport 30080 masquerade"),
            "{r}"
        );
        assert!(r.starts_with("table inet director_snat {"));
    }
}
