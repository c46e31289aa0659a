//! The typed vocabulary of a virtual service, as the replicated state holds
//! it: protocol, scheduler and its flags, forwarding mode, persistence.
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
