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
use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::plan::Entry;

/// The schedulers of the kernel's IPVS.
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

// ---- writing ----------------------------------------------------------------
//
// The document of a table is a view of it: serialized straight from the
// table read from the kernel, without a copy of it as strings.

/// The whole table, for output (`show -o yaml|json`).
#[derive(Debug, Clone, Copy)]
pub struct TableDoc<'a> {
    table: &'a [Entry],
    with_stats: bool,
}

/// The document of a table read from the kernel.
pub fn to_doc(table: &[Entry], with_stats: bool) -> TableDoc<'_> {
    TableDoc { table, with_stats }
}

impl Serialize for TableDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut doc = s.serialize_struct("TableDoc", 1)?;
        doc.serialize_field("services", &Services(*self))?;
        doc.end()
    }
}

/// The services of a table, for output.
struct Services<'a>(TableDoc<'a>);

impl Serialize for Services<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let with_stats = self.0.with_stats;
        s.collect_seq(self.0.table.iter().map(|(service, dests)| ServiceDoc {
            service,
            dests,
            with_stats,
        }))
    }
}

/// A service, for output.
struct ServiceDoc<'a> {
    service: &'a Service,
    dests: &'a [Destination],
    with_stats: bool,
}

impl Serialize for ServiceDoc<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.service;
        let flags: Vec<&str> = flag_names(&s.scheduler)
            .iter()
            .filter(|(f, _)| s.flags.contains(*f))
            .map(|(_, n)| *n)
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
        let stats = s
            .stats
            .as_deref()
            .copied()
            .filter(|_| self.with_stats)
            .map(StatsDoc::from);
        let v6_mark = matches!(
            s.key,
            ServiceKey::Fwmark {
                family: Family::V6,
                ..
            }
        );
        let fields = match s.key {
            ServiceKey::Addr { .. } => 3,
            ServiceKey::Fwmark { .. } => 1 + usize::from(v6_mark),
        } + 2
            + usize::from(!flags.is_empty())
            + usize::from(persistence.is_some())
            + usize::from(stats.is_some());
        let mut doc = ser.serialize_struct("ServiceDoc", fields)?;
        match s.key {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => {
                doc.serialize_field("protocol", &protocol.to_string().to_lowercase())?;
                doc.serialize_field("address", &Shown(addr))?;
                doc.serialize_field("port", &port)?;
                doc.skip_field("fwmark")?;
                doc.skip_field("family")?;
            }
            ServiceKey::Fwmark { mark, .. } => {
                doc.skip_field("protocol")?;
                doc.skip_field("address")?;
                doc.skip_field("port")?;
                doc.serialize_field("fwmark", &mark)?;
                if v6_mark {
                    doc.serialize_field("family", "ipv6")?;
                } else {
                    doc.skip_field("family")?;
                }
            }
        }
        doc.serialize_field("scheduler", &s.scheduler)?;
        if flags.is_empty() {
            doc.skip_field("flags")?;
        } else {
            doc.serialize_field("flags", &flags)?;
        }
        match &persistence {
            Some(p) => doc.serialize_field("persistence", p)?,
            None => doc.skip_field("persistence")?,
        }
        let with_stats = self.with_stats;
        doc.serialize_field(
            "destinations",
            &Dests {
                dests: self.dests,
                with_stats,
            },
        )?;
        match &stats {
            Some(st) => doc.serialize_field("stats", st)?,
            None => doc.skip_field("stats")?,
        }
        doc.end()
    }
}

/// A value written as its `Display` text (an address).
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
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

/// The destinations of a service, for output.
struct Dests<'a> {
    dests: &'a [Destination],
    with_stats: bool,
}

impl Serialize for Dests<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let with_stats = self.with_stats;
        s.collect_seq(self.dests.iter().map(|d| DestDoc { d, with_stats }))
    }
}

/// A destination, for output.
struct DestDoc<'a> {
    d: &'a Destination,
    with_stats: bool,
}

