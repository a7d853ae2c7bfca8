//! spiced against a real QEMU: the full link, every channel, as QEMU sees it.
//!
//! Each test owns its QEMU on 127.0.0.1 (a second client would take the session
//! over) and runs the real `spiced` binary. QMP `query-spice` is the truth about
//! what is linked; spiced's log says why. Measured figures are printed with
//! `eprintln!` (run with `--nocapture` to see them).
//!
//! `idle_six_minutes_nothing_drops` takes 6 minutes; the others a few seconds
//! each. libtest runs them in parallel threads, so the long one holds one thread
//! while the rest run beside it.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every channel the harness's QEMU offers (main display inputs cursor playback
/// record smartcard usbredir x2 port webdav).
const ALL: usize = 11;
/// Linking 11 channels takes well under a second here; this bound allows a
/// loaded 2-core CI machine.
const LINK_BOUND: Duration = Duration::from_secs(20);

use common::channel_types::*;

/// A test's private directory: the .vv, the report spool, certificates.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// spiced's TOML: `extra` plus a `[report]` section pointing the spool at this
    /// test's directory (never the system spool).
    fn toml(&self, extra: &str) -> String {
        let spool = self.path().join("spool");
        format!(
            "{extra}\n[report]\nspool_dir = \"{}\"\n",
            spool.display().to_string().replace('\\', "\\\\")
        )
    }

    fn vv(&self, fields: &[(&str, &str)]) -> PathBuf {
        write_vv(self.path(), fields)
    }
}

/// Lines of QEMU's stderr that come from spice-server (its GLib log domain is
/// `Spice`; any such line is a warning, critical or error about our client).
fn spice_lines(q: &Qemu) -> Vec<String> {
    q.stderr_text()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("spice"))
        .map(str::to_string)
        .collect()
}

/// spice-server logged nothing (it warns about any client misbehaviour).
fn assert_qemu_quiet(q: &Qemu) {
    assert!(
        spice_lines(q).is_empty(),
        "QEMU stderr: {}",
        q.stderr_text()
    );
}

/// Watches `good` for `period`, checking every `every`; Err(elapsed) at the first
/// check where it does not hold. Used to prove that something *stays* true.
fn holds_for(
    period: Duration,
    every: Duration,
    mut good: impl FnMut() -> bool,
) -> Result<(), Duration> {
    let t0 = Instant::now();
    loop {
        if !good() {
            return Err(t0.elapsed());
        }
        if t0.elapsed() >= period {
            return Ok(());
        }
        std::thread::sleep(every.min(period.saturating_sub(t0.elapsed())));
    }
}

/// Starts spiced and waits until QEMU sees `n` channels; returns spiced and the
/// time that took.
fn start_and_link(vv: &Path, toml: &str, q: &Qemu, n: usize) -> (Spiced, Duration) {
    let t0 = Instant::now();
    let s = Spiced::start(vv, toml, &[]);
    let linked = q.wait_channel_count(n, LINK_BOUND);
    let took = t0.elapsed();
    assert!(
        linked,
        "QEMU sees {} channels after {took:?}, expected {n}: {:?}",
        q.connected_channel_count(),
        q.channels()
    );
    assert!(
        s.wait_log(
            &format!("session fully linked: {n} channels"),
            Duration::from_secs(5)
        ),
        "no 'session fully linked: {n} channels' in the log"
    );
    (s, took)
}

/// Asserts that QEMU keeps seeing `n` channels, and spice-server logs no new line,
/// for `period`.
///
/// Also the settling time before a stop whose QEMU stderr is checked: query-spice
/// lists a channel as soon as its link reply is sent (`SPICE_INITIALIZED`), but
/// spice-server creates the display and cursor channel clients afterwards in its
/// worker thread. A client that leaves within milliseconds of linking makes it warn
/// `Failed to create channel client: Client ... got disconnected while connecting
/// channel type 4` (seen here once with an immediate SIGTERM): a server-side race,
/// not something a client can observe or avoid.
fn stays_linked(q: &Qemu, n: usize, period: Duration) {
    let before = spice_lines(q);
    let watched = holds_for(period, Duration::from_millis(250), || {
        q.connected_channel_count() == n && spice_lines(q) == before
    });
    assert_eq!(
        watched,
        Ok(()),
        "channels {:?}; QEMU stderr: {}",
        q.channels(),
        q.stderr_text()
    );
}

