//! The allocator's own figures for `/metrics`: how much of the node's memory is live heap and
//! how much is pages the allocator holds. RSS alone cannot tell a leak from an allocator that
//! keeps freed pages (docs/RELIABILITY.md, "Soak"); these gauges can.
//!
//! The `ferrobeam` binary allocates with jemalloc and says so with [`declare_jemalloc`]. Other
//! users of the library (its tests among them) keep the system allocator, and then there are no
//! figures to read: jemalloc is linked in but serves no allocation.

use std::sync::atomic::{AtomicBool, Ordering};

static JEMALLOC: AtomicBool = AtomicBool::new(false);

/// Called once by a binary whose `#[global_allocator]` is `tikv_jemallocator::Jemalloc`.
pub fn declare_jemalloc() {
    JEMALLOC.store(true, Ordering::Relaxed);
}

/// jemalloc's totals, in bytes (its `stats.*` counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the node has allocated and not freed: the live heap.
    pub allocated: u64,
    /// Bytes in pages holding live allocations (the heap plus its fragmentation).
    pub active: u64,
    /// Bytes in physically resident pages mapped by the allocator: what it adds to RSS.
    pub resident: u64,
    /// Bytes of the allocator's own bookkeeping.
    pub metadata: u64,
}

/// The current totals; None when jemalloc is not the global allocator (or on other systems).
pub fn stats() -> Option<AllocatorStats> {
    if !JEMALLOC.load(Ordering::Relaxed) {
        return None;
    }
    read()
}

/// The totals in the Prometheus text format, one gauge each.
pub fn prometheus(stats: &AllocatorStats) -> String {
    use std::fmt::Write as _;
    let gauges = [
        (
            "ferrobeam_allocator_allocated_bytes",
            "Bytes allocated and not freed (the live heap).",
            stats.allocated,
        ),
        (
            "ferrobeam_allocator_active_bytes",
            "Bytes in the allocator's pages that hold live allocations.",
            stats.active,
        ),
        (
            "ferrobeam_allocator_resident_bytes",
            "Bytes in resident pages the allocator has mapped.",
            stats.resident,
        ),
        (
            "ferrobeam_allocator_metadata_bytes",
            "Bytes of the allocator's own bookkeeping.",
            stats.metadata,
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in gauges {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

#[cfg(target_os = "linux")]
fn read() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The totals are cached by jemalloc; advancing the epoch refreshes them.
    epoch::advance().ok()?;
    let to_u64 = |bytes: usize| u64::try_from(bytes).unwrap_or(u64::MAX);
    Some(AllocatorStats {
        allocated: to_u64(stats::allocated::read().ok()?),
        active: to_u64(stats::active::read().ok()?),
        resident: to_u64(stats::resident::read().ok()?),
        metadata: to_u64(stats::metadata::read().ok()?),
    })
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<AllocatorStats> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_no_figures_until_a_binary_declares_jemalloc() {
        // Library tests run on the system allocator and never declare jemalloc.
        assert_eq!(stats(), None);
    }

    #[test]
    fn each_total_is_one_gauge() {
        let text = prometheus(&AllocatorStats {
            allocated: 1,
            active: 2,
            resident: 3,
            metadata: 4,
        });
        assert!(
            text.contains("\nferrobeam_allocator_allocated_bytes 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nferrobeam_allocator_resident_bytes 3\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), 4);
    }
}
