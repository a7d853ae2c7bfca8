//! From what the daemon knows at a disconnect to a [`ReportJob`]: the typed
//! `disconnect-cause.json` and `session.json`, and every secret the writer must
//! scrub. Pure: the I/O (capture snapshot, log ring, the zip) happens later, off
//! the event loop, in [`ReportJob::into_input`].

use super::{Capture, DisconnectCause, ReportInput};
use crate::channel::counters::ChannelCounters;
use crate::config::{Config, ReportConfig};
use crate::failure::{Cause, Failure};
use crate::secret::Secret;
use crate::session::{ChannelLinkInfo, SessionInfo};
use crate::vv::ConnectionSettings;
use crate::wire::ChannelId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// `session.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionJson {
    pub server: ServerJson,
    pub offered_channels: Vec<String>,
    pub not_linked: BTreeMap<String, String>,
    pub channels: BTreeMap<String, ChannelLinkInfo>,
    /// Channels down when the report was made, with why.
    pub channels_down: BTreeMap<String, String>,
    pub dropped_events: u64,
    /// The .vv settings, credentials redacted.
    pub settings: serde_json::Value,
    /// The effective config, refresh command arguments redacted.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerJson {
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub session_id: Option<u32>,
}

/// Everything one report needs but the traffic and the log lines.
#[derive(Debug, Clone)]
pub struct ReportJob {
    /// The session whose capture goes in.
    pub generation: u64,
    pub cause: DisconnectCause,
    pub session: SessionJson,
    pub secrets: Vec<Secret>,
    /// The port the capture's synthetic TCP streams use.
    pub server_port: u16,
    pub start_unix: f64,
    pub uptime: Duration,
    /// The session goes on (a lost channel): copy the capture instead of taking
    /// it, so a later report of the same session still has every link exchange.
    pub session_goes_on: bool,
    /// Where it goes, and the retention limits.
    pub spool: PathBuf,
    pub report_config: ReportConfig,
    /// The file in `spool` (named at the disconnect, which logs it).
    pub file_name: String,
    /// The disconnect's wall-clock time: the report's `time` and file name.
    pub wall: SystemTime,
    /// The display mirror's last frame (set by the shell when reports carry it).
    pub last_frame: Option<crate::display::screen::Shot>,
}

/// What the disconnect was and where the daemon stands.
pub struct Facts<'a> {
    pub failure: &'a Failure,
    /// Overrides the failure's own cause word (e.g. `idle_cut`).
    pub cause: Option<Cause>,
    pub counters: &'a BTreeMap<ChannelId, ChannelCounters>,
    pub info: &'a SessionInfo,
    pub channels_down: BTreeMap<String, String>,
    pub uptime: Duration,
    pub settings: &'a ConnectionSettings,
    pub config: &'a Config,
    pub reconnects: u32,
    pub reconnect_state: String,
    pub skipped: u32,
    pub generation: u64,
    pub start_unix: f64,
    pub spool: &'a Path,
    pub session_goes_on: bool,
    pub file_name: String,
    pub wall: SystemTime,
}

impl ReportJob {
    pub fn new(f: Facts<'_>) -> ReportJob {
        let cause_word = f.cause.unwrap_or(f.failure.cause);
        let mut cause = DisconnectCause::new(
            f.failure.channel.to_string(),
            cause_word.as_str(),
            f.failure.message.clone(),
        );
        cause.error_kind = f.failure.io_kind.clone();
        cause.keepalive_timeout_fired = f.failure.cause == Cause::KeepaliveTimeout;
        cause.session_uptime_secs = f.uptime.as_secs_f64();
        cause.per_channel = f
            .counters
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        cause.auto_reconnect_count = f.reconnects;
        cause.reconnect_state = f.reconnect_state;
        cause.reports_skipped_since_last = f.skipped;
        let session = SessionJson {
            server: ServerJson {
                name: f.info.name.clone(),
                uuid: f.info.uuid.clone(),
                session_id: f.info.session_id,
            },
            offered_channels: f.info.offered.clone(),
            not_linked: f.info.not_linked.clone(),
            channels: f.info.channels.clone(),
            channels_down: f.channels_down,
            dropped_events: f.info.dropped_events,
            settings: f.settings.redacted_json(),
            config: redacted_config(f.config),
        };
        ReportJob {
            generation: f.generation,
            cause,
            session,
            secrets: crate::scrub::secrets(f.settings, f.config),
            server_port: f.settings.port.or(f.settings.tls_port).unwrap_or(5900),
            start_unix: f.start_unix,
            uptime: f.uptime,
            session_goes_on: f.session_goes_on,
            spool: f.spool.to_path_buf(),
            report_config: f.config.report.clone(),
            file_name: f.file_name,
            wall: f.wall,
            last_frame: None,
        }
    }

    /// The writer's input, once the capture and log lines are at hand.
    pub fn into_input(self, capture: Option<Capture>, log_lines: Vec<String>) -> ReportInput {
        let pcap = capture
            .map(|mut c| {
                c.trim(self.uptime);
                c.to_pcap(self.server_port, self.start_unix)
            })
            .unwrap_or_default();
        let mut cause = self.cause;
        // Encoded here, off the event loop (the writer runs on a blocking thread).
        let last_frame_png = self.last_frame.as_ref().and_then(|shot| {
            let png = shot.frame.png().ok()?;
            let wall = self
                .wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            cause.last_frame = Some(super::cause::LastFrame {
                file: super::writer::LAST_FRAME_ENTRY.into(),
                width: shot.frame.width,
                height: shot.frame.height,
                drawn_at: shot.changed_at_unix.map(|t| {
                    crate::time::Utc::from_system(crate::time::unix_to_system(t)).rfc3339_millis()
                }),
                drawn_secs_before: shot.changed_at_unix.map(|t| (wall - t).max(0.0)),
                digest: shot.frame.digest(),
            });
            Some(png)
        });
        ReportInput {
            last_frame_png,
            cause,
            session: serde_json::to_value(&self.session).unwrap_or_default(),
            pcap,
            log_lines,
            secrets: self.secrets,
        }
    }
}

/// The config for `session.json`: the refresh command's arguments may carry a
/// broker token, so only the program name is kept.
pub fn redacted_config(c: &Config) -> serde_json::Value {
    let mut c = c.clone();
    c.reconnect.refresh_command =
        crate::scrub::redact_refresh_command(&c.reconnect.refresh_command);
    serde_json::to_value(&c).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_json_config_hides_refresh_command_arguments() {
        let mut c = Config::default();
        c.reconnect.refresh_command = vec!["/usr/bin/broker".into(), "--token=s3cr3t".into()];
        let v = redacted_config(&c).to_string();
        assert!(!v.contains("s3cr3t"), "{v}");
        assert!(
            v.contains("/usr/bin/broker") && v.contains("<redacted>"),
            "{v}"
        );
        assert!(crate::scrub::secrets(&ConnectionSettings::default(), &c)
            .iter()
            .any(|s| s.expose() == "--token=s3cr3t"));
    }
}
