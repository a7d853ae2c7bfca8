//! Per-channel state machine (sans-IO): feed it the bytes that arrived and the
//! time; it says what to send back (PONGs, ACK_SYNC/ACKs, DISPLAY_INIT,
//! ATTACH_CHANNELS, keepalives), what happened (events for the session) and when
//! it next needs waking. The tokio task in `session` only moves bytes.

pub mod counters;

use crate::config::KeepaliveConfig;
use crate::keepalive::{Backstop, IdleTimer, PingClock};
use crate::time::secs_opt as secs;
use crate::wake::{Wake, Window};
use crate::wire::frame::{Decoder, Encoder, Frame, HeaderKind, DEFAULT_MAX_MESSAGE};
use crate::wire::msg::{self, ClientMsg, MainInit, MigrateDst, ServerMsg, Writer};
use crate::wire::{ChannelId, ChannelType, WireError};
use counters::ChannelCounters;
use std::collections::VecDeque;
use std::time::Duration;

use crate::tap::CaptureSink;
pub use crate::tap::Direction;
use std::sync::Arc;

/// What a channel tells the session.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    MainInit(MainInit),
    ChannelsList(Vec<ChannelId>),
    Name(String),
    Uuid(String),
    MouseMode {
        supported: u32,
        current: u32,
    },
    AgentConnected(bool),
    Notify {
        severity: u32,
        message: String,
    },
    ServerDisconnecting {
        reason: u32,
    },
    /// Semi-seamless migration: link at this target now (main answers with
    /// [`Channel::migrate_reply`]).
    MigrateBegin(MigrateDst),
    /// The migration announced by MigrateBegin failed.
    MigrateCancel,
    /// The migration announced by MigrateBegin completed: move to the target.
    MigrateEnd,
    /// A completed migration to follow by relinking (no MigrateBegin before).
    MigrateSwitchHost(MigrateDst),
}

/// Why the state machine gave up on its channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelError {
    Wire(WireError),
    /// Main received nothing for this long (frozen server).
    KeepaliveTimeout {
        silent: Duration,
    },
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Wire(e) => write!(f, "protocol error: {e}"),
            ChannelError::KeepaliveTimeout { silent } => write!(
                f,
                "no data from the server on main for {:.1} s (server frozen or wedged)",
                silent.as_secs_f64()
            ),
        }
    }
}

impl From<WireError> for ChannelError {
    fn from(e: WireError) -> Self {
        ChannelError::Wire(e)
    }
}

/// Server messages after a keepalive within this window count as its replies.
const KEEPALIVE_REPLY_WINDOW: Duration = Duration::from_secs(1);

pub struct Channel {
    id: ChannelId,
    decoder: Decoder,
    writer: Writer,
    ack_generation: u32,
    ack_window: u32,
    ack_countdown: u32,
    idle: IdleTimer,
    /// When the server's next PING should come (wakeup planning).
    pings: PingClock,
    /// A PING of the server's periodic timer came since the last look.
    periodic_ping: bool,
    backstop: Option<Backstop>,
    /// Main only: ATTACH_CHANNELS went out after MAIN_INIT, so a probe may follow.
    attached: bool,
    /// Main only: a probe was sent and nothing has arrived since.
    probe_outstanding: bool,
    last_keepalive: Option<Duration>,
    out: VecDeque<(ClientMsg, Vec<u8>)>,
    events: VecDeque<ChannelEvent>,
    counters: ChannelCounters,
    tap: Option<Arc<dyn CaptureSink>>,
    /// The framing negotiated at link time (for the capture tap).
    header: HeaderKind,
    /// Display only, with `[display] mirror`: every message goes to the mirror.
    display: Option<Arc<dyn crate::display::screen::DisplaySink>>,
}

/// What a display channel needs to feed the display mirror.
pub struct MirrorLink {
    pub sink: Arc<dyn crate::display::screen::DisplaySink>,
    /// DISPLAY_INIT's sizes, in pixels.
    pub pixmap_cache: i64,
    pub glz_window: i32,
    /// The server advertises PREF_COMPRESSION: ask for LZ.
    pub prefer_lz: bool,
}

