//! The clock leases count on: CLOCK_BOOTTIME (docs/fencing.md, "Clock
//! assumptions").
//!
//! `std::time::Instant` and tokio's timers read CLOCK_MONOTONIC, which stops
//! while the host is suspended: a holder resumed from suspend would count its
//! lease as still running while the leader, whose clock ran on, moved the VIP.
//! CLOCK_BOOTTIME is CLOCK_MONOTONIC plus the time the kernel spent
//! suspended. Every instant a lease is computed from is a [`BootInstant`]
//! read from a [`Clock`]: [`BootClock`] in the daemon, [`TestClock`] in tests
//! (it jumps forward the way a suspend does).
//!
//! Timers that only pace work (renewal ticks, RPC timeouts, quorum-round
//! timeouts) stay on tokio's clock: a late or stretched timer delays a
//! renewal or a check, and never lengthens a lease.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::time::{clock_gettime, ClockId};

/// An instant on the boot clock: the time since the host booted, time
/// spent suspended included. Comparable only with instants of the same
/// host's boot clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant {
    since_boot: Duration,
}

impl BootInstant {
    /// The instant `since_boot` after boot.
    pub const fn from_since_boot(since_boot: Duration) -> Self {
        BootInstant { since_boot }
    }

    /// The time from boot to this instant.
    pub const fn since_boot(self) -> Duration {
        self.since_boot
    }

    /// The time from `earlier` to this instant; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: BootInstant) -> Duration {
        self.since_boot.saturating_sub(earlier.since_boot)
    }

    /// The time from `earlier` to this instant; `None` if `earlier` is later.
    pub fn checked_duration_since(self, earlier: BootInstant) -> Option<Duration> {
        self.since_boot.checked_sub(earlier.since_boot)
    }

    /// This instant plus `d`; `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<BootInstant> {
        self.since_boot.checked_add(d).map(Self::from_since_boot)
    }

    /// This instant minus `d`; `None` before boot.
    pub fn checked_sub(self, d: Duration) -> Option<BootInstant> {
        self.since_boot.checked_sub(d).map(Self::from_since_boot)
    }
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;

    /// Saturates at the largest instant (centuries after boot).
    fn add(self, d: Duration) -> BootInstant {
        Self::from_since_boot(self.since_boot.saturating_add(d))
    }
}

impl Sub<Duration> for BootInstant {
    type Output = BootInstant;

    /// Saturates at the boot.
    fn sub(self, d: Duration) -> BootInstant {
        Self::from_since_boot(self.since_boot.saturating_sub(d))
    }
}

/// Reading the clock failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// `clock_gettime(CLOCK_BOOTTIME)` failed (a kernel without the clock).
    #[error("clock_gettime(CLOCK_BOOTTIME): {0}")]
    Read(#[source] Errno),
}

impl ClockError {
    /// Whether reading again may succeed: never, the kernel lacks the clock.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Where lease instants come from.
///
/// A node reads it once at start and refuses to start if that fails; a
/// later failed read holds no lease, grants none and moves nothing.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Result<BootInstant, ClockError>;
}

/// The host's CLOCK_BOOTTIME: runs through suspend, never stepped by
/// `settimeofday` or NTP (which only slews its rate, as for
/// CLOCK_MONOTONIC).
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Result<BootInstant, ClockError> {
        let t = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(ClockError::Read)?;
        Ok(BootInstant::from_since_boot(Duration::from(t)))
    }
}

/// A clock for tests: a base (the boot clock, or an instant that stands
/// still) plus an offset that [`TestClock::advance`] grows. Advancing by
/// minutes in one step is what a suspend looks like on the boot clock.
#[derive(Debug)]
pub struct TestClock {
    /// `None`: stands still at `start` until advanced.
    base: Option<BootClock>,
    start: BootInstant,
    /// Nanoseconds added so far.
    offset_ns: AtomicU64,
}

impl TestClock {
    /// A clock that stands at `start` and moves only by [`TestClock::advance`].
    pub fn stopped(start: BootInstant) -> Self {
        TestClock {
            base: None,
            start,
            offset_ns: AtomicU64::new(0),
        }
    }

    /// The host's boot clock, moved on by every [`TestClock::advance`].
    pub fn running() -> Self {
        TestClock {
            base: Some(BootClock),
            start: BootInstant::from_since_boot(Duration::ZERO),
            offset_ns: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward by `d` in one step.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                Some(o.saturating_add(ns))
            });
    }
}

impl Clock for TestClock {
    fn now(&self) -> Result<BootInstant, ClockError> {
        let base = match &self.base {
            Some(b) => b.now()?,
            None => self.start,
        };
        Ok(base + Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's uptime (`/proc/uptime`) is CLOCK_BOOTTIME: the boot
    /// clock reads it, not CLOCK_REALTIME (seconds since 1970) and not a
    /// clock that stopped during a suspend of this host.
    #[test]
    fn the_boot_clock_is_the_kernels_uptime() {
        let before = BootClock.now().unwrap();
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
        let after = BootClock.now().unwrap();
        let secs: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
        let uptime = Duration::from_secs_f64(secs);
        // /proc/uptime has a resolution of 10 ms and truncates.
        assert!(uptime <= after.since_boot(), "{uptime:?} vs {after:?}");
        assert!(
            before.since_boot() < uptime + Duration::from_millis(20),
            "{before:?} vs {uptime:?}"
        );
        assert!(before <= after);
    }

    #[test]
    fn a_test_clock_jumps_like_a_suspend() {
        let start = BootInstant::from_since_boot(Duration::from_secs(100));
        let clock = TestClock::stopped(start);
        assert_eq!(clock.now().unwrap(), start);
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            clock.now().unwrap().saturating_duration_since(start),
            Duration::from_secs(300)
        );
        let running = TestClock::running();
        let before = running.now().unwrap();
        running.advance(Duration::from_secs(300));
        assert!(running.now().unwrap() >= before + Duration::from_secs(300));
    }

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = BootInstant::from_since_boot(Duration::from_secs(1));
        assert_eq!(
            t - Duration::from_secs(5),
            BootInstant::from_since_boot(Duration::ZERO)
        );
        assert_eq!(t.checked_sub(Duration::from_secs(5)), None);
        assert_eq!(
            (t + Duration::from_millis(500)).checked_duration_since(t),
            Some(Duration::from_millis(500))
        );
        assert_eq!(t.checked_duration_since(t + Duration::from_millis(1)), None);
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_millis(1)),
            Duration::ZERO
        );
    }
}
