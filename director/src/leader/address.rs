//! Address management: which VIP a wanted service gets. Pure: the wanted
//! request, the pools and the committed allocations in, an address out.
//! An allocation is kept as long as its pool still contains it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use consensus::state::ClusterState;

use crate::config::Pool;
use crate::sources::VipRequest;

/// Why a service has no VIP (it stays pending; a Kubernetes Service gets a
/// Warning Event saying so).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pending {
    /// The named pool does not exist.
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    /// No pool may give it an address of this family.
    #[error("no pool with {family} addresses admits this Service")]
    NoPool {
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// Its sharing group's VIP does not fit its request (no longer in its
    /// pools, or another address was asked for).
    #[error(
        "the shared address {0} is not in this Service's pools or is not the address it asks for"
    )]
    Unfit(IpAddr),
    /// Every pool that admits it has `auto_assign: false`.
    #[error("no pool that admits this Service assigns addresses (auto_assign: false): request an address or a pool")]
    NoAutoPool,
    /// Every pool it may use is full.
    #[error("no free address in pool {}", .0.join(", "))]
    Exhausted(Vec<String>),
    /// It shares a VIP with a service that has one of its ports.
    #[error("port {port} of shared address {vip} is taken by {with}")]
    PortsCollide {
        /// The shared VIP.
        vip: IpAddr,
        /// The port (`80/tcp`).
        port: String,
        /// The service that has it.
        with: String,
    },
    /// The address it asks for belongs to another service.
    #[error("{vip} is already allocated to {holder}")]
    Taken {
        /// The address.
        vip: IpAddr,
        /// Who has it.
        holder: String,
    },
}

/// The pool of those named in `names` that contains `vip`.
pub fn containing<'a>(vip: IpAddr, names: &[String], pools: &'a [Pool]) -> Option<&'a Pool> {
    names
        .iter()
        .filter_map(|n| pools.iter().find(|p| &p.name == n))
        .find(|p| p.contains(&vip))
}

/// Whether `vip` still fits `request` (a shared VIP is checked against each
/// member's request: a pool edit that drops it takes it away).
pub fn fits(vip: IpAddr, request: &VipRequest, pools: &[Pool]) -> bool {
    match request {
        VipRequest::Address(ip) => *ip == vip,
        VipRequest::Pool { name, .. } => {
            containing(vip, std::slice::from_ref(name), pools).is_some()
        }
        VipRequest::Pools { keep, .. } => containing(vip, keep, pools).is_some(),
    }
}

/// The VIP for service `name`: the requested address (unless another
/// service has it), or the address it already has from its pools, or the
/// first free address of its pools.
pub fn choose(
    name: &str,
    request: &VipRequest,
    pools: &[Pool],
    state: &ClusterState,
    taken: &mut Taken,
) -> Result<IpAddr, Pending> {
    let current = state.services.get(name).map(|v| v.vip);
    match request {
        VipRequest::Address(ip) => match state.allocations.get(ip) {
            Some(holder) if holder != name => Err(Pending::Taken {
                vip: *ip,
                holder: holder.clone(),
            }),
            _ => Ok(*ip),
        },
        VipRequest::Pool { name: pool, v6 } => {
            let p = pools
                .iter()
                .find(|p| &p.name == pool)
                .ok_or_else(|| Pending::UnknownPool(pool.clone()))?;
            match current {
                Some(ip) if p.contains(&ip) && v6.is_none_or(|v6| ip.is_ipv6() == v6) => Ok(ip),
                _ => taken
                    .first_free(p, *v6)
                    .ok_or_else(|| Pending::Exhausted(vec![pool.clone()])),
            }
        }
        VipRequest::Pools { keep, assign, v6 } => {
            if let Some(ip) = current {
                if ip.is_ipv6() == *v6 && containing(ip, keep, pools).is_some() {
                    return Ok(ip);
                }
            }
            if assign.is_empty() {
                return Err(Pending::NoAutoPool);
            }
            assign
                .iter()
                .filter_map(|n| pools.iter().find(|p| &p.name == n))
                .find_map(|p| taken.first_free(p, Some(*v6)))
                .ok_or_else(|| Pending::Exhausted(assign.clone()))
        }
    }
}

/// The lowest address of `pool` not in `taken`. It walks the taken
/// addresses inside each range, not the range itself, so a pool of any
/// size (an IPv6 /64) answers at once. `v6`: only addresses of that
/// family (None: either).
pub fn first_free(pool: &Pool, taken: &BTreeSet<IpAddr>, v6: Option<bool>) -> Option<IpAddr> {
    free_in(pool, taken, v6, |_| None, |_, _| {})
}

/// The addresses taken in one round of the leader, and where the lowest
/// free address of each range was last found. Within a round addresses are
/// only added (removals come first, and reset the marks), so the lowest
/// free address of a range never goes down: each search starts where the
/// last one ended, and n allocations in a round cost n log n, not n².
#[derive(Debug, Default)]
pub struct Taken {
    set: BTreeSet<IpAddr>,
    /// Per range (first, last): the lowest address that may be free, or
    /// None when the range is used up.
    low: HashMap<(IpAddr, IpAddr), Option<u128>>,
}

impl Taken {
    /// Starts from the committed allocations.
    pub fn new(set: BTreeSet<IpAddr>) -> Self {
        Taken {
            set,
            low: HashMap::new(),
        }
    }

