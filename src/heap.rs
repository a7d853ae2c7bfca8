//! Keeping glibc from holding on to memory spiced has freed.
//!
//! glibc serves a large allocation (128 KiB and up) with its own mmap and
//! returns it on free, but after the first such free it raises that threshold
//! to the freed size, and its heap-trim threshold to twice that. One large
//! buffer freed (the report capture's ring doubling to 4 MiB, a primary
//! surface replaced after a mode change or a relink) and from then on every
//! buffer up to that size is carved from the heap, and up to twice that stays
//! resident after it is freed. Measured on the X desktop load (Xspice, mirror
//! on, benches/run.py): anonymous memory 12.0 MB, of which `malloc_trim`
//! gave back 3.1 MB; with the threshold pinned at its default, 9.0 MB.
//! [`pin_mmap_threshold`] pins it at start.
//!
//! A disconnect report (the capture, its pcap and the zip: up to about three
//! times `report.capture_max_bytes`) and a PNG of the screen are built on a
//! blocking-pool thread, and glibc keeps what that thread freed in the
//! thread's arena. Before the threshold was pinned, measured against QEMU
//! with a full 4 MiB capture: RSS went from 23 MB to 34 MB after a report and
//! stayed there until the idle thread exited 10 s later. Trimming at the end
//! of each such job ([`release_free_memory`]) hands the arena's freed pages
//! back at once.

/// Pins glibc's mmap threshold at its default (128 KiB), which also turns off
/// the adjustment of the trim threshold: a large buffer is always mapped on
/// its own and unmapped when freed. Call it first thing in `main`. spiced
/// allocates a buffer that size a few dozen times in 30 s of display load
/// (heaptrack, X desktop), so the extra mmap calls cost nothing
/// measurable.
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and only sets a glibc parameter;
    // it is safe to call from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

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

// Only glibc keeps the chunk header the test reads.
#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// glibc marks a chunk it mapped on its own with bit 1 (IS_MMAPPED) of
    /// the size word just before the pointer it hands out.
    fn is_mapped(p: *const u8) -> bool {
        // SAFETY: `p` comes from glibc's malloc (Rust's System allocator for
        // a byte buffer), which keeps that word in front of every chunk.
        unsafe { (p as *const usize).sub(1).read() & 2 != 0 }
    }

    const NAME: &str = "heap::tests::a_large_buffer_is_still_mapped_after_a_larger_one_was_freed";

    /// Run in a process of its own: in the test binary's process, the other
    /// tests' frees leave free chunks in the arenas, and glibc serves a
    /// request from those before it looks at the threshold.
    #[test]
    fn a_large_buffer_is_still_mapped_after_a_larger_one_was_freed() -> std::io::Result<()> {
        if std::env::var_os("SPICED_HEAP_TEST_CHILD").is_some() {
            super::pin_mmap_threshold();
            // Unpinned, freeing this would raise the threshold to 4 MiB...
            drop(std::hint::black_box(vec![1u8; 4 << 20]));
            // ...and this would come from the heap and stay there once freed.
            let b = std::hint::black_box(vec![1u8; 1 << 20]);
            assert!(is_mapped(b.as_ptr()));
            return Ok(());
        }
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--exact", NAME, "--test-threads=1"])
            .env("SPICED_HEAP_TEST_CHILD", "1")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
