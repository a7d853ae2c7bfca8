//! `spiced status`: the client of the control socket ([`client_main`]), where
//! it looks for the socket, and the summary it prints for an operator.

use super::protocol::{PERMISSION_DENIED, VERSION};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `spiced status INSTANCE` looks: `/run/spiced/INSTANCE/control.sock`
/// (each instance's own directory: docs/systemd.md).
pub const RUN_DIR: &str = "/run/spiced";

/// Where `spiced status` connects: `--socket PATH`, else
/// `/run/spiced/INSTANCE/control.sock` for INSTANCE (or `SPICED_INSTANCE`, or
/// "default").
pub fn socket_for(socket: Option<&Path>, instance: Option<&str>) -> Result<PathBuf, String> {
    if let Some(p) = socket {
        return Ok(p.to_path_buf());
    }
    let env = std::env::var(crate::metrics::INSTANCE_ENV).ok();
    let name = match instance {
        Some(i) => i.to_string(),
        None => crate::metrics::instance_name(env.as_deref()),
    };
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "{:?} is not an instance name",
            crate::text::printable(&name)
        ));
    }
    Ok(Path::new(RUN_DIR).join(name).join("control.sock"))
}

/// `spiced status [--json] [--socket PATH | INSTANCE]`. Exit: 0 ok; 69 no
/// daemon (no socket, nobody listening); 77 not allowed (the socket's mode,
/// or the daemon refusing the peer's uid); 78 not an instance name; 1 any
/// other error (docs/control.md, docs/exit-codes.md).
pub fn client_main(json: bool, socket: Option<&Path>, instance: Option<&str>) -> u8 {
    let path = match socket_for(socket, instance) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("spiced status: {e}");
            return crate::exit::CONFIG;
        }
    };
    let shown = crate::text::printable(&path.display().to_string());
    let line = match request(&path, "status") {
        Ok(l) => l,
        Err(RequestError::Connect(e)) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                crate::exit::TICKET // 77, EX_NOPERM
            } else {
                crate::exit::RETRIES_EXHAUSTED // 69, EX_UNAVAILABLE
            };
            eprintln!("spiced status: cannot connect to {shown}: {e} (is spiced running?)");
            return code;
        }
        Err(RequestError::Protocol(e)) => {
            eprintln!("spiced status: {shown}: {}", crate::text::printable(&e));
            return crate::exit::FAILURE;
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("spiced status: {shown}: the answer is not JSON: {e}");
            return crate::exit::FAILURE;
        }
    };
    if v["version"] != VERSION {
        eprintln!(
            "spiced status: {shown}: protocol version {} (this spiced speaks {VERSION})",
            crate::text::printable(&v["version"].to_string())
        );
        return crate::exit::FAILURE;
    }
    if v["type"] != "status" {
        let e = v["error"].as_str().unwrap_or("unexpected answer");
        eprintln!("spiced status: {shown}: {}", crate::text::printable(e));
        // Refused by the daemon itself (the peer's uid): not allowed, as a
        // refused connect is.
        if e == PERMISSION_DENIED {
            return crate::exit::TICKET; // 77, EX_NOPERM
        }
        return crate::exit::FAILURE;
    }
    if json {
        // serde_json escapes every control character.
        println!("{v}");
    } else {
        print!("{}", human(&v));
    }
    crate::exit::OK
}

enum RequestError {
    Connect(std::io::Error),
    Protocol(String),
}

/// One request, one answer line (bounded: 1 MiB, 10 s).
fn request(path: &Path, cmd: &str) -> Result<String, RequestError> {
    use std::io::{BufRead, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(RequestError::Connect)?;
    let t = Some(Duration::from_secs(10));
    let p = |e: std::io::Error| RequestError::Protocol(e.to_string());
    s.set_read_timeout(t).map_err(p)?;
    s.set_write_timeout(t).map_err(p)?;
    // A daemon that refuses the peer answers and closes without reading the
    // request: its answer is still there to read after a broken pipe.
    let sent = s.write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes());
    let mut line = String::new();
    let read = std::io::BufReader::new(s.take(1 << 20)).read_line(&mut line);
    if line.is_empty() {
        sent.map_err(p)?;
    }
    read.map_err(p)?;
    if !line.ends_with('\n') {
        return Err(RequestError::Protocol(
            "the answer ended early (or is over 1 MiB)".into(),
        ));
    }
    Ok(line)
}