/// SIGTERM: exit 0 and QEMU sees every channel go.
fn stop_cleanly(s: &mut Spiced, q: &Qemu) {
    let t0 = Instant::now();
    assert_eq!(s.stop(), Some(0), "exit status after SIGTERM");
    let took = t0.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || q.connected_channel_count() == 0),
        "QEMU still sees {:?} after spiced exited",
        q.channels()
    );
    assert!(s.wait_log("stopped", Duration::from_secs(1)));
    eprintln!("SIGTERM to exit 0: {took:?}");
}

/// spiced's `channel NAME up` / `channel NAME up (TLS)` lines.
fn up_lines(s: &Spiced) -> Vec<String> {
    s.lines_with("channel ")
        .into_iter()
        .filter(|l| {
            // The text, without the fields that follow it (`channel=... session=...`).
            let text = l.split(" channel=").next().unwrap_or(l);
            text.ends_with(" up") || text.ends_with(" up (TLS)")
        })
        .collect()
}

/// The channel types QEMU sees, in order.
fn types(q: &Qemu) -> Vec<u8> {
    q.channels().iter().map(|c| c.channel_type).collect()
}

/// `(channel, keepalives, pings, pongs)` from the `channel X totals:` lines.
fn totals(log: &str) -> Vec<(String, u64, u64, u64)> {
    let num = |line: &str, key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim_start().split([',', ' ']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{key}' number in {line:?}"))
    };
    log.lines()
        .filter_map(|l| {
            let rest = l.split("channel ").nth(1)?;
            let (name, _) = rest.split_once(" totals:")?;
            Some((
                name.to_string(),
                num(l, "keepalives "),
                num(l, "pings "),
                num(l, "pongs "),
            ))
        })
        .collect()
}

/// A continuous display load (the vga-noise guest: a few MB/s of drawing) is
/// drained and ACKed: the server's ACK window never fills (it would stop sending
/// and the guest's display would stall), nothing drops, QEMU logs nothing.
#[test]
fn display_load_is_drained_and_acked() {
    if !require_qemu() {
        return;
    }
    let Some(kernel) = vga_noise_kernel_or_skip() else {
        return;
    };
    let q = Qemu::start(QemuOpts {
        extra_args: vec!["-kernel".into(), kernel.display().to_string()],
        ..Default::default()
    });
    let t = Scratch::new();
    let vv = t.vv(&[("host", "127.0.0.1"), ("port", &q.port().to_string())]);
    let (mut s, _) = start_and_link(&vv, &t.toml(""), &q, ALL);
    let secs = 15;
    stays_linked(&q, ALL, Duration::from_secs(secs));
    stop_cleanly(&mut s, &q);
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("channel display totals:"))
        .unwrap_or_else(|| panic!("no display totals: {log}"));
    let field = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim_start().split([' ', ',']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} in {line}"))
    };
    let bytes_in = field("totals: in ");
    let msgs_in = line
        .split(" B / ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let acks = field("acks ");
    eprintln!(
        "display load: {:.1} MB in {msgs_in} messages over ~{secs} s ({:.2} MB/s), {acks} ACKs sent",
        bytes_in as f64 / 1e6,
        bytes_in as f64 / 1e6 / secs as f64
    );
    assert!(bytes_in > 5_000_000, "only {bytes_in} B of display traffic");
    // One ACK per window (20 here) of messages: the server was never starved of ACKs.
    assert!(acks >= msgs_in / 40, "{acks} ACKs for {msgs_in} messages");
    assert!(!log.contains("session lost"), "{log}");
    assert_qemu_quiet(&q);
}

// ---------------------------------------------------------------------------
// 1. plain

#[test]
fn plain_links_every_offered_channel() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let t = Scratch::new();
    let vv = t.vv(&[("host", "127.0.0.1"), ("port", &q.port().to_string())]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("plain: {ALL} channels linked {took:?} after start");
    assert_eq!(
        types(&q),
        [
            MAIN, DISPLAY, INPUTS, CURSOR, PLAYBACK, RECORD, SMARTCARD, USBREDIR, USBREDIR, PORT,
            WEBDAV
        ]
    );
    let chans = q.channels();
    assert!(chans.iter().all(|c| !c.tls), "{chans:?}");
    let ids: BTreeSet<i64> = chans.iter().map(|c| c.connection_id).collect();
    assert_eq!(ids.len(), 1, "one session: {chans:?}");
    assert_eq!(up_lines(&s).len(), ALL, "{}", s.log());

    // Linked for 5 s: every channel stays, spice-server has nothing to complain about.
    assert_qemu_quiet(&q);
    stays_linked(&q, ALL, Duration::from_secs(5));
    assert!(s.try_exit().is_none(), "spiced exited while linked");

    stop_cleanly(&mut s, &q);
    assert_eq!(totals(&s.log()).len(), ALL, "a totals line per channel");
    assert_qemu_quiet(&q);
}

