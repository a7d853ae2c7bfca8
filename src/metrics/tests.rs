//! Test code only: the parent declares this module under #[cfg(test)].
use super::*;
use crate::daemon::status::{Counts, LastDisconnect};
use crate::wire::ChannelType;

fn status() -> Status {
    Status {
        state: "connected",
        describe: "connected (session 3)".into(),
        host: "vm.example".into(),
        since: Some(1_800_000_100.0),
        established: Some(1_800_000_100.0),
        channels_up: 10,
        channels_total: 11,
        channels_down: BTreeMap::from([("usbredir:1".into(), "reset".into())]),
        attempt: None,
        attempt_budget: Some(3),
        next_attempt_at: None,
        reconnects: 2,
        last_disconnect: Some(LastDisconnect {
            at: 1_800_000_090.25,
            channel: "main".into(),
            cause: "reset".into(),
            message: "connection reset".into(),
            report: Some("/spool/a.zip".into()),
            report_seq: Some(1),
        }),
        ticket_valid_until: Some(1_800_003_600),
        counts: Counts {
            disconnects: BTreeMap::from([("reset".into(), 2), ("server_closed".into(), 1)]),
            channel_losses: BTreeMap::from([("reset".into(), 1)]),
            connect_failures: BTreeMap::new(),
            reconnect_attempts: 4,
            reports_written: 2,
            reports_skipped: 1,
            reports_failed: 0,
        },
        agent_connected: Some(true),
        display: Some(crate::display::screen::DisplayView {
            width: 1024,
            height: 768,
            changed_at: Some(1_800_000_105.25),
            unchanged_secs: Some(60.25),
            digest: Some("0f0f00ff12345678".into()),
            stale: Some(true),
            linked: true,
            draws: 10,
            stream_frames: 0,
            extra_bytes: 4096,
            skipped: BTreeMap::from([("copy: not decoded: quic".into(), 3)]),
        }),
    }
}

