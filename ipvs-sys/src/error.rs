//! Errors of the IPVS client.

use std::fmt;

/// What was being done when the kernel said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Reading version info.
    Info,
    /// Adding a service.
    AddService,
    /// Editing a service.
    EditService,
    /// Deleting a service.
    DelService,
    /// Reading one service.
    GetService,
    /// Listing services.
    ListServices,
    /// Adding a destination.
    AddDest,
    /// Editing a destination.
    EditDest,
    /// Deleting a destination.
    DelDest,
    /// Listing a service's destinations.
    ListDests,
    /// Flushing the table.
    Flush,
    /// Zeroing counters.
    Zero,
    /// Reading timeouts.
    GetTimeouts,
    /// Setting timeouts.
    SetTimeouts,
    /// Starting a sync daemon.
    StartDaemon,
    /// Stopping a sync daemon.
    StopDaemon,
    /// Listing sync daemons.
    ListDaemons,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Operation::*;
        f.write_str(match self {
            Info => "reading IPVS info",
            AddService => "adding service",
            EditService => "editing service",
            DelService => "deleting service",
            GetService => "reading service",
            ListServices => "listing services",
            AddDest => "adding destination",
            EditDest => "editing destination",
            DelDest => "deleting destination",
            ListDests => "listing destinations of",
            Flush => "flushing the IPVS table",
            Zero => "zeroing counters",
            GetTimeouts => "reading timeouts",
            SetTimeouts => "setting timeouts",
            StartDaemon => "starting sync daemon",
            StopDaemon => "stopping sync daemon",
            ListDaemons => "listing sync daemons",
        })
    }
}

/// The kernel's answer, in the operator's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `EEXIST`: the service or destination exists already.
    Exists,
    /// `ESRCH`: no such service.
    NoSuchService,
    /// `ENOENT` on a destination: no such destination.
    NoSuchDestination,
    /// `ENOENT` when adding or editing a service: the scheduler (or
    /// persistence engine) is not known to the kernel.
    NoSuchScheduler,
    /// `EPERM`/`EACCES`: needs CAP_NET_ADMIN.
    Permission,
    /// `EINVAL`: the kernel rejected the arguments.
    Invalid,
    /// `EBUSY`: the resource is busy (a sync daemon already runs).
    Busy,
    /// `EAFNOSUPPORT`: the kernel lacks IPv6 support for IPVS.
    FamilyNotSupported,
    /// Any other errno.
    Other,
}

impl ErrorKind {
    fn classify(op: Operation, errno: i32) -> ErrorKind {
        const EPERM: i32 = 1;
        const ENOENT: i32 = 2;
        const ESRCH: i32 = 3;
        const EACCES: i32 = 13;
        const EBUSY: i32 = 16;
        const EEXIST: i32 = 17;
        const EINVAL: i32 = 22;
        const EAFNOSUPPORT: i32 = 97;
        match errno {
            EEXIST => ErrorKind::Exists,
            ESRCH => ErrorKind::NoSuchService,
            ENOENT => match op {
                Operation::AddService | Operation::EditService => ErrorKind::NoSuchScheduler,
                Operation::AddDest | Operation::EditDest | Operation::DelDest => {
                    ErrorKind::NoSuchDestination
                }
                _ => ErrorKind::NoSuchService,
            },
            EPERM | EACCES => ErrorKind::Permission,
            EINVAL => ErrorKind::Invalid,
            EBUSY => ErrorKind::Busy,
            EAFNOSUPPORT => ErrorKind::FamilyNotSupported,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        f.write_str(match self {
            Exists => "it exists already",
            NoSuchService => "no such service",
            NoSuchDestination => "no such destination",
            NoSuchScheduler => "the kernel has no such scheduler or persistence engine",
            Permission => "permission denied (needs root or CAP_NET_ADMIN)",
            Invalid => "invalid argument",
            Busy => "busy",
            FamilyNotSupported => "address family not supported by IPVS in this kernel",
            Other => "kernel error",
        })
    }
}

/// An error of the IPVS client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpvsError {
    /// The kernel has no IPVS generic-netlink family (ip_vs not loaded or
    /// not built).
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found): load it with `modprobe ip_vs`")]
    NotAvailable,
    /// The kernel refused an operation.
    #[error("{op} {target}: {kind} (errno {errno})")]
    Kernel {
        /// What was being done.
        op: Operation,
        /// On what (a service or destination, in ipvsadm's notation).
        target: String,
        /// The kernel's answer.
        kind: ErrorKind,
        /// The errno.
        errno: i32,
    },
    /// A kernel reply did not decode.
    #[error("{op} {target}: undecodable reply from the kernel: {source}")]
    Decode {
        /// What was being done.
        op: Operation,
        /// On what.
        target: String,
        /// Why.
        source: netlink_packet_core::DecodeError,
    },
    /// The netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Sending the request failed.
    #[error("{op} {target}: sending the request failed: {message}")]
    Send {
        /// What was being done.
        op: Operation,
        /// On what.
        target: String,
        /// Why.
        message: String,
    },
}

impl IpvsError {
    pub(crate) fn kernel(op: Operation, target: String, errno: i32) -> Self {
        IpvsError::Kernel {
            op,
            target,
            kind: ErrorKind::classify(op, errno),
            errno,
        }
    }

    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// What the kernel said, if it refused.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            IpvsError::Kernel { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether trying again may succeed (socket trouble, `EBUSY`, `ENOMEM`,
    /// `EAGAIN`); a refusal of the arguments is not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            IpvsError::Socket(_) | IpvsError::Send { .. } => true,
            IpvsError::Kernel { errno, .. } => matches!(*errno, 11 | 12 | 16 | 105),
            IpvsError::NotAvailable | IpvsError::Decode { .. } => false,
        }
    }
}