// ---------------------------------------------------------------------------
// 2. password

const RIGHT_PW: &str = "Corr3ct-h0rse-9081";
const WRONG_PW: &str = "Wr0ng-b4ttery-7712";

#[test]
fn password_right_links_every_channel() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password(RIGHT_PW));
    let t = Scratch::new();
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("port", &q.port().to_string()),
        ("password", RIGHT_PW),
    ]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("password: {ALL} channels linked {took:?} after start");
    stop_cleanly(&mut s, &q);
    assert!(!s.log().contains(RIGHT_PW), "the password reached the log");
}

#[test]
fn password_wrong_exits_77_without_leaking_it() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password(RIGHT_PW));
    let t = Scratch::new();
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("port", &q.port().to_string()),
        ("password", WRONG_PW),
    ]);
    let t0 = Instant::now();
    let mut s = Spiced::start(&vv, &t.toml(""), &[]);
    let code = s.wait_exit(Duration::from_secs(15));
    eprintln!("wrong password: exit {code:?} after {:?}", t0.elapsed());
    assert_eq!(code, Some(77));
    let log = s.log();
    assert!(log.contains("ticket rejected by server"), "{log}");
    assert!(
        !log.contains(WRONG_PW),
        "the wrong password reached the log"
    );
    assert!(!log.contains(RIGHT_PW));
    assert!(
        !log.contains("reconnect attempt"),
        "a rejected ticket is not retried: {log}"
    );
    assert_eq!(q.connected_channel_count(), 0);
}

// ---------------------------------------------------------------------------
// 3. TLS

/// A QEMU serving only TLS (every channel), with certificates made for this test.
fn tls_only_qemu(certs: &Certs, password: Option<&str>) -> Qemu {
    Qemu::start(QemuOpts {
        tls: Some(certs),
        tls_channels: vec!["default".into()],
        plain_port: false,
        password: password.map(str::to_string),
        ..Default::default()
    })
}

#[test]
fn tls_with_ca_and_host_subject_links_every_channel() {
    if !require_qemu() {
        return;
    }
    let t = Scratch::new();
    let certs = Certs::generate(&t.path().join("pki"), "spiced-tls-test");
    let q = tls_only_qemu(&certs, None);
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("tls-port", &q.tls_port().to_string()),
        ("ca", &certs.ca_pem()),
        ("host-subject", &certs.host_subject()),
    ]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("TLS: {ALL} channels linked {took:?} after start");
    let chans = q.channels();
    assert!(
        chans.iter().all(|c| c.tls),
        "every channel on TLS: {chans:?}"
    );
    assert_eq!(s.lines_with(" up (TLS)").len(), ALL);
    stays_linked(&q, ALL, Duration::from_secs(2));
    stop_cleanly(&mut s, &q);
    assert_qemu_quiet(&q);
}

/// The shape oVirt's engine writes: `port=-1`, only a `tls-port`, a
/// `secure-channels` list, a password, `delete-this-file=1`, an `[ovirt]` group.
#[test]
fn ovirt_shaped_vv_links_every_channel_over_tls() {
    if !require_qemu() {
        return;
    }
    let t = Scratch::new();
    let certs = Certs::generate(&t.path().join("pki"), "spiced-tls-test");
    let q = tls_only_qemu(&certs, Some(RIGHT_PW));
    let path = t.vv(&[
        ("host", "127.0.0.1"),
        ("port", "-1"),
        ("tls-port", &q.tls_port().to_string()),
        ("password", RIGHT_PW),
        ("delete-this-file", "1"),
        ("ca", &certs.ca_pem()),
        ("host-subject", &certs.host_subject()),
        (
            "secure-channels",
            "main;inputs;cursor;playback;record;display;smartcard;usbredir;",
        ),
    ]);
    // The [ovirt] group after the [virt-viewer] one, as the engine writes it.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[ovirt]\nhost=engine.example.com:443\nvm-guid=2a7d3c1e-6b55-4f0e-9b1a-0d6c2f1e8a41\nsso-token=s3cr3t\nadmin=0\n");
    std::fs::write(&path, text).unwrap();
    let (mut s, took) = start_and_link(&path, &t.toml(""), &q, ALL);
    eprintln!("oVirt-shaped: {ALL} channels linked over TLS {took:?} after start");
    assert!(q.channels().iter().all(|c| c.tls), "{:?}", q.channels());
    assert!(!path.exists(), "delete-this-file=1: the .vv is gone");
    stop_cleanly(&mut s, &q);
    assert!(!s.log().contains(RIGHT_PW) && !s.log().contains("s3cr3t"));
}

