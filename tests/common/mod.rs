//! Test harness shared by every integration test: a real QEMU SPICE server
//! (`qemu`), its QMP monitor (`qmp`), throwaway TLS certificates (`certs`), a real
//! HTTP CONNECT proxy (`proxy`), a SPICE-aware CONNECT proxy that closes chosen
//! channels like Kerbside's firewall (`firewall`), network namespaces for black-hole
//! faults (`netns`) and a console.vv writer.
//!
//! Every process started here is a child of the test and is SIGKILLed and reaped
//! on drop, so nothing outlives a test. Each test should own its QEMU: a second
//! SPICE client linking to the same QEMU takes the session over.
//!
//! Use from a test binary with `mod common;`. Not every binary uses every helper,
//! hence the module-wide `dead_code` allowance.
#![allow(dead_code, unused_imports)]

/// SPICE channel type numbers (query-spice `channel-type`, the link message).
pub mod channel_types {
    pub const MAIN: u8 = 1;
    pub const DISPLAY: u8 = 2;
    pub const INPUTS: u8 = 3;
    pub const CURSOR: u8 = 4;
    pub const PLAYBACK: u8 = 5;
    pub const RECORD: u8 = 6;
    pub const SMARTCARD: u8 = 8;
    pub const USBREDIR: u8 = 9;
    pub const PORT: u8 = 10;
    pub const WEBDAV: u8 = 11;
}

pub mod certs;
pub mod display;
pub mod firewall;
pub mod guest;
pub mod journal;
pub mod netns;
pub mod proxy;
pub mod qemu;
pub mod qmp;
pub mod spiced;
pub mod xspice;

pub use certs::Certs;
pub use firewall::{EndedBy, Firewall, Tunnel};
pub use guest::{vga_noise_kernel, vga_noise_kernel_or_skip};
pub use netns::NetNs;
pub use proxy::Tinyproxy;
pub use qemu::{require_qemu, Qemu, QemuOpts, QmpGuard};
pub use qmp::{Qmp, QmpError, SpiceChannel};
pub use spiced::Spiced;
pub use xspice::{require_xspice, Xspice};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes `dir/console.vv` with a `[virt-viewer]` group, `type=spice` and then
/// `fields` in order. Values are escaped as GKeyFile does (`\n`, `\t`, `\r`, `\\`,
/// a leading space as `\s`), so a PEM text can be passed as `ca` directly.
pub fn write_vv(dir: &Path, fields: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from("[virt-viewer]\ntype=spice\n");
    for (key, value) in fields {
        text.push_str(key);
        text.push('=');
        text.push_str(&keyfile_escape(value));
        text.push('\n');
    }
    let path = dir.join("console.vv");
    std::fs::write(&path, text).expect("write console.vv");
    path
}

/// GKeyFile value escaping (the inverse of what remote-viewer's parser undoes).
fn keyfile_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' if i == 0 => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// A port that was free on 127.0.0.1 a moment ago. Another process may take it
/// before it is used; callers that bind it retry on EADDRINUSE.
///
/// Picked at random *below* the kernel's ephemeral range: a client reconnecting to
/// a killed server's port could otherwise be handed that very port as its own
/// source port and connect to itself (TCP simultaneous open), and an ephemeral
/// source port of some other test could block a server restart.
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = if ephemeral_start > 12000 {
        (10000, ephemeral_start - 1)
    } else {
        (ephemeral_start.saturating_add(30000), 65000) // an odd range: go above it
    };
    for _ in 0..200 {
        let p = lo + u16::try_from(random_u64() % u64::from(hi - lo)).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// 64 random bits without a new dependency: std's randomly keyed hasher.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// Path of the spiced binary Cargo built for this test run.
pub fn spiced_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spiced")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if a TCP connect to 127.0.0.1:`port` succeeds within 1 s.
pub fn port_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Whether `program` is an executable file in `PATH` (or in /usr/sbin and /sbin,
/// which a non-root PATH often lacks).
pub fn have_program(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .any(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The LISTEN-state TCP ports bound to 127.0.0.1 or 0.0.0.0 in a `/proc/.../net/tcp`
/// table (the table of whichever network namespace it was read from).
pub fn listening_ports(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            let (ip, port) = local.split_once(':')?;
            let loopback_or_any = ip == "0100007F" || ip == "00000000";
            (state == "0A" && loopback_or_any)
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// Sends SIGKILL to `child` and reaps it (so no zombie or orphan remains).
pub(crate) fn kill_child(child: &mut std::process::Child) {
    // SIGKILL also ends a SIGSTOPped process; errors mean it is already gone.
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `cmd` so that the child gets SIGKILL when the test process dies (e.g. a
/// CI timeout kills the test binary): no QEMU or proxy is ever left behind.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process, so
/// every spawn goes through one spawner thread that lives as long as the process.
/// Spawning from the test thread itself would kill the child when a helper thread
/// (e.g. tokio's `spawn_blocking` pool) that started it retires.
pub fn spawn_tied(mut cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Job = (
        std::process::Command,
        mpsc::Sender<std::io::Result<std::process::Child>>,
    );
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    // SAFETY: the hook only calls prctl, which is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spiced-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// RFC 4648 base64 with padding (the Basic credentials' encoding): spiced's own.
pub use ::spiced::base64::encode as base64;

/// xorshift64*: small, seeded, replayable (fuzzing, the chaos soak).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The TCP connections (local port, remote port) that process `pid` holds, from its
/// fds and the /proc/net/tcp table of its namespace. Only ESTABLISHED ones.
pub fn tcp_connections_of(pid: i32) -> Vec<(u16, u16)> {
    let mut inodes = std::collections::BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(ino.to_string());
                }
            }
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port = |addr: &str| {
        addr.split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            (*state == "01" && inodes.contains(*inode)).then_some((port(local)?, port(remote)?))
        })
        .collect()
}
