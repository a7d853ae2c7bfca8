//! Network namespaces for faults loopback alone cannot give: a server and client
//! inside a namespace with only its own `lo`, where nftables input rules drop a
//! port's packets (a black hole: no RST, no FIN, the kernel just goes silent) or a
//! share of them (packet loss). Needs root, `ip` and `nft`.

use super::have_program;
use std::process::Command;

/// The nft table the helpers own inside a namespace.
const TABLE: &str = "spiced_faults";

/// A network namespace, deleted on drop (`here()`: the current one, kept).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Root and both `ip` and `nft` present.
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        root && have_program("ip") && have_program("nft")
    }

    /// Creates `NAME-<pid>` (the pid keeps parallel test runs on one machine apart;
    /// use `name()` for the real name) with `lo` up. Panics on failure.
    pub fn create(name: &str) -> NetNs {
        let name = format!("{name}-{}", std::process::id());
        // A namespace left by a killed earlier run with this pid: start clean.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace this process runs in (e.g. one `unshare --net` made for
    /// it): rules go into it directly, and nothing is deleted on drop.
    pub fn here() -> NetNs {
        NetNs {
            name: String::new(),
        }
    }

    /// The namespace's real name (for `QemuOpts::netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME ...`).
    pub fn command(&self, program: &str) -> Command {
        if self.name.is_empty() {
            return Command::new(program);
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Drops every TCP segment to or from `port` inside the namespace (both rules on
    /// the input hook, as every packet on `lo` passes input once). Additive.
    pub fn blackhole_port(&self, port: u16) {
        self.nft(&format!("tcp dport {port} drop\n    tcp sport {port} drop"));
    }

    /// Drops `percent` % of client-to-server segments to `port`, at random.
    pub fn lossy_port(&self, port: u16, percent: u8) {
        self.nft(&format!(
            "tcp dport {port} numgen random mod 100 < {percent} drop"
        ));
    }

    /// Removes every rule added here: traffic flows again.
    pub fn heal(&self) {
        let _ = self
            .command("nft")
            .args(["delete", "table", "inet", TABLE])
            .output();
    }

    fn nft(&self, rules: &str) {
        let script = format!(
            "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {rules}\n  }}\n}}\n"
        );
        let path =
            std::env::temp_dir().join(format!("{}-{}-{TABLE}.nft", self.name, std::process::id()));
        std::fs::write(&path, script).expect("write nft script");
        let out = self
            .command("nft")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run nft");
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
