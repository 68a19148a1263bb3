//! Memory housekeeping for processes on glibc's allocator (the control plane; the agent runs
//! on jemalloc, `mesh_agent::heap`).

/// Returns free heap pages to the system. Start-up and mesh loads parse megabytes (every mesh
/// file as JSON) and free them again; without this the allocator keeps that peak as the
/// process's resident floor.
pub fn release_free_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}
