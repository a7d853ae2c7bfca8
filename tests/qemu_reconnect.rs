//! The auto-reconnect supervisor against a real QEMU and the real spiced binary:
//! server restarts, exhausted retries, single-use and rejected tickets, fresh
//! tickets by file, SIGHUP and refresh command, and takeover by another client.
//!
//! Timings are asserted as bounds and order, read from spiced's own log
//! timestamps; the measured figures are printed (`--nocapture`) for the notes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous: the machine is shared and QEMU runs under TCG.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// A timer may fire a little late, never early; log stamps are taken after it fired.
const EARLY_SLACK: f64 = 0.05;

/// A spiced config: the report spool in `spool`, then `[reconnect]` lines.
fn config(spool: &Path, reconnect: &str) -> String {
    format!(
        "[report]\nspool_dir = \"{}\"\n\n[reconnect]\n{reconnect}\n",
        spool.display()
    )
}

/// The unix time of a log line (tracing's RFC 3339 UTC stamp at the start).
fn stamp(line: &str) -> f64 {
    let first = line.split_whitespace().next().unwrap_or("");
    let t = humantime::parse_rfc3339(first)
        .unwrap_or_else(|e| panic!("no timestamp in log line {line:?}: {e}"));
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Log timestamps of every line containing `needle`, in order.
fn stamps(s: &Spiced, needle: &str) -> Vec<f64> {
    s.lines_with(needle).iter().map(|l| stamp(l)).collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A plain .vv for `q` in `dir` (plus `extra` fields).
fn vv_for(dir: &Path, q: &Qemu, extra: &[(&str, &str)]) -> PathBuf {
    let port = q.port().to_string();
    let mut fields = vec![("host", "127.0.0.1"), ("port", port.as_str())];
    fields.extend_from_slice(extra);
    write_vv(dir, &fields)
}

/// Waits until QEMU sees all 11 channels and spiced logged them `count` times.
fn wait_linked(q: &Qemu, s: &Spiced, count: usize) {
    assert!(
        s.wait_log_count("session fully linked: 11 channels", count, LINK_TIMEOUT),
        "spiced did not link all channels ({count}x)"
    );
    assert!(
        q.wait_channel_count(11, Duration::from_secs(10)),
        "QEMU sees {} channels",
        q.connected_channel_count()
    );
}

/// The connection ids QEMU reports right now (one per client session).
fn connection_ids(q: &Qemu) -> Vec<i64> {
    let mut ids: Vec<i64> = q.channels().iter().map(|c| c.connection_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Sleeps until the session that came up at log time `since` has been up for
/// `healthy` (the takeover rule needs a healthy session: this is scenario time,
/// not synchronisation).
fn keep_up_until(since: f64, healthy: f64) {
    let left = since + healthy - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// 1. QEMU dies mid-session and comes back on the same ports: spiced retries by
///    the policy (attempt 1 after 1 s fails), then, instead of waiting out the
///    4 s slot of attempt 2, starts it as soon as a readiness check (a TCP
///    connect a second) finds the server listening; every channel is back on
///    the new QEMU.
#[test]
fn server_restart_reconnects_every_channel() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[]);
    let mut s = Spiced::start(&vv, &config(dir.path(), ""), &[]);
    wait_linked(&q, &s, 1);
    let old_ids = connection_ids(&q);

    let killed = Instant::now();
    q.kill();
    assert!(
        s.wait_log("-> pending: attempt 1 after 1s", Duration::from_secs(10)),
        "no retry scheduled"
    );
    // Keep the server down through attempt 1 (it must fail), then restart.
    assert!(s.wait_log("reconnect attempt 1 (", Duration::from_secs(10)));
    assert!(s.wait_log("connect failed:", Duration::from_secs(10)));
    q.restart_same_ports();
    let restarted = killed.elapsed();
    wait_linked(&q, &s, 2);
    let back = killed.elapsed();
    assert_eq!(q.connected_channel_count(), 11);
    assert_ne!(connection_ids(&q), old_ids, "a new session on the new QEMU");

    let lost = stamps(&s, "session lost after");
    let attempts = stamps(&s, "reconnect attempt ");
    assert_eq!(lost.len(), 1, "one session lost");
    assert_eq!(attempts.len(), 2, "attempt 1 failed, attempt 2 linked");
    let (a1, a2) = (attempts[0] - lost[0], attempts[1] - attempts[0]);
    eprintln!(
        "restart: server down {:.2} s; attempt 1 at +{a1:.3} s, attempt 2 {a2:.3} s later; \
         all 11 channels back {:.2} s after the kill, {:.2} s after the server listened",
        restarted.as_secs_f64(),
        back.as_secs_f64(),
        (back - restarted).as_secs_f64()
    );
    assert!((1.0 - EARLY_SLACK..3.0).contains(&a1), "attempt 1 at {a1}");
    // The back-off slot of attempt 2 is 4 s after attempt 1; the readiness check
    // (one TCP connect a second) brings it forward once the server listens.
    assert!(
        a2 < 4.0 - EARLY_SLACK,
        "attempt 2 after {a2}: not brought forward"
    );
    assert!(
        s.log()
            .contains("the server accepts connections again: retrying now"),
        "{}",
        s.log()
    );
    assert!(
        s.log()
            .contains("-> connected (session 3) (linked on attempt 2)"),
        "{}",
        s.log()
    );
    assert_eq!(s.stop(), Some(0));
}

/// 2. QEMU stays down: exactly 3 attempts (after 1, 4, 16 s), then exit 69.
#[test]
fn server_down_exhausts_three_attempts_then_69() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[]);
    let mut s = Spiced::start(&vv, &config(dir.path(), ""), &[]);
    wait_linked(&q, &s, 1);
    q.kill();
    let code = s.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(69), "exit status");
    let log = s.log();
    assert!(log.contains("giving up: retries_exhausted"), "{log}");
    let lost = stamps(&s, "session lost after");
    let attempts = stamps(&s, "reconnect attempt ");
    assert_eq!(attempts.len(), 3, "attempt lines");
    let gave_up = stamps(&s, "giving up:");
    let gaps = [
        attempts[0] - lost[0],
        attempts[1] - attempts[0],
        attempts[2] - attempts[1],
    ];
    eprintln!(
        "exhausted: attempts at +{:.3} / +{:.3} / +{:.3} s after the loss (gaps {:.3}, {:.3}, {:.3} s); \
         exit 69 at +{:.3} s",
        attempts[0] - lost[0],
        attempts[1] - lost[0],
        attempts[2] - lost[0],
        gaps[0],
        gaps[1],
        gaps[2],
        gave_up[0] - lost[0]
    );
    for (gap, want) in gaps.iter().zip([1.0, 4.0, 16.0]) {
        assert!(
            (want - EARLY_SLACK..want + 3.0).contains(gap),
            "gap {gap} for {want}"
        );
    }
    assert!(
        gave_up[0] - attempts[2] < 3.0,
        "gives up right after attempt 3 fails"
    );
}

