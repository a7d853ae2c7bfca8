//! Live migration against two real QEMUs on 127.0.0.1: spiced follows the VM to
//! the target with every channel and without spending a reconnect attempt,
//! both ways spice-server runs it — semi-seamless (MAIN_MIGRATE_BEGIN: linked at
//! the target before the source stops; the default) and switch-host
//! (MAIN_MIGRATE_SWITCH_HOST after the move) — and the stopped source does not
//! matter afterwards.

mod common;

use common::{
    free_port, require_qemu, tcp_connections_of, vga_noise_kernel_or_skip, write_vv, Certs, Qemu,
    QemuOpts, Spiced, Tinyproxy,
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
    announce(src, info);
    start_migration(src, mport);
}

/// QMP `client_migrate_info`: spice-server tells the client where the VM goes.
fn announce(src: &Qemu, info: serde_json::Value) {
    src.qmp()
        .execute("client_migrate_info", Some(info))
        .expect("client_migrate_info");
}

/// QMP `migrate`, then `query-migrate` until it completed.
fn start_migration(src: &Qemu, mport: u16) {
    let mut q = src.qmp();
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

/// The VM's run state as QMP `query-status` says it (`running`, `postmigrate`).
fn run_state(q: &Qemu) -> String {
    q.qmp()
        .execute("query-status", None)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(String::from))
        .unwrap_or_default()
}

