//! The nftables reconciler: two tables of this director's own.
//!
//! - `inet director_snat`: the source NAT that brings replies back through
//!   the VIP's owner in `nat` mode (IPVS masquerade with conntrack, and an
//!   nftables SNAT to the VIP for traffic to the backends).
//! - `inet director_drain`: the drain gate, present only while a drain
//!   turns new TCP connections to its VIPs away (a SYN without ACK is
//!   dropped before conntrack and IPVS, priority raw).
//!
//! Each table is written whole and atomically (`nft -f`). To tell later
//! whether a table is still as written, the reconciler keeps the kernel's
//! own listing of it taken right after writing: a listing that differs at a
//! resync was changed behind its back. A resync first asks the kernel for
//! the ruleset's generation (one netlink request, [`generation`]), which
//! every change to any nftables table moves: while it has not moved since
//! the last listing, nothing is listed (no `nft` process is started).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use consensus::state::{ClusterState, Forwarding, Protocol, VirtualService};
use consensus::Node;

use super::driver::{Desired, OpError, Reconciler};

/// The SNAT table's name.
pub const SNAT: &str = "director_snat";
/// The drain gate's name.
pub const DRAIN: &str = "director_drain";

/// One table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// Not there.
    Absent,
    /// Exactly as this script wrote it. Shared: the desired tables, the
    /// driver's belief, the last listing and what the reconciler wrote hold
    /// one SNAT script (megabytes at scale) between them.
    Written(Arc<str>),
    /// There, but not (or no longer) as written here: its listing.
    Other(String),
}

/// The managed tables by name.
pub type Tables = BTreeMap<&'static str, Table>;

/// One change.
#[derive(Clone, PartialEq, Eq)]
pub enum NftOp {
    /// Replace the table with this script (`nft -f`).
    Write(&'static str, Arc<str>),
    /// Delete the table.
    Delete(&'static str),
}

/// The table and the script's size, not the script (megabytes at scale).
impl std::fmt::Debug for NftOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NftOp::Write(name, script) => write!(f, "Write({name}, {} bytes)", script.len()),
            NftOp::Delete(name) => write!(f, "Delete({name})"),
        }
    }
}

/// One element of the SNAT map: backend, protocol, backend port, VIP.
type SnatElement = (IpAddr, Protocol, u16, IpAddr);

/// The SNAT map's elements for one service, pushed onto `out`: none unless
/// it forwards by nat with `snat` on; each backend (and the health check's
/// fallback) of the VIP's family.
fn snat_elements(vs: &VirtualService, out: &mut Vec<SnatElement>) {
    if vs.forwarding != Forwarding::Nat || !vs.snat {
        return;
    }
    let fallback = vs.health.as_ref().and_then(|h| h.fallback);
    for p in &vs.ports {
        let fallback = fallback.map(|f| (f.ip(), f.port()));
        let backends = p.backends.iter().map(|b| (b.address, b.port));
        for (address, port) in backends.chain(fallback) {
            if address.is_ipv4() == vs.vip.is_ipv4() {
                out.push((address, p.protocol, port, vs.vip));
            }
        }
    }
}

/// Whether the SNAT script of `after` is the one of `before`: every
/// service that changed between them has the same map elements (a weight,
/// a scheduler or an owner changed, not a backend). Only the changed
/// services are looked at.
pub fn same_snat(before: &ClusterState, after: &ClusterState) -> bool {
    let elements = |vs: Option<&VirtualService>| {
        let mut out = Vec::new();
        if let Some(vs) = vs {
            snat_elements(vs, &mut out);
        }
        out
    };
    before
        .changed_services(after)
        .into_iter()
        .all(|(_, old, new)| elements(old) == elements(new))
}

