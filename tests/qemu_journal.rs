//! journald against a real QEMU: spiced logs through the native protocol to a
//! real systemd-journald (`scripts/journald-sandbox.sh`: private mount and PID
//! namespaces, root), the server is killed, and `journalctl` finds what an
//! operator filters on: priorities, channels, the session-lost event with its
//! cause and report. Without the journal socket the lines reach stderr with
//! `<N>` priority prefixes. Needs root, systemd-journald, journalctl, unshare.

mod common;
use ::spiced::events;
use common::*;
use serde_json::Value;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/journald-sandbox.sh");
const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/spiced.catalog");

/// Root and the tools the sandbox needs. Without them: panics under `CI` (CI
/// must never silently skip), else prints a skip notice and returns false.
fn require_journald() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let journald = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let why = if !root {
        "not root (the journald sandbox mounts in a private namespace)"
    } else if !(journald && have_program("journalctl") && have_program("unshare")) {
        "systemd-journald, journalctl or unshare missing (apt-get install systemd util-linux)"
    } else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// `journald-sandbox.sh ARGS -- spiced` (the harness appends spiced's arguments).
fn sandboxed_spiced(args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(SANDBOX).args(args).arg("--").arg(spiced_bin());
    c
}

/// `journalctl --directory DIR -o json MATCHES...`: one object per entry.
fn journal<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(dir: &Path, matches: &[S]) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(dir)
        .args(["--no-pager", "-o", "json"])
        .args(matches)
        .output()
        .expect("run journalctl");
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "journalctl {matches:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("journalctl JSON"))
        .collect()
}

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or("")
}

fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| format!("<{}> {}", field(e, "PRIORITY"), field(e, "MESSAGE")))
        .collect()
}

#[test]
fn a_lost_session_is_found_by_priority_channel_and_message_id() {
    if !require_qemu() || !require_journald() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let kept = dir.path().join("journal");
    let spool = dir.path().join("spool");
    // READY (sent once every channel linked) says when to kill the server.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let toml = format!(
        "[log]\ntarget = \"journald\"\n\
         [reconnect]\nmax_attempts = 1\ninitial_delay_secs = 0.1\n\
         [report]\nspool_dir = {spool:?}\n"
    );
    let mut cmd = sandboxed_spiced(&["--keep", kept.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("SPICED_INSTANCE", "lab");
    let mut s = Spiced::start_cmd(cmd, &vv, &toml, &[]);

    let end = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m: &String| m.contains("READY=1")) && Instant::now() < end {
        if let Ok(n) = notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(s.try_exit().is_none(), "spiced exited: {}", s.log());
    }
    assert!(
        got.iter().any(|m| m.contains("READY=1")),
        "no READY: {got:?}"
    );
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=connected: 11 channels")),
        "{got:?}"
    );
    q.kill();
    // One reconnect attempt against the dead port, then it gives up (69).
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(69),
        "{}",
        s.log()
    );
    let stderr = s.log();
    assert!(
        !stderr.contains("session lost"),
        "lines went to stderr instead of the journal:\n{stderr}"
    );

    let all = journal(&kept, &["SYSLOG_IDENTIFIER=spiced"]);
    eprintln!("journal:\n{}", messages(&all).join("\n"));
    assert!(
        all.iter()
            .any(|e| field(e, "PRIORITY") == "6"
                && field(e, "MESSAGE").contains("session fully linked")),
        "info lines are there, at priority 6"
    );
    assert!(all.iter().all(|e| field(e, "SPICED_INSTANCE") == "lab"));

    // journalctl -p warning: the loss, not the info lines.
    let warnings = journal(&kept, &["-p", "warning", "SYSLOG_IDENTIFIER=spiced"]);
    let w = messages(&warnings);
    assert!(
        w.iter().any(|m| m.starts_with("<4> session lost after")),
        "{w:#?}"
    );
    assert!(w.iter().any(|m| m.starts_with("<3> giving up:")), "{w:#?}");
    assert!(
        warnings
            .iter()
            .all(|e| matches!(field(e, "PRIORITY"), "0" | "1" | "2" | "3" | "4")),
        "{w:#?}"
    );
    assert!(
        !w.iter()
            .any(|m| m.contains("session fully linked") || m.contains("channel display up")),
        "{w:#?}"
    );

    // SPICED_CHANNEL=display: display's lines, and only those.
    let display = journal(&kept, &["SPICED_CHANNEL=display"]);
    let d = messages(&display);
    assert!(d.iter().any(|m| m.contains("channel display up")), "{d:#?}");
    assert!(
        d.iter().any(|m| m.contains("channel display totals:")),
        "{d:#?}"
    );
    assert!(d.iter().all(|m| m.contains("display")), "{d:#?}");

    // MESSAGE_ID=<session lost>: exactly one, with its cause and report.
    let lost = journal(&kept, &[&format!("MESSAGE_ID={}", events::SESSION_LOST)]);
    assert_eq!(lost.len(), 1, "{:#?}", messages(&lost));
    let l = &lost[0];
    assert_eq!(field(l, "PRIORITY"), "4");
    assert_eq!(field(l, "SPICED_CHANNEL"), "main");
    assert_eq!(field(l, "SPICED_SESSION"), "1");
    assert!(!field(l, "SPICED_CAUSE").is_empty(), "{l:#}");
    let report = field(l, "SPICED_REPORT");
    assert!(
        report.starts_with(spool.to_str().unwrap()) && report.ends_with(".zip"),
        "{l:#}"
    );
    // The report it names is the one written.
    let written = journal(&kept, &[&format!("MESSAGE_ID={}", events::REPORT_WRITTEN)]);
    assert!(
        written.iter().any(|e| field(e, "SPICED_REPORT") == report),
        "{:#?}",
        messages(&written)
    );
    assert!(Path::new(report).is_file(), "{report} missing");

    // The other events an operator searches for.
    let one = |id: &str| -> Vec<Value> { journal(&kept, &[&format!("MESSAGE_ID={id}")]) };
    let est = one(events::SESSION_ESTABLISHED);
    assert_eq!(est.len(), 1, "{:#?}", messages(&est));
    assert_eq!(field(&est[0], "SPICED_SESSION"), "1");
    let attempt = one(events::RECONNECT_ATTEMPT);
    assert_eq!(attempt.len(), 1, "{:#?}", messages(&attempt));
    assert_eq!(field(&attempt[0], "SPICED_ATTEMPT"), "1");
    let gave_up = one(events::GAVE_UP);
    assert_eq!(gave_up.len(), 1, "{:#?}", messages(&gave_up));
    assert_eq!(field(&gave_up[0], "PRIORITY"), "3");
    assert_eq!(field(&gave_up[0], "SPICED_CAUSE"), "retries_exhausted");
    assert!(
        all.iter().any(|e| field(e, "SPICED_STATE") == "pending"),
        "reconnect transitions carry the state"
    );
}

