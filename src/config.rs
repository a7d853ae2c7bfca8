//! Daemon behaviour from the TOML config file (`--config FILE.toml`).
//!
//! The .vv file says *where* to connect; this file says *how* spiced behaves.
//! Every option has a default (documented in `config/spiced.toml`); unknown keys
//! are an error so a typo never silently falls back to a default.

use crate::wire::ChannelType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub keepalive: KeepaliveConfig,
    pub reconnect: ReconnectConfig,
    pub report: ReportConfig,
    pub tls: TlsConfig,
    pub channels: ChannelsConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub display: DisplayConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter (RUST_LOG syntax); the RUST_LOG environment variable wins.
    pub filter: String,
    /// Where log lines go.
    pub target: LogTarget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            target: LogTarget::Auto,
        }
    }
}

/// `log.target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// journald's native protocol when stderr is the journal (JOURNAL_STREAM
    /// names stderr), else plain stderr.
    Auto,
    /// journald's native protocol; a line the journal socket does not take goes
    /// to stderr with a `<N>` priority prefix.
    Journald,
    /// Plain lines on stderr.
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// A channel silent in both directions this long sends one keepalive. 0 disables.
    pub idle_secs: f64,
    /// How much later than `idle_secs` a keepalive may go out to ride on a
    /// server PING expected by then (the server's 15 s PING period plus its
    /// round trip). 0: at `idle_secs` exactly.
    pub ping_grace_secs: f64,
    /// No inbound byte on main for this long ends the session (`keepalive_timeout`);
    /// a probe goes out at half of it. 0 disables.
    pub main_timeout_secs: f64,
    /// TCP keepalive: idle time before the first probe. 0 disables TCP keepalive.
    pub tcp_idle_secs: u32,
    /// TCP keepalive: interval between probes.
    pub tcp_interval_secs: u32,
    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    pub tcp_probes: u32,
    /// TCP_USER_TIMEOUT: unacknowledged data older than this ends the connection. 0 = kernel default.
    pub tcp_user_timeout_secs: u32,
    /// Connecting (TCP + proxy + TLS + link) must finish within this.
    pub connect_timeout_secs: f64,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            idle_secs: 15.0,
            ping_grace_secs: 0.25,
            main_timeout_secs: 90.0,
            tcp_idle_secs: 30,
            tcp_interval_secs: 15,
            tcp_probes: 3,
            tcp_user_timeout_secs: 25,
            connect_timeout_secs: 15.0,
        }
    }
}

/// What to do when another client takes the session over (a new main link on the
/// server closes ours cleanly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTakeover {
    /// Take the session back, but with the long takeover back-off.
    Reclaim,
    /// Leave the other client alone: give up (exit 69) unless a fresh ticket arrives.
    Yield,
}

/// `reconnect.max_attempts`: a number of attempts per disconnect cluster, or
/// `"unlimited"` (never give up on a session that has been up; see
/// `ReconnectPolicy::budget` for the gate that still bounds a session that never
/// came up). Written in TOML as an integer or the string `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxAttempts {
    Limited(u32),
    Unlimited,
}

impl MaxAttempts {
    /// The default budget; also the gate budget of "unlimited" while no session
    /// has been established.
    pub const DEFAULT: MaxAttempts = MaxAttempts::Limited(3);
    /// Largest accepted number.
    pub const MAX: u32 = 1000;
}

impl std::fmt::Display for MaxAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxAttempts::Limited(n) => write!(f, "{n}"),
            MaxAttempts::Unlimited => f.write_str("\"unlimited\""),
        }
    }
}

