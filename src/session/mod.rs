//! One SPICE session: link main, link every channel the server lists, run one task
//! per channel, and end when main (or a required channel) is lost or the daemon
//! stops it. The decisions live in the sans-IO [`orchestrator`]; the channel I/O in
//! [`driver`]; this module is the thin task that joins them.
//!
//! Nothing here awaits a consumer that may be gone: lifecycle events go to the
//! daemon on an unbounded queue (few, and never dropped), informational ones on a
//! bounded queue that drops and counts; stopping is a `watch` every task selects
//! on, and a stopped session's tasks are aborted, never detached.

mod driver;
pub mod orchestrator;

use crate::channel::counters::ChannelCounters;
use crate::config::Config;
use crate::failure::Failure;
use crate::link::Connector;
use crate::reconnect::{ReconnectPolicy, TicketInfo};
use crate::vv::ConnectionSettings;
use crate::wire::{ChannelId, ChannelType};
pub use driver::Parked;
use driver::{ChannelEnd, ChannelMsg, Outlets};
use orchestrator::{Command, Orchestrator, Rules};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

/// What the session tells the daemon while it runs. Never dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// Main linked and the server sent MAIN_INIT: the session is established.
    Connected {
        session_id: u32,
    },
    ChannelUp {
        channel: ChannelId,
        tls: bool,
    },
    /// Whether the guest agent is connected (after `Connected`, then on
    /// every change).
    Agent {
        connected: bool,
    },
    /// An optional channel was lost; the session carries on without it.
    /// `relink_in`: when it is tried again (None: it stays down, see `ChannelDown`).
    ChannelLost {
        channel: ChannelId,
        failure: Box<Failure>,
        counters: Box<ChannelCounters>,
        relink_in: Option<Duration>,
        /// What the session knows so far (for the report).
        info: Box<SessionInfo>,
    },
    /// The channel stays down for the rest of the session.
    ChannelDown {
        channel: ChannelId,
        reason: String,
    },
    /// The server moves the session to another host (a live migration,
    /// MAIN_MIGRATE_SWITCH_HOST): the daemon relinks it there.
    SwitchHost(MigrationTarget),
    /// The server will migrate the VM (MAIN_MIGRATE_BEGIN, semi-seamless): link
    /// main and `channels` at `target` with connection id `session_id` now,
    /// then answer through [`SessionCmd::MigrateReply`].
    MigrateBegin {
        target: MigrationTarget,
        session_id: u32,
        channels: Vec<ChannelId>,
    },
    /// The announced migration failed; the session stays here.
    MigrateCancel,
    /// The announced migration completed: the session moves to the links made
    /// at the target.
    MigrateEnd,
    /// No channel is linking or waiting to relink: these are up, these down.
    Settled {
        up: Vec<ChannelId>,
        down: Vec<ChannelId>,
    },
}

/// Where a live migration sends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTarget {
    pub host: String,
    pub port: Option<u16>,
    pub tls_port: Option<u16>,
    /// The certificate subject the target presents (None: the .vv's rules).
    pub subject: Option<String>,
}

/// What the daemon asks of a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCmd {
    /// Answer the server's MAIN_MIGRATE_BEGIN (`linked`: at the target).
    MigrateReply { linked: bool },
}

/// Links made at a migration target ahead of the move, each taken once by the
/// channel task of the session that moves there.
#[derive(Default)]
pub struct Adopted(std::sync::Mutex<HashMap<ChannelId, Parked>>);

impl Adopted {
    pub fn new(links: HashMap<ChannelId, Parked>) -> Adopted {
        Adopted(std::sync::Mutex::new(links))
    }

    /// The channels linked there, main excluded.
    fn channels(&self) -> Vec<ChannelId> {
        self.0.lock().map_or(Vec::new(), |m| {
            m.keys()
                .copied()
                .filter(|c| *c != ChannelId::MAIN)
                .collect()
        })
    }

    fn take(&self, ch: ChannelId) -> Option<Parked> {
        self.0.lock().ok()?.remove(&ch)
    }
}

