//! Giving the memory of a rare, large job back to the kernel.
//!
//! A disconnect report (the capture, its pcap and the zip: up to about three
//! times `report.capture_max_bytes`) and a PNG of the screen are built on a
//! blocking-pool thread. glibc keeps what that thread freed in the thread's
//! arena, and after the first large free it raises its mmap threshold, so the
//! next large buffer is carved from the arena too and stays resident after
//! it is freed. Measured against QEMU with a full 4 MiB capture: RSS went
//! from 23 MB to 34 MB after a report and stayed there until the idle thread
//! exited 10 s later, on every report but the first. Trimming at the end of
//! each such job hands the freed pages back at once.

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`);
/// nothing elsewhere. Call it on the blocking thread, after the job's
/// buffers are dropped: it walks every arena, a few microseconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
    // arenas, under their locks, and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
