//! spiced against a real QEMU: the full link, every channel, as QEMU sees it.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn plain_links_every_offered_channel() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let mut s = Spiced::start(&vv, "", &[]);
    assert!(
        q.wait_channel_count(11, Duration::from_secs(20)),
        "QEMU sees {} channels",
        q.connected_channel_count()
    );
    assert!(s.wait_log("session fully linked: 11 channels", Duration::from_secs(5)));
    assert_eq!(s.stop(), Some(0));
    assert!(q.wait_channel_count(0, Duration::from_secs(5)));
}
