//! Health-check settings (`health:` in `defaults:`, in a static service, in
//! a `kubernetes.services[]` override, and in the annotation
//! `director.io/health-check`): one block shape, each field overriding what
//! the level above gave, resolved into the replicated
//! [`HealthCheck`] once the source's default kind is known.

use std::net::SocketAddr;

use consensus::domain::{HealthCheck, OnFail, Probe, StatusRange};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::problems::{int_in as int, Problems};

/// The port kube-proxy answers `/healthz` on.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;

/// What a health check does, as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// Not checked.
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP GET.
    Http,
    /// An HTTPS GET.
    Https,
    /// A UDP datagram.
    Udp,
    /// kube-proxy's `/healthz` on 10256 (or, for a Service with
    /// `externalTrafficPolicy: Local`, its `healthCheckNodePort`).
    KubeProxy,
}

impl HealthKind {
    const WORDS: &'static [(&'static str, HealthKind)] = &[
        ("none", HealthKind::None),
        ("tcp", HealthKind::Tcp),
        ("http", HealthKind::Http),
        ("https", HealthKind::Https),
        ("udp", HealthKind::Udp),
        ("kube-proxy", HealthKind::KubeProxy),
    ];

    fn parse(s: &str) -> Result<HealthKind, String> {
        Self::WORDS
            .iter()
            .find(|(w, _)| *w == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let words: Vec<&str> = Self::WORDS.iter().map(|(w, _)| *w).collect();
                format!("unknown check type {s:?} (one of {})", words.join(" "))
            })
    }
}

/// A health-check block with what the levels above it gave: every field
/// set, except the kind, which a source fills in (`tcp` for static
/// services, `kube-proxy` for Kubernetes Services) unless a level named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// The kind (None: the source's default).
    pub kind: Option<HealthKind>,
    /// The port probed (None: the backend's own, or 10256 for kube-proxy).
    pub port: Option<u16>,
    /// HTTP(S) path (None: `/`, or `/healthz` for kube-proxy).
    pub path: Option<String>,
    /// HTTP(S) Host header (None: the backend's address).
    pub host: Option<String>,
    /// HTTP(S) status codes that pass (empty: 200-399).
    pub expect: Vec<StatusRange>,
    /// UDP datagram sent.
    pub send: String,
    /// UDP: a reply is needed.
    pub expect_reply: bool,
    /// Milliseconds between probes of one backend.
    pub interval_ms: u32,
    /// Milliseconds a probe may take.
    pub timeout_ms: u32,
    /// Passes in a row to come back.
    pub rise: u32,
    /// Failures in a row to go out.
    pub fall: u32,
    /// Weight 0 or removal.
    pub on_fail: OnFail,
    /// Where traffic goes while every backend of a port is out.
    pub fallback: Option<SocketAddr>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            kind: None,
            port: None,
            path: None,
            host: None,
            expect: Vec::new(),
            send: String::new(),
            expect_reply: false,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            on_fail: OnFail::Weight0,
            fallback: None,
        }
    }
}

impl HealthSettings {
    /// The check a service gets: `default` when no level named a kind;
    /// `local_port` is a Kubernetes Service's `healthCheckNodePort`, which
    /// a kube-proxy check asks instead of `/healthz` when there is one.
    pub fn resolve(&self, default: HealthKind, local_port: Option<u16>) -> Option<HealthCheck> {
        let http = |port, path: &str, tls| Probe::Http {
            port,
            path: self.path.clone().unwrap_or_else(|| path.to_string()),
            host: self.host.clone(),
            expect: if self.expect.is_empty() {
                vec![StatusRange { from: 200, to: 399 }]
            } else {
                self.expect.clone()
            },
            tls,
        };
        let probe = match self.kind.unwrap_or(default) {
            HealthKind::None => return None,
            HealthKind::Tcp => Probe::Tcp { port: self.port },
            HealthKind::Http => http(self.port, "/", false),
            HealthKind::Https => http(self.port, "/", true),
            HealthKind::Udp => Probe::Udp {
                port: self.port,
                send: self.send.clone(),
                expect_reply: self.expect_reply,
            },
            HealthKind::KubeProxy => match (self.port, local_port) {
                (None, Some(p)) => http(Some(p), "/", false),
                (port, _) => http(
                    Some(port.unwrap_or(KUBE_PROXY_HEALTHZ_PORT)),
                    "/healthz",
                    false,
                ),
            },
        };
        Some(HealthCheck {
            probe,
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            rise: self.rise,
            fall: self.fall,
            on_fail: self.on_fail,
            fallback: self.fallback,
        })
    }
}

