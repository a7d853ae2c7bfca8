//! The capture tap: the one interface through which the traffic of a session —
//! link records and whole messages, both ways — reaches the disconnect report's
//! capture. `link` and `channel` record into it, `report` implements it, `session`
//! wires the two; none of them needs the others for it.

use crate::wire::frame::HeaderKind;
use crate::wire::ChannelId;
use std::time::Duration;

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

/// What a link record is (the ticket must never be kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRecord {
    Link,
    Ticket,
}

/// Receives every byte of a session's traffic. `at` is time since the session
/// started; `header` is the framing the channel negotiated, so the capture can
/// find each message's type and body (mini or full header).
pub trait CaptureSink: Send + Sync {
    fn link(&self, ch: ChannelId, dir: Direction, at: Duration, rec: LinkRecord, bytes: &[u8]);
    fn message(
        &self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        header: HeaderKind,
        bytes: &[u8],
    );
    /// The channel's connection ended.
    fn closed(&self, ch: ChannelId);
}
