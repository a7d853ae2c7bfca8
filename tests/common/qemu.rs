//! A real SPICE server for integration tests: QEMU 7.2 (TCG, no guest disk) with the
//! lab's 11 SPICE channels on 127.0.0.1, as a child of the test.
//!
//! Channels offered: main + display, inputs, cursor, playback, record, smartcard,
//! usbredir x2, port (`org.spice-space.lab.0`), webdav; `heads: 2` adds display:1
//! and cursor:1 (13). The process is named `spiced-test-qemu`; it is SIGKILLed and
//! reaped on drop, and dies with the test binary (see `spawn_tied`).

use super::certs::Certs;
use super::qmp::{Qmp, SpiceChannel};
use super::{free_port, have_program, kill_child, listening_ports, spawn_tied, wait_until};
use serde_json::Value;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long QEMU may take to listen (measured: 33-118 ms on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh-port attempts when another process grabs a port we picked.
const PORT_ATTEMPTS: usize = 8;

/// `true` if qemu-system-x86_64 can be run. Without it: panics when env `CI` is set
/// (CI must never silently skip), else prints a skip notice and returns `false`.
pub fn require_qemu() -> bool {
    if have_program("qemu-system-x86_64") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("qemu-system-x86_64 not installed (run scripts/install-deps.sh)");
    }
    eprintln!("skipping: qemu-system-x86_64 not installed");
    false
}

/// What QEMU to start. `QemuOpts::default()` is a plain, ticket-less server on a
/// free port with one head and the VM running.
#[derive(Debug, Clone)]
pub struct QemuOpts<'a> {
    /// SPICE ticket (via `-object secret` + `password-secret=`); `None` =
    /// `disable-ticketing=on`.
    pub password: Option<String>,
    /// Serve TLS on a second port with these certificates as `x509-dir`.
    pub tls: Option<&'a Certs>,
    /// `tls-channel=NAME` for each (`"default"` = every channel, or e.g. `"inputs"`).
    pub tls_channels: Vec<String>,
    /// Serve the plain port (set `false` with `tls` for a TLS-only server).
    pub plain_port: bool,
    /// Start with the VM stopped (`-S`): no firmware runs, the display is quiet.
    pub paused: bool,
    /// 1 or 2 display heads.
    pub heads: u8,
    /// More QEMU arguments, appended last.
    pub extra_args: Vec<String>,
    /// Run QEMU inside this network namespace (`ip netns exec NAME`, see `NetNs`).
    pub netns: Option<String>,
}

impl Default for QemuOpts<'_> {
    fn default() -> Self {
        QemuOpts {
            password: None,
            tls: None,
            tls_channels: Vec::new(),
            plain_port: true,
            paused: false,
            heads: 1,
            extra_args: Vec::new(),
            netns: None,
        }
    }
}

impl<'a> QemuOpts<'a> {
    /// A plain server requiring `password`.
    pub fn with_password(password: &str) -> Self {
        QemuOpts {
            password: Some(password.to_owned()),
            ..Default::default()
        }
    }

    /// A server with a plain and a TLS port (no channel forced onto TLS).
    pub fn with_tls(certs: &'a Certs) -> Self {
        QemuOpts {
            tls: Some(certs),
            ..Default::default()
        }
    }
}

/// The owned launch parameters, kept for `restart_same_ports`.
#[derive(Debug, Clone)]
struct Launch {
    password: Option<String>,
    x509_dir: Option<PathBuf>,
    tls_channels: Vec<String>,
    paused: bool,
    heads: u8,
    extra_args: Vec<String>,
    netns: Option<String>,
}

/// Why one start attempt failed.
enum StartError {
    /// spice-server could not bind a port: pick others (or wait) and retry.
    AddrInUse,
    Fatal(String),
}

