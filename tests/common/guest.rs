//! A tiny multiboot guest (tests/guest/vga-noise.S) that keeps the VGA text
//! screen changing, so QEMU's display channel carries a continuous load of a few
//! MB/s. Assembled once per test binary with binutils (`as`, `ld`).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The guest kernel's path, built on first use; None if binutils is missing
/// (callers skip, or fail when CI is set).
pub fn vga_noise_kernel() -> Option<PathBuf> {
    static KERNEL: OnceLock<Option<PathBuf>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vga-noise.S");
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let obj = dir.join(format!("vga-noise-{}.o", std::process::id()));
            let elf = dir.join(format!("vga-noise-{}.elf", std::process::id()));
            let ok = |mut c: std::process::Command| c.status().is_ok_and(|s| s.success());
            let mut a = std::process::Command::new("as");
            a.args(["--32", "-o"]).arg(&obj).arg(&src);
            let mut l = std::process::Command::new("ld");
            l.args(["-m", "elf_i386", "-Ttext", "0x100000", "-o"])
                .arg(&elf)
                .arg(&obj);
            (ok(a) && ok(l)).then_some(elf)
        })
        .clone()
}

/// The guest kernel for a test that needs display load: None (after saying
/// why) when binutils is missing, which fails the test when CI is set.
pub fn vga_noise_kernel_or_skip() -> Option<PathBuf> {
    let k = vga_noise_kernel();
    if k.is_none() {
        assert!(std::env::var_os("CI").is_none(), "binutils missing in CI");
        eprintln!("skipping: binutils (as, ld) not installed");
    }
    k
}