/// `log.target = "journald"` with no journal socket: every line on stderr,
/// each with the `<N>` prefix journald's stream reader turns into a priority.
#[test]
fn without_the_journal_socket_lines_reach_stderr_with_priorities() {
    if !require_journald() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: connect failures, one retry, give up.
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &free_port().to_string())],
    );
    let toml = format!(
        "[log]\ntarget = \"journald\"\n\
         [reconnect]\nmax_attempts = 1\ninitial_delay_secs = 0.1\n\
         [report]\nspool_dir = {:?}\n",
        dir.path().join("spool")
    );
    let mut s = Spiced::start_cmd(sandboxed_spiced(&["--no-journald"]), &vv, &toml, &[]);
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(69),
        "{}",
        s.log()
    );
    let log = s.log();
    eprintln!("{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let b = l.as_bytes();
        assert!(
            b.len() > 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>',
            "no priority prefix: {l:?}"
        );
    }
    let prefix_of = |needle: &str| -> Option<&str> {
        lines.iter().find(|l| l.contains(needle)).map(|l| &l[..3])
    };
    assert_eq!(prefix_of("connecting to"), Some("<6>"), "{log}");
    assert_eq!(prefix_of("connect failed"), Some("<4>"), "{log}");
    assert_eq!(prefix_of("giving up:"), Some("<3>"), "{log}");
}

/// The catalog as journalctl itself reads it: every event id has its entry.
#[test]
fn journalctl_reads_the_catalog() {
    if !require_journald() {
        return;
    }
    let ids: Vec<&str> = events::ALL.iter().map(|(_, id)| *id).collect();
    let out = Command::new("bash")
        .arg(SANDBOX)
        .args(["--catalog", CATALOG, "--", "journalctl", "--dump-catalog"])
        .args(&ids)
        .output()
        .expect("run the sandbox");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, id) in events::ALL {
        let entry = text
            .split(&format!("-- {id}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} ({id}) not in the catalog:\n{text}"));
        assert!(entry.contains("Defined-By: spiced"), "{name}: {entry}");
    }
}

/// `log.target = "auto"`: the native protocol when JOURNAL_STREAM names stderr
/// (as systemd sets it), plain stderr when it names something else (a child
/// that inherited the variable but not the stream).
#[test]
fn auto_logs_natively_only_when_stderr_is_the_journal_stream() {
    if !require_journald() || !have_program("systemd-cat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &free_port().to_string())],
    );
    let cfg = dir.path().join("spiced.toml");
    std::fs::write(
        &cfg,
        "[reconnect]\nmax_attempts = 1\ninitial_delay_secs = 0.1\n[report]\nenabled = false\n",
    )
    .unwrap();
    for (stream, native) in [
        ("$(stat -L -c %d:%i /proc/self/fd/2)", true),
        ("1:1", false),
    ] {
        let kept = dir.path().join(format!("journal-{native}"));
        // systemd-cat connects stdout and stderr to journald's stream socket.
        let script = format!(
            "export JOURNAL_STREAM={stream}; exec {} --vv {} --config {}",
            spiced_bin(),
            vv.display(),
            cfg.display()
        );
        let out = Command::new("bash")
            .arg(SANDBOX)
            .args(["--keep", kept.to_str().unwrap(), "--"])
            .args(["timeout", "60", "systemd-cat", "-t", "spiced-stream"])
            .args(["bash", "-c", &script])
            .env("RUST_LOG", "info")
            .output()
            .expect("run the sandbox");
        assert_eq!(
            out.status.code(),
            Some(69),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let native_lines = journal(&kept, &["SYSLOG_IDENTIFIER=spiced"]);
        let stream_lines = journal(&kept, &["SYSLOG_IDENTIFIER=spiced-stream"]);
        eprintln!(
            "JOURNAL_STREAM={stream}: native {:#?}\nstream {:#?}",
            messages(&native_lines),
            messages(&stream_lines)
        );
        if native {
            assert!(stream_lines.is_empty());
            assert!(native_lines
                .iter()
                .all(|e| field(e, "_TRANSPORT") == "journal"));
            let failed = native_lines
                .iter()
                .find(|e| field(e, "MESSAGE").starts_with("connect failed"))
                .expect("a connect-failed entry");
            assert_eq!(field(failed, "PRIORITY"), "4");
            assert_eq!(field(failed, "SPICED_CAUSE"), "connect_failed");
        } else {
            assert!(native_lines.is_empty());
            assert!(stream_lines
                .iter()
                .any(|e| field(e, "MESSAGE").contains("giving up:")));
        }
    }
}