impl Serialize for MaxAttempts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxAttempts::Limited(n) => s.serialize_u32(*n),
            MaxAttempts::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxAttempts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "an integer 1..=1000 or \"unlimited\"";
        impl serde::de::Visitor<'_> for V {
            type Value = MaxAttempts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaxAttempts, E> {
                // Out-of-u32 values are refused here; 0 and 1001.. reach
                // `validate`, whose message names the range.
                u32::try_from(v)
                    .map(MaxAttempts::Limited)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &EXPECTED))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaxAttempts, E> {
                u32::try_from(v)
                    .map(MaxAttempts::Limited)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &EXPECTED))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaxAttempts, E> {
                if v == "unlimited" {
                    Ok(MaxAttempts::Unlimited)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &EXPECTED))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// false: never reconnect; a disconnect ends spiced (exit 69).
    pub enabled: bool,
    /// First delay of the exponential back-off.
    pub initial_delay_secs: f64,
    /// Each further delay is the previous one times this.
    pub factor: f64,
    /// Upper bound of one delay.
    pub max_delay_secs: f64,
    /// Attempts per disconnect cluster: 1..=1000 or "unlimited".
    pub max_attempts: MaxAttempts,
    /// Randomly lengthen delays (backon jitter).
    pub jitter: bool,
    /// Disconnects within this long of a cluster's start (or of giving up) share its budget.
    pub cluster_window_secs: f64,
    /// When the ticket rules forbid a retry: wait this long for a new .vv (or SIGHUP). 0 = exit at once.
    pub wait_for_ticket_secs: f64,
    /// argv run on a ticket give-up; its stdout is a fresh .vv. Empty = none.
    pub refresh_command: Vec<String>,
    /// The refresh command is killed after this long.
    pub refresh_timeout_secs: f64,
    /// "reclaim" or "yield" when another client takes the session.
    pub on_takeover: OnTakeover,
    /// Delay before reclaiming a session taken over by another client.
    pub takeover_delay_secs: f64,
    /// Advertise semi-seamless migration: link at the target while the source
    /// still runs. false: the server announces the target only after the move.
    pub semi_seamless_migration: bool,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            initial_delay_secs: 1.0,
            factor: 4.0,
            max_delay_secs: 300.0,
            max_attempts: MaxAttempts::DEFAULT,
            jitter: false,
            cluster_window_secs: 300.0,
            wait_for_ticket_secs: 0.0,
            refresh_command: Vec::new(),
            refresh_timeout_secs: 30.0,
            on_takeover: OnTakeover::Reclaim,
            takeover_delay_secs: 60.0,
            semi_seamless_migration: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// false: write no disconnect reports.
    pub enabled: bool,
    /// Where reports go. Unset: $STATE_DIRECTORY/reports under systemd, else /var/spool/spiced.
    pub spool_dir: Option<PathBuf>,
    /// At most one report per this many seconds; skipped ones are counted in the next.
    pub cooldown_secs: f64,
    /// Keep at most this many report files (oldest deleted first).
    pub max_files: usize,
    /// Keep at most this many bytes of reports (oldest deleted first).
    pub max_bytes: u64,
    /// The traffic capture covers at most this many seconds before the disconnect...
    pub capture_secs: f64,
    /// ...and at most this many bytes of SPICE traffic.
    pub capture_max_bytes: usize,
    /// Keep keystroke (inputs) and agent/clipboard (main) payloads in the capture.
    pub capture_input_payloads: bool,
    /// Log lines kept for `log.txt`.
    pub log_lines: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            enabled: true,
            spool_dir: None,
            cooldown_secs: 60.0,
            max_files: 50,
            max_bytes: 64 * 1024 * 1024,
            capture_secs: 60.0,
            capture_max_bytes: 4 * 1024 * 1024,
            capture_input_payloads: false,
            log_lines: 500,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Accept any server certificate. Dangerous; logged loudly at every connect.
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Channel names never linked (on top of the .vv's disable-channels), e.g.
    /// ["usbredir", "webdav", "playback"]: linking those has guest-visible effects.
    pub skip: Vec<String>,
    /// Channel names whose loss ends the whole session. Main is always implied;
    /// any other lost channel leaves the session up, degraded, and is relinked.
    pub required: Vec<String>,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            skip: Vec::new(),
            required: vec!["main".into()],
        }
    }
}

impl ChannelsConfig {
    /// Losing a channel of type `ty` ends the session: main always, others only
    /// when listed in `required`.
    pub fn is_required(&self, ty: ChannelType) -> bool {
        ty == ChannelType::Main
            || self
                .required
                .iter()
                .any(|n| ChannelType::from_name(n) == Some(ty))
    }
}

