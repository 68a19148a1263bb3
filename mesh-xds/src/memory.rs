//! Memory housekeeping.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Returns free heap pages to the system. Start-up and mesh loads parse megabytes (the
/// kernel's BTF, every mesh file as JSON) and free them again; without this the allocator keeps
/// that peak as the process's resident floor.
pub fn release_free_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// The heap as the allocator sees it.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// Handed out and not freed (arenas and large mapped blocks).
    pub in_use: u64,
    /// Freed but kept by the allocator for reuse.
    pub free: u64,
}

/// What the heap holds now. It walks the allocator's free lists under their locks: only the
/// housekeeping tick calls it, on a blocking thread.
fn heap() -> Heap {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    Heap {
        in_use: (info.uordblks + info.hblkhd) as u64,
        free: info.fordblks as u64,
    }
}

/// The heap as [`keep_releasing_free_heap`] last saw it (before releasing), for metrics:
/// a scrape reads these instead of walking the allocator's arenas on the runtime's thread.
static LAST_IN_USE: AtomicU64 = AtomicU64::new(0);
static LAST_FREE: AtomicU64 = AtomicU64::new(0);

/// The heap as the housekeeping tick last saw it, at most [`RELEASE_EVERY`] ago (zero
/// before its first look, and in a process that does not run it).
pub fn last_seen_heap() -> Heap {
    Heap {
        in_use: LAST_IN_USE.load(Ordering::Relaxed),
        free: LAST_FREE.load(Ordering::Relaxed),
    }
}

/// How often [`keep_releasing_free_heap`] looks, and how much free heap it lets stay.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
const KEEP_FREE: u64 = 8 << 20;

/// Gives free heap back to the system whenever more than a few MiB of it has piled up: a
/// burst (ten thousand connections opened at once, a large mesh loaded) frees its memory
/// when it ends, but glibc keeps freed pages that are not at the top of the heap, so without
/// this the process would keep the burst's peak as its resident size for good. On a blocking
/// thread: both calls walk and lock the allocator's arenas. What it sees is kept for
/// [`last_seen_heap`].
pub async fn keep_releasing_free_heap() {
    let mut tick = tokio::time::interval(RELEASE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let released = tokio::task::spawn_blocking(|| {
            let Heap { in_use, free } = heap();
            LAST_IN_USE.store(in_use, Ordering::Relaxed);
            LAST_FREE.store(free, Ordering::Relaxed);
            (free > KEEP_FREE).then(|| {
                release_free_heap();
                free
            })
        })
        .await;
        if let Ok(Some(free)) = released {
            tracing::debug!(free, "free heap released to the system");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The first look comes at once and is kept for scrapes.
    #[tokio::test]
    async fn the_housekeeping_tick_keeps_what_the_heap_holds() {
        let housekeeping = tokio::spawn(keep_releasing_free_heap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while last_seen_heap().in_use == 0 {
            assert!(Instant::now() < deadline, "no look at the heap in 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        housekeeping.abort();
    }
}