impl Serialize for DestDoc<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let d = self.d;
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
        let connections = d
            .counters
            .filter(|_| self.with_stats)
            .map(|c| ConnectionsDoc {
                active: c.active,
                inactive: c.inactive,
                persistent: c.persistent,
            });
        let stats = d
            .stats
            .as_deref()
            .copied()
            .filter(|_| self.with_stats)
            .map(StatsDoc::from);
        let fields = 4
            + usize::from(d.upper_threshold != 0)
            + usize::from(d.lower_threshold != 0)
            + usize::from(tunnel.is_some())
            + usize::from(connections.is_some())
            + usize::from(stats.is_some());
        let mut doc = ser.serialize_struct("DestDoc", fields)?;
        doc.serialize_field("address", &Shown(d.addr))?;
        doc.serialize_field("port", &d.port)?;
        doc.serialize_field("forward", forward)?;
        doc.serialize_field("weight", &d.weight)?;
        for (name, v) in [
            ("upper_threshold", d.upper_threshold),
            ("lower_threshold", d.lower_threshold),
        ] {
            if v == 0 {
                doc.skip_field(name)?;
            } else {
                doc.serialize_field(name, &v)?;
            }
        }
        match &tunnel {
            Some(t) => doc.serialize_field("tunnel", t)?,
            None => doc.skip_field("tunnel")?,
        }
        match &connections {
            Some(c) => doc.serialize_field("connections", c)?,
            None => doc.skip_field("connections")?,
        }
        match &stats {
            Some(st) => doc.serialize_field("stats", st)?,
            None => doc.skip_field("stats")?,
        }
        doc.end()
    }
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

// ---- reading ----------------------------------------------------------------
//
// A document is read once, quickly, without positions (`subset`); only when
// that finds a problem, or the document is outside the subset it reads, is it
// read again with the full YAML parser and the position of every field, and
// the problems are reported from that second reading. Both readings share the
// schema below and the checks after it, generic over `Keep`.

use crate::subset;

/// How the values of a document are kept: with where they were written, or
/// bare.
trait Keep {
    /// A value of the document.
    type Node<T: DeserializeOwned>: DeserializeOwned + Node<T>;
}

/// A value of the document.
trait Node<T> {
    /// The value.
    fn get(&self) -> &T;
    /// Its 1-based line and column (0, 0: not kept).
    fn place(&self) -> (u32, u32);
}

/// Values with their line and column: the reading that reports problems.
struct Located;

impl Keep for Located {
    type Node<T: DeserializeOwned> = Spanned<T>;
}

impl<T> Node<T> for Spanned<T> {
    fn get(&self) -> &T {
        &self.value
    }

    fn place(&self) -> (u32, u32) {
        (
            self.referenced.line() as u32,
            self.referenced.column() as u32,
        )
    }
}

/// Values alone: the quick reading.
struct Bare;

/// A value without its place.
#[derive(Deserialize)]
#[serde(transparent)]
struct Plain<T>(T);

impl Keep for Bare {
    type Node<T: DeserializeOwned> = Plain<T>;
}

impl<T> Node<T> for Plain<T> {
    fn get(&self) -> &T {
        &self.0
    }