/// The SNAT script for `state`: traffic IPVS forwards to a backend of a
/// `nat` service (with `snat`) leaves with the VIP as its source, so that
/// the nodes' replies go to whoever holds the VIP, now or after a failover
/// (the source port is kept where it is free, so a connection keeps its
/// addresses across the move). Only traffic addressed to the VIP is
/// matched (`ct original`): the director's own traffic to the nodes (health
/// checks) keeps its address.
///
/// The rule is one map lookup per family, keyed by backend address,
/// protocol, backend port and original destination (the VIP), whatever the
/// number of services: the chain is walked for every new connection the
/// host makes, the director's own (Raft, health checks) included.
pub fn snat_ruleset(state: &ClusterState) -> String {
    use std::fmt::Write as _;
    // Map elements per family: backend, protocol, backend port, VIP. Kept
    // as values, sorted and written once: at 10,000 services that is 40,000
    // elements, and a string for each cost a reload seconds under emulation.
    let mut v4: Vec<SnatElement> = Vec::new();
    let mut v6: Vec<SnatElement> = Vec::new();
    for vs in state.services.values() {
        let family = if vs.vip.is_ipv4() { &mut v4 } else { &mut v6 };
        snat_elements(vs, family);
    }
    for elements in [&mut v4, &mut v6] {
        elements.sort_unstable();
        elements.dedup();
    }
    let mut s = String::with_capacity(256 + 64 * (v4.len() + v6.len()));
    let _ = writeln!(s, "table inet {SNAT} {{");
    for (name, addr, elements) in [("snat4", "ipv4_addr", &v4), ("snat6", "ipv6_addr", &v6)] {
        let _ = writeln!(
            s,
            "  map {name} {{\n    type {addr} . inet_proto . inet_service . {addr} : {addr}"
        );
        if !elements.is_empty() {
            s.push_str("    elements = {\n");
            let last = elements.len() - 1;
            for (i, (address, protocol, port, vip)) in elements.iter().enumerate() {
                let _ = write!(s, "      {address} . {protocol} . {port} . {vip} : {vip}");
                s.push_str(if i == last { "\n" } else { ",\n" });
            }
            s.push_str("    }\n");
        }
        s.push_str("  }\n");
    }
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    if !v4.is_empty() {
        s.push_str(
            "    snat ip to ip daddr . meta l4proto . th dport . ct original ip daddr map @snat4\n",
        );
    }
    if !v6.is_empty() {
        s.push_str("    snat ip6 to ip6 daddr . meta l4proto . th dport . ct original ip6 daddr map @snat6\n");
    }
    s.push_str("  }\n}\n");
    s
}

