//! Whether this host can do direct routing to each `dr` backend. IPVS's
//! direct routing hands the client's packet, still addressed to the VIP, to
//! the backend's MAC address: the backend must be on a network this host
//! reaches without a gateway. Through a gateway the packet would go to the
//! router, which sends it back to whoever holds the VIP: a loop, not a
//! service. An address of this host cannot be a `dr` backend either.
//!
//! A local input of the data plane, like health: a task looks up the
//! kernel's route to every `dr` backend when the committed state changes
//! and every [`RECHECK`], and publishes the ones this host cannot reach
//! directly with the reason. The IPVS reconciler leaves those out of its
//! table, `director status` shows the reason on the backend, and the log
//! says it once when it starts and once when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use consensus::state::{ClusterState, Forwarding};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use tokio::sync::watch;

/// How often the routes are looked up again when nothing else changes (a
/// route or an address may change under a running director).
pub const RECHECK: Duration = Duration::from_secs(10);

/// The `dr` backends this host cannot route to directly, each with why.
pub type Refused = BTreeMap<IpAddr, String>;

/// Every backend address of a `dr` service in the committed state.
pub fn dr_backends(state: &ClusterState) -> BTreeSet<IpAddr> {
    state
        .services
        .values()
        .filter(|vs| vs.forwarding == Forwarding::Dr)
        .flat_map(|vs| vs.ports.iter())
        .flat_map(|p| p.backends.iter().map(|b| b.address))
        .collect()
}

/// Why the route the kernel chose for `addr` cannot carry direct routing;
/// None when it can (a unicast route with no gateway).
pub fn judge(addr: IpAddr, route: &RouteMessage) -> Option<String> {
    match route.header.kind {
        RouteType::Unicast => {}
        RouteType::Local => {
            return Some(format!(
                "dr: {addr} is an address of this director; direct routing needs another host"
            ))
        }
        other => {
            return Some(format!(
                "dr: the route to {addr} is {other:?}; direct routing needs the backend on a \
                 network this director is attached to"
            ))
        }
    }
    let via = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => Some(address_text(g)),
        RouteAttribute::Via(v) => Some(format!("{v:?}")),
        RouteAttribute::MultiPath(_) => Some("a multipath route".to_string()),
        _ => None,
    });
    via.map(|gw| {
        format!(
            "dr: {addr} is reached through the gateway {gw}; direct routing needs the backend \
             on a network this director is attached to (put the nodes on the directors' LAN, \
             or use forwarding nat)"
        )
    })
}

/// A gateway as people write it (`10.0.0.1`, `fe80::1`).
fn address_text(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(v4) => v4.to_string(),
        RouteAddress::Inet6(v6) => v6.to_string(),
        other => format!("{other:?}"),
    }
}

/// Looks up the route to `addr` in the kernel (`ip route get`).
async fn lookup(handle: &rtnetlink::Handle, addr: IpAddr) -> Result<Option<String>, String> {
    let query = match addr {
        IpAddr::V4(v4) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    };
    let mut replies = handle.route().get(query).execute();
    match replies.try_next().await {
        Ok(Some(route)) => Ok(judge(addr, &route)),
        Ok(None) => Ok(Some(format!("dr: the kernel has no route to {addr}"))),
        Err(rtnetlink::Error::NetlinkError(e)) => {
            // ENETUNREACH, EHOSTUNREACH: no route at all.
            Ok(Some(format!("dr: no route to {addr} ({e})")))
        }
        Err(e) => Err(format!("looking up the route to {addr}: {e}")),
    }
}

/// The published verdicts.
#[derive(Debug)]
pub struct OnLink {
    tx: watch::Sender<Arc<Refused>>,
}

impl Default for OnLink {
    fn default() -> Self {
        OnLink {
            tx: watch::channel(Arc::new(Refused::new())).0,
        }
    }
}

impl OnLink {
    /// The `dr` backends refused now; changes when the set does.
    pub fn refused(&self) -> watch::Receiver<Arc<Refused>> {
        self.tx.subscribe()
    }

