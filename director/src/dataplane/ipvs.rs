//! The IPVS reconciler: every virtual service of the committed state, on
//! every data director (hot standby), and nothing else: a kernel service
//! whose address is not one of the cluster's VIPs is never touched.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use consensus::state::{
    Backend, ClusterState, Forwarding, HealthCheck, OnFail, Protocol, SchedulerFlag, VirtualService,
};
use consensus::Node;
use ipvs_sys::{
    Change, Destination, Forward, IpvsHandle, Netmask, Service, ServiceFlags, ServiceKey,
    DEFAULT_WINDOW,
};

use super::driver::{Desired, OpError, Reconciler};
use super::onlink::Refused;
use crate::config::{Config, ConfigCell};
use crate::health::Down;
use crate::ipvs::plan::{self, Entry};

/// The kernel's view of one virtual service port: the IPVS service with its
/// scheduler, flags and persistence.
pub fn service(vs: &VirtualService, protocol: Protocol, port: u16) -> Service {
    let mut s = Service::new(key(vs, protocol, port), vs.scheduler.as_str());
    for flag in &vs.scheduler_flags {
        s.flags = s.flags.with(match flag {
            SchedulerFlag::ShFallback | SchedulerFlag::MhFallback => ServiceFlags::SCHED1,
            SchedulerFlag::ShPort | SchedulerFlag::MhPort => ServiceFlags::SCHED2,
        });
    }
    if let Some(p) = vs.persistence {
        s.flags = s.flags.with(ServiceFlags::PERSISTENT);
        s.timeout = p.timeout_s;
        if let Some(len) = p.netmask {
            s.netmask = match vs.vip {
                IpAddr::V4(_) => {
                    let bits = u32::from(len.min(32));
                    let mask = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    Netmask::V4(mask.into())
                }
                IpAddr::V6(_) => Netmask::V6(u32::from(len.min(128))),
            };
        }
    }
    s
}

/// The kernel's key of one virtual service port.
fn key(vs: &VirtualService, protocol: Protocol, port: u16) -> ServiceKey {
    let protocol = match protocol {
        Protocol::Tcp => ipvs_sys::Protocol::Tcp,
        Protocol::Udp => ipvs_sys::Protocol::Udp,
        Protocol::Sctp => ipvs_sys::Protocol::Sctp,
    };
    ServiceKey::Addr {
        protocol,
        addr: vs.vip,
        port,
    }
}

/// The IPVS table every data director programs: one IPVS service per port
/// of every virtual service, masquerade for `nat`, direct routing for `dr`,
/// each backend as this director's health checks see it
/// ([`backends`]), less the `dr` backends this host cannot route to
/// directly (`refused`, [`super::onlink`]). Sorted by service key.
pub fn desired(state: &ClusterState, down: &Down, refused: &Refused) -> Vec<Entry> {
    let mut out = Vec::with_capacity(state.services.values().map(|vs| vs.ports.len()).sum());
    for vs in state.services.values() {
        entries(vs, down, refused, &mut out);
    }
    out.sort_by_key(|(s, _)| s.key);
    out
}

/// The entries of one virtual service ([`desired`]), pushed onto `out`.
fn entries(vs: &VirtualService, down: &Down, refused: &Refused, out: &mut Vec<Entry>) {
    let forward = match vs.forwarding {
        Forwarding::Nat => Forward::Masquerade,
        Forwarding::Dr => Forward::DirectRoute,
    };
    let direct = vs.forwarding == Forwarding::Dr;
    for p in &vs.ports {
        let dests = backends(vs.health.as_deref(), p.protocol, &p.backends, down)
            .into_iter()
            .filter(|(address, _, _)| !(direct && refused.contains_key(address)))
            .map(|(address, port, weight)| Destination {
                weight: i32::try_from(weight).unwrap_or(i32::MAX),
                ..Destination::new(address, port, forward)
            })
            .collect();
        out.push((service(vs, p.protocol, p.port), dests));
    }
}