/// A `health:` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthIn {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    expect: Option<Spanned<Vec<Spanned<CodeIn>>>>,
    send: Option<Spanned<String>>,
    expect_reply: Option<Spanned<bool>>,
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    on_fail: Option<Spanned<String>>,
    fallback: Option<Spanned<String>>,
}

/// An accepted status: `200` or `"200-299"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CodeIn {
    One(i64),
    Range(String),
}

/// `base` with the block `h` (at `field`) applied; every problem is
/// reported under `field` and leaves that setting as it was.
pub(super) fn apply(
    h: &Spanned<HealthIn>,
    base: &HealthSettings,
    field: &str,
    errs: &mut Problems,
) -> HealthSettings {
    let mut out = base.clone();
    let v = &h.value;
    if let Some(k) = &v.kind {
        match HealthKind::parse(&k.value) {
            Ok(kind) => {
                out.kind = Some(kind);
                // What belongs to another kind is not inherited (what a
                // level gave without naming a kind stays).
                if base.kind.is_some_and(|b| b != kind) {
                    out.port = None;
                    out.path = None;
                    out.host = None;
                    out.expect.clear();
                    out.send.clear();
                    out.expect_reply = false;
                }
            }
            Err(why) => errs.at(k, format!("{field}.type"), why),
        }
    }
    // Fields of another kind than the one this level ends with are refused
    // (with no kind named anywhere yet, a field of any kind is taken: the
    // source's default kind decides later).
    if let Some(kind) = out.kind {
        let http = matches!(
            kind,
            HealthKind::Http | HealthKind::Https | HealthKind::KubeProxy
        );
        let udp = kind == HealthKind::Udp;
        let misplaced = [
            ("path", v.path.is_some() && !http),
            ("host", v.host.is_some() && !http),
            ("expect", v.expect.is_some() && !http),
            ("send", v.send.is_some() && !udp),
            ("expect_reply", v.expect_reply.is_some() && !udp),
        ];
        let word = HealthKind::WORDS
            .iter()
            .find(|(_, k)| *k == kind)
            .map_or("", |(w, _)| *w);
        for (name, bad) in misplaced {
            if bad {
                errs.at(
                    h,
                    format!("{field}.{name}"),
                    format!("does not apply to a {word} check"),
                );
            }
        }
    }
    if let Some(p) = &v.port {
        match int::<u16>(p, format!("{field}.port"), "1..=65535", errs) {
            Some(0) => errs.at(p, format!("{field}.port"), "0 is out of range 1..=65535"),
            Some(n) => out.port = Some(n),
            None => {}
        }
    }
    if let Some(p) = &v.path {
        if p.value.starts_with('/') && !p.value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            out.path = Some(p.value.clone());
        } else {
            errs.at(
                p,
                format!("{field}.path"),
                format!("{:?} is not an absolute path without spaces", p.value),
            );
        }
    }
    if let Some(host) = &v.host {
        if !host.value.is_empty()
            && !host
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            out.host = Some(host.value.clone());
        } else {
            errs.at(
                host,
                format!("{field}.host"),
                format!("{:?} is not a host name", host.value),
            );
        }
    }
    if let Some(list) = &v.expect {
        let mut codes = Vec::new();
        for (i, c) in list.value.iter().enumerate() {
            match status_range(&c.value) {
                Ok(r) => codes.push(r),
                Err(why) => errs.at(c, format!("{field}.expect[{i}]"), why),
            }
        }
        if list.value.is_empty() {
            errs.at(list, format!("{field}.expect"), "needs at least one code");
        }
        out.expect = codes;
    }
    if let Some(s) = &v.send {
        out.send.clone_from(&s.value);
    }
    if let Some(r) = &v.expect_reply {
        out.expect_reply = r.value;
    }
    let mut bounded = |v: &Option<Spanned<i64>>, name: &str, lo: i64, hi: i64, slot: &mut u32| {
        if let Some(n) = v {
            if (lo..=hi).contains(&n.value) {
                *slot = u32::try_from(n.value).unwrap_or(*slot);
            } else {
                errs.at(
                    n,
                    format!("{field}.{name}"),
                    format!("{} is out of range {lo}..={hi}", n.value),
                );
            }
        }
    };
    bounded(
        &v.interval_ms,
        "interval_ms",
        100,
        3_600_000,
        &mut out.interval_ms,
    );
    bounded(
        &v.timeout_ms,
        "timeout_ms",
        10,
        3_600_000,
        &mut out.timeout_ms,
    );
    bounded(&v.rise, "rise", 1, 100, &mut out.rise);
    bounded(&v.fall, "fall", 1, 100, &mut out.fall);
    // A shorter interval given alone shortens the inherited timeout with it.
    if v.timeout_ms.is_none() && out.timeout_ms > out.interval_ms {
        out.timeout_ms = out.interval_ms;
    }
    if out.timeout_ms > out.interval_ms {
        errs.at(
            h,
            format!("{field}.timeout_ms"),
            format!(
                "{} is longer than the interval ({} ms)",
                out.timeout_ms, out.interval_ms
            ),
        );
    }
    if let Some(w) = &v.on_fail {
        match w.value.parse::<OnFail>() {
            Ok(x) => out.on_fail = x,
            Err(e) => errs.at(w, format!("{field}.on_fail"), e.to_string()),
        }
    }
    if let Some(f) = &v.fallback {
        match f.value.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => out.fallback = Some(a),
            _ => errs.at(
                f,
                format!("{field}.fallback"),
                format!("{:?} is not ADDRESS:PORT", f.value),
            ),
        }
    }
    out
}

