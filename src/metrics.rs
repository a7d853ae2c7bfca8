//! Fleet metrics: the daemon's [`Status`] and live traffic totals as a
//! Prometheus text-format file for node_exporter's textfile collector
//! (docs/metrics.md lists every series).
//!
//! Rendering is a pure function ([`render`]); when to rewrite is a small
//! sans-IO [`Schedule`] (on every change, about every [`EVERY`] riding a
//! wakeup that happens anyway, one write in flight); the write itself
//! ([`write_atomic`]: a temp file in the same directory renamed over the
//! target) is blocking and runs off the event loop.

use crate::channel::counters::TrafficTotals;
use crate::daemon::status::Status;
use crate::wake::{Wake, Window};
use crate::wire::ChannelId;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The file is rewritten about this often (node_exporter reads it at every
/// scrape; a file older than this by much means spiced is stuck or gone):
/// on a wakeup that happens anyway from [`MIN_AGE`] on (the server's PINGs
/// come every ~15 s), by a timer of its own at [`MAX_AGE`].
pub const EVERY: Duration = Duration::from_secs(15);
/// A periodic rewrite is never sooner than this after the last one.
pub const MIN_AGE: Duration = Duration::from_secs(10);
/// A periodic rewrite is never later than this after the last one.
pub const MAX_AGE: Duration = Duration::from_secs(20);

/// The label every series carries: the systemd instance (`SPICED_INSTANCE`).
pub const INSTANCE_LABEL: &str = "spiced_instance";

/// The environment variable naming the instance (spiced@.service sets `%i`).
pub const INSTANCE_ENV: &str = "SPICED_INSTANCE";

/// The instance name: `SPICED_INSTANCE`, or "default" when unset or empty.
pub fn instance_name(env: Option<&str>) -> String {
    match env {
        Some(v) if !v.trim().is_empty() => v.to_string(),
        _ => "default".to_string(),
    }
}

/// Every state word, for the `spiced_state` enum gauge (one series each).
pub const STATES: [&str; 7] = [
    "idle",
    "connecting",
    "connected",
    "pending",
    "waiting_for_ticket",
    "gave_up",
    "stopped",
];

/// Everything one rendering needs.
pub struct Snapshot<'a> {
    pub instance: &'a str,
    pub version: &'a str,
    pub status: &'a Status,
    pub traffic: &'a BTreeMap<ChannelId, TrafficTotals>,
    /// Unix seconds (for the uptime gauge).
    pub now: f64,
}

/// Escapes a label value (text format: backslash, double quote, line feed).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out {
    text: String,
    instance: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        let _ = write!(self.text, "{name}{{{INSTANCE_LABEL}=\"{}\"", self.instance);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", label(v));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: &str) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per `(label value, count)`; nothing when empty.
    fn by(&mut self, name: &str, help: &str, key: &str, values: &BTreeMap<String, u64>) {
        if values.is_empty() {
            return;
        }
        self.family(name, "counter", help);
        for (k, v) in values {
            self.sample(name, &[(key, k)], &v.to_string());
        }
    }
}

fn secs(v: f64) -> String {
    format!("{v:.3}")
}

