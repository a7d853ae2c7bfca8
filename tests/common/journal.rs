//! Reading a journal directory written by a real systemd-journald
//! (scripts/journald-sandbox.sh, systemd-journal-remote) with journalctl.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `journalctl --directory DIR -o json MATCHES...`: one object per entry.
pub fn journal<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    dir: &Path,
    matches: &[S],
) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(dir)
        .args(["--no-pager", "-o", "json"])
        .args(matches)
        .output()
        .expect("run journalctl");
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "journalctl {matches:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("journalctl JSON"))
        .collect()
}

/// A string field of a journal entry, "" when absent.
pub fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or("")
}
