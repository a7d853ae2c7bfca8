//! The chaos soak and the secrets sweep (`scripts/chaos.sh MINUTES`; not in the
//! test run, a 3-minute run in CI). One spiced against a real QEMU (the
//! display-load guest, VM paused between bursts) through a Proxmox-shaped path:
//! a `pvespiceproxy:` ticket host behind an authenticating CONNECT proxy
//! (`common::Firewall`, routing every tunnel to QEMU like Proxmox's spiceproxy).
//! A driver injects faults at random, one at a time, from a printed seed
//! (`SPICED_CHAOS_SEED` replays the order and durations; `SPICED_CHAOS_FAULTS`,
//! a comma-separated list of fault names, narrows the draw to those):
//!
//! | fault | how |
//! |---|---|
//! | `kill` | QEMU SIGKILLed, restarted on the same ports after 0.5–12 s |
//! | `freeze` | QEMU SIGSTOPped for 2–30 s, then SIGCONT |
//! | `blackhole` | nft drops every segment to/from the proxy's or QEMU's port for 2–60 s |
//! | `idle_cut` | the proxy cuts tunnels idle for 5 s, for 20–60 s |
//! | `ticket` | `expire_password now`, a new password, a fresh .vv, SIGHUP |
//! | `burst` | the VM runs (display load of a few MB/s) for 5–15 s |
//! | `sighup` | SIGHUP with the .vv unchanged |
//! | `full_spool` | the spool (a small tmpfs) filled up, then QEMU killed and restarted |
//!
//! Invariants, checked after every fault and at the end (any broken one fails):
//! - all channels are back within the fault's bound (the back-off's longest
//!   delay plus the connect timeout, plus main's timeout where a half-dead
//!   connection must first be noticed) whenever the server is reachable with a
//!   valid ticket;
//! - QMP `query-spice` (polled 4 times a second) never shows two client
//!   sessions, and spiced never reports a takeover (no kick war);
//! - every session or channel loss has a report, written within 5 s or covered by
//!   one written less than `cooldown_secs` before it (or the spool was full);
//!   no two reports closer than the cooldown; each report's cause is one the
//!   fault can produce; the spool holds only complete, readable zips;
//! - spiced's file descriptors, threads and RSS flat from the second quarter of
//!   the run to the last;
//! - QEMU's log holds no line about SPICE (except what a fault explains: the
//!   "unresponsive" drop after a black hole of 25 s or more, and at most one
//!   "Connection reset by peer" per tunnel the proxy's idle cut ended);
//! - spiced never exits;
//! - secrets sweep: the SPICE passwords, the ticket host and the proxy
//!   credentials appear, plain, base64 or URL-encoded, in no byte spiced produced:
//!   stdout, stderr, the journal (`journalctl -o export`: a real journald from
//!   `scripts/journald-sandbox.sh`), the metrics file, `spiced status`, every
//!   member of every report zip (traffic.pcap included).
//!
//! It prints a table (fault, injected, recovered, time to recover median/max)
//! and every broken invariant.

mod common;
use common::firewall::{EndedBy, Firewall, FirewallOpts};
use common::netns::NetNs;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ALL: usize = 11;
/// The ticket host Proxmox writes: `pvespiceproxy:<ticket>:<vmid>:<node>::<hash>`.
const TICKET_HOST: &str =
    "pvespiceproxy:6643a1b2:101:pve-chaos::8fa3c0de5b9e41d2a7f3e6b1c4d5a6b7c8d9e0f1";
const PROXY_USER: &str = "kioskuser7f3";
/// Characters that URL-encoding and base64 change.
const PROXY_PASS: &str = "Pr0xy/s3cret+tok=9";
/// The report cooldown the soak runs with (shorter than the default 60 s, so
/// more losses get a report to check).
const COOLDOWN: Duration = Duration::from_secs(20);
/// The back-off's longest delay (config below).
const MAX_DELAY: Duration = Duration::from_secs(16);
/// keepalive.connect_timeout_secs (default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// keepalive.main_timeout_secs (default): a frozen or black-holed server is
/// noticed within this.
const MAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// report.max_bytes: well under the tmpfs `scripts/chaos.sh` mounts (64 MiB),
/// so only the `full_spool` fault fills it.
const SPOOL_MAX_BYTES: u64 = 24 << 20;
/// The proxy's idle cut while the `idle_cut` fault lasts.
const IDLE_CUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Freeze,
    Blackhole,
    IdleCut,
    Ticket,
    Burst,
    Sighup,
    FullSpool,
}

