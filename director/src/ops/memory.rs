//! The daemon's heap. `director` allocates through jemalloc (the binary
//! installs [`Allocator`] as its global allocator): a daemon whose
//! whole-state passes run on short-lived blocking threads leaves glibc's
//! per-thread arenas holding freed megabytes, where jemalloc returns unused
//! pages to the kernel after a second (its background thread purges
//! them while the daemon is idle). [`Heap`] is what it reports, for
//! `/metrics`.

use tikv_jemalloc_ctl::{background_thread, epoch, opt, stats};

/// The allocator `main.rs` installs.
pub type Allocator = tikv_jemallocator::Jemalloc;

/// The heap's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Bytes the program holds (allocated and not yet freed).
    pub allocated: u64,
    /// Bytes of the allocator's pages resident in memory: what it holds,
    /// its fragmentation and the freed pages not yet returned.
    pub resident: u64,
}

/// The heap now; None where jemalloc is not the allocator (a test binary)
/// or its statistics cannot be read.
pub fn heap() -> Option<Heap> {
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()? as u64;
    let resident = stats::resident::read().ok()? as u64;
    // jemalloc linked but not in use reports no allocation at all.
    (allocated > 0).then_some(Heap {
        allocated,
        resident,
    })
}

/// The arenas jemalloc was built to use: one, set at build time by
/// `JEMALLOC_SYS_WITH_MALLOC_CONF` in the workspace's `.cargo/config.toml`
/// (every further arena keeps its own freed pages). None where jemalloc is
/// not the allocator.
pub fn arenas() -> Option<u32> {
    heap()?;
    opt::narenas::read().ok()
}

/// How long jemalloc keeps freed pages before it returns them to the
/// kernel, in milliseconds: one second, set at build time with the arenas
/// (jemalloc's default is ten). At 10,000 services a resync's full read of
/// the IPVS table allocates and frees megabytes every 30 s; kept ten
/// seconds, they would be in the RSS ten seconds of every thirty. None
/// where jemalloc is not the allocator.
pub fn dirty_decay_ms() -> Option<isize> {
    use tikv_jemalloc_ctl::{Access, AsName};
    heap()?;
    b"opt.dirty_decay_ms\0".name().read().ok()
}

/// Starts jemalloc's background thread, which returns freed pages to the
/// kernel while the daemon is idle (without it, only a later allocation
/// does). A failure is logged and changes nothing else.
pub fn return_freed_pages() {
    tracing::debug!(arenas = ?arenas(), "jemalloc");
    if let Err(e) = background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread did not start; freed memory returns to the kernel only on later allocations");
    }
}