/// `200`, or `"200-299"`, within 100..=599.
fn status_range(c: &CodeIn) -> Result<StatusRange, String> {
    let code = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| format!("{n} is not an HTTP status (100..=599)"))
    };
    match c {
        CodeIn::One(n) => code(*n).map(|n| StatusRange { from: n, to: n }),
        CodeIn::Range(s) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let parse = |t: &str| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{s:?} is not CODE or FROM-TO"))
            };
            let (from, to) = (code(parse(a)?)?, code(parse(b)?)?);
            if from > to {
                return Err(format!("{s:?}: {from} is above {to}"));
            }
            Ok(StatusRange { from, to })
        }
    }
}

/// A block given as text (the annotation `director.io/health-check`, a
/// YAML flow mapping such as `{type: http, path: /ready}`) applied over
/// `base`; the problems, one per line, if any.
pub fn apply_text(text: &str, base: &HealthSettings) -> Result<HealthSettings, String> {
    let block: Spanned<HealthIn> = serde_saphyr::from_str(text).map_err(|e| {
        let p = crate::problems::from_saphyr(&e);
        p.message
    })?;
    let mut errs = Problems::default();
    let out = apply(&block, base, "health", &mut errs);
    if errs.list.is_empty() {
        Ok(out)
    } else {
        Err(errs
            .list
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(text: &str) -> Result<HealthSettings, String> {
        apply_text(text, &HealthSettings::default())
    }

    #[test]
    fn kinds_resolve_with_their_defaults() {
        let d = HealthSettings::default();
        let tcp = d.resolve(HealthKind::Tcp, None).unwrap();
        assert_eq!(tcp.probe, Probe::Tcp { port: None });
        assert_eq!(
            (tcp.interval_ms, tcp.timeout_ms, tcp.rise, tcp.fall),
            (2000, 1000, 2, 3)
        );
        let kube = d.resolve(HealthKind::KubeProxy, None).unwrap();
        assert_eq!(
            kube.probe,
            Probe::Http {
                port: Some(10256),
                path: "/healthz".into(),
                host: None,
                expect: vec![StatusRange { from: 200, to: 399 }],
                tls: false
            }
        );
        // externalTrafficPolicy: Local asks the Service's own health port.
        let local = d.resolve(HealthKind::KubeProxy, Some(31999)).unwrap();
        assert!(
            matches!(local.probe, Probe::Http { port: Some(31999), ref path, .. } if path == "/")
        );
        assert_eq!(
            from("{type: none}").unwrap().resolve(HealthKind::Tcp, None),
            None
        );
    }

    #[test]
    fn a_block_overrides_field_by_field() {
        let h = from("{type: https, path: /ready, expect: [200, \"300-302\"], interval_ms: 500, timeout_ms: 200, rise: 1, fall: 2, on_fail: remove, fallback: \"10.0.0.9:80\"}").unwrap();
        let c = h.resolve(HealthKind::Tcp, None).unwrap();
        assert_eq!(c.probe.kind(), "https");
        assert_eq!(
            (c.interval_ms, c.timeout_ms, c.rise, c.fall),
            (500, 200, 1, 2)
        );
        assert_eq!(c.on_fail, OnFail::Remove);
        assert_eq!(c.fallback, Some("10.0.0.9:80".parse().unwrap()));
        let Probe::Http { expect, path, .. } = c.probe else {
            panic!()
        };
        assert_eq!(path, "/ready");
        assert_eq!(
            expect,
            vec![
                StatusRange { from: 200, to: 200 },
                StatusRange { from: 300, to: 302 }
            ]
        );
        // A level below keeps what it does not name; another kind drops the
        // fields of the old one.
        let tcp = apply_text("{type: tcp}", &h).unwrap();
        assert_eq!(tcp.path, None);
        assert_eq!(tcp.interval_ms, 500);
        let same = apply_text("{rise: 3}", &h).unwrap();
        assert_eq!(same.path.as_deref(), Some("/ready"));
        // Without a kind above, a kind named below keeps what was given.
        let port = from("{port: 8080}").unwrap();
        assert_eq!(apply_text("{type: tcp}", &port).unwrap().port, Some(8080));
        // A short interval alone takes the timeout down with it.
        let fast = from("{interval_ms: 500}").unwrap();
        assert_eq!((fast.interval_ms, fast.timeout_ms), (500, 500));
    }

    #[test]
    fn bad_blocks_name_the_field() {
        let e = from("{type: icmp}").unwrap_err();
        assert!(
            e.contains("health.type: unknown check type \"icmp\""),
            "{e}"
        );
        let e = from("{type: tcp, path: /x}").unwrap_err();
        assert!(
            e.contains("health.path: does not apply to a tcp check"),
            "{e}"
        );
        let e = from("{interval_ms: 50}").unwrap_err();
        assert!(
            e.contains("health.interval_ms: 50 is out of range 100..=3600000"),
            "{e}"
        );
        let e = from("{interval_ms: 1000, timeout_ms: 2000}").unwrap_err();
        assert!(
            e.contains("health.timeout_ms: 2000 is longer than the interval"),
            "{e}"
        );
        let e = from("{type: http, expect: [700, \"300-200\", x]}").unwrap_err();
        assert!(
            e.contains("health.expect[0]: 700 is not an HTTP status"),
            "{e}"
        );
        assert!(
            e.contains("health.expect[1]: \"300-200\": 300 is above 200"),
            "{e}"
        );
        assert!(
            e.contains("health.expect[2]: \"x\" is not CODE or FROM-TO"),
            "{e}"
        );
        let e = from("{on_fail: drop, fallback: nowhere, port: 0}").unwrap_err();
        assert!(
            e.contains("health.on_fail: unknown on_fail \"drop\""),
            "{e}"
        );
        assert!(
            e.contains("health.fallback: \"nowhere\" is not ADDRESS:PORT"),
            "{e}"
        );
        assert!(e.contains("health.port: 0 is out of range"), "{e}");
        // A field of another kind than the inherited one.
        let tcp = from("{type: tcp}").unwrap();
        let e = apply_text("{path: /x}", &tcp).unwrap_err();
        assert!(
            e.contains("health.path: does not apply to a tcp check"),
            "{e}"
        );
        let e = from("{colour: red}").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