/// 3. `delete-this-file=1`: the file is gone at start, the session links, and
///    after the server dies there is no retry: exit 77 (`one_shot_consumed`).
#[test]
fn single_use_ticket_is_deleted_and_never_retried() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[("delete-this-file", "1")]);
    let mut s = Spiced::start(&vv, &config(dir.path(), ""), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !vv.exists()),
        "spiced did not delete the single-use .vv"
    );
    wait_linked(&q, &s, 1);
    let killed = Instant::now();
    q.kill();
    assert_eq!(
        s.wait_exit(Duration::from_secs(20)),
        Some(77),
        "exit status"
    );
    let took = killed.elapsed();
    let log = s.log();
    assert!(
        log.contains("giving up: one_shot_consumed (exit status 77)"),
        "{log}"
    );
    assert!(
        s.lines_with("reconnect attempt").is_empty(),
        "a single-use ticket must not be retried"
    );
    assert!(s.lines_with("-> pending").is_empty(), "no retry scheduled");
    eprintln!(
        "single use: exit 77 {:.3} s after the kill, 0 attempts",
        took.as_secs_f64()
    );
}

/// 4. The ticket is rejected on the retry: the server comes back with the
///    password expired (QMP `expire_password now` on the new QEMU before spiced's
///    first retry). Exit 77 with the server's verdict in the log.
#[test]
fn rejected_ticket_on_retry_exits_77() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password("pw-one"));
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[("password", "pw-one")]);
    // The first retry comes 3 s after the loss: room to expire the password first.
    let mut s = Spiced::start(&vv, &config(dir.path(), "initial_delay_secs = 3"), &[]);
    wait_linked(&q, &s, 1);
    q.restart_same_ports();
    q.qmp().expire_password("now").unwrap();
    assert!(
        s.lines_with("reconnect attempt").is_empty(),
        "test setup raced: spiced retried before the password was expired"
    );
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(77),
        "exit status"
    );
    let log = s.log();
    assert!(log.contains("ticket rejected by server"), "{log}");
    assert!(
        log.contains("giving up: ticket_rejected (exit status 77)"),
        "{log}"
    );
    assert_eq!(s.lines_with("reconnect attempt").len(), 1, "one try only");
    assert!(!log.contains("pw-one"), "the password leaked into the log");
    assert!(
        q.stderr_text()
            .contains("Ticketing is enabled, but no password is set"),
        "the server did not reject the ticket: {}",
        q.stderr_text()
    );
    let lost = stamps(&s, "session lost after")[0];
    let tried = stamps(&s, "reconnect attempt 1")[0];
    let gave_up = stamps(&s, "giving up:")[0];
    eprintln!(
        "rejected: attempt 1 at +{:.3} s, exit 77 {:.3} s after it; QEMU says: {}",
        tried - lost,
        gave_up - tried,
        q.stderr_text()
            .lines()
            .rfind(|l| l.contains("password") || l.contains("icket"))
            .unwrap_or("(nothing)")
    );
}