/// The changes from `before` to `after` in a table `known` that holds
/// `before`'s [`desired`] table: the operations, with `known` made
/// `after`'s table. Only the services that changed between the two states
/// are looked at; None when so many did that the whole table is as quick.
pub fn changes(
    before: &ClusterState,
    after: &ClusterState,
    down: &Down,
    refused: &Refused,
    known: &mut Vec<Entry>,
) -> Option<Vec<Change>> {
    let changed = before.changed_services(after);
    if changed.len() > known.len() / 8 + 16 {
        return None;
    }
    let mut keys = std::collections::BTreeSet::new();
    let mut want = Vec::new();
    for (_, old, new) in &changed {
        for vs in old.iter().chain(new) {
            keys.extend(vs.ports.iter().map(|p| key(vs, p.protocol, p.port)));
        }
        if let Some(vs) = new {
            entries(vs, down, refused, &mut want);
        }
    }
    want.sort_by_key(|(s, _)| s.key);
    let have: Vec<Entry> = known
        .iter()
        .filter(|(s, _)| keys.contains(&s.key))
        .cloned()
        .collect();
    let ops = plan(&want, &have);
    // One merge of the two sorted lists (inserting one by one would move
    // the rest of the table for each).
    let kept = std::mem::take(known);
    let mut merged = Vec::with_capacity(kept.len() + want.len());
    let mut want = want.into_iter().peekable();
    for entry in kept.into_iter().filter(|(s, _)| !keys.contains(&s.key)) {
        while let Some(new) = want.next_if(|(s, _)| s.key < entry.0.key) {
            merged.push(new);
        }
        merged.push(entry);
    }
    merged.extend(want);
    *known = merged;
    Some(ops)
}

/// The destinations of one port (address, port, weight) with health
/// applied: a backend that is down gets weight 0 (`on_fail: weight0`: its
/// open connections finish) or is left out (`remove`). When every backend
/// that would take traffic is down, the port goes to the check's fallback
/// if it has one, and otherwise keeps its backends as they are: nothing
/// would answer either way, and a check that fails everywhere at once is
/// more often the check's fault.
pub fn backends(
    check: Option<&HealthCheck>,
    protocol: Protocol,
    list: &[Backend],
    down: &Down,
) -> Vec<(IpAddr, u16, u32)> {
    let all = || list.iter().map(|b| (b.address, b.port, b.weight)).collect();
    let Some(check) = check else { return all() };
    let is_down = |b: &Backend| {
        crate::health::target(check, protocol, b).is_some_and(|t| down.contains(check, t))
    };
    let serving = list.iter().filter(|b| b.weight > 0 && !is_down(b)).count();
    let wanted = list.iter().filter(|b| b.weight > 0).count();
    let mut out: Vec<(IpAddr, u16, u32)> = Vec::with_capacity(list.len() + 1);
    if serving == 0 && wanted > 0 {
        // A fallback of the other family cannot take this port's traffic.
        let same_family = |f: &std::net::SocketAddr| {
            list.first()
                .is_some_and(|b| b.address.is_ipv4() == f.is_ipv4())
        };
        let Some(fallback) = check.fallback.filter(same_family) else {
            return all();
        };
        out.push((fallback.ip(), fallback.port(), 1));
    }
    for b in list {
        match (is_down(b), check.on_fail) {
            (false, _) => out.push((b.address, b.port, b.weight)),
            (true, OnFail::Weight0) => out.push((b.address, b.port, 0)),
            (true, OnFail::Remove) => {}
        }
    }
    // A fallback that is also a backend appears once, as the fallback.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(a, p, _)| seen.insert((*a, *p)));
    out
}

/// Whether an address is one of the cluster's VIPs: allocated in the state,
/// or inside a configured pool. Nothing else is ever touched.
pub fn managed_addr(addr: &IpAddr, state: &ClusterState, config: &Config) -> bool {
    state.allocations.contains_key(addr) || config.pools.iter().any(|p| p.contains(addr))
}

/// Whether a kernel service is one this director manages: its address is a
/// VIP of the cluster (`managed_addr`).
pub fn managed(key: &ServiceKey, state: &ClusterState, config: &Config) -> bool {
    match key {
        ServiceKey::Addr { addr, .. } => managed_addr(addr, state, config),
        ServiceKey::Fwmark { .. } => false,
    }
}

/// The operations that make `observed` (the managed part of the kernel's
/// table) equal to `desired`: managed services that are not wanted go.
pub fn plan(desired: &[Entry], observed: &[Entry]) -> Vec<Change> {
    plan::plan(desired, observed, true)
}

/// The IPVS reconciler.
#[derive(Debug)]
pub struct Ipvs {
    node: Arc<Node>,
    config: Arc<ConfigCell>,
    handle: IpvsHandle,
    down: watch::Receiver<Arc<Down>>,
    refused: watch::Receiver<Arc<Refused>>,
    /// The inputs of the last desired table.
    inputs: Option<(Arc<ClusterState>, Arc<Down>, Arc<Refused>)>,
}

