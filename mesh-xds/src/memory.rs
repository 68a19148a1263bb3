//! Memory housekeeping.
use std::time::Duration;

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

/// What the heap holds now. It walks the allocator's free lists under their locks: call it
/// off the hot path (a scrape, a housekeeping tick).
pub fn heap() -> Heap {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    Heap {
        in_use: (info.uordblks + info.hblkhd) as u64,
        free: info.fordblks as u64,
    }
}

/// How often [`keep_releasing_free_heap`] looks, and how much free heap it lets stay.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
const KEEP_FREE: u64 = 8 << 20;

/// Gives free heap back to the system whenever more than a few MiB of it has piled up: a
/// burst (ten thousand connections opened at once, a large mesh loaded) frees its memory
/// when it ends, but glibc keeps freed pages that are not at the top of the heap, so without
/// this the process would keep the burst's peak as its resident size for good. On a blocking
/// thread: both calls walk and lock the allocator's arenas.
pub async fn keep_releasing_free_heap() {
    let mut tick = tokio::time::interval(RELEASE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let released = tokio::task::spawn_blocking(|| {
            let free = heap().free;
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
