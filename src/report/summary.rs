//! `spiced report FILE.zip`: what an operator on an ssh session wants to know
//! about a disconnect, in about ten lines and a per-channel table. Reads the JSON
//! loosely (as a `serde_json::Value`), so ryll's zips summarise too.

use super::writer::CAUSE_ENTRY;
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::io::Read;
use std::path::{Path, PathBuf};

/// disconnect-cause.json larger than this is refused (a real one is a few KiB).
pub const MAX_CAUSE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a report could not be read. Displays as one line naming the file.
#[derive(Debug)]
pub enum ReportError {
    Io(PathBuf, std::io::Error),
    NotZip(PathBuf, String),
    NoCause(PathBuf),
    BadJson(PathBuf, String),
    /// disconnect-cause.json is over [`MAX_CAUSE_BYTES`] (it is never cut).
    TooLarge(PathBuf),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ReportError::NotZip(p, e) => write!(f, "{}: not a zip file ({e})", p.display()),
            ReportError::NoCause(p) => {
                write!(f, "{}: no {CAUSE_ENTRY} in this zip", p.display())
            }
            ReportError::BadJson(p, e) => {
                write!(f, "{}: {CAUSE_ENTRY} is not valid JSON ({e})", p.display())
            }
            ReportError::TooLarge(p) => write!(
                f,
                "{}: {CAUSE_ENTRY} is larger than the {} MiB limit",
                p.display(),
                MAX_CAUSE_BYTES / (1024 * 1024)
            ),
        }
    }
}

impl std::error::Error for ReportError {}

/// The raw bytes of the zip's disconnect-cause.json. An entry over
/// [`MAX_CAUSE_BYTES`] is an error, found by reading one byte past the limit
/// (never trusting, nor allocating, the size the zip declares).
pub fn read_cause_json(zip_path: &Path) -> Result<Vec<u8>, ReportError> {
    let file =
        std::fs::File::open(zip_path).map_err(|e| ReportError::Io(zip_path.to_path_buf(), e))?;
    read_cause_from(file, zip_path)
}

/// [`read_cause_json`] over any seekable reader; `name` labels the errors.
pub fn read_cause_from(
    reader: impl Read + std::io::Seek,
    name: &Path,
) -> Result<Vec<u8>, ReportError> {
    let p = || name.to_path_buf();
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| ReportError::NotZip(p(), e.to_string()))?;
    let entry = match zip.by_name(CAUSE_ENTRY) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Err(ReportError::NoCause(p())),
        Err(e) => return Err(ReportError::NotZip(p(), e.to_string())),
    };
    let mut buf = Vec::new();
    entry
        .take(MAX_CAUSE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReportError::Io(p(), e))?;
    if buf.len() as u64 > MAX_CAUSE_BYTES {
        return Err(ReportError::TooLarge(p()));
    }
    Ok(buf)
}

/// `spiced report --json`: the zip's disconnect-cause.json as written, checked
/// to be JSON and newline-terminated. Valid JSON holds no raw C0 control
/// character except whitespace between tokens; DEL and C1 (U+007F-U+009F, CSI
/// among them) may only sit inside strings, where they are rewritten as
/// `\u00XX` escapes: the JSON means the same and cannot drive the terminal.
pub fn cause_json_for_output(zip_path: &Path) -> Result<Vec<u8>, ReportError> {
    let raw = read_cause_json(zip_path)?;
    let bad = |e: String| ReportError::BadJson(zip_path.to_path_buf(), e);
    serde_json::from_slice::<serde::de::IgnoredAny>(&raw).map_err(|e| bad(e.to_string()))?;
    // ok to fail only in theory: serde_json has just accepted it as UTF-8 JSON.
    let text = std::str::from_utf8(&raw).map_err(|e| bad(e.to_string()))?;
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c.is_control() && !matches!(c, ' ' | '\t' | '\n' | '\r') {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// The operator's summary of a report zip.
pub fn summarize(zip_path: &Path) -> Result<String, ReportError> {
    let raw = read_cause_json(zip_path)?;
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| ReportError::BadJson(zip_path.to_path_buf(), e.to_string()))?;
    if !v.is_object() {
        return Err(ReportError::BadJson(
            zip_path.to_path_buf(),
            "not a JSON object".into(),
        ));
    }
    let name = zip_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format_summary(&name, &v))
}