/// How to stop a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// Send DISCONNECTING and close TLS properly (SIGTERM, a replaced session).
    Polite,
    /// Drop everything now.
    Abort,
}

/// Per-channel link facts for `session.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelLinkInfo {
    pub tls: bool,
    pub server_common_caps: Vec<u32>,
    pub server_channel_caps: Vec<u32>,
    pub client_common_caps: Vec<u32>,
    pub client_channel_caps: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionInfo {
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub session_id: Option<u32>,
    /// What CHANNELS_LIST offered.
    pub offered: Vec<String>,
    /// Offered but not linked (skipped by config or .vv, or not available).
    pub not_linked: BTreeMap<String, String>,
    pub channels: BTreeMap<String, ChannelLinkInfo>,
    /// Informational channel events dropped because a queue was full (expected 0).
    pub dropped_events: u64,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// None: stopped locally.
    pub failure: Option<Failure>,
    pub counters: BTreeMap<ChannelId, ChannelCounters>,
    pub uptime: Duration,
    /// MAIN_INIT arrived (the session was established).
    pub connected: bool,
    /// Every listed channel linked at some point.
    pub all_linked: bool,
    /// Main was closed cleanly by the server: the server (or a middlebox) ended
    /// the whole session, not just one channel.
    pub server_closed_session: bool,
    /// After that clean close, main's address refused a connection, or a link
    /// of this session had found it refusing before: the server went away
    /// (stopped, killed, restarting), so nobody took the session over.
    pub server_gone: bool,
    pub info: SessionInfo,
}

impl SessionEnd {
    /// The end of a session aborted after it was told to stop.
    pub fn stopped() -> SessionEnd {
        SessionEnd {
            failure: None,
            ..SessionEnd::panicked()
        }
    }

    /// The end of a session whose task died (a bug): never a silent loss.
    pub fn panicked() -> SessionEnd {
        SessionEnd {
            failure: Some(Failure::panicked(ChannelId::MAIN)),
            counters: BTreeMap::new(),
            uptime: Duration::ZERO,
            connected: false,
            all_linked: false,
            server_closed_session: false,
            server_gone: false,
            info: SessionInfo::default(),
        }
    }

    /// How long main had received nothing when it closed (since its link if
    /// nothing ever came); zero when that is not known.
    pub fn main_quiet(&self) -> Duration {
        let Some(main) = self.counters.get(&ChannelId::MAIN) else {
            return Duration::ZERO;
        };
        let (Some(closed), Some(heard)) = (
            main.closed_at_secs,
            main.last_recv_ts_secs.or(main.connected_at_secs),
        ) else {
            return Duration::ZERO;
        };
        Duration::try_from_secs_f64(closed - heard).unwrap_or(Duration::ZERO)
    }
}

/// Everything a session needs; cheap to clone into tasks.
#[derive(Clone)]
pub struct SessionCtx {
    pub settings: Arc<ConnectionSettings>,
    pub config: Arc<Config>,
    pub connector: Arc<dyn Connector>,
    pub capture: Option<Arc<dyn crate::tap::CaptureSink>>,
    /// The session clock's origin: all `Duration` times are since this instant.
    pub start: Instant,
    /// The wall clock at `start` (ticket expiry).
    pub start_unix: f64,
    /// The daemon's number for this session (`session` in log lines).
    pub generation: u64,
    /// Live per-channel traffic totals (metrics); outlives the session.
    pub traffic: crate::channel::counters::Traffic,
    /// Links made at a migration target for this session to run over.
    pub adopted: Option<Arc<Adopted>>,
    /// The display mirror's screen (off: [`crate::display::screen::Screen::off`]).
    pub screen: crate::display::screen::Screen,
    /// The process's wakeup planning: keepalives and channel timers ride on
    /// wakeups that happen anyway ([`crate::wake`]).
    pub pacer: Arc<crate::wake::Pacer>,
}