impl Ipvs {
    /// A reconciler programming through `handle`, leaving out (or
    /// weighting 0) what the health checks report in `down`, and the `dr`
    /// backends in `refused`.
    pub fn new(
        node: Arc<Node>,
        config: Arc<ConfigCell>,
        handle: IpvsHandle,
        down: watch::Receiver<Arc<Down>>,
        refused: watch::Receiver<Arc<Refused>>,
    ) -> Self {
        Ipvs {
            node,
            config,
            handle,
            down,
            refused,
            inputs: None,
        }
    }
}

/// What a change does and to what, for an error message.
fn describe(change: &Change) -> (&'static str, String) {
    match change {
        Change::AddService(s) => ("adding service", s.key.to_string()),
        Change::EditService(s) => ("editing service", s.key.to_string()),
        Change::DelService(k) => ("deleting service", k.to_string()),
        Change::AddDest(k, d) => ("adding backend", format!("{k} -> {}", d.addr)),
        Change::EditDest(k, d) => ("editing backend", format!("{k} -> {}", d.addr)),
        Change::DelDest(k, a, p) => ("deleting backend", format!("{k} -> {a}:{p}")),
        other => ("applying", format!("{other:?}")),
    }
}

impl Reconciler for Ipvs {
    type State = Vec<Entry>;
    type Op = Change;

    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn desired(&mut self) -> Desired<Vec<Entry>> {
        let down = self.down.borrow().clone();
        let refused = self.refused.borrow().clone();
        let state = self.node.state();
        let table = desired(&state, &down, &refused);
        self.inputs = Some((state, down, refused));
        Desired::steady(table)
    }

    /// The table depends on the services, the health verdicts and the
    /// refused backends only: an owner move or a lease does not touch it.
    fn unchanged(&mut self) -> bool {
        self.inputs.as_ref().is_some_and(|(state, down, refused)| {
            Arc::ptr_eq(down, &self.down.borrow())
                && Arc::ptr_eq(refused, &self.refused.borrow())
                && state.same_services(&self.node.state())
        })
    }

    fn plan(&self, desired: &Vec<Entry>, observed: &Vec<Entry>) -> Vec<Change> {
        plan(desired, observed)
    }

    /// With the same health verdicts and refused backends, only the
    /// services of the commit: a weight changed in a table of 10,000 is
    /// one service's work.
    fn plan_changes(&mut self, known: &mut Vec<Entry>) -> Option<Vec<Change>> {
        let (before, down, refused) = self.inputs.clone()?;
        if !Arc::ptr_eq(&down, &self.down.borrow())
            || !Arc::ptr_eq(&refused, &self.refused.borrow())
        {
            return None;
        }
        let state = self.node.state();
        let ops = changes(&before, &state, &down, &refused, known)?;
        self.inputs = Some((state, down, refused));
        Some(ops)
    }

    /// Reading 10,000 services takes seconds under emulation; a dropped
    /// read leaves its socket to be replaced before the next (`ipvs-sys`).
    fn resync_gives_way(&self) -> bool {
        true
    }

    async fn observe(&mut self) -> Result<Vec<Entry>, OpError> {
        let state = self.node.state();
        let config = self.config.get();
        let mut table: Vec<Entry> = self
            .handle
            .table()
            .await
            .map_err(|e| OpError::new("listing", "the IPVS table", e))?
            .into_iter()
            .filter(|(s, _)| managed(&s.key, &state, &config))
            .collect();
        // The counters are not the reconciler's business, and the driver
        // may keep this table until the next resync.
        for (s, dests) in &mut table {
            s.stats = None;
            for d in dests {
                d.stats = None;
                d.counters = None;
            }
        }
        table.sort_by_key(|(s, _)| s.key);
        Ok(table)
    }

