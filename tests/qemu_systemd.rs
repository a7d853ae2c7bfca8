//! sd-notify against a real QEMU: READY once linked, STATUS lines an operator can
//! read, STOPPING on SIGTERM, WATCHDOG pings when systemd asks for them.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn notifies_ready_status_watchdog_and_stopping() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = dir.path().join("spiced.toml");
    std::fs::write(
        &cfg,
        format!("[report]\nspool_dir = {:?}\n", dir.path().join("spool")),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(spiced_bin());
    cmd.arg("--vv")
        .arg(&vv)
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::process::Stdio::null());
    let mut child = spawn_tied(cmd).unwrap();
    // Without WATCHDOG_PID, WATCHDOG_USEC applies to whichever process reads it.
    let mut got: Vec<String> = Vec::new();
    let recv_until = |got: &mut Vec<String>, want: &str, secs: u64| -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().is_some_and(|m| m.contains(want)) {
                    return true;
                }
            }
        }
        false
    };
    assert!(recv_until(&mut got, "READY=1", 20), "no READY: {got:?}");
    assert!(
        got.iter()
            .any(|m| m.starts_with("STATUS=connected: 11 channels")),
        "{got:?}"
    );
    assert!(
        recv_until(&mut got, "WATCHDOG=1", 5),
        "no WATCHDOG: {got:?}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(
        recv_until(&mut got, "STOPPING=1", 10),
        "no STOPPING: {got:?}"
    );
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    eprintln!("notifications: {got:?}");
}