/// `[metrics]`: a Prometheus text-format file for node_exporter's textfile
/// collector (docs/metrics.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Absolute path of the `.prom` file, rewritten atomically on every state
    /// change and at least every 15 s. Unset: no metrics file.
    pub textfile: Option<PathBuf>,
}

/// `[control]`: the local status and control socket (docs/control.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Absolute path of the unix socket (mode 0600), conventionally
    /// `/run/spiced/INSTANCE/control.sock`. Unset: no control socket.
    pub socket: Option<PathBuf>,
}

/// `[display]`: the display mirror (docs/display.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// Decode the display channel into a mirror of the screen (screenshots,
    /// the last frame in reports, freshness). Off: the display channel is
    /// drained as before, nothing decoded or allocated.
    pub mirror: bool,
    /// Put `last-frame.png` into disconnect reports (it can show private
    /// data, as the capture can).
    pub report_last_frame: bool,
    /// Bytes for off-screen surfaces, in KiB: 0 to 262144.
    pub offscreen_kib: usize,
    /// Bytes for the image cache the server fills, in KiB (the server is told
    /// a quarter of it in pixels; the GLZ window gets half of it): 64 to
    /// 262144.
    pub cache_kib: usize,
    /// Log the `screen_stale` event when the screen has not changed for this
    /// long, seconds: 0 (off) or 1 to 604800.
    pub stale_after_secs: f64,
    /// Write the screen to `screen_png` this often (when it changed),
    /// seconds: 0 (off) or 1 to 86400.
    pub screen_png_secs: f64,
    /// Where (absolute path); default `$STATE_DIRECTORY/screen.png`, else
    /// /var/lib/spiced/screen.png.
    pub screen_png: Option<PathBuf>,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            mirror: true,
            report_last_frame: true,
            offscreen_kib: 512,
            cache_kib: 1024,
            stale_after_secs: 0.0,
            screen_png_secs: 0.0,
            screen_png: None,
        }
    }
}

impl DisplayConfig {
    /// The mirror's caps from this config.
    pub fn limits(&self) -> crate::display::Limits {
        crate::display::Limits {
            offscreen_bytes: self.offscreen_kib.saturating_mul(1024),
            pixmap_cache_bytes: self.cache_kib.saturating_mul(1024),
            glz_window_bytes: self.cache_kib.saturating_mul(512),
            ..crate::display::Limits::default()
        }
    }

    /// `stale_after_secs` as a duration (None: off).
    pub fn stale_after(&self) -> Option<std::time::Duration> {
        (self.stale_after_secs > 0.0).then(|| crate::time::secs(self.stale_after_secs))
    }
}