/// One screen for an operator. Every string from the daemon is escaped.
pub fn human(v: &serde_json::Value) -> String {
    use crate::text::printable as esc;
    use std::fmt::Write as _;
    let s = |k: &str| esc(v[k].as_str().unwrap_or("?"));
    let now = v["now"].as_f64().unwrap_or(0.0);
    let when = |t: &serde_json::Value| -> Option<String> {
        let t = t.as_f64()?;
        let at = crate::time::format_unix_utc(t as i64);
        let d = now - t;
        Some(if d >= 0.0 {
            format!(
                "{at} ({} ago)",
                crate::time::fmt_dur(Duration::from_secs(d as u64))
            )
        } else {
            format!(
                "{at} (in {})",
                crate::time::fmt_dur(Duration::from_secs((-d) as u64))
            )
        })
    };
    let mut o = String::new();
    let _ = writeln!(o, "spiced {}: {}", s("instance"), s("describe"));
    let _ = writeln!(o, "  server:       {}", s("host"));
    if let Some(w) = when(&v["since"]) {
        let _ = writeln!(o, "  state since:  {w}");
    }
    if v["state"] == "connected" {
        let _ = writeln!(
            o,
            "  channels:     {} of {} up",
            v["channels_up"], v["channels_total"]
        );
        if let Some(down) = v["channels_down"].as_object() {
            for (ch, why) in down {
                let _ = writeln!(
                    o,
                    "    down: {} ({})",
                    esc(ch),
                    esc(why.as_str().unwrap_or("?"))
                );
            }
        }
    }
    if let Some(a) = v["attempt"].as_u64() {
        let budget = v["attempt_budget"]
            .as_u64()
            .map_or("unlimited".to_string(), |b| b.to_string());
        let _ = writeln!(o, "  attempt:      {a} of {budget}");
        if let Some(w) = when(&v["next_attempt_at"]) {
            let _ = writeln!(o, "  next attempt: {w}");
        }
    }
    if let Some(a) = v["agent_connected"].as_bool() {
        let _ = writeln!(
            o,
            "  guest agent:  {}",
            if a { "connected" } else { "not connected" }
        );
    }
    crate::display::control::human_display(&mut o, &v["display"], now);
    let _ = writeln!(o, "  reconnects:   {}", v["reconnects"]);
    if let Some(d) = v["last_disconnect"].as_object() {
        let f = |k: &str| esc(d.get(k).and_then(|x| x.as_str()).unwrap_or("?"));
        let at = when(&d.get("at").cloned().unwrap_or_default()).unwrap_or_default();
        let _ = writeln!(
            o,
            "  last disconnect: {at}: {} on {}: {}",
            f("cause"),
            f("channel"),
            f("message")
        );
        if let Some(r) = d.get("report").and_then(|r| r.as_str()) {
            let _ = writeln!(o, "    report: {}", esc(r));
        }
    }
    if let Some(t) = v["ticket_valid_until"].as_i64() {
        let w = when(&serde_json::Value::from(t as f64)).unwrap_or_default();
        let _ = writeln!(o, "  ticket valid until: {w}");
    }
    let c = &v["counts"];
    let sum = |k: &str| -> u64 {
        c[k].as_object()
            .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
            .unwrap_or(0)
    };
    let _ = writeln!(
        o,
        "  counts:       {} disconnects, {} channel losses, {} failed connects, {} reconnect attempts; reports {} written, {} skipped, {} failed",
        sum("disconnects"),
        sum("channel_losses"),
        sum("connect_failures"),
        c["reconnect_attempts"],
        c["reports_written"],
        c["reports_skipped"],
        c["reports_failed"]
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status_line;
    use crate::daemon::status::Status;

    /// A one-shot daemon that answers the first request with `answer`.
    fn answering(
        answer: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
        });
        (dir, path, t)
    }

    /// The daemon refusing the peer (SO_PEERCRED: another user through a
    /// loosened mode) is "not allowed", 77, as a refused connect is; any
    /// other error line is 1.
    #[test]
    fn a_refusal_by_the_daemon_exits_77() {
        let (_d, path, t) =
            answering("{\"version\":1,\"type\":\"error\",\"error\":\"permission denied\"}\n");
        assert_eq!(client_main(false, Some(&path), None), crate::exit::TICKET);
        t.join().unwrap();
        let (_d, path, t) = answering(
            "{\"version\":1,\"type\":\"error\",\"error\":\"too many clients (at most 16)\"}\n",
        );
        assert_eq!(client_main(false, Some(&path), None), crate::exit::FAILURE);
        t.join().unwrap();
    }

    #[test]
    fn the_client_finds_the_socket_by_instance() {
        assert_eq!(
            socket_for(Some(Path::new("/x/y.sock")), None).unwrap(),
            Path::new("/x/y.sock")
        );
        assert_eq!(
            socket_for(None, Some("kiosk1")).unwrap(),
            Path::new("/run/spiced/kiosk1/control.sock")
        );
        for bad in ["../etc", "a/b", "", "a\x1bb"] {
            let e = socket_for(None, Some(bad)).unwrap_err();
            assert!(!e.contains('\x1b'), "{e}");
        }
    }

    #[test]
    fn the_summary_escapes_what_the_daemon_says() {
        let st = Status {
            state: "connected",
            describe: "connected (session 1)".into(),
            host: "evil\x1b]0;pwned\x07host".into(),
            channels_up: 10,
            channels_total: 11,
            channels_down: [("usbredir".to_string(), "reset\r\nforged".to_string())].into(),
            since: Some(1_800_000_000.0),
            ..Status::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&status_line("k", &st, 1_800_000_065.0)).unwrap();
        let out = human(&v);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("evil\\x1b]0;pwned\\x07host"), "{out}");
        assert!(out.contains("10 of 11 up"), "{out}");
        assert!(
            out.contains("down: usbredir (reset\\x0d\\x0aforged)"),
            "{out}"
        );
        assert!(out.contains("2027-01-15T08:00:00Z (1m 5s ago)"), "{out}");
        assert_eq!(out.lines().count(), 7, "{out}");
    }
}