impl Fault {
    const EVERY: [Fault; 8] = [
        Fault::Kill,
        Fault::Freeze,
        Fault::Blackhole,
        Fault::IdleCut,
        Fault::Ticket,
        Fault::Burst,
        Fault::Sighup,
        Fault::FullSpool,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Freeze => "freeze",
            Fault::Blackhole => "blackhole",
            Fault::IdleCut => "idle_cut",
            Fault::Ticket => "ticket",
            Fault::Burst => "burst",
            Fault::Sighup => "sighup",
            Fault::FullSpool => "full_spool",
        }
    }

    /// From the fault's end to all channels up, at most.
    fn bound(self) -> Duration {
        let base = MAX_DELAY + CONNECT_TIMEOUT + Duration::from_secs(5);
        match self {
            // A connection that went silent must first be declared dead.
            Fault::Freeze | Fault::Blackhole => base + MAIN_TIMEOUT,
            _ => base,
        }
    }

    /// The report causes this fault can lead to.
    fn causes(self) -> &'static [&'static str] {
        match self {
            Fault::Kill | Fault::FullSpool => {
                &["server_closed", "reset", "read_error", "connect_failed"]
            }
            Fault::Freeze | Fault::Blackhole => &[
                "keepalive_timeout",
                "dead_peer",
                "reset",
                "server_closed",
                "read_error",
                "connect_failed",
            ],
            Fault::IdleCut => &["server_closed", "idle_cut", "reset"],
            // SIGHUP, a new ticket and display load end no session by failure.
            Fault::Ticket | Fault::Burst | Fault::Sighup => &[],
        }
    }
}

/// Uniform in [lo, hi) seconds, to 0.1 s.
fn rand_secs(rng: &mut Rng, lo: f64, hi: f64) -> Duration {
    let steps = ((hi - lo) * 10.0) as usize;
    Duration::from_secs_f64(lo + rng.below(steps.max(1)) as f64 / 10.0)
}

/// One injected fault, as it happened.
#[derive(Debug, Clone)]
struct Record {
    fault: Fault,
    detail: String,
    /// When the fault started (wall clock, for the journal and the report names).
    started: SystemTime,
    /// From the fault's end to all channels up (`None`: not within the bound).
    recovered_after: Option<Duration>,
    /// The window in which a loss is attributed to this fault.
    window_end: SystemTime,
    /// The fault lasted 25 s or more.
    long: bool,
}

/// A sample of spiced's resources, taken with every channel up.
#[derive(Debug, Clone, Copy)]
struct Sample {
    fds: usize,
    threads: usize,
    rss_kb: usize,
}

fn sample(pid: i32) -> Option<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<usize> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Sample {
        fds,
        threads: field("Threads:")?,
        rss_kb: field("VmRSS:")?,
    })
}