/// 5. `wait_for_ticket_secs`: a consumed single-use ticket makes spiced wait; a
///    new .vv at the same path (with the server's new password) brings every
///    channel back.
#[test]
fn waits_for_ticket_and_uses_new_vv_file() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password("pw-one"));
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(
        dir.path(),
        &q,
        &[("password", "pw-one"), ("delete-this-file", "1")],
    );
    let mut s = Spiced::start(&vv, &config(dir.path(), "wait_for_ticket_secs = 60"), &[]);
    wait_linked(&q, &s, 1);
    assert!(!vv.exists(), "single-use .vv not deleted");
    q.restart_same_ports();
    assert!(
        s.wait_log(
            "-> waiting for a fresh ticket (one_shot_consumed)",
            Duration::from_secs(10)
        ),
        "spiced does not wait for a ticket"
    );
    assert_eq!(s.try_exit(), None, "spiced exited instead of waiting");
    q.new_password("pw-two");
    let written = Instant::now();
    let vv2 = vv_for(
        dir.path(),
        &q,
        &[("password", "pw-two"), ("delete-this-file", "1")],
    );
    assert_eq!(vv2, vv, "same path");
    assert!(
        s.wait_log(
            "new .vv file: new connection settings",
            Duration::from_secs(10)
        ),
        "the new .vv was not noticed"
    );
    wait_linked(&q, &s, 2);
    let took = written.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || !vv.exists()),
        "the new single-use .vv was not deleted"
    );
    assert!(s.lines_with("reconnect attempt").is_empty(), "no retries");
    let log = s.log();
    assert!(
        !log.contains("pw-two") && !log.contains("pw-one"),
        "password in log"
    );
    eprintln!(
        "wait for ticket: new .vv -> all 11 channels in {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(s.stop(), Some(0));
}

/// 6. SIGHUP while a retry is far off (30 s): spiced re-reads the .vv and
///    connects at once with the new password.
#[test]
fn sighup_with_new_vv_reconnects_at_once() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password("pw-one"));
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[("password", "pw-one")]);
    let mut s = Spiced::start(&vv, &config(dir.path(), "initial_delay_secs = 30"), &[]);
    wait_linked(&q, &s, 1);
    q.restart_same_ports();
    assert!(
        s.wait_log("-> pending: attempt 1 after 30s", Duration::from_secs(10)),
        "no retry scheduled"
    );
    q.new_password("pw-two");
    vv_for(dir.path(), &q, &[("password", "pw-two")]);
    let hup = Instant::now();
    s.signal(libc::SIGHUP);
    wait_linked(&q, &s, 2);
    let took = hup.elapsed();
    let log = s.log();
    assert!(log.contains("SIGHUP: re-reading"), "{log}");
    assert!(
        log.contains("-> connecting (fresh settings loaded)"),
        "{log}"
    );
    assert!(
        s.lines_with("reconnect attempt").is_empty(),
        "the 30 s retry never ran"
    );
    eprintln!(
        "SIGHUP: all 11 channels {:.2} s after the signal (retry was 30 s off)",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "not at once: {took:?}");
    assert_eq!(s.stop(), Some(0));
}

