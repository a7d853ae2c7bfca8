//! The events an operator searches for. Each key log line carries a fixed
//! `message_id` (journald's `MESSAGE_ID`, explained in `systemd/spiced.catalog`)
//! and, where it has them, the fields below; the journal writer turns them into
//! `SPICED_*` fields, the control socket's `subscribe` forwards the same events.
//!
//! Log such an event as
//! `warn!(message_id = events::SESSION_LOST, channel = %ch, cause = "reset", "...")`.

/// The session is established (MAIN_INIT after a link).
pub const SESSION_ESTABLISHED: &str = "8c9e2c33f98b4ec9abd3b4fb967c4460";
/// The session was lost (main, or a required channel, failed).
pub const SESSION_LOST: &str = "e400c9d5596d411e812fc88a2ad2600f";
/// A reconnect attempt starts.
pub const RECONNECT_ATTEMPT: &str = "050ce5d192ef48f48fb3131b46450916";
/// spiced gave up; the process exits with the code in the line.
pub const GAVE_UP: &str = "cbce9c442af64a538cb61803a1cec844";
/// The ticket expires within 30 s.
pub const TICKET_EXPIRING: &str = "a9dcabfd957a46cc933a46e3290088d3";
/// The ticket has expired: no retry with it.
pub const TICKET_EXPIRED: &str = "f311834782de46cf8f45b81d935c3661";
/// Retries failed on a ticket our clock calls valid: clocks skewed, or revoked.
pub const CLOCK_SKEW: &str = "0b0546cda26c42628f32f34191fe5f6c";
/// A disconnect report was written.
pub const REPORT_WRITTEN: &str = "1633e30ec1bc42eb9d0be63fcd830937";
/// A channel other than main was lost; the session goes on without it.
pub const CHANNEL_LOST: &str = "fdb896731595490cb70b8a6faf9d19c8";

/// The screen has not changed for `display.stale_after` (docs/display.md).
pub const SCREEN_STALE: &str = "2ff5e1cb98ff4324bfbd19777836b74a";
/// The screen changed again after a stale event.
pub const SCREEN_CHANGED: &str = "b7690875a8d4446a988b4bdbf1bb9baa";
/// The guest agent (spice-vdagent) is connected (MAIN_INIT or
/// MAIN_AGENT_CONNECTED).
pub const AGENT_CONNECTED: &str = "ca8219d25db44908862b9846b92a526f";
/// The guest agent is not connected (MAIN_INIT or MAIN_AGENT_DISCONNECTED).
pub const AGENT_DISCONNECTED: &str = "8fdbf3445f68480696b886f33088d32a";

/// Every id with its name, for the catalog and its test.
pub const ALL: [(&str, &str); 13] = [
    ("session_established", SESSION_ESTABLISHED),
    ("session_lost", SESSION_LOST),
    ("reconnect_attempt", RECONNECT_ATTEMPT),
    ("gave_up", GAVE_UP),
    ("ticket_expiring", TICKET_EXPIRING),
    ("ticket_expired", TICKET_EXPIRED),
    ("clock_skew", CLOCK_SKEW),
    ("report_written", REPORT_WRITTEN),
    ("channel_lost", CHANNEL_LOST),
    ("screen_stale", SCREEN_STALE),
    ("screen_changed", SCREEN_CHANGED),
    ("agent_connected", AGENT_CONNECTED),
    ("agent_disconnected", AGENT_DISCONNECTED),
];

/// Field names an event may carry (tracing field ⇒ journal field `SPICED_<NAME>`).
pub const FIELDS: [&str; 8] = [
    "channel",
    "session",
    "cause",
    "state",
    "attempt",
    "report",
    "digest",
    "unchanged_secs",
];
