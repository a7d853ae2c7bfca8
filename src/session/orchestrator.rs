//! The decisions of one session, without I/O: which channels to link, when the
//! session is established and settled, what losing a channel means, when to relink
//! it, and when the session is over. The session task feeds it what its channel
//! tasks report and the time (since the session started), then carries out the
//! [`Command`]s it returns and sleeps until [`Orchestrator::poll_timeout`].
//!
//! What ends a session: losing main (or a channel listed in
//! `channels.required`), or any channel to a dead path (`dead_peer`). Losing any
//! other channel does not: the session carries on degraded, and the channel is
//! relinked on its own with the reconnect back-off while the ticket allows it,
//! or left down when the server refused it.
//!
//! Why a dead path ends the session: the server never saw that connection end,
//! so it still holds the channel for this client and refuses a relink of it as a
//! duplicate (spice-server 0.15: "Failed to create channel client: ... duplicate
//! channel type 2 id 0", then closes the new connection), until it drops the
//! whole client as unresponsive (30 s). A new main link replaces the server's
//! client, channels included, at once.

use super::{ChannelLinkInfo, SessionEvent, SessionInfo};
use crate::channel::counters::ChannelCounters;
use crate::channel::ChannelEvent;
use crate::events;
use crate::failure::{Cause, Failure};
use crate::reconnect::{Backoff, ReconnectPolicy, TicketInfo};
use crate::wire::link::LinkErrorCode;
use crate::wire::msg::MigrateDst;
use crate::wire::{ChannelId, ChannelType};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tracing::{debug, info, warn};

/// At most this many channels per session, whatever CHANNELS_LIST offers (a real
/// server offers 11 to 13).
pub const MAX_CHANNELS: usize = 32;

/// After the channel that ends the session failed, the others get this long to
/// report their own end: when the server (or a middlebox) closes everything,
/// every socket sees its EOF within moments, and who closed when tells a takeover
/// from an idle cut.
pub const CLOSE_WINDOW: Duration = Duration::from_millis(500);

/// What the session task must do next.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Start a channel task: link `channel` with `connection_id`.
    Spawn {
        channel: ChannelId,
        connection_id: u32,
    },
    /// Tell the daemon (lossless).
    Emit(SessionEvent),
    /// Answer the server's MAIN_MIGRATE_BEGIN on main.
    ReplyMigration { linked: bool },
    /// The session is over: stop every remaining channel task.
    Finish,
}

/// Which channels never to link, and why.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `disable-channels` in the .vv.
    pub disabled: Vec<ChannelType>,
    /// `channels.skip` in the config.
    pub skipped: Vec<ChannelType>,
    /// `channels.required` (main is always required).
    pub required: Vec<ChannelType>,
}

