//! The real binary's way out: SIGTERM ends spiced with 0 within 2 s whatever it is
//! doing (linking to a server that never answers, waiting out a back-off,
//! waiting for a ticket, running the refresh command, connected to real QEMU,
//! re-reading a .vv that is a FIFO), and the give-up line names the real cause.

mod common;

use common::{free_port, require_qemu, write_vv, Qemu, QemuOpts, Spiced};
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// SIGTERM, then the exit code and how long it took.
fn term(s: &mut Spiced) -> (Option<i32>, Duration) {
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let code = s.wait_exit(Duration::from_secs(10));
    (code, t.elapsed())
}

fn assert_quick_clean_exit(s: &mut Spiced, what: &str) {
    let (code, took) = term(s);
    eprintln!("{what}: exit {code:?} {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "{what}: {}", s.log());
    assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
}

fn spool(dir: &std::path::Path) -> String {
    format!(
        "[report]\nspool_dir = \"{}\"\n",
        dir.join("spool").display()
    )
}

/// spiced against a port nobody listens on, with `[reconnect]` lines added.
fn against_a_closed_port(
    dir: &std::path::Path,
    vv_extra: &[(&str, &str)],
    reconnect: &str,
) -> Spiced {
    let port = free_port().to_string();
    let mut fields = vec![("host", "127.0.0.1"), ("port", port.as_str())];
    fields.extend_from_slice(vv_extra);
    let vv = write_vv(dir, &fields);
    let cfg = format!("{}\n[reconnect]\n{reconnect}\n", spool(dir));
    Spiced::start(&vv, &cfg, &[])
}

#[test]
fn sigterm_while_linking_to_a_server_that_never_answers() {
    // Accepts the TCP connection and never says a word.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", &port)]);
    let mut s = Spiced::start(&vv, &spool(dir.path()), &[]);
    let (conn, _) = l.accept().unwrap();
    assert!(s.wait_log("connecting to 127.0.0.1", Duration::from_secs(5)));
    assert_quick_clean_exit(&mut s, "linking");
    drop(conn);
}

#[test]
fn sigterm_during_the_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = against_a_closed_port(dir.path(), &[], "initial_delay_secs = 60");
    assert!(
        s.wait_log("-> pending: attempt 1 after 1m", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    assert_quick_clean_exit(&mut s, "back-off");
}

/// An expired ticket cannot be retried: spiced waits for a fresh one, and runs
/// the refresh command for it — a child that takes its time.
#[test]
fn sigterm_while_the_refresh_command_runs_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("{}.{}", 40 + std::process::id() % 50, 7);
    let mut s = against_a_closed_port(
        dir.path(),
        &[("ticket-valid-until", "1000000000")],
        &format!("wait_for_ticket_secs = 600\nrefresh_command = [\"sleep\", \"{marker}\"]\nrefresh_timeout_secs = 300"),
    );
    assert!(
        s.wait_log("running reconnect.refresh_command", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    let child_running = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}$")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    };
    assert!(common::wait_until(Duration::from_secs(5), child_running));
    assert_quick_clean_exit(&mut s, "refresh command running");
    assert!(
        common::wait_until(Duration::from_secs(2), || !child_running()),
        "the refresh child outlived spiced"
    );
}

#[test]
fn sigterm_while_waiting_for_a_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = against_a_closed_port(
        dir.path(),
        &[("ticket-valid-until", "1000000000")],
        "wait_for_ticket_secs = 600",
    );
    assert!(
        s.wait_log("-> waiting for a fresh ticket", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    assert_quick_clean_exit(&mut s, "waiting for a ticket");
}

/// SIGHUP with the .vv replaced by a FIFO nobody writes: the read hangs off the
/// loop; SIGTERM is handled at once.
#[test]
fn a_fifo_vv_never_freezes_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = against_a_closed_port(dir.path(), &[], "initial_delay_secs = 60");
    let vv = dir.path().join("console.vv");
    assert!(
        s.wait_log("-> pending", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    std::fs::remove_file(&vv).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(&vv)
        .status()
        .unwrap();
    assert!(st.success());
    s.signal(libc::SIGHUP);
    assert!(s.wait_log("SIGHUP: re-reading", Duration::from_secs(5)));
    assert_quick_clean_exit(&mut s, "stuck .vv read");
}

/// Whether `pid` has a handler for `sig` (its SigCgt mask in /proc).
fn catches(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

/// The very first read of a .vv that is a FIFO nobody writes: a SIGHUP while
/// it hangs must not make spiced deaf to the SIGTERM after it (it once exited
/// 78 five seconds later, when the read timed out).
#[test]
fn sighup_then_sigterm_during_the_first_read_of_a_fifo_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let vv = dir.path().join("console.vv");
    let st = std::process::Command::new("mkfifo")
        .arg(&vv)
        .status()
        .unwrap();
    assert!(st.success());
    let mut s = Spiced::start(&vv, &spool(dir.path()), &[]);
    let pid = s.pid();
    assert!(
        common::wait_until(Duration::from_secs(5), || catches(pid, libc::SIGHUP)
            && catches(pid, libc::SIGTERM)),
        "{}",
        s.log()
    );
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log("SIGHUP while the .vv is being read", Duration::from_secs(3)),
        "{}",
        s.log()
    );
    assert_quick_clean_exit(&mut s, "SIGHUP during the first read of a FIFO");
}

#[test]
fn sigterm_while_connected_to_real_qemu() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let port = q.port().to_string();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", &port)]);
    let mut s = Spiced::start(&vv, &spool(dir.path()), &[]);
    assert!(
        s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)),
        "{}",
        s.log()
    );
    assert_quick_clean_exit(&mut s, "connected");
    assert!(common::wait_until(Duration::from_secs(5), || q
        .connected_channel_count()
        == 0));
}

/// A server that answers the link with something that is not SPICE: spiced gives
/// up with 1 and says why, without claiming a link result.
#[test]
fn the_give_up_line_names_the_real_cause() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for c in l.incoming().flatten().take(4) {
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", &port)]);
    let mut s = Spiced::start(&vv, &spool(dir.path()), &[]);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(1), "{}", s.log());
    let line = s.lines_with("giving up:").pop().expect("a give-up line");
    eprintln!("{line}");
    assert!(
        line.contains(
            "giving up: protocol_error (exit status 1); last failure: protocol_error: main:"
        ),
        "{line}"
    );
    assert!(!line.contains("link result 0"), "{line}");
}