const GOLDEN: &str = r#"# HELP spiced_build_info spiced's version (always 1).
# TYPE spiced_build_info gauge
spiced_build_info{spiced_instance="kiosk-1",version="0.1.0"} 1
# HELP spiced_state 1 for the daemon's current state, 0 for the others.
# TYPE spiced_state gauge
spiced_state{spiced_instance="kiosk-1",state="idle"} 0
spiced_state{spiced_instance="kiosk-1",state="connecting"} 0
spiced_state{spiced_instance="kiosk-1",state="connected"} 1
spiced_state{spiced_instance="kiosk-1",state="pending"} 0
spiced_state{spiced_instance="kiosk-1",state="waiting_for_ticket"} 0
spiced_state{spiced_instance="kiosk-1",state="gave_up"} 0
spiced_state{spiced_instance="kiosk-1",state="stopped"} 0
# HELP spiced_session_up 1 while a SPICE session is established.
# TYPE spiced_session_up gauge
spiced_session_up{spiced_instance="kiosk-1"} 1
# HELP spiced_channels_up Channels of the current session that are linked.
# TYPE spiced_channels_up gauge
spiced_channels_up{spiced_instance="kiosk-1"} 10
# HELP spiced_channels Channels of the current session (linked at least once).
# TYPE spiced_channels gauge
spiced_channels{spiced_instance="kiosk-1"} 11
# HELP spiced_state_since_timestamp_seconds When the current state began (unix time).
# TYPE spiced_state_since_timestamp_seconds gauge
spiced_state_since_timestamp_seconds{spiced_instance="kiosk-1"} 1800000100.000
# HELP spiced_session_established_timestamp_seconds When the current session was established (unix time).
# TYPE spiced_session_established_timestamp_seconds gauge
spiced_session_established_timestamp_seconds{spiced_instance="kiosk-1"} 1800000100.000
# HELP spiced_session_uptime_seconds Seconds since the current session was established.
# TYPE spiced_session_uptime_seconds gauge
spiced_session_uptime_seconds{spiced_instance="kiosk-1"} 65.500
# HELP spiced_disconnects_total Established sessions lost, by cause.
# TYPE spiced_disconnects_total counter
spiced_disconnects_total{spiced_instance="kiosk-1",cause="reset"} 2
spiced_disconnects_total{spiced_instance="kiosk-1",cause="server_closed"} 1
# HELP spiced_channel_losses_total Channels other than main lost while the session went on, by cause.
# TYPE spiced_channel_losses_total counter
spiced_channel_losses_total{spiced_instance="kiosk-1",cause="reset"} 1
# HELP spiced_reconnect_attempts_total Reconnect attempts started (the first connect not counted).
# TYPE spiced_reconnect_attempts_total counter
spiced_reconnect_attempts_total{spiced_instance="kiosk-1"} 4
# HELP spiced_reconnects_total Sessions re-established after the first one.
# TYPE spiced_reconnects_total counter
spiced_reconnects_total{spiced_instance="kiosk-1"} 2
# HELP spiced_reconnect_attempt The reconnect attempt running or waited for; 0 when none.
# TYPE spiced_reconnect_attempt gauge
spiced_reconnect_attempt{spiced_instance="kiosk-1"} 0
# HELP spiced_reconnect_attempt_budget Attempts one disconnect cluster may use (absent: unlimited).
# TYPE spiced_reconnect_attempt_budget gauge
spiced_reconnect_attempt_budget{spiced_instance="kiosk-1"} 3
# HELP spiced_reports_written_total Disconnect reports written.
# TYPE spiced_reports_written_total counter
spiced_reports_written_total{spiced_instance="kiosk-1"} 2
# HELP spiced_reports_skipped_total Disconnect reports not written because of report.cooldown_secs.
# TYPE spiced_reports_skipped_total counter
spiced_reports_skipped_total{spiced_instance="kiosk-1"} 1
# HELP spiced_reports_failed_total Disconnect reports whose write failed.
# TYPE spiced_reports_failed_total counter
spiced_reports_failed_total{spiced_instance="kiosk-1"} 0
# HELP spiced_keepalives_sent_total Keepalive messages spiced sent, by channel.
# TYPE spiced_keepalives_sent_total counter
spiced_keepalives_sent_total{spiced_instance="kiosk-1",channel="main"} 3
spiced_keepalives_sent_total{spiced_instance="kiosk-1",channel="display"} 7
# HELP spiced_channel_received_bytes_total Bytes received from the server, by channel.
# TYPE spiced_channel_received_bytes_total counter
spiced_channel_received_bytes_total{spiced_instance="kiosk-1",channel="main"} 1000
spiced_channel_received_bytes_total{spiced_instance="kiosk-1",channel="display"} 123456789
# HELP spiced_channel_sent_bytes_total Bytes sent to the server, by channel.
# TYPE spiced_channel_sent_bytes_total counter
spiced_channel_sent_bytes_total{spiced_instance="kiosk-1",channel="main"} 200
spiced_channel_sent_bytes_total{spiced_instance="kiosk-1",channel="display"} 4096
# HELP spiced_agent_connected 1 while the server says the guest agent is connected (connected only).
# TYPE spiced_agent_connected gauge
spiced_agent_connected{spiced_instance="kiosk-1"} 1
# HELP spiced_display_changed_timestamp_seconds When the guest's screen last changed (unix time).
# TYPE spiced_display_changed_timestamp_seconds gauge
spiced_display_changed_timestamp_seconds{spiced_instance="kiosk-1"} 1800000105.250
# HELP spiced_display_unchanged_seconds Seconds the guest's screen has not changed (at the last write).
# TYPE spiced_display_unchanged_seconds gauge
spiced_display_unchanged_seconds{spiced_instance="kiosk-1"} 60.250
# HELP spiced_display_stale 1 once the screen has not changed for display.stale_after.
# TYPE spiced_display_stale gauge
spiced_display_stale{spiced_instance="kiosk-1"} 1
# HELP spiced_display_info The frame's perceptual digest and size (always 1).
# TYPE spiced_display_info gauge
spiced_display_info{spiced_instance="kiosk-1",digest="0f0f00ff12345678",width="1024",height="768"} 1
# HELP spiced_display_mirror_bytes Bytes the display mirror holds beside the screen (off-screen surfaces, caches).
# TYPE spiced_display_mirror_bytes gauge
spiced_display_mirror_bytes{spiced_instance="kiosk-1"} 4096
# HELP spiced_display_skipped_total Display messages and images the mirror did not decode or draw on this link, by kind.
# TYPE spiced_display_skipped_total counter
spiced_display_skipped_total{spiced_instance="kiosk-1",what="copy: not decoded: quic"} 3
# HELP spiced_ticket_valid_until_timestamp_seconds The ticket's ticket-valid-until (unix time).
# TYPE spiced_ticket_valid_until_timestamp_seconds gauge
spiced_ticket_valid_until_timestamp_seconds{spiced_instance="kiosk-1"} 1800003600
# HELP spiced_last_disconnect_timestamp_seconds When the last established session was lost (unix time).
# TYPE spiced_last_disconnect_timestamp_seconds gauge
spiced_last_disconnect_timestamp_seconds{spiced_instance="kiosk-1"} 1800000090.250
"#;

