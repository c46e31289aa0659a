//! The typed vocabulary of a virtual service, as the replicated state holds
//! it: protocol, scheduler and its flags, forwarding mode, persistence,
//! health check.
//!
//! Values are validated once, where they enter (the configuration file, later
//! Kubernetes objects), and travel as these types from there to the kernel.
//! The serialized forms are the words the configuration uses (`tcp`, `rr`,
//! `nat`), which is also how earlier releases stored them as plain strings,
//! so a log or snapshot written by those releases reads back unchanged.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A word that is not one of a type's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?} (one of {choices})")]
pub struct UnknownWord {
    /// What was being parsed (`protocol`, `scheduler`, ...).
    pub what: &'static str,
    /// The word given.
    pub given: String,
    /// The words accepted, space-separated.
    pub choices: String,
}

macro_rules! words {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $word)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The word the configuration and the kernel use.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $word, )+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $( $word => Ok($name::$variant), )+
                    _ => Err(UnknownWord {
                        what: $what,
                        given: s.to_string(),
                        choices: [$( $word ),+].join(" "),
                    }),
                }
            }
        }
    };
}

words! {
    /// A transport protocol of a virtual service port.
    Protocol, "protocol" {
        /// TCP.
        Tcp = "tcp",
        /// UDP.
        Udp = "udp",
        /// SCTP.
        Sctp = "sctp",
    }
}

words! {
    /// An IPVS scheduler (`ipvsadm -s`).
    Scheduler, "scheduler" {
        /// Round robin.
        Rr = "rr",
        /// Weighted round robin.
        Wrr = "wrr",
        /// Least connection.
        Lc = "lc",
        /// Weighted least connection.
        Wlc = "wlc",
        /// Locality-based least connection.
        Lblc = "lblc",
        /// Locality-based least connection with replication.
        Lblcr = "lblcr",
        /// Destination hashing.
        Dh = "dh",
        /// Source hashing.
        Sh = "sh",
        /// Shortest expected delay.
        Sed = "sed",
        /// Never queue.
        Nq = "nq",
        /// Maglev hashing.
        Mh = "mh",
        /// Weighted failover.
        Fo = "fo",
        /// Weighted overflow.
        Ovf = "ovf",
        /// Weighted random twos choice.
        Twos = "twos",
    }
}

words! {
    /// A scheduler flag (`ipvsadm -b`); each belongs to one scheduler.
    SchedulerFlag, "scheduler flag" {
        /// sh: hash the source port too (`IP_VS_SVC_F_SCHED_SH_PORT`).
        ShPort = "sh-port",
        /// sh: skip a destination of weight 0 (`IP_VS_SVC_F_SCHED_SH_FALLBACK`).
        ShFallback = "sh-fallback",
        /// mh: hash the source port too (`IP_VS_SVC_F_SCHED_MH_PORT`).
        MhPort = "mh-port",
        /// mh: skip a destination of weight 0 (`IP_VS_SVC_F_SCHED_MH_FALLBACK`).
        MhFallback = "mh-fallback",
    }
}

words! {
    /// How IPVS forwards to the backends.
    Forwarding, "forwarding" {
        /// Masquerade (NAT) to node:NodePort.
        Nat = "nat",
        /// Direct routing: only the MAC is rewritten.
        Dr = "dr",
    }
}

impl SchedulerFlag {
    /// The scheduler the flag belongs to.
    pub fn scheduler(self) -> Scheduler {
        match self {
            SchedulerFlag::ShPort | SchedulerFlag::ShFallback => Scheduler::Sh,
            SchedulerFlag::MhPort | SchedulerFlag::MhFallback => Scheduler::Mh,
        }
    }

    /// Whether it is the "fallback" flag (the kernel's scheduler flag 1) or
    /// the "port" flag (scheduler flag 2).
    pub fn is_fallback(self) -> bool {
        matches!(self, SchedulerFlag::ShFallback | SchedulerFlag::MhFallback)
    }
}

/// A flag given to a scheduler it does not belong to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler flag {flag} needs scheduler {}, not {scheduler}", flag.scheduler())]
pub struct FlagMismatch {
    /// The flag.
    pub flag: SchedulerFlag,
    /// The scheduler it was given with.
    pub scheduler: Scheduler,
}

/// Checks that every flag belongs to `scheduler`.
pub fn check_flags(
    scheduler: Scheduler,
    flags: &BTreeSet<SchedulerFlag>,
) -> Result<(), FlagMismatch> {
    match flags.iter().find(|f| f.scheduler() != scheduler) {
        Some(flag) => Err(FlagMismatch {
            flag: *flag,
            scheduler,
        }),
        None => Ok(()),
    }
}

