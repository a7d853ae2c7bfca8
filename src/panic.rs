//! What a panic (a bug in spiced) does. Every panic is logged at priority 2
//! (crit) with where it happened. One inside a tokio task ends that task
//! only: tokio catches it, and the daemon treats the task's end as a failure
//! (a lost channel or session, retried). One anywhere else (the event loop
//! itself, the CLI, a thread of spiced's own) would leave a daemon that
//! cannot go on, so the process exits at once with
//! [`crate::exit::INTERNAL_ERROR`] (70), which the units restart, instead of
//! Rust's unexplained 101 and a stack unwound through a runtime that may
//! wait for ever on blocking work.

use std::time::Duration;

/// How long the hook waits for stderr to take the crit line before exiting.
const FLUSH: Duration = Duration::from_millis(300);

/// Installs the hook. The binary calls it first thing.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "?".into());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        // block_on's own future has no task id: only a spawned task's panic
        // is caught (by tokio).
        let in_task = tokio::task::try_id().is_some();
        let backtrace = std::backtrace::Backtrace::capture();
        let mut line = format!(
            "panic (a bug in spiced) in thread {thread} at {at}: {message}; {}",
            if in_task {
                "the task ends and spiced carries on"
            } else {
                "exiting with status 70"
            }
        );
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            line.push_str(&format!("\n{backtrace}"));
        }
        crate::logging::direct(2, &line);
        if !in_task {
            crate::stderr::flush(FLUSH);
            std::process::exit(i32::from(crate::exit::INTERNAL_ERROR));
        }
    }));
}

#[cfg(test)]
mod tests {
    /// Set in the children of `a_panic_exits_70_and_a_task_panic_does_not`.
    const CHILD: &str = "SPICED_TEST_PANIC";

    /// The child half: panics as `SPICED_TEST_PANIC` says, with or without
    /// the hook.
    #[test]
    fn panic_as_told() {
        let Ok(how) = std::env::var(CHILD) else {
            return;
        };
        if how != "bare" {
            super::install();
        }
        if how == "task" {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let r =
                rt.block_on(async { tokio::spawn(async { panic!("injected in a task") }).await });
            assert!(r.unwrap_err().is_panic());
            assert!(crate::stderr::flush(super::FLUSH));
            return;
        }
        panic!("injected");
    }

    fn child(how: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "panic::tests::panic_as_told", "--test-threads=1"])
            .env(CHILD, how)
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    }

    /// A panic outside a task: one crit line with the place and the
    /// message, exit 70 (without the hook: Rust's 101, unexplained). A panic
    /// inside a task: logged, and the process goes on.
    #[test]
    fn a_panic_exits_70_and_a_task_panic_does_not() {
        let bare = child("bare");
        assert_eq!(bare.status.code(), Some(101), "the default");
        let out = child("main");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{err}");
        assert!(
            err.contains("spiced: panic (a bug in spiced) in thread ")
                && err.contains("src/panic.rs:")
                && err.contains(": injected; exiting with status 70"),
            "{err}"
        );
        let out = child("task");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains(": injected in a task; the task ends and spiced carries on"),
            "{err}"
        );
    }
}