/// `v` with every string and key passed through [`crate::text::printable`].
fn escaped(v: &Value) -> Value {
    use crate::text::printable as escape_controls;
    match v {
        Value::String(s) => Value::String(escape_controls(s)),
        Value::Array(a) => Value::Array(a.iter().map(escaped).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (escape_controls(k), escaped(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Formats a parsed disconnect-cause.json (any subset of the fields). Every
/// string from the file (and the file name) has its control characters escaped
/// (`\x1b`, `\u{9b}`): a report is untrusted input printed to a terminal.
pub fn format_summary(name: &str, v: &Value) -> String {
    let name = crate::text::printable(name);
    let v = &escaped(v);
    let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let uptime = v.get("session_uptime_secs").and_then(Value::as_f64);
    let mut out = String::new();
    let _ = writeln!(out, "Disconnect report {name}");
    let _ = writeln!(
        out,
        "  cause:      {} on channel {}",
        s("cause").unwrap_or("(not recorded)"),
        s("channel").unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "  time:       {}, after {} of session",
        s("time").unwrap_or("(unknown time)"),
        uptime.map(human_duration).unwrap_or_else(|| "?".into())
    );
    let kind = s("error_kind")
        .map(|k| format!(" [{k}]"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  error:      {}{kind}",
        s("error_message").unwrap_or("-")
    );
    if v.get("keepalive_timeout_fired").and_then(Value::as_bool) == Some(true) {
        let _ = writeln!(
            out,
            "  keepalive:  spiced's own inactivity timeout on main fired (no data from the server)"
        );
    }
    let reconnects = v.get("auto_reconnect_count").and_then(Value::as_u64);
    if s("reconnect_state").is_some() || reconnects.is_some() {
        let _ = writeln!(
            out,
            "  reconnect:  {} ({} automatic reconnects so far)",
            s("reconnect_state").unwrap_or("?"),
            reconnects
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        );
    }
    if let Some(n) = v.get("reports_skipped_since_last").and_then(Value::as_u64) {
        let _ = writeln!(
            out,
            "  skipped:    {n} earlier disconnect(s) not reported (cooldown)"
        );
    }
    if let Some(f) = v.get("last_frame").and_then(Value::as_object) {
        let g = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let n = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
        let drawn = match (
            f.get("drawn_at").and_then(Value::as_str),
            f.get("drawn_secs_before").and_then(Value::as_f64),
        ) {
            (Some(at), Some(d)) => format!(
                "last drawn {at}, {} before the disconnect",
                human_duration(d)
            ),
            _ => "never drawn".into(),
        };
        let _ = writeln!(
            out,
            "  screen:     {} ({}x{}), {drawn}; digest {}",
            g("file"),
            n("width"),
            n("height"),
            g("digest")
        );
    }
    match (
        s("spiced_version"),
        v.get("schema_version").and_then(Value::as_u64),
    ) {
        (Some(ver), Some(sch)) => {
            let _ = writeln!(out, "  written by: spiced {ver} (schema {sch})");
        }
        (Some(ver), None) => {
            let _ = writeln!(out, "  written by: spiced {ver}");
        }
        _ => {
            let _ = writeln!(out, "  written by: another client (no spiced_version)");
        }
    }

    let Some(chans) = v.get("per_channel").and_then(Value::as_object) else {
        let _ = writeln!(out, "\n(no per-channel data)");
        return out;
    };
    let _ = writeln!(
        out,
        "\nPer channel (times are seconds before the disconnect; * = failed first):"
    );
    let mut rows: Vec<Vec<String>> = vec![[
        "channel",
        "bytes in",
        "bytes out",
        "msgs in",
        "msgs out",
        "last recv",
        "last send",
        "pings/pongs (last)",
        "keepalives (last)",
        "closed",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect()];
    let failed = s("channel").unwrap_or("");
    for (ch, c) in chans {
        let u = |k: &str| c.get(k).and_then(Value::as_u64);
        let ago = |k: &str| rel_time(c.get(k).and_then(Value::as_f64), uptime);
        let closed = match (
            c.get("close_reason").and_then(Value::as_str),
            c.get("closed_at_secs").and_then(Value::as_f64),
        ) {
            (Some(r), Some(_)) => format!("{r} ({})", ago("closed_at_secs")),
            (Some(r), None) => r.to_string(),
            (None, Some(_)) => ago("closed_at_secs"),
            (None, None) => "-".into(),
        };
        rows.push(vec![
            if ch == failed {
                format!("{ch}*")
            } else {
                ch.clone()
            },
            u("bytes_in").map(human_bytes).unwrap_or_else(dash),
            u("bytes_out").map(human_bytes).unwrap_or_else(dash),
            u("messages_in").map(|n| n.to_string()).unwrap_or_else(dash),
            u("messages_out")
                .map(|n| n.to_string())
                .unwrap_or_else(dash),
            ago("last_recv_ts_secs"),
            ago("last_send_ts_secs"),
            format!(
                "{}/{} ({})",
                u("ping_recv_count").unwrap_or(0),
                u("pong_send_count").unwrap_or(0),
                ago("last_ping_recv_ts_secs")
            ),
            format!(
                "{} ({})",
                u("client_keepalive_send_count").unwrap_or(0),
                ago("last_client_keepalive_send_ts_secs")
            ),
            closed,
        ]);
    }
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::from("  ");
        for (i, cell) in r.iter().enumerate() {
            let w = widths[i];
            if i == 0 || i + 1 == cols {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
            if i + 1 < cols {
                line.push_str("  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn dash() -> String {
    "-".into()
}

/// `t` (seconds of session uptime) relative to the failure at `uptime`.
fn rel_time(t: Option<f64>, uptime: Option<f64>) -> String {
    match (t, uptime) {
        (None, _) => "never".into(),
        (Some(t), Some(u)) => format!("-{:.1}s", (u - t).max(0.0)),
        (Some(t), None) => format!("@{t:.1}s"),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let total = secs as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ryll_style_json() {
        // Only ryll's fields: still summarises.
        let v = serde_json::json!({
            "channel": "display", "error_message": "eof", "error_kind": null,
            "keepalive_timeout_fired": false, "session_uptime_secs": 3725.0,
            "per_channel": {"display": {"bytes_in": 2048, "bytes_out": 10,
                "last_recv_ts_secs": 3720.0, "last_send_ts_secs": null,
                "ping_recv_count": 3, "pong_send_count": 3,
                "last_ping_recv_ts_secs": 3700.5, "client_keepalive_send_count": 0,
                "last_client_keepalive_send_ts_secs": null}}
        });
        let out = format_summary("x.zip", &v);
        assert!(out.contains("(not recorded) on channel display"), "{out}");
        assert!(out.contains("after 1h 02m 05s"), "{out}");
        assert!(out.contains("another client"), "{out}");
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with("display*"))
            .unwrap();
        assert!(row.contains("2.0 KiB"), "{row}");
        assert!(row.contains("-5.0s"), "{row}");
        assert!(row.contains("3/3 (-24.5s)"), "{row}");
        assert!(row.contains("never"), "{row}");
    }

    #[test]
    fn control_characters_are_escaped() {
        let v = serde_json::json!({
            "cause": "reset\u{1b}[2J", "channel": "main\u{9b}31m",
            "error_message": "a\r\nforged line\u{7f}", "session_uptime_secs": 1.0,
            "per_channel": {"evil\u{1b}]0;title\u{7}": {"close_reason": "x\u{1b}c"}}
        });
        let out = format_summary("r\u{1b}.zip", &v);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(
            out.contains("reset\\x1b[2J on channel main\\u{9b}31m"),
            "{out}"
        );
        assert!(out.contains("a\\x0d\\x0aforged line\\x7f"), "{out}");
        assert!(out.contains("evil\\x1b]0;title\\x07"), "{out}");
        assert!(out.contains("r\\x1b.zip"), "{out}");
        assert_eq!(out.lines().count(), out.matches('\n').count());
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(125.0), "2m 05s");
    }
}