/// Polls QMP query-spice 4 times a second and counts the polls that showed
/// more than one client session (distinct connection ids).
struct Monitor {
    stop: Arc<AtomicBool>,
    two_sessions: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(q: Arc<Qemu>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let two = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, t, v) = (Arc::clone(&stop), Arc::clone(&two), Arc::clone(&seen));
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(chans) = q.try_channels() {
                    let mut ids: Vec<i64> = chans.iter().map(|c| c.connection_id).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    if ids.len() > 1 {
                        t.fetch_add(1, Ordering::SeqCst);
                        let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
                        if v.len() < 5 {
                            v.push(format!("{chans:?}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Monitor {
            stop,
            two_sessions: two,
            seen,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.two_sessions.load(Ordering::SeqCst), seen)
    }
}

/// Fills the filesystem of `dir` (a small tmpfs) with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create ballast");
    let block = vec![0x55u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every secret in the forms that could leak: plain, URL-encoded, and base64 at
/// each of the three alignments inside a longer encoding (the part that does not
/// depend on neighbouring bytes).
fn encodings(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_string(), url_encode(secret)];
    for pad in 0..3 {
        let mut b = vec![0u8; pad];
        b.extend_from_slice(secret.as_bytes());
        let enc = base64(&b);
        // Drop the characters that mix in the padding bytes or the end.
        let skip = if pad == 0 {
            0
        } else {
            (pad * 4).div_ceil(3) + 1
        };
        let keep = (secret.len() * 4 / 3).saturating_sub(2);
        let core: String = enc.chars().skip(skip).take(keep).collect();
        if core.len() >= 8 {
            out.push(core);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// One report zip: its name's time, cause, channel, reports_skipped_since_last.
type Report = (SystemTime, String, String, u64);

/// Each readable report zip, oldest first, and what is wrong in the spool.
fn reports(spool: &Path) -> (Vec<Report>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let Ok(rd) = std::fs::read_dir(spool) else {
        return (out, bad);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lost+found" || name == "ballast" {
            continue;
        }
        if !(name.starts_with("spiced-disconnect-") && name.ends_with(".zip")) {
            bad.push(format!("unexpected file in the spool: {name}"));
            continue;
        }
        let parsed = (|| {
            let mut z = zip::ZipArchive::new(std::fs::File::open(e.path()).ok()?).ok()?;
            let mut text = String::new();
            z.by_name("disconnect-cause.json")
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            Some((
                v["cause"].as_str()?.to_owned(),
                v["channel"].as_str().unwrap_or("").to_owned(),
                v["reports_skipped_since_last"].as_u64().unwrap_or(0),
            ))
        })();
        let stamp = name
            .rsplit('-')
            .next()
            .and_then(|s| s.strip_suffix(".zip"))
            .and_then(parse_stamp);
        match (parsed, stamp) {
            (Some((cause, channel, skipped)), Some(t)) => out.push((t, cause, channel, skipped)),
            _ => bad.push(format!("unreadable report: {name}")),
        }
    }
    out.sort_by_key(|r| r.0);
    (out, bad)
}

/// `YYYYMMDDTHHMMSSZ` (UTC) to a time.
fn parse_stamp(s: &str) -> Option<SystemTime> {
    let d = s.strip_suffix('Z')?;
    let (date, time) = d.split_once('T')?;
    let n = |s: &str| s.parse::<i64>().ok();
    let (y, m, day) = (n(&date[..4])?, n(&date[4..6])?, n(&date[6..8])?);
    let (hh, mm, ss) = (n(&time[..2])?, n(&time[2..4])?, n(&time[4..6])?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?))
}

/// The journal's entries (inside `scripts/journald-sandbox.sh`), as JSON.
fn journal_json() -> Vec<Value> {
    let out = std::process::Command::new("journalctl")
        .args(["--no-pager", "-o", "json"])
        .output()
        .expect("run journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn journal_export() -> Vec<u8> {
    std::process::Command::new("journalctl")
        .args(["--no-pager", "-o", "export"])
        .output()
        .expect("run journalctl")
        .stdout
}

/// The env var's number, else `default`.
fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Soak {
    q: Arc<Qemu>,
    fw: Firewall,
    spiced: Spiced,
    vv: PathBuf,
    spool: PathBuf,
    password: String,
    passwords: Vec<String>,
    rng: Rng,
    /// Quick faults for a short run.
    scale: f64,
    /// A recovery time a fault measured itself.
    measured: Option<Option<Duration>>,
}

/// Writes the Proxmox-shaped .vv atomically (as a refresh script would).
fn write_console_vv(vv: &Path, server_port: u16, proxy_port: u16, password: &str) {
    let tmp = vv.with_extension("vv.tmp");
    let text = format!(
        "[virt-viewer]\ntype=spice\nhost={TICKET_HOST}\nport={server_port}\npassword={password}\n\
         proxy=http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{proxy_port}\ntitle=VM 101 - chaos\n"
    );
    std::fs::write(&tmp, text).expect("write .vv");
    std::fs::rename(&tmp, vv).expect("rename .vv");
}

impl Soak {
    fn write_vv(&self, password: &str) {
        write_console_vv(&self.vv, self.q.port(), self.fw.port(), password);
    }

    /// The session's connection id when every channel is up in one session.
    fn session(&self) -> Option<i64> {
        let c = self.q.try_channels()?;
        let mut ids: Vec<i64> = c.iter().map(|c| c.connection_id).collect();
        ids.dedup();
        (c.len() == ALL && ids.len() == 1).then(|| ids[0])
    }

    fn all_up(&self) -> bool {
        self.session().is_some()
    }

    /// Waits for every channel (of a session other than `not`, when given); the
    /// time it took, or None past `bound`.
    fn recover(&self, bound: Duration, not: Option<i64>) -> Option<Duration> {
        let t0 = Instant::now();
        wait_until(bound, || {
            self.session()
                .is_some_and(|id| not.is_none_or(|old| old != id))
        })
        .then(|| t0.elapsed())
    }

    fn pause_vm(&self) {
        let _ = self.q.qmp().execute("stop", None);
    }

    fn d(&mut self, lo: f64, hi: f64) -> Duration {
        rand_secs(&mut self.rng, lo * self.scale, hi * self.scale)
    }

    /// Injects `f` and returns once the fault is over; a description.
    fn inject(&mut self, f: Fault) -> String {
        match f {
            Fault::Kill => {
                let down = self.d(0.5, 12.0);
                self.q.kill();
                std::thread::sleep(down);
                self.q.restart_same_ports();
                format!("down {}s", secs(down))
            }
            Fault::Freeze => {
                let d = self.d(2.0, 30.0);
                self.q.stop();
                std::thread::sleep(d);
                self.q.cont();
                format!("frozen {}s", secs(d))
            }
            Fault::Blackhole => {
                let d = self.d(2.0, 60.0);
                let (hop, port) = if self.rng.below(2) == 0 {
                    ("proxy", self.fw.port())
                } else {
                    ("server", self.q.port())
                };
                // The namespace scripts/chaos.sh gave the test.
                let here = NetNs::here();
                here.blackhole_port(port);
                std::thread::sleep(d);
                here.heal();
                format!("{hop} port dropped {}s", secs(d))
            }
            Fault::IdleCut => {
                let d = self.d(20.0, 60.0);
                self.fw.set_idle_cut(Some(IDLE_CUT));
                std::thread::sleep(d);
                self.fw.set_idle_cut(None);
                format!("idle cut {}s for {}s", IDLE_CUT.as_secs(), secs(d))
            }
            Fault::Ticket => {
                let n = self.passwords.len();
                let new = format!("chaos/Tk+{n}={:08x}", self.rng.next() as u32);
                self.q
                    .qmp()
                    .expire_password("now")
                    .expect("expire_password now");
                self.q.set_restart_password(&new);
                self.q.new_password(&new);
                self.write_vv(&new);
                self.password = new.clone();
                self.passwords.push(new);
                self.spiced.signal(libc::SIGHUP);
                "password expired, fresh .vv, SIGHUP".into()
            }
            Fault::Burst => {
                let d = self.d(5.0, 15.0);
                let _ = self.q.qmp().execute("cont", None);
                std::thread::sleep(d);
                self.pause_vm();
                format!("VM ran {}s", secs(d))
            }
            Fault::Sighup => {
                self.spiced.signal(libc::SIGHUP);
                "SIGHUP, .vv unchanged".into()
            }
            Fault::FullSpool => {
                // The report for this loss must be due (not swallowed by the
                // cooldown), so that it meets the full disk.
                let newest = std::fs::read_dir(&self.spool)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.metadata().ok()?.modified().ok())
                    .max();
                if let Some(age) = newest.and_then(|t| t.elapsed().ok()) {
                    std::thread::sleep((COOLDOWN + Duration::from_secs(1)).saturating_sub(age));
                }
                let ballast = fill(&self.spool);
                let down = self.d(0.5, 3.0);
                let before = self.session();
                self.q.kill();
                std::thread::sleep(down);
                self.q.restart_same_ports();
                // The session comes back while the report meets the full disk;
                // then the disk is freed.
                self.measured = Some(self.recover(Fault::FullSpool.bound(), before));
                std::thread::sleep(Duration::from_secs(2));
                let _ = std::fs::remove_file(ballast);
                format!("spool full, server down {}s", secs(down))
            }
        }
    }
}

#[test]
#[ignore = "the chaos soak: run by scripts/chaos.sh MINUTES"]
fn chaos_soak() {
    assert!(require_qemu(), "the chaos soak needs QEMU");
    let minutes = env_num("SPICED_CHAOS_MINUTES", 3.0);
    let seed = std::env::var("SPICED_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| random_u64() | 1);
    let in_sandbox = std::env::var_os("JOURNAL_SANDBOX").is_some();
    let spool = std::env::var_os("SPICED_CHAOS_SPOOL").map(PathBuf::from);
    eprintln!(
        "chaos: seed {seed} ({minutes} min; replay with SPICED_CHAOS_SEED={seed}); journal: {}; tmpfs spool: {}",
        if in_sandbox { "journald sandbox" } else { "none (stderr)" },
        spool.as_ref().map_or("none".into(), |p| p.display().to_string())
    );
    let kernel = guest::vga_noise_kernel().expect("binutils (as, ld) for the display-load guest");
    let password = "chaos/Pw+0=d1e2a".to_string();
    let q = Arc::new(Qemu::start(QemuOpts {
        password: Some(password.clone()),
        paused: true,
        extra_args: vec!["-kernel".into(), kernel.display().to_string()],
        ..QemuOpts::default()
    }));
    let fw = Firewall::with(FirewallOpts {
        route: Some(std::net::SocketAddr::from(([127, 0, 0, 1], q.port()))),
        basic_auth: Some(format!("{PROXY_USER}:{PROXY_PASS}")),
        ..FirewallOpts::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let spool_dir = spool.clone().unwrap_or_else(|| dir.path().join("spool"));
    let metrics = dir.path().join("spiced.prom");
    let control = dir.path().join("spiced.sock");
    let toml = format!(
        "[log]\ntarget = \"{}\"\n[reconnect]\nmax_attempts = \"unlimited\"\nmax_delay_secs = {}\n\
         [report]\nspool_dir = {:?}\ncooldown_secs = {}\nmax_bytes = {}\n[metrics]\ntextfile = {:?}\n\
         [control]\nsocket = {:?}\n",
        if in_sandbox { "journald" } else { "stderr" },
        MAX_DELAY.as_secs(),
        spool_dir.to_string_lossy(),
        COOLDOWN.as_secs(),
        SPOOL_MAX_BYTES,
        metrics.to_string_lossy(),
        control.to_string_lossy(),
    );
    let vv = dir.path().join("console.vv");
    write_console_vv(&vv, q.port(), fw.port(), &password);
    let t_start = Instant::now();
    let mut soak = Soak {
        q: Arc::clone(&q),
        fw,
        spiced: Spiced::start(&vv, &toml, &[]),
        vv: vv.clone(),
        spool: spool_dir.clone(),
        password: password.clone(),
        passwords: vec![password.clone()],
        rng: Rng(seed),
        scale: if minutes < 10.0 { 0.5 } else { 1.0 },
        measured: None,
    };
    let first = soak.recover(Duration::from_secs(60), None);
    assert!(
        first.is_some(),
        "spiced did not link {ALL} channels at start"
    );
    eprintln!(
        "chaos: {ALL} channels up {:?} after start",
        t_start.elapsed()
    );
    let monitor = Monitor::start(Arc::clone(&q));
    let pid = soak.spiced.pid();

    let end = t_start + Duration::from_secs_f64(minutes * 60.0);
    let mut records: Vec<Record> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    // Every fault once, in a shuffled order, then at random.
    // `SPICED_CHAOS_FAULTS=idle_cut,burst` narrows the draw to those faults (to
    // hammer one fault; the seed then replays that narrowed run).
    let only = std::env::var("SPICED_CHAOS_FAULTS").unwrap_or_default();
    let pool: Vec<Fault> = Fault::EVERY
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|n| n.trim() == f.name()))
        .collect();
    assert!(
        !pool.is_empty(),
        "SPICED_CHAOS_FAULTS={only:?} names no fault"
    );
    let mut order: Vec<Fault> = pool.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, soak.rng.below(i + 1));
    }
    order.reverse();
    while Instant::now() < end {
        let f = order
            .pop()
            .unwrap_or_else(|| pool[soak.rng.below(pool.len())]);
        if f == Fault::FullSpool && spool.is_none() {
            continue;
        }
        let started = SystemTime::now();
        let before = soak.session();
        let t_inject = Instant::now();
        let detail = soak.inject(f);
        let healed_after = t_inject.elapsed();
        // These faults always end the session: wait for a new one. The full
        // spool fault measured its recovery itself, before freeing the disk.
        let recovered_after = match f {
            Fault::Kill | Fault::Ticket => soak.recover(f.bound(), before),
            Fault::FullSpool => soak.measured.take().flatten(),
            _ => soak.recover(f.bound(), None),
        };
        let n = records.len() + 1;
        eprintln!(
            "chaos: #{n} {} ({detail}): {}",
            f.name(),
            recovered_after.map_or("NOT back within the bound".into(), |d| format!(
                "all channels back {}s after",
                secs(d)
            ))
        );
        if recovered_after.is_none() {
            broken.push(format!(
                "#{n} {} ({detail}): channels not back within {}s",
                f.name(),
                f.bound().as_secs()
            ));
        }
        if let Some(code) = soak.spiced.try_exit() {
            broken.push(format!("#{n} {}: spiced exited with {code}", f.name()));
            records.push(Record {
                fault: f,
                detail,
                started,
                recovered_after,
                window_end: SystemTime::now(),
                long: healed_after >= Duration::from_secs(25),
            });
            break;
        }
        // A quiet spell: the session must stay up (nothing is wrong now).
        let quiet = soak.d(3.0, 10.0);
        let t_quiet = Instant::now();
        let mut dropped = None;
        while t_quiet.elapsed() < quiet {
            if !soak.all_up() && dropped.is_none() {
                dropped = Some(t_quiet.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if let (Some(at), Some(_)) = (dropped, recovered_after) {
            // Late losses of a fault (e.g. a dead peer noticed after the heal) are
            // allowed; the session must come back.
            if soak.recover(f.bound(), None).is_none() {
                broken.push(format!(
                    "#{n} {}: lost {}s into the quiet spell and not back",
                    f.name(),
                    secs(at)
                ));
            }
        }
        if soak.all_up() {
            if let Some(s) = sample(pid) {
                samples.push(s);
            }
        }
        records.push(Record {
            fault: f,
            detail,
            started,
            recovered_after,
            window_end: SystemTime::now(),
            long: healed_after >= Duration::from_secs(25),
        });
    }
    let (two_sessions, two_seen) = monitor.finish();
    if two_sessions > 0 {
        broken.push(format!(
            "query-spice showed two client sessions in {two_sessions} polls: {two_seen:?}"
        ));
    }
    let status = std::process::Command::new(spiced_bin())
        .args(["status", "--socket"])
        .arg(&control)
        .output()
        .map(|o| [o.stdout, o.stderr].concat())
        .unwrap_or_default();
    let still_running = soak.spiced.try_exit().is_none();
    let code = soak.spiced.stop();
    if still_running && code != Some(0) {
        broken.push(format!("spiced stopped with {code:?} after SIGTERM"));
    }

    // --- the journal's view: losses, takeovers -------------------------------
    let entries = if in_sandbox {
        journal_json()
    } else {
        Vec::new()
    };
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_owned();
    let at = |e: &Value| {
        let us: u64 = field(e, "__REALTIME_TIMESTAMP").parse().unwrap_or(0);
        UNIX_EPOCH + Duration::from_micros(us)
    };
    let mine: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            field(e, "SYSLOG_IDENTIFIER") == "spiced" || !field(e, "SPICED_SESSION").is_empty()
        })
        .collect();
    let losses: Vec<(SystemTime, String, String)> = mine
        .iter()
        .filter(|e| {
            let id = field(e, "MESSAGE_ID");
            id == ::spiced::events::SESSION_LOST || id == ::spiced::events::CHANNEL_LOST
        })
        .map(|e| (at(e), field(e, "SPICED_CHANNEL"), field(e, "SPICED_CAUSE")))
        .collect();
    // The cooldown runs from every report granted, written or not: a session
    // loss names its file (`SPICED_REPORT`), a lost channel's grant says
    // `disconnect report queued` with it, and `report written` follows when
    // the spool takes it (on a full spool nothing follows).
    let mut grants: Vec<(SystemTime, String)> = mine
        .iter()
        .filter(|e| !field(e, "SPICED_REPORT").is_empty())
        .map(|e| (at(e), field(e, "SPICED_REPORT")))
        .collect();
    grants.sort();
    // A session loss's grant and its `report written` line are one report.
    grants.dedup_by(|b, a| a.1 == b.1);
    if in_sandbox {
        let text = std::process::Command::new("journalctl")
            .args(["--no-pager", "-o", "short-precise", "-t", "spiced"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("chaos-{seed}-journal.txt"));
        let _ = std::fs::write(&path, text);
        eprintln!("chaos: spiced's journal in {}", path.display());
    }
    let spool_full_warnings = mine
        .iter()
        .filter(|e| field(e, "MESSAGE").contains("cannot write disconnect reports"))
        .count();
    let full_spools = records
        .iter()
        .filter(|r| r.fault == Fault::FullSpool)
        .count();
    if in_sandbox && full_spools > 0 && spool_full_warnings == 0 {
        broken.push("the spool was full but spiced never said it cannot write reports".into());
    }
    let takeovers = mine
        .iter()
        .filter(|e| field(e, "MESSAGE").contains("taken over by another client"))
        .count();
    if takeovers > 0 {
        broken.push(format!(
            "spiced logged {takeovers} takeover line(s): a kick war"
        ));
    }
    if in_sandbox && mine.is_empty() {
        broken.push("no spiced entry in the journal".into());
    }

    // --- reports ------------------------------------------------------------------
    let (reps, bad) = reports(&spool_dir);
    broken.extend(bad);
    let slack = Duration::from_secs(2);
    for w in grants.windows(2) {
        let gap = w[1].0.duration_since(w[0].0).unwrap_or_default();
        if gap + Duration::from_millis(100) < COOLDOWN {
            broken.push(format!(
                "two reports {:.1}s apart (cooldown {}s)",
                gap.as_secs_f64(),
                COOLDOWN.as_secs()
            ));
        }
    }
    // The fault in force at `t`: the last one started by then (report names
    // are to the second, rounded down).
    let fault_at = |t: SystemTime| {
        records
            .iter()
            .filter(|r| r.started <= t + Duration::from_secs(1))
            .max_by_key(|r| r.started)
    };
    // A silent fault (freeze, black hole) can be noticed after it ended: main's
    // backstop (90 s) or TCP's dead-peer timer (about 45 s) may fire during the
    // next fault.
    let lagging = |t: SystemTime, cause: &str| {
        records.iter().any(|r| {
            matches!(r.fault, Fault::Freeze | Fault::Blackhole)
                && r.started <= t
                && t.duration_since(r.window_end).unwrap_or_default() <= MAIN_TIMEOUT
                && r.fault.causes().contains(&cause)
        })
    };
    for (t, cause, channel, _) in &reps {
        match fault_at(*t) {
            Some(r) if !r.fault.causes().contains(&cause.as_str()) && !lagging(*t, cause) => broken
                .push(format!(
                    "report at {:.0} (channel {channel}) says {cause}, during {} ({})",
                    unix(*t),
                    r.fault.name(),
                    r.detail
                )),
            _ => {}
        }
    }
    let full_spool = |t: SystemTime| {
        records
            .iter()
            .any(|r| r.fault == Fault::FullSpool && r.started <= t && t <= r.window_end)
    };
    let mut unreported = 0;
    for (t, channel, cause) in &losses {
        let covered = grants.iter().any(|(g, _)| {
            *g >= *t && g.duration_since(*t).unwrap_or_default() < slack
                || *g <= *t && t.duration_since(*g).unwrap_or_default() < COOLDOWN + slack
        });
        if !covered {
            unreported += 1;
            broken.push(format!(
                "loss of {channel} ({cause}) at {:.0} has no report and no cooldown covers it",
                unix(*t)
            ));
        }
    }
    // Every granted report is in the spool, unless the spool was full then or
    // retention has removed it since (it removes the oldest first).
    let oldest = reps.first().map(|r| r.0);
    for (t, path) in &grants {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let written = name.is_some_and(|n| spool_dir.join(n).exists());
        let retained = oldest.is_some_and(|o| *t + slack >= o);
        if !written && retained && !full_spool(*t) {
            broken.push(format!("report {path} was due but is not in the spool"));
        }
    }
    let counted: u64 = reps.iter().map(|r| 1 + r.3).sum();

    // --- resources ------------------------------------------------------------------
    let n = samples.len();
    if n >= 4 {
        let early = &samples[n / 4..n / 2];
        let late = &samples[3 * n / 4..];
        let max = |s: &[Sample], f: fn(&Sample) -> usize| s.iter().map(f).max().unwrap_or(0);
        let (fd0, fd1) = (max(early, |s| s.fds), max(late, |s| s.fds));
        let (th0, th1) = (max(early, |s| s.threads), max(late, |s| s.threads));
        let mut late_rss: Vec<usize> = late.iter().map(|s| s.rss_kb).collect();
        late_rss.sort_unstable();
        let (rss0, rss1) = (max(early, |s| s.rss_kb), late_rss[late_rss.len() / 2]);
        eprintln!(
            "chaos: resources (second quarter max -> last quarter): fds {fd0} -> {fd1}, threads {th0} -> {th1}, RSS {rss0} kB -> median {rss1} kB"
        );
        if fd1 > fd0 + 2 {
            broken.push(format!("file descriptors grew: {fd0} -> {fd1}"));
        }
        if th1 > th0 + 2 {
            broken.push(format!("threads grew: {th0} -> {th1}"));
        }
        if rss1 * 10 > rss0 * 12 + 20_480 {
            broken.push(format!("RSS grew: {rss0} kB -> {rss1} kB"));
        }
    } else {
        eprintln!("chaos: {n} resource samples: too few to judge growth");
    }

    // --- QEMU's log -----------------------------------------------------------------
    let qlog = q.stderr_text();
    let spice_lines: Vec<&str> = qlog
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("spice") || l.contains("red_") || l.contains("reds_")
        })
        .collect();
    // spice-server drops a client that answered nothing for 30 s: the black
    // hole's doing when one lasted that long, not spiced's.
    let long_blackhole = records
        .iter()
        .any(|r| r.fault == Fault::Blackhole && r.long);
    let (explained, spice_lines): (Vec<&str>, Vec<&str>) = spice_lines
        .into_iter()
        .partition(|l| long_blackhole && l.contains("has been unresponsive for more than"));
    if !explained.is_empty() {
        eprintln!(
            "chaos: QEMU logged {} line(s) a black hole of 30 s or more explains, e.g. {:?}",
            explained.len(),
            explained[0]
        );
    }
    // The proxy's idle cut ends tunnels as a middlebox does (both sockets
    // shut, then closed): a server write racing the cut meets a closed socket,
    // and spice-server logs a reset. At most one per tunnel the cut ended;
    // more, or any without a cut, are spiced's.
    let cut = soak
        .fw
        .tunnels()
        .iter()
        .filter(|t| t.ended_by == Some(EndedBy::IdleCut))
        .count();
    let (resets, mut spice_lines): (Vec<&str>, Vec<&str>) = spice_lines
        .into_iter()
        .partition(|l| l.contains("Connection reset by peer"));
    if resets.len() <= cut {
        if !resets.is_empty() {
            eprintln!(
                "chaos: QEMU logged {} reset(s) the idle cut explains ({cut} tunnel(s) cut)",
                resets.len()
            );
        }
    } else {
        spice_lines.extend(resets);
    }
    if !spice_lines.is_empty() {
        broken.push(format!(
            "QEMU logged {} SPICE line(s), e.g. {:?}",
            spice_lines.len(),
            &spice_lines[..spice_lines.len().min(3)]
        ));
    }

    // --- secrets sweep --------------------------------------------------------------
    let mut produced: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), soak.spiced.stdout_bytes()),
        ("stderr".into(), soak.spiced.stderr_bytes()),
        ("spiced status".into(), status),
        (
            "metrics".into(),
            std::fs::read(&metrics).unwrap_or_default(),
        ),
    ];
    if in_sandbox {
        produced.push(("journal".into(), journal_export()));
    }
    for e in std::fs::read_dir(&spool_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(file) = std::fs::File::open(e.path()) else {
            continue;
        };
        let Ok(mut z) = zip::ZipArchive::new(file) else {
            continue;
        };
        for i in 0..z.len() {
            let Ok(mut m) = z.by_index(i) else { continue };
            let mut b = Vec::new();
            let _ = m.read_to_end(&mut b);
            let member = m.name().map(|n| n.to_string()).unwrap_or_default();
            produced.push((format!("{name}:{member}"), b));
        }
    }
    let mut secrets: Vec<String> = soak.passwords.clone();
    secrets.push(TICKET_HOST.to_string());
    secrets.push(TICKET_HOST.split_once(':').map_or("", |x| x.1).to_string());
    secrets.push(PROXY_PASS.to_string());
    secrets.push(format!("{PROXY_USER}:{PROXY_PASS}"));
    let mut hits = Vec::new();
    let mut bytes = 0usize;
    for (what, data) in &produced {
        bytes += data.len();
        for s in &secrets {
            for enc in encodings(s) {
                if find(data, enc.as_bytes()) {
                    hits.push(format!("{enc:?} (from {s:?}) in {what}"));
                }
            }
        }
    }
    eprintln!(
        "chaos: secrets sweep over {} outputs, {} bytes ({} zip members): {} hit(s)",
        produced.len(),
        bytes,
        produced.iter().filter(|p| p.0.contains(".zip:")).count(),
        hits.len()
    );
    broken.extend(hits.into_iter().map(|h| format!("secret leaked: {h}")));