/// 6b. SIGHUP while connected: `systemctl reload` means "use this .vv now", so
///     the running session is replaced by one made with the new settings.
#[test]
fn sighup_while_connected_replaces_the_session() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password("pw-one"));
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[("password", "pw-one")]);
    let mut s = Spiced::start(&vv, &config(dir.path(), ""), &[]);
    wait_linked(&q, &s, 1);
    let before = connection_ids(&q);
    q.new_password("pw-two");
    vv_for(dir.path(), &q, &[("password", "pw-two")]);
    let hup = Instant::now();
    s.signal(libc::SIGHUP);
    wait_linked(&q, &s, 2);
    let took = hup.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = connection_ids(&q);
            now.len() == 1 && now != before
        }),
        "QEMU still sees the old session: {before:?} -> {:?}",
        connection_ids(&q)
    );
    let log = s.log();
    assert!(log.contains("fresh settings loaded: reconnecting"), "{log}");
    assert!(
        !log.contains("session lost"),
        "a reload is no disconnect: {log}"
    );
    eprintln!(
        "SIGHUP while connected: new session fully linked {:.2} s after the signal",
        took.as_secs_f64()
    );
    assert_eq!(s.stop(), Some(0));
}

/// 8. `refresh_command` on a consumed single-use ticket: its stdout is a fresh
///    .vv with the server's new password; spiced links with it.
#[test]
fn refresh_command_output_is_used() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::with_password("pw-one"));
    let dir = tempfile::tempdir().unwrap();
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = vv_for(fresh_dir.path(), &q, &[("password", "pw-two")]);
    let vv = vv_for(
        dir.path(),
        &q,
        &[("password", "pw-one"), ("delete-this-file", "1")],
    );
    let reconnect = format!(
        "initial_delay_secs = 3\nrefresh_command = [\"/bin/sh\", \"-c\", \"cat {}\"]",
        fresh.display()
    );
    let mut s = Spiced::start(&vv, &config(dir.path(), &reconnect), &[]);
    wait_linked(&q, &s, 1);
    let killed = Instant::now();
    q.kill();
    assert!(
        s.wait_log("running reconnect.refresh_command", Duration::from_secs(10)),
        "refresh command not run"
    );
    assert!(
        s.wait_log(
            "refresh command: new connection settings",
            Duration::from_secs(10)
        ),
        "refresh output not used"
    );
    // The server comes back with the password the refresh command handed out.
    q.restart_same_ports();
    q.new_password("pw-two");
    wait_linked(&q, &s, 2);
    let took = killed.elapsed();
    let log = s.log();
    assert!(log.contains("one_shot_consumed"), "{log}");
    assert!(
        !log.contains("pw-two") && !log.contains("pw-one"),
        "password in log"
    );
    eprintln!(
        "refresh: {} refresh run(s), {} retry attempt(s); all 11 channels {:.2} s after the kill",
        s.lines_with("running reconnect.refresh_command").len(),
        s.lines_with("reconnect attempt").len(),
        took.as_secs_f64()
    );
    assert_eq!(s.try_exit(), None);
    assert_eq!(s.stop(), Some(0));
}

/// The session must be up this long for its clean close to count as a takeover
/// (`spiced::reconnect::TAKEOVER_MIN_HEALTHY` is 5 s), plus margin.
const HEALTHY: f64 = 5.5;

/// A second client for the takeover tests: spiced with reconnecting disabled.
fn intruder(vv: &Path, spool: &Path) -> Spiced {
    std::fs::create_dir_all(spool).unwrap();
    Spiced::start(vv, &config(spool, "enabled = false"), &[])
}

