//! Auto-reconnect: the back-off policy, the ticket rules and the supervisor state
//! machine that combines them. All sans-IO with injected time; the daemon loop
//! (`crate::daemon`) drives it and carries out its actions. Behaviour is described
//! in docs/reconnect.md, exit codes in docs/exit-codes.md.

mod policy;
mod reason;
mod supervisor;
mod ticket;

#[cfg(test)]
mod tests;

pub use policy::{Backoff, ReconnectPolicy};
pub use reason::GiveUpReason;
pub use supervisor::{
    Action, CloseShape, CutLike, FailClass, Input, Now, State, Supervisor, Transition, Warning,
    SERVER_QUIET_BEFORE_CLOSE, TAKEOVER_MIN_HEALTHY,
};
pub use ticket::{
    format_unix_utc, implied_valid_until, TicketInfo, EXPIRY_WARNING_SECS, PROXMOX_TICKET_SECS,
};
