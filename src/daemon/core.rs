//! `DaemonCore`: every decision of the daemon, without I/O. It owns the reconnect
//! supervisor, the READY/STATUS/watchdog policy, the report cooldown, the ticket
//! wait, the idle-cut rule and the exit code. The shell (`daemon::run`) feeds it
//! [`Input`]s and the time, carries out the [`Effect`]s it queues — each blocking
//! one off the event loop, its result coming back as an input — and sleeps until
//! [`DaemonCore::poll_timeout`]. The shape is quinn-proto's: `handle`, `poll_*`.
//!
//! Nothing here awaits, reads a clock or touches a file, so every decision is a
//! paused-time unit test (`daemon/tests.rs`).

use super::idle_cut::IdleCuts;
use super::migration::{target_settings, Migrations, Order};
use super::status::{Counts, LastDisconnect, Observed, Status};
use crate::config::Config;
use crate::events;
use crate::failure::{Cause, Failure};
use crate::link::TlsSetup;
use crate::reconnect::{Action, CloseShape, Input as SupInput, Now, State, Supervisor, TicketInfo};
use crate::report::{Facts, ReportJob, Reporter};
use crate::session::{SessionEnd, SessionEvent, Stop};
use crate::systemd::Notice;
use crate::vv::ConnectionSettings;
use crate::wire::ChannelId;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT: stop cleanly, exit 0.
    Terminate,
    /// SIGHUP: re-read the .vv.
    Hangup,
    /// SIGUSR1: drop the session and link again now.
    Reconnect,
}

/// Why the .vv is (re)read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Sighup,
    NewFile,
}

/// Where fresh settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Vv(Origin),
    Refresh,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Vv(Origin::Sighup) => "SIGHUP",
            Source::Vv(Origin::NewFile) => "new .vv file",
            Source::Refresh => "refresh command",
        }
    }
}

/// The refresh command in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refreshing {
    /// Its number: results name it.
    run: u64,
    /// The `settings_epoch` it was started under.
    epoch: u64,
}

/// Why settings could not be loaded (a .vv read, the refresh command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// One line, no secret.
    pub message: String,
    /// There was no file at the .vv path.
    pub no_file: bool,
}

impl From<String> for LoadError {
    fn from(message: String) -> LoadError {
        LoadError {
            message,
            no_file: false,
        }
    }
}

impl From<&str> for LoadError {
    fn from(message: &str) -> LoadError {
        message.to_string().into()
    }
}

