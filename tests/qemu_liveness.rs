//! Liveness against a real QEMU: the per-channel keepalive beats a proxy's idle
//! timeout (and without it the proxy cuts the session), keepalives on every idle
//! channel leave spice-server silent, a black-holed path is declared dead within
//! the documented bound (TCP_USER_TIMEOUT after the next keepalive), and a frozen
//! server is caught by the main backstop.
//!
//! Each test runs a minute or less of real time and prints its measured figures
//! (`cargo test --test qemu_liveness -- --nocapture` to see them).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Channels that carry no traffic after their link (no guest, no client input):
/// only the per-channel keepalive puts bytes on them.
const IDLE_CHANNELS: [&str; 9] = [
    "inputs",
    "cursor",
    "playback",
    "record",
    "smartcard",
    "usbredir",
    "usbredir:1",
    "port",
    "webdav",
];

/// A .vv for `port` on 127.0.0.1, optionally through `proxy`.
fn vv(dir: &Path, port: u16, proxy: Option<&str>) -> std::path::PathBuf {
    let port = port.to_string();
    let mut f = vec![("host", "127.0.0.1"), ("port", port.as_str())];
    if let Some(p) = proxy {
        f.push(("proxy", p));
    }
    write_vv(dir, &f)
}

/// The TOML config: `body` plus a private report spool in `dir`.
fn config(dir: &Path, body: &str) -> String {
    let spool = dir.join("reports");
    format!(
        "{body}\n[report]\nspool_dir = \"{}\"\n",
        spool.display().to_string().replace('\\', "\\\\")
    )
}

/// `keepalives N (replies M)` of every `channel CH totals:` line, by channel name
/// (the last session's lines win).
fn keepalive_totals(log: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("channel ").nth(1) else {
            continue;
        };
        let Some((ch, stats)) = rest.split_once(" totals: ") else {
            continue;
        };
        let num_after = |key: &str| -> Option<u64> {
            let tail = stats.split(key).nth(1)?;
            let digits: String = tail
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        if let (Some(k), Some(r)) = (num_after("keepalives "), num_after("(replies ")) {
            out.insert(ch.to_string(), (k, r));
        }
    }
    out
}

/// The `cause="..."` field of the first log line containing `needle`.
fn cause_of(log: &str, needle: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let tail = line.split("cause=").nth(1)?;
    Some(
        tail.trim_start_matches('"')
            .split(['"', ' '])
            .next()?
            .to_string(),
    )
}

/// Waits for `needle` in the log and returns when it was seen (polling every 10 ms).
fn wait_log_at(s: &Spiced, needle: &str, timeout: Duration) -> Option<Instant> {
    s.wait_log(needle, timeout).then(Instant::now)
}

/// Waits until `deadline`, failing early (false) if the log shows `bad`.
fn hold_without(s: &Spiced, bad: &str, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    // wait_until returns true as soon as `bad` shows up: that is the failure.
    !wait_until(left, || s.log().contains(bad))
}

fn qemu_spice_warnings(q: &Qemu) -> Vec<String> {
    q.stderr_text()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["spice", "ping", "pong", "parse", "invalid"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_string)
        .collect()
}

/// One private QEMU behind its own tinyproxy (`Timeout 5`) and a spiced linked
/// through it.
struct ProxiedSession {
    q: Qemu,
    proxy: Tinyproxy,
    s: Spiced,
    _dir: tempfile::TempDir,
}

impl ProxiedSession {
    fn start(idle_secs: u32, reconnect: bool) -> ProxiedSession {
        let q = Qemu::start(QemuOpts::default());
        let proxy = Tinyproxy::start(&[q.port()], 5);
        let dir = tempfile::tempdir().unwrap();
        let vv = vv(dir.path(), q.port(), Some(&proxy.url()));
        let toml = config(
            dir.path(),
            &format!("[keepalive]\nidle_secs = {idle_secs}\n[reconnect]\nenabled = {reconnect}\n"),
        );
        let s = Spiced::start(&vv, &toml, &[]);
        ProxiedSession {
            q,
            proxy,
            s,
            _dir: dir,
        }
    }
}