/// The drain gate's script: drops new TCP connections to `vips`.
pub fn gate_ruleset(vips: &BTreeSet<IpAddr>) -> String {
    let list = |v4: bool| {
        vips.iter()
            .filter(|v| v.is_ipv4() == v4)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "table inet {DRAIN} {{\n  chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n"
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

/// What the tables should be: the SNAT table for `state`, and the gate
/// only while `gate` names VIPs.
pub fn desired(state: &ClusterState, gate: &BTreeSet<IpAddr>) -> Tables {
    tables(snat_ruleset(state).into(), gate)
}

/// The tables with the SNAT table's script `snat`.
fn tables(snat: Arc<str>, gate: &BTreeSet<IpAddr>) -> Tables {
    let mut t = Tables::new();
    t.insert(SNAT, Table::Written(snat));
    t.insert(
        DRAIN,
        if gate.is_empty() {
            Table::Absent
        } else {
            Table::Written(gate_ruleset(gate).into())
        },
    );
    t
}

/// The changes that make `observed` equal `desired`, table by table.
pub fn plan(desired: &Tables, observed: &Tables) -> Vec<NftOp> {
    let mut ops = Vec::new();
    for (name, want) in desired {
        if observed.get(name) == Some(want) {
            continue;
        }
        match want {
            Table::Written(script) => ops.push(NftOp::Write(name, script.clone())),
            Table::Absent => {
                if observed.get(name).is_some_and(|t| *t != Table::Absent) {
                    ops.push(NftOp::Delete(name));
                }
            }
            Table::Other(_) => {}
        }
    }
    ops
}

/// The VIPs whose new TCP connections a drain turns away (empty: none).
#[derive(Debug, Default)]
pub struct Gate(Mutex<BTreeSet<IpAddr>>);

impl Gate {
    /// Turns new connections to `vips` away (after the next pass).
    pub fn close(&self, vips: BTreeSet<IpAddr>) {
        if let Ok(mut g) = self.0.lock() {
            *g = vips;
        }
    }

    /// Takes new connections again (after the next pass).
    pub fn open(&self) {
        self.close(BTreeSet::new());
    }

    /// The VIPs shut out now.
    pub fn closed(&self) -> BTreeSet<IpAddr> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// The nftables reconciler.
#[derive(Debug)]
pub struct Nft {
    node: Arc<Node>,
    gate: Arc<Gate>,
    /// Each table's script and the kernel's listing of it: taken right
    /// after writing it, or at the first listing after that when the
    /// script's shape was known (None until then).
    written: BTreeMap<&'static str, (Arc<str>, Option<String>)>,
    /// How the kernel lists a script of each shape (the script without its
    /// elements, see [`shape`]), learned from a listing taken right after a
    /// write: that listing's shape, and whether it held the script's
    /// elements as written.
    shapes: BTreeMap<String, (String, bool)>,
    /// The ruleset generation of the last listing, and what it found.
    listed: Option<(u32, Tables)>,
    /// The last SNAT script and the state it was made from.
    snat: Option<(Arc<ClusterState>, Arc<str>)>,
}

impl Nft {
    /// A reconciler for `node`'s state and the drain `gate`.
    pub fn new(node: Arc<Node>, gate: Arc<Gate>) -> Self {
        Nft {
            node,
            gate,
            written: BTreeMap::new(),
            shapes: BTreeMap::new(),
            listed: None,
            snat: None,
        }
    }

    /// Lists both tables with `nft` (on a blocking thread).
    async fn list_tables(&mut self) -> Result<Tables, OpError> {
        let mut t = Tables::new();

        for name in [SNAT, DRAIN] {
            let listing = tokio::task::spawn_blocking(move || list(name))
                .await
                .map_err(|e| OpError::new("listing nftables table", name, e))??;
            let shapes = &self.shapes;
            let table = match listing {
                None => Table::Absent,
                Some(listing) => {
                    match self.written.get_mut(name) {
                        Some((script, reference)) => match reference {
                            Some(r) if *r == listing => Table::Written(script.clone()),
                            Some(_) => {
                                tracing::debug!(table = name, "the kernel lists the table otherwise than after it was written");
                                Table::Other(listing)
                            }
                            // The first look after a write that was not
                            // listed at once (its shape was known): it may
                            // come long after the write, when something else
                            // changed nftables. It is the kernel's listing of
                            // what was written if it has the shape the kernel
                            // gave this script's shape before and holds the
                            // written elements.
                            None if lists(shapes, script, &listing) => {
                                *reference = Some(listing);
                                Table::Written(script.clone())
                            }
                            None => Table::Other(listing),
                        },
                        None => Table::Other(listing),
                    }
                }
            };
            t.insert(name, table);
        }
        Ok(t)
    }
}

impl Reconciler for Nft {
    type State = Tables;
    type Op = NftOp;

    fn name(&self) -> &'static str {
        "nft"
    }

    fn desired(&mut self) -> Desired<Tables> {
        let state = self.node.state();
        let gate = self.gate.closed();
        // The SNAT script depends on the services only: written again
        // only when they change.
        let snat = match &self.snat {
            Some((from, script)) if from.same_services(&state) => script.clone(),
            Some((from, script)) if same_snat(from, &state) => {
                let script = script.clone();
                self.snat = Some((state, script.clone()));
                script
            }
            _ => {
                let script: Arc<str> = snat_ruleset(&state).into();
                if self.snat.as_ref().is_some_and(|(_, old)| *old != script) {
                    tracing::debug!(bytes = script.len(), "the SNAT script changed");
                }
                self.snat = Some((state, script.clone()));
                script
            }
        };
        Desired::steady(tables(snat, &gate))
    }

    fn plan(&self, desired: &Tables, observed: &Tables) -> Vec<NftOp> {
        plan(desired, observed)
    }

    async fn observe(&mut self) -> Result<Tables, OpError> {
        // A generation that cannot be read (no nf_tables yet) only means
        // listing every time.
        let generation = tokio::task::spawn_blocking(generation)
            .await
            .map_err(std::io::Error::other)
            .and_then(|g| g)
            .ok();
        if let (Some(g), Some((seen, tables))) = (generation, &self.listed) {
            if g == *seen {
                return Ok(tables.clone());
            }
        }
        let tables = self.list_tables().await?;
        self.listed = generation.map(|g| (g, tables.clone()));
        Ok(tables)
    }

    async fn apply(&mut self, ops: Vec<NftOp>) -> Result<(), OpError> {
        // What the kernel holds after these ops, if nothing else changes
        // nftables meanwhile: each op is one transaction, which moves the
        // ruleset generation by one.
        let before = self.listed.take();
        let count = u32::try_from(ops.len()).unwrap_or(u32::MAX);
        let mut after = before.map(|(g, t)| (g.wrapping_add(count), t));
        for op in ops {
            if let Some((_, t)) = after.as_mut() {
                match &op {
                    NftOp::Write(name, script) => t.insert(name, Table::Written(script.clone())),
                    NftOp::Delete(name) => t.insert(name, Table::Absent),
                };
            }
            match op {
                NftOp::Write(name, script) => {
                    // Replaces the table whole (and, for the SNAT table,
                    // the IPv4-only table of older versions).
                    let old = if name == SNAT {
                        format!("add table ip {SNAT}\ndelete table ip {SNAT}\n")
                    } else {
                        String::new()
                    };
                    let text =
                        format!("{old}add table inet {name}\ndelete table inet {name}\n{script}");
                    run_nft(text)
                        .await
                        .map_err(|e| OpError::new("writing nftables table", name, e))?;
                    // The kernel's own listing is taken at once (listing
                    // does not move the generation) unless the kernel's
                    // way of listing this shape is known and keeps the
                    // elements as written: then a later first look can be
                    // checked against the shape and the elements, and a big
                    // SNAT map is not listed after every write. The drain
                    // gate is small and always listed.
                    let key = shape(&script);
                    let known_shape = self.shapes.get(&key).is_some_and(|(_, same)| *same);
                    let reference = if name == DRAIN || !known_shape {
                        let listing = tokio::task::spawn_blocking(move || list(name))
                            .await
                            .map_err(|e| OpError::new("listing nftables table", name, e))??;
                        if let Some(l) = &listing {
                            let (listed, listed_elements) = split(l);
                            let same = listed_elements == elements(&script);
                            self.shapes.insert(key, (listed, same));
                        }
                        listing
                    } else {
                        None
                    };
                    self.written.insert(name, (script, reference));
                    if name == DRAIN {
                        tracing::info!("drain gate closed: new TCP connections to the drained VIPs are dropped");
                    }
                }
                NftOp::Delete(name) => {
                    run_nft(format!("add table inet {name}\ndelete table inet {name}\n"))
                        .await
                        .map_err(|e| OpError::new("deleting nftables table", name, e))?;
                    self.written.remove(name);
                    if name == DRAIN {
                        tracing::info!("drain gate open");
                    }
                }
            }
        }
        // The generation is the one these writes made: no one else changed
        // nftables in between, so the next look needs no listing (a listing
        // of a big SNAT map costs more than writing it).
        let now = tokio::task::spawn_blocking(generation)
            .await
            .map_err(std::io::Error::other)
            .and_then(|g| g)
            .ok();
        self.listed = after.filter(|(g, _)| Some(*g) == now);
        Ok(())
    }
}

/// An nftables script or listing split in two: its shape (everything but
/// the set and map elements, spaces collapsed: the tables, maps, chains and
/// rules it names, which a change of services seldom changes) and its
/// elements (what is between `elements = {` and `}`, split at commas,
/// spaces collapsed), in any order.
fn split(text: &str) -> (String, BTreeSet<String>) {
    let collapse = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut shape = String::with_capacity(256);
    let mut elements = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("elements = {") {
        shape.push_str(&rest[..at]);
        rest = &rest[at + "elements = {".len()..];
        let end = rest.find('}').unwrap_or(rest.len());
        elements.extend(
            rest[..end]
                .split(',')
                .map(collapse)
                .filter(|e| !e.is_empty()),
        );
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    shape.push_str(rest);
    (collapse(&shape), elements)
}

/// The shape of a script or listing ([`split`]).
fn shape(text: &str) -> String {
    split(text).0
}

/// The elements of a script or listing ([`split`]).
fn elements(text: &str) -> BTreeSet<String> {
    split(text).1
}

/// Whether the kernel's `listing` of a table holds the elements `script`
/// wrote.
#[cfg(test)]
fn same_elements(script: &str, listing: &str) -> bool {
    elements(script) == elements(listing)
}

/// Whether `listing` is the kernel's listing of `script`, whose shape the
/// kernel listed before (`shapes`: a script's shape -> the listing's shape):
/// it has that listed shape and holds the script's elements. Each text is
/// scanned once.
fn lists(shapes: &BTreeMap<String, (String, bool)>, script: &str, listing: &str) -> bool {
    let (script_shape, script_elements) = split(script);
    let Some((listed, _)) = shapes.get(&script_shape) else {
        return false;
    };
    let (listing_shape, listing_elements) = split(listing);
    *listed == listing_shape && script_elements == listing_elements
}

/// The nftables ruleset generation (`NFT_MSG_GETGEN`), which the kernel
/// moves on every committed change to any table: one request and its answer
/// on a netlink socket, no process started.
pub fn generation() -> std::io::Result<u32> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
    // nlmsghdr: length, type (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN),
    // flags (NLM_F_REQUEST), sequence, port; then nfgenmsg: family
    // (AF_UNSPEC), version (NFNETLINK_V0), resource id.
    const GETGEN: u16 = (10 << 8) | 16;
    const NEWGEN: u16 = (10 << 8) | 15;
    const NLMSG_ERROR: u16 = 2;
    const NFTA_GEN_ID: u16 = 1;
    let mut request = Vec::with_capacity(20);
    request.extend_from_slice(&20u32.to_ne_bytes());
    request.extend_from_slice(&GETGEN.to_ne_bytes());
    request.extend_from_slice(&1u16.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[0, 0, 0, 0]);
    let socket = Socket::new(NETLINK_NETFILTER)?;
    socket.send(&request, 0)?;
    let mut reply = vec![0u8; 4096];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let reply = reply.get(..n).unwrap_or_default();
    let bad = |what: &str| std::io::Error::other(format!("nftables generation: {what}"));
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let len = reply
        .get(0..4)
        .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]) as usize)
        .ok_or_else(|| bad("a short answer"))?;
    let message = reply.get(..len).ok_or_else(|| bad("a cut answer"))?;
    match u16_at(message, 4) {
        Some(NEWGEN) => {}
        Some(NLMSG_ERROR) => {
            let code = message
                .get(16..20)
                .map(|x| i32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
                .unwrap_or(0);
            return Err(std::io::Error::from_raw_os_error(-code));
        }
        _ => return Err(bad("an unexpected answer")),
    }
    // Attributes after the 16-byte header and the 4-byte nfgenmsg.
    let mut at = 20;
    while let (Some(alen), Some(kind)) = (u16_at(message, at), u16_at(message, at + 2)) {
        let alen = usize::from(alen);
        if alen < 4 {
            break;
        }
        if kind & 0x3fff == NFTA_GEN_ID {
            let v = message
                .get(at + 4..at + 8)
                .ok_or_else(|| bad("a cut generation id"))?;
            return Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        }
        at += (alen + 3) & !3;
    }
    Err(bad("no generation id in the answer"))
}

