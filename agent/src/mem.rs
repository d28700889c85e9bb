//! Returning memory to the operating system. glibc's allocator keeps freed
//! memory in its arenas; after a large apply (argo-cd's CRDs parse into tens
//! of MiB of short-lived values) the agent would otherwise stay at its peak
//! resident size while idle. Both calls are no-ops on other allocators.

/// Limit glibc to `n` malloc arenas (fewer arenas, less fragmentation for a
/// small async process). Call once, early, before threads start.
pub fn limit_arenas(n: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX is a valid parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Give free heap pages back to the operating system (after large, short-lived work).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