/// Semi-seamless (the default): at `client_migrate_info` spiced links every
/// channel at the target while the source VM still runs; `migrate` then moves
/// the session onto those links. Then back to a fresh host the same way.
#[test]
fn semi_seamless_migration_links_the_target_before_the_source_stops() {
    if !require_qemu() {
        return;
    }
    let (src, dst, mport, _dir, mut s) = plain_pair(QemuOpts::default, "");
    let t = Instant::now();
    announce(
        &src,
        json!({"protocol": "spice", "hostname": "127.0.0.1", "port": dst.port()}),
    );
    assert!(
        s.wait_log(
            "channels linked at 127.0.0.1; waiting",
            Duration::from_secs(10)
        ),
        "{}",
        s.log()
    );
    let linked_ahead = t.elapsed();
    // The target has the client, every channel of it under the source's
    // session id, while the source VM still runs with all 11 channels.
    assert!(
        dst.wait_channel_count(11, Duration::from_secs(5)),
        "the target has {:?}\n{}",
        dst.channels(),
        s.log()
    );
    let ids: Vec<i64> = dst.channels().iter().map(|c| c.connection_id).collect();
    assert!(
        ids.iter().all(|id| *id == src.channels()[0].connection_id),
        "{ids:?}"
    );
    assert_eq!(run_state(&src), "running");
    assert_eq!(src.connected_channel_count(), 11);
    let t = Instant::now();
    start_migration(&src, mport);
    followed(&s, &src, &dst);
    let moved = t.elapsed();
    eprintln!(
        "semi-seamless: linked at the target {linked_ahead:?} after client_migrate_info; 11 channels there {moved:?} after `migrate`"
    );
    let log = s.log();
    assert!(
        log.contains("live migration complete: the session moves to 127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("taking over the link made at the migration target"),
        "{log}"
    );
    assert!(
        !log.contains("server moves the session to"),
        "no switch-host: {log}"
    );

    // The source (postmigrate) dies: nothing happens to the session.
    assert_eq!(run_state(&src), "postmigrate");
    src.kill();
    std::thread::sleep(Duration::from_secs(2)); // scenario time: a dead source
    assert_eq!(dst.connected_channel_count(), 11, "{}", s.log());

    // And back to a fresh host the same way. (A `migrate` right after the
    // announcement can finish before the target is linked: the server then
    // falls back to switch-host, which the display-load test below exercises.)
    let (back, mport2) = incoming(QemuOpts::default());
    announce(
        &dst,
        json!({"protocol": "spice", "hostname": "127.0.0.1", "port": back.port()}),
    );
    assert!(
        s.wait_log_count(
            "channels linked at 127.0.0.1; waiting",
            2,
            Duration::from_secs(10)
        ),
        "{}",
        s.log()
    );
    start_migration(&dst, mport2);
    followed(&s, &dst, &back);
    let log = s.log();
    assert_eq!(log.matches("live migration complete").count(), 2, "{log}");
    assert_eq!(s.stop(), Some(0));
}

/// The target announced cannot be linked (a wrong port): spiced tells the
/// source (MIGRATE_CONNECT_ERROR), its session stays on the source untouched,
/// and QEMU's migration still completes.
#[test]
fn a_target_that_refuses_leaves_the_session_on_the_source() {
    if !require_qemu() {
        return;
    }
    let (src, _dst, mport, _dir, s) = plain_pair(QemuOpts::default, "");
    let wrong = free_port();
    announce(
        &src,
        json!({"protocol": "spice", "hostname": "127.0.0.1", "port": wrong}),
    );
    assert!(
        s.wait_log("cannot link at 127.0.0.1", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    // Still fully on the source, nothing lost.
    std::thread::sleep(Duration::from_secs(1)); // scenario time: the session carries on
    assert_eq!(src.connected_channel_count(), 11, "{}", s.log());
    let log = s.log();
    assert!(!log.contains("session lost after"), "{log}");
    assert!(!log.contains("reconnect attempt"), "{log}");
    // The migration itself is not held up by the client.
    start_migration(&src, mport);
}

/// The dead-source case: after a migration the source QEMU still listens with
/// its VM stopped (`postmigrate`), and a session linked there would look
/// healthy. A relink after the move (here SIGUSR1, as the control socket's
/// `reconnect` does) goes to the target, never back to the source.
#[test]
fn a_relink_after_the_move_never_lands_on_the_stopped_source() {
    if !require_qemu() {
        return;
    }
    let (src, dst, mport, _dir, s) = plain_pair(QemuOpts::default, "");
    migrate(&src, &dst, mport);
    followed(&s, &src, &dst);
    assert_eq!(run_state(&src), "postmigrate");
    for n in 1..=2 {
        // Linked as spiced sees it (QMP can count the channels a moment
        // earlier; a reconnect request while linking is not acted on).
        assert!(s.wait_log_count(
            "session fully linked: 11 channels",
            1 + n,
            Duration::from_secs(15)
        ));
        s.signal(libc::SIGUSR1);
        assert!(
            s.wait_log_count(
                "session fully linked: 11 channels",
                2 + n,
                Duration::from_secs(15)
            ),
            "{}",
            s.log()
        );
        assert_eq!(dst.connected_channel_count(), 11, "{}", s.log());
        assert_eq!(
            src.connected_channel_count(),
            0,
            "linked to the stopped source"
        );
    }
    let log = s.log();
    assert!(!log.contains("reconnect attempt"), "{log}");
}

/// Proxmox's shape: TLS only, a password, a single-use .vv and every
/// connection through an HTTP CONNECT proxy. The links made at the target go
/// through the proxy too, with the same ticket, and the session moves there.
#[test]
fn a_proxmox_shaped_session_migrates_through_its_proxy() {
    if !require_qemu() || !Tinyproxy::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"), "pve-node.example");
    let pw = "pve-ticket-mig-42";
    let (src, dst, mport) = tls_only_pair(&certs, pw);
    let proxy = Tinyproxy::start(&[src.tls_port(), dst.tls_port()], 60);
    let s = spiced_on(
        dir.path(),
        &[
            ("host", "127.0.0.1"),
            ("tls-port", &src.tls_port().to_string()),
            ("delete-this-file", "1"),
            ("proxy", &proxy.url()),
            ("password", pw),
            ("ca", &certs.ca_pem()),
            ("host-subject", &certs.host_subject()),
        ],
        "",
    );
    announce(&src, tls_target(&dst, &certs));
    assert!(
        s.wait_log(
            "channels linked at 127.0.0.1; waiting",
            Duration::from_secs(10)
        ),
        "{}",
        s.log()
    );
    // 11 links at each QEMU, all 22 of spiced's connections to the proxy.
    assert_eq!(dst.connected_channel_count(), 11, "{}", s.log());
    let mine = tcp_connections_of(s.pid());
    assert_eq!(mine.len(), 22, "{mine:?}");
    assert!(mine.iter().all(|&(_, r)| r == proxy.port()), "{mine:?}");
    start_migration(&src, mport);
    followed(&s, &src, &dst);
    assert!(dst.channels().iter().all(|c| c.tls), "{:?}", dst.channels());
    let mine = tcp_connections_of(s.pid());
    assert_eq!(mine.len(), 11, "{mine:?}");
    assert!(mine.iter().all(|&(_, r)| r == proxy.port()), "{mine:?}");
    let log = s.log();
    assert!(!log.contains(pw), "the password reached the log");
    assert!(log.contains("live migration complete"), "{log}");
}

#[test]
fn switch_host_migration_is_followed_with_every_channel() {
    if !require_qemu() {
        return;
    }
    let (src, dst, mport, _dir, mut s) = plain_pair(QemuOpts::default, SWITCH_HOST);
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

/// A source and a migration target started with `opts`, and spiced (with
/// `extra` config lines) fully linked to the source's plain port:
/// (source, target, migration port, spiced's directory, spiced).
fn plain_pair(
    opts: impl Fn() -> QemuOpts<'static>,
    extra: &str,
) -> (Qemu, Qemu, u16, tempfile::TempDir, Spiced) {
    let src = Qemu::start(opts());
    let (dst, mport) = incoming(opts());
    let dir = tempfile::tempdir().unwrap();
    let s = spiced_on(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &src.port().to_string())],
        extra,
    );
    (src, dst, mport, dir, s)
}

/// A TLS-only source and migration target (the shape of oVirt's and
/// Proxmox's servers), both with `password`: (source, target, migration port).
fn tls_only_pair(certs: &Certs, password: &str) -> (Qemu, Qemu, u16) {
    let tls_only = || QemuOpts {
        tls: Some(certs),
        tls_channels: vec!["default".into()],
        plain_port: false,
        password: Some(password.into()),
        ..Default::default()
    };
    let src = Qemu::start(tls_only());
    let (dst, mport) = incoming(tls_only());
    (src, dst, mport)
}

/// `client_migrate_info`'s arguments for a TLS-only target.
fn tls_target(dst: &Qemu, certs: &Certs) -> serde_json::Value {
    json!({"protocol": "spice", "hostname": "127.0.0.1",
           "tls-port": dst.tls_port(), "cert-subject": certs.host_subject()})
}

/// Config lines for a client that does not advertise semi-seamless migration.
const SWITCH_HOST: &str = "[reconnect]\nsemi_seamless_migration = false\n";

/// spiced on a .vv of `vv`, with `extra` config lines, fully linked.
fn spiced_on(dir: &std::path::Path, vv: &[(&str, &str)], extra: &str) -> Spiced {
    let vv = write_vv(dir, vv);
    let cfg = format!(
        "{extra}[report]\nspool_dir = \"{}\"\n",
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
    let (src, dst, mport) = tls_only_pair(&certs, pw);
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
        "",
    );
    migrate_announcing(&src, tls_target(&dst, &certs), mport);
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
/// the target afterwards. `migrate` follows the announcement at once, as
/// management software does, so the move often completes before spiced has
/// linked at the target: the server then says SWITCH_HOST and spiced follows
/// over the links once they are ready.
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
    let (src, dst, mport, _dir, mut s) = plain_pair(busy, "");
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
    for l in log.lines().filter(|l| l.contains("live migration")) {
        eprintln!("{l}");
    }
    assert!(bytes > 100_000, "the target's display drained {bytes} B");
}