/// Test 1: the same proxy (tinyproxy, 5 s idle timeout) with the keepalive off cuts
/// the session within seconds, and with `idle_secs = 2` carries all 11 channels for
/// a minute. Both halves run side by side, each against its own QEMU and proxy.
#[test]
fn keepalive_beats_a_proxy_idle_timeout_and_without_it_the_proxy_cuts() {
    if !require_qemu() || !Tinyproxy::available() {
        return;
    }
    let mut off = ProxiedSession::start(0, false);
    let mut on = ProxiedSession::start(2, true);

    // Disabled: an idle tunnel carries nothing for 5 s, tinyproxy closes it.
    let linked_off = wait_log_at(
        &off.s,
        "session fully linked: 11 channels",
        Duration::from_secs(20),
    )
    .expect("keepalive off: session fully linked through the proxy");
    let lost = wait_log_at(&off.s, "session lost", Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "keepalive off: the proxy never cut the idle session; QEMU sees {} channels; tinyproxy log:\n{}",
            off.q.connected_channel_count(),
            off.proxy.log_text()
        )
    });
    let cut_after = lost - linked_off;
    let off_log = off.s.log();
    let lost_line = off_log
        .lines()
        .find(|l| l.contains("session lost"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "keepalive off: proxy cut the session {:.1} s after it was fully linked: {lost_line}",
        cut_after.as_secs_f64()
    );
    assert!(
        cut_after <= Duration::from_secs(20),
        "cut only after {cut_after:?}"
    );
    assert_eq!(
        off.s.wait_exit(Duration::from_secs(15)),
        Some(69),
        "reconnect disabled: a lost session ends spiced with 69"
    );
    assert!(
        off.q.wait_channel_count(0, Duration::from_secs(5)),
        "QEMU still sees {} channels",
        off.q.connected_channel_count()
    );
    assert!(
        off.proxy.log_text().contains("Idle Timeout"),
        "tinyproxy did not log an idle timeout:\n{}",
        off.proxy.log_text()
    );

    // Enabled: a keepalive every 2 s of silence keeps every tunnel inside 5 s.
    let linked_on = wait_log_at(
        &on.s,
        "session fully linked: 11 channels",
        Duration::from_secs(20),
    )
    .expect("keepalive on: session fully linked through the proxy");
    let held = hold_without(&on.s, "session lost", linked_on + Duration::from_secs(60));
    let up_for = linked_on.elapsed();
    assert!(held, "keepalive on: the session was lost within 60 s");
    let n = on.q.connected_channel_count();
    eprintln!(
        "keepalive on (idle_secs = 2): {n} channels connected after {:.1} s through tinyproxy Timeout 5",
        up_for.as_secs_f64()
    );
    assert_eq!(n, 11, "QEMU sees {:?}", on.q.channels());
    assert_eq!(on.s.try_exit(), None, "spiced exited");
    assert!(!on.s.log().contains("reconnect attempt"));
    assert!(
        !on.proxy.log_text().contains("Idle Timeout"),
        "tinyproxy timed a tunnel out:\n{}",
        on.proxy.log_text()
    );
    assert_eq!(on.s.stop(), Some(0));
    let totals = keepalive_totals(&on.s.log());
    eprintln!("keepalive on: keepalives (replies) per channel: {totals:?}");
    for ch in IDLE_CHANNELS {
        let (k, _) = totals.get(ch).copied().unwrap_or_default();
        assert!(k >= 20, "{ch}: only {k} keepalives in a minute at 2 s");
    }
}

/// Test 2: `idle_secs = 1` for a minute: every channel stays, the idle ones each
/// sent a keepalive about every second, nothing answered them, and QEMU logged
/// no spice warning.
#[test]
fn one_second_keepalive_for_a_minute_keeps_every_channel_and_qemu_silent() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv(dir.path(), q.port(), None);
    let toml = config(dir.path(), "[keepalive]\nidle_secs = 1\n");
    let mut s = Spiced::start(&vv, &toml, &[]);
    let linked = wait_log_at(
        &s,
        "session fully linked: 11 channels",
        Duration::from_secs(20),
    )
    .expect("fully linked");
    assert!(
        hold_without(&s, "session lost", linked + Duration::from_secs(60)),
        "session lost during the minute"
    );
    let up_for = linked.elapsed();
    let n = q.connected_channel_count();
    assert_eq!(n, 11, "QEMU sees {:?}", q.channels());
    assert_eq!(s.stop(), Some(0));
    let totals = keepalive_totals(&s.log());
    eprintln!(
        "idle_secs = 1, {:.1} s: {n} channels; keepalives (replies) per channel: {totals:?}",
        up_for.as_secs_f64()
    );
    for ch in IDLE_CHANNELS {
        let (k, r) = totals
            .get(ch)
            .copied()
            .unwrap_or_else(|| panic!("no totals line for {ch}"));
        assert!(k >= 40, "{ch}: only {k} keepalives in {up_for:?}");
        assert_eq!(r, 0, "{ch}: the server answered a keepalive {r} times");
    }
    let (main_k, _) = totals.get("main").copied().unwrap_or_default();
    assert!(main_k >= 30, "main: only {main_k} keepalives");
    let warnings = qemu_spice_warnings(&q);
    assert!(warnings.is_empty(), "QEMU logged: {warnings:#?}");
}