impl SessionCtx {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn rules(&self) -> Rules {
        let types = |names: &[String]| -> Vec<ChannelType> {
            names
                .iter()
                .filter_map(|n| ChannelType::from_name(n))
                .collect()
        };
        Rules {
            disabled: types(&self.settings.disable_channels),
            skipped: types(&self.config.channels.skip),
            required: types(&self.config.channels.required),
        }
    }
}

/// TLS when the .vv says so for this channel, or when there is no plain port.
pub fn wants_tls(s: &ConnectionSettings, ch: ChannelId) -> bool {
    if s.port.is_none() {
        return true;
    }
    if s.tls_port.is_none() {
        return false;
    }
    s.secure_channels
        .iter()
        .any(|n| n.eq_ignore_ascii_case("all") || ChannelType::from_name(n) == Some(ch.ty))
}

/// Resolves when the stop signal leaves `Run` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let s = *stop.borrow_and_update();
        if s != Stop::Run {
            return s;
        }
        if stop.changed().await.is_err() {
            return Stop::Abort;
        }
    }
}

/// How long stopped channel tasks get to say goodbye before they are aborted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one session until main (or a required channel) is lost or `stop` says so.
/// Events go to `events` as they happen; the end is the return value.
pub async fn run(
    ctx: SessionCtx,
    emit: impl Fn(SessionEvent) + Send + 'static,
    mut stop: watch::Receiver<Stop>,
    mut cmds: mpsc::Receiver<SessionCmd>,
) -> SessionEnd {
    let (stop_tx, stop_rx) = watch::channel(Stop::Run);
    let (life_tx, mut life_rx) = mpsc::unbounded_channel();
    let (info_tx, mut info_rx) = mpsc::channel(64);
    let outlets = Outlets {
        lifecycle: life_tx,
        info: info_tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let mut tasks: JoinSet<ChannelEnd> = JoinSet::new();
    let mut task_channel: HashMap<tokio::task::Id, ChannelId> = HashMap::new();
    let policy = ReconnectPolicy::from_config(&ctx.config.reconnect);
    let mut orch = Orchestrator::new(
        ctx.rules(),
        policy,
        TicketInfo::from_settings(&ctx.settings),
        ctx.start_unix,
    )
    .for_session(ctx.generation);
    orch.start();
    if let Some(a) = &ctx.adopted {
        orch.adopt(a.channels());
    }
    let mut how = Stop::Abort;
    // Started the moment main ends cleanly: a quickly restarted server must not
    // be listening again by the time the probe asks.
    let mut gone_probe: Option<tokio::task::JoinHandle<bool>> = None;
    // Answers main sends to the server (one per migration announcement).
    let (reply_tx, reply_rx) = mpsc::channel(4);
    let mut reply_rx = Some(reply_rx);

    'run: loop {
        while let Some(cmd) = orch.poll_command() {
            match cmd {
                Command::Spawn {
                    channel,
                    connection_id,
                } => {
                    let replies = if channel == ChannelId::MAIN {
                        reply_rx.take()
                    } else {
                        None
                    };
                    let h = tasks.spawn(driver::run(
                        ctx.clone(),
                        channel,
                        connection_id,
                        stop_rx.clone(),
                        outlets.clone(),
                        replies,
                    ));
                    task_channel.insert(h.id(), channel);
                }
                Command::Emit(ev) => emit(ev),
                Command::ReplyMigration { linked } => reply(&reply_tx, linked),
                Command::Finish => break 'run,
            }
        }
        let deadline = orch.poll_timeout().map(|d| ctx.start + d);
        tokio::select! {
            biased;
            s = stopped(&mut stop) => {
                how = s;
                orch.stop();
            }
            Some(SessionCmd::MigrateReply { linked }) = cmds.recv() => reply(&reply_tx, linked),
            Some(m) = life_rx.recv() => on_msg(&mut orch, m),
            Some(m) = info_rx.recv() => on_msg(&mut orch, m),
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let end = match joined {
                    Ok((id, end)) => {
                        task_channel.remove(&id);
                        end
                    }
                    Err(e) => {
                        let channel = task_channel.remove(&e.id()).unwrap_or(ChannelId::MAIN);
                        if e.is_panic() {
                            tracing::error!(channel = %channel, "the {channel} channel task panicked (a bug in spiced)");
                        }
                        ChannelEnd { channel, counters: ChannelCounters::default(), failure: Some(Failure::panicked(channel)) }
                    }
                };
                let clean_main = end.channel == ChannelId::MAIN
                    && end.failure.as_ref().is_some_and(|f| f.cause == crate::failure::Cause::ServerClosed);
                if clean_main && gone_probe.is_none() {
                    let c = ctx.clone();
                    gone_probe = Some(tokio::spawn(async move { went_away(&c).await }));
                }
                orch.on_end(end.channel, end.counters, end.failure, ctx.now());
            }
            _ = crate::time::sleep_until_opt(deadline) => orch.handle_timeout(ctx.now()),
        }
    }
    // Whatever the others are doing, they stop now: politely on a local stop.
    let _ = stop_tx.send(how);
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(end) = joined {
                orch.on_end(end.channel, end.counters, end.failure, ctx.now());
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        warn!("some channel tasks did not stop within {DRAIN_TIMEOUT:?}; aborting them");
        tasks.abort_all();
    }
    let mut out = orch.outcome();
    for (ch, c) in &out.counters {
        info!(
            channel = %ch,
            session = ctx.generation,
            "channel {ch} totals: in {} B / {} msgs, out {} B / {} msgs, pings {}, pongs {}, acks {}, keepalives {} (replies {})",
            c.bytes_in,
            c.messages_in,
            c.bytes_out,
            c.messages_out,
            c.ping_recv_count,
            c.pong_send_count,
            c.ack_send_count,
            c.client_keepalive_send_count,
            c.keepalive_replies
        );
    }
    out.info.dropped_events = outlets.dropped.load(Ordering::Relaxed);
    let server_gone = match gone_probe {
        Some(probe) if out.server_refused && out.server_closed_session && out.connected => {
            probe.abort();
            info!(
                session = ctx.generation,
                "a link of this session found the server's address refusing connections before the close: the server went away (no takeover)"
            );
            true
        }
        Some(probe) if out.server_closed_session && out.connected => probe.await.unwrap_or(false),
        Some(probe) => {
            probe.abort();
            false
        }
        None => false,
    };
    SessionEnd {
        failure: out.failure,
        counters: out.counters,
        uptime: ctx.now(),
        connected: out.connected,
        all_linked: out.all_linked,
        server_closed_session: out.server_closed_session,
        server_gone,
        info: out.info,
    }
}

