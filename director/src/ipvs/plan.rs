//! The minimal list of kernel operations that turns one IPVS table into
//! another. Pure: tables in, operations (as data) out, in a deterministic order.

use std::collections::BTreeMap;

use ipvs_sys::{Change, Destination, Service, ServiceKey};

/// A service with its destinations.
pub type Entry = (Service, Vec<Destination>);

/// What `plan` compares of a service (not its counters).
fn same_service(a: &Service, b: &Service) -> bool {
    a.scheduler == b.scheduler
        && a.flags == b.flags
        && a.timeout == b.timeout
        && a.netmask == b.netmask
        && a.persistence_engine == b.persistence_engine
}

/// What `plan` compares of a destination (not its counters).
fn same_destination(a: &Destination, b: &Destination) -> bool {
    a.forward == b.forward
        && a.weight == b.weight
        && a.upper_threshold == b.upper_threshold
        && a.lower_threshold == b.lower_threshold
}

/// The operations that make `kernel` hold every service of `desired` exactly
/// (its settings and its whole destination list). Services of `kernel` that
/// `desired` does not name are deleted only with `prune`; otherwise they are
/// never touched.
///
/// Order: deleted services first; then, service by service in `desired`'s
/// order, the service added or edited, then its destinations deleted, edited
/// and added. A service is edited in place and a destination is edited in
/// place (weight, method, thresholds), never deleted and re-added.
pub fn plan(desired: &[Entry], kernel: &[Entry], prune: bool) -> Vec<Change> {
    let current: BTreeMap<ServiceKey, &Entry> = kernel.iter().map(|e| (e.0.key, e)).collect();
    let mut ops = Vec::new();
    if prune {
        let wanted: BTreeMap<ServiceKey, ()> = desired.iter().map(|e| (e.0.key, ())).collect();
        for (service, _) in kernel {
            if !wanted.contains_key(&service.key) {
                ops.push(Change::DelService(service.key));
            }
        }
    }
    for (service, dests) in desired {
        let key = service.key;
        let Some((have, have_dests)) = current.get(&key).map(|e| (&e.0, &e.1)) else {
            ops.push(Change::AddService(service.clone()));
            for d in dests {
                ops.push(Change::AddDest(key, d.clone()));
            }
            continue;
        };
        if !same_service(service, have) {
            ops.push(Change::EditService(service.clone()));
        }
        // The common case at rest and for all but the changed services of
        // a big table: the same destinations in the same order, compared
        // without building an index.
        if dests.len() == have_dests.len()
            && dests
                .iter()
                .zip(have_dests)
                .all(|(d, g)| (d.addr, d.port) == (g.addr, g.port) && same_destination(d, g))
        {
            continue;
        }
        let want: BTreeMap<_, &Destination> = dests.iter().map(|d| ((d.addr, d.port), d)).collect();
        let got: BTreeMap<_, &Destination> =
            have_dests.iter().map(|d| ((d.addr, d.port), d)).collect();
        for d in have_dests {
            if !want.contains_key(&(d.addr, d.port)) {
                ops.push(Change::DelDest(key, d.addr, d.port));
            }
        }
        for d in dests {
            match got.get(&(d.addr, d.port)) {
                Some(g) if same_destination(d, g) => {}
                Some(_) => ops.push(Change::EditDest(key, d.clone())),
                None => {}
            }
        }
        for d in dests {
            if !got.contains_key(&(d.addr, d.port)) {
                ops.push(Change::AddDest(key, d.clone()));
            }
        }
    }
    ops
}