fn traffic() -> BTreeMap<ChannelId, TrafficTotals> {
    BTreeMap::from([
        (
            ChannelId::MAIN,
            TrafficTotals {
                bytes_in: 1000,
                bytes_out: 200,
                keepalives: 3,
            },
        ),
        (
            ChannelId::new(ChannelType::Display, 0),
            TrafficTotals {
                bytes_in: 123_456_789,
                bytes_out: 4096,
                keepalives: 7,
            },
        ),
    ])
}

#[test]
fn renders_the_golden_text() {
    let st = status();
    let t = traffic();
    let out = render(&Snapshot {
        instance: "kiosk-1",
        version: "0.1.0",
        status: &st,
        traffic: &t,
        now: 1_800_000_165.5,
    });
    if out != GOLDEN {
        for (a, b) in out.lines().zip(GOLDEN.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(out, GOLDEN);
    }
}

#[test]
fn optional_series_are_absent_when_unknown_and_labels_are_escaped() {
    let st = Status {
        state: "pending",
        attempt: Some(2),
        attempt_budget: None,
        since: Some(5.0),
        ..Status::default()
    };
    let out = render(&Snapshot {
        instance: "a\"b\\c\nd",
        version: "0.1.0",
        status: &st,
        traffic: &BTreeMap::new(),
        now: 10.0,
    });
    for absent in [
        "spiced_session_established_timestamp_seconds",
        "spiced_session_uptime_seconds",
        "spiced_disconnects_total",
        "spiced_reconnect_attempt_budget",
        "spiced_keepalives_sent_total",
        "spiced_ticket_valid_until",
        "spiced_last_disconnect",
        "spiced_agent_connected",
        "spiced_display",
    ] {
        assert!(!out.contains(absent), "{absent} in:\n{out}");
    }
    assert!(
        out.contains(r#"spiced_session_up{spiced_instance="a\"b\\c\nd"} 0"#),
        "{out}"
    );
    assert!(out.contains(r#"spiced_reconnect_attempt{spiced_instance="a\"b\\c\nd"} 2"#));
    assert!(out.contains(r#"state="pending"} 1"#));
    // One sample per line: the escaped newline never breaks a line.
    assert!(out
        .lines()
        .all(|l| l.starts_with('#') || l.starts_with("spiced_")));
}

#[test]
fn instance_defaults_to_default() {
    assert_eq!(instance_name(None), "default");
    assert_eq!(instance_name(Some("")), "default");
    assert_eq!(instance_name(Some("kiosk1")), "kiosk1");
}

#[tokio::test(start_paused = true)]
async fn rewritten_on_change_and_about_every_15_s_one_write_at_a_time() {
    use crate::wake::Wake;
    let t0 = Instant::now();
    let mut s = Schedule::new(t0);
    assert!(s.poll_write(t0, None), "the first write is due at once");
    assert!(!s.poll_write(t0, None), "one in flight");
    assert!(s.in_flight());
    s.changed();
    assert!(
        !s.poll_write(t0, None),
        "a change during a write waits for it"
    );
    assert!(s.pending());
    s.written();
    assert!(s.poll_write(t0, None), "...and is written right after it");
    s.written();
    assert!(!s.pending());
    let w = s.window();
    assert_eq!((w.earliest, w.due), (t0 + MIN_AGE, t0 + MAX_AGE));
    // A wakeup at 15 s (the server's PING) whose next is ~15 s away carries it.
    tokio::time::advance(Duration::from_secs(9)).await;
    let ping = |horizon| Wake {
        start: Instant::now(),
        now: Instant::now(),
        horizon,
    };
    assert!(
        !s.poll_write(Instant::now(), Some(&ping(EVERY))),
        "too soon"
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(
        !s.poll_write(Instant::now(), Some(&ping(Duration::from_millis(50)))),
        "another wakeup comes before it falls due"
    );
    assert!(s.poll_write(Instant::now(), Some(&ping(EVERY))));
    s.written();
    let t1 = Instant::now();
    // Nothing wakes the process: its own timer at 20 s.
    assert_eq!(s.window().due, t1 + MAX_AGE);
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(
        !s.poll_write(Instant::now(), None),
        "nothing changed, not due"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(s.poll_write(Instant::now(), None), "due");
    s.written();
    tokio::time::advance(Duration::from_secs(3)).await;
    s.changed();
    assert!(
        s.poll_write(Instant::now(), None),
        "a change is written at once"
    );
    s.written();
    assert_eq!(
        s.window().due,
        Instant::now() + MAX_AGE,
        "the period restarts"
    );
}

#[test]
fn the_file_is_replaced_atomically_with_mode_0644() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spiced-x.prom");
    write_atomic(&path, "a 1\n").unwrap();
    let ino = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    write_atomic(&path, "a 2\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
    let m = std::fs::metadata(&path).unwrap();
    assert_ne!(
        Some(std::os::unix::fs::MetadataExt::ino(&m)),
        ino.ok(),
        "a new file renamed over the old one"
    );
    assert_eq!(m.permissions().mode() & 0o777, 0o644);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temp file left");
    // A directory that does not exist: an error, no panic, nothing left.
    assert!(write_atomic(&dir.path().join("no/such.prom"), "x").is_err());
}

/// Set in the child process of `the_file_is_0644_under_umask_077`.
const UMASK_CHILD_DIR: &str = "SPICED_TEST_METRICS_UMASK_DIR";

/// Half of `the_file_is_0644_under_umask_077`: runs only in the child it
/// starts (the umask is process-wide, so the parent's other tests never see
/// 077), and writes the file there.
#[test]
fn write_under_the_inherited_umask() {
    let Some(dir) = std::env::var_os(UMASK_CHILD_DIR) else {
        return;
    };
    // SAFETY: umask(2) cannot fail; read and put back.
    let mask = unsafe { libc::umask(0o022) };
    unsafe { libc::umask(mask) };
    assert_eq!(mask, 0o077, "the child runs under the units' UMask");
    write_atomic(&Path::new(&dir).join("spiced-x.prom"), "a 1\n").unwrap();
}

/// The units run spiced with UMask=0077; node_exporter runs as its own user
/// and must still read the file: it ends 0644 whatever the umask.
#[test]
fn the_file_is_0644_under_umask_077() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "metrics::tests::write_under_the_inherited_umask",
            "--test-threads=1",
        ])
        .env(UMASK_CHILD_DIR, dir.path());
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        child.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let out = child.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let m = std::fs::metadata(dir.path().join("spiced-x.prom"))
        .unwrap_or_else(|e| panic!("the child wrote nothing: {e}"));
    assert_eq!(m.permissions().mode() & 0o777, 0o644);
}

/// In a directory others can write to, whoever plants a symlink where the
/// temp file might go must not get spiced to write through it: at the old
/// predictable names (`.NAME.PID.tmp`, `.NAME.tmp`) a symlink to a victim
/// file leaves the victim untouched, and the target ends a regular file.
#[test]
fn a_planted_symlink_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let path = dir.path().join("spiced-x.prom");
    let planted = [
        format!(".spiced-x.prom.{}.tmp", std::process::id()),
        ".spiced-x.prom.tmp".to_string(),
    ];
    for name in &planted {
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    write_atomic(&path, "a 1\n").unwrap();
    write_atomic(&path, "a 2\n").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_file(), "{:?}", m.file_type());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
    for name in &planted {
        let l = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert!(l.file_type().is_symlink(), "{name} left alone");
    }
}
