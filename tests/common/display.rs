//! Reading the display mirror of a running spiced through its control
//! socket, and comparing frames.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{wait_until, write_vv, Spiced};

/// spiced against 127.0.0.1:`port` with its spool in `dir/spool`, its control
/// socket at `dir/c.sock` and `extra_toml`, once every channel has linked
/// and the mirror answers a screenshot. Returns spiced and the socket.
pub fn mirrored_spiced(dir: &Path, port: u16, extra_toml: &str) -> (Spiced, PathBuf) {
    let sock = dir.join("c.sock");
    let vv = write_vv(dir, &[("host", "127.0.0.1"), ("port", &port.to_string())]);
    let toml = format!(
        "[report]\nspool_dir = \"{}\"\n[control]\nsocket = \"{}\"\n{extra_toml}",
        dir.join("spool").display(),
        sock.display()
    );
    let s = Spiced::start(&vv, &toml, &[]);
    assert!(
        s.wait_log("session fully linked", Duration::from_secs(30)),
        "{}",
        s.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            sock.exists() && ask(&sock, "screenshot")["type"] == "screenshot"
        }),
        "no frame: {}",
        s.log()
    );
    (s, sock)
}

/// One request on the control socket, its answer as JSON.
pub fn ask(sock: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{{\"cmd\":\"{cmd}\"}}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

/// `status`'s `display` part.
pub fn display_status(sock: &Path) -> serde_json::Value {
    ask(sock, "status")["display"].clone()
}

/// A screenshot: (changed_at, (width, height, 0x00RRGGBB pixels)).
pub fn screenshot(sock: &Path) -> (f64, (u32, u32, Vec<u32>)) {
    let v = ask(sock, "screenshot");
    assert_eq!(v["type"], "screenshot", "{v}");
    let png = ::spiced::base64::decode(v["png"].as_str().unwrap()).unwrap();
    let img = ::spiced::display::png::decode_rgb(&png).expect("our own PNG");
    (v["changed_at"].as_f64().unwrap_or(0.0), img)
}

/// Waits (up to 30 s) until two screenshots a second apart show the same
/// pixels and the same "changed at" (within 1 ms: it is computed from two
/// clock reads, so exact float equality is chance). Err: what the last pair
/// showed, for the failure message.
pub fn wait_still(sock: &Path) -> Result<(), String> {
    let mut last = screenshot(sock);
    let mut seen = String::new();
    let still = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = screenshot(sock);
        let (n, _) = diff(&now.1 .2, &last.1 .2);
        let moved = (now.0 - last.0).abs();
        seen = format!(
            "changed_at {:.6} then {:.6}, {n} pixels differ",
            last.0, now.0
        );
        last = now;
        n == 0 && moved < 0.001
    });
    if still {
        Ok(())
    } else {
        Err(seen)
    }
}

/// How two frames differ: (pixels that differ, the largest channel difference).
pub fn diff(a: &[u32], b: &[u32]) -> (usize, u32) {
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

/// The bounding box (left, top, right, bottom) of the pixels that differ.
pub fn diff_box(w: u32, a: &[u32], b: &[u32]) -> Option<(u32, u32, u32, u32)> {
    let mut bx: Option<(u32, u32, u32, u32)> = None;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            let (px, py) = (i as u32 % w, i as u32 / w);
            bx = Some(match bx {
                None => (px, py, px + 1, py + 1),
                Some((l, t, r, bt)) => (l.min(px), t.min(py), r.max(px + 1), bt.max(py + 1)),
            });
        }
    }
    bx
}