impl Channel {
    /// A freshly linked channel. `now` is time since session start.
    pub fn new(id: ChannelId, header: HeaderKind, cfg: &KeepaliveConfig, now: Duration) -> Self {
        Self::build(id, header, cfg, now, None)
    }

    /// A display channel feeding the display mirror: DISPLAY_INIT carries the
    /// mirror's cache sizes, and LZ is asked for when the server takes a
    /// preference.
    pub fn with_mirror(
        id: ChannelId,
        header: HeaderKind,
        cfg: &KeepaliveConfig,
        now: Duration,
        mirror: MirrorLink,
    ) -> Self {
        Self::build(id, header, cfg, now, Some(mirror))
    }

    fn build(
        id: ChannelId,
        header: HeaderKind,
        cfg: &KeepaliveConfig,
        now: Duration,
        mirror: Option<MirrorLink>,
    ) -> Self {
        let backstop =
            (id.ty == ChannelType::Main).then(|| Backstop::new(secs(cfg.main_timeout_secs), now));
        let mut ch = Channel {
            id,
            decoder: Decoder::new(header, DEFAULT_MAX_MESSAGE),
            writer: Writer::new(id.ty, Encoder::new(header)),
            ack_generation: 0,
            ack_window: 0,
            ack_countdown: 0,
            idle: IdleTimer::new(
                secs(cfg.idle_secs),
                crate::time::secs(cfg.ping_grace_secs),
                now,
            ),
            pings: if matches!(id.ty, ChannelType::Main | ChannelType::Display) {
                PingClock::every_15s()
            } else {
                PingClock::default()
            },
            periodic_ping: false,
            backstop,
            attached: false,
            probe_outstanding: false,
            last_keepalive: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            counters: ChannelCounters {
                connected_at_secs: Some(now.as_secs_f64()),
                ..ChannelCounters::default()
            },
            tap: None,
            header,
            display: None,
        };
        if id.ty == ChannelType::Display {
            // Without it the server blocks its display worker, then drops us.
            match mirror {
                None => ch.queue(ClientMsg::DisplayInit),
                Some(m) => {
                    ch.queue(ClientMsg::DisplayInitSized {
                        pixmap_cache: m.pixmap_cache,
                        glz_window: m.glz_window,
                    });
                    if m.prefer_lz {
                        ch.queue(ClientMsg::PreferredCompression(msg::IMAGE_COMPRESSION_LZ));
                    }
                    ch.display = Some(m.sink);
                }
            }
        }
        ch
    }

    /// Every whole message (header included) goes to `tap` too.
    pub fn set_tap(&mut self, tap: Arc<dyn CaptureSink>) {
        self.tap = Some(tap);
    }

    /// How many more messages the server may send before it waits for an
    /// ACK: it stops past `2 x window` unacknowledged ones, and spiced ACKs
    /// every `window` (None: no SET_ACK yet, the server does not wait).
    pub fn ack_headroom(&self) -> Option<u32> {
        (self.ack_window > 0).then(|| {
            self.ack_window
                .saturating_add(1)
                .saturating_add(self.ack_countdown)
        })
    }

    pub fn counters(&self) -> &ChannelCounters {
        &self.counters
    }

    fn queue(&mut self, m: ClientMsg) {
        match self.writer.encode(&m) {
            Ok(bytes) => self.out.push_back((m, bytes)),
            // The state machine only builds allowed messages; a refusal here is a
            // bug, and dropping the message is safer than sending it.
            Err(e) => tracing::error!(channel = %self.id, "{e}"),
        }
    }

