//! The display mirror against a real QEMU (the vga-noise guest redraws its
//! text screen all the time; without a kernel, SeaBIOS's text screen with a
//! blinking cursor): `spiced screenshot` equals QMP `screendump` of the same
//! moment over a series of still moments, a report after a kill holds the
//! last frame, a paused VM goes stale once and a running one never, a
//! blinking cursor is no change, MJPEG video streams decode, and a server
//! set to QUIC and JPEG still sends lossless LZ.

mod common;
use common::display::*;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A binary PPM (P6, maxval 255) as 0x00RRGGBB pixels.
fn read_ppm(path: &Path) -> (u32, u32, Vec<u32>) {
    let b = std::fs::read(path).expect("read the screendump");
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while b[at].is_ascii_whitespace() {
            at += 1;
        }
        if b[at] == b'#' {
            while b[at] != b'\n' {
                at += 1;
            }
            continue;
        }
        let start = at;
        while !b[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&b[start..at]).to_string());
    }
    at += 1;
    assert_eq!(fields[0], "P6");
    assert_eq!(fields[3], "255");
    let (w, h): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let px = b[at..]
        .chunks_exact(3)
        .map(|c| u32::from_be_bytes([0, c[0], c[1], c[2]]))
        .collect::<Vec<_>>();
    assert_eq!(px.len(), (w * h) as usize);
    (w, h, px)
}

#[test]
fn screenshot_equals_screendump_over_a_series_of_still_moments() {
    if !require_qemu() {
        return;
    }
    let Some(kernel) = vga_noise_kernel_or_skip() else {
        return;
    };
    let q = Qemu::start(QemuOpts {
        extra_args: vec!["-kernel".into(), kernel.display().to_string()],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (s, sock) = mirrored_spiced(dir.path(), q.port(), "");
    let dump = dir.path().join("dump.ppm");
    let mut digests = Vec::new();
    for round in 0..3 {
        q.qmp().execute("stop", None).expect("QMP stop");
        if let Err(seen) = wait_still(&sock) {
            panic!("round {round}: the mirror kept changing while the VM was stopped: {seen}");
        }
        q.qmp()
            .execute(
                "screendump",
                Some(serde_json::json!({"filename": dump.display().to_string()})),
            )
            .expect("screendump");
        let (w, h, want) = read_ppm(&dump);
        let (_, (sw, sh, got)) = screenshot(&sock);
        assert_eq!((sw, sh), (w, h), "round {round}: frame size");
        let (n, max) = diff(&got, &want);
        eprintln!("round {round}: {w}x{h}, {n} pixels differ (max channel difference {max})");
        assert_eq!(
            n, 0,
            "round {round}: the screenshot differs from the screendump"
        );
        digests.push(ask(&sock, "screenshot")["digest"].clone());
        q.qmp().execute("cont", None).expect("QMP cont");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        digests.windows(2).any(|d| d[0] != d[1]),
        "the screen never changed between rounds: {digests:?}"
    );
    // `spiced screenshot` writes the same PNG.
    let out = dir.path().join("shot.png");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_spiced"))
        .args(["screenshot", "--socket"])
        .arg(&sock)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let png = std::fs::read(&out).unwrap();
    assert!(::spiced::display::png::decode_rgb(&png).is_some());
    let log = s.log();
    assert!(!log.contains("session lost"), "{log}");
}

/// The report written when QEMU is killed holds the last frame: equal to the
/// last screendump before the kill, with when it was drawn.
#[test]
fn the_report_after_a_kill_holds_the_last_frame() {
    if !require_qemu() {
        return;
    }
    let Some(kernel) = vga_noise_kernel_or_skip() else {
        return;
    };
    let q = Qemu::start(QemuOpts {
        extra_args: vec!["-kernel".into(), kernel.display().to_string()],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (s, sock) = mirrored_spiced(dir.path(), q.port(), "[reconnect]\nenabled = false\n");
    let spool = dir.path().join("spool");
    q.qmp().execute("stop", None).expect("QMP stop");
    if let Err(seen) = wait_still(&sock) {
        panic!("the mirror kept changing while the VM was stopped: {seen}");
    }
    let dump = dir.path().join("dump.ppm");
    q.qmp()
        .execute(
            "screendump",
            Some(serde_json::json!({"filename": dump.display().to_string()})),
        )
        .expect("screendump");
    let (w, h, want) = read_ppm(&dump);
    q.kill();
    let zip = wait_for_report(&spool, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no report: {}", s.log()));
    let mut z = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
    let mut png = Vec::new();
    std::io::Read::read_to_end(
        &mut z.by_name("last-frame.png").expect("last-frame.png"),
        &mut png,
    )
    .unwrap();
    let (pw, ph, got) = ::spiced::display::png::decode_rgb(&png).unwrap();
    assert_eq!((pw, ph), (w, h));
    let (n, max) = diff(&got, &want);
    eprintln!("last frame vs the last screendump: {n} pixels differ (max {max})");
    assert_eq!(n, 0);
    let mut cause = String::new();
    std::io::Read::read_to_string(&mut z.by_name("disconnect-cause.json").unwrap(), &mut cause)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&cause).unwrap();
    assert_eq!(v["last_frame"]["file"], "last-frame.png", "{v}");
    assert!(v["last_frame"]["drawn_at"].is_string(), "{v}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spiced"))
        .arg("report")
        .arg(&zip)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("screen:     last-frame.png (720x400), last drawn"),
        "{text}"
    );
}

fn wait_for_report(spool: &Path, timeout: Duration) -> Option<std::path::PathBuf> {
    let mut found = None;
    wait_until(timeout, || {
        found = std::fs::read_dir(spool).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "zip"))
        });
        found.is_some()
    });
    found
}