/// A config file that could not be used. Displays as one line naming the file.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: {}", one_line(&e.to_string()))))?;
        cfg.validate()
            .map_err(|m| ConfigError(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config: {e}", path.display())))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// [`Config::load`], except that a file that does not exist is `Ok(None)`:
    /// the caller uses the defaults (`--config-if-exists`). Anything else that
    /// stops the read (permissions, a directory) is an error, so a file that is
    /// there is never silently ignored.
    pub fn load_if_exists(path: &Path) -> Result<Option<Config>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError(format!(
                "{}: cannot read config: {e}",
                path.display()
            ))),
        }
    }

    /// Ranges serde cannot express (documented next to each option in
    /// config/spiced.toml). The message names the key and the value; `from_toml`
    /// and `load` prefix the file.
    pub fn validate(&self) -> Result<(), String> {
        let k = &self.keepalive;
        let r = &self.reconnect;
        let p = &self.report;
        secs("keepalive.idle_secs", k.idle_secs, OFF, 1.0, 3600.0)?;
        num(
            "keepalive.ping_grace_secs",
            k.ping_grace_secs,
            0.0,
            1.0,
            " s",
        )?;
        secs(
            "keepalive.main_timeout_secs",
            k.main_timeout_secs,
            OFF,
            2.0,
            86_400.0,
        )?;
        secs(
            "keepalive.connect_timeout_secs",
            k.connect_timeout_secs,
            ON,
            1.0,
            3600.0,
        )?;
        int(
            "keepalive.tcp_idle_secs",
            k.tcp_idle_secs,
            OFF,
            1,
            32_767,
            " s",
        )?;
        int(
            "keepalive.tcp_interval_secs",
            k.tcp_interval_secs,
            ON,
            1,
            32_767,
            " s",
        )?;
        int("keepalive.tcp_probes", k.tcp_probes, ON, 1, 127, "")?;
        int(
            "keepalive.tcp_user_timeout_secs",
            k.tcp_user_timeout_secs,
            ON,
            0,
            86_400,
            " s",
        )?;

        secs(
            "reconnect.initial_delay_secs",
            r.initial_delay_secs,
            ON,
            0.1,
            86_400.0,
        )?;
        num("reconnect.factor", r.factor, 1.0, 100.0, "")?;
        secs(
            "reconnect.max_delay_secs",
            r.max_delay_secs,
            ON,
            0.1,
            86_400.0,
        )?;
        if r.max_delay_secs < r.initial_delay_secs {
            return Err(format!(
                "reconnect.max_delay_secs = {}: must be >= reconnect.initial_delay_secs ({})",
                r.max_delay_secs, r.initial_delay_secs
            ));
        }
        if let MaxAttempts::Limited(n) = r.max_attempts {
            int(
                "reconnect.max_attempts",
                n,
                ON,
                1,
                MaxAttempts::MAX.into(),
                "",
            )
            .map_err(|e| format!("{e} (or \"unlimited\")"))?;
        }
        secs(
            "reconnect.cluster_window_secs",
            r.cluster_window_secs,
            ON,
            1.0,
            604_800.0,
        )?;
        secs(
            "reconnect.wait_for_ticket_secs",
            r.wait_for_ticket_secs,
            ON,
            0.0,
            604_800.0,
        )?;
        secs(
            "reconnect.refresh_timeout_secs",
            r.refresh_timeout_secs,
            ON,
            1.0,
            3600.0,
        )?;
        secs(
            "reconnect.takeover_delay_secs",
            r.takeover_delay_secs,
            ON,
            0.0,
            86_400.0,
        )?;

        secs("report.cooldown_secs", p.cooldown_secs, ON, 0.0, 86_400.0)?;
        int("report.max_files", p.max_files, ON, 1, 10_000, "")?;
        int(
            "report.max_bytes",
            p.max_bytes,
            ON,
            65_536,
            17_179_869_184,
            " bytes",
        )?;
        secs("report.capture_secs", p.capture_secs, ON, 1.0, 3600.0)?;
        int(
            "report.capture_max_bytes",
            p.capture_max_bytes,
            ON,
            0,
            268_435_456,
            " bytes",
        )?;
        int("report.log_lines", p.log_lines, ON, 0, 100_000, "")?;
        let d = &self.display;
        int(
            "display.offscreen_kib",
            d.offscreen_kib,
            ON,
            0,
            262_144,
            " KiB",
        )?;
        int("display.cache_kib", d.cache_kib, ON, 64, 262_144, " KiB")?;
        secs(
            "display.stale_after_secs",
            d.stale_after_secs,
            OFF,
            1.0,
            604_800.0,
        )?;
        secs(
            "display.screen_png_secs",
            d.screen_png_secs,
            OFF,
            1.0,
            86_400.0,
        )?;
        if !d.mirror {
            for (key, on) in [
                ("display.stale_after_secs", d.stale_after_secs != 0.0),
                ("display.screen_png_secs", d.screen_png_secs != 0.0),
            ] {
                if on {
                    return Err(format!("{key} needs display.mirror = true"));
                }
            }
        }

        for (key, path) in [
            ("metrics.textfile", &self.metrics.textfile),
            ("control.socket", &self.control.socket),
            ("display.screen_png", &self.display.screen_png),
        ] {
            if let Some(p) = path {
                abs_file(key, p)?;
            }
        }

        let c = &self.channels;
        for (key, names) in [
            ("channels.skip", &c.skip),
            ("channels.required", &c.required),
        ] {
            if let Some(bad) = names.iter().find(|n| ChannelType::from_name(n).is_none()) {
                return Err(format!(
                    "{key}: unknown channel name {bad:?} (known: {CHANNEL_NAMES})"
                ));
            }
        }
        if let Some(n) = c
            .skip
            .iter()
            .find(|n| ChannelType::from_name(n).is_some_and(|ty| c.is_required(ty)))
        {
            return Err(format!(
                "channels.skip: {n:?} cannot be skipped: it is main or listed in channels.required"
            ));
        }
        Ok(())
    }
}

