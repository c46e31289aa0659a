//! Holding VIPs: a director answers for a VIP only while it is the committed
//! owner AND holds its lease (docs/fencing.md).
//!
//! - The VIP is made local without being announced by the kernel: a `local`
//!   route for VIP/32 in the local table on `lo`, with `arp_ignore=1` on the
//!   LAN interface. The kernel then accepts (and IPVS forwards) traffic for
//!   it but never answers ARP for it.
//! - This process answers ARP requests for held VIPs from an AF_PACKET socket,
//!   checking ownership and lease on every request, and sends a gratuitous
//!   ARP burst when it takes a VIP. When the process dies the answers stop.
//! - Operators see held VIPs in `director status` and in
//!   `ip route show table local`, not in `ip addr`.
//!
//! IPv4 only for now: IPv6 VIPs are programmed into IPVS but not announced
//! (unsolicited neighbour advertisements are not implemented yet).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use consensus::state::ClusterState;
use consensus::{Node, NodeId};

use crate::arp::{self, ArpSocket};

/// The VIPs `me` may answer for now, in `state`: owned in the committed state
/// and covered by a valid lease (`may_hold`: the lease is held and this
/// director is not releasing its VIPs), and `me` is not draining.
pub fn held(state: &ClusterState, me: NodeId, may_hold: bool) -> BTreeSet<Ipv4Addr> {
    if !may_hold || state.draining.contains_key(&me) {
        return BTreeSet::new();
    }
    state
        .owners
        .iter()
        .filter(|(_, o)| o.director == me)
        .filter_map(|(vip, _)| match vip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
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
    ] {
        if let Err(e) = sysctl(&path, value) {
            problems.push(e);
        }
    }
    problems
}

/// The answering side: a thread that replies to ARP requests for held VIPs.
pub struct Announcer {
    tx: Arc<Mutex<Box<dyn pnet_datalink::DataLinkSender>>>,
    mac: [u8; 6],
    /// When each VIP's last gratuitous ARP burst started.
    announced: Mutex<BTreeMap<Ipv4Addr, SystemTime>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").field("mac", &self.mac).finish()
    }
}

impl Announcer {
    /// Opens the ARP socket on `interface` and starts answering.
    pub fn start(
        interface: &str,
        node: Arc<Node>,
        releasing: Arc<AtomicBool>,
    ) -> std::io::Result<Announcer> {
        let ArpSocket { tx, mut rx, mac } = ArpSocket::open(interface)?;
        let tx = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tx.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("arp".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let Some(req) = arp::next_request(rx.as_mut()) else {
                        continue;
                    };
                    if req.sender_ip == req.target_ip {
                        continue; // someone's gratuitous ARP
                    }
                    // Ownership and lease, checked at the moment of answering.
                    let may = node.holds_lease() && !releasing.load(Ordering::SeqCst);
                    let mine = held(&node.state(), node.id(), may);
                    if mine.contains(&req.target_ip) {
                        let frame = arp::reply(mac, req.target_ip, &req);
                        if let Ok(mut tx) = t.lock() {
                            let _ = arp::send(tx.as_mut(), &frame);
                        }
                    }
                }
            })?;
        Ok(Announcer {
            tx,
            mac,
            announced: Mutex::new(BTreeMap::new()),
            stop,
            thread: Some(thread),
        })
    }

    /// Sends a gratuitous ARP burst for `vip` (in the background).
    pub fn announce(&self, vip: Ipv4Addr, count: u32, interval: Duration) {
        if let Ok(mut a) = self.announced.lock() {
            a.insert(vip, SystemTime::now());
        }
        let tx = self.tx.clone();
        let frame = arp::gratuitous(self.mac, vip);
        std::thread::spawn(move || {
            for i in 0..count {
                if let Ok(mut tx) = tx.lock() {
                    let _ = arp::send(tx.as_mut(), &frame);
                }
                if i + 1 < count {
                    std::thread::sleep(interval);
                }
            }
        });
    }
}

impl Announcer {
    /// When the last gratuitous ARP burst for `vip` started, if any.
    pub fn last_announced(&self, vip: Ipv4Addr) -> Option<SystemTime> {
        self.announced.lock().ok()?.get(&vip).copied()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
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

    fn message(&self, vip: Ipv4Addr) -> rtnetlink::packet_route::route::RouteMessage {
        use rtnetlink::packet_route::route::{RouteScope, RouteType};
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(vip, 32)
            .output_interface(self.lo)
            .table_id(TABLE_LOCAL)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build()
    }

    /// The VIP-shaped local routes present now: /32 local routes on `lo` in
    /// the local table.
    pub async fn present(&self) -> Result<BTreeSet<Ipv4Addr>, String> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
        let query = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(TABLE_LOCAL)
            .build();
        let mut dump = self.handle.route().get(query).execute();
        let mut out = BTreeSet::new();
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
            if table != TABLE_LOCAL
                || r.header.kind != RouteType::Local
                || r.header.destination_prefix_length != 32
                || !on_lo
            {
                continue;
            }
            if let Some(dst) = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                _ => None,
            }) {
                out.insert(dst);
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the local route of `vip`.
    pub async fn add(&self, vip: Ipv4Addr) -> Result<(), String> {
        self.handle
            .route()
            .add(self.message(vip))
            .replace()
            .execute()
            .await
            .map_err(|e| format!("adding local route {vip}/32: {e}"))
    }

    /// Removes the local route of `vip`.
    pub async fn del(&self, vip: Ipv4Addr) -> Result<(), String> {
        self.handle
            .route()
            .del(self.message(vip))
            .execute()
            .await
            .map_err(|e| format!("removing local route {vip}/32: {e}"))
    }

    /// Makes the kernel's local routes match `held` among the addresses this
    /// cluster manages (`managed`); routes of other addresses are never
    /// touched. Returns the VIPs newly taken.
    pub async fn reconcile(
        &self,
        held: &BTreeSet<Ipv4Addr>,
        managed: impl Fn(&Ipv4Addr) -> bool,
    ) -> Result<Vec<Ipv4Addr>, String> {
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
                if let IpAddr::V4(a) = b.address {
                    rules.insert(format!(
                        "    ip daddr {a} {} dport {} masquerade\n",
                        p.protocol, b.port
                    ));
                }
            }
        }
    }
    let mut s = String::from(
        "table ip director_snat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for r in rules {
        s.push_str(&r);
    }
    s.push_str("  }\n}\n");
    s
}

/// Replaces the SNAT table with `ruleset`.
pub fn apply_snat(ruleset: &str) -> Result<(), String> {
    use std::io::Write;
    let script = format!("add table ip director_snat\ndelete table ip director_snat\n{ruleset}");
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
        let vip = Ipv4Addr::new(10, 10, 0, 200);
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
        assert!(r.starts_with("table ip director_snat {"));
    }
}
