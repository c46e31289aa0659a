//! The IPVS table as a document: what `director ipvs show -o yaml|json`
//! prints and `director ipvs apply FILE` reads (the same schema, so show's
//! output is valid apply input).
//!
//! ```yaml
//! services:
//! - protocol: tcp            # tcp | udp | sctp; or `fwmark: N` (and `family: ipv6`)
//!   address: 10.10.0.200
//!   port: 80
//!   scheduler: rr            # rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos
//!   flags: [sh-port]         # one-packet, sh-fallback, sh-port, mh-fallback, mh-port, flag-1..3
//!   persistence:             # absent: not persistent
//!     timeout: 300
//!     netmask: 255.255.255.255   # IPv6: a prefix length
//!   destinations:
//!   - address: 10.10.0.21
//!     port: 30080
//!     forward: masquerade    # masquerade | route | tunnel | local
//!     weight: 1
//! ```
//!
//! Counters (`stats`, `connections`) appear with `--stats` and are ignored by
//! apply.

use std::net::{IpAddr, Ipv4Addr};

use ipvs_sys::{
    Destination, Family, Forward, Netmask, Protocol, Service, ServiceFlags, ServiceKey, Stats,
    Tunnel, TunnelType,
};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::plan::Entry;

/// The schedulers of the kernel's IPVS.
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

/// The whole table, for output.
#[derive(Debug, Serialize)]
pub struct TableDoc {
    /// Every service.
    pub services: Vec<ServiceDoc>,
}

/// A service, for output.
#[derive(Debug, Serialize)]
pub struct ServiceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fwmark: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<String>,
    scheduler: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persistence: Option<PersistenceDoc>,
    destinations: Vec<DestDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<StatsDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistenceDoc {
    timeout: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netmask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engine: Option<String>,
}

