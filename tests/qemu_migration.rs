//! Live migration against two real QEMUs on 127.0.0.1: spiced follows the
//! server's MAIN_MIGRATE_SWITCH_HOST to the target, with every channel, without
//! spending a reconnect attempt, and the dead source does not matter afterwards.

mod common;

use common::{free_port, require_qemu, write_vv, Qemu, QemuOpts, Spiced};
use serde_json::json;
use std::time::{Duration, Instant};

/// Migrates `src` to `dst` (listening for it on `mport`), announcing `dst`'s SPICE
/// port to the client first; returns when QEMU says the migration completed.
fn migrate(src: &Qemu, dst: &Qemu, mport: u16) {
    let mut q = src.qmp();
    q.execute(
        "client_migrate_info",
        Some(json!({"protocol": "spice", "hostname": "127.0.0.1", "port": dst.port()})),
    )
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
    let mport = free_port();
    let dst = Qemu::start(QemuOpts {
        extra_args: vec!["-incoming".into(), format!("tcp:127.0.0.1:{mport}")],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &src.port().to_string())],
    );
    let cfg = format!(
        "[report]\nspool_dir = \"{}\"\n",
        dir.path().join("spool").display()
    );
    let mut s = Spiced::start(&vv, &cfg, &[]);
    assert!(
        s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)),
        "{}",
        s.log()
    );
    assert!(src.wait_channel_count(11, Duration::from_secs(10)));

    let t = Instant::now();
    migrate(&src, &dst, mport);
    assert!(
        dst.wait_channel_count(11, Duration::from_secs(15)),
        "the target has {:?}\n{}",
        dst.channels(),
        s.log()
    );
    let took = t.elapsed();
    assert!(
        common::wait_until(Duration::from_secs(5), || src.connected_channel_count()
            == 0),
        "the source still has {:?}",
        src.channels()
    );
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
    assert!(
        !log.contains("reconnect attempt"),
        "no attempt spent:\n{log}"
    );
    assert!(!log.contains("session lost after"), "{log}");

    // The source dies, as on a real host a moment later: nothing happens.
    src.kill();
    std::thread::sleep(Duration::from_secs(3)); // scenario time: a dead source
    assert_eq!(dst.connected_channel_count(), 11, "{}", s.log());
    assert_eq!(s.try_exit(), None);
    assert!(!s.log().contains("session lost after"), "{}", s.log());

    // And back to a fresh host (the VM returns after the maintenance).
    let mport2 = free_port();
    let back = Qemu::start(QemuOpts {
        extra_args: vec!["-incoming".into(), format!("tcp:127.0.0.1:{mport2}")],
        ..Default::default()
    });
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
