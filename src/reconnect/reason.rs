//! Why the supervisor gave up, and the exit code each reason maps to
//! (the contract in docs/exit-codes.md).

use super::ticket::format_unix_utc;
use crate::exit;

/// Why spiced stopped trying. `exit_code()` is what the process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The cluster's attempt budget is spent (exit 69: a restart may help).
    RetriesExhausted,
    /// `reconnect.enabled = false` and the session ended (exit 69).
    ReconnectDisabled,
    /// The session was taken over by another client and `on_takeover = "yield"`,
    /// or reclaiming it spent the budget (exit 69).
    TakenOver,
    /// `delete-this-file=1`: the single-use ticket was used (exit 77).
    OneShotConsumed,
    /// `ticket-valid-until` has passed (exit 77).
    TicketExpired { valid_until: i64 },
    /// The server answered PERMISSION_DENIED (exit 77).
    TicketRejected,
    /// A protocol error, i.e. a bug on one side (exit 1): link result 2/3/4
    /// (`code`), or a malformed message after the link (oversized, bad magic),
    /// which has no link result (`None`).
    ProtocolError { code: Option<u32> },
    /// The server certificate failed verification (CA, host name/subject) (exit 78).
    TlsVerification,
    /// The daemon found the settings unusable, e.g. NEED_SECURED with no tls-port (exit 78).
    BadConfig,
}

impl GiveUpReason {
    /// Short stable name for logs, reports and systemd STATUS.
    pub fn name(self) -> &'static str {
        match self {
            GiveUpReason::RetriesExhausted => "retries_exhausted",
            GiveUpReason::ReconnectDisabled => "reconnect_disabled",
            GiveUpReason::TakenOver => "taken_over",
            GiveUpReason::OneShotConsumed => "one_shot_consumed",
            GiveUpReason::TicketExpired { .. } => "ticket_expired",
            GiveUpReason::TicketRejected => "ticket_rejected",
            GiveUpReason::ProtocolError { .. } => "protocol_error",
            GiveUpReason::TlsVerification => "tls_verification",
            GiveUpReason::BadConfig => "bad_config",
        }
    }

    /// The process exit code for this reason (see `crate::exit`).
    pub fn exit_code(self) -> u8 {
        match self {
            GiveUpReason::RetriesExhausted
            | GiveUpReason::ReconnectDisabled
            | GiveUpReason::TakenOver => exit::RETRIES_EXHAUSTED,
            GiveUpReason::OneShotConsumed
            | GiveUpReason::TicketExpired { .. }
            | GiveUpReason::TicketRejected => exit::TICKET,
            GiveUpReason::ProtocolError { .. } => exit::FAILURE,
            GiveUpReason::TlsVerification | GiveUpReason::BadConfig => exit::CONFIG,
        }
    }

    /// A ticket reason: only a fresh ticket can help (refresh_command applies).
    pub fn is_ticket(self) -> bool {
        matches!(
            self,
            GiveUpReason::OneShotConsumed
                | GiveUpReason::TicketExpired { .. }
                | GiveUpReason::TicketRejected
        )
    }
}

impl std::fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        match self {
            GiveUpReason::TicketExpired { valid_until } => {
                write!(f, " (ticket valid until {})", format_unix_utc(*valid_until))
            }
            GiveUpReason::ProtocolError { code: Some(code) } => {
                write!(f, " (link result {code})")
            }
            _ => Ok(()),
        }
    }
}