#[test]
fn tls_host_subject_mismatch_is_refused() {
    if !require_qemu() {
        return;
    }
    let t = Scratch::new();
    let certs = Certs::generate(&t.path().join("pki"), "spiced-tls-test");
    let q = tls_only_qemu(&certs, None);
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("tls-port", &q.tls_port().to_string()),
        ("ca", &certs.ca_pem()),
        ("host-subject", "O=x,CN=y"),
    ]);
    let t0 = Instant::now();
    let mut s = Spiced::start(&vv, &t.toml(""), &[]);
    let code = s.wait_exit(Duration::from_secs(15));
    eprintln!(
        "host-subject mismatch: exit {code:?} after {:?}",
        t0.elapsed()
    );
    assert_eq!(code, Some(78));
    let log = s.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("does not match host-subject"))
        .unwrap_or_else(|| panic!("no subject mismatch line: {log}"));
    assert!(refusal.contains("O=x,CN=y"), "{refusal}");
    assert!(refusal.contains(&certs.host_subject()), "{refusal}");
    assert!(up_lines(&s).is_empty(), "a channel came up: {log}");
    assert!(!log.contains("reconnect attempt"), "{log}");
    assert_eq!(q.connected_channel_count(), 0);
    let events = q.qmp().take_events();
    let initialized = events
        .iter()
        .filter(|e| e["event"] == "SPICE_INITIALIZED")
        .count();
    assert_eq!(initialized, 0, "QEMU linked a channel: {events:?}");
}

// ---------------------------------------------------------------------------
// 4. one channel forced onto TLS