/// An absolute path naming a file (not a directory, not empty, no control
/// characters, within the 108-byte limit of a unix socket address for sockets).
fn abs_file(key: &str, p: &Path) -> Result<(), String> {
    let shown = crate::text::printable(&p.display().to_string());
    if !p.is_absolute() {
        return Err(format!("{key} = {shown:?}: must be an absolute path"));
    }
    if p.file_name().is_none() || p.as_os_str().to_string_lossy().ends_with('/') {
        return Err(format!(
            "{key} = {shown:?}: must name a file, not a directory"
        ));
    }
    if p.as_os_str()
        .to_string_lossy()
        .chars()
        .any(char::is_control)
    {
        return Err(format!(
            "{key} = {shown:?}: control characters are not allowed"
        ));
    }
    // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
    if key == "control.socket" && p.as_os_str().len() > 107 {
        return Err(format!(
            "{key} = {shown:?}: longer than 107 bytes (the limit of a unix socket path)"
        ));
    }
    Ok(())
}

/// For error messages: the names `ChannelType::from_name` knows.
const CHANNEL_NAMES: &str =
    "main display inputs cursor playback record smartcard usbredir port webdav tunnel";

/// 0 means "off" for this option (allowed outside the range).
const OFF: bool = true;
/// 0 is not special.
const ON: bool = false;

/// A duration in seconds: finite and in `lo..=hi`, or 0 when `zero_off`.
fn secs(key: &str, v: f64, zero_off: bool, lo: f64, hi: f64) -> Result<(), String> {
    if zero_off && v == 0.0 {
        return Ok(());
    }
    if v.is_finite() && (lo..=hi).contains(&v) {
        return Ok(());
    }
    let off = if zero_off { "0 (off) or " } else { "" };
    Err(format!("{key} = {v}: must be {off}between {lo} and {hi} s"))
}

/// A unitless float: finite and in `lo..=hi`.
fn num(key: &str, v: f64, lo: f64, hi: f64, unit: &str) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        return Ok(());
    }
    Err(format!("{key} = {v}: must be between {lo} and {hi}{unit}"))
}

