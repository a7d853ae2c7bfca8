//! Daemon behaviour from the TOML config file (`--config FILE.toml`).
//!
//! The .vv file says *where* to connect; this file says *how* spiced behaves.
//! Every option has a default (documented in `config/spiced.toml`); unknown keys
//! are an error so a typo never silently falls back to a default.

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
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter (RUST_LOG syntax); the RUST_LOG environment variable wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// A channel silent in both directions this long sends one keepalive. 0 disables.
    pub idle_secs: f64,
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
    /// Attempts per disconnect cluster.
    pub max_attempts: u32,
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
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            initial_delay_secs: 1.0,
            factor: 4.0,
            max_delay_secs: 300.0,
            max_attempts: 3,
            jitter: false,
            cluster_window_secs: 300.0,
            wait_for_ticket_secs: 0.0,
            refresh_command: Vec::new(),
            refresh_timeout_secs: 30.0,
            on_takeover: OnTakeover::Reclaim,
            takeover_delay_secs: 60.0,
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
    /// Channels whose loss ends the session (main always does).
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

    /// Ranges serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let k = &self.keepalive;
        let r = &self.reconnect;
        for (name, v) in [
            ("keepalive.idle_secs", k.idle_secs),
            ("keepalive.main_timeout_secs", k.main_timeout_secs),
            ("reconnect.initial_delay_secs", r.initial_delay_secs),
            ("reconnect.max_delay_secs", r.max_delay_secs),
            ("reconnect.cluster_window_secs", r.cluster_window_secs),
            ("reconnect.wait_for_ticket_secs", r.wait_for_ticket_secs),
            ("reconnect.refresh_timeout_secs", r.refresh_timeout_secs),
            ("reconnect.takeover_delay_secs", r.takeover_delay_secs),
            ("report.cooldown_secs", self.report.cooldown_secs),
            ("report.capture_secs", self.report.capture_secs),
        ] {
            if !v.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&v) {
                return Err(format!("{name} = {v}: must be between 0 and one year"));
            }
        }
        if !(k.connect_timeout_secs.is_finite() && k.connect_timeout_secs > 0.0) {
            return Err("keepalive.connect_timeout_secs must be > 0".into());
        }
        if !(r.factor.is_finite() && r.factor >= 1.0) {
            return Err(format!("reconnect.factor = {}: must be >= 1", r.factor));
        }
        Ok(())
    }
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
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("", "x.toml").unwrap(), Config::default());
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
            "x.toml: reconnect.factor = 0.5: must be >= 1"
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
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/spiced.toml")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/spiced.toml: cannot read config: "));
    }
}
