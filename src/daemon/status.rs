//! What the daemon is doing, as one snapshot: the control socket's `status`
//! answer, what `subscribe` pushes on every change and what the metrics file is
//! rendered from. Built by [`super::DaemonCore::status`] without I/O; times are
//! unix seconds (the core's injected wall clock).

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// One word: idle connecting connected pending waiting_for_ticket gave_up stopped.
    pub state: &'static str,
    /// The state as a line (what systemd's STATUS starts with).
    pub describe: String,
    /// The server as the logs show it (a ticket-bearing host shortened).
    pub host: String,
    /// When the current state began.
    pub since: Option<f64>,
    /// When the current session was established (connected only).
    pub established: Option<f64>,
    pub channels_up: usize,
    /// Channels of the current session that linked at least once.
    pub channels_total: usize,
    /// Channel ⇒ why it is down (connected, degraded).
    pub channels_down: BTreeMap<String, String>,
    /// The attempt running or waited for (connecting after a loss, pending).
    pub attempt: Option<u32>,
    /// Attempts per disconnect cluster; None: unlimited.
    pub attempt_budget: Option<u32>,
    /// When the pending attempt starts.
    pub next_attempt_at: Option<f64>,
    /// Sessions re-established after the first.
    pub reconnects: u32,
    pub last_disconnect: Option<LastDisconnect>,
    /// The ticket's `ticket-valid-until`.
    pub ticket_valid_until: Option<i64>,
    pub counts: Counts,
    /// Whether the guest agent is connected (connected only; None before
    /// the server said).
    pub agent_connected: Option<bool>,
    /// The display mirror's screen (None: mirror off). Live: not built by
    /// the core but filled in by each reader (the control socket, the
    /// metrics file) from the shared screen when it reads.
    pub display: Option<crate::display::screen::DisplayView>,
}

/// The last established session that was lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LastDisconnect {
    pub at: f64,
    pub channel: String,
    pub cause: String,
    /// One line, no secrets (as logged).
    pub message: String,
    /// Its disconnect report, once written.
    pub report: Option<String>,
    /// The report queued for it (its number among reports queued).
    #[serde(skip)]
    pub report_seq: Option<u64>,
}

/// Counters since spiced started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Established sessions lost, by cause.
    pub disconnects: BTreeMap<String, u64>,
    /// Channels other than main lost while the session went on, by cause.
    pub channel_losses: BTreeMap<String, u64>,
    /// Connect attempts (first or retry) that failed before the session came up, by cause.
    pub connect_failures: BTreeMap<String, u64>,
    /// Reconnect attempts started (not counting the first connect).
    pub reconnect_attempts: u64,
    pub reports_written: u64,
    /// Not written because of `report.cooldown_secs`.
    pub reports_skipped: u64,
    /// The write failed (spool not writable, disk full).
    pub reports_failed: u64,
}

impl Counts {
    pub(super) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

/// What the core remembers for [`Status`] between inputs.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub counts: Counts,
    pub last_disconnect: Option<LastDisconnect>,
    /// The state word and attempt last seen, and since when.
    pub key: Option<(&'static str, Option<u32>)>,
    pub since: Option<f64>,
    pub established: Option<f64>,
    pub next_attempt_at: Option<f64>,
    pub reports_queued: u64,
    pub reports_done: u64,
}
