//! The daemon loop: session ↔ reconnect ↔ report ↔ notify ↔ signals.
//! (to be written)

use crate::cli::RunArgs;

/// Runs spiced until it stops; returns the process exit code (see `exit`).
pub fn main(_args: &RunArgs) -> u8 {
    crate::exit::FAILURE
}
