//! spiced: a headless SPICE session daemon.
//!
//! The protocol core (`wire`, `channel`, `keepalive`, `reconnect`, `vv`, `config`)
//! is sans-IO: plain functions over bytes, events and injected time. tokio appears
//! only at the edges (`link`, `session`, `daemon`).

pub mod base64;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod display;
pub mod events;
pub mod exit;
pub mod failure;
#[doc(hidden)]
pub mod fuzz;
pub mod heap;
pub mod journal;
pub mod keepalive;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod panic;
pub mod reconnect;
pub mod refresh;
pub mod report;
pub mod scrub;
pub mod secret;
pub mod session;
pub mod stderr;
pub mod systemd;
pub mod tap;
pub mod text;
pub mod ticket;
pub mod time;
pub mod vv;
pub mod wake;
pub mod wire;