#[test]
fn channel_forced_onto_tls_moves_to_tls_port() {
    if !require_qemu() {
        return;
    }
    let t = Scratch::new();
    let certs = Certs::generate(&t.path().join("pki"), "spiced-tls-test");
    let q = Qemu::start(QemuOpts {
        tls: Some(&certs),
        tls_channels: vec!["inputs".into()],
        ..Default::default()
    });
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("port", &q.port().to_string()),
        ("tls-port", &q.tls_port().to_string()),
        ("ca", &certs.ca_pem()),
        ("host-subject", &certs.host_subject()),
    ]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("inputs on TLS, rest plain: {ALL} channels linked {took:?} after start");
    for c in q.channels() {
        assert_eq!(c.tls, c.channel_type == INPUTS, "{c:?}");
    }
    assert!(
        !s.lines_with("server requires TLS on inputs").is_empty(),
        "{}",
        s.log()
    );
    assert_eq!(s.lines_with(" up (TLS)").len(), 1, "{}", s.log());
    assert_eq!(s.lines_with("channel inputs up (TLS)").len(), 1);
    stays_linked(&q, ALL, Duration::from_secs(2));
    stop_cleanly(&mut s, &q);
    // The plain link attempt on inputs is logged by spice-server (remote-viewer's
    // is too: the .vv does not say which channels the server keeps on TLS). That
    // one line, nothing else.
    let warned = spice_lines(&q);
    assert_eq!(warned.len(), 1, "QEMU stderr: {}", q.stderr_text());
    assert!(
        warned[0].contains("spice channels 3 should be encrypted"),
        "{warned:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Proxmox-shaped .vv through a real HTTP CONNECT proxy

#[test]
fn proxmox_vv_through_http_connect_proxy() {
    if !require_qemu() || !Tinyproxy::available() {
        return;
    }
    let t = Scratch::new();
    let certs = Certs::generate(&t.path().join("pki"), "pve-node.example");
    let password = "pve-ticket-5f3a9c0e1d";
    let q = tls_only_qemu(&certs, Some(password));
    let proxy = Tinyproxy::start(&[q.tls_port()], 60);
    // What Proxmox's /spiceproxy endpoint returns, except `host`: Proxmox sends
    // `pvespiceproxy:<ticket>:<vmid>:<node>::<hash>`, a name only its spiceproxy
    // understands. tinyproxy must resolve the CONNECT target itself, so here the
    // host is the literal address QEMU listens on.
    let vv = t.vv(&[
        ("secure-attention", "Ctrl+Alt+Ins"),
        ("tls-port", &q.tls_port().to_string()),
        ("delete-this-file", "1"),
        ("proxy", &proxy.url()),
        ("title", "VM 100 - spiced-test"),
        ("host-subject", &certs.host_subject()),
        ("host", "127.0.0.1"),
        ("release-cursor", "Ctrl+Alt+R"),
        ("password", password),
        ("toggle-fullscreen", "Shift+F11"),
        ("ca", &certs.ca_pem()),
    ]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("proxmox .vv via tinyproxy: {ALL} channels linked {took:?} after start");
    let chans = q.channels();
    assert!(chans.iter().all(|c| c.tls), "{chans:?}");
    assert!(
        !vv.exists(),
        "delete-this-file=1: the .vv is deleted after reading"
    );

    // Proof that the proxy carried every channel: spiced's 11 connections all go to
    // the proxy's port, and none of QEMU's 11 peers is one of spiced's sockets (they
    // are tinyproxy's outbound sockets).
    let mine = tcp_connections_of(s.pid());
    eprintln!("spiced's connections (local, remote): {mine:?}");
    assert_eq!(mine.len(), ALL, "{mine:?}");
    assert!(
        mine.iter().all(|&(_, remote)| remote == proxy.port()),
        "{mine:?}"
    );
    let my_ports: BTreeSet<String> = mine.iter().map(|(l, _)| l.to_string()).collect();
    for c in &chans {
        assert_eq!(c.host, "127.0.0.1");
        assert!(
            !my_ports.contains(&c.port),
            "QEMU's peer {c:?} is spiced itself"
        );
    }
    let plog = proxy.log_text();
    let connects = plog
        .lines()
        .filter(|l| l.contains(&format!("CONNECT 127.0.0.1:{}", q.tls_port())))
        .count();
    eprintln!("tinyproxy logged {connects} CONNECT lines");
    assert_eq!(connects, ALL, "tinyproxy log:\n{plog}");

    stays_linked(&q, ALL, Duration::from_secs(2));
    stop_cleanly(&mut s, &q);
    assert_qemu_quiet(&q);
    assert!(!s.log().contains(password), "the ticket reached the log");
}

// ---------------------------------------------------------------------------
// 6. disabled and skipped channels

#[test]
fn disabled_and_skipped_channels_are_not_linked() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let t = Scratch::new();
    let vv = t.vv(&[
        ("host", "127.0.0.1"),
        ("port", &q.port().to_string()),
        ("disable-channels", "usbredir;webdav"),
    ]);
    let toml = t.toml("[channels]\nskip = [\"playback\"]\n");
    let want = ALL - 2 - 1 - 1;
    let (mut s, took) = start_and_link(&vv, &toml, &q, want);
    eprintln!("{want} of {ALL} channels linked {took:?} after start");
    assert_eq!(
        types(&q),
        [MAIN, DISPLAY, INPUTS, CURSOR, RECORD, SMARTCARD, PORT]
    );
    for (ch, why) in [
        ("usbredir", "disable-channels in the .vv"),
        ("usbredir:1", "disable-channels in the .vv"),
        ("webdav", "disable-channels in the .vv"),
        ("playback", "channels.skip in the config"),
    ] {
        assert_eq!(
            s.lines_with(&format!("not linking {ch}: {why}")).len(),
            1,
            "{ch}: {}",
            s.log()
        );
    }
    assert_eq!(s.lines_with("not linking").len(), 4);
    // And they stay unlinked.
    stays_linked(&q, want, Duration::from_secs(2));
    stop_cleanly(&mut s, &q);
}

// ---------------------------------------------------------------------------
// 7. six idle minutes

/// Past spice-server's 5-minute ping on idle secondary channels, with the default
/// keepalive settings: the same 11 TCP connections stay linked the whole time.
#[test]
fn idle_six_minutes_nothing_drops() {
    if !require_qemu() {
        return;
    }
    // A paused VM: no firmware draws, so display is as quiet as every other
    // channel; the only traffic is the server's PINGs and spiced's keepalives.
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let t = Scratch::new();
    let vv = t.vv(&[("host", "127.0.0.1"), ("port", &q.port().to_string())]);
    let (mut s, took) = start_and_link(&vv, &t.toml(""), &q, ALL);
    eprintln!("idle: {ALL} channels linked {took:?} after start");
    // query-spice lists each channel's client port: an unchanged list means the
    // very same connections, not a silent reconnect.
    let linked = q.channels();
    let period = Duration::from_secs(6 * 60);
    let t0 = Instant::now();
    let watched = holds_for(period, Duration::from_secs(2), || {
        q.channels() == linked
            && spice_lines(&q).is_empty()
            && s.lines_with("session lost").is_empty()
    });
    eprintln!("idle: watched for {:?}", t0.elapsed());
    assert_eq!(
        watched,
        Ok(()),
        "something dropped: channels {:?}\nQEMU stderr: {}",
        q.channels(),
        q.stderr_text()
    );
    assert_eq!(q.connected_channel_count(), ALL);
    assert!(s.try_exit().is_none());
    let log = s.log();
    assert!(!log.contains("session lost"), "{log}");
    assert!(!log.contains("reconnect attempt"), "{log}");
    assert_qemu_quiet(&q);

    stop_cleanly(&mut s, &q);
    let tot = totals(&s.log());
    for (ch, keepalives, pings, pongs) in &tot {
        eprintln!("idle 6 min: {ch}: keepalives {keepalives}, pings {pings}, pongs {pongs}");
    }
    assert_eq!(tot.len(), ALL);
    for (ch, keepalives, pings, pongs) in &tot {
        assert_eq!(pings, pongs, "{ch}: every server PING answered");
        // Channels with nothing to say send a keepalive every 15 s: about 22 in
        // 6 minutes (measured 22). spice-server pings them 4 times in all, the last
        // at ~300 s (docs: spice-notes.md): a 4th PING answered is the 5-minute mark
        // passed with the channel alive.
        if !["main", "display"].contains(&ch.as_str()) {
            assert!(*keepalives >= 12, "{ch}: only {keepalives} keepalives");
            assert!(
                *pings >= 4,
                "{ch}: only {pings} PINGs: the 5-minute one missing"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 8. connect failures

#[test]
fn nothing_listening_retries_then_exits_69() {
    let t = Scratch::new();
    let port = free_port(); // nothing listens there
    let vv = t.vv(&[("host", "127.0.0.1"), ("port", &port.to_string())]);
    let toml = t.toml("[reconnect]\nmax_attempts = 2\ninitial_delay_secs = 0.2\n");
    let t0 = Instant::now();
    let mut s = Spiced::start(&vv, &toml, &[]);
    let code = s.wait_exit(Duration::from_secs(20));
    eprintln!("nothing listening: exit {code:?} after {:?}", t0.elapsed());
    assert_eq!(code, Some(69), "{}", s.log());
    let attempts = s.lines_with("reconnect attempt");
    assert_eq!(attempts.len(), 2, "{}", s.log());
    assert!(attempts[0].contains("reconnect attempt 1"), "{attempts:?}");
    assert!(attempts[1].contains("reconnect attempt 2"), "{attempts:?}");
    assert_eq!(s.lines_with("connect failed").len(), 3, "{}", s.log());
    // Refused is a network failure (transient): retried on the configured back-off
    // (0.2 s, then x4), not given up on at once.
    let pending = s.lines_with("-> pending: attempt");
    assert_eq!(pending.len(), 2, "{}", s.log());
    assert!(
        pending[0].contains("attempt 1 after 200ms") && pending[0].contains("network"),
        "{pending:?}"
    );
    assert!(
        pending[1].contains("attempt 2 after 800ms") && pending[1].contains("network"),
        "{pending:?}"
    );
    assert_eq!(s.lines_with("giving up").len(), 1, "{}", s.log());
    assert!(s.log().contains("(exit status 69)"));
}

#[test]
fn vnc_vv_is_a_config_error() {
    let t = Scratch::new();
    let vv = t.vv(&[]);
    std::fs::write(&vv, "[virt-viewer]\ntype=vnc\nhost=127.0.0.1\nport=5900\n").expect("write .vv");
    let t0 = Instant::now();
    let mut s = Spiced::start(&vv, &t.toml(""), &[]);
    let code = s.wait_exit(Duration::from_secs(10));
    eprintln!("type=vnc: exit {code:?} after {:?}", t0.elapsed());
    assert_eq!(code, Some(78), "{}", s.log());
    assert!(
        s.log().contains("vnc"),
        "the error names the type: {}",
        s.log()
    );
}