/// Test 3: QEMU and spiced in a network namespace; once linked, the SPICE port is
/// black-holed (no RST, no FIN). With the defaults (keepalive after 15 s idle,
/// TCP_USER_TIMEOUT 25 s) spiced must declare the session dead within 45 s.
#[test]
fn black_holed_path_is_declared_dead_within_45_s() {
    if !require_qemu() {
        return;
    }
    if !NetNs::available() {
        if std::env::var_os("CI").is_some() {
            panic!("black-hole test needs root, ip and nft");
        }
        eprintln!("skipping: black-hole test needs root, ip and nft");
        return;
    }
    let ns = NetNs::create("spiced-bh");
    let q = Qemu::start(QemuOpts {
        netns: Some(ns.name().to_string()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let vv = vv(dir.path(), q.port(), None);
    let toml = config(dir.path(), "[reconnect]\nenabled = false\n");
    let mut s = Spiced::start_cmd(ns.command(spiced_bin()), &vv, &toml, &[]);
    assert!(
        s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)),
        "not fully linked inside the namespace"
    );
    assert_eq!(q.connected_channel_count(), 11);
    // Let the link traffic be acknowledged first: then nothing is in flight and
    // the idle channels must first send a keepalive (at 15 s) for TCP to notice,
    // the documented worst case (~40 s), not a lucky unacknowledged PONG.
    assert!(
        hold_without(&s, "session lost", Instant::now() + Duration::from_secs(2)),
        "session lost before the black hole"
    );

    ns.blackhole_port(q.port());
    let holed = Instant::now();
    let lost = wait_log_at(&s, "session lost", Duration::from_secs(60))
        .expect("session never declared lost after the black hole");
    let took = lost - holed;
    let log = s.log();
    let cause = cause_of(&log, "session lost").unwrap_or_default();
    let first_down = log
        .lines()
        .find(|l| l.contains(" down: ") && !l.contains("session closing"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "black hole: session declared dead {:.1} s after the black hole; cause {cause}; {first_down}",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(47),
        "dead-peer detection took {took:?}"
    );
    assert!(
        cause == "dead_peer" || cause == "keepalive_timeout",
        "unexpected cause {cause:?}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(15)), Some(69));
}

/// Test 4: a SIGSTOPped QEMU (its kernel still ACKs; TCP sees nothing) is caught
/// by the main backstop, lowered to 10 s — below the server's 15 s PING interval
/// on main, which works because main probes the server halfway through a silence
/// (ATTACH_CHANNELS, answered by CHANNELS_LIST). The test first holds the session
/// 25 s to show no false alarm on a healthy server.
#[test]
fn frozen_server_is_caught_by_the_main_backstop() {
    if !require_qemu() {
        return;
    }
    const TIMEOUT: u64 = 10;
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv(dir.path(), q.port(), None);
    let toml = config(
        dir.path(),
        &format!("[keepalive]\nmain_timeout_secs = {TIMEOUT}\n[reconnect]\nenabled = false\n"),
    );
    let mut s = Spiced::start(&vv, &toml, &[]);
    let established =
        wait_log_at(&s, "session established", Duration::from_secs(20)).expect("established");
    assert!(s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)));
    // Past one backstop period: main's 15 s PING kept it fed.
    assert!(
        hold_without(&s, "session lost", established + Duration::from_secs(25)),
        "healthy session lost with main_timeout_secs = {TIMEOUT}"
    );
    assert_eq!(q.connected_channel_count(), 11);

    q.stop();
    let frozen = Instant::now();
    let lost = wait_log_at(&s, "session lost", Duration::from_secs(TIMEOUT + 15));
    q.cont();
    let lost = lost.expect("frozen server never detected");
    let took = lost - frozen;
    let log = s.log();
    let cause = cause_of(&log, "session lost").unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("session lost"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "frozen server: detected {:.1} s after SIGSTOP (main_timeout_secs = {TIMEOUT}); cause {cause}; {line}",
        took.as_secs_f64()
    );
    assert_eq!(cause, "keepalive_timeout");
    assert!(line.contains("no data from the server on main"), "{line}");
    assert!(
        took <= Duration::from_secs(TIMEOUT + 3),
        "detection took {took:?}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(15)), Some(69));
    // The thawed QEMU is fine: it notices the closed sockets and serves again.
    assert!(q.is_running());
    assert!(
        q.wait_channel_count(0, Duration::from_secs(10)),
        "QEMU still sees {} channels",
        q.connected_channel_count()
    );
}

#[test]
fn totals_lines_parse() {
    let log = "2026 INFO channel usbredir:1 totals: in 1 B / 1 msgs, out 2 B / 2 msgs, pings 2, pongs 2, acks 0, keepalives 61 (replies 3)\n\
               x WARN session lost after 1.0 s: main failed first: m channel=main cause=\"dead_peer\"\n";
    assert_eq!(keepalive_totals(log)["usbredir:1"], (61, 3));
    assert_eq!(cause_of(log, "session lost").as_deref(), Some("dead_peer"));
}
