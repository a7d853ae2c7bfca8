//! The display mirror against a real X desktop: Xorg with the spiceqxl
//! driver (Xspice, spice-server 0.15), X clients drawing on it (xsetroot,
//! xterm, x11perf). At each still moment `spiced screenshot` equals the X
//! server's own view of its screen (`xwd -root`) pixel for pixel: with
//! DISPLAY_PREFERRED_COMPRESSION = LZ every image spice-server sends is
//! lossless.

mod common;
use common::display::*;
use common::*;
use std::path::Path;
use std::time::Duration;

fn changed_at(sock: &Path) -> f64 {
    display_status(sock)["changed_at"].as_f64().unwrap_or(0.0)
}

/// Waits for a still moment (changed after `since`, if given, then
/// unchanged for 1.5 s), then compares the screenshot with `xwd -root`
/// taken in the same still moment (the screen did not change across both).
/// Returns the digest.
fn same_moment(x: &Xspice, sock: &Path, name: &str, since: Option<f64>) -> String {
    // The X server draws the pointer into its framebuffer (and so into what
    // SPICE sends) once x11perf ran, but `xwd` leaves it out: it is parked
    // over the root window, whose pointer is blank.
    x.pointer_to(1023, 767);
    for _ in 0..5 {
        let still = wait_until(Duration::from_secs(60), || {
            let v = display_status(sock);
            let at = v["changed_at"].as_f64().unwrap_or(0.0);
            since.is_none_or(|s| at > s + 0.001)
                && v["unchanged_secs"].as_f64().unwrap_or(0.0) > 1.5
        });
        assert!(
            still,
            "{name}: the screen never settled: {}",
            display_status(sock)
        );
        let before = changed_at(sock);
        let want = x.xwd_root();
        let (at, got) = screenshot(sock);
        if (at - before).abs() > 0.01 {
            eprintln!("{name}: the screen changed during the comparison; again");
            continue;
        }
        assert_eq!((got.0, got.1), (want.0, want.1), "{name}: size");
        let (n, max) = diff(&got.2, &want.2);
        let v = display_status(sock);
        eprintln!(
            "{name}: {n} of {} pixels differ (max {max}), box {:?}; {v}",
            want.2.len(),
            diff_box(want.0, &got.2, &want.2)
        );
        if n > 0 {
            let dir = std::env::temp_dir();
            let f = name.replace(' ', "_");
            let png = |p: &[u32]| ::spiced::display::png::encode(want.0, want.1, p).unwrap();
            let _ = std::fs::write(dir.join(format!("xspice-{f}-mirror.png")), png(&got.2));
            let _ = std::fs::write(dir.join(format!("xspice-{f}-xwd.png")), png(&want.2));
        }
        assert_eq!(n, 0, "{name}: the screenshot differs from xwd -root");
        return v["digest"].as_str().unwrap_or_default().to_string();
    }
    panic!("{name}: no still moment");
}

#[test]
fn screenshots_equal_the_x_servers_view_over_a_series_of_moments() {
    if !require_xspice() {
        return;
    }
    let mut x = Xspice::start(1024, 768);
    x.blank_root_pointer();
    // A window drawn before spiced links: the first screen comes from the
    // server's state at link time. Away from the pointer (the screen's
    // centre), which the X server draws into its framebuffer but `xwd`
    // leaves out.
    x.client(
        "xterm",
        &[
            "-geometry",
            "80x20+540+430",
            "-bg",
            "darkblue",
            "-fg",
            "yellow",
            "-e",
            "sh",
            "-c",
            "ls -la /usr/bin | head -18; sleep 600",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let (s, sock) = mirrored_spiced(dir.path(), x.port(), "");
    let mut digests = vec![same_moment(&x, &sock, "at link", None)];

    let t = changed_at(&sock);
    assert!(x.run("xsetroot", &["-solid", "#336699"], Duration::from_secs(20)));
    digests.push(same_moment(&x, &sock, "xsetroot -solid", Some(t)));

    let t = changed_at(&sock);
    x.client(
        "xterm",
        &[
            "-geometry",
            "80x24+10+10",
            "-e",
            "sh",
            "-c",
            "echo hello spiced; ls /; sleep 600",
        ],
    );
    digests.push(same_moment(&x, &sock, "xterm", Some(t)));

    for test in [
        "-rect100",
        "-putimage100",
        "-ftext",
        "-copywinwin100",
        "-scroll500",
    ] {
        let t = changed_at(&sock);
        assert!(
            x.run(
                "x11perf",
                &[test, "-repeat", "1", "-time", "1"],
                Duration::from_secs(120)
            ),
            "x11perf {test}"
        );
        same_moment(&x, &sock, &format!("after x11perf {test}"), Some(t));
    }

    // A terminal scrolling at full speed for 4 s, then still.
    let t = changed_at(&sock);
    x.client(
        "xterm",
        &[
            "-geometry",
            "100x40+200+60",
            "-e",
            "sh",
            "-c",
            "timeout 4 base64 /dev/urandom; sleep 600",
        ],
    );
    digests.push(same_moment(&x, &sock, "after a scrolling xterm", Some(t)));

    let v = display_status(&sock);
    assert!(
        v["skipped"].as_object().unwrap().is_empty(),
        "the mirror did not decode everything: {v}"
    );
    digests.dedup();
    assert!(
        digests.len() >= 3,
        "the digest follows what is shown: {digests:?}"
    );
    assert!(!s.log().contains("session lost"), "{}", s.log());
}

/// Xspice told to compress images with QUIC, and JPEG and zlib-GLZ on
/// "WAN" links always (`SpiceImageCompression quic`,
/// `SpiceJpegWanCompression always`, `SpiceZlibGlzWanCompression always`),
/// showing a smooth gradient (the content QUIC and JPEG are for): spice-server
/// takes spiced's DISPLAY_PREFERRED_COMPRESSION = LZ over its own setting,
/// so nothing arrives that the mirror does not decode, and the screen is
/// exact.
#[test]
fn a_server_set_to_quic_and_jpeg_still_sends_lossless_lz() {
    if !require_xspice() {
        return;
    }
    let mut x = Xspice::start_with(
        1024,
        768,
        &[
            ("SpiceImageCompression", "quic"),
            ("SpiceJpegWanCompression", "always"),
            ("SpiceZlibGlzWanCompression", "always"),
        ],
    );
    x.blank_root_pointer();
    let (w, h) = (320u32, 240u32);
    let gradient: Vec<u32> = (0..w * h)
        .map(|i| {
            let (px, py) = (i % w, i / w);
            ((px * 255 / w) << 16) | ((py * 255 / h) << 8) | (((px + py) * 255 / (w + h)) & 0xff)
        })
        .collect();
    let file = x.dir().join("gradient.xwd");
    common::xspice::write_xwd(&file, w, h, &gradient);
    let path = file.to_string_lossy().to_string();
    // One before spiced links (the screen sent at link time), one after.
    x.client("xwud", &["-in", &path, "-geometry", "+40+40", "-noclick"]);
    let dir = tempfile::tempdir().unwrap();
    let (_spiced, sock) = mirrored_spiced(dir.path(), x.port(), "");
    same_moment(&x, &sock, "gradient at link", None);
    let t = changed_at(&sock);
    x.client("xwud", &["-in", &path, "-geometry", "+500+300", "-noclick"]);
    same_moment(&x, &sock, "gradient after link", Some(t));
    let v = display_status(&sock);
    assert!(
        v["skipped"].as_object().unwrap().is_empty(),
        "the server sent what the mirror does not decode: {v}"
    );
}
