//! Process-wide memory settings for the binaries.

/// Makes glibc's allocator keep freed memory for reuse instead of handing it back to the
/// kernel at once. A download frees and allocates receive buffers of a few hundred KiB
/// all the time; with glibc's defaults each new one was fresh memory, which the kernel
/// zeroes page by page: 37,000 page faults and 8 % of the CPU time of a 610 MiB image
/// copy, down to 3,200 with this, for about 3 MiB more peak memory (see
/// docs/performance.md). Call it first thing in `main`; it does nothing on other
/// platforms.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under the allocator's own lock.
    unsafe {
        // A fixed mmap threshold (which also turns off glibc's dynamic one): blocks up to
        // 32 MiB (an 8 MiB S3 part included) come from the heap, not a fresh mapping.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        // Free memory at the top of a heap is given back only above 256 MiB.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024 * 1024);
    }
}