    /// Whether `ip` is taken.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.set.contains(ip)
    }

    /// Takes `ip`.
    pub fn insert(&mut self, ip: IpAddr) {
        self.set.insert(ip);
    }

    /// Gives `ip` back.
    pub fn remove(&mut self, ip: &IpAddr) {
        if self.set.remove(ip) {
            self.low.clear();
        }
    }

    /// As [`first_free`], from where the last search of each range ended.
    pub fn first_free(&mut self, pool: &Pool, v6: Option<bool>) -> Option<IpAddr> {
        let Taken { set, low } = self;
        let mut seen = Vec::new();
        let found = free_in(
            pool,
            set,
            v6,
            |range| low.get(&range).copied(),
            |range, mark| seen.push((range, mark)),
        );
        low.extend(seen);
        found
    }
}

/// The search behind [`first_free`]: `start` says where a range's search
/// may begin (None: at its first address; Some(None): the range is full),
/// `found` hears where each range's lowest candidate is.
fn free_in(
    pool: &Pool,
    taken: &BTreeSet<IpAddr>,
    v6: Option<bool>,
    start: impl Fn((IpAddr, IpAddr)) -> Option<Option<u128>>,
    mut found: impl FnMut((IpAddr, IpAddr), Option<u128>),
) -> Option<IpAddr> {
    for (a, b) in &pool.ranges {
        if v6.is_some_and(|v6| a.is_ipv6() != v6) {
            continue;
        }
        let (lo, hi, v6) = match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(*a)), u128::from(u32::from(*b)), false)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(*a), u128::from(*b), true),
            _ => continue,
        };
        let as_ip = |n: u128| -> IpAddr {
            if v6 {
                IpAddr::V6(n.into())
            } else {
                // lo..=hi came from IPv4 addresses.
                IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
            }
        };
        // The lowest candidate so far; None once the range is used up.
        let mut next = match start((*a, *b)) {
            Some(mark) => mark.map(|m| m.max(lo)),
            None => Some(lo),
        };
        if let Some(first) = next {
            for ip in taken.range(as_ip(first)..=as_ip(hi)) {
                let n = match ip {
                    IpAddr::V4(x) => u128::from(u32::from(*x)),
                    IpAddr::V6(x) => u128::from(*x),
                };
                match next {
                    Some(c) if n == c => next = (n < hi).then_some(n + 1),
                    _ => break,
                }
            }
        }
        found((*a, *b), next);
        if let Some(c) = next {
            return Some(as_ip(c));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ranges: &[(&str, &str)]) -> Pool {
        Pool::new(
            "p",
            ranges
                .iter()
                .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
                .collect(),
        )
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// A round's searches resume where the last ended and still find what
    /// a search from the start would, whatever is taken meanwhile (in
    /// either family, anywhere in the pool), until the pool is full and
    /// after an address is given back.
    #[test]
    fn a_round_resumes_its_search_and_finds_the_same_addresses() {
        let p = pool(&[
            ("10.0.0.1", "10.0.0.5"),
            ("fd00::1", "fd00::3"),
            ("10.0.1.0", "10.0.1.3"),
        ]);
        let mut t = Taken::new(ips(&["10.0.0.2", "10.0.1.1"]));
        let mut plain = ips(&["10.0.0.2", "10.0.1.1"]);
        // Odd steps take an address by request instead of the first free.
        let requested = ["10.0.0.4", "fd00::2", "10.0.1.3"];
        for step in 0..20 {
            for v6 in [None, Some(false), Some(true)] {
                assert_eq!(
                    t.first_free(&p, v6),
                    first_free(&p, &plain, v6),
                    "step {step}"
                );
            }
            let ip = if step % 2 == 1 && step / 2 < requested.len() {
                Some(requested[step / 2].parse().unwrap())
            } else {
                first_free(&p, &plain, None)
            };
            let Some(ip) = ip else { break };
            t.insert(ip);
            plain.insert(ip);
        }
        assert_eq!(t.first_free(&p, None), None);
        t.remove(&"10.0.0.3".parse().unwrap());
        plain.remove(&"10.0.0.3".parse().unwrap());
        assert_eq!(t.first_free(&p, None), first_free(&p, &plain, None));
        assert_eq!(t.first_free(&p, None), Some("10.0.0.3".parse().unwrap()));
    }

    #[test]
    fn the_first_gap_is_chosen_in_range_order() {
        let p = pool(&[("10.0.0.1", "10.0.0.3"), ("10.0.1.0", "10.0.1.9")]);
        assert_eq!(
            first_free(&p, &ips(&[]), None),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            first_free(&p, &ips(&["10.0.0.1", "10.0.0.3"]), None),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            first_free(
                &p,
                &ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "9.9.9.9"]),
                None
            ),
            Some("10.0.1.0".parse().unwrap())
        );
        let full = pool(&[("10.0.0.1", "10.0.0.2")]);
        assert_eq!(
            first_free(&full, &ips(&["10.0.0.1", "10.0.0.2"]), None),
            None
        );
    }

    /// A /64 with its first 100,000 addresses taken answers without
    /// walking the range.
    #[test]
    fn a_huge_ipv6_pool_allocates_at_once() {
        let p = pool(&[("fd00::", "fd00::ffff:ffff:ffff:ffff")]);
        let base = u128::from("fd00::".parse::<std::net::Ipv6Addr>().unwrap());
        let taken: BTreeSet<IpAddr> = (0..100_000u128)
            .map(|n| IpAddr::V6((base + n).into()))
            .collect();
        assert_eq!(
            first_free(&p, &taken, None),
            Some(IpAddr::V6((base + 100_000).into()))
        );
        let end = pool(&[("fd00::fffe", "fd00::ffff")]);
        assert_eq!(
            first_free(&end, &ips(&["fd00::fffe"]), None),
            Some("fd00::ffff".parse().unwrap())
        );
        assert_eq!(
            first_free(&end, &ips(&["fd00::fffe", "fd00::ffff"]), None),
            None
        );
    }
}