    /// Looks the routes up on every state change and every [`RECHECK`]
    /// until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut state: watch::Receiver<Arc<ClusterState>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let handle = match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => {
                tokio::spawn(conn);
                handle
            }
            Err(e) => {
                tracing::error!(error = %e, "no route netlink socket: dr backends are not checked");
                return;
            }
        };
        let mut failed: Option<String> = None;
        // The services of the last lookups; a new state with the same ones
        // waits for the timer.
        let mut from: Option<Arc<ClusterState>> = None;
        let mut timer = true;
        let mut due = tokio::time::Instant::now();
        loop {
            let now = state.borrow_and_update().clone();
            if timer || !from.as_ref().is_some_and(|f| f.same_services(&now)) {
                let want = dr_backends(&now);
                from = Some(now);
                failed = self.check(&handle, want, failed).await;
                due = tokio::time::Instant::now() + RECHECK;
            }
            timer = false;
            tokio::select! {
                r = state.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(due) => timer = true,
                _ = stop.changed() => break,
            }
        }
    }

    /// Looks up every address of `want`, publishes the refused ones and
    /// logs what changed; the lookup error now (`failed`: the last one).
    async fn check(
        &self,
        handle: &rtnetlink::Handle,
        want: BTreeSet<IpAddr>,
        failed: Option<String>,
    ) -> Option<String> {
        let mut refused = Refused::new();
        let mut error = None;
        for addr in want {
            match lookup(handle, addr).await {
                Ok(Some(why)) => {
                    refused.insert(addr, why);
                }
                Ok(None) => {}
                Err(e) => error = Some(e),
            }
        }
        match (&error, &failed) {
            (Some(e), f) if f.as_ref() != Some(e) => {
                tracing::warn!(error = %e, "route lookup for a dr backend failed");
            }
            (None, Some(_)) => tracing::info!("route lookups for dr backends work again"),
            _ => {}
        }
        let before = self.tx.borrow().clone();
        for (addr, why) in &refused {
            if before.get(addr) != Some(why) {
                tracing::warn!(backend = %addr, reason = %why, "dr backend refused");
            }
        }
        for addr in before.keys().filter(|a| !refused.contains_key(a)) {
            tracing::info!(backend = %addr, "dr backend reachable directly again");
        }
        if *before != refused {
            self.tx.send_replace(Arc::new(refused));
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteType, gateway: Option<Ipv4Addr>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.kind = kind;
        if let Some(g) = gateway {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        r
    }

    #[test]
    fn a_directly_connected_backend_is_fine_and_a_gateway_or_local_address_is_not() {
        let a: IpAddr = "10.10.0.21".parse().unwrap();
        assert_eq!(judge(a, &route(RouteType::Unicast, None)), None);
        let via = judge(
            a,
            &route(RouteType::Unicast, Some(Ipv4Addr::new(10, 10, 0, 1))),
        )
        .unwrap();
        assert!(via.contains("through the gateway 10.10.0.1"), "{via}");
        let local = judge(a, &route(RouteType::Local, None)).unwrap();
        assert!(local.contains("an address of this director"), "{local}");
        let black = judge(a, &route(RouteType::BlackHole, None)).unwrap();
        assert!(black.contains("BlackHole"), "{black}");
    }

    #[test]
    fn only_dr_services_are_looked_at() {
        let mut s = ClusterState::default();
        let config = crate::config::parse(include_str!("../../../tests/lab/d1.yaml")).unwrap();
        let wanted = crate::sources::statics::wanted(&config);
        for c in crate::leader::catalogue(&config, &wanted, &s, None).cmds {
            consensus::apply(&mut s, c);
        }
        assert!(dr_backends(&s).is_empty(), "the lab's services are nat");
        std::sync::Arc::make_mut(s.services.get_mut("static/web6").unwrap()).forwarding =
            Forwarding::Dr;
        let want: BTreeSet<IpAddr> = [
            "fd10:10::21".parse().unwrap(),
            "fd10:10::22".parse().unwrap(),
        ]
        .into();
        assert_eq!(dr_backends(&s), want);
        for vs in s.services.values_mut() {
            std::sync::Arc::make_mut(vs).forwarding = Forwarding::Nat;
        }
        assert!(dr_backends(&s).is_empty());
    }
}