/// Applies `ops` to a table held in memory, as the kernel would. Used to
/// check that applying a plan and planning again yields nothing.
#[cfg(test)]
pub fn simulate(table: &mut Vec<Entry>, ops: &[Change]) {
    for op in ops {
        match op {
            Change::AddService(s) | Change::EditService(s) => {
                if let Some(e) = table.iter_mut().find(|e| e.0.key == s.key) {
                    e.0 = s.clone();
                } else {
                    table.push((s.clone(), Vec::new()));
                }
            }
            Change::DelService(k) => table.retain(|e| e.0.key != *k),
            Change::AddDest(k, d) | Change::EditDest(k, d) => {
                if let Some(e) = table.iter_mut().find(|e| e.0.key == *k) {
                    e.1.retain(|x| (x.addr, x.port) != (d.addr, d.port));
                    e.1.push(d.clone());
                }
            }
            Change::DelDest(k, addr, port) => {
                if let Some(e) = table.iter_mut().find(|e| e.0.key == *k) {
                    e.1.retain(|x| (x.addr, x.port) != (*addr, *port));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipvs_sys::{Forward, ServiceFlags};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(addr: &str, port: u16, sched: &str) -> Service {
        Service::new(ServiceKey::tcp(ip(addr), port), sched)
    }

    fn dest(addr: &str, weight: i32) -> Destination {
        Destination {
            weight,
            ..Destination::new(ip(addr), 30080, Forward::Masquerade)
        }
    }

    fn table() -> Vec<Entry> {
        vec![
            (
                svc("10.0.0.1", 80, "rr"),
                vec![dest("10.1.0.1", 1), dest("10.1.0.2", 1)],
            ),
            (svc("10.0.0.2", 443, "sh"), vec![dest("10.1.0.1", 1)]),
        ]
    }

    #[test]
    fn an_empty_kernel_gets_services_before_their_destinations() {
        let ops = plan(&table(), &[], false);
        let key = ServiceKey::tcp(ip("10.0.0.1"), 80);
        assert_eq!(
            ops[..3],
            [
                Change::AddService(svc("10.0.0.1", 80, "rr")),
                Change::AddDest(key, dest("10.1.0.1", 1)),
                Change::AddDest(key, dest("10.1.0.2", 1)),
            ]
        );
        assert_eq!(ops.len(), 5);
    }

    #[test]
    fn the_same_table_needs_nothing() {
        assert_eq!(plan(&table(), &table(), true), vec![]);
    }

    #[test]
    fn a_weight_change_is_one_edit() {
        let mut want = table();
        want[0].1[1].weight = 5;
        let key = ServiceKey::tcp(ip("10.0.0.1"), 80);
        assert_eq!(
            plan(&want, &table(), false),
            vec![Change::EditDest(key, dest("10.1.0.2", 5))]
        );
    }

    #[test]
    fn scheduler_and_flags_are_edited_in_place() {
        let mut want = table();
        want[1].0.scheduler = "mh".into();
        want[1].0.flags = ServiceFlags::SCHED2;
        assert_eq!(
            plan(&want, &table(), false),
            vec![Change::EditService(want[1].0.clone())]
        );
    }

    #[test]
    fn unnamed_services_are_only_touched_with_prune() {
        let want = vec![table()[0].clone()];
        assert_eq!(plan(&want, &table(), false), vec![]);
        assert_eq!(
            plan(&want, &table(), true),
            vec![Change::DelService(ServiceKey::tcp(ip("10.0.0.2"), 443))]
        );
    }

    #[test]
    fn destinations_of_a_named_service_follow_the_file() {
        let mut want = table();
        want[0].1 = vec![dest("10.1.0.2", 1), dest("10.1.0.3", 1)];
        let key = ServiceKey::tcp(ip("10.0.0.1"), 80);
        assert_eq!(
            plan(&want, &table(), false),
            vec![
                Change::DelDest(key, ip("10.1.0.1"), 30080),
                Change::AddDest(key, dest("10.1.0.3", 1)),
            ]
        );
    }

    #[test]
    fn applying_a_plan_then_planning_again_yields_nothing() {
        // Property over a handful of shapes: from each table to each other.
        let mut shapes = vec![vec![], table()];
        let mut t = table();
        t[0].1[0].weight = 0;
        t[1].0.scheduler = "wrr".into();
        t.push((svc("10.0.0.3", 53, "lc"), vec![dest("10.1.0.9", 2)]));
        shapes.push(t);
        for from in &shapes {
            for to in &shapes {
                for prune in [false, true] {
                    let mut kernel = from.clone();
                    let ops = plan(to, &kernel, prune);
                    simulate(&mut kernel, &ops);
                    assert_eq!(plan(to, &kernel, prune), vec![], "{from:?} -> {to:?}");
                }
            }
        }
    }
}