/// Settings read and checked off the loop (the TLS roots are loaded there too).
#[derive(Clone)]
pub struct Loaded {
    pub settings: ConnectionSettings,
    pub warnings: Vec<String>,
    pub tls: Option<Arc<TlsSetup>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How often a waiting retry checks whether the server is back (one TCP connect
/// each: a server that stays down costs one SYN a second).
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The .vv path is looked at once this long after READY. Under systemd a
/// reload requested while the unit is still activating is merged into its
/// start job and never reaches spiced as a SIGHUP; PID 1 has handled READY
/// well within this, so a file written before the look is seen by it and one
/// written after gets its own reload (docs/reconnect.md, "Fresh tickets").
pub const VV_CHECK_AFTER_READY: Duration = Duration::from_secs(1);

/// What the shell tells the core.
pub enum Input {
    Signal(Signal),
    Session {
        generation: u64,
        event: SessionEvent,
    },
    SessionEnded {
        generation: u64,
        end: Box<SessionEnd>,
    },
    /// A look at the .vv path (after a read, after READY, every second while
    /// waiting for a ticket) found a file other than the one last read.
    VvChanged,
    /// The result of [`Effect::ReadVv`].
    Loaded {
        origin: Origin,
        result: Result<Box<Loaded>, LoadError>,
    },
    /// The result of [`Effect::RunRefresh`] `run`.
    Refreshed {
        run: u64,
        result: Result<Box<Loaded>, String>,
    },
    /// The result of [`Effect::PrepareMigration`] for migration plan `plan`.
    MigrationPrepared {
        plan: u64,
        result: Result<Box<Loaded>, String>,
    },
    /// A [`Effect::WriteReport`] finished.
    ReportDone(Result<PathBuf, String>),
    /// A [`Effect::Probe`] finished: did the server accept a connection?
    Probed(crate::link::Probe),
    /// A [`Effect::Prelink`] for migration plan `plan` finished: how many
    /// links wait at the target.
    Prelinked {
        plan: u64,
        result: Result<usize, String>,
    },
}

/// What the core asks the shell to do, in order.
pub enum Effect {
    StartSession {
        generation: u64,
        settings: Arc<ConnectionSettings>,
        config: Arc<Config>,
        tls: Option<Arc<TlsSetup>>,
        /// Run it over the links made at a migration target for this plan
        /// (held by the shell since [`Effect::Prelink`]); any other links are
        /// dropped.
        adopt: Option<u64>,
    },
    /// Stop it (its end still comes back as `SessionEnded`).
    StopSession {
        generation: u64,
        how: Stop,
    },
    /// Read and check the .vv off the loop; answer with `Input::Loaded`.
    ReadVv {
        origin: Origin,
    },
    /// Build the TLS material for these settings off the loop; answer with
    /// `Input::MigrationPrepared { plan, .. }`.
    PrepareMigration {
        plan: u64,
        settings: Box<ConnectionSettings>,
    },
    /// Link main and `channels` at a migration target with connection id
    /// `session_id`, off the loop, by `deadline`, and keep the links for a
    /// later `StartSession { adopt: Some(plan) }`; answer with
    /// `Input::Prelinked { plan, .. }`.
    Prelink {
        plan: u64,
        generation: u64,
        settings: Arc<ConnectionSettings>,
        tls: Option<Arc<TlsSetup>>,
        session_id: u32,
        channels: Vec<ChannelId>,
        deadline: Instant,
    },
    /// Answer the server's MIGRATE_BEGIN on session `generation`'s main.
    MigrateReply {
        generation: u64,
        linked: bool,
    },
    /// Close the links kept for `plan` since [`Effect::Prelink`] (and stop
    /// making them).
    DropPrelinked {
        plan: u64,
    },
    /// Stat the .vv path off the loop; a file other than the one last read
    /// comes back as `Input::VvChanged`.
    CheckVv,
    /// Run `refresh_command` off the loop (stopping and killing an earlier
    /// run still going); answer with `Input::Refreshed { run, .. }`. Its
    /// stderr is scrubbed of `secrets` before it reaches a log line.
    RunRefresh {
        run: u64,
        secrets: Vec<crate::secret::Secret>,
    },
    /// Write a disconnect report off the loop; answer with `Input::ReportDone`.
    WriteReport(Box<ReportJob>),
    /// Check whether the server accepts connections (a TCP connect to its plain
    /// port, through the proxy if any; never a link), within [`PROBE_EVERY`];
    /// answer with `Input::Probed`.
    Probe {
        settings: Arc<ConnectionSettings>,
        config: Arc<Config>,
    },
    Notify(Notice),
    /// The loop is over: exit with this code (within a bounded time).
    Exit(u8),
}

/// Fixed for the daemon's life.
pub struct Options {
    pub vv_path: PathBuf,
    /// Half of WatchdogSec, when systemd asked for a watchdog.
    pub watchdog: Option<Duration>,
    /// Where reports go.
    pub spool: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
enum ChanState {
    Up,
    Lost(String),
    Down(String),
}

/// The session in flight.
struct Running {
    generation: u64,
    connected: bool,
    start_unix: f64,
    channels: BTreeMap<ChannelId, ChanState>,
    /// The guest agent is connected (None: the server has not said yet).
    agent: Option<bool>,
}

/// A report granted at a disconnect, before it is built.
struct ReportSlot {
    skipped: u32,
    file_name: String,
    wall: std::time::SystemTime,
    /// `wall` as the daemon's clock read it.
    unix: f64,
}

/// What a report is about: a session that ended (and the cause word to use
/// instead of its failure's), or a channel lost while the session goes on.
enum Ctx<'a> {
    Ended(&'a SessionEnd, Option<Cause>),
    Lost(&'a crate::session::SessionInfo),
}

/// See the module docs.
pub struct DaemonCore {
    config: Arc<Config>,
    /// `config` with what this run learnt (a shorter keepalive after idle cuts).
    session_config: Arc<Config>,
    settings: Arc<ConnectionSettings>,
    /// The settings as last read from the .vv (or the refresh command): a live
    /// migration changes `settings`, not these.
    from_vv: Arc<ConnectionSettings>,
    tls: Option<Arc<TlsSetup>>,
    /// The live migration in flight.
    migration: Migrations,
    /// The next session starts over the links made at a migration target for
    /// this plan.
    adopt_next: Option<u64>,
    opts: Options,
    sup: Supervisor,
    reporter: Reporter,
    origin: Instant,
    generation: u64,
    running: Option<Running>,
    ready_sent: bool,
    ready_by: Option<Instant>,
    next_watchdog: Option<Instant>,
    reading: bool,
    reread: Option<Origin>,
    /// Counts fresh settings (a new .vv, the refresh command's): a refresh
    /// result is for the settings it was started under.
    settings_epoch: u64,
    /// The refresh command in flight.
    refreshing: Option<Refreshing>,
    /// The last refresh run number handed out.
    refresh_runs: u64,
    /// When to look at the .vv path once after READY.
    vv_check_at: Option<Instant>,
    idle_cuts: IdleCuts,
    last_failure: Option<String>,
    stopping: bool,
    exited: bool,
    status: String,
    effects: VecDeque<Effect>,
    /// For [`DaemonCore::status`].
    obs: Observed,
    /// The next readiness check, while a retry waits out its back-off.
    probe_at: Option<Instant>,
    probing: bool,
    /// The server was seen not accepting connections since the last session
    /// came up: only then may a readiness check bring a retry forward (a server
    /// that listens but fails links keeps its back-off).
    server_down: bool,
}

impl DaemonCore {
    pub fn new(config: Arc<Config>, loaded: Loaded, opts: Options, now: Now) -> DaemonCore {
        let from_vv = Arc::new(loaded.settings.clone());
        let mut settings = loaded.settings;
        imply_expiry(&mut settings, &config, now);
        let sup = Supervisor::from_config(&config.reconnect, TicketInfo::from_settings(&settings));
        let reporter = Reporter::new(opts.spool.clone(), &config.report);
        let idle = crate::time::secs_opt(config.keepalive.idle_secs);
        DaemonCore {
            session_config: config.clone(),
            config,
            from_vv,
            migration: Migrations::default(),
            adopt_next: None,
            settings: Arc::new(settings),
            tls: loaded.tls,
            next_watchdog: opts.watchdog.map(|w| crate::time::after(now.mono, w)),
            opts,
            sup,
            reporter,
            origin: now.mono,
            generation: 0,
            running: None,
            ready_sent: false,
            ready_by: None,
            reading: false,
            reread: None,
            settings_epoch: 0,
            refreshing: None,
            refresh_runs: 0,
            vv_check_at: None,
            idle_cuts: IdleCuts::new(idle),
            last_failure: None,
            stopping: false,
            exited: false,
            status: String::new(),
            effects: VecDeque::new(),
            obs: Observed::default(),
            probe_at: None,
            probing: false,
            server_down: false,
        }
    }

    /// The first connect.
    pub fn start(&mut self, now: Now) {
        let actions = self.sup.start(now);
        self.apply(actions, now);
        self.observe(now);
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`DaemonCore::handle_timeout`] must next run; None: only an input can
    /// change anything.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        [
            self.sup.next_deadline(),
            self.ready_by.filter(|_| !self.ready_sent),
            self.next_watchdog,
            self.probe_at.filter(|_| !self.probing),
            self.migration.poll_timeout(),
            self.vv_check_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Watch the .vv path for a new file (only while waiting for a ticket).
    pub fn watching_vv(&self) -> bool {
        !self.exited && matches!(self.sup.state(), State::WaitingForTicket { .. })
    }

    pub fn state(&self) -> &State {
        self.sup.state()
    }

    /// The keepalive interval sessions use now.
    pub fn idle_secs(&self) -> f64 {
        self.session_config.keepalive.idle_secs
    }

    pub fn is_exited(&self) -> bool {
        self.exited
    }

    /// The watchdog ping may ride a wakeup of the process from halfway
    /// through its period on, and is due at its end ([`crate::wake`]).
    pub fn watchdog_window(&self) -> Option<crate::wake::Window> {
        let due = self.next_watchdog.filter(|_| !self.exited)?;
        let every = self.opts.watchdog.unwrap_or(Duration::from_secs(1));
        Some(crate::wake::Window {
            earliest: due.checked_sub(every / 2).unwrap_or(due),
            due,
            grace: Duration::ZERO,
        })
    }

    /// Pings the watchdog now, ahead of its time (a wakeup carries it).
    pub fn watchdog_early(&mut self, now: Now) {
        if self.exited || self.next_watchdog.is_none() {
            return;
        }
        self.effects.push_back(Effect::Notify(Notice::Watchdog));
        let every = self.opts.watchdog.unwrap_or(Duration::from_secs(1));
        self.next_watchdog = Some(crate::time::after(now.mono, every));
    }

    pub fn handle_timeout(&mut self, now: Now) {
        if self.exited {
            return;
        }
        if let Some(at) = self.next_watchdog {
            if now.mono >= at {
                self.effects.push_back(Effect::Notify(Notice::Watchdog));
                let every = self.opts.watchdog.unwrap_or(Duration::from_secs(1));
                // Never a burst after a stall: the next one is a full period away.
                self.next_watchdog = Some(crate::time::after(now.mono, every));
            }
        }
        if !self.ready_sent && self.ready_by.is_some_and(|t| now.mono >= t) {
            warn!(
                "not every channel linked within {:.0} s of the session start; telling systemd we are ready anyway",
                self.config.keepalive.connect_timeout_secs
            );
            self.ready(now);
        }
        if self.vv_check_at.is_some_and(|t| now.mono >= t) {
            self.vv_check_at = None;
            self.effects.push_back(Effect::CheckVv);
        }
        let orders = self.migration.handle_timeout(now.mono);
        self.follow(orders, now);
        if self.sup.next_deadline().is_some_and(|d| now.mono >= d) {
            let actions = self.sup.poll(now);
            self.apply(actions, now);
        }
        if !self.probing && self.probe_at.is_some_and(|t| now.mono >= t) && self.sup.wants_probe() {
            self.probing = true;
            self.probe_at = Some(crate::time::after(now.mono, PROBE_EVERY));
            self.effects.push_back(Effect::Probe {
                settings: self.settings.clone(),
                config: self.config.clone(),
            });
        }
        self.schedule_probe(now);
        self.observe(now);
    }

    /// Readiness checks run once per [`PROBE_EVERY`] while a retry waits out
    /// its back-off and the server has a plain port to ask.
    fn schedule_probe(&mut self, now: Now) {
        let wanted = !self.stopping && self.settings.port.is_some() && self.sup.wants_probe();
        if !wanted {
            self.probe_at = None;
        } else if self.probe_at.is_none() {
            self.probe_at = Some(crate::time::after(now.mono, PROBE_EVERY));
        }
    }

    fn on_probed(&mut self, seen: crate::link::Probe, now: Now) {
        self.probing = false;
        if seen != crate::link::Probe::Listening {
            self.server_down = true;
            return;
        }
        if self.server_down && self.sup.wants_probe() {
            self.server_down = false;
            info!("the server accepts connections again: retrying now");
            let actions = self.sup.handle(SupInput::ServerReady, now);
            self.apply(actions, now);
        }
    }

    pub fn handle(&mut self, input: Input, now: Now) {
        if self.exited {
            if let Input::ReportDone(r) = input {
                self.report_done(r);
            }
            return;
        }
        match input {
            Input::Signal(Signal::Terminate) => {
                if !self.stopping {
                    self.stopping = true;
                    info!("stop requested: stopping");
                }
                let actions = self.sup.handle(SupInput::Shutdown, now);
                self.apply(actions, now);
            }
            Input::Signal(Signal::Hangup) => {
                info!("SIGHUP: re-reading {}", self.opts.vv_path.display());
                self.read_vv(Origin::Sighup);
            }
            Input::Signal(Signal::Reconnect) => self.on_reconnect_request(now),
            Input::VvChanged => self.read_vv(Origin::NewFile),
            Input::Loaded { origin, result } => self.on_loaded(Source::Vv(origin), result, now),
            Input::Refreshed { run, result } => self.on_refreshed(run, result, now),
            Input::MigrationPrepared { plan, result } => {
                let orders = self.migration.ready(plan, result);
                self.follow(orders, now);
            }
            Input::Session { generation, event } => self.on_session_event(generation, event, now),
            Input::SessionEnded { generation, end } => self.on_session_end(generation, *end, now),
            Input::ReportDone(r) => self.report_done(r),
            Input::Probed(seen) => self.on_probed(seen, now),
            Input::Prelinked { plan, result } => {
                let orders = self.migration.prelinked(plan, result);
                self.follow(orders, now);
            }
        }
        self.schedule_probe(now);
        self.observe(now);
    }

    /// SIGUSR1 or the control socket's `reconnect`.
    fn on_reconnect_request(&mut self, now: Now) {
        info!("SIGUSR1: reconnect requested");
        let moving = self
            .running
            .as_ref()
            .is_some_and(|r| self.migration.following(r.generation));
        if moving {
            // The VM has left the source: a relink now would land on the
            // stopped source; the session relinks at the target anyway.
            info!("reconnect requested while the session follows a live migration: it relinks at the target");
            return;
        }
        let actions = self.sup.handle(SupInput::ReconnectNow, now);
        self.apply(actions, now);
    }

    fn read_vv(&mut self, origin: Origin) {
        // One read at a time; a storm of requests folds into one more read.
        if self.reading {
            self.reread = Some(origin);
            return;
        }
        self.reading = true;
        self.effects.push_back(Effect::ReadVv { origin });
    }

    fn on_refreshed(&mut self, run: u64, result: Result<Box<Loaded>, String>, now: Now) {
        let Some(r) = self.refreshing.filter(|r| r.run == run) else {
            return; // a run stopped for a newer one
        };
        self.refreshing = None;
        if r.epoch != self.settings_epoch {
            // Newer settings came meanwhile (a producer's .vv) and may run a
            // session already: this answer is for the old ones.
            info!("refresh command: its .vv came after newer settings; not used");
            return;
        }
        self.on_loaded(Source::Refresh, result.map_err(LoadError::from), now);
    }

    fn on_loaded(&mut self, origin: Source, result: Result<Box<Loaded>, LoadError>, now: Now) {
        if origin != Source::Refresh {
            self.reading = false;
            if let Some(again) = self.reread.take() {
                self.read_vv(again);
            }
        }
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = crate::text::printable(&e.message);
                if origin == Source::Refresh {
                    warn!("{msg}");
                    let actions = self
                        .sup
                        .handle(SupInput::RefreshFailed { message: msg }, now);
                    self.apply(actions, now);
                } else if e.no_file && self.from_vv.delete_this_file {
                    // The single-use .vv was used and deleted: a reload for
                    // that deletion (or for the file already read) finds none.
                    info!(
                        "{}: no file at {} (the single-use .vv was used); keeping the current settings",
                        origin.describe(),
                        self.opts.vv_path.display()
                    );
                } else {
                    warn!(
                        "{}: cannot use the new .vv ({msg}); keeping the current one",
                        origin.describe()
                    );
                }
                return;
            }
        };
        for w in &loaded.warnings {
            warn!("{w}");
        }
        // The same settings again (a SIGHUP storm, a file touched): nothing new.
        if origin != Source::Refresh && loaded.settings == *self.from_vv {
            info!(
                "{}: the .vv is unchanged; keeping the session",
                origin.describe()
            );
            return;
        }
        info!(
            "{}: new connection settings for {}",
            origin.describe(),
            loaded.settings.shown_host()
        );
        self.from_vv = Arc::new(loaded.settings.clone());
        self.settings_epoch += 1;
        let mut settings = loaded.settings;
        imply_expiry(&mut settings, &self.config, now);
        let ticket = TicketInfo::from_settings(&settings);
        let orders = self.migration.abandon();
        self.follow(orders, now);
        self.settings = Arc::new(settings);
        self.tls = loaded.tls;
        let actions = self.sup.handle(SupInput::Reload { ticket }, now);
        self.apply(actions, now);
    }

    /// Carries out what the migration plan says.
    fn follow(&mut self, orders: Vec<Order>, now: Now) {
        for o in orders {
            match o {
                Order::Prepare { plan, settings } => self
                    .effects
                    .push_back(Effect::PrepareMigration { plan, settings }),
                Order::Prelink {
                    plan,
                    generation,
                    target,
                    session_id,
                    channels,
                    deadline,
                } => self.effects.push_back(Effect::Prelink {
                    plan,
                    generation,
                    settings: Arc::new(target.settings),
                    tls: target.tls,
                    session_id,
                    channels,
                    deadline,
                }),
                Order::Reply { generation, linked } => self
                    .effects
                    .push_back(Effect::MigrateReply { generation, linked }),
                Order::DropPrelinked { plan } => {
                    self.effects.push_back(Effect::DropPrelinked { plan })
                }
                Order::Follow {
                    plan,
                    generation,
                    target,
                    adopt,
                } => {
                    // Only the session that announced the move follows it, and
                    // only while the supervisor has it connected: the settings
                    // change with the move, never before it is accepted.
                    let accepted = self.is_current(generation)
                        && matches!(self.sup.state(), State::Connected { generation: g, .. } if *g == generation);
                    if !accepted {
                        info!("live migration: session {generation} was replaced meanwhile; its move is not followed");
                        if adopt {
                            self.effects.push_back(Effect::DropPrelinked { plan });
                        }
                        continue;
                    }
                    let to = target.settings.shown_host();
                    self.settings = Arc::new(target.settings);
                    self.tls = target.tls;
                    self.adopt_next = adopt.then_some(plan);
                    let actions = self.sup.handle(SupInput::Migrated { generation, to }, now);
                    self.apply(actions, now);
                    // No session started over them (stopping, say): they go.
                    if let Some(plan) = self.adopt_next.take() {
                        self.effects.push_back(Effect::DropPrelinked { plan });
                    }
                }
                Order::Lost { generation, .. } if !self.is_current(generation) => {
                    // That session was replaced: its loss is no news.
                }
                Order::Lost { generation, cause } => {
                    let actions = self.sup.handle(
                        SupInput::Disconnected {
                            generation,
                            channel: ChannelId::MAIN,
                            cause,
                            shape: CloseShape::default(),
                        },
                        now,
                    );
                    self.running = None;
                    self.apply(actions, now);
                }
            }
        }
    }

    /// Session `generation` is the one in flight.
    fn is_current(&self, generation: u64) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.generation == generation)
    }