/// The whole file. Families appear in a fixed order; labelled counters appear
/// once their first sample exists.
pub fn render(s: &Snapshot<'_>) -> String {
    let st = s.status;
    let c = &st.counts;
    let mut o = Out {
        text: String::with_capacity(4096),
        instance: label(s.instance),
    };
    o.family("spiced_build_info", "gauge", "spiced's version (always 1).");
    o.sample("spiced_build_info", &[("version", s.version)], "1");
    o.family(
        "spiced_state",
        "gauge",
        "1 for the daemon's current state, 0 for the others.",
    );
    for name in STATES {
        let v = if name == st.state { "1" } else { "0" };
        o.sample("spiced_state", &[("state", name)], v);
    }
    let up = st.state == "connected";
    o.one(
        "spiced_session_up",
        "gauge",
        "1 while a SPICE session is established.",
        if up { "1" } else { "0" },
    );
    o.one(
        "spiced_channels_up",
        "gauge",
        "Channels of the current session that are linked.",
        &st.channels_up.to_string(),
    );
    o.one(
        "spiced_channels",
        "gauge",
        "Channels of the current session (linked at least once).",
        &st.channels_total.to_string(),
    );
    if let Some(since) = st.since {
        o.one(
            "spiced_state_since_timestamp_seconds",
            "gauge",
            "When the current state began (unix time).",
            &secs(since),
        );
    }
    if let Some(est) = st.established {
        o.one(
            "spiced_session_established_timestamp_seconds",
            "gauge",
            "When the current session was established (unix time).",
            &secs(est),
        );
        o.one(
            "spiced_session_uptime_seconds",
            "gauge",
            "Seconds since the current session was established.",
            &secs((s.now - est).max(0.0)),
        );
    }
    o.by(
        "spiced_disconnects_total",
        "Established sessions lost, by cause.",
        "cause",
        &c.disconnects,
    );
    o.by(
        "spiced_channel_losses_total",
        "Channels other than main lost while the session went on, by cause.",
        "cause",
        &c.channel_losses,
    );
    o.by(
        "spiced_connect_failures_total",
        "Connect attempts that failed before a session was established, by cause.",
        "cause",
        &c.connect_failures,
    );
    o.one(
        "spiced_reconnect_attempts_total",
        "counter",
        "Reconnect attempts started (the first connect not counted).",
        &c.reconnect_attempts.to_string(),
    );
    o.one(
        "spiced_reconnects_total",
        "counter",
        "Sessions re-established after the first one.",
        &st.reconnects.to_string(),
    );
    o.one(
        "spiced_reconnect_attempt",
        "gauge",
        "The reconnect attempt running or waited for; 0 when none.",
        &st.attempt.unwrap_or(0).to_string(),
    );
    if let Some(b) = st.attempt_budget {
        o.one(
            "spiced_reconnect_attempt_budget",
            "gauge",
            "Attempts one disconnect cluster may use (absent: unlimited).",
            &b.to_string(),
        );
    }
    o.one(
        "spiced_reports_written_total",
        "counter",
        "Disconnect reports written.",
        &c.reports_written.to_string(),
    );
    o.one(
        "spiced_reports_skipped_total",
        "counter",
        "Disconnect reports not written because of report.cooldown_secs.",
        &c.reports_skipped.to_string(),
    );
    o.one(
        "spiced_reports_failed_total",
        "counter",
        "Disconnect reports whose write failed.",
        &c.reports_failed.to_string(),
    );
    if !s.traffic.is_empty() {
        let per = |o: &mut Out, name: &str, help: &str, f: fn(&TrafficTotals) -> u64| {
            o.family(name, "counter", help);
            for (ch, t) in s.traffic {
                o.sample(name, &[("channel", &ch.to_string())], &f(t).to_string());
            }
        };
        per(
            &mut o,
            "spiced_keepalives_sent_total",
            "Keepalive messages spiced sent, by channel.",
            |t| t.keepalives,
        );
        per(
            &mut o,
            "spiced_channel_received_bytes_total",
            "Bytes received from the server, by channel.",
            |t| t.bytes_in,
        );
        per(
            &mut o,
            "spiced_channel_sent_bytes_total",
            "Bytes sent to the server, by channel.",
            |t| t.bytes_out,
        );
    }
    if let Some(a) = st.agent_connected {
        o.one(
            "spiced_agent_connected",
            "gauge",
            "1 while the server says the guest agent is connected (connected only).",
            if a { "1" } else { "0" },
        );
    }
    if let Some(d) = &st.display {
        display(&mut o, d);
    }
    if let Some(t) = st.ticket_valid_until {
        o.one(
            "spiced_ticket_valid_until_timestamp_seconds",
            "gauge",
            "The ticket's ticket-valid-until (unix time).",
            &t.to_string(),
        );
    }
    if let Some(d) = &st.last_disconnect {
        o.one(
            "spiced_last_disconnect_timestamp_seconds",
            "gauge",
            "When the last established session was lost (unix time).",
            &secs(d.at),
        );
    }
    o.text
}