/// The takeover pattern up to its second half: `a` links and stays up 5.5 s; a
/// first intruder takes the session (a clean close of a healthy session), `a`
/// retries after 1 s, links at once (the server is reachable: the close counts)
/// and kicks the intruder; `a` stays up 5.5 s again. Returns the first intruder's
/// exit code.
fn first_takeover(q: &Qemu, a: &Spiced, vv: &Path, dir: &Path) -> i32 {
    wait_linked(q, a, 1);
    keep_up_until(*stamps(a, "-> connected").last().unwrap(), HEALTHY);
    let mut b1 = intruder(vv, &dir.join("b1"));
    assert!(
        a.wait_log("session lost after", Duration::from_secs(20)),
        "the intruder did not take the session"
    );
    assert!(
        a.wait_log("-> pending: attempt 1 after 1s", Duration::from_secs(5)),
        "the first takeover-like close must be retried normally"
    );
    wait_linked(q, a, 2);
    let b1_code = b1
        .wait_exit(Duration::from_secs(20))
        .expect("intruder 1 exits");
    keep_up_until(*stamps(a, "-> connected").last().unwrap(), HEALTHY);
    b1_code
}

/// Further intruders until `a` recognises a takeover; returns the intruder that
/// holds the session and how many closes it took (2, or 3 when the second close
/// came after the same silence on main as a middlebox's idle cut would: such a
/// close confirms a takeover only after two earlier ones, docs/reconnect.md).
fn take_over_until_recognised(q: &Qemu, a: &Spiced, vv: &Path, dir: &Path) -> (Spiced, usize) {
    for n in 2..=3 {
        // Each intruder after a different silence: two takeovers after the same
        // silence on main are what a middlebox's idle cut looks like.
        std::thread::sleep(Duration::from_secs(3 * (n as u64 - 1)));
        let b = intruder(vv, &dir.join(format!("b{n}")));
        assert!(
            a.wait_log_count("session lost after", n, Duration::from_secs(20)),
            "intruder {n} did not take the session"
        );
        // The supervisor decides at once; give the log line a moment.
        if a.wait_log(
            "appears to have taken the session over",
            Duration::from_secs(2),
        ) {
            return (b, n);
        }
        assert!(n < 3, "no takeover recognised after 3 closes: {}", a.log());
        let mut b = b;
        wait_linked(q, a, n + 1);
        assert_eq!(
            b.wait_exit(Duration::from_secs(20)),
            Some(69),
            "intruder {n} kicked"
        );
        keep_up_until(*stamps(a, "-> connected").last().unwrap(), HEALTHY);
    }
    unreachable!()
}

/// Session loss `nth` of `a` was a clean close by the server (a takeover closes
/// every channel at once; whichever EOF spiced reads first is named).
fn assert_clean_close(a: &Spiced, nth: usize) {
    let lost = a.lines_with("session lost after");
    let line = lost
        .get(nth)
        .unwrap_or_else(|| panic!("no session loss #{nth}"));
    assert!(
        line.contains("server closed the connection"),
        "a takeover shows as a clean close: {line}"
    );
}

/// The channels named as failing first in `a`'s session losses (for the notes).
fn first_failed(a: &Spiced) -> Vec<String> {
    a.lines_with("session lost after")
        .iter()
        .filter_map(|l| {
            let rest = l.split(" s: ").nth(1)?;
            Some(rest.split(" failed first").next()?.to_string())
        })
        .collect()
}

