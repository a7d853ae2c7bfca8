//! Process exit codes: the contract systemd (and operators) rely on.
//! See docs/exit-codes.md.

/// Clean stop (SIGTERM/SIGINT), or `--check` succeeded.
pub const OK: u8 = 0;
/// Anything not covered below.
pub const FAILURE: u8 = 1;
/// Retries exhausted (EX_UNAVAILABLE): the server may come back; a restart may help.
pub const RETRIES_EXHAUSTED: u8 = 69;
/// A panic outside a task, i.e. a bug in spiced (EX_SOFTWARE): logged at
/// crit; a restart may help (see `panic`).
pub const INTERNAL_ERROR: u8 = 70;
/// Ticket rejected, expired or single-use ticket consumed (EX_NOPERM): restarting
/// with the same .vv cannot help. `spiced status`: not allowed.
pub const TICKET: u8 = 77;
/// Bad configuration or .vv file (EX_CONFIG).
pub const CONFIG: u8 = 78;