/// QEMU (the vga-noise guest unless `kernel` is None: then SeaBIOS finds no
/// bootable device and leaves its text screen with a blinking cursor) and
/// spiced with a control socket and `toml` added to its config.
struct Rig {
    q: Qemu,
    s: Spiced,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn rig(vga_noise: bool, spice_opts: &[&str], toml: &str) -> Option<Rig> {
    if !require_qemu() {
        return None;
    }
    let mut extra_args = Vec::new();
    if vga_noise {
        let kernel = vga_noise_kernel_or_skip()?;
        extra_args = vec!["-kernel".into(), kernel.display().to_string()];
    }
    // -spice options merge: a second -spice adds to the helper's.
    for o in spice_opts {
        extra_args.push("-spice".into());
        extra_args.push((*o).into());
    }
    let q = Qemu::start(QemuOpts {
        extra_args,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (s, sock) = mirrored_spiced(dir.path(), q.port(), toml);
    Some(Rig {
        q,
        s,
        sock,
        _dir: dir,
    })
}

fn secs(v: &serde_json::Value) -> f64 {
    v["unchanged_secs"].as_f64().unwrap_or(-1.0)
}

/// `status` says how long the screen has not changed: a running guest keeps
/// it near 0 and never gets the stale event; a VM paused with QMP `stop`
/// makes it grow while the digest stays, and the event fires once
/// (`display.stale_after_secs = 3`); `cont` brings "changed again".
#[test]
fn a_paused_vm_goes_stale_once_and_a_running_one_never() {
    let Some(r) = rig(true, &[], "[display]\nstale_after_secs = 3\n") else {
        return;
    };
    const STALE: &str = "screen unchanged for";
    let running_for = |d: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            let v = display_status(&r.sock);
            assert!(secs(&v) < 1.0, "a running guest's screen: {v}");
            assert_eq!(v["stale"], false, "{v}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    running_for(Duration::from_secs(8));
    assert!(!r.s.log().contains(STALE), "{}", r.s.log());
    // This guest has no agent; the server says so in MAIN_INIT.
    assert_eq!(ask(&r.sock, "status")["agent_connected"], false);

    r.q.qmp().execute("stop", None).expect("QMP stop");
    assert!(
        r.s.wait_log(STALE, Duration::from_secs(15)),
        "{}",
        r.s.log()
    );
    let a = display_status(&r.sock);
    std::thread::sleep(Duration::from_secs(2));
    let b = display_status(&r.sock);
    eprintln!("paused: {a}\n then: {b}");
    assert!(secs(&a) >= 3.0, "{a}");
    assert!((1.5..3.5).contains(&(secs(&b) - secs(&a))), "{a} {b}");
    assert_eq!(a["digest"], b["digest"]);
    let at = |v: &serde_json::Value| v["changed_at"].as_f64().unwrap();
    assert!((at(&a) - at(&b)).abs() < 0.01, "{a} {b}");
    assert_eq!(b["stale"], true);
    // Once per stale period: still one event three periods later.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(r.s.log().matches(STALE).count(), 1, "{}", r.s.log());

    r.q.qmp().execute("cont", None).expect("QMP cont");
    assert!(
        r.s.wait_log("screen changed again after", Duration::from_secs(10)),
        "{}",
        r.s.log()
    );
    let c = display_status(&r.sock);
    assert!(secs(&c) < 1.5, "{c}");
    assert_eq!(c["stale"], false);
    assert_ne!(c["digest"], b["digest"]);
    running_for(Duration::from_secs(8));
    assert_eq!(r.s.log().matches(STALE).count(), 1, "{}", r.s.log());
}

/// SeaBIOS with no bootable device: the text screen stays, its cursor
/// blinks (QEMU draws it ~3.7 times a second). The draws keep coming, but
/// the screen has not changed: "unchanged for" grows and the stale event
/// fires.
#[test]
fn a_blinking_text_cursor_is_no_change() {
    let Some(r) = rig(false, &[], "[display]\nstale_after_secs = 5\n") else {
        return;
    };
    assert!(
        r.s.wait_log("screen unchanged for", Duration::from_secs(40)),
        "{}",
        r.s.log()
    );
    let a = display_status(&r.sock);
    std::thread::sleep(Duration::from_secs(4));
    let b = display_status(&r.sock);
    eprintln!("blinking: {a}\n then: {b}");
    let draws = b["draws"].as_u64().unwrap() - a["draws"].as_u64().unwrap();
    assert!(draws >= 8, "the cursor blinks: {draws} draws in 4 s");
    assert!((3.0..5.5).contains(&(secs(&b) - secs(&a))), "{a} {b}");
    assert_eq!(a["digest"], b["digest"]);
    assert_eq!(b["stale"], true);
    assert_eq!(r.s.log().matches("screen unchanged for").count(), 1);
}

/// Peak signal-to-noise ratio of `a` against `b` over R, G and B, in dB
/// (infinite when equal).
fn psnr(a: &[u32], b: &[u32]) -> f64 {
    let mut se = 0f64;
    for (x, y) in a.iter().zip(b) {
        for s in [0, 8, 16] {
            let d = f64::from((x >> s) & 0xff) - f64::from((y >> s) & 0xff);
            se += d * d;
        }
    }
    let mse = se / (3 * a.len()) as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// `streaming-video=all`: QEMU sends the changing screen as an MJPEG video
/// stream (lossy; frames after the first carry no Huffman tables). Every
/// frame decodes; the last video frame is within the stated tolerance of
/// the server's own view, and once the server sends the still screen again
/// losslessly (when the stream ends) the screenshot equals QMP `screendump`.
#[test]
fn mjpeg_streams_decode_and_the_still_screen_is_exact() {
    let Some(r) = rig(true, &["streaming-video=all"], "") else {
        return;
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            display_status(&r.sock)["stream_frames"]
                .as_u64()
                .unwrap_or(0)
                > 20
        }),
        "no video stream: {}",
        display_status(&r.sock)
    );
    r.q.qmp().execute("stop", None).expect("QMP stop");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.ppm");
    r.q.qmp()
        .execute(
            "screendump",
            Some(serde_json::json!({"filename": dump.display().to_string()})),
        )
        .expect("screendump");
    let (w, h, want) = read_ppm(&dump);
    // Screenshots after the stop: the last video frames (lossy), then the
    // still screen the server sends losslessly when the stream ends.
    let mut shots = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        shots.push(screenshot(&r.sock));
    }
    assert!(
        wait_until(Duration::from_secs(15), || secs(&display_status(&r.sock))
            > 2.0),
        "the mirror kept changing while the VM was stopped"
    );
    let (still_at, (sw, sh, still)) = screenshot(&r.sock);
    assert_eq!((sw, sh), (w, h));
    let (n, max) = diff(&still, &want);
    let v = display_status(&r.sock);
    eprintln!("still: {n} pixels differ (max {max}); {v}");
    assert_eq!(n, 0, "the still screen differs from the screendump");
    // The last picture before the lossless one: the last video frame.
    let dhash = |px: &[u32]| ::spiced::display::digest::dhash(w, h, px);
    match shots.iter().rev().find(|(at, _)| *at < still_at) {
        Some((_, (_, _, lossy))) => {
            let (db, bits) = (
                psnr(lossy, &want),
                (dhash(lossy) ^ dhash(&want)).count_ones(),
            );
            eprintln!("the last video frame: PSNR {db:.1} dB, digest {bits} of 64 bits apart");
            assert!(
                db >= 14.0 && bits <= 12,
                "the video frame is not the screen: {db:.1} dB, {bits} bits"
            );
        }
        None => eprintln!("the lossless screen came before the first screenshot"),
    }
    assert!(
        v["skipped"].as_object().unwrap().is_empty(),
        "not decoded: {v}"
    );
}

/// QEMU told to compress every image with QUIC and to use JPEG and
/// zlib-GLZ always (`image-compression=quic,jpeg-wan-compression=always,
/// zlib-glz-wan-compression=always`): spice-server takes spiced's
/// DISPLAY_PREFERRED_COMPRESSION = LZ over its own setting, so nothing
/// arrives that the mirror does not decode, and the screen of the stopped
/// VM equals `screendump`. (Without the preference every image of this
/// guest would be QUIC.)
#[test]
fn a_server_set_to_quic_and_jpeg_still_sends_lossless_lz() {
    let Some(r) = rig(
        true,
        &[
            "image-compression=quic",
            "jpeg-wan-compression=always",
            "zlib-glz-wan-compression=always",
        ],
        "",
    ) else {
        return;
    };
    assert!(wait_until(Duration::from_secs(20), || {
        display_status(&r.sock)["draws"].as_u64().unwrap_or(0) > 50
    }));
    r.q.qmp().execute("stop", None).expect("QMP stop");
    assert!(
        wait_until(Duration::from_secs(15), || secs(&display_status(&r.sock))
            > 1.5),
        "the mirror kept changing while the VM was stopped"
    );
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.ppm");
    r.q.qmp()
        .execute(
            "screendump",
            Some(serde_json::json!({"filename": dump.display().to_string()})),
        )
        .expect("screendump");
    let (w, h, want) = read_ppm(&dump);
    let (_, (sw, sh, got)) = screenshot(&r.sock);
    assert_eq!((sw, sh), (w, h));
    let v = display_status(&r.sock);
    let (n, max) = diff(&got, &want);
    eprintln!("QUIC-configured server: {n} pixels differ (max {max}); {v}");
    assert_eq!(n, 0);
    assert!(
        v["skipped"].as_object().unwrap().is_empty(),
        "the server sent what the mirror does not decode: {v}"
    );
}