    /// Bytes arrived from the server.
    pub fn on_bytes(&mut self, data: &[u8], now: Duration) -> Result<(), ChannelError> {
        if data.is_empty() {
            return Ok(());
        }
        self.counters.bytes_in += data.len() as u64;
        self.counters.last_recv_ts_secs = Some(now.as_secs_f64());
        self.idle.on_traffic(now);
        if let Some(b) = self.backstop.as_mut() {
            b.on_rx(now);
            self.probe_outstanding = false;
        }
        self.decoder.push(data);
        while let Some(frame) = self.decoder.next_frame()? {
            self.on_frame(&frame, now)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: &Frame, now: Duration) -> Result<(), ChannelError> {
        self.counters.messages_in += 1;
        if let Some(tap) = &self.tap {
            tap.message(self.id, Direction::ToClient, now, self.header, &frame.bytes);
        }
        if let Some(d) = &self.display {
            d.message(frame.msg_type, frame.body(), now);
        }
        if let Some(k) = self.last_keepalive {
            if now.saturating_sub(k) <= KEEPALIVE_REPLY_WINDOW
                && frame.msg_type != msg::server::PING
            {
                self.counters.keepalive_replies += 1;
            }
        }
        // ACK window: every message counts, PINGs included (as spice-gtk does).
        if self.ack_window > 0 {
            self.ack_countdown = self.ack_countdown.saturating_sub(1);
            if self.ack_countdown == 0 {
                self.queue(ClientMsg::Ack);
                self.counters.ack_send_count += 1;
                self.ack_countdown = self.ack_window;
            }
        }
        match msg::parse(self.id.ty, frame)? {
            ServerMsg::SetAck { generation, window } => {
                self.ack_generation = generation;
                self.ack_window = window;
                self.ack_countdown = window;
                self.queue(ClientMsg::AckSync { generation });
            }
            ServerMsg::Ping { id, timestamp } => {
                self.counters.ping_recv_count += 1;
                self.pings.on_ping(now);
                self.periodic_ping |= self.pings.next().is_some();
                self.counters.last_ping_recv_ts_secs = Some(now.as_secs_f64());
                // Answer at once: main is watched by the server's connectivity check.
                self.queue(ClientMsg::Pong { id, timestamp });
                self.counters.pong_send_count += 1;
            }
            ServerMsg::MainInit(init) => {
                self.events.push_back(ChannelEvent::MainInit(init));
                self.queue(ClientMsg::AttachChannels);
                self.attached = true;
            }
            ServerMsg::ChannelsList(list) => {
                let ids = list
                    .into_iter()
                    .map(|(t, i)| ChannelId::new(ChannelType::from_u8(t), i))
                    .collect();
                self.events.push_back(ChannelEvent::ChannelsList(ids));
            }
            ServerMsg::Name(n) => self.events.push_back(ChannelEvent::Name(n)),
            ServerMsg::Uuid(u) => self
                .events
                .push_back(ChannelEvent::Uuid(msg::uuid_string(&u))),
            ServerMsg::MouseMode { supported, current } => self
                .events
                .push_back(ChannelEvent::MouseMode { supported, current }),
            ServerMsg::AgentConnected(c) => self.events.push_back(ChannelEvent::AgentConnected(c)),
            ServerMsg::Notify { severity, message } => self
                .events
                .push_back(ChannelEvent::Notify { severity, message }),
            ServerMsg::Disconnecting { reason } => self
                .events
                .push_back(ChannelEvent::ServerDisconnecting { reason }),
            ServerMsg::MigrateBegin(d) => self.events.push_back(ChannelEvent::MigrateBegin(d)),
            ServerMsg::MigrateCancel => self.events.push_back(ChannelEvent::MigrateCancel),
            ServerMsg::MigrateEnd => self.events.push_back(ChannelEvent::MigrateEnd),
            ServerMsg::MigrateSwitchHost(d) => {
                self.events.push_back(ChannelEvent::MigrateSwitchHost(d))
            }
            ServerMsg::Other(_) => {}
        }
        Ok(())
    }

    /// Timers at `now`: the keepalive (when due), on main the probe and the
    /// backstop, on display with the mirror the stale-screen check.
    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), ChannelError> {
        self.handle_wake(&Wake::timer(now))
    }