/// An integer in `lo..=hi`, or 0 when `zero_off`.
fn int<T>(key: &str, v: T, zero_off: bool, lo: u64, hi: u64, unit: &str) -> Result<(), String>
where
    T: TryInto<u64> + Copy + std::fmt::Display,
{
    // Only usize can exceed u64, and then it is out of range anyway.
    let x: u64 = v.try_into().unwrap_or(u64::MAX);
    if (zero_off && x == 0) || (lo..=hi).contains(&x) {
        return Ok(());
    }
    let off = if zero_off { "0 (off) or " } else { "" };
    Err(format!(
        "{key} = {v}: must be {off}between {lo} and {hi}{unit}"
    ))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_is_the_defaults() {
        let cfg = Config::from_toml(include_str!("../config/spiced.toml"), "spiced.toml").unwrap();
        assert_eq!(cfg, Config::default());
    }

    /// Every option in the schema appears (commented out, with its default) in
    /// config/spiced.toml: uncommenting all of them still gives the defaults.
    #[test]
    fn shipped_example_documents_every_option() {
        let text: String = include_str!("../config/spiced.toml")
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = Config::from_toml(&text, "uncommented").unwrap();
        let defaults = Config {
            report: ReportConfig {
                spool_dir: Some("/var/spool/spiced".into()),
                ..ReportConfig::default()
            },
            metrics: MetricsConfig {
                textfile: Some("/var/lib/prometheus/node-exporter/spiced-default.prom".into()),
            },
            control: ControlConfig {
                socket: Some("/run/spiced/default/control.sock".into()),
            },
            display: DisplayConfig {
                screen_png: Some("/var/lib/spiced/screen.png".into()),
                ..DisplayConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(cfg, defaults);
        // And none is missing: every key of the schema is there, uncommented.
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let schema = toml::Value::try_from(Config::default()).unwrap();
        for (section, table) in schema.as_table().unwrap() {
            for key in table.as_table().unwrap().keys() {
                assert!(
                    doc[section].as_table().unwrap().contains_key(key),
                    "[{section}] {key} is not documented in config/spiced.toml"
                );
            }
        }
    }

    #[test]
    fn display_options_need_the_mirror() {
        assert_eq!(
            range_err("[display]\nmirror = false\nstale_after_secs = 60.0\n"),
            "x.toml: display.stale_after_secs needs display.mirror = true"
        );
        assert!(
            Config::from_toml("[display]\nmirror = false\nscreen_png_secs = 0.0\n", "x").is_ok()
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("", "x.toml").unwrap(), Config::default());
    }

    #[test]
    fn log_target_values() {
        for (text, want) in [
            ("auto", LogTarget::Auto),
            ("journald", LogTarget::Journald),
            ("stderr", LogTarget::Stderr),
        ] {
            let c = Config::from_toml(&format!("[log]\ntarget = \"{text}\"\n"), "x.toml").unwrap();
            assert_eq!(c.log.target, want);
        }
        let e = Config::from_toml("[log]\ntarget = \"syslog\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("target"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("[keepalive]\nidle_sec = 1\n", "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("x.toml: "), "{s}");
        assert!(s.contains("unknown field `idle_sec`"), "{s}");
        assert!(!s.contains('\n'), "{s}");
        let e = Config::from_toml("[keeplive]\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("unknown field `keeplive`"), "{e}");
        let e = Config::from_toml("verbose = true\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("unknown field `verbose`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("[keepalive]\nidle_secs = \"x\"\n", "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("x.toml: ") && s.contains("idle_secs"), "{s}");
        assert!(s.contains("line 2"), "{s}");
        let e = Config::from_toml("[reconnect]\non_takeover = \"fight\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("on_takeover"), "{e}");
        let e = Config::from_toml("[reconnect]\nfactor = 0.5\n", "x.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: reconnect.factor = 0.5: must be between 1 and 100"
        );
        let e = Config::from_toml("[keepalive]\nidle_secs = -1.0\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("keepalive.idle_secs"), "{e}");
        let e =
            Config::from_toml("[keepalive]\nconnect_timeout_secs = 0.0\n", "x.toml").unwrap_err();
        assert!(
            e.to_string().contains("keepalive.connect_timeout_secs"),
            "{e}"
        );
    }

    fn range_err(toml: &str) -> String {
        match Config::from_toml(toml, "x.toml") {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_number_has_a_range() {
        assert_eq!(
            range_err("[keepalive]\nidle_secs = 0.0001\n"),
            "x.toml: keepalive.idle_secs = 0.0001: must be 0 (off) or between 1 and 3600 s"
        );
        // (section, key, accepted values, refused values)
        let table: &[(&str, &str, &[&str], &[&str])] = &[
            (
                "keepalive",
                "idle_secs",
                &["0.0", "1.0", "3600.0"],
                &["0.5", "3601.0", "nan", "inf", "-1.0"],
            ),
            (
                "keepalive",
                "ping_grace_secs",
                &["0.0", "0.25", "1.0"],
                &["-0.1", "1.5", "nan", "inf"],
            ),
            (
                "keepalive",
                "main_timeout_secs",
                &["0.0", "2.0", "86400.0"],
                &["1.5", "86401.0", "nan"],
            ),
            (
                "keepalive",
                "connect_timeout_secs",
                &["1.0", "3600.0"],
                &["0.0", "0.5", "3601.0", "inf"],
            ),
            (
                "keepalive",
                "tcp_idle_secs",
                &["0", "1", "32767"],
                &["32768"],
            ),
            (
                "keepalive",
                "tcp_interval_secs",
                &["1", "32767"],
                &["0", "32768"],
            ),
            ("keepalive", "tcp_probes", &["1", "127"], &["0", "128"]),
            (
                "keepalive",
                "tcp_user_timeout_secs",
                &["0", "86400"],
                &["86401"],
            ),
            (
                "reconnect",
                "initial_delay_secs",
                &["0.1", "300.0"],
                &["0.0", "0.05", "86401.0", "nan"],
            ),
            (
                "reconnect",
                "factor",
                &["1.0", "100.0"],
                &["0.99", "100.5", "inf", "nan"],
            ),
            (
                "reconnect",
                "max_delay_secs",
                &["1.0", "86400.0"],
                &["0.5", "86401.0", "nan"],
            ),
            (
                "reconnect",
                "cluster_window_secs",
                &["1.0", "604800.0"],
                &["0.5", "604801.0"],
            ),
            (
                "reconnect",
                "wait_for_ticket_secs",
                &["0.0", "604800.0"],
                &["-0.5", "604801.0", "nan"],
            ),
            (
                "reconnect",
                "refresh_timeout_secs",
                &["1.0", "3600.0"],
                &["0.0", "3601.0"],
            ),
            (
                "reconnect",
                "takeover_delay_secs",
                &["0.0", "86400.0"],
                &["86401.0", "-inf"],
            ),
            (
                "reconnect",
                "max_attempts",
                &["1", "1000", "\"unlimited\""],
                &["0", "1001"],
            ),
            (
                "report",
                "cooldown_secs",
                &["0.0", "86400.0"],
                &["86401.0", "nan"],
            ),
            ("report", "max_files", &["1", "10000"], &["0", "10001"]),
            (
                "report",
                "max_bytes",
                &["65536", "17179869184"],
                &["65535", "17179869185"],
            ),
            (
                "report",
                "capture_secs",
                &["1.0", "3600.0"],
                &["0.0", "3601.0"],
            ),
            (
                "report",
                "capture_max_bytes",
                &["0", "268435456"],
                &["268435457"],
            ),
            ("report", "log_lines", &["0", "100000"], &["100001"]),
            ("display", "offscreen_kib", &["0", "262144"], &["262145"]),
            ("display", "cache_kib", &["64", "262144"], &["63", "262145"]),
            (
                "display",
                "stale_after_secs",
                &["0", "1.0", "300", "604800.0"],
                &["0.5", "604801.0", "-1.0", "nan"],
            ),
            (
                "display",
                "screen_png_secs",
                &["0.0", "1.0", "86400.0"],
                &["0.5", "86401.0", "-1.0"],
            ),
        ];
        for (section, key, good, bad) in table {
            for v in *good {
                let t = format!("[{section}]\n{key} = {v}\n");
                if let Err(e) = Config::from_toml(&t, "x.toml") {
                    panic!("{t}: {e}");
                }
            }
            for v in *bad {
                let e = range_err(&format!("[{section}]\n{key} = {v}\n"));
                assert!(e.starts_with(&format!("x.toml: {section}.{key} = ")), "{e}");
                assert!(e.contains("must be"), "{e}");
            }
        }
    }

    #[test]
    fn max_delay_is_at_least_the_initial_delay() {
        assert_eq!(
            range_err("[reconnect]\ninitial_delay_secs = 10.0\nmax_delay_secs = 5.0\n"),
            "x.toml: reconnect.max_delay_secs = 5: must be >= reconnect.initial_delay_secs (10)"
        );
    }

    #[test]
    fn max_attempts_is_a_number_or_unlimited() {
        let c = Config::from_toml("[reconnect]\nmax_attempts = \"unlimited\"\n", "x.toml").unwrap();
        assert_eq!(c.reconnect.max_attempts, MaxAttempts::Unlimited);
        let c = Config::from_toml("[reconnect]\nmax_attempts = 7\n", "x.toml").unwrap();
        assert_eq!(c.reconnect.max_attempts, MaxAttempts::Limited(7));
        for bad in ["\"forever\"", "-1", "1.5", "99999999999"] {
            let e = range_err(&format!("[reconnect]\nmax_attempts = {bad}\n"));
            assert!(e.contains("max_attempts"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = range_err("[reconnect]\nmax_attempts = 0\n");
        assert_eq!(
            e,
            "x.toml: reconnect.max_attempts = 0: must be between 1 and 1000 (or \"unlimited\")"
        );
        // Serialized back to the same TOML (and JSON, for reports) form.
        for (v, text) in [
            (MaxAttempts::Unlimited, "max_attempts = \"unlimited\""),
            (MaxAttempts::Limited(5), "max_attempts = 5"),
        ] {
            let cfg = ReconnectConfig {
                max_attempts: v,
                ..ReconnectConfig::default()
            };
            let out = toml::to_string(&cfg).unwrap();
            assert!(out.contains(text), "{out}");
            let back: ReconnectConfig = toml::from_str(&out).unwrap();
            assert_eq!(back, cfg);
        }
        assert_eq!(serde_json::to_value(MaxAttempts::Limited(1)).unwrap(), 1);
        assert_eq!(
            serde_json::to_value(MaxAttempts::Unlimited).unwrap(),
            "unlimited"
        );
    }

    #[test]
    fn channel_names_are_checked() {
        let c = Config::from_toml(
            "[channels]\nrequired = [\"display\"]\nskip = [\"usbredir\"]\n",
            "x.toml",
        )
        .unwrap();
        assert!(c.channels.is_required(ChannelType::Main), "main is implied");
        assert!(c.channels.is_required(ChannelType::Display));
        assert!(!c.channels.is_required(ChannelType::Inputs));
        assert!(Config::default().channels.is_required(ChannelType::Main));
        assert!(!Config::default().channels.is_required(ChannelType::Display));

        let e = range_err("[channels]\nrequired = [\"dispaly\"]\n");
        assert!(
            e.starts_with("x.toml: channels.required: unknown channel name \"dispaly\""),
            "{e}"
        );
        let e = range_err("[channels]\nskip = [\"usb\"]\n");
        assert!(
            e.starts_with("x.toml: channels.skip: unknown channel name \"usb\""),
            "{e}"
        );
        let e = range_err("[channels]\nskip = [\"main\"]\n");
        assert!(
            e.starts_with("x.toml: channels.skip: \"main\" cannot be skipped"),
            "{e}"
        );
        // main is implied even when `required` leaves it out.
        let e = range_err("[channels]\nrequired = []\nskip = [\"main\"]\n");
        assert!(e.contains("cannot be skipped"), "{e}");
        let e = range_err("[channels]\nrequired = [\"inputs\"]\nskip = [\"inputs\"]\n");
        assert!(e.contains("\"inputs\" cannot be skipped"), "{e}");
        // spicevmc is usbredir.
        let e = range_err("[channels]\nrequired = [\"usbredir\"]\nskip = [\"spicevmc\"]\n");
        assert!(e.contains("cannot be skipped"), "{e}");
    }

    #[test]
    fn values_are_read() {
        let cfg = Config::from_toml(
            "[reconnect]\non_takeover = \"yield\"\nrefresh_command = [\"a\", \"b\"]\n\
             [channels]\nskip = [\"usbredir\"]\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(cfg.reconnect.on_takeover, OnTakeover::Yield);
        assert_eq!(cfg.reconnect.refresh_command, ["a", "b"]);
        assert_eq!(cfg.channels.skip, ["usbredir"]);
    }

    #[test]
    fn metrics_and_control_paths_are_absolute_files() {
        let c = Config::from_toml(
            "[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter/spiced-a.prom\"\n\
             [control]\nsocket = \"/run/spiced/a.sock\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            c.metrics.textfile.as_deref(),
            Some(Path::new("/var/lib/prometheus/node-exporter/spiced-a.prom"))
        );
        assert_eq!(
            c.control.socket.as_deref(),
            Some(Path::new("/run/spiced/a.sock"))
        );
        assert_eq!(Config::default().metrics.textfile, None);
        assert_eq!(Config::default().control.socket, None);
        let e = range_err("[metrics]\ntextfile = \"spiced.prom\"\n");
        assert_eq!(
            e,
            "x.toml: metrics.textfile = \"spiced.prom\": must be an absolute path"
        );
        let e = range_err("[control]\nsocket = \"/run/spiced/\"\n");
        assert!(
            e.contains("control.socket") && e.contains("not a directory"),
            "{e}"
        );
        let e = range_err("[control]\nsocket = \"/run/a\\u001b.sock\"\n");
        assert!(
            e.contains("control characters") && !e.contains('\x1b'),
            "{e}"
        );
        let long = format!("[control]\nsocket = \"/{}\"\n", "a".repeat(120));
        assert!(range_err(&long).contains("107 bytes"));
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/spiced.toml")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/spiced.toml: cannot read config: "));
    }
}