/// A full queue or a gone main drops the answer: the server then falls back to
/// switch-host by itself (it waits 10 s for one).
fn reply(tx: &mpsc::Sender<bool>, linked: bool) {
    if tx.try_send(linked).is_err() {
        warn!("the answer to the server's migration announcement could not be sent");
    }
}

/// Links main, then `channels`, at a migration target with `session_id` as
/// the connection id, by `deadline` (spice-server waits 10 s for the answer to
/// MIGRATE_BEGIN: the daemon's migration plan sets it); the target parks them
/// until the move completes. Main must link; a channel that does not is
/// linked afresh after the move.
pub async fn prelink(
    ctx: SessionCtx,
    session_id: u32,
    channels: Vec<ChannelId>,
    deadline: Instant,
) -> Result<HashMap<ChannelId, Parked>, String> {
    let work = async {
        let main = driver::link_channel(&ctx, ChannelId::MAIN, session_id)
            .await
            .map_err(|f| f.message)?;
        let mut links = HashMap::from([(ChannelId::MAIN, main)]);
        let mut set = JoinSet::new();
        for ch in channels {
            let c = ctx.clone();
            set.spawn(async move { (ch, driver::link_channel(&c, ch, session_id).await) });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((ch, Ok(p))) => {
                    links.insert(ch, p);
                }
                Ok((ch, Err(f))) => info!(
                    channel = %ch,
                    "channel {ch} not linked at the migration target ahead of the move ({}); it links there after",
                    f.message
                ),
                Err(_) => {}
            }
        }
        Ok(links)
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err("the target did not link in time".into()))
}