/// A running QEMU SPICE server. Methods take `&self` so an `Arc<Qemu>` can be
/// shared with `spawn_blocking` closures.
#[derive(Debug)]
pub struct Qemu {
    launch: Launch,
    port: Option<u16>,
    tls_port: Option<u16>,
    /// Holds the QMP socket and the stderr log; removed on drop.
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    pid: Mutex<u32>,
    qmp: Mutex<Option<Qmp>>,
    start_time: Mutex<Duration>,
    /// The password `restart_same_ports` starts QEMU with, once changed.
    restart_password: Mutex<Option<String>>,
}

impl Qemu {
    /// Starts QEMU and returns once every SPICE port listens and QMP answers.
    /// Panics (with QEMU's stderr) if it cannot start within 10 s.
    pub fn start(opts: QemuOpts<'_>) -> Qemu {
        assert!(matches!(opts.heads, 1 | 2), "heads must be 1 or 2");
        assert!(
            opts.plain_port || opts.tls.is_some(),
            "a server needs a plain port or a TLS port"
        );
        let launch = Launch {
            password: opts.password,
            x509_dir: opts.tls.map(|c| c.dir().to_path_buf()),
            tls_channels: opts.tls_channels,
            paused: opts.paused,
            heads: opts.heads,
            extra_args: opts.extra_args,
            netns: opts.netns,
        };
        let dir = tempfile::Builder::new()
            .prefix("spiced-qemu-")
            .tempdir()
            .expect("temp dir for QEMU");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = opts.plain_port.then(free_port);
            let tls_port = launch.x509_dir.as_ref().map(|_| loop {
                let p = free_port();
                if Some(p) != port {
                    break p;
                }
            });
            let t0 = Instant::now();
            match spawn(&launch, dir.path(), port, tls_port, t0 + START_TIMEOUT) {
                Ok((child, qmp)) => {
                    let elapsed = t0.elapsed();
                    let pid = child.id();
                    return Qemu {
                        launch,
                        port,
                        tls_port,
                        dir,
                        child: Mutex::new(Some(child)),
                        pid: Mutex::new(pid),
                        qmp: Mutex::new(Some(qmp)),
                        start_time: Mutex::new(elapsed),
                        restart_password: Mutex::new(None),
                    };
                }
                Err(StartError::AddrInUse) => last = "port taken".into(),
                Err(StartError::Fatal(msg)) => panic!("QEMU did not start: {msg}"),
            }
        }
        panic!("QEMU did not start after {PORT_ATTEMPTS} port picks: {last}");
    }

    /// The plain SPICE port (panics for a TLS-only server).
    pub fn port(&self) -> u16 {
        self.port.expect("this QEMU has no plain port")
    }

    /// The TLS SPICE port (panics without `tls`).
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("this QEMU has no TLS port")
    }

    /// Both ports, as configured.
    pub fn ports(&self) -> (Option<u16>, Option<u16>) {
        (self.port, self.tls_port)
    }

    /// The current (last started) QEMU's pid.
    pub fn pid(&self) -> u32 {
        *lock(&self.pid)
    }

    /// How long the last start took, spawn to ready.
    pub fn start_time(&self) -> Duration {
        *lock(&self.start_time)
    }

    /// The QMP connection (held open for QEMU's life; events are buffered in it),
    /// e.g. `qemu.qmp().set_password("pw")`. Keep the guard short: other callers
    /// wait for it. Panics after `kill()` until `restart_same_ports()`.
    pub fn qmp(&self) -> QmpGuard<'_> {
        let guard = lock(&self.qmp);
        assert!(guard.is_some(), "QEMU is not running: no QMP");
        QmpGuard(guard)
    }

    /// Gives the server a new SPICE password that never expires. `set_password`
    /// alone keeps an earlier expiry (after `expire_password now` the new one
    /// would still be refused), so both commands are always needed.
    pub fn new_password(&self, password: &str) {
        let mut qmp = self.qmp();
        qmp.set_password(password).expect("set_password");
        qmp.expire_password("never").expect("expire_password never");
    }

    /// From now on `restart_same_ports` starts QEMU with `password` (a server
    /// restarted after its password changed keeps the new one, as a broker would
    /// configure it), so no client can link with the old one in between.
    pub fn set_restart_password(&self, password: &str) {
        *lock(&self.restart_password) = Some(password.to_owned());
    }

    /// The QMP socket path (only one client at a time: `Qemu` already holds one).
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// The SPICE channels connected right now (query-spice).
    pub fn channels(&self) -> Vec<SpiceChannel> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_qmp(&self.qmp, |q| q.query_spice())
        }));
        r.unwrap_or_else(|e| {
            // QMP broke: say whether QEMU died and what it printed.
            panic!(
                "{}; QEMU running: {}; its stderr:\n{}",
                e.downcast_ref::<String>()
                    .map_or("QMP failed", String::as_str),
                self.is_running(),
                self.stderr_text()
            )
        })
    }

    /// The SPICE channels connected right now; None while QEMU is down, frozen
    /// or its QMP fails (never panics: for monitors that run through faults).
    pub fn try_channels(&self) -> Option<Vec<SpiceChannel>> {
        lock(&self.qmp).as_mut()?.try_query_spice()
    }

    /// How many SPICE channels are connected right now.
    pub fn connected_channel_count(&self) -> usize {
        self.channels().len()
    }

    /// Polls query-spice until exactly `n` channels are connected; false on timeout.
    pub fn wait_channel_count(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.connected_channel_count() == n)
    }

    /// `wait_channel_count` for async tests: polls with `tokio::time::sleep` so the
    /// runtime keeps driving the client under test (each query takes ~1 ms).
    pub async fn wait_channel_count_async(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.connected_channel_count() == n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Qmp::wait_event` for async tests: never blocks the runtime for long.
    pub async fn wait_event_async(&self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = with_qmp(&self.qmp, |q| q.wait_event(name, Duration::from_millis(1)));
            if got.is_some() || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where QEMU's stderr goes (every start of this `Qemu` appends to it).
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// QEMU's stderr so far, e.g. to assert that spiced caused no spice warning.
    pub fn stderr_text(&self) -> String {
        std::fs::read(self.stderr_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the QEMU process is still running (a stopped one counts).
    pub fn is_running(&self) -> bool {
        let mut child = lock(&self.child);
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs QEMU, reaps it and returns once its SPICE ports no longer listen.
    pub fn kill(&self) {
        *lock(&self.qmp) = None;
        if let Some(mut c) = lock(&self.child).take() {
            kill_child(&mut c);
        }
        let ports: Vec<u16> = [self.port, self.tls_port].into_iter().flatten().collect();
        let free = wait_until(START_TIMEOUT, || {
            let table = tcp_table(self.launch.netns.as_deref(), None);
            let listening = listening_ports(&table);
            ports.iter().all(|p| !listening.contains(p))
        });
        assert!(free, "ports {ports:?} still listening after kill");
    }

    /// Freezes QEMU (SIGSTOP): the kernel still ACKs, the application is silent.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Resumes a `stop()`ped QEMU (SIGCONT).
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        assert!(self.is_running(), "QEMU is not running");
        // SAFETY: kill(2) on our own live child's pid; it is not reaped yet, so the
        // pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Kills QEMU if it runs, waits for the ports to be free and starts a new QEMU
    /// with the same options on the same ports (a server restart as a client sees
    /// it). Returns once it is ready; a fresh QMP connection replaces the old one.
    pub fn restart_same_ports(&self) {
        self.kill();
        let t0 = Instant::now();
        let deadline = t0 + START_TIMEOUT;
        let mut launch = self.launch.clone();
        if let Some(pw) = lock(&self.restart_password).clone() {
            launch.password = Some(pw);
        }
        loop {
            match spawn(&launch, self.dir.path(), self.port, self.tls_port, deadline) {
                Ok((child, qmp)) => {
                    *lock(&self.pid) = child.id();
                    *lock(&self.child) = Some(child);
                    *lock(&self.qmp) = Some(qmp);
                    *lock(&self.start_time) = t0.elapsed();
                    return;
                }
                // A client's lingering socket can hold the port a moment longer.
                Err(StartError::AddrInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(StartError::AddrInUse) => panic!("restart: ports still in use"),
                Err(StartError::Fatal(msg)) => panic!("QEMU did not restart: {msg}"),
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        *lock(&self.qmp) = None;
        if let Some(mut c) = lock(&self.child).take() {
            kill_child(&mut c);
        }
    }
}

/// Exclusive access to a running QEMU's QMP connection.
#[derive(Debug)]
pub struct QmpGuard<'a>(MutexGuard<'a, Option<Qmp>>);

impl std::ops::Deref for QmpGuard<'_> {
    type Target = Qmp;
    fn deref(&self) -> &Qmp {
        self.0.as_ref().expect("checked in Qemu::qmp")
    }
}

impl std::ops::DerefMut for QmpGuard<'_> {
    fn deref_mut(&mut self) -> &mut Qmp {
        self.0.as_mut().expect("checked in Qemu::qmp")
    }
}

/// Runs `f` on the live QMP connection (panics if QEMU was killed).
fn with_qmp<T>(qmp: &Mutex<Option<Qmp>>, f: impl FnOnce(&mut Qmp) -> T) -> T {
    let mut guard = lock(qmp);
    f(guard.as_mut().expect("QEMU is not running: no QMP"))
}

/// A poisoned lock only means another test thread panicked; the data is still fine.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The /proc/net/tcp table of the namespace QEMU runs in: that of `pid` while it
/// lives, else the test's own or the named netns's.
fn tcp_table(netns: Option<&str>, pid: Option<u32>) -> String {
    if let Some(pid) = pid {
        return std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    }
    match netns {
        None => std::fs::read_to_string("/proc/net/tcp").unwrap_or_default(),
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/tcp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
    }
}

/// QEMU's `-object`/`-spice` option syntax doubles a literal comma.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

fn qemu_args(launch: &Launch, qmp: &Path, port: Option<u16>, tls_port: Option<u16>) -> Vec<String> {
    let mut spice = String::from("addr=127.0.0.1");
    if let Some(p) = port {
        spice.push_str(&format!(",port={p}"));
    }
    if launch.password.is_some() {
        spice.push_str(",password-secret=spicepw");
    } else {
        spice.push_str(",disable-ticketing=on");
    }
    if let (Some(dir), Some(p)) = (&launch.x509_dir, tls_port) {
        let dir = opt_escape(&dir.to_string_lossy());
        spice.push_str(&format!(",tls-port={p},x509-dir={dir}"));
        for c in &launch.tls_channels {
            spice.push_str(&format!(",tls-channel={}", opt_escape(c)));
        }
    }
    let mut a: Vec<String> = [
        "-name",
        "spiced-test,process=spiced-test-qemu",
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-m",
        "64",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-device",
        "qxl-vga,id=video0",
    ]
    .map(String::from)
    .into();
    if launch.heads == 2 {
        a.extend(["-device".into(), "qxl,id=video1".into()]);
    }
    if let Some(pw) = &launch.password {
        a.push("-object".into());
        a.push(format!("secret,id=spicepw,data={}", opt_escape(pw)));
    }
    a.push("-spice".into());
    a.push(spice);
    a.extend(
        [
            "-audiodev",
            "spice,id=snd0",
            "-device",
            "intel-hda",
            "-device",
            "hda-duplex,audiodev=snd0",
            "-device",
            "qemu-xhci,id=xhci",
            "-chardev",
            "spicevmc,name=usbredir,id=usbredir0",
            "-device",
            "usb-redir,chardev=usbredir0,bus=xhci.0",
            "-chardev",
            "spicevmc,name=usbredir,id=usbredir1",
            "-device",
            "usb-redir,chardev=usbredir1,bus=xhci.0",
            "-device",
            "usb-ccid,bus=xhci.0",
            "-chardev",
            "spicevmc,name=smartcard,id=smartcard0",
            "-device",
            "ccid-card-passthru,chardev=smartcard0",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            "spicevmc,name=vdagent,id=vdagent0",
            "-device",
            "virtserialport,bus=vser0.0,chardev=vdagent0,name=com.redhat.spice.0",
            "-chardev",
            "spiceport,name=org.spice-space.webdav.0,id=webdav0",
            "-device",
            "virtserialport,bus=vser0.0,chardev=webdav0,name=org.spice-space.webdav.0",
            "-chardev",
            "spiceport,name=org.spice-space.lab.0,id=port0",
            "-device",
            "virtserialport,bus=vser0.0,chardev=port0,name=org.spice-space.lab.0",
        ]
        .map(String::from),
    );
    a.push("-qmp".into());
    a.push(format!("unix:{},server=on,wait=off", qmp.display()));
    if launch.paused {
        a.push("-S".into());
    }
    a.extend(launch.extra_args.iter().cloned());
    a
}

/// One start attempt on the given ports; ready = ports listen + QMP negotiated +
/// query-spice reports those ports.
fn spawn(
    launch: &Launch,
    dir: &Path,
    port: Option<u16>,
    tls_port: Option<u16>,
    deadline: Instant,
) -> Result<(Child, Qmp), StartError> {
    let qmp_path = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_path); // a stale socket from the last run
    let log_path = dir.join("stderr.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| StartError::Fatal(format!("open {}: {e}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let args = qemu_args(launch, &qmp_path, port, tls_port);
    let mut cmd = match &launch.netns {
        None => Command::new("qemu-system-x86_64"),
        Some(ns) => {
            // ip execs QEMU in place: the child's pid is QEMU's.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut child = spawn_tied(cmd).map_err(|e| StartError::Fatal(format!("spawn: {e}")))?;
    let pid = child.id();
    let ports: Vec<u16> = [port, tls_port].into_iter().flatten().collect();
    let attempt_log = || {
        let all = std::fs::read(&log_path).unwrap_or_default();
        let from = usize::try_from(log_start).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = attempt_log();
            if text.contains("binding socket") || text.contains("Failed to open SPICE sockets") {
                return Err(StartError::AddrInUse);
            }
            return Err(StartError::Fatal(format!("exited ({status}): {text}")));
        }
        let listening = listening_ports(&tcp_table(None, Some(pid)));
        if ports.iter().all(|p| listening.contains(p)) && qmp_path.exists() {
            let left = deadline.saturating_duration_since(Instant::now());
            match Qmp::connect(&qmp_path, left.max(Duration::from_millis(100))) {
                Ok(mut qmp) => {
                    let info = qmp
                        .execute("query-spice", None)
                        .map_err(|e| StartError::Fatal(format!("query-spice: {e}")))?;
                    let reported = |k: &str| info.get(k).and_then(Value::as_u64);
                    let ok = port.is_none_or(|p| reported("port") == Some(u64::from(p)))
                        && tls_port.is_none_or(|p| reported("tls-port") == Some(u64::from(p)));
                    if !ok {
                        kill_child(&mut child);
                        return Err(StartError::Fatal(format!("query-spice disagrees: {info}")));
                    }
                    return Ok((child, qmp));
                }
                Err(_) if Instant::now() < deadline => {}
                Err(e) => {
                    kill_child(&mut child);
                    return Err(StartError::Fatal(format!(
                        "QMP: {e}; stderr: {}",
                        attempt_log()
                    )));
                }
            }
        }
        if Instant::now() >= deadline {
            kill_child(&mut child);
            return Err(StartError::Fatal(format!(
                "ports {ports:?} not ready in time; stderr: {}",
                attempt_log()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
