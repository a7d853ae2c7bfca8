//! Live migration against two real QEMUs on 127.0.0.1: spiced follows the
//! server's MAIN_MIGRATE_SWITCH_HOST to the target, with every channel, without
//! spending a reconnect attempt, and the dead source does not matter afterwards.

mod common;

use common::{
    free_port, require_qemu, vga_noise_kernel_or_skip, write_vv, Certs, Qemu, QemuOpts, Spiced,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// Migrates `src` to `dst` (listening for it on `mport`), announcing `dst`'s SPICE
/// port to the client first; returns when QEMU says the migration completed.
fn migrate(src: &Qemu, dst: &Qemu, mport: u16) {
    let info = json!({"protocol": "spice", "hostname": "127.0.0.1", "port": dst.port()});
    migrate_announcing(src, info, mport);
}

/// As `migrate`, announcing `info` (QMP `client_migrate_info`'s arguments).
fn migrate_announcing(src: &Qemu, info: serde_json::Value, mport: u16) {
    let mut q = src.qmp();
    q.execute("client_migrate_info", Some(info))
        .expect("client_migrate_info");
    q.execute(
        "migrate",
        Some(json!({"uri": format!("tcp:127.0.0.1:{mport}")})),
    )
    .expect("migrate");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let st = q.execute("query-migrate", None).expect("query-migrate");
        match st.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return,
            Some("failed") | Some("cancelled") => panic!("migration failed: {st}"),
            _ => {}
        }
        assert!(Instant::now() < end, "migration did not complete: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn switch_host_migration_is_followed_with_every_channel() {
    if !require_qemu() {
        return;
    }
    let src = Qemu::start(QemuOpts::default());
    let (dst, mport) = incoming(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let mut s = spiced_on(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &src.port().to_string())],
    );
    assert!(src.wait_channel_count(11, Duration::from_secs(10)));

    let t = Instant::now();
    migrate(&src, &dst, mport);
    let on_target = dst.wait_channel_count(11, Duration::from_secs(15));
    let took = t.elapsed();
    assert!(
        on_target,
        "the target has {:?}\n{}",
        dst.channels(),
        s.log()
    );
    followed(&s, &src, &dst);
    let log = s.log();
    eprintln!("migration: 11 channels on the target {took:?} after `migrate`");
    assert!(
        log.contains("live migration: the server moves the session to 127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("following the live migration to 127.0.0.1"),
        "{log}"
    );

    // The source dies, as on a real host a moment later: nothing happens.
    src.kill();
    std::thread::sleep(Duration::from_secs(3)); // scenario time: a dead source
    assert_eq!(dst.connected_channel_count(), 11, "{}", s.log());
    assert_eq!(s.try_exit(), None);
    assert!(!s.log().contains("session lost after"), "{}", s.log());

    // And back to a fresh host (the VM returns after the maintenance).
    let (back, mport2) = incoming(QemuOpts::default());
    migrate(&dst, &back, mport2);
    assert!(
        back.wait_channel_count(11, Duration::from_secs(15)),
        "{}",
        s.log()
    );
    let log = s.log();
    assert_eq!(
        log.matches("following the live migration").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("reconnect attempt"), "{log}");
    assert_eq!(s.stop(), Some(0));
}

/// The target of a migration: `opts` plus `-incoming` on a fresh port.
fn incoming(opts: QemuOpts<'_>) -> (Qemu, u16) {
    let mport = free_port();
    let mut opts = opts;
    opts.extra_args
        .extend(["-incoming".into(), format!("tcp:127.0.0.1:{mport}")]);
    (Qemu::start(opts), mport)
}

fn spiced_on(dir: &std::path::Path, vv: &[(&str, &str)]) -> Spiced {
    let vv = write_vv(dir, vv);
    let cfg = format!(
        "[report]\nspool_dir = \"{}\"\n",
        dir.join("spool").display()
    );
    let s = Spiced::start(&vv, &cfg, &[]);
    assert!(
        s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)),
        "{}",
        s.log()
    );
    s
}

/// After a migration: every channel on `dst`, none on `src`, nothing counted
/// as a loss or an attempt.
fn followed(s: &Spiced, src: &Qemu, dst: &Qemu) {
    assert!(
        dst.wait_channel_count(11, Duration::from_secs(15)),
        "the target has {:?}\n{}",
        dst.channels(),
        s.log()
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || src.connected_channel_count()
            == 0),
        "the source still has {:?}",
        src.channels()
    );
    let log = s.log();
    assert!(!log.contains("reconnect attempt"), "{log}");
    assert!(!log.contains("session lost after"), "{log}");
}

/// TLS-only servers (oVirt's shape) with a password on both sides: the target
/// is announced by its TLS port and certificate subject, which spiced checks;
/// the .vv's ticket links the target.
#[test]
fn tls_migration_checks_the_announced_subject_and_keeps_the_ticket() {
    if !require_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"), "spiced-migration");
    let pw = "m1grate-Pw";
    let tls_only = || QemuOpts {
        tls: Some(&certs),
        tls_channels: vec!["default".into()],
        plain_port: false,
        password: Some(pw.into()),
        ..Default::default()
    };
    let src = Qemu::start(tls_only());
    let (dst, mport) = incoming(tls_only());
    let mut s = spiced_on(
        dir.path(),
        &[
            ("host", "127.0.0.1"),
            ("port", "-1"),
            ("tls-port", &src.tls_port().to_string()),
            ("password", pw),
            ("ca", &certs.ca_pem()),
            ("host-subject", &certs.host_subject()),
        ],
    );
    migrate_announcing(
        &src,
        json!({"protocol": "spice", "hostname": "127.0.0.1",
               "tls-port": dst.tls_port(), "cert-subject": certs.host_subject()}),
        mport,
    );
    followed(&s, &src, &dst);
    assert!(dst.channels().iter().all(|c| c.tls), "{:?}", dst.channels());
    let log = s.log();
    assert!(!log.contains(pw), "the password reached the log");
    assert!(
        log.contains("following the live migration to 127.0.0.1"),
        "{log}"
    );
    assert_eq!(s.stop(), Some(0));
}

/// The guest redraws its screen all the time (the vga-noise kernel): the
/// display channel is busy when the migration comes, and keeps draining on
/// the target afterwards.
#[test]
fn migration_under_display_load_is_followed() {
    if !require_qemu() {
        return;
    }
    let Some(kernel) = vga_noise_kernel_or_skip() else {
        return;
    };
    let busy = || QemuOpts {
        extra_args: vec!["-kernel".into(), kernel.display().to_string()],
        ..Default::default()
    };
    let src = Qemu::start(busy());
    let (dst, mport) = incoming(busy());
    let dir = tempfile::tempdir().unwrap();
    let mut s = spiced_on(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &src.port().to_string())],
    );
    std::thread::sleep(Duration::from_secs(2)); // scenario time: the display is busy
    migrate(&src, &dst, mport);
    followed(&s, &src, &dst);
    std::thread::sleep(Duration::from_secs(3)); // scenario time: drain on the target
    assert_eq!(s.stop(), Some(0));
    // The last display totals are the target session's: it drained there.
    let log = s.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("channel display totals:"))
        .unwrap_or_else(|| panic!("no display totals: {log}"));
    let bytes: u64 = line
        .split("totals: in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line}"));
    eprintln!("display on the target: {line}");
    assert!(bytes > 100_000, "the target's display drained {bytes} B");
}