/// Runs `script` through nft on a blocking thread (the runtime's thread
/// also carries the Raft node's timers).
async fn run_nft(script: String) -> Result<(), std::io::Error> {
    tokio::task::spawn_blocking(move || nft(&script))
        .await
        .map_err(std::io::Error::other)?
}

/// The kernel's listing of `inet NAME`, or None if there is no such table.
fn list(name: &str) -> Result<Option<String>, OpError> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", name])
        .output()
        .map_err(|e| OpError::new("running", "nft list table", e))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(OpError::new("listing nftables table", name, err.trim()))
    }
}

/// Runs an nftables script (`nft -f -`), all of it or nothing.
pub fn nft(script: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::{Backend, Owner, Protocol, Scheduler, ServicePort, VirtualService};

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
            std::sync::Arc::new(VirtualService::new(
                vip,
                vec![ServicePort {
                    protocol: Protocol::Tcp,
                    port: 80,
                    backends: vec![Backend {
                        address: "10.10.0.21".parse().unwrap(),
                        port: 30080,
                        weight: 1,
                    }],
                }],
            )),
        );
        s
    }

    fn vips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn snat_sends_nat_backend_traffic_from_the_vip() {
        let mut st = state();
        let r = snat_ruleset(&st);
        let vip = st.services.values().next().unwrap().vip;
        assert!(
            r.contains(&format!("      10.10.0.21 . tcp . 30080 . {vip} : {vip}\n")),
            "{r}"
        );
        assert!(
            r.contains(
                "snat ip to ip daddr . meta l4proto . th dport . ct original ip daddr map @snat4"
            ),
            "{r}"
        );
        assert!(!r.contains("snat ip6 to"), "{r}");
        assert!(r.starts_with("table inet director_snat {"));
        // snat: false: the nodes route back; nothing to rewrite.
        for vs in st.services.values_mut() {
            std::sync::Arc::make_mut(vs).snat = false;
        }
        let none = snat_ruleset(&st);
        assert!(!none.contains("snat ip to"), "{none}");
        assert!(!none.contains("elements"), "{none}");
    }

    /// A weight or an owner leaves the script as it is; a backend, the
    /// forwarding mode or a new service changes it, and `same_snat` says
    /// so exactly when the script differs.
    #[test]
    fn the_script_is_kept_exactly_when_no_snat_element_changed() {
        let before = state();
        fn web(s: &mut ClusterState) -> &mut VirtualService {
            std::sync::Arc::make_mut(s.services.get_mut("static/web").unwrap())
        }
        let mut weight = before.clone();
        web(&mut weight).ports[0].backends[0].weight = 5;
        let mut scheduler = before.clone();
        web(&mut scheduler).scheduler = Scheduler::Lc;
        let mut backend = before.clone();
        web(&mut backend).ports[0].backends[0].port = 30081;
        let mut dr = before.clone();
        web(&mut dr).forwarding = Forwarding::Dr;
        let mut added = before.clone();
        let copy = (*before.services["static/web"]).clone();
        added.services.insert(
            "static/other".into(),
            std::sync::Arc::new(VirtualService {
                vip: "10.10.0.201".parse().unwrap(),
                ..copy
            }),
        );
        for (after, same) in [
            (&weight, true),
            (&scheduler, true),
            (&backend, false),
            (&dr, false),
            (&added, false),
        ] {
            assert_eq!(same_snat(&before, after), same);
            assert_eq!(snat_ruleset(&before) == snat_ruleset(after), same);
            assert_eq!(same_snat(after, &before), same);
        }
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

    /// A listing (nft's layout: several elements to a line, tabs, its own
    /// order) holds the script's elements; one element less does not.
    #[test]
    fn a_listing_is_compared_with_the_script_by_its_elements() {
        let script = "table inet director_snat {\n  map snat4 {\n    type ipv4_addr . inet_proto . inet_service . ipv4_addr : ipv4_addr\n    elements = {\n      10.10.0.21 . tcp . 30080 . 10.10.0.200 : 10.10.0.200,\n      10.10.0.22 . tcp . 30080 . 10.10.0.200 : 10.10.0.200,\n      10.10.0.21 . udp . 30053 . 10.10.0.201 : 10.10.0.201\n    }\n  }\n}\n";
        let mut lines: Vec<String> = elements(script).into_iter().rev().collect();
        assert_eq!(lines.len(), 3, "{script}");
        let listing = |items: &[String]| {
            format!(
                "table inet director_snat {{\n\tmap snat4 {{\n\t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr : ipv4_addr\n\t\telements = {{ {} }}\n\t}}\n}}\n",
                items.join(",\n\t\t\t     ")
            )
        };
        assert!(same_elements(script, &listing(&lines)));
        lines.pop();
        assert!(!same_elements(script, &listing(&lines)));
        assert!(elements("table inet x {\n}\n").is_empty());
    }

    /// The shape leaves the elements out and the layout aside; a rule
    /// more, or none, is another shape.
    #[test]
    fn the_shape_of_a_table_is_everything_but_its_elements() {
        let script = snat_ruleset(&state());
        let listing = script.replace("      ", "\t\t\t").replace("\n    }", " }");
        assert_eq!(shape(&script), shape(&listing));
        assert!(!shape(&script).contains("10.10.0.21"), "{}", shape(&script));
        assert!(shape(&script).contains("map @snat4"), "{}", shape(&script));
        let flushed = script.replace(
            "snat ip to ip daddr . meta l4proto . th dport . ct original ip daddr map @snat4",
            "",
        );
        assert_ne!(shape(&script), shape(&flushed));
        let mut more = script.clone();
        more.insert_str(more.rfind("  }").unwrap(), "    accept\n");
        assert_ne!(shape(&script), shape(&more));
    }

    /// From a kernel with foreign or missing tables, with the gate closed
    /// and open: apply the plan, plan again, nothing.
    #[test]
    fn applying_the_plan_leaves_nothing_to_do() {
        let s = state();
        for gate in [vips(&[]), vips(&["10.10.0.200"])] {
            let want = desired(&s, &gate);
            for start in [
                Tables::new(),
                Tables::from([(SNAT, Table::Absent), (DRAIN, Table::Other("x".into()))]),
                Tables::from([(SNAT, Table::Other("y".into())), (DRAIN, Table::Absent)]),
            ] {
                let mut kernel = start;
                let ops = plan(&want, &kernel);
                for op in &ops {
                    match op {
                        NftOp::Write(n, script) => kernel.insert(n, Table::Written(script.clone())),
                        NftOp::Delete(n) => kernel.insert(n, Table::Absent),
                    };
                }
                assert_eq!(plan(&want, &kernel), Vec::new(), "{ops:?}");
            }
        }
    }
}
