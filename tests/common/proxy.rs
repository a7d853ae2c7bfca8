//! A real HTTP CONNECT proxy for tests: tinyproxy on 127.0.0.1 with a temporary
//! config, run in the foreground as a child of the test (killed on drop).

use super::{free_port, have_program, kill_child, listening_ports, spawn_tied, wait_until};
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tinyproxy.
#[derive(Debug)]
pub struct Tinyproxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// `true` if tinyproxy is installed (same `CI` rule as `require_qemu`).
    pub fn available() -> bool {
        if have_program("tinyproxy") {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("tinyproxy not installed (run scripts/install-deps.sh)");
        }
        eprintln!("skipping: tinyproxy not installed");
        false
    }

    /// Starts tinyproxy allowing CONNECT only to `connect_ports` (from 127.0.0.1
    /// clients only), with an idle `Timeout` of `timeout_secs`. Returns once it
    /// listens; panics if it cannot start within 10 s.
    pub fn start(connect_ports: &[u16], timeout_secs: u32) -> Tinyproxy {
        let dir = tempfile::Builder::new()
            .prefix("spiced-tinyproxy-")
            .tempdir()
            .expect("temp dir for tinyproxy");
        let log_path = dir.path().join("tinyproxy.log");
        let mut last = String::new();
        // A picked port can be taken before tinyproxy binds it: pick again.
        for _ in 0..8 {
            let port = free_port();
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout {timeout_secs}\nAllow 127.0.0.1\n\
                 MaxClients 64\nLogLevel Info\n"
            );
            for p in connect_ports {
                conf.push_str(&format!("ConnectPort {p}\n"));
            }
            let conf_path = dir.path().join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
            let log = File::create(&log_path).expect("create tinyproxy log");
            let log2 = log.try_clone().expect("dup log fd");
            let mut cmd = Command::new("tinyproxy");
            cmd.arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2));
            let mut child = spawn_tied(cmd).expect("spawn tinyproxy");
            let pid = child.id();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(10), || {
                if !matches!(child.try_wait(), Ok(None)) {
                    exited = true;
                    return true;
                }
                let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"));
                listening_ports(&table.unwrap_or_default()).contains(&port)
            });
            if ready && !exited {
                return Tinyproxy { child, port, dir };
            }
            kill_child(&mut child);
            last = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !exited || Instant::now() >= deadline {
                break;
            }
        }
        panic!("tinyproxy did not start: {last}");
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, as a .vv `proxy=` value.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// tinyproxy's log so far (connections, CONNECT targets, refusals).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// Kills the proxy now (every tunnel through it drops).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
