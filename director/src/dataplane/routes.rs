//! The VIP routes reconciler: a `local` route (VIP/32, VIP/128) in the
//! local table on `lo` for every VIP this director holds by the hold rule,
//! and none for the cluster's other addresses; routes of addresses the
//! cluster does not manage are never touched. Taking a VIP adds its route
//! and then announces it; giving one up removes the route (and the ARP and
//! NDP answers stopped already, by the same rule).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use consensus::Node;
use futures_util::stream::{self, StreamExt};

use super::driver::{Desired, OpError, Reconciler};
use super::ipvs::managed_addr;
use crate::announce::Announcer;
use crate::config::ConfigCell;

/// One change to the VIP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// Remove the VIP's route: no longer held here.
    Release(IpAddr),
    /// Add the VIP's route and announce it.
    Take(IpAddr),
}

impl RouteOp {
    /// The VIP it is about.
    pub fn vip(&self) -> IpAddr {
        match self {
            RouteOp::Release(v) | RouteOp::Take(v) => *v,
        }
    }
}

/// Route requests in flight at once on the netlink socket.
const IN_FLIGHT: usize = 64;

/// The changes that make `present` equal `held`: releases first, then
/// takes, so that never more is held than the state says.
pub fn plan(held: &BTreeSet<IpAddr>, present: &BTreeSet<IpAddr>) -> Vec<RouteOp> {
    let mut ops: Vec<RouteOp> = present
        .difference(held)
        .map(|v| RouteOp::Release(*v))
        .collect();
    ops.extend(held.difference(present).map(|v| RouteOp::Take(*v)));
    ops
}

/// The VIP routes reconciler.
#[derive(Debug)]
pub struct VipRoutes {
    routes: Routes,
    announcer: Arc<Announcer>,
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    /// What the last `desired` held: the NDP groups follow it.
    held: BTreeSet<IpAddr>,
    /// Whether the last `desired` saw the ownership lease held.
    lease: Option<bool>,
    /// The state and the hold permission `held` was computed from: the
    /// same inputs give the same set, so a wake-up at rest does not walk
    /// every VIP again.
    held_from: Option<(Arc<consensus::ClusterState>, bool)>,
    /// conntrackd, whose external cache is committed before a VIP is taken.
    conntrackd: Option<Arc<super::conntrack::Conntrackd>>,
}

impl VipRoutes {
    /// A reconciler over `routes`, announcing through `announcer` by its
    /// hold rule.
    pub fn new(
        routes: Routes,
        announcer: Arc<Announcer>,
        node: Arc<Node>,
        config: Arc<ConfigCell>,
        conntrackd: Option<Arc<super::conntrack::Conntrackd>>,
    ) -> Self {
        VipRoutes {
            routes,
            announcer,
            node,
            config,
            held: BTreeSet::new(),
            lease: None,
            held_from: None,
            conntrackd,
        }
    }

    fn listen(&self) -> Result<(), OpError> {
        self.announcer
            .listen_for(&self.held)
            .map_err(|e| OpError::new("joining", "the solicited-node groups of the held VIPs", e))
    }
}

impl Reconciler for VipRoutes {
    type State = BTreeSet<IpAddr>;
    type Op = RouteOp;