impl Rules {
    fn skip_reason(&self, ch: ChannelId) -> Option<&'static str> {
        if self.disabled.contains(&ch.ty) {
            return Some("disable-channels in the .vv");
        }
        if self.skipped.contains(&ch.ty) {
            return Some("channels.skip in the config");
        }
        None
    }

    fn required(&self, ch: ChannelId) -> bool {
        ch.ty == ChannelType::Main || self.required.contains(&ch.ty)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SlotState {
    Linking,
    Up,
    /// Ended; judged lost at this time unless the whole session ends first.
    Ended(Duration),
    /// Relink at this time.
    Waiting(Duration),
    Down,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// Why it ended, while `Ended`.
    lost: Option<(Failure, ChannelCounters)>,
    /// The relink cluster: when it began and its back-off.
    cluster: Option<(Duration, Backoff)>,
}

#[derive(Debug)]
struct Ending {
    failure: Option<Failure>,
    until: Duration,
}

/// See the module docs.
#[derive(Debug)]
pub struct Orchestrator {
    rules: Rules,
    policy: ReconnectPolicy,
    ticket: TicketInfo,
    /// Wall clock at the session's start (ticket expiry only).
    start_unix: f64,
    session_id: Option<u32>,
    /// Whether the guest agent is connected, as the server last said.
    agent: Option<bool>,
    listed: bool,
    slots: BTreeMap<ChannelId, Slot>,
    info: SessionInfo,
    counters: BTreeMap<ChannelId, ChannelCounters>,
    last_settled: Option<(Vec<ChannelId>, Vec<ChannelId>)>,
    all_linked: bool,
    over_cap_warned: bool,
    ending: Option<Ending>,
    finished: bool,
    /// A link of this session found the server's address refusing connections.
    server_refused: bool,
    out: VecDeque<Command>,
    /// The daemon's session number, for the `session` field of log lines.
    generation: u64,
}

/// The session's end, as the orchestrator saw it.
#[derive(Debug)]
pub struct Outcome {
    pub failure: Option<Failure>,
    pub counters: BTreeMap<ChannelId, ChannelCounters>,
    pub connected: bool,
    pub all_linked: bool,
    pub server_closed_session: bool,
    /// A link of this session (a secondary channel relinking) found the
    /// server's address refusing connections: the server that held this
    /// session stopped while main was still open, and main's close, whenever
    /// it comes, is the news of that (a killed server's FIN can arrive seconds
    /// late, after a black hole slowed its retransmissions).
    pub server_refused: bool,
    pub info: SessionInfo,
}

impl Orchestrator {
    pub fn new(rules: Rules, policy: ReconnectPolicy, ticket: TicketInfo, start_unix: f64) -> Self {
        Orchestrator {
            rules,
            policy,
            ticket,
            start_unix,
            session_id: None,
            agent: None,
            listed: false,
            slots: BTreeMap::new(),
            info: SessionInfo::default(),
            counters: BTreeMap::new(),
            last_settled: None,
            all_linked: false,
            over_cap_warned: false,
            ending: None,
            finished: false,
            server_refused: false,
            out: VecDeque::new(),
            generation: 0,
        }
    }

    /// Tags this session's log lines with the daemon's number for it.
    pub fn for_session(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Links main first, always with connection id 0 (a non-zero id makes the
    /// server treat us as a migration target).
    pub fn start(&mut self) {
        self.spawn(ChannelId::MAIN, 0);
    }

    /// Channels already linked at a migration target: they run from the start,
    /// next to main. The target activates them when main says MIGRATE_END and
    /// its display worker then waits for them to be read; waiting for
    /// CHANNELS_LIST (which that same worker holds up) would stall both.
    pub fn adopt(&mut self, channels: Vec<ChannelId>) {
        for c in channels {
            if c.ty != ChannelType::Main && self.slots.len() < MAX_CHANNELS {
                self.spawn(c, 0);
            }
        }
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next time [`Orchestrator::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.finished {
            return None;
        }
        if let Some(e) = &self.ending {
            return Some(e.until);
        }
        self.slots
            .values()
            .filter_map(|s| match s.state {
                SlotState::Waiting(at) | SlotState::Ended(at) => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        if self.finished {
            return;
        }
        if let Some(e) = &self.ending {
            if now >= e.until {
                self.finish();
            }
            return;
        }
        let lost: Vec<ChannelId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::Ended(at) if now >= at))
            .map(|(c, _)| *c)
            .collect();
        for ch in lost {
            let Some((f, counters)) = self.slots.get_mut(&ch).and_then(|s| s.lost.take()) else {
                continue;
            };
            self.channel_lost(ch, counters, f, now);
        }
        let due: Vec<ChannelId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::Waiting(at) if now >= at))
            .map(|(c, _)| *c)
            .collect();
        for ch in due {
            if let Some(sid) = self.session_id {
                info!(channel = %ch, session = self.generation, "channel {ch}: relinking now");
                self.spawn(ch, sid);
            }
        }
    }

    /// A channel task linked its channel.
    pub fn on_up(&mut self, ch: ChannelId, link: ChannelLinkInfo) {
        if self.finished || self.ending.is_some() {
            return;
        }
        info!(
            channel = %ch,
            session = self.generation,
            "channel {ch} up{}",
            if link.tls { " (TLS)" } else { "" }
        );
        self.emit(SessionEvent::ChannelUp {
            channel: ch,
            tls: link.tls,
        });
        self.info.channels.insert(ch.to_string(), link);
        if let Some(s) = self.slots.get_mut(&ch) {
            s.state = SlotState::Up;
        }
        self.check_settled();
    }

    /// The server said whether the guest agent is connected (MAIN_INIT,
    /// MAIN_AGENT_CONNECTED[_TOKENS], MAIN_AGENT_DISCONNECTED): logged and
    /// told on a change only.
    fn on_agent(&mut self, connected: bool) {
        if self.agent.replace(connected) == Some(connected) {
            return;
        }
        if connected {
            info!(
                session = self.generation,
                message_id = events::AGENT_CONNECTED,
                "guest agent connected"
            );
        } else {
            info!(
                session = self.generation,
                message_id = events::AGENT_DISCONNECTED,
                "guest agent not connected"
            );
        }
        self.emit(SessionEvent::Agent { connected });
    }

    /// What a channel's state machine said.
    pub fn on_event(&mut self, ch: ChannelId, ev: ChannelEvent) {
        if self.finished || self.ending.is_some() {
            return;
        }
        match ev {
            ChannelEvent::MainInit(init) => {
                if self.session_id.is_some() {
                    return;
                }
                self.session_id = Some(init.session_id);
                self.info.session_id = Some(init.session_id);
                info!(
                    session = self.generation,
                    message_id = events::SESSION_ESTABLISHED,
                    "session established (session id {:#x})",
                    init.session_id
                );
                self.emit(SessionEvent::Connected {
                    session_id: init.session_id,
                });
                self.on_agent(init.agent_connected != 0);
            }
            ChannelEvent::ChannelsList(list) => self.on_list(list),
            ChannelEvent::Name(n) => {
                if self.info.name.is_none() {
                    info!("server name: {}", crate::text::printable(&n));
                }
                self.info.name = Some(n);
            }
            ChannelEvent::Uuid(u) => {
                if self.info.uuid.is_none() {
                    info!("server uuid: {u}");
                }
                self.info.uuid = Some(u);
            }
            ChannelEvent::MouseMode { supported, current } => {
                debug!("mouse mode {current} (supported mask {supported:#x})");
            }
            ChannelEvent::AgentConnected(c) => {
                if self.session_id.is_some() {
                    self.on_agent(c);
                }
            }
            ChannelEvent::Notify { severity, message } => {
                info!(channel = %ch, "server notice (severity {severity}): {}", crate::text::printable(&message));
            }
            ChannelEvent::ServerDisconnecting { reason } => {
                warn!(channel = %ch, "server announced a disconnect (reason {reason})");
            }
            ChannelEvent::MigrateSwitchHost(d) => match migration_target(d) {
                Ok(t) => self.emit(SessionEvent::SwitchHost(t)),
                Err(why) => {
                    warn!("the server announced a live migration spiced cannot follow: {why}")
                }
            },
            ChannelEvent::MigrateBegin(d) => {
                let target = migration_target(d);
                match (target, self.session_id) {
                    (Ok(target), Some(session_id)) => {
                        let channels = self
                            .slots
                            .iter()
                            .filter(|(c, s)| c.ty != ChannelType::Main && s.state == SlotState::Up)
                            .map(|(c, _)| *c)
                            .collect();
                        self.emit(SessionEvent::MigrateBegin {
                            target,
                            session_id,
                            channels,
                        });
                    }
                    (target, _) => {
                        let why = target.err().unwrap_or_else(|| "no session yet".into());
                        warn!("the server announced a live migration spiced cannot prepare: {why}; telling the server");
                        self.out
                            .push_back(Command::ReplyMigration { linked: false });
                    }
                }
            }
            ChannelEvent::MigrateCancel => self.emit(SessionEvent::MigrateCancel),
            ChannelEvent::MigrateEnd => self.emit(SessionEvent::MigrateEnd),
        }
    }

    /// CHANNELS_LIST: it comes again after every main probe, so it is handled
    /// idempotently, and nothing refused or skipped is tried or logged twice.
    fn on_list(&mut self, list: Vec<ChannelId>) {
        let Some(sid) = self.session_id else { return };
        self.listed = true;
        self.info.offered = list.iter().map(|c| c.to_string()).collect();
        for c in list {
            if c.ty == ChannelType::Main || self.slots.contains_key(&c) {
                continue;
            }
            let name = c.to_string();
            if self.info.not_linked.contains_key(&name) {
                continue;
            }
            if let Some(why) = self.rules.skip_reason(c) {
                info!(channel = %c, "not linking {c}: {why}");
                self.info.not_linked.insert(name, why.to_string());
                continue;
            }
            if self.slots.len() >= MAX_CHANNELS {
                if !self.over_cap_warned {
                    self.over_cap_warned = true;
                    warn!("the server offers more than {MAX_CHANNELS} channels; linking only the first {MAX_CHANNELS}");
                }
                continue;
            }
            self.spawn(c, sid);
        }
        self.check_settled();
    }

    /// A channel task ended: `failure` None means it was stopped.
    pub fn on_end(
        &mut self,
        ch: ChannelId,
        counters: ChannelCounters,
        failure: Option<Failure>,
        now: Duration,
    ) {
        self.counters.insert(ch, counters.clone());
        if self.finished {
            return;
        }
        self.server_refused |= failure.as_ref().is_some_and(|f| f.server_refused);
        let was_up = self
            .slots
            .get(&ch)
            .is_some_and(|s| s.state == SlotState::Up);
        if self.ending.is_some() {
            if let Some(s) = self.slots.get_mut(&ch) {
                s.state = SlotState::Down;
            }
            if was_up {
                if let Some(f) = &failure {
                    info!(channel = %ch, cause = f.cause.as_str(), session = self.generation, "channel {ch} down: {} ({})", f.message, f.cause.as_str());
                }
            }
            if self.all_ended() {
                self.finish();
            }
            return;
        }
        let Some(f) = failure else {
            if let Some(s) = self.slots.get_mut(&ch) {
                s.state = SlotState::Down;
            }
            return;
        };
        let dead_path = f.cause == Cause::DeadPeer && !self.rules.required(ch);
        if dead_path {
            info!(channel = %ch, session = self.generation, "channel {ch}: the path to the server is dead ({}); the server still holds the channel and would refuse it as a duplicate: relinking the whole session", f.message);
        }
        if self.rules.required(ch) || dead_path {
            if was_up && !dead_path {
                info!(channel = %ch, cause = f.cause.as_str(), session = self.generation, "channel {ch} down: {} ({})", f.message, f.cause.as_str());
            }
            if let Some(s) = self.slots.get_mut(&ch) {
                s.state = SlotState::Down;
            }
            // Channels whose end was not judged yet are part of this end.
            for s in self.slots.values_mut() {
                if matches!(s.state, SlotState::Ended(_)) {
                    s.state = SlotState::Down;
                    s.lost = None;
                }
            }
            self.ending = Some(Ending {
                failure: Some(f),
                until: now + CLOSE_WINDOW,
            });
            if self.all_ended() {
                self.finish();
            }
            return;
        }
        // Not judged yet: when the server (or a middlebox) closes the whole
        // session, main's end follows within moments and this is part of it.
        if let Some(s) = self.slots.get_mut(&ch) {
            s.state = SlotState::Ended(now + CLOSE_WINDOW);
            s.lost = Some((f, counters));
        }
    }

    /// An optional channel failed: the session carries on without it.
    fn channel_lost(
        &mut self,
        ch: ChannelId,
        counters: ChannelCounters,
        f: Failure,
        now: Duration,
    ) {
        // Whatever comes next is news, even if it is "all up" again.
        self.last_settled = None;
        let decision = self.relink_decision(ch, &f, now);
        warn!(
            channel = %ch,
            cause = f.cause.as_str(),
            session = self.generation,
            message_id = events::CHANNEL_LOST,
            "channel {ch} lost: {} ({}); the session continues without it",
            f.message,
            f.cause.as_str()
        );
        let relink_in = decision.as_ref().ok().copied();
        self.emit(SessionEvent::ChannelLost {
            channel: ch,
            failure: Box::new(f.clone()),
            counters: Box::new(counters),
            relink_in,
            info: Box::new(self.info.clone()),
        });
        match decision {
            Ok(delay) => {
                info!(channel = %ch, session = self.generation, "channel {ch}: relinking in {}", crate::time::fmt_dur(delay));
                if let Some(s) = self.slots.get_mut(&ch) {
                    s.state = SlotState::Waiting(now + delay);
                }
            }
            Err(reason) => {
                warn!(channel = %ch, session = self.generation, "channel {ch} stays down: {reason}");
                if f.link_code == Some(LinkErrorCode::ChannelNotAvailable) {
                    // Remembered: the next CHANNELS_LIST does not bring it back.
                    self.info.not_linked.insert(ch.to_string(), reason.clone());
                }
                if let Some(s) = self.slots.get_mut(&ch) {
                    s.state = SlotState::Down;
                }
                self.emit(SessionEvent::ChannelDown {
                    channel: ch,
                    reason,
                });
            }
        }
        self.check_settled();
    }

    /// When to relink a lost channel, or why it stays down.
    fn relink_decision(
        &mut self,
        ch: ChannelId,
        f: &Failure,
        now: Duration,
    ) -> Result<Duration, String> {
        if f.refused() {
            return Err(format!("the server refused it: {}", f.message));
        }
        if !self.policy.enabled() {
            return Err("reconnect.enabled is false".into());
        }
        if self.ticket.single_use {
            return Err("the single-use ticket (delete-this-file=1) was already used".into());
        }
        if let Some(v) = self.ticket.valid_until {
            let unix = self.start_unix + now.as_secs_f64();
            if unix >= v as f64 {
                return Err(format!(
                    "the ticket expired at {}",
                    crate::reconnect::format_unix_utc(v)
                ));
            }
        }
        let window = self.policy.cluster_window();
        let policy = self.policy;
        let Some(slot) = self.slots.get_mut(&ch) else {
            return Err("not a channel of this session".into());
        };
        let fresh = slot
            .cluster
            .as_ref()
            .is_none_or(|(start, _)| now.saturating_sub(*start) >= window);
        if fresh {
            slot.cluster = Some((now, policy.backoff()));
        }
        let Some((_, backoff)) = slot.cluster.as_mut() else {
            return Err("no relink budget".into());
        };
        backoff.next_delay().ok_or_else(|| {
            format!(
                "all {} relink attempts of this cluster used",
                backoff.used()
            )
        })
    }

    /// The session is being stopped from outside.
    pub fn stop(&mut self) {
        if !self.finished {
            self.finish();
        }
    }

    fn all_ended(&self) -> bool {
        self.slots
            .values()
            .all(|s| matches!(s.state, SlotState::Down | SlotState::Waiting(_)))
    }

    fn finish(&mut self) {
        self.finished = true;
        self.out.push_back(Command::Finish);
    }

    fn spawn(&mut self, ch: ChannelId, connection_id: u32) {
        let slot = self.slots.entry(ch).or_insert(Slot {
            state: SlotState::Linking,
            lost: None,
            cluster: None,
        });
        slot.state = SlotState::Linking;
        self.out.push_back(Command::Spawn {
            channel: ch,
            connection_id,
        });
    }

    fn emit(&mut self, ev: SessionEvent) {
        self.out.push_back(Command::Emit(ev));
    }

    /// When no channel is linking or waiting: say how the session stands, once per
    /// change.
    fn check_settled(&mut self) {
        if self.session_id.is_none() || !self.listed {
            return;
        }
        if self.slots.values().any(|s| {
            matches!(
                s.state,
                SlotState::Linking | SlotState::Waiting(_) | SlotState::Ended(_)
            )
        }) {
            return;
        }
        let pick = |want: SlotState| -> Vec<ChannelId> {
            self.slots
                .iter()
                .filter(|(_, s)| s.state == want)
                .map(|(c, _)| *c)
                .collect()
        };
        let (up, down) = (pick(SlotState::Up), pick(SlotState::Down));
        if self.last_settled.as_ref() == Some(&(up.clone(), down.clone())) {
            return;
        }
        self.last_settled = Some((up.clone(), down.clone()));
        if down.is_empty() {
            self.all_linked = true;
            info!(
                session = self.generation,
                "session fully linked: {} channels",
                up.len()
            );
        } else {
            let names: Vec<String> = down.iter().map(|c| c.to_string()).collect();
            warn!(
                session = self.generation,
                "session linked degraded: {} channels up; degraded: {} down",
                up.len(),
                names.join(", ")
            );
        }
        self.emit(SessionEvent::Settled { up, down });
    }

    /// Everything the session learnt, for its end.
    pub fn outcome(&mut self) -> Outcome {
        let failure = self.ending.as_mut().and_then(|e| e.failure.take());
        let server_closed_session = failure
            .as_ref()
            .is_some_and(|f| f.channel == ChannelId::MAIN && f.cause == Cause::ServerClosed);
        Outcome {
            failure,
            counters: std::mem::take(&mut self.counters),
            connected: self.session_id.is_some(),
            all_linked: self.all_linked,
            server_closed_session,
            server_refused: self.server_refused,
            info: std::mem::take(&mut self.info),
        }
    }
}

/// A migration target (MIGRATE_BEGIN, MIGRATE_SWITCH_HOST) checked before it
/// can steer the session: a host name with no control characters and at least
/// one port (0 and 65535 mean none).
fn migration_target(d: MigrateDst) -> Result<crate::session::MigrationTarget, String> {
    let some = |p: u16| Some(p).filter(|p| *p != 0 && *p != u16::MAX);
    let MigrateDst {
        host,
        port,
        sport,
        subject,
    } = d;
    if host.is_empty() || host.len() > 255 || crate::text::has_control(&host) {
        return Err(format!("bad host `{}`", crate::text::printable(&host)));
    }
    if crate::text::has_control(&subject) {
        return Err("bad certificate subject".into());
    }
    let (port, tls_port) = (some(port), some(sport));
    if port.is_none() && tls_port.is_none() {
        return Err(format!("no port for {host}"));
    }
    Ok(crate::session::MigrationTarget {
        host,
        port,
        tls_port,
        subject: Some(subject).filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests;
