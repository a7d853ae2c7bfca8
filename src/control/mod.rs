//! The local status and control socket (protocol v1, docs/control.md): a unix
//! socket, mode 0600, speaking newline-delimited JSON. `status` answers with
//! the daemon's [`Status`](crate::daemon::status::Status); `subscribe` streams
//! the journal's key events (every log event carrying a `message_id`,
//! forwarded by [`EventLayer`]) and a status line on every change; `reconnect`
//! is SIGUSR1.
//!
//! Nothing here can hold the daemon up: events fan out through a bounded
//! `broadcast` ring (publishing never waits; a subscriber that falls behind
//! the ring, or whose socket stops taking bytes for [`WRITE_TIMEOUT`], is
//! dropped), requests are bounded in size, clients in number, and `reconnect`
//! reaches the loop through a bounded queue with `try_send`.
//!
//! One concept per file:
//! - [`protocol`]: the wire protocol v1, requests in and lines out (a new
//!   request is a [`Request`] variant here, answered in `server`);
//! - [`hub`]: the fan-out of subscribe lines and the `tracing` layer feeding it;
//! - [`server`]: binding the socket, client slots, one task per connection;
//! - [`client`]: `spiced status`, the client and its summary for an operator.

pub mod client;
pub mod hub;
pub mod protocol;
pub mod server;

pub use client::{client_main, human, socket_for, RUN_DIR};
pub use hub::{EventLayer, Hub, SUBSCRIBER_BACKLOG};
pub use protocol::{status_line, Request, VERSION};
pub use server::{bind, serve, ServerCtx, IDLE_TIMEOUT, MAX_CLIENTS, MAX_REQUEST, WRITE_TIMEOUT};