    /// The process is awake (see [`crate::wake`]): main's probe and backstop
    /// and the display mirror's stale-screen check when due, and the
    /// keepalive when due or when it would fall due before the next wakeup is
    /// expected.
    pub fn handle_wake(&mut self, wake: &Wake<Duration>) -> Result<(), ChannelError> {
        let now = wake.now;
        if let Some(d) = &self.display {
            d.tick(now);
        }
        if let Some(silent) = self.backstop.as_ref().and_then(|b| b.expired(now)) {
            return Err(ChannelError::KeepaliveTimeout { silent });
        }
        if self.probe_due(now) {
            // spice-server answers ATTACH_CHANNELS with CHANNELS_LIST (and does
            // nothing else), so a live server breaks the silence; a frozen one
            // cannot. The session handles the repeated list idempotently.
            self.queue(ClientMsg::AttachChannels);
            self.probe_outstanding = true;
            self.counters.client_keepalive_send_count += 1;
            self.counters.last_client_keepalive_send_ts_secs = Some(now.as_secs_f64());
            self.last_keepalive = Some(now);
        }
        let ready = self.idle.window().is_some_and(|w| w.ready(wake));
        if ready && self.out.is_empty() {
            // Echo the current generation: spice-server only records it (no log,
            // no reply), and the ACK window stays intact. See docs/keepalive.md.
            self.queue(ClientMsg::AckSync {
                generation: self.ack_generation,
            });
            self.idle.on_keepalive(now);
            self.counters.client_keepalive_send_count += 1;
            self.counters.last_client_keepalive_send_ts_secs = Some(now.as_secs_f64());
            self.last_keepalive = Some(now);
        }
        Ok(())
    }

    fn probe_at(&self) -> Option<Duration> {
        if !self.attached || self.probe_outstanding {
            return None;
        }
        self.backstop.as_ref().and_then(Backstop::probe_at)
    }

    fn probe_due(&self, now: Duration) -> bool {
        self.probe_at().is_some_and(|p| now >= p)
    }

    /// When the channel's task must next run, and from when it may: the
    /// keepalive may go early (riding another wakeup), main's probe and
    /// backstop run at their time exactly.
    pub fn wake_window(&self) -> Option<Window<Duration>> {
        let exact = [
            self.backstop.as_ref().and_then(Backstop::deadline),
            self.probe_at(),
            self.display.as_ref().and_then(|d| d.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Window::at);
        crate::wake::merge(self.idle.window(), exact)
    }

    /// When the server's next PING on this channel should wake the process.
    pub fn expected_ping(&self) -> Option<Duration> {
        self.pings.next()
    }

    /// Whether a PING of the server's periodic timer came since the last
    /// call (it is what wakes an idle session: see [`crate::wake`]).
    pub fn take_periodic_ping(&mut self) -> bool {
        std::mem::take(&mut self.periodic_ping)
    }

    /// The latest time `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.wake_window().map(|w| w.due)
    }

    /// The next bytes to write; the caller writes them right away.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let (_m, bytes) = self.out.pop_front()?;
        self.counters.bytes_out += bytes.len() as u64;
        self.counters.messages_out += 1;
        self.counters.last_send_ts_secs = Some(now.as_secs_f64());
        self.idle.on_traffic(now);
        if let Some(tap) = &self.tap {
            tap.message(self.id, Direction::ToServer, now, self.header, &bytes);
        }
        Some(bytes)
    }

    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }

    /// Main only: answers MAIN_MIGRATE_BEGIN (`linked`: every channel is linked
    /// at the target; otherwise the server falls back to SWITCH_HOST).
    pub fn migrate_reply(&mut self, linked: bool) {
        if self.id.ty == ChannelType::Main {
            self.queue(if linked {
                ClientMsg::MigrateConnected
            } else {
                ClientMsg::MigrateConnectError
            });
        }
    }

    /// Main only: this link was made at a migration target ahead of the move,
    /// which is now complete: MIGRATE_END tells the target to start the session
    /// (it answers with MAIN_INIT and activates the other parked links).
    pub fn adopted_after_migration(&mut self) {
        if self.id.ty == ChannelType::Main {
            self.queue(ClientMsg::MigrateEnd);
        }
    }

    /// Queues the polite goodbye for a local shutdown.
    pub fn close(&mut self, unix_ms: u64) {
        self.queue(ClientMsg::Disconnecting {
            time_stamp: unix_ms,
            reason: 0,
        });
    }

    /// Records the end of the channel in its counters.
    pub fn mark_closed(&mut self, now: Duration, reason: &str) {
        self.counters.closed_at_secs = Some(now.as_secs_f64());
        self.counters.close_reason = Some(reason.to_string());
    }
}

#[cfg(test)]
mod tests;
