//! Runs the real `spiced` binary for a test: stderr (its log) goes to a file the
//! test can poll; signals and the exit status are at hand. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub struct Spiced {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    status: Option<i32>,
}

impl Spiced {
    /// Starts `spiced --vv VV --config <toml> [extra args]`. The TOML text is
    /// written to a temp file; pass "" for defaults.
    pub fn start(vv: &Path, toml: &str, extra: &[&str]) -> Spiced {
        Spiced::start_env(vv, toml, extra, &[])
    }

    /// `start` with extra environment variables, set after the default
    /// `RUST_LOG=info` so e.g. `("RUST_LOG", "info,spiced::report=debug")` wins.
    pub fn start_env(vv: &Path, toml: &str, extra: &[&str], env: &[(&str, &str)]) -> Spiced {
        let cmd = std::process::Command::new(super::spiced_bin());
        Spiced::start_cmd_env(cmd, vv, toml, extra, env)
    }

    /// `start` with a prepared command that runs the spiced binary, e.g.
    /// `ns.command(spiced_bin())` to run it inside a network namespace (`ip netns
    /// exec` execs in place, so the child's pid is spiced's and signals reach it).
    /// The same arguments, log file and drop behaviour as `start`.
    pub fn start_cmd(cmd: std::process::Command, vv: &Path, toml: &str, extra: &[&str]) -> Spiced {
        Spiced::start_cmd_env(cmd, vv, toml, extra, &[])
    }

    fn start_cmd_env(
        mut cmd: std::process::Command,
        vv: &Path,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Spiced {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("spiced.toml");
        std::fs::write(&cfg, toml).expect("write config");
        let log = dir.path().join("spiced.log");
        let logf = std::fs::File::create(&log).expect("log file");
        cmd.arg("--vv")
            .arg(vv)
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file"))
            .stderr(logf);
        let child = super::spawn_tied(cmd).expect("start spiced");
        Spiced {
            child,
            log,
            _dir: dir,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Everything spiced wrote to stdout so far.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        std::fs::read(self._dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Everything spiced wrote to stderr (its log) so far, as bytes.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the log contains `needle` `count` times; false on timeout.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log().matches(needle).count() >= count)
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// The exit code once it exited (None while running). A signal death is 128+N.
    pub fn try_exit(&mut self) -> Option<i32> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                self.status = Some(st.code().unwrap_or(128 + st.signal().unwrap_or(0)));
            }
        }
        self.status
    }

    /// Waits for the exit; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.try_exit() {
                return Some(c);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (10 s); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Spiced {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- spiced log ----\n{}", self.log());
        }
    }
}
