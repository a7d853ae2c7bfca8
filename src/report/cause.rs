//! `disconnect-cause.json`: why a session ended and what every channel was doing.
//!
//! A superset of the record ryll (a GUI SPICE client) writes, with the same field
//! names and types, so tools built for ryll's zips read spiced's. The extra
//! fields are documented in docs/disconnect-report.md.

use crate::channel::counters::ChannelCounters;
use serde::Serialize;
use std::collections::BTreeMap;

/// Version of this JSON layout; bumped when a field changes meaning or type.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DisconnectCause {
    // --- ryll's fields ---
    /// The channel that failed first (`main`, `inputs`, `usbredir:1`).
    pub channel: String,
    /// What went wrong, as logged (never contains a secret: scrubbed on write).
    pub error_message: String,
    /// The `std::io::ErrorKind` debug name (`ConnectionReset`); None for EOF,
    /// a clean close or spiced's own timeout.
    pub error_kind: Option<String>,
    /// spiced's main-channel inactivity timeout ended the session.
    pub keepalive_timeout_fired: bool,
    /// Seconds from session start to the failure.
    pub session_uptime_secs: f64,
    /// Keyed by channel name; ryll's per-channel fields plus spiced's counters.
    pub per_channel: BTreeMap<String, ChannelCounters>,

    // --- spiced's additions ---
    pub schema_version: u32,
    pub spiced_version: String,
    /// `server_closed`, `reset`, `tls_error`, `read_error`, `keepalive_timeout`,
    /// `dead_peer`, `protocol_error`, `ticket_rejected`, `local_shutdown`,
    /// `link_error`, `connect_failed`, ... (given by the session).
    pub cause: String,
    /// Wall-clock time of the report, RFC 3339 UTC. Set by `write_report`.
    pub time: String,
    /// Automatic reconnects made so far by this daemon.
    pub auto_reconnect_count: u32,
    /// What the reconnect supervisor does next (`backoff 4s`, `giving_up`, ...).
    pub reconnect_state: String,
    /// Disconnects since the previous report that the cooldown did not report.
    pub reports_skipped_since_last: u32,
    /// The display mirror's last frame is in the zip as `last-frame.png`
    /// (absent: mirror off, `display.report_last_frame = false`, or no frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_frame: Option<LastFrame>,
}

/// What `last-frame.png` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastFrame {
    pub file: String,
    pub width: u32,
    pub height: u32,
    /// When the screen was last drawn, RFC 3339 UTC (None: never drawn).
    pub drawn_at: Option<String>,
    /// Seconds between that and the report.
    pub drawn_secs_before: Option<f64>,
    /// The frame's perceptual digest (docs/display.md).
    pub digest: String,
}

impl DisconnectCause {
    /// A cause with the spiced fields filled in and empty counters.
    pub fn new(
        channel: impl Into<String>,
        cause: impl Into<String>,
        error_message: impl Into<String>,
    ) -> Self {
        DisconnectCause {
            channel: channel.into(),
            error_message: error_message.into(),
            error_kind: None,
            keepalive_timeout_fired: false,
            session_uptime_secs: 0.0,
            per_channel: BTreeMap::new(),
            schema_version: SCHEMA_VERSION,
            spiced_version: env!("CARGO_PKG_VERSION").to_string(),
            cause: cause.into(),
            time: String::new(),
            auto_reconnect_count: 0,
            reconnect_state: String::new(),
            reports_skipped_since_last: 0,
            last_frame: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_ryll_fields_with_ryll_types() {
        let mut c = DisconnectCause::new("main", "reset", "connection reset by peer");
        c.error_kind = Some("ConnectionReset".into());
        c.per_channel.insert(
            "main".into(),
            ChannelCounters {
                bytes_in: 10,
                last_recv_ts_secs: Some(1.5),
                ..Default::default()
            },
        );
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["channel"].is_string());
        assert!(v["error_message"].is_string());
        assert!(v["error_kind"].is_string());
        assert!(v["keepalive_timeout_fired"].is_boolean());
        assert!(v["session_uptime_secs"].is_f64());
        let m = &v["per_channel"]["main"];
        for k in [
            "bytes_in",
            "bytes_out",
            "ping_recv_count",
            "pong_send_count",
            "client_keepalive_send_count",
        ] {
            assert!(m[k].is_u64(), "{k}");
        }
        assert!(m["last_recv_ts_secs"].is_f64());
        for k in [
            "last_send_ts_secs",
            "last_ping_recv_ts_secs",
            "last_client_keepalive_send_ts_secs",
        ] {
            assert!(m[k].is_null(), "{k}");
        }
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["cause"], "reset");
        let none =
            serde_json::to_value(DisconnectCause::new("main", "server_closed", "eof")).unwrap();
        assert!(none["error_kind"].is_null());
    }
}