/// A destination, for output.
#[derive(Debug, Serialize)]
pub struct DestDoc {
    address: String,
    port: u16,
    forward: String,
    weight: i32,
    #[serde(skip_serializing_if = "is_zero")]
    upper_threshold: u32,
    #[serde(skip_serializing_if = "is_zero")]
    lower_threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel: Option<TunnelDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<ConnectionsDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<StatsDoc>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelDoc {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    checksum: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConnectionsDoc {
    active: u32,
    inactive: u32,
    persistent: u32,
}

#[derive(Debug, Serialize)]
struct StatsDoc {
    conns: u64,
    inpkts: u64,
    outpkts: u64,
    inbytes: u64,
    outbytes: u64,
    cps: u64,
    inpps: u64,
    outpps: u64,
    inbps: u64,
    outbps: u64,
}

impl From<Stats> for StatsDoc {
    fn from(s: Stats) -> Self {
        StatsDoc {
            conns: s.conns,
            inpkts: s.inpkts,
            outpkts: s.outpkts,
            inbytes: s.inbytes,
            outbytes: s.outbytes,
            cps: s.cps,
            inpps: s.inpps,
            outpps: s.outpps,
            inbps: s.inbps,
            outbps: s.outbps,
        }
    }
}

/// Names of the scheduler flags, which depend on the scheduler.
fn flag_names(scheduler: &str) -> [(ServiceFlags, &'static str); 4] {
    let (f1, f2) = match scheduler {
        "sh" => ("sh-fallback", "sh-port"),
        "mh" => ("mh-fallback", "mh-port"),
        _ => ("flag-1", "flag-2"),
    };
    [
        (ServiceFlags::ONE_PACKET, "one-packet"),
        (ServiceFlags::SCHED1, f1),
        (ServiceFlags::SCHED2, f2),
        (ServiceFlags::SCHED3, "flag-3"),
    ]
}

/// The document of a table read from the kernel.
pub fn to_doc(table: &[Entry], with_stats: bool) -> TableDoc {
    let services = table
        .iter()
        .map(|(s, dests)| {
            let (protocol, address, port, fwmark, family) = match s.key {
                ServiceKey::Addr {
                    protocol,
                    addr,
                    port,
                } => (
                    Some(protocol.to_string().to_lowercase()),
                    Some(addr.to_string()),
                    Some(port),
                    None,
                    None,
                ),
                ServiceKey::Fwmark { family, mark } => (
                    None,
                    None,
                    None,
                    Some(mark),
                    (family == Family::V6).then(|| "ipv6".to_string()),
                ),
            };
            let flags = flag_names(&s.scheduler)
                .iter()
                .filter(|(f, _)| s.flags.contains(*f))
                .map(|(_, n)| n.to_string())
                .collect();
            let persistence = s
                .flags
                .contains(ServiceFlags::PERSISTENT)
                .then(|| PersistenceDoc {
                    timeout: s.timeout,
                    netmask: (s.netmask != Netmask::host(s.key.family()))
                        .then(|| s.netmask.to_string()),
                    engine: s.persistence_engine.clone(),
                });
            ServiceDoc {
                protocol,
                address,
                port,
                fwmark,
                family,
                scheduler: s.scheduler.clone(),
                flags,
                persistence,
                destinations: dests.iter().map(|d| dest_doc(d, with_stats)).collect(),
                stats: if with_stats {
                    s.stats.map(StatsDoc::from)
                } else {
                    None
                },
            }
        })
        .collect();
    TableDoc { services }
}

fn dest_doc(d: &Destination, with_stats: bool) -> DestDoc {
    let (forward, tunnel) = match d.forward {
        Forward::Masquerade => ("masquerade", None),
        Forward::DirectRoute => ("route", None),
        Forward::Local => ("local", None),
        Forward::Bypass => ("bypass", None),
        Forward::Tunnel(t) => (
            "tunnel",
            Some(TunnelDoc {
                kind: match t.kind {
                    TunnelType::Ipip => "ipip".into(),
                    TunnelType::Gue => "gue".into(),
                    TunnelType::Gre => "gre".into(),
                    TunnelType::Other(n) => n.to_string(),
                },
                port: t.port,
                checksum: match t.flags {
                    0 => None,
                    1 => Some("csum".into()),
                    2 => Some("remcsum".into()),
                    n => Some(n.to_string()),
                },
            }),
        ),
    };
    DestDoc {
        address: d.addr.to_string(),
        port: d.port,
        forward: forward.into(),
        weight: d.weight,
        upper_threshold: d.upper_threshold,
        lower_threshold: d.lower_threshold,
        tunnel,
        connections: if with_stats {
            d.counters.map(|c| ConnectionsDoc {
                active: c.active,
                inactive: c.inactive,
                persistent: c.persistent,
            })
        } else {
            None
        },
        stats: if with_stats {
            d.stats.map(StatsDoc::from)
        } else {
            None
        },
    }
}

// ---- reading ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default)]
    services: Vec<Spanned<ServiceIn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceIn {
    protocol: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    fwmark: Option<Spanned<i64>>,
    family: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    #[serde(default)]
    flags: Vec<Spanned<String>>,
    persistence: Option<Spanned<PersistenceIn>>,
    #[serde(default)]
    destinations: Vec<Spanned<DestIn>>,
    #[serde(default, rename = "stats")]
    _stats: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistenceIn {
    timeout: Option<Spanned<i64>>,
    netmask: Option<Spanned<String>>,
    engine: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestIn {
    address: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    forward: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
    upper_threshold: Option<Spanned<i64>>,
    lower_threshold: Option<Spanned<i64>>,
    tunnel: Option<Spanned<TunnelIn>>,
    #[serde(default, rename = "connections")]
    _connections: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "stats")]
    _stats: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelIn {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    checksum: Option<Spanned<String>>,
}

/// One problem in a file, with where it is.
pub type FileError = crate::problems::Problem;

type Errors = crate::problems::Problems;

/// Parses and validates a table document. Every problem is reported, each
/// with its line, column and field; nothing is returned unless all is valid.
pub fn parse(text: &str) -> Result<Vec<Entry>, Vec<FileError>> {
    let doc: FileIn = if text.trim().is_empty() {
        FileIn { services: vec![] }
    } else {
        // A table of tens of thousands of services has millions of YAML
        // nodes; no document has more nodes than bytes.
        let mut budget = serde_saphyr::Budget::default();
        budget.max_nodes = budget.max_nodes.max(text.len());
        budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| vec![crate::problems::from_saphyr(&e)])?
    };
    let mut errs = Errors::default();
    let mut out: Vec<Entry> = Vec::new();
    let mut seen: std::collections::HashMap<ServiceKey, u32> = std::collections::HashMap::new();
    for (i, s) in doc.services.iter().enumerate() {
        let path = format!("services[{i}]");
        if let Some((service, dests)) = service_from(&s.value, s, &path, &mut errs) {
            if let Some(line) = seen.get(&service.key) {
                errs.at(
                    s,
                    path.clone(),
                    format!("duplicate service {} (first at line {line})", service.key),
                );
                continue;
            }
            seen.insert(service.key, s.referenced.line() as u32);
            out.push((service, dests));
        }
    }
    if errs.list.is_empty() {
        Ok(out)
    } else {
        Err(errs.list)
    }
}

use crate::problems::int_in;

fn service_from(
    s: &ServiceIn,
    span: &Spanned<ServiceIn>,
    path: &str,
    errs: &mut Errors,
) -> Option<Entry> {
    let before = errs.list.len();
    let key = match (&s.fwmark, &s.address) {
        (Some(mark), None) => {
            let mark: Option<u32> = int_in(mark, format!("{path}.fwmark"), "1..=4294967295", errs);
            if mark == Some(0) {
                errs.at(
                    s.fwmark.as_ref()?,
                    format!("{path}.fwmark"),
                    "must not be 0",
                );
            }
            if let Some(p) = &s.protocol {
                errs.at(
                    p,
                    format!("{path}.protocol"),
                    "a fwmark service has no protocol",
                );
            }
            let family = match s.family.as_ref().map(|f| f.value.as_str()) {
                None | Some("ipv4") => Family::V4,
                Some("ipv6") => Family::V6,
                Some(other) => {
                    if let Some(f) = &s.family {
                        errs.at(
                            f,
                            format!("{path}.family"),
                            format!("unknown family {other:?} (ipv4 or ipv6)"),
                        );
                    }
                    Family::V4
                }
            };
            mark.map(|mark| ServiceKey::Fwmark { family, mark })
        }
        (None, Some(addr)) => {
            let protocol = match s.protocol.as_ref().map(|p| p.value.to_lowercase()) {
                Some(p) if p == "tcp" => Some(Protocol::Tcp),
                Some(p) if p == "udp" => Some(Protocol::Udp),
                Some(p) if p == "sctp" => Some(Protocol::Sctp),
                Some(p) => {
                    if let Some(sp) = &s.protocol {
                        errs.at(
                            sp,
                            format!("{path}.protocol"),
                            format!("unknown protocol {p:?} (tcp, udp or sctp)"),
                        );
                    }
                    None
                }
                None => {
                    errs.at(
                        span,
                        format!("{path}.protocol"),
                        "missing (tcp, udp or sctp)",
                    );
                    None
                }
            };
            let ip = match addr.value.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.at(
                        addr,
                        format!("{path}.address"),
                        format!("{:?} is not an IP address", addr.value),
                    );
                    None
                }
            };
            let port = match &s.port {
                Some(p) => int_in::<u16>(p, format!("{path}.port"), "0..=65535", errs),
                None => {
                    errs.at(span, format!("{path}.port"), "missing");
                    None
                }
            };
            if let Some(f) = &s.family {
                errs.at(
                    f,
                    format!("{path}.family"),
                    "only a fwmark service names its family (an address has one)",
                );
            }
            match (protocol, ip, port) {
                (Some(protocol), Some(addr), Some(port)) => Some(ServiceKey::Addr {
                    protocol,
                    addr,
                    port,
                }),
                _ => None,
            }
        }
        (Some(mark), Some(_)) => {
            errs.at(
                mark,
                format!("{path}.fwmark"),
                "a service has either address/port or fwmark, not both",
            );
            None
        }
        (None, None) => {
            errs.at(
                span,
                path.to_string(),
                "needs protocol, address and port, or fwmark",
            );
            None
        }
    };
    let scheduler = match &s.scheduler {
        Some(sch) if SCHEDULERS.contains(&sch.value.as_str()) => Some(sch.value.clone()),
        Some(sch) => {
            errs.at(
                sch,
                format!("{path}.scheduler"),
                format!(
                    "unknown scheduler {:?} (one of {})",
                    sch.value,
                    SCHEDULERS.join(" ")
                ),
            );
            None
        }
        None => {
            errs.at(span, format!("{path}.scheduler"), "missing");
            None
        }
    };
    let mut flags = ServiceFlags::default();
    if let Some(sched) = &scheduler {
        for (j, f) in s.flags.iter().enumerate() {
            match flag_names(sched).iter().find(|(_, n)| *n == f.value) {
                Some((bit, _)) => flags = flags.with(*bit),
                None => {
                    let names: Vec<&str> = flag_names(sched).iter().map(|(_, n)| *n).collect();
                    let hint = if f.value == "persistent" {
                        "persistence is set with `persistence: {timeout: N}`".to_string()
                    } else {
                        format!("with scheduler {sched}: {}", names.join(", "))
                    };
                    errs.at(
                        f,
                        format!("{path}.flags[{j}]"),
                        format!("unknown flag {:?} ({hint})", f.value),
                    );
                }
            }
        }
    }
    let family = key.map(|k| k.family());
    let mut timeout = 0;
    let mut netmask = family.map(Netmask::host);
    let mut engine = None;
    if let Some(p) = &s.persistence {
        flags = flags.with(ServiceFlags::PERSISTENT);
        let pp = format!("{path}.persistence");
        timeout = match &p.value.timeout {
            Some(t) => match int_in::<u32>(t, format!("{pp}.timeout"), "1..=4294967295", errs) {
                Some(0) => {
                    errs.at(t, format!("{pp}.timeout"), "must be at least 1 second");
                    0
                }
                Some(t) => t,
                None => 0,
            },
            None => 300,
        };
        if let (Some(m), Some(fam)) = (&p.value.netmask, family) {
            netmask = match fam {
                Family::V4 => match m.value.parse::<Ipv4Addr>() {
                    Ok(mask)
                        if u32::from(mask).leading_ones() + u32::from(mask).trailing_zeros()
                            == 32 =>
                    {
                        Some(Netmask::V4(mask))
                    }
                    _ => {
                        errs.at(
                            m,
                            format!("{pp}.netmask"),
                            format!("{:?} is not an IPv4 netmask", m.value),
                        );
                        None
                    }
                },
                Family::V6 => match m.value.parse::<u32>() {
                    Ok(len) if (1..=128).contains(&len) => Some(Netmask::V6(len)),
                    _ => {
                        errs.at(
                            m,
                            format!("{pp}.netmask"),
                            format!("{:?} is not an IPv6 prefix length (1..=128)", m.value),
                        );
                        None
                    }
                },
            };
        }
        engine = p.value.engine.as_ref().map(|e| e.value.clone());
    }
    let mut dests: Vec<Destination> = Vec::new();
    for (j, d) in s.destinations.iter().enumerate() {
        let dp = format!("{path}.destinations[{j}]");
        if let Some(dest) = dest_from(&d.value, d, &dp, errs) {
            if dests
                .iter()
                .any(|x| (x.addr, x.port) == (dest.addr, dest.port))
            {
                errs.at(
                    d,
                    dp,
                    format!("duplicate destination {}:{}", dest.addr, dest.port),
                );
            } else {
                dests.push(dest);
            }
        }
    }
    if errs.list.len() > before {
        return None;
    }
    let key = key?;
    Some((
        Service {
            key,
            scheduler: scheduler?,
            flags,
            timeout,
            netmask: netmask?,
            persistence_engine: engine,
            stats: None,
        },
        dests,
    ))
}

fn dest_from(
    d: &DestIn,
    span: &Spanned<DestIn>,
    path: &str,
    errs: &mut Errors,
) -> Option<Destination> {
    let before = errs.list.len();
    let addr = match &d.address {
        Some(a) => match a.value.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errs.at(
                    a,
                    format!("{path}.address"),
                    format!("{:?} is not an IP address", a.value),
                );
                None
            }
        },
        None => {
            errs.at(span, format!("{path}.address"), "missing");
            None
        }
    };
    let port = match &d.port {
        Some(p) => int_in::<u16>(p, format!("{path}.port"), "0..=65535", errs),
        None => {
            errs.at(span, format!("{path}.port"), "missing");
            None
        }
    };
    // ipvsadm's range; the kernel refuses negative weights.
    let weight = match &d.weight {
        Some(w) => int_in::<u16>(w, format!("{path}.weight"), "0..=65535", errs).map(i32::from),
        None => Some(1),
    };
    let upper = d
        .upper_threshold
        .as_ref()
        .map(|v| int_in::<u32>(v, format!("{path}.upper_threshold"), "0..=4294967295", errs))
        .unwrap_or(Some(0));
    let lower = d
        .lower_threshold
        .as_ref()
        .map(|v| int_in::<u32>(v, format!("{path}.lower_threshold"), "0..=4294967295", errs))
        .unwrap_or(Some(0));
    let forward = match d.forward.as_ref().map(|f| f.value.as_str()) {
        None | Some("masquerade") => Some(Forward::Masquerade),
        Some("route") => Some(Forward::DirectRoute),
        Some("local") => Some(Forward::Local),
        Some("tunnel") => {
            let mut t = Tunnel::default();
            if let Some(tun) = &d.tunnel {
                let tp = format!("{path}.tunnel");
                if let Some(k) = &tun.value.kind {
                    t.kind = match k.value.as_str() {
                        "ipip" => TunnelType::Ipip,
                        "gue" => TunnelType::Gue,
                        "gre" => TunnelType::Gre,
                        other => {
                            errs.at(
                                k,
                                format!("{tp}.type"),
                                format!("unknown tunnel type {other:?} (ipip, gue or gre)"),
                            );
                            TunnelType::Ipip
                        }
                    };
                }
                if let Some(p) = &tun.value.port {
                    t.port = int_in::<u16>(p, format!("{tp}.port"), "0..=65535", errs).unwrap_or(0);
                }
                if let Some(c) = &tun.value.checksum {
                    t.flags = match c.value.as_str() {
                        "none" | "nocsum" => 0,
                        "csum" => 1,
                        "remcsum" => 2,
                        other => {
                            errs.at(
                                c,
                                format!("{tp}.checksum"),
                                format!("unknown checksum mode {other:?} (none, csum or remcsum)"),
                            );
                            0
                        }
                    };
                }
                if t.kind == TunnelType::Gue && t.port == 0 {
                    errs.at(tun, format!("{tp}.port"), "a GUE tunnel needs a port");
                }
            }
            Some(Forward::Tunnel(t))
        }
        Some(other) => {
            if let Some(f) = &d.forward {
                errs.at(
                    f,
                    format!("{path}.forward"),
                    format!(
                        "unknown forwarding method {other:?} (masquerade, route, tunnel or local)"
                    ),
                );
            }
            None
        }
    };
    if let (Some(t), Some(f)) = (&d.tunnel, forward) {
        if !matches!(f, Forward::Tunnel(_)) {
            errs.at(
                t,
                format!("{path}.tunnel"),
                "only a `forward: tunnel` destination has tunnel settings",
            );
        }
    }
    if errs.list.len() > before {
        return None;
    }
    Some(Destination {
        addr: addr?,
        port: port?,
        forward: forward?,
        weight: weight?,
        upper_threshold: upper?,
        lower_threshold: lower?,
        counters: None,
        stats: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
services:
- protocol: tcp
  address: 10.10.0.200
  port: 80
  scheduler: rr
  destinations:
  - address: 10.10.0.21
    port: 30080
    forward: masquerade
    weight: 1
  - address: 10.10.0.22
    port: 30080
    weight: 2
- fwmark: 7
  family: ipv6
  scheduler: sh
  flags: [sh-port]
  persistence:
    timeout: 60
    netmask: '64'
";

    #[test]
    fn a_good_file_parses() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].1[1].weight, 2);
        assert_eq!(t[0].1[1].forward, Forward::Masquerade);
        let fw = &t[1].0;
        assert_eq!(
            fw.key,
            ServiceKey::Fwmark {
                family: Family::V6,
                mark: 7
            }
        );
        assert_eq!(
            fw.flags,
            ServiceFlags::SCHED2.with(ServiceFlags::PERSISTENT)
        );
        assert_eq!((fw.timeout, fw.netmask), (60, Netmask::V6(64)));
    }

    #[test]
    fn show_output_is_apply_input() {
        let table = parse(GOOD).unwrap();
        for stats in [false, true] {
            let yaml = serde_saphyr::to_string(&to_doc(&table, stats)).unwrap();
            assert_eq!(parse(&yaml).unwrap(), table, "{yaml}");
            let json = serde_json::to_string(&to_doc(&table, stats)).unwrap();
            assert_eq!(parse(&json).unwrap(), table, "{json}");
        }
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn bad_values_name_line_and_field() {
        let e = errors(
            "services:\n- protocol: tcp\n  address: 10.10.0.300\n  port: 70000\n  scheduler: fastest\n",
        );
        assert_eq!(
            e,
            vec![
                "3:12: services[0].address: \"10.10.0.300\" is not an IP address",
                "4:9: services[0].port: 70000 is out of range 0..=65535",
                "5:14: services[0].scheduler: unknown scheduler \"fastest\" (one of rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos)",
            ]
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let e = errors(
            "services:\n- {protocol: tcp, address: 10.0.0.1, port: 80, scheduler: rr}\n- {protocol: tcp, address: 10.0.0.1, port: 80, scheduler: wrr}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "3:3: services[1]: duplicate service TCP 10.0.0.1:80 (first at line 2)"
            ),
            "{e:?}"
        );
        let e = errors(
            "services:\n- protocol: tcp\n  address: 10.0.0.1\n  port: 80\n  scheduler: rr\n  destinations:\n  - {address: 10.1.0.1, port: 80}\n  - {address: 10.1.0.1, port: 80}\n",
        );
        assert_eq!(
            e,
            vec!["8:5: services[0].destinations[1]: duplicate destination 10.1.0.1:80"]
        );
    }

    #[test]
    fn unknown_fields_and_bad_yaml_say_where() {
        let e = errors("services:\n- protocol: tcp\n  adress: 10.0.0.1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("3:3:"), "{e:?}");
        assert!(e[0].contains("adress"), "{e:?}");
        let e = errors("services: [\n");
        assert_eq!(e.len(), 1);
        assert!(!e[0].starts_with("0:0"), "{e:?}");
    }

    #[test]
    fn flags_depend_on_the_scheduler() {
        let e = errors("services:\n- {fwmark: 1, scheduler: rr, flags: [sh-port, persistent]}\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("flag-1, flag-2"), "{e:?}");
        assert!(e[1].contains("persistence: {timeout: N}"), "{e:?}");
    }
}