    async fn apply(&mut self, ops: Vec<Change>) -> Result<(), OpError> {
        let results = self.handle.execute(&ops, DEFAULT_WINDOW).await;
        for (op, result) in ops.iter().zip(results) {
            if let Err(e) = result {
                let (operation, target) = describe(op);
                return Err(OpError::new(operation, target, e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::{Persistence, Scheduler};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let config = crate::config::parse(include_str!("../../../tests/lab/d1.yaml")).unwrap();
        let wanted = crate::sources::statics::wanted(&config);
        for c in crate::leader::catalogue(&config, &wanted, &s, None).cmds {
            consensus::apply(&mut s, c);
        }
        s
    }

    /// Strips what the kernel keeps but the plan does not compare, as a
    /// kernel that applied `ops` would hold the table.
    fn apply_to(table: &mut Vec<Entry>, ops: &[Change]) {
        for op in ops {
            match op {
                Change::AddService(s) | Change::EditService(s) => {
                    match table.iter_mut().find(|e| e.0.key == s.key) {
                        Some(e) => e.0 = s.clone(),
                        None => table.push((s.clone(), Vec::new())),
                    }
                }
                Change::DelService(k) => table.retain(|e| e.0.key != *k),
                Change::AddDest(k, d) | Change::EditDest(k, d) => {
                    if let Some(e) = table.iter_mut().find(|e| e.0.key == *k) {
                        e.1.retain(|x| (x.addr, x.port) != (d.addr, d.port));
                        e.1.push(d.clone());
                    }
                }
                Change::DelDest(k, a, p) => {
                    if let Some(e) = table.iter_mut().find(|e| e.0.key == *k) {
                        e.1.retain(|x| (x.addr, x.port) != (*a, *p));
                    }
                }
                other => panic!("not planned here: {other:?}"),
            }
        }
    }

    /// The changes of a few services: `known` becomes the whole desired
    /// table of the new state, and the operations take a kernel holding
    /// the old one there; a weight is one operation.
    #[test]
    fn changes_of_a_few_services_match_the_whole_table() {
        let before = state();
        let none = (Down::default(), Refused::new());
        let edit = |f: &dyn Fn(&mut ClusterState)| {
            let mut s = before.clone();
            f(&mut s);
            s
        };
        fn web(s: &mut ClusterState) -> &mut VirtualService {
            std::sync::Arc::make_mut(s.services.get_mut("static/web").unwrap())
        }
        let cases = [
            edit(&|s| web(s).ports[0].backends[0].weight = 9),
            edit(&|s| web(s).scheduler = consensus::state::Scheduler::Lc),
            edit(&|s| {
                let mut p = web(s).ports[0].clone();
                p.port = 8080;
                web(s).ports.push(p);
            }),
            edit(&|s| web(s).vip = "10.10.0.250".parse().unwrap()),
            edit(&|s| {
                s.services.remove("static/web");
            }),
            edit(&|s| {
                let mut copy = (*s.services["static/web"]).clone();
                copy.vip = "10.10.0.251".parse().unwrap();
                s.services
                    .insert("static/copy".into(), std::sync::Arc::new(copy));
            }),
        ];
        for after in &cases {
            let old = desired(&before, &none.0, &none.1);
            let new = desired(after, &none.0, &none.1);
            let mut known = old.clone();
            let ops = changes(&before, after, &none.0, &none.1, &mut known).unwrap();
            assert_eq!(known, new);
            let mut kernel = old;
            apply_to(&mut kernel, &ops);
            kernel.sort_by_key(|(s, _)| s.key);
            assert_eq!(plan(&new, &kernel), Vec::new(), "{ops:?}");
        }
        let mut known = desired(&before, &none.0, &none.1);
        let ops = changes(&before, &cases[0], &none.0, &none.1, &mut known).unwrap();
        assert!(matches!(ops[..], [Change::EditDest(..)]), "{ops:?}");
        // Nothing changed: nothing to do.
        let mut same = desired(&before, &none.0, &none.1);
        let ops = changes(&before, &before.clone(), &none.0, &none.1, &mut same).unwrap();
        assert!(ops.is_empty());
    }

    #[test]
    fn a_refused_dr_backend_is_left_out_and_nat_is_not_affected() {
        let mut s = state();
        std::sync::Arc::make_mut(s.services.get_mut("static/web").unwrap()).forwarding =
            Forwarding::Dr;
        let off: IpAddr = "10.10.0.22".parse().unwrap();
        let refused: Refused = [(off, "through a gateway".to_string())].into();
        let t = desired(&s, &Down::default(), &refused);
        let backends = |vip: &str| -> Vec<IpAddr> {
            t.iter()
                .find(|e| e.0.key.to_string().contains(vip))
                .unwrap()
                .1
                .iter()
                .map(|d| d.addr)
                .collect()
        };
        assert_eq!(
            backends("10.10.0.200"),
            ["10.10.0.21".parse::<IpAddr>().unwrap()]
        );
        // The same address under nat is a backend as before.
        std::sync::Arc::make_mut(s.services.get_mut("static/web").unwrap()).forwarding =
            Forwarding::Nat;
        let t = desired(&s, &Down::default(), &refused);
        assert_eq!(t, desired(&s, &Down::default(), &Refused::new()));
    }

    #[test]
    fn persistence_and_scheduler_flags_reach_the_service() {
        let mut s = state();
        let web = std::sync::Arc::make_mut(s.services.get_mut("static/web").unwrap());
        web.scheduler = Scheduler::Sh;
        web.scheduler_flags = [SchedulerFlag::ShPort, SchedulerFlag::ShFallback].into();
        web.persistence = Some(Persistence {
            timeout_s: 300,
            netmask: Some(24),
        });
        let t = desired(&s, &Down::default(), &Refused::new());
        let svc = &t
            .iter()
            .find(|e| e.0.key.to_string().contains("10.10.0.200"))
            .unwrap()
            .0;
        assert_eq!(svc.scheduler, "sh");
        assert!(svc.flags.contains(ServiceFlags::PERSISTENT));
        assert!(svc.flags.contains(ServiceFlags::SCHED1));
        assert!(svc.flags.contains(ServiceFlags::SCHED2));
        assert_eq!(svc.timeout, 300);
        assert_eq!(svc.netmask, Netmask::V4("255.255.255.0".parse().unwrap()));
    }

    #[test]
    fn health_takes_failing_backends_out_and_all_down_keeps_or_falls_back() {
        use consensus::state::Probe;
        let b = |last: u8, weight| Backend {
            address: format!("10.0.0.{last}").parse().unwrap(),
            port: 30080,
            weight,
        };
        let list = [b(1, 1), b(2, 2), b(3, 0)];
        let mut check = HealthCheck {
            probe: Probe::Tcp { port: None },
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            on_fail: OnFail::Weight0,
            fallback: None,
        };
        let addr = |last: u8| -> IpAddr { format!("10.0.0.{last}").parse().unwrap() };
        let mut down = Down::default();
        let none = backends(Some(&check), Protocol::Tcp, &list, &down);
        assert_eq!(
            none,
            vec![
                (addr(1), 30080, 1),
                (addr(2), 30080, 2),
                (addr(3), 30080, 0)
            ]
        );
        down.set(&check, "10.0.0.1:30080".parse().unwrap(), true);
        let one = backends(Some(&check), Protocol::Tcp, &list, &down);
        assert_eq!(one[0], (addr(1), 30080, 0));
        assert_eq!(one[1], (addr(2), 30080, 2));
        // Not checked on UDP ports (a TCP check without a port of its own).
        let udp = backends(Some(&check), Protocol::Udp, &list, &down);
        assert_eq!(udp[0], (addr(1), 30080, 1));
        check.on_fail = OnFail::Remove;
        let mut down_r = Down::default();
        down_r.set(&check, "10.0.0.1:30080".parse().unwrap(), true);
        let removed = backends(Some(&check), Protocol::Tcp, &list, &down_r);
        assert_eq!(removed, vec![(addr(2), 30080, 2), (addr(3), 30080, 0)]);
        // Every serving backend down: kept as they are ...
        down_r.set(&check, "10.0.0.2:30080".parse().unwrap(), true);
        let kept = backends(Some(&check), Protocol::Tcp, &list, &down_r);
        assert_eq!(kept, none);
        // ... or the fallback alone takes traffic.
        check.fallback = Some("10.0.0.9:80".parse().unwrap());
        let mut down_f = Down::default();
        for a in ["10.0.0.1:30080", "10.0.0.2:30080"] {
            down_f.set(&check, a.parse().unwrap(), true);
        }
        let fb = backends(Some(&check), Protocol::Tcp, &list, &down_f);
        assert_eq!(fb, vec![(addr(9), 80, 1), (addr(3), 30080, 0)]);
        // Without a check, the committed weights.
        assert_eq!(backends(None, Protocol::Tcp, &list, &down_f), none);
    }

    /// Apply the plan, plan again: nothing. From an empty kernel, from a
    /// kernel with a stray managed service and a changed weight, and to an
    /// empty wanted table.
    #[test]
    fn applying_the_plan_leaves_nothing_to_do() {
        let s = state();
        let want = desired(&s, &Down::default(), &Refused::new());
        let mut drifted = want.clone();
        drifted[0].1[0].weight = 5;
        drifted[1].1.pop();
        drifted.push((
            Service::new(ServiceKey::udp("10.10.0.201".parse().unwrap(), 53), "wrr"),
            Vec::new(),
        ));
        for (from, to) in [
            (Vec::new(), want.clone()),
            (drifted, want.clone()),
            (want.clone(), Vec::new()),
        ] {
            let mut kernel = from;
            let ops = plan(&to, &kernel);
            assert!(!ops.is_empty());
            apply_to(&mut kernel, &ops);
            assert_eq!(plan(&to, &kernel), Vec::new(), "{ops:?}");
        }
        // One weight: one operation.
        let mut one = want.clone();
        one[0].1[1].weight = 3;
        let ops = plan(&one, &want);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(ops[0], Change::EditDest(..)));
    }
}
