//! The control socket's `screenshot` request (protocol v1, docs/control.md)
//! and `spiced screenshot`, kept here so the control module only dispatches.
//!
//! Answer: `{"version":1,"type":"screenshot","width":W,"height":H,
//! "changed_at":T,"digest":"..","png":"<base64>"}`. The PNG is encoded off
//! the event loop from a copy-on-write handle on the frame.

use super::screen::Screen;
use std::path::Path;
use std::time::Duration;

/// The largest answer `spiced screenshot` reads (a 4096 x 4096 frame of
/// noise, base64).
const MAX_ANSWER: u64 = 96 << 20;

/// The answer line to a `screenshot` request.
pub async fn screenshot_line(screen: &Screen) -> String {
    let err = |e: &str| {
        serde_json::json!({"version": crate::control::VERSION, "type": "error", "error": e})
            .to_string()
    };
    if !screen.is_on() {
        return err("the display mirror is off ([display] mirror = false)");
    }
    let Some(shot) = screen.shot() else {
        return err("no frame yet: the display channel has not drawn a screen");
    };
    let job = tokio::task::spawn_blocking(move || {
        let png = shot.frame.png();
        let answer = png.map(|png| {
            serde_json::json!({
                "version": crate::control::VERSION,
                "type": "screenshot",
                "width": shot.frame.width,
                "height": shot.frame.height,
                "changed_at": shot.changed_at_unix,
                "digest": shot.frame.digest(),
                "png": crate::base64::encode(&png),
            })
            .to_string()
        });
        drop(shot);
        crate::heap::release_free_memory();
        answer
    });
    match job.await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => err(&format!("encoding the frame failed: {e}")),
        Err(_) => err("encoding the frame failed"),
    }
}

/// `spiced status`'s screen line(s) from the status answer's `display`
/// (nothing when the mirror is off). Strings from the daemon are escaped.
pub fn human_display(o: &mut String, d: &serde_json::Value, now: f64) {
    use std::fmt::Write as _;
    if !d.is_object() {
        return;
    }
    let digest = crate::text::printable(d["digest"].as_str().unwrap_or("-"));
    let (w, h) = (
        d["width"].as_u64().unwrap_or(0),
        d["height"].as_u64().unwrap_or(0),
    );
    let Some(changed) = d["changed_at"].as_f64() else {
        let _ = writeln!(o, "  screen:       no frame yet");
        return;
    };
    let ago = Duration::from_secs((now - changed).max(0.0) as u64);
    let stale = match d["stale"].as_bool() {
        Some(true) => " (stale)",
        _ => "",
    };
    let _ = writeln!(
        o,
        "  screen:       {w}x{h}, unchanged for {}{stale} (since {}), digest {digest}{}",
        crate::time::fmt_dur(ago),
        crate::reconnect::format_unix_utc(changed as i64),
        if d["linked"].as_bool() == Some(false) {
            "; the display channel is down (the last frame)"
        } else {
            ""
        }
    );
}

/// `spiced screenshot [--socket PATH | INSTANCE] FILE.png`. Exit codes as
/// `spiced status`: 0, 69 no daemon, 77 not allowed, 78 bad arguments, 1 a
/// protocol error or no frame.
pub fn client_main(file: &Path, socket: Option<&Path>, instance: Option<&str>) -> u8 {
    use std::io::{BufRead, Read, Write};
    let path = match crate::control::socket_for(socket, instance) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("spiced screenshot: {e}");
            return crate::exit::CONFIG;
        }
    };
    let shown = crate::text::printable(&path.display().to_string());
    let fail = |e: &str| {
        eprintln!("spiced screenshot: {shown}: {}", crate::text::printable(e));
        crate::exit::FAILURE
    };
    let mut s = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spiced screenshot: cannot connect to {shown}: {e} (is spiced running?)");
            return if e.kind() == std::io::ErrorKind::PermissionDenied {
                crate::exit::TICKET
            } else {
                crate::exit::RETRIES_EXHAUSTED
            };
        }
    };
    let t = Some(Duration::from_secs(20));
    if s.set_read_timeout(t).is_err() || s.set_write_timeout(t).is_err() {
        return fail("cannot set socket timeouts");
    }
    if let Err(e) = s.write_all(b"{\"cmd\":\"screenshot\"}\n") {
        return fail(&e.to_string());
    }
    let mut line = String::new();
    if let Err(e) = std::io::BufReader::new(s.take(MAX_ANSWER)).read_line(&mut line) {
        return fail(&e.to_string());
    }
    let v: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => return fail(&format!("the answer is not JSON: {e}")),
    };
    if v["type"] != "screenshot" {
        return fail(v["error"].as_str().unwrap_or("unexpected answer"));
    }
    let Some(png) = v["png"].as_str().and_then(crate::base64::decode) else {
        return fail("the answer carries no PNG");
    };
    if let Err(e) = std::fs::write(file, &png) {
        eprintln!(
            "spiced screenshot: cannot write {}: {e}",
            crate::text::printable(&file.display().to_string())
        );
        return crate::exit::FAILURE;
    }
    crate::exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_screenshot_is_the_frame_as_png() {
        let off = screenshot_line(&Screen::off()).await;
        assert!(off.contains("mirror is off"), "{off}");
        let screen = Screen::on(super::super::Limits::default(), None);
        let empty = screenshot_line(&screen).await;
        assert!(empty.contains("no frame yet"), "{empty}");
        // The session began 10 s ago.
        let start = tokio::time::Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap();
        let feed = screen.attach(start).unwrap();
        use super::super::screen::DisplaySink;
        feed.message(
            super::super::wire::msg::SURFACE_CREATE,
            &super::super::tests::surface_create(0, 4, 2, true),
            Duration::from_secs(2),
        );
        feed.message(
            super::super::wire::msg::DRAW_FILL,
            &super::super::tests::fill(0, 0, 0, 2, 2, 0xff0000),
            Duration::from_secs(3),
        );
        let line = screenshot_line(&screen).await;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "screenshot");
        // Drawn 3 s into the session: 7 s ago.
        let ago = crate::time::unix_now() - v["changed_at"].as_f64().unwrap();
        assert!((6.0..8.0).contains(&ago), "{ago}");
        let png = crate::base64::decode(v["png"].as_str().unwrap()).unwrap();
        let (w, h, px) = super::super::png::decode_rgb(&png).unwrap();
        assert_eq!((w, h), (4, 2));
        assert_eq!(px, vec![0xff0000, 0xff0000, 0, 0, 0xff0000, 0xff0000, 0, 0]);
        // The link ends: the last frame stays.
        feed.end();
        assert!(screen.shot().is_some());
    }
}
