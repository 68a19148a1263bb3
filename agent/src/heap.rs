//! The agent's heap: jemalloc, configured to keep no more than it uses.
//!
//! Why not glibc's malloc: a burst of connections interleaves each connection's small
//! long-lived objects with its large short-lived buffers; once the buffers are freed, glibc
//! keeps every page that still holds one of the small objects, and a trim cannot give those
//! back (4.7–6.6 KB resident per idle connection against 2.2 KB in use). jemalloc keeps small
//! objects of one size together, apart from large buffers, so freed buffers leave whole pages
//! free (2.5 KB per idle connection). L7 throughput was the same on both (docs/performance.md,
//! Memory).
//!
//! The binary installs the allocator and its options ([`MALLOC_CONF`]); this module reads
//! what it holds.
use tikv_jemalloc_ctl::{epoch, stats};

/// jemalloc's options, read at its first allocation: one arena (the proxy runs one worker
/// thread; more arenas only spread a burst's leftovers), and pages freed for a second given
/// back to the system by jemalloc's background thread, so an idle agent keeps no burst's
/// peak.
pub const MALLOC_CONF: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The heap as the allocator sees it.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// Handed out and not freed.
    pub in_use: u64,
    /// Resident in the allocator beyond that: its own bookkeeping and freed pages not yet
    /// given back.
    pub kept: u64,
}

/// What the heap holds now. Refreshing jemalloc's statistics only sums a few counters of its
/// one arena, so a scrape may ask.
pub fn now() -> Heap {
    // A failure leaves the last refreshed figures, which is all a metric needs.
    let _ = epoch::advance();
    let in_use = stats::allocated::read().unwrap_or(0) as u64;
    let resident = stats::resident::read().unwrap_or(0) as u64;
    Heap {
        in_use,
        kept: resident.saturating_sub(in_use),
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use tikv_jemallocator::Jemalloc;

    use super::*;

    /// A block taken from jemalloc shows in the heap in use, and goes when given back. (The
    /// test binary's own allocator is the system's: the block is asked of jemalloc directly.)
    #[test]
    fn a_block_in_use_is_counted_until_it_is_freed() {
        let layout = Layout::from_size_align(4 << 20, 8).unwrap();
        let before = now().in_use;
        // SAFETY: a non-zero layout; the block is freed with the same layout below.
        let block = unsafe { Jemalloc.alloc(layout) };
        assert!(!block.is_null());
        let with = now().in_use;
        // SAFETY: the block and layout from the alloc above.
        unsafe { Jemalloc.dealloc(block, layout) };
        let after = now().in_use;
        assert!(with >= before + (4 << 20), "{before} -> {with}");
        assert!(after < with, "{with} -> {after}");
    }
}