    fn on_session_event(&mut self, generation: u64, event: SessionEvent, now: Now) {
        let Some(run) = self.running.as_mut().filter(|r| r.generation == generation) else {
            return; // a session already replaced
        };
        match event {
            SessionEvent::Connected { .. } => {
                run.connected = true;
                if !self.ready_sent && self.ready_by.is_none() {
                    self.ready_by = Some(crate::time::after(
                        now.mono,
                        crate::time::secs(self.config.keepalive.connect_timeout_secs),
                    ));
                }
                self.server_down = false;
                let actions = self.sup.handle(SupInput::Connected { generation }, now);
                self.apply(actions, now);
            }
            SessionEvent::ChannelUp { channel, .. } => {
                run.channels.insert(channel, ChanState::Up);
            }
            SessionEvent::Agent { connected } => run.agent = Some(connected),
            SessionEvent::ChannelLost {
                channel,
                failure,
                counters,
                relink_in,
                info,
            } => {
                let state = match relink_in {
                    Some(d) => format!(
                        "{}, relinking in {}",
                        failure.cause.as_str(),
                        crate::time::fmt_dur(d)
                    ),
                    None => failure.cause.as_str().to_string(),
                };
                run.channels.insert(channel, ChanState::Lost(state));
                Counts::bump(&mut self.obs.counts.channel_losses, failure.cause.as_str());
                let counters = BTreeMap::from([(channel, *counters)]);
                if let Some(slot) = self.report_slot(&failure, now) {
                    // Named now, as a session loss names its report: the
                    // cooldown runs from here even if the write fails.
                    info!(
                        channel = %channel,
                        report = %self.reporter.dir().join(&slot.file_name).display(),
                        "channel {channel}: disconnect report queued"
                    );
                    self.report(slot, generation, &failure, &counters, Ctx::Lost(&info));
                }
                self.send_status();
            }
            SessionEvent::ChannelDown { channel, reason } => {
                run.channels.insert(channel, ChanState::Down(reason));
                self.send_status();
            }
            SessionEvent::SwitchHost(t) => {
                let settings = target_settings(&self.settings, t);
                let orders = self.migration.switch_host(generation, settings);
                self.follow(orders, now);
            }
            SessionEvent::MigrateBegin {
                target,
                session_id,
                channels,
            } => {
                let settings = target_settings(&self.settings, target);
                let orders = self
                    .migration
                    .begin(generation, settings, session_id, channels, now.mono);
                self.follow(orders, now);
            }
            SessionEvent::MigrateCancel => {
                let orders = self.migration.cancel(generation);
                self.follow(orders, now);
            }
            SessionEvent::MigrateEnd => {
                let orders = self.migration.end(generation);
                self.follow(orders, now);
            }
            SessionEvent::Settled { up, down } => {
                for c in &up {
                    run.channels.insert(*c, ChanState::Up);
                }
                let _ = down;
                self.send_status();
                self.ready(now);
            }
        }
    }