/// The display mirror's series (docs/display.md).
fn display(o: &mut Out, d: &crate::display::screen::DisplayView) {
    if let (Some(at), Some(age)) = (d.changed_at, d.unchanged_secs) {
        o.one(
            "spiced_display_changed_timestamp_seconds",
            "gauge",
            "When the guest's screen last changed (unix time).",
            &secs(at),
        );
        o.one(
            "spiced_display_unchanged_seconds",
            "gauge",
            "Seconds the guest's screen has not changed (at the last write).",
            &secs(age),
        );
    }
    if let Some(stale) = d.stale {
        o.one(
            "spiced_display_stale",
            "gauge",
            "1 once the screen has not changed for display.stale_after.",
            if stale { "1" } else { "0" },
        );
    }
    if let Some(digest) = &d.digest {
        o.family(
            "spiced_display_info",
            "gauge",
            "The frame's perceptual digest and size (always 1).",
        );
        o.sample(
            "spiced_display_info",
            &[
                ("digest", digest),
                ("width", &d.width.to_string()),
                ("height", &d.height.to_string()),
            ],
            "1",
        );
    }
    o.one(
        "spiced_display_mirror_bytes",
        "gauge",
        "Bytes the display mirror holds beside the screen (off-screen surfaces, caches).",
        &d.extra_bytes.to_string(),
    );
    o.by(
        "spiced_display_skipped_total",
        "Display messages and images the mirror did not decode or draw on this link, by kind.",
        "what",
        &d.skipped,
    );
}

/// When to rewrite the file: at once after a change, periodically between
/// [`MIN_AGE`] and [`MAX_AGE`] after the last write (riding a wakeup of the
/// process, see [`crate::wake`]), never two writes at a time (a change
/// during a write is written after it).
#[derive(Debug)]
pub struct Schedule {
    /// When the last write started.
    last: Instant,
    dirty: bool,
    in_flight: bool,
}

impl Schedule {
    /// The first write is due at once.
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            last: now,
            dirty: true,
            in_flight: false,
        }
    }

    /// Something the file shows changed.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// Whether to start a write now (then call [`Schedule::written`] when it
    /// ends): a change is owed, the periodic rewrite is due, or `wake` (the
    /// process is awake anyway) carries it.
    pub fn poll_write(&mut self, now: Instant, wake: Option<&Wake>) -> bool {
        let w = self.window();
        let periodic = now >= w.due || wake.is_some_and(|wake| w.ready(wake));
        if self.in_flight || !(self.dirty || periodic) {
            return false;
        }
        self.in_flight = true;
        self.dirty = false;
        self.last = now;
        true
    }

    /// The write in flight finished (either way).
    pub fn written(&mut self) {
        self.in_flight = false;
    }

    /// A write is running, or one is owed for a change.
    pub fn pending(&self) -> bool {
        self.in_flight || self.dirty
    }

    /// A write is running.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// When the periodic rewrite may ride a wakeup and when it is due. A
    /// change is written by the `poll_write` the shell makes after every
    /// input, so it needs no timer; a write still in flight at the due time
    /// is the shell's to notice.
    pub fn window(&self) -> Window {
        Window {
            earliest: crate::time::after(self.last, MIN_AGE),
            due: crate::time::after(self.last, MAX_AGE),
            grace: std::time::Duration::ZERO,
        }
    }
}

/// Writes `text` to `path` atomically: a temp file in the same directory,
/// written, renamed over `path`. A reader sees the old file or the new one,
/// never half of one. Blocking: run it off the event loop.
///
/// The temp file has a random name and is created with O_EXCL and
/// O_NOFOLLOW, so a symlink planted in a directory others can write to is
/// never followed; its mode is set to 0644 with fchmod, which the umask does
/// not touch (the units' UMask=0077 would leave a file created 0644 at 0600,
/// and node_exporter runs as its own user).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the metrics path names no file"))?;
    // node_exporter's textfile collector reads only *.prom: a temp name
    // without that suffix is never read half-written.
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(dir, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(p)
        })?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(text.as_bytes())?;
    // No fsync: the rename alone makes the switch atomic for readers, and
    // after a power loss the next write (spiced starts again) replaces
    // whatever survived; an fsync every 15 s would only wear a kiosk's
    // flash. On any error the temp file is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
