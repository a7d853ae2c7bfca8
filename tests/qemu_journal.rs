//! journald against a real QEMU: spiced logs through the native protocol to a
//! real systemd-journald (`scripts/journald-sandbox.sh`: private mount and PID
//! namespaces, root), the server is killed, and `journalctl` finds what an
//! operator filters on: priorities, channels, the session-lost event with its
//! cause and report. Without the journal socket the lines reach stderr with
//! `<N>` priority prefixes. Needs root, systemd-journald, journalctl, unshare.

mod common;
use ::spiced::events;
use common::journal::{field, journal};
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

/// One request on the control socket, its answer (read timeout 5 s).
fn ask_status(sock: &Path) -> std::io::Result<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"{\"cmd\":\"status\"}\n")?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The pid of the process listening on `sock` (SO_PEERCRED), as this
/// process's pid namespace numbers it.
fn listener_pid(sock: &Path) -> i32 {
    use std::os::fd::AsRawFd;
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_PEERCRED: {}", std::io::Error::last_os_error());
    cred.pid
}

/// A stderr nobody reads (a pipe whose reader hangs, journald's stream while
/// journald stalls) never stalls spiced. No journal socket, so every line
/// falls back to stderr: a one-page pipe that is never read fills, and
/// spiced still answers on its control socket, keeps retrying, and stops on
/// SIGTERM within its bound.
#[test]
fn a_stderr_nobody_reads_never_stalls_spiced() {
    if !require_journald() {
        return;
    }
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &free_port().to_string())],
    );
    let sock = dir.path().join("control.sock");
    let cfg = dir.path().join("spiced.toml");
    std::fs::write(
        &cfg,
        format!(
            "[log]\ntarget = \"journald\"\n\
             [reconnect]\nmax_attempts = 1000\ninitial_delay_secs = 0.1\nmax_delay_secs = 0.1\n\
             [report]\nenabled = false\n[control]\nsocket = {sock:?}\n"
        ),
    )
    .unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned from here on.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on an owned pipe; one page is the smallest size.
    let size = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size > 0, "F_SETPIPE_SZ");
    let mut cmd = sandboxed_spiced(&["--no-journald"]);
    cmd.arg("--vv")
        .arg(&vv)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(wr));
    let mut child = spawn_tied(cmd).unwrap();
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(rd.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    };
    assert!(
        wait_until(Duration::from_secs(60), || queued() >= size / 2),
        "spiced wrote {} bytes to stderr",
        queued()
    );
    // Each attempt logs some 100 bytes: 100 more attempts overflow the pipe
    // whatever the lines' sizes.
    let attempts = |v: &Value| v["counts"]["reconnect_attempts"].as_u64().unwrap_or(0);
    let before = attempts(&ask_status(&sock).expect("status"));
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            last = ask_status(&sock).expect("status while stderr fills up");
            attempts(&last) >= before + 100
        }),
        "spiced stopped retrying with stderr full: {last}"
    );
    assert!(queued() > size - 512, "stderr was not full: {}", queued());
    // SAFETY: kill(2) on the pid spiced itself reported.
    unsafe { libc::kill(listener_pid(&sock), libc::SIGTERM) };
    let t = Instant::now();
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "SIGTERM took {:?} with stderr full",
        t.elapsed()
    );
    drop(rd);
}

/// Set in the child of `a_large_entry_keeps_its_fields_in_the_journal`.
const LARGE_ENTRY_CHILD: &str = "SPICED_TEST_LARGE_ENTRY";

/// Half of `a_large_entry_keeps_its_fields_in_the_journal`: runs only in the
/// child it starts inside the sandbox, and logs one entry of 1 MiB through
/// spiced's journal layer, on the real socket.
#[test]
fn log_a_large_entry() {
    use tracing_subscriber::layer::SubscriberExt;
    if std::env::var_os(LARGE_ENTRY_CHILD).is_none() {
        return;
    }
    let sub = tracing_subscriber::registry().with(::spiced::journal::JournalLayer::stderr());
    tracing::subscriber::with_default(sub, || {
        tracing::warn!(
            channel = %"display",
            message_id = events::SESSION_LOST,
            "large: {}",
            "y".repeat(1 << 20)
        );
    });
    assert!(::spiced::stderr::flush(Duration::from_secs(5)));
}