/// Client persistence (`ipvsadm -p TIMEOUT -M NETMASK`): connections from
/// one client (or one client network) go to the same backend while the
/// persistence entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds an idle persistence entry lives (1 or more).
    pub timeout_s: u32,
    /// Clients are grouped by this prefix length of their address (IPv4:
    /// 0..=32, IPv6: 0..=128); None: each client address on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<u8>,
}

words! {
    /// What happens to a backend whose health check fails.
    OnFail, "on_fail" {
        /// Weight 0: no new connections, open ones finish.
        Weight0 = "weight0",
        /// Out of the IPVS table: open connections are cut.
        Remove = "remove",
    }
}

// The words! macro derives the traits, Default among none of them.
#[allow(clippy::derivable_impls)]
impl Default for OnFail {
    fn default() -> Self {
        OnFail::Weight0
    }
}

/// An inclusive range of HTTP status codes a health check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StatusRange {
    /// Lowest accepted code.
    pub from: u16,
    /// Highest accepted code.
    pub to: u16,
}

impl StatusRange {
    /// Whether `code` is in the range.
    pub fn contains(self, code: u16) -> bool {
        (self.from..=self.to).contains(&code)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// How one backend is probed. `port: None` probes the backend's own port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connection is accepted.
    Tcp {
        /// The port to connect to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// An HTTP (or, with `tls`, HTTPS) GET answers with an accepted status.
    Http {
        /// The port to ask.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The request path (`/healthz`).
        path: String,
        /// The Host header (None: the backend's address).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Accepted status codes.
        expect: Vec<StatusRange>,
        /// HTTPS (the certificate is not verified, as a health check of a
        /// node's self-signed endpoint needs).
        #[serde(default)]
        tls: bool,
    },
    /// A UDP datagram is sent; no ICMP error comes back (or, with
    /// `expect_reply`, a reply does).
    Udp {
        /// The port to send to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The datagram.
        #[serde(default)]
        send: String,
        /// Whether a reply is needed (otherwise silence within the timeout
        /// passes and only an ICMP error fails).
        #[serde(default)]
        expect_reply: bool,
    },
}

impl Probe {
    /// The word the configuration uses (`tcp`, `http`, `https`, `udp`).
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp { .. } => "tcp",
            Probe::Http { tls: false, .. } => "http",
            Probe::Http { tls: true, .. } => "https",
            Probe::Udp { .. } => "udp",
        }
    }

    /// The port it asks (None: the backend's).
    pub fn port(&self) -> Option<u16> {
        match self {
            Probe::Tcp { port } | Probe::Http { port, .. } | Probe::Udp { port, .. } => *port,
        }
    }

    /// The transport it speaks: a probe without a port of its own checks
    /// only the backends of ports of this protocol.
    pub fn protocol(&self) -> Protocol {
        match self {
            Probe::Tcp { .. } | Probe::Http { .. } => Protocol::Tcp,
            Probe::Udp { .. } => Protocol::Udp,
        }
    }
}

/// A backend health check: how, how often, and what a failure does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    /// How a backend is probed.
    pub probe: Probe,
    /// Milliseconds between two probes of one backend.
    pub interval_ms: u32,
    /// Milliseconds a probe may take.
    pub timeout_ms: u32,
    /// Passes in a row that bring a failed backend back.
    pub rise: u32,
    /// Failures in a row that take a backend out.
    pub fall: u32,
    /// What taking a backend out means.
    #[serde(default)]
    pub on_fail: OnFail,
    /// Where traffic goes while every backend of a port is out (None: the
    /// backends stay as they are, since nothing would answer otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_name_the_choices() {
        for s in Scheduler::ALL {
            assert_eq!(s.as_str().parse::<Scheduler>(), Ok(*s));
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        let e = "round-robin".parse::<Scheduler>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown scheduler \"round-robin\" (one of rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos)"
        );
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("dr".parse::<Forwarding>(), Ok(Forwarding::Dr));
    }

    #[test]
    fn flags_belong_to_their_scheduler() {
        let flags: BTreeSet<_> = [SchedulerFlag::ShPort, SchedulerFlag::ShFallback].into();
        assert!(check_flags(Scheduler::Sh, &flags).is_ok());
        let e = check_flags(Scheduler::Mh, &flags).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scheduler flag sh-port needs scheduler sh, not mh"
        );
        assert!(check_flags(Scheduler::Rr, &BTreeSet::new()).is_ok());
    }
}