    // --- the table ------------------------------------------------------------------
    let mut by: BTreeMap<Fault, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        by.entry(r.fault).or_default().push(r);
    }
    let mut table = String::new();
    table.push_str("| fault | injected | recovered | recover median (s) | recover max (s) |\n");
    table.push_str("|---|---|---|---|---|\n");
    for (f, rs) in &by {
        let mut t: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.recovered_after.map(|d| d.as_secs_f64()))
            .collect();
        t.sort_by(f64::total_cmp);
        let med = t.get(t.len() / 2).map_or("-".into(), |v| format!("{v:.1}"));
        let max = t.last().map_or("-".into(), |v| format!("{v:.1}"));
        table.push_str(&format!(
            "| {} | {} | {} | {med} | {max} |\n",
            f.name(),
            rs.len(),
            t.len()
        ));
    }
    println!(
        "\nchaos soak: seed {seed}, {:.1} min, {} faults; {} losses logged, {} reports ({} disconnects counted by them, {unreported} unreported)\n\n{table}",
        t_start.elapsed().as_secs_f64() / 60.0,
        records.len(),
        losses.len(),
        reps.len(),
        counted
    );
    if broken.is_empty() {
        println!("invariants: none broken");
    } else {
        println!("invariants broken ({}):", broken.len());
        for b in &broken {
            println!("  - {b}");
        }
    }
    if !broken.is_empty() {
        // The spool is a tmpfs that ends with the run: keep the reports to read.
        let keep = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("chaos-{seed}-reports"));
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(&spool_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
        }
        println!("reports kept in {}", keep.display());
    }
    if pool
        .iter()
        .any(|f| !by.contains_key(f) && (*f != Fault::FullSpool || spool.is_some()))
    {
        broken.push("the run was too short to inject every fault once".into());
    }
    assert!(
        broken.is_empty(),
        "{} invariant(s) broken (seed {seed})",
        broken.len()
    );
}