/// How long each probe after a clean close may take.
const GONE_PROBE: Duration = Duration::from_secs(1);

/// A killed server's kernel may close its connections a moment before its
/// listening socket (the order follows its descriptors), so a port that still
/// accepted right after the close is asked once more after this.
const GONE_RECHECK: Duration = Duration::from_millis(300);

/// Right after the server closed the whole session cleanly: does main's address
/// still accept connections (asked twice, `GONE_RECHECK` apart, when the first
/// says yes)? A takeover leaves the server listening; a server that was stopped
/// or killed does not (its restart takes longer than this).
///
/// Only the plain port is probed: spice-server logs a warning for every TLS
/// connection that ends before its link message, so a TLS-only server is not
/// asked (its restarts may then look like takeovers, docs/reconnect.md).
async fn went_away(ctx: &SessionCtx) -> bool {
    let Some(target) = crate::link::Target::plain(&ctx.settings) else {
        return false;
    };
    let gone = refused_now_or_soon(ctx.connector.as_ref(), target).await;
    if gone {
        info!(
            session = ctx.generation,
            "the server's address refused a connection right after the close: the server went away (no takeover)"
        );
    }
    gone
}

/// A probe now, and when that one still found the port listening, another
/// `GONE_RECHECK` later: did either find it refused?
async fn refused_now_or_soon(connector: &dyn Connector, target: crate::link::Target) -> bool {
    let mut seen = connector.probe(target.clone(), GONE_PROBE).await;
    if seen == crate::link::Probe::Listening {
        tokio::time::sleep(GONE_RECHECK).await;
        seen = connector.probe(target, GONE_PROBE).await;
    }
    seen == crate::link::Probe::Refused
}

fn on_msg(orch: &mut Orchestrator, m: ChannelMsg) {
    match m {
        ChannelMsg::Up { channel, info } => orch.on_up(channel, info),
        ChannelMsg::Event(ch, ev) => orch.on_event(ch, ev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{ConnectFuture, Probe, ProbeFuture, Target};
    use std::sync::Mutex;

    /// Answers probes from a script, noting when each came.
    struct Scripted {
        answers: Mutex<Vec<Probe>>,
        asked: Mutex<Vec<Duration>>,
        t0: Instant,
    }

    impl Connector for Scripted {
        fn connect(&self, _: Target) -> ConnectFuture<'_> {
            Box::pin(async {
                Err(crate::link::TransportError::BadTarget {
                    reason: "scripted".into(),
                })
            })
        }
        fn probe(&self, _: Target, _: Duration) -> ProbeFuture<'_> {
            self.asked.lock().unwrap().push(self.t0.elapsed());
            let a = self.answers.lock().unwrap().remove(0);
            Box::pin(async move { a })
        }
    }

    fn scripted(answers: &[Probe]) -> Scripted {
        Scripted {
            answers: Mutex::new(answers.to_vec()),
            asked: Mutex::new(Vec::new()),
            t0: Instant::now(),
        }
    }

    fn target() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 5900,
            tls: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_still_listening_is_asked_again_a_moment_later() {
        // A killed server whose listening socket outlived its connections.
        let c = scripted(&[Probe::Listening, Probe::Refused]);
        assert!(refused_now_or_soon(&c, target()).await);
        assert_eq!(*c.asked.lock().unwrap(), [Duration::ZERO, GONE_RECHECK]);
        // A takeover: the server listens both times.
        let c = scripted(&[Probe::Listening, Probe::Listening]);
        assert!(!refused_now_or_soon(&c, target()).await);
        // Refused at once: one probe is enough; no answer: nothing is concluded.
        let c = scripted(&[Probe::Refused]);
        assert!(refused_now_or_soon(&c, target()).await);
        assert_eq!(c.asked.lock().unwrap().len(), 1);
        let c = scripted(&[Probe::Unknown]);
        assert!(!refused_now_or_soon(&c, target()).await);
        assert_eq!(c.asked.lock().unwrap().len(), 1);
    }
}