/// 7a. No kick wars, `on_takeover = "yield"`: the takeover within the
///     window (the second close, or the third after an idle-shaped second) is
///     recognised and spiced gives up with `taken_over` (69), leaving
///     the other client in peace.
#[test]
fn takeover_twice_yields_with_69() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[]);
    let mut a = Spiced::start(&vv, &config(dir.path(), "on_takeover = \"yield\""), &[]);
    let b1_code = first_takeover(&q, &a, &vv, dir.path());
    assert_eq!(
        b1_code, 69,
        "intruder 1 is kicked and, not reconnecting, exits 69"
    );
    assert_clean_close(&a, 0);

    let (mut b2, n) = take_over_until_recognised(&q, &a, &vv, dir.path());
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)),
        Some(69),
        "exit status"
    );
    let log = a.log();
    assert!(
        log.contains("another client appears to have taken the session over"),
        "{log}"
    );
    assert!(log.contains("yielding (on_takeover = \"yield\")"), "{log}");
    assert!(
        log.contains("giving up: taken_over (exit status 69)"),
        "{log}"
    );
    assert_clean_close(&a, n - 1);
    assert_eq!(
        a.lines_with("reconnect attempt").len(),
        n - 1,
        "only the closes before the takeover were retried"
    );
    // The intruder keeps the session.
    wait_linked(&q, &b2, 1);
    let ids = connection_ids(&q);
    assert_eq!(ids.len(), 1);
    assert!(
        !wait_until(Duration::from_secs(2), || connection_ids(&q) != ids),
        "someone took the session from the second client"
    );
    assert_eq!(b2.try_exit(), None);
    let lost = stamps(&a, "session lost after");
    let gave_up = stamps(&a, "giving up:")[0];
    eprintln!(
        "takeover/yield: recognised on close {n}, {:.2} s after the first (first EOF read on {:?}); gave up {:.3} s after it",
        lost[n - 1] - lost[0],
        first_failed(&a),
        gave_up - lost[n - 1]
    );
    assert_eq!(b2.stop(), Some(0));
}

/// 7b. No kick wars, `on_takeover = "reclaim"` with `takeover_delay_secs = 6`:
///     after the second takeover spiced leaves the other client alone for at least
///     6 s, then takes the session back.
#[test]
fn takeover_twice_reclaims_after_the_delay() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = vv_for(dir.path(), &q, &[]);
    let mut a = Spiced::start(
        &vv,
        &config(
            dir.path(),
            "on_takeover = \"reclaim\"\ntakeover_delay_secs = 6",
        ),
        &[],
    );
    let b1_code = first_takeover(&q, &a, &vv, dir.path());
    assert_eq!(b1_code, 69);

    let (mut b2, n) = take_over_until_recognised(&q, &a, &vv, dir.path());
    assert!(
        a.wait_log("reclaiming it after 6s", Duration::from_secs(5)),
        "takeover not recognised: {}",
        a.log()
    );
    // At least takeover_delay_secs, and never shorter than the back-off's own
    // delay for that attempt (4 s for attempt 2, 16 s for attempt 3).
    let delay = if n == 2 { 6.0 } else { 16.0 };
    assert!(a
        .log()
        .contains(&format!("-> pending: attempt {n} after {delay}s")));
    assert_clean_close(&a, n - 1);
    // The intruder holds the session undisturbed for the first second (and more).
    wait_linked(&q, &b2, 1);
    let ids = connection_ids(&q);
    assert_eq!(ids.len(), 1);
    let lost2 = stamps(&a, "session lost after")[n - 1];
    let quiet_until = lost2 + 1.0;
    assert!(
        !wait_until(
            Duration::from_secs_f64((quiet_until - unix_now()).max(0.0)),
            || connection_ids(&q) != ids
        ),
        "spiced reclaimed within a second of the takeover"
    );
    assert!(
        a.lines_with(&format!("reconnect attempt {n}")).is_empty(),
        "reclaim attempt within the first second"
    );
    // Then it reclaims: every channel back, the intruder kicked.
    wait_linked(&q, &a, n + 1);
    assert_eq!(
        b2.wait_exit(Duration::from_secs(20)),
        Some(69),
        "intruder 2 kicked"
    );
    let reclaim = stamps(&a, &format!("reconnect attempt {n}"))[0];
    let waited = reclaim - lost2;
    eprintln!(
        "takeover/reclaim: recognised on close {n}, {:.2} s after the first (first EOF read on {:?}); reclaimed {waited:.3} s after it",
        lost2 - stamps(&a, "session lost after")[0],
        first_failed(&a)
    );
    assert!(waited >= delay - EARLY_SLACK, "reclaimed after {waited} s");
    assert!(waited < delay + 4.0, "reclaimed after {waited} s");
    assert_eq!(a.stop(), Some(0));
}