    fn on_session_end(&mut self, generation: u64, end: SessionEnd, now: Now) {
        let current = self
            .running
            .as_ref()
            .is_some_and(|r| r.generation == generation);
        if !current {
            return; // replaced or stopped by us; its end means nothing now
        }
        let (waits, orders) = self.migration.session_ended(generation);
        self.follow(orders, now);
        if waits {
            return;
        }
        let Some(run) = self.running.take() else {
            return;
        };
        let mut actions = Vec::new();
        // MAIN_INIT came but its event was not read before the end: still say so.
        if end.connected && !run.connected {
            actions.extend(self.sup.handle(SupInput::Connected { generation }, now));
        }
        let Some(f) = end.failure.clone() else {
            self.apply(actions, now);
            return;
        };
        self.last_failure = Some(format!("{}: {}", f.cause.as_str(), f.message));
        if end.server_gone || f.cause == Cause::ConnectFailed {
            self.server_down = true;
        }
        let mut cause = None;
        // Named now so the session-lost line can say where its report goes.
        let slot = self.report_slot(&f, now);
        let report_path = slot
            .as_ref()
            .map(|s| self.reporter.dir().join(&s.file_name).display().to_string());
        if end.connected {
            warn!(
                channel = %f.channel,
                cause = f.cause.as_str(),
                session = generation,
                report = report_path.as_deref(),
                message_id = events::SESSION_LOST,
                "session lost after {:.1} s: {} failed first: {}",
                end.uptime.as_secs_f64(),
                f.channel,
                f.message
            );
            let verdict = self.idle_cuts.observe(&end, now.mono);
            if end.server_closed_session {
                if let Some(line) = super::idle_cut::shape_line(&end, verdict.cut_like) {
                    info!(session = generation, "{line}");
                }
            }
            let cut = verdict.learned;
            let word = if cut.is_some() {
                Cause::IdleCut
            } else {
                f.cause
            };
            Counts::bump(&mut self.obs.counts.disconnects, word.as_str());
            self.obs.last_disconnect = Some(LastDisconnect {
                at: now.unix,
                channel: f.channel.to_string(),
                cause: word.as_str().to_string(),
                message: f.message.clone(),
                report: None,
                report_seq: None,
            });
            if let Some(learned) = cut {
                cause = Some(Cause::IdleCut);
                let mut cfg = (*self.session_config).clone();
                cfg.keepalive.idle_secs = learned.as_secs_f64();
                self.session_config = Arc::new(cfg);
                actions.extend(self.sup.handle(
                    SupInput::IdleCut {
                        generation,
                        idle: self.idle_cuts.last_idle().unwrap_or(learned),
                    },
                    now,
                ));
            } else {
                actions.extend(self.sup.handle(
                    SupInput::Disconnected {
                        generation,
                        // A whole session closed cleanly by the server counts as
                        // main's close (what the takeover rule looks at).
                        channel: if end.server_closed_session {
                            ChannelId::MAIN
                        } else {
                            f.channel
                        },
                        cause: format!("{}: {}", f.cause.as_str(), f.message),
                        shape: CloseShape {
                            clean: f.cause == Cause::ServerClosed,
                            server_gone: end.server_gone,
                            cut_like: verdict.cut_like,
                            server_quiet: end.main_quiet(),
                        },
                    },
                    now,
                ));
            }
        } else {
            warn!(
                channel = %f.channel,
                cause = f.cause.as_str(),
                session = generation,
                report = report_path.as_deref(),
                "connect failed: {}",
                f.message
            );
            actions.extend(self.sup.handle(
                SupInput::ConnectFailed {
                    class: f.class,
                    channel: f.channel,
                    message: f.message.clone(),
                },
                now,
            ));
            Counts::bump(&mut self.obs.counts.connect_failures, f.cause.as_str());
        }
        // The report says what the supervisor decided, so it comes after it.
        self.running = Some(run);
        if let Some(slot) = slot {
            self.report(slot, generation, &f, &end.counters, Ctx::Ended(&end, cause));
        }
        self.running = None;
        self.apply(actions, now);
    }