    fn name(&self) -> &'static str {
        "routes"
    }

    fn desired(&mut self) -> Desired<BTreeSet<IpAddr>> {
        let rule = self.announcer.rule();
        let state = self.node.state();
        let may_hold = rule.may_hold();
        let same = self
            .held_from
            .as_ref()
            .is_some_and(|(s, m)| Arc::ptr_eq(s, &state) && *m == may_hold);
        if !same {
            self.held = crate::announce::hold::held(&state, self.node.id(), may_hold);
            self.held_from = Some((state, may_hold));
        }
        let lease = self.node.holds_lease();
        match (self.lease, lease) {
            (Some(true), false) => {
                tracing::warn!("ownership lease lapsed: answering for no VIP until it is renewed")
            }
            (Some(false), true) => tracing::info!("ownership lease regained"),
            (None, true) => tracing::info!("ownership lease held"),
            _ => {}
        }
        self.lease = Some(lease);
        // A lease is granted or renewed without a change of the committed
        // state: while none is held, look again every renewal interval (a
        // pass without a change costs no kernel call); while one is, the
        // routes go when it would leave the guard.
        let renew = Duration::from_millis(self.config.get().lease.renew_ms.clamp(5, 100));
        let changes_in = match rule.time_left() {
            Some(left) => left + Duration::from_millis(1),
            None => renew,
        };
        Desired {
            state: self.held.clone(),
            changes_in: Some(changes_in),
        }
    }

    fn plan(&self, desired: &BTreeSet<IpAddr>, observed: &BTreeSet<IpAddr>) -> Vec<RouteOp> {
        plan(desired, observed)
    }

    async fn observe(&mut self) -> Result<BTreeSet<IpAddr>, OpError> {
        let state = self.node.state();
        let config = self.config.get();
        Ok(self
            .routes
            .present()
            .await?
            .into_iter()
            .filter(|v| managed_addr(v, &state, &config))
            .collect())
    }

    async fn apply(&mut self, ops: Vec<RouteOp>) -> Result<(), OpError> {
        // Listen for neighbour solicitations before the routes appear.
        self.listen()?;
        let announce = self.config.get().announce;
        // The connections of a VIP about to be taken find their NAT state
        // in the kernel when their packets arrive.
        if let Some(c) = &self.conntrackd {
            if ops.iter().any(|op| matches!(op, RouteOp::Take(_))) {
                c.commit().await;
            }
        }
        // Many requests in flight on the one netlink socket (a lapsed lease
        // gives up every VIP at once): releases all done before any take.
        let (releases, takes): (Vec<RouteOp>, Vec<RouteOp>) = ops
            .into_iter()
            .partition(|op| matches!(op, RouteOp::Release(_)));
        let routes = &self.routes;
        let mut done = stream::iter(releases)
            .map(|op| async move {
                let vip = op.vip();
                routes.del(vip).await.map(|()| vip)
            })
            .buffer_unordered(IN_FLIGHT);
        let mut failed = None;
        while let Some(r) = done.next().await {
            match r {
                Ok(vip) => tracing::info!(%vip, "VIP released"),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let mut done = stream::iter(takes)
            .map(|op| async move {
                let vip = op.vip();
                routes.add(vip).await.map(|()| vip)
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some(r) = done.next().await {
            match r {
                Ok(vip) => {
                    tracing::info!(%vip, "VIP taken");
                    self.announcer.announce(
                        vip,
                        announce.count,
                        Duration::from_millis(announce.interval_ms),
                    );
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Stopping: give up every VIP at once (the next owner announces).
    async fn stop(&mut self) {
        self.held.clear();
        let _ = self.listen();
        if let Ok(present) = self.observe().await {
            for vip in present {
                if let Err(e) = self.routes.del(vip).await {
                    tracing::warn!(error = %e, "giving up a VIP at stop");
                }
            }
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
    pub fn open() -> Result<Routes, OpError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| OpError::new("opening", "an rtnetlink socket", e))?;
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
    pub async fn present(&self) -> Result<BTreeSet<IpAddr>, OpError> {
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
                .map_err(|e| OpError::new("listing", "local routes", e))?
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
    pub async fn add(&self, vip: IpAddr) -> Result<(), OpError> {
        self.handle
            .route()
            .add(self.message(vip))
            .replace()
            .execute()
            .await
            .map_err(|e| OpError::new("adding local route", vip, e))
    }

    /// Removes the local route of `vip`.
    pub async fn del(&self, vip: IpAddr) -> Result<(), OpError> {
        self.handle
            .route()
            .del(self.message(vip))
            .execute()
            .await
            .map_err(|e| OpError::new("removing local route", vip, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Releases come before takes; applying the plan and planning again
    /// gives nothing.
    #[test]
    fn routes_are_released_before_others_are_taken() {
        let held = set(&["10.10.0.200", "fd10:10::200"]);
        let present = set(&["10.10.0.201", "10.10.0.200"]);
        let ops = plan(&held, &present);
        assert_eq!(
            ops,
            vec![
                RouteOp::Release("10.10.0.201".parse().unwrap()),
                RouteOp::Take("fd10:10::200".parse().unwrap())
            ]
        );
        let mut kernel = present;
        for op in ops {
            match op {
                RouteOp::Release(v) => kernel.remove(&v),
                RouteOp::Take(v) => kernel.insert(v),
            };
        }
        assert!(plan(&held, &kernel).is_empty());
    }
}
