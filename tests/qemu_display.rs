//! The display mirror against a real QEMU (the vga-noise guest redraws its
//! text screen all the time): `spiced screenshot` equals QMP `screendump` of
//! the same moment, over a series of still moments (the VM stopped with QMP
//! `stop`, then let run again), and the mirror off leaves the screenshot
//! request refused.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const LINK_TIMEOUT: Duration = Duration::from_secs(30);

fn ask(sock: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{{\"cmd\":\"{cmd}\"}}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

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

fn screenshot(sock: &Path) -> (f64, (u32, u32, Vec<u32>)) {
    let v = ask(sock, "screenshot");
    assert_eq!(v["type"], "screenshot", "{v}");
    let png = ::spiced::display::control::unbase64(v["png"].as_str().unwrap()).unwrap();
    let img = ::spiced::display::png::decode_rgb(&png).expect("our own PNG");
    (v["changed_at"].as_f64().unwrap_or(0.0), img)
}

/// How two frames differ: (pixels that differ, the largest channel difference).
fn diff(a: &[u32], b: &[u32]) -> (usize, u32) {
    let mut n = 0;
    let mut max = 0;
    for (x, y) in a.iter().zip(b) {
        if x != y {
            n += 1;
            for s in [0, 8, 16] {
                let d = ((x >> s) & 0xff).abs_diff((y >> s) & 0xff);
                max = max.max(d);
            }
        }
    }
    (n, max)
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
    let sock = dir.path().join("c.sock");
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let toml = format!(
        "[report]\nspool_dir = \"{}\"\n[control]\nsocket = \"{}\"\n",
        dir.path().join("spool").display(),
        sock.display()
    );
    let s = Spiced::start(&vv, &toml, &[]);
    assert!(
        s.wait_log("session fully linked", LINK_TIMEOUT),
        "{}",
        s.log()
    );
    // The screen is drawing.
    assert!(
        wait_until(Duration::from_secs(20), || {
            sock.exists() && ask(&sock, "screenshot")["type"] == "screenshot"
        }),
        "no frame: {}",
        s.log()
    );
    let dump = dir.path().join("dump.ppm");
    let mut digests = Vec::new();
    for round in 0..3 {
        q.qmp().execute("stop", None).expect("QMP stop");
        // Settled: two screenshots a second apart were drawn at the same time.
        let mut last = screenshot(&sock);
        let settled = wait_until(Duration::from_secs(15), || {
            std::thread::sleep(Duration::from_millis(1000));
            let now = screenshot(&sock);
            let same = now.0 == last.0;
            last = now;
            same
        });
        assert!(
            settled,
            "round {round}: the mirror kept changing while the VM was stopped"
        );
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
    let sock = dir.path().join("c.sock");
    let spool = dir.path().join("spool");
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let toml = format!(
        "[report]\nspool_dir = \"{}\"\n[control]\nsocket = \"{}\"\n[reconnect]\nenabled = false\n",
        spool.display(),
        sock.display()
    );
    let s = Spiced::start(&vv, &toml, &[]);
    assert!(
        s.wait_log("session fully linked", LINK_TIMEOUT),
        "{}",
        s.log()
    );
    assert!(wait_until(Duration::from_secs(20), || {
        sock.exists() && ask(&sock, "screenshot")["type"] == "screenshot"
    }));
    q.qmp().execute("stop", None).expect("QMP stop");
    let mut last = screenshot(&sock);
    assert!(wait_until(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = screenshot(&sock);
        let same = now.0 == last.0;
        last = now;
        same
    }));
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