    /// Whether this disconnect gets a report (enabled, cooldown permitting), and
    /// the file it goes to.
    fn report_slot(&mut self, f: &Failure, now: Now) -> Option<ReportSlot> {
        if !self.config.report.enabled {
            return None;
        }
        let Some(skipped) = self
            .reporter
            .should_write(now.mono.saturating_duration_since(self.origin))
        else {
            self.obs.counts.reports_skipped += 1;
            return None;
        };
        let wall = crate::time::unix_to_system(now.unix);
        let file_name = self.reporter.next_file_name(&f.channel.to_string(), wall);
        Some(ReportSlot {
            skipped,
            file_name,
            wall,
            unix: now.unix,
        })
    }

    /// Queues the disconnect report `slot` was granted for.
    fn report(
        &mut self,
        slot: ReportSlot,
        generation: u64,
        f: &Failure,
        counters: &BTreeMap<ChannelId, crate::channel::counters::ChannelCounters>,
        ctx: Ctx<'_>,
    ) {
        let now_unix = slot.unix;
        let (end, cause, info) = match ctx {
            Ctx::Ended(e, cause) => (Some(e), cause, &e.info),
            Ctx::Lost(info) => (None, None, info),
        };
        self.obs.reports_queued += 1;
        if let (Some(e), Some(last)) = (end, self.obs.last_disconnect.as_mut()) {
            if e.connected {
                last.report_seq = Some(self.obs.reports_queued);
            }
        }
        let run = self.running.as_ref();
        let channels_down = run
            .map(|r| {
                r.channels
                    .iter()
                    .filter_map(|(c, s)| match s {
                        ChanState::Up => None,
                        ChanState::Lost(w) | ChanState::Down(w) => Some((c.to_string(), w.clone())),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let start_unix = run.map_or(now_unix, |r| r.start_unix);
        let job = ReportJob::new(Facts {
            failure: f,
            cause,
            counters,
            info,
            channels_down,
            uptime: end.map_or(
                Duration::try_from_secs_f64(now_unix - start_unix).unwrap_or_default(),
                |e| e.uptime,
            ),
            settings: &self.settings,
            config: &self.config,
            reconnects: self.sup.reconnect_count(),
            reconnect_state: self.sup.describe(),
            skipped: slot.skipped,
            generation,
            start_unix,
            spool: self.reporter.dir(),
            session_goes_on: end.is_none(),
            file_name: slot.file_name,
            wall: slot.wall,
        });
        self.effects.push_back(Effect::WriteReport(Box::new(job)));
    }

    fn report_done(&mut self, r: Result<PathBuf, String>) {
        self.obs.reports_done += 1;
        match &r {
            Ok(path) => {
                self.obs.counts.reports_written += 1;
                if let Some(last) = self.obs.last_disconnect.as_mut() {
                    if last.report_seq == Some(self.obs.reports_done) {
                        last.report = Some(path.display().to_string());
                    }
                }
            }
            Err(_) => self.obs.counts.reports_failed += 1,
        }
        self.reporter
            .record_result(&r.map_err(std::io::Error::other));
    }

    /// Carries out what the supervisor decided.
    fn apply(&mut self, actions: Vec<Action>, now: Now) {
        for a in actions {
            if self.exited {
                return;
            }
            match a {
                Action::ConnectNow { attempt } => {
                    if attempt > 0 {
                        self.obs.counts.reconnect_attempts += 1;
                    }
                    self.connect(attempt, now)
                }
                Action::Transition(t) => {
                    info!(state = t.to_state, "reconnect: {t}");
                    match self.sup.state() {
                        // `connect` says where to.
                        State::Connecting { .. } => {}
                        // READY once settled: linked (see Settled), or retrying /
                        // waiting, so systemd's start does not hang on a dead server.
                        State::Pending { .. } | State::WaitingForTicket { .. } => {
                            self.send_status();
                            self.ready(now);
                        }
                        _ => self.send_status(),
                    }
                }
                Action::Info(m) => info!("{m}"),
                Action::Warn(w) => warn!(message_id = w.event, "{}", w.text),
                Action::RunRefreshCommand => {
                    // One child at a time: one running for these settings
                    // answers this request too; one for older settings is
                    // stopped for a new one.
                    if self
                        .refreshing
                        .is_none_or(|r| r.epoch != self.settings_epoch)
                    {
                        self.refresh();
                    }
                }
                Action::GiveUp(reason) => {
                    let code = reason.exit_code();
                    let last = self
                        .last_failure
                        .as_deref()
                        .map(|l| format!("; last failure: {l}"))
                        .unwrap_or_default();
                    error!(
                        cause = reason.name(),
                        state = "gave_up",
                        message_id = events::GAVE_UP,
                        "giving up: {reason} (exit status {code}){last}"
                    );
                    self.status_line(format!("gave up: {reason}"));
                    self.exit(code);
                }
                Action::Stop => {
                    info!("stopped");
                    self.exit(crate::exit::OK);
                }
            }
        }
    }

    fn refresh(&mut self) {
        self.refresh_runs += 1;
        let run = self.refresh_runs;
        self.refreshing = Some(Refreshing {
            run,
            epoch: self.settings_epoch,
        });
        info!("running reconnect.refresh_command for a fresh ticket");
        let secrets = crate::scrub::secrets(&self.settings, &self.config);
        self.effects.push_back(Effect::RunRefresh { run, secrets });
    }

    fn connect(&mut self, attempt: u32, now: Now) {
        self.stop_running();
        // A migration planned for the session replaced here is over (a move
        // being followed took its plan already).
        let orders = self.migration.abandon();
        self.follow(orders, now);
        self.generation += 1;
        let host = self.settings.shown_host();
        if attempt > 0 {
            info!(
                attempt,
                session = self.generation,
                message_id = events::RECONNECT_ATTEMPT,
                "reconnect attempt {attempt} (session {})",
                self.generation
            );
            self.status_line(format!("reconnecting to {host} (attempt {attempt})"));
        } else {
            info!(
                session = self.generation,
                "connecting to {host} (session {})", self.generation
            );
            self.status_line(format!("connecting to {host}"));
        }
        self.running = Some(Running {
            generation: self.generation,
            connected: false,
            start_unix: now.unix,
            channels: BTreeMap::new(),
            agent: None,
        });
        self.effects.push_back(Effect::StartSession {
            generation: self.generation,
            settings: self.settings.clone(),
            config: self.session_config.clone(),
            tls: self.tls.clone(),
            adopt: self.adopt_next.take(),
        });
    }

    fn stop_running(&mut self) {
        if let Some(old) = self.running.take() {
            self.effects.push_back(Effect::StopSession {
                generation: old.generation,
                how: Stop::Polite,
            });
        }
    }

    fn exit(&mut self, code: u8) {
        self.stop_running();
        self.effects.push_back(Effect::Notify(Notice::Stopping));
        self.effects.push_back(Effect::Exit(code));
        self.exited = true;
    }

    fn ready(&mut self, now: Now) {
        if !self.ready_sent {
            self.ready_sent = true;
            self.effects.push_back(Effect::Notify(Notice::Ready));
            self.vv_check_at = Some(crate::time::after(now.mono, VV_CHECK_AFTER_READY));
        }
    }

    /// What the daemon is doing now (control socket, metrics). Pure: built from
    /// what the inputs said, so two calls without an input between are equal.
    pub fn status(&self) -> Status {
        let state = self.sup.state();
        let attempt = match state {
            State::Connecting { attempt } if *attempt > 0 => Some(*attempt),
            State::Pending { attempt, .. } => Some(*attempt),
            _ => None,
        };
        let run = self
            .running
            .as_ref()
            .filter(|_| matches!(state, State::Connected { .. }));
        let (up, total, down) = match run {
            Some(r) => (
                r.channels.values().filter(|c| **c == ChanState::Up).count(),
                r.channels.len(),
                r.channels
                    .iter()
                    .filter_map(|(c, st)| match st {
                        ChanState::Up => None,
                        ChanState::Lost(w) | ChanState::Down(w) => Some((c.to_string(), w.clone())),
                    })
                    .collect(),
            ),
            None => (0, 0, BTreeMap::new()),
        };
        Status {
            state: state.name(),
            describe: state.describe(),
            host: self.settings.shown_host(),
            since: self.obs.since,
            established: self.obs.established.filter(|_| run.is_some()),
            channels_up: up,
            channels_total: total,
            channels_down: down,
            attempt,
            attempt_budget: self.sup.attempt_budget(),
            next_attempt_at: self
                .obs
                .next_attempt_at
                .filter(|_| matches!(state, State::Pending { .. })),
            reconnects: self.sup.reconnect_count(),
            last_disconnect: self.obs.last_disconnect.clone(),
            ticket_valid_until: self.sup.ticket_valid_until(),
            counts: self.obs.counts.clone(),
            agent_connected: run.and_then(|r| r.agent),
            display: None,
        }
    }

    /// Notes when the state (or the attempt) changed, for `status`.
    fn observe(&mut self, now: Now) {
        let state = self.sup.state();
        let key = (
            state.name(),
            match state {
                State::Connecting { attempt } | State::Pending { attempt, .. } => Some(*attempt),
                _ => None,
            },
        );
        if self.obs.key == Some(key) {
            return;
        }
        self.obs.key = Some(key);
        self.obs.since = Some(now.unix);
        match state {
            State::Connected { .. } => self.obs.established = Some(now.unix),
            State::Pending { next_at, .. } => {
                let ahead = next_at.saturating_duration_since(now.mono);
                self.obs.next_attempt_at = Some(now.unix + ahead.as_secs_f64());
            }
            _ => {}
        }
    }

    /// STATUS from the supervisor's state and, when connected, the channels.
    fn send_status(&mut self) {
        let mut s = self.sup.describe();
        if let (State::Connected { .. }, Some(run)) = (self.sup.state(), &self.running) {
            let up = run
                .channels
                .values()
                .filter(|c| **c == ChanState::Up)
                .count();
            let down: Vec<String> = run
                .channels
                .iter()
                .filter_map(|(c, st)| match st {
                    ChanState::Up => None,
                    ChanState::Lost(w) | ChanState::Down(w) => Some(format!("{c} ({w})")),
                })
                .collect();
            let host = self.settings.shown_host();
            s = if run.channels.is_empty() {
                format!("connected to {host}: linking channels")
            } else if down.is_empty() {
                format!("connected: {up} channels linked to {host}")
            } else {
                format!(
                    "connected: {up} of {} channels linked to {host}; degraded: {} down",
                    run.channels.len(),
                    down.join(", ")
                )
            };
            let n = self.sup.reconnect_count();
            if n > 0 {
                s.push_str(&format!("; reconnects: {n}"));
            }
        } else if matches!(self.sup.state(), State::WaitingForTicket { .. }) {
            s = format!(
                "{s}: waiting for a fresh ticket (a new {} or SIGHUP)",
                self.opts.vv_path.display()
            );
        }
        self.status_line(s);
    }

    fn status_line(&mut self, s: String) {
        if s != self.status {
            self.status = s.clone();
            self.effects.push_back(Effect::Notify(Notice::Status(s)));
        }
    }
}

/// A Proxmox ticket that states no expiry dies about 30 s after minting: with a
/// refresh command, the settings say so, so that a reconnect refreshes first.
fn imply_expiry(s: &mut ConnectionSettings, config: &Config, now: Now) {
    let can_refresh = !config.reconnect.refresh_command.is_empty();
    if let Some(v) = crate::reconnect::implied_valid_until(s, can_refresh, now.unix) {
        info!(
            "Proxmox ticket: taken to expire at {} ({} s after reading); a reconnect after that runs the refresh command first",
            crate::reconnect::format_unix_utc(v),
            crate::reconnect::PROXMOX_TICKET_SECS
        );
        s.ticket_valid_until = Some(v);
    }
}