    fn place(&self) -> (u32, u32) {
        (0, 0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default)]
    services: Vec<Spanned<ServiceIn<Located>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
struct ServiceIn<K: Keep> {
    protocol: Option<K::Node<String>>,
    address: Option<K::Node<String>>,
    port: Option<K::Node<i64>>,
    fwmark: Option<K::Node<i64>>,
    family: Option<K::Node<String>>,
    scheduler: Option<K::Node<String>>,
    #[serde(default)]
    flags: Vec<K::Node<String>>,
    persistence: Option<K::Node<PersistenceIn<K>>>,
    #[serde(default)]
    destinations: Vec<K::Node<DestIn<K>>>,
    #[serde(default, rename = "stats")]
    _stats: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
struct PersistenceIn<K: Keep> {
    timeout: Option<K::Node<i64>>,
    netmask: Option<K::Node<String>>,
    engine: Option<K::Node<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
struct DestIn<K: Keep> {
    address: Option<K::Node<String>>,
    port: Option<K::Node<i64>>,
    forward: Option<K::Node<String>>,
    weight: Option<K::Node<i64>>,
    upper_threshold: Option<K::Node<i64>>,
    lower_threshold: Option<K::Node<i64>>,
    tunnel: Option<K::Node<TunnelIn<K>>>,
    #[serde(default, rename = "connections")]
    _connections: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "stats")]
    _stats: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
struct TunnelIn<K: Keep> {
    #[serde(rename = "type")]
    kind: Option<K::Node<String>>,
    port: Option<K::Node<i64>>,
    checksum: Option<K::Node<String>>,
}

/// One problem in a file, with where it is.
pub type FileError = crate::problems::Problem;

/// The problems found so far.
#[derive(Default)]
struct Errors {
    list: Vec<FileError>,
}

impl Errors {
    /// A problem at the node `n` came from.
    fn at<T>(&mut self, n: &impl Node<T>, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = n.place();
        self.list.push(FileError {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// `v` as a `T`, or a problem saying it is out of `range`.
fn int_in<T: TryFrom<i64>>(
    v: &impl Node<i64>,
    field: impl FnOnce() -> String,
    range: &str,
    errs: &mut Errors,
) -> Option<T> {
    match T::try_from(*v.get()) {
        Ok(x) => Some(x),
        Err(_) => {
            errs.at(v, field(), format!("{} is out of range {range}", v.get()));
            None
        }
    }
}

/// Where a service or destination is in the document, for problems:
/// `services[1]`, `services[1].destinations[0]`.
#[derive(Clone, Copy)]
struct Path {
    service: usize,
    dest: Option<usize>,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "services[{}]", self.service)?;
        if let Some(d) = self.dest {
            write!(f, ".destinations[{d}]")?;
        }
        Ok(())
    }
}

/// The table read so far.
#[derive(Default)]
struct Table {
    out: Vec<Entry>,
    /// The services so far, and the line each was at.
    seen: std::collections::HashMap<ServiceKey, u32>,
    errs: Errors,
}

impl Table {
    /// Checks the `i`th service of the document and adds it.
    fn add<K: Keep>(&mut self, i: usize, s: &K::Node<ServiceIn<K>>) {
        let path = Path {
            service: i,
            dest: None,
        };
        if let Some((service, dests)) = service_from(s.get(), s, path, &mut self.errs) {
            if let Some(line) = self.seen.get(&service.key) {
                self.errs.at(
                    s,
                    path.to_string(),
                    format!("duplicate service {} (first at line {line})", service.key),
                );
                return;
            }
            self.seen.insert(service.key, s.place().0);
            self.out.push((service, dests));
        }
    }

    fn finish(self) -> Result<Vec<Entry>, Vec<FileError>> {
        if self.errs.list.is_empty() {
            Ok(self.out)
        } else {
            Err(self.errs.list)
        }
    }
}

/// Parses and validates a table document. Every problem is reported, each
/// with its line, column and field; nothing is returned unless all is valid.
pub fn parse(text: &str) -> Result<Vec<Entry>, Vec<FileError>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match read_quickly(text) {
        Some(table) => Ok(table),
        None => parse_located(text),
    }
}

/// The table of a valid document in the quick subset; `None` for any other.
fn read_quickly(text: &str) -> Option<Vec<Entry>> {
    let table = subset::read(text, Quick(Table::default())).ok()?;
    table.errs.list.is_empty().then_some(table.out)
}

/// Reads a document with the full YAML parser, keeping every value's place.
fn parse_located(text: &str) -> Result<Vec<Entry>, Vec<FileError>> {
    let doc: FileIn = serde_saphyr::from_str_with_options(text, crate::problems::sized_for(text))
        .map_err(|e| vec![crate::problems::from_saphyr(&e)])?;
    let mut table = Table::default();
    for (i, s) in doc.services.iter().enumerate() {
        table.add::<Located>(i, s);
    }
    table.finish()
}

/// The quick reading of a whole document (`FileIn`, without positions):
/// each service is checked as soon as it is read, so the document is never
/// held but as text and as the table it describes.
struct Quick(Table);

impl<'de> serde::de::DeserializeSeed<'de> for Quick {
    type Value = Table;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Table, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Quick {
    type Value = Table;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table document")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Table, A::Error> {
        let mut table = self.0;
        let mut read = false;
        while let Some(key) = map.next_key::<&str>()? {
            if key != "services" || read {
                return Err(serde::de::Error::custom("not the schema"));
            }
            read = true;
            table = map.next_value_seed(QuickServices(table))?;
        }
        Ok(table)
    }
}

/// The `services` of the quick reading.
struct QuickServices(Table);

impl<'de> serde::de::DeserializeSeed<'de> for QuickServices {
    type Value = Table;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Table, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for QuickServices {
    type Value = Table;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of services")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Table, A::Error> {
        let mut table = self.0;
        let mut i = 0;
        while let Some(s) = seq.next_element::<Plain<ServiceIn<Bare>>>()? {
            table.add::<Bare>(i, &s);
            if !table.errs.list.is_empty() {
                // Reported from the full reading.
                return Err(serde::de::Error::custom("a problem"));
            }
            i += 1;
        }
        Ok(table)
    }
}

fn service_from<K: Keep>(
    s: &ServiceIn<K>,
    span: &impl Node<ServiceIn<K>>,
    path: Path,
    errs: &mut Errors,
) -> Option<Entry> {
    let before = errs.list.len();
    let key = match (&s.fwmark, &s.address) {
        (Some(mark), None) => {
            let mark: Option<u32> =
                int_in(mark, || format!("{path}.fwmark"), "1..=4294967295", errs);
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
            let family = match s.family.as_ref().map(|f| f.get().as_str()) {
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
            let protocol = match s.protocol.as_ref().map(|p| p.get().to_lowercase()) {
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
            let ip = match addr.get().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.at(
                        addr,
                        format!("{path}.address"),
                        format!("{:?} is not an IP address", addr.get()),
                    );
                    None
                }
            };
            let port = match &s.port {
                Some(p) => int_in::<u16>(p, || format!("{path}.port"), "0..=65535", errs),
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
        Some(sch) if SCHEDULERS.contains(&sch.get().as_str()) => Some(sch.get().clone()),
        Some(sch) => {
            errs.at(
                sch,
                format!("{path}.scheduler"),
                format!(
                    "unknown scheduler {:?} (one of {})",
                    sch.get(),
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
            match flag_names(sched).iter().find(|(_, n)| *n == f.get()) {
                Some((bit, _)) => flags = flags.with(*bit),
                None => {
                    let names: Vec<&str> = flag_names(sched).iter().map(|(_, n)| *n).collect();
                    let hint = if f.get() == "persistent" {
                        "persistence is set with `persistence: {timeout: N}`".to_string()
                    } else {
                        format!("with scheduler {sched}: {}", names.join(", "))
                    };
                    errs.at(
                        f,
                        format!("{path}.flags[{j}]"),
                        format!("unknown flag {:?} ({hint})", f.get()),
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
        let p = p.get();
        timeout = match &p.timeout {
            Some(t) => match int_in::<u32>(
                t,
                || format!("{path}.persistence.timeout"),
                "1..=4294967295",
                errs,
            ) {
                Some(0) => {
                    errs.at(
                        t,
                        format!("{path}.persistence.timeout"),
                        "must be at least 1 second",
                    );
                    0
                }
                Some(t) => t,
                None => 0,
            },
            None => 300,
        };
        if let (Some(m), Some(fam)) = (&p.netmask, family) {
            netmask = match fam {
                Family::V4 => match m.get().parse::<Ipv4Addr>() {
                    Ok(mask)
                        if u32::from(mask).leading_ones() + u32::from(mask).trailing_zeros()
                            == 32 =>
                    {
                        Some(Netmask::V4(mask))
                    }
                    _ => {
                        errs.at(
                            m,
                            format!("{path}.persistence.netmask"),
                            format!("{:?} is not an IPv4 netmask", m.get()),
                        );
                        None
                    }
                },
                Family::V6 => match m.get().parse::<u32>() {
                    Ok(len) if (1..=128).contains(&len) => Some(Netmask::V6(len)),
                    _ => {
                        errs.at(
                            m,
                            format!("{path}.persistence.netmask"),
                            format!("{:?} is not an IPv6 prefix length (1..=128)", m.get()),
                        );
                        None
                    }
                },
            };
        }
        engine = p.engine.as_ref().map(|e| e.get().clone());
    }
    let mut dests: Vec<Destination> = Vec::with_capacity(s.destinations.len());
    for (j, d) in s.destinations.iter().enumerate() {
        let dp = Path {
            dest: Some(j),
            ..path
        };
        if let Some(dest) = dest_from(d.get(), d, dp, errs) {
            if dests
                .iter()
                .any(|x| (x.addr, x.port) == (dest.addr, dest.port))
            {
                errs.at(
                    d,
                    dp.to_string(),
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

fn dest_from<K: Keep>(
    d: &DestIn<K>,
    span: &impl Node<DestIn<K>>,
    path: Path,
    errs: &mut Errors,
) -> Option<Destination> {
    let before = errs.list.len();
    let addr = match &d.address {
        Some(a) => match a.get().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errs.at(
                    a,
                    format!("{path}.address"),
                    format!("{:?} is not an IP address", a.get()),
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
        Some(p) => int_in::<u16>(p, || format!("{path}.port"), "0..=65535", errs),
        None => {
            errs.at(span, format!("{path}.port"), "missing");
            None
        }
    };
    // ipvsadm's range; the kernel refuses negative weights.
    let weight = match &d.weight {
        Some(w) => int_in::<u16>(w, || format!("{path}.weight"), "0..=65535", errs).map(i32::from),
        None => Some(1),
    };
    let upper = d
        .upper_threshold
        .as_ref()
        .map(|v| {
            int_in::<u32>(
                v,
                || format!("{path}.upper_threshold"),
                "0..=4294967295",
                errs,
            )
        })
        .unwrap_or(Some(0));
    let lower = d
        .lower_threshold
        .as_ref()
        .map(|v| {
            int_in::<u32>(
                v,
                || format!("{path}.lower_threshold"),
                "0..=4294967295",
                errs,
            )
        })
        .unwrap_or(Some(0));
    let forward = match d.forward.as_ref().map(|f| f.get().as_str()) {
        None | Some("masquerade") => Some(Forward::Masquerade),
        Some("route") => Some(Forward::DirectRoute),
        Some("local") => Some(Forward::Local),
        Some("tunnel") => {
            let mut t = Tunnel::default();
            if let Some(tun) = &d.tunnel {
                let tv = tun.get();
                if let Some(k) = &tv.kind {
                    t.kind = match k.get().as_str() {
                        "ipip" => TunnelType::Ipip,
                        "gue" => TunnelType::Gue,
                        "gre" => TunnelType::Gre,
                        other => {
                            errs.at(
                                k,
                                format!("{path}.tunnel.type"),
                                format!("unknown tunnel type {other:?} (ipip, gue or gre)"),
                            );
                            TunnelType::Ipip
                        }
                    };
                }
                if let Some(p) = &tv.port {
                    t.port = int_in::<u16>(p, || format!("{path}.tunnel.port"), "0..=65535", errs)
                        .unwrap_or(0);
                }
                if let Some(c) = &tv.checksum {
                    t.flags = match c.get().as_str() {
                        "none" | "nocsum" => 0,
                        "csum" => 1,
                        "remcsum" => 2,
                        other => {
                            errs.at(
                                c,
                                format!("{path}.tunnel.checksum"),
                                format!("unknown checksum mode {other:?} (none, csum or remcsum)"),
                            );
                            0
                        }
                    };
                }
                if t.kind == TunnelType::Gue && t.port == 0 {
                    errs.at(
                        tun,
                        format!("{path}.tunnel.port"),
                        "a GUE tunnel needs a port",
                    );
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

    /// A table as the kernel reports it: with counters, which show prints
    /// with `--stats` and apply ignores.
    fn with_counters(mut table: Vec<Entry>) -> Vec<Entry> {
        for (s, dests) in &mut table {
            s.stats = Some(Box::new(Stats {
                conns: 5,
                inbytes: 1 << 40,
                ..Stats::default()
            }));
            for d in dests {
                d.counters = Some(ipvs_sys::DestCounters {
                    active: 1,
                    inactive: 2,
                    persistent: 3,
                });
                d.stats = Some(Box::new(Stats {
                    conns: 7,
                    ..Stats::default()
                }));
            }
        }
        table
    }

    /// Services in the flow style of the benchmark's documents
    /// (`tests/bench/ipvs_bench.py`).
    fn flow_style(services: usize) -> String {
        let mut out = String::from("services:\n");
        for i in 0..services {
            out.push_str(&format!(
                "- {{protocol: tcp, address: 10.20.0.{i}, port: 80, scheduler: rr, destinations: [\n  "
            ));
            let dests: Vec<String> = (21..25)
                .map(|n| {
                    format!("{{address: 10.10.0.{n}, port: 30080, forward: masquerade, weight: 1}}")
                })
                .collect();
            out.push_str(&dests.join(", "));
            out.push_str("]}\n");
        }
        out
    }

    const HAND_WRITTEN: &str = "\
# The web tier and DNS.
services:

  - protocol: TCP     # any case
    address: fd10:10::200
    port: 443
    scheduler: mh
    flags:
      - mh-port
    persistence: {timeout: 60, netmask: \"64\"}
    destinations:
      - address: fd10:10::21
        port: 443
        forward: route
        weight: 2
        upper_threshold: 100
        lower_threshold: 10
  - protocol: udp
    address: 10.10.0.201
    port: 53
    scheduler: sh
    flags: [sh-fallback, sh-port]
    persistence:
      timeout: 300
      netmask: 255.255.255.0
      engine: sip
    destinations:
    - address: 10.10.0.23
      port: 53
      forward: tunnel
      tunnel: {type: gue, port: 6080, checksum: csum}
    - {address: 10.10.0.24, port: 53, forward: local, weight: 0}
  - fwmark: 7
    scheduler: wlc
    destinations: []
";

    /// The documents the quick reading must take: what show prints, the
    /// benchmark's flow style, hand-written block style.
    fn quick_documents() -> Vec<String> {
        let table = parse(GOOD).unwrap();
        let mut docs = vec![GOOD.to_string(), HAND_WRITTEN.to_string(), flow_style(3)];
        for t in [table.clone(), with_counters(table)] {
            for stats in [false, true] {
                let doc = to_doc(&t, stats);
                docs.push(serde_saphyr::to_string(&doc).unwrap());
                docs.push(serde_json::to_string_pretty(&doc).unwrap());
                docs.push(serde_json::to_string(&doc).unwrap());
            }
        }
        docs
    }

    #[test]
    fn show_output_and_usual_styles_are_read_quickly() {
        for doc in quick_documents() {
            let quick = read_quickly(&doc);
            assert!(quick.is_some(), "not read quickly:\n{doc}");
            assert_eq!(quick.map(Ok), Some(parse_located(&doc)), "{doc}");
        }
        assert_eq!(read_quickly(&flow_style(3)).unwrap().len(), 3);
        assert_eq!(read_quickly(HAND_WRITTEN).unwrap().len(), 3);
    }

    #[test]
    fn what_the_quick_reading_does_not_know_goes_to_the_full_parser() {
        let want = parse_located(GOOD).unwrap();
        for (from, to) in [
            ("port: 80", "port: 0x50"),
            ("weight: 2", "weight: +2"),
            ("timeout: 60", "timeout: 6_0"),
            ("netmask: '64'", "netmask: \"6\\x34\""),
            ("scheduler: rr", "scheduler: !!str rr"),
            ("scheduler: rr", "scheduler: &s rr"),
            ("weight: 2", "weight:\t2"),
            ("services:\n", "---\nservices:\n"),
            ("- fwmark: 7", "- fwmark: 7\n  stats: ~"),
            ("address: 10.10.0.200", "address:\n    10.10.0.200"),
            ("scheduler: sh\n", "scheduler: >-\n    sh\n"),
        ] {
            let doc = GOOD.replacen(from, to, 1);
            assert_ne!(doc, GOOD, "{from:?} not in GOOD");
            assert_eq!(read_quickly(&doc), None, "{doc}");
            assert_eq!(parse(&doc), Ok(want.clone()), "{doc}");
        }
    }

    /// The quick reading never takes a document that the full parser reads
    /// differently (or refuses): every document one or two edits away from
    /// the usual ones, with the characters that matter to YAML.
    #[test]
    fn the_quick_reading_agrees_with_the_full_parser() {
        const CHARS: &[char] = &[
            ' ', '\n', '-', ':', '#', '{', '}', '[', ']', ',', '"', '\'', '~', '.', '0', '9', 'a',
            '&', '*', '!', '|', '>', '?', '%', '@', '\\', '\t',
        ];
        fn check(doc: &str) {
            if let Some(quick) = read_quickly(doc) {
                assert_eq!(Ok(quick), parse_located(doc), "read differently:\n{doc}");
            }
        }
        fn edits(doc: &str, mut each: impl FnMut(String)) {
            let at: Vec<usize> = doc.char_indices().map(|(i, _)| i).collect();
            for &i in &at {
                let next = i + doc[i..].chars().next().map_or(0, char::len_utf8);
                each(format!("{}{}", &doc[..i], &doc[next..]));
                for c in CHARS {
                    each(format!("{}{c}{}", &doc[..i], &doc[i..]));
                    each(format!("{}{c}{}", &doc[..i], &doc[next..]));
                }
            }
        }
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut checked = 0;
        let mut docs = quick_documents();
        docs.sort();
        docs.dedup();
        for doc in docs.iter().filter(|d| d.len() < 1000) {
            edits(doc, |d| {
                check(&d);
                checked += 1;
            });
            // Pairs of edits, at random.
            for _ in 0..2000 {
                let mut d = doc.clone();
                for _ in 0..2 {
                    let mut i = random(d.len() + 1);
                    while !d.is_char_boundary(i) {
                        i -= 1;
                    }
                    let c = CHARS[random(CHARS.len())];
                    if random(2) == 0 {
                        d.insert(i, c);
                    } else if i < d.len() {
                        d.remove(i);
                    }
                }
                check(&d);
                checked += 1;
            }
        }
        eprintln!("{checked} documents checked");
        assert!(checked > 150_000, "{checked}");
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