/// An entry larger than a datagram can be (EMSGSIZE) reaches a real journald
/// whole, with its fields (the sealed memfd of the native protocol), not as a
/// bare stream line.
#[test]
fn a_large_entry_keeps_its_fields_in_the_journal() {
    if !require_journald() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("journal");
    let out = Command::new("bash")
        .arg(SANDBOX)
        .args(["--keep", kept.to_str().unwrap(), "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "log_a_large_entry", "--test-threads=1"])
        .env(LARGE_ENTRY_CHILD, "1")
        .env("SPICED_INSTANCE", "big")
        .output()
        .expect("run the sandbox");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("large: "),
        "the entry fell back to stderr"
    );
    // --all: journalctl leaves fields over 4 KiB out of its JSON otherwise.
    let e = journal(&kept, &["--all", "SPICED_CHANNEL=display"]);
    assert_eq!(
        e.len(),
        1,
        "{:?}",
        e.iter().map(|e| field(e, "PRIORITY")).collect::<Vec<_>>()
    );
    let e = &e[0];
    assert_eq!(
        field(e, "MESSAGE").len(),
        "large: ".len() + (1 << 20) + " channel=display".len()
    );
    assert!(field(e, "MESSAGE").starts_with("large: yyy"));
    assert_eq!(field(e, "PRIORITY"), "4");
    assert_eq!(field(e, "MESSAGE_ID"), events::SESSION_LOST);
    assert_eq!(field(e, "SPICED_INSTANCE"), "big");
    assert_eq!(field(e, "_TRANSPORT"), "journal");
}

/// A config error at start comes before the logger it configures: under
/// systemd (stderr a journal stream) it is still an error entry. With the
/// native socket, natively; without it, `<3>` on the stream, which journald
/// reads as priority 3. `journalctl -p err` finds it either way.
#[test]
fn a_config_error_at_start_is_an_error_entry() {
    if !require_journald() || !have_program("systemd-cat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", "1")]);
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[reconnect]\nmax_attempt = 5\n").unwrap();
    for native in [true, false] {
        let kept = dir.path().join(format!("journal-{native}"));
        let hide = if native {
            ""
        } else {
            "rm /run/systemd/journal/socket; "
        };
        let script = format!(
            "{hide}export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec {} --vv {} --config {}",
            spiced_bin(),
            vv.display(),
            cfg.display()
        );
        let out = Command::new("bash")
            .arg(SANDBOX)
            .args(["--keep", kept.to_str().unwrap(), "--"])
            .args(["timeout", "60", "systemd-cat", "-t", "spiced-stream"])
            .args(["bash", "-c", &script])
            .output()
            .expect("run the sandbox");
        assert_eq!(
            out.status.code(),
            Some(78),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let errors = journal(&kept, &["-p", "err"]);
        eprintln!("native {native}: {:#?}", messages(&errors));
        let e = errors
            .iter()
            .find(|e| field(e, "MESSAGE").contains("unknown field `max_attempt`"))
            .unwrap_or_else(|| panic!("journalctl -p err does not find the config error"));
        assert_eq!(field(e, "PRIORITY"), "3");
        assert!(field(e, "MESSAGE").contains("bad.toml"), "{e:#}");
        let (transport, id) = if native {
            ("journal", "spiced")
        } else {
            ("stdout", "spiced-stream")
        };
        assert_eq!(field(e, "_TRANSPORT"), transport);
        assert_eq!(field(e, "SYSLOG_IDENTIFIER"), id);
    }
}

/// The same config error, cheaply: no journald at all. When JOURNAL_STREAM
/// names stderr it is one `<3>` line (what the stream reader needs);
/// otherwise, for a terminal, the plain `spiced: ...` line.
#[test]
fn a_config_error_on_a_journal_stream_has_the_error_prefix() {
    if !require_journald() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", "1")]);
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[reconnect]\nmax_attempt = 5\n").unwrap();
    for (stream, prefix) in [
        ("$(stat -L -c %d:%i /proc/self/fd/2)", "<3>"),
        ("1:1", "spiced: "),
    ] {
        let script = format!(
            "export JOURNAL_STREAM={stream}; exec {} --vv {} --config {}",
            spiced_bin(),
            vv.display(),
            cfg.display()
        );
        let out = Command::new("bash")
            .arg(SANDBOX)
            .args(["--no-journald", "--", "bash", "-c", &script])
            .output()
            .expect("run the sandbox");
        assert_eq!(out.status.code(), Some(78));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("{prefix}{}: ", cfg.display()))
                && err.contains("unknown field `max_attempt`"),
            "{err}"
        );
        if prefix == "<3>" {
            assert_eq!(err.lines().count(), 1, "one stream line: {err}");
        }
    }
}
