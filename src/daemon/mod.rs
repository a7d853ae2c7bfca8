//! The daemon's thin tokio shell around [`core::DaemonCore`]: it turns signals,
//! session events, timers and the results of blocking work into core inputs, and
//! carries out the core's effects — never awaiting one in the loop. Anything that
//! can block (reading the .vv and the TLS roots, writing a report, the refresh
//! child, stat of the .vv) runs off the loop and reports back through one
//! unbounded queue; a stopped session is aborted after a grace period, never
//! detached; the exit is bounded whatever is still in flight.

pub mod core;
mod env;
mod idle_cut;
mod metrics_writer;
mod migration;
pub mod status;
#[cfg(test)]
mod tests;
mod vv_watch;

pub use self::core::{DaemonCore, Effect, Input, LoadError, Loaded, Options, Origin, Signal};
pub use env::{Env, Stamp, VvRead};

use crate::cli::RunArgs;
use crate::config::Config;
use crate::exit;
use crate::reconnect::Now;
use crate::report::{self, LogRing, SharedCapture};
use crate::session::{self, SessionCtx, SessionEnd, SessionEvent, Stop};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// A .vv read (or a stat of it) that takes longer than this fails: a FIFO with
/// no writer, or stalled storage, must not hold anything up. Building a
/// migration target's TLS material is bounded the same way.
pub const VV_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A stopped session gets this long to say goodbye before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// After the loop ends: how long sessions and reports in flight may still take.
/// With the runtime's own bounded shutdown the process is gone within 2 s.
pub const EXIT_GRACE: Duration = Duration::from_millis(1200);
/// How often the .vv path is checked while waiting for a ticket, where its
/// directory cannot be watched (see `vv_watch`).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs spiced until it stops; returns the process exit code (see `exit`).
pub fn main(args: &RunArgs) -> u8 {
    let (config, missing_config) = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            // Logging is configured by this file: an error entry without it.
            crate::logging::direct(3, &e.to_string());
            return exit::CONFIG;
        }
    };
    let ring = LogRing::new(config.report.log_lines);
    let hub = crate::control::Hub::default();
    let events = crate::control::EventLayer::new(hub.clone());
    crate::logging::init(
        &config.log,
        Some(tracing_subscriber::Layer::and_then(ring.clone(), events)),
    );
    let Some(vv_path) = args.vv.clone() else {
        error!("no --vv FILE given");
        return exit::CONFIG;
    };
    if let Some(p) = missing_config {
        // --config-if-exists: say so, since a misnamed file would look the same.
        info!("no {}: every option has its default", p.display());
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    let spool = report::resolve_spool_dir(args.spool.as_deref(), &config.report);
    let code = rt.block_on(async move {
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        if let Err(e) = env::forward_signals(sig_tx) {
            error!("cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
        let opts = Options {
            vv_path,
            watchdog: crate::systemd::watchdog_interval(),
            spool,
        };
        run(Arc::new(config), opts, Env::real(ring, hub), sig_rx).await
    });
    // Blocking work still running (a stuck read, a slow disk) is abandoned.
    rt.shutdown_timeout(Duration::from_millis(300));
    code
}

/// What comes back to the loop. Never dropped: every producer is bounded in
/// number (one per session, read, report or stat in flight).
enum Msg {
    Session(u64, SessionEvent),
    Ended(u64, Box<SessionEnd>),
    /// A .vv read finished.
    Read(Origin, ReadOutcome),
    /// The refresh command run finished.
    Refreshed(u64, Result<Box<Loaded>, String>),
    Report(Result<PathBuf, String>),
    Stamp(Option<Stamp>),
    /// A metrics file write finished (told only when the loop asked).
    MetricsDone,
    /// A readiness check finished.
    Probed(crate::link::Probe),
    /// A migration target's settings for this plan are built.
    Prepared(u64, Result<Box<Loaded>, String>),
    /// Linking at a migration target ahead of the move for this plan finished.
    Prelinked(u64, Result<Prelinks, String>),
    /// The inotify watch of the .vv's directory is set up (or not).
    VvWatch(Result<std::os::fd::OwnedFd, String>),
}

/// How the loop notices a new .vv while waiting for a ticket.
enum Watch {
    Off,
    /// The watch is being set up (off the loop); the path is polled meanwhile.
    Opening,
    Inotify(vv_watch::VvWatch),
    Polling,
}

/// Resolves when the watch saw something happen to the .vv; never for the
/// other states.
async fn watch_changed(w: &mut Watch) -> std::io::Result<()> {
    match w {
        Watch::Inotify(v) => v.changed().await,
        _ => std::future::pending().await,
    }
}

/// What a .vv read brought back.
struct ReadOutcome {
    /// The file read, when known.
    stamp: Option<Stamp>,
    result: Result<Box<Loaded>, LoadError>,
}

type Prelinks = HashMap<crate::wire::ChannelId, session::Parked>;

struct SessionTask {
    stop: watch::Sender<Stop>,
    cmds: mpsc::Sender<session::SessionCmd>,
    abort: AbortHandle,
    capture: Option<SharedCapture>,
    /// Aborted at this time if it has not ended.
    abort_at: Option<Instant>,
    /// Told to stop: a new session waits for its end.
    stopping: bool,
}

/// A session start waiting for the previous session's end.
struct PendingStart {
    generation: u64,
    settings: Arc<crate::vv::ConnectionSettings>,
    config: Arc<Config>,
    tls: Option<Arc<crate::link::TlsSetup>>,
    adopt: Option<u64>,
}

struct Shell {
    config: Arc<Config>,
    opts_vv: PathBuf,
    env: Env,
    tx: mpsc::UnboundedSender<Msg>,
    sessions: HashMap<u64, SessionTask>,
    reports_in_flight: usize,
    /// Blocking reads of the .vv that have not returned (stuck on a FIFO?).
    stuck_reads: Arc<AtomicUsize>,
    stat_in_flight: bool,
    /// A look at the path was asked for while one was in flight.
    stat_again: bool,
    /// The .vv file last read or seen at the path.
    stamp: Option<Stamp>,
    pending_start: Option<PendingStart>,
    /// Live traffic totals every session adds to (metrics).
    traffic: crate::channel::counters::Traffic,
    /// The display mirror's screen; outlives sessions (the last frame).
    screen: crate::display::screen::Screen,
    /// What `status` answers; sent on every change.
    status_tx: watch::Sender<Arc<status::Status>>,
    /// The metrics file and when to write it.
    metrics: Option<MetricsFile>,
    /// Links made at a migration target for a plan, kept for the session
    /// that moves there.
    prelinks: Option<(u64, Prelinks)>,
    /// Linking at a migration target for a plan, in flight.
    prelinking: Option<(u64, AbortHandle)>,
    /// The last refresh command run started.
    refresh_job: Option<AbortHandle>,
    /// The process's wakeup planning, shared with every session.
    pacer: Arc<crate::wake::Pacer>,
}

struct MetricsFile {
    path: Arc<PathBuf>,
    schedule: crate::metrics::Schedule,
    /// The last write failed (one warning per failing streak).
    failing: bool,
    /// None: the thread could not be started (every write fails).
    writer: Option<metrics_writer::Writer>,
    /// The writer tells the loop when its write ends (`Msg::MetricsDone`).
    asked: bool,
}

impl MetricsFile {
    fn new(path: PathBuf) -> MetricsFile {
        let path = Arc::new(path);
        let writer = metrics_writer::Writer::spawn(path.clone(), crate::metrics::write_atomic)
            .map_err(|e| warn!("cannot start the metrics writer: {e}"))
            .ok();
        MetricsFile {
            path,
            schedule: crate::metrics::Schedule::new(Instant::now()),
            failing: false,
            writer,
            asked: false,
        }
    }
}

/// The loop. `signals` carries SIGTERM/SIGINT/SIGHUP/SIGUSR1 (tests inject them).
pub async fn run(
    config: Arc<Config>,
    opts: Options,
    env: Env,
    mut signals: mpsc::UnboundedReceiver<Signal>,
) -> u8 {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Until the core exists (the first .vv read), `status` says so.
    let (status_tx, status_rx) = watch::channel(Arc::new(status::Status {
        state: "idle",
        describe: "starting: reading the .vv".into(),
        ..status::Status::default()
    }));
    // The control socket first: a path that cannot be used is a config error.
    let (reconnect_tx, mut reconnect_rx) = mpsc::channel::<()>(4);
    let screen = if config.display.mirror {
        crate::display::screen::Screen::on(config.display.limits(), config.display.stale_after())
    } else {
        crate::display::screen::Screen::off()
    };
    let _dashboard = crate::display::dashboard::start(&screen, &config.display);
    let _control = match &config.control.socket {
        Some(path) => match crate::control::bind(path) {
            Ok(listener) => {
                let ctx = crate::control::ServerCtx {
                    instance: Arc::from(env.instance.as_str()),
                    status: status_rx,
                    hub: env.hub.clone(),
                    reconnect: reconnect_tx,
                    screen: screen.clone(),
                };
                info!("control socket listening on {}", path.display());
                Some(ControlGuard {
                    task: tokio::spawn(crate::control::serve(listener, ctx)),
                    path: path.clone(),
                })
            }
            Err(e) => {
                error!("{e}");
                return exit::CONFIG;
            }
        },
        None => None,
    };
    let pacer = crate::wake::Pacer::start((env.alarm)());
    let mut shell = Shell {
        config: config.clone(),
        opts_vv: opts.vv_path.clone(),
        env,
        tx,
        sessions: HashMap::new(),
        reports_in_flight: 0,
        stuck_reads: Arc::new(AtomicUsize::new(0)),
        stat_in_flight: false,
        stat_again: false,
        stamp: None,
        pending_start: None,
        traffic: Default::default(),
        screen,
        status_tx,
        metrics: config.metrics.textfile.clone().map(MetricsFile::new),
        prelinks: None,
        prelinking: None,
        refresh_job: None,
        pacer,
    };
    // The first read, off the loop and bounded like every other. Signals keep
    // coming meanwhile: only SIGTERM/SIGINT mean anything yet.
    let read = shell.read_job().run(true);
    tokio::pin!(read);
    let mut signals_open = true;
    let first = loop {
        tokio::select! {
            r = &mut read => break r,
            sig = signals.recv(), if signals_open => match sig {
                Some(Signal::Terminate) => {
                    info!("stop requested before the .vv was read");
                    return exit::OK;
                }
                // The path is looked at once the read is done: a file renamed
                // into place meanwhile is read then.
                Some(Signal::Hangup) => info!("SIGHUP while the .vv is being read: a newer file is read after it"),
                Some(Signal::Reconnect) => info!("SIGUSR1 while the .vv is being read: the first connect follows it"),
                None => signals_open = false,
            },
        }
    };
    let loaded = match first.result {
        Ok(l) => l,
        Err(e) => {
            error!("{}", e.message);
            return exit::CONFIG;
        }
    };
    for w in &loaded.warnings {
        warn!("{w}");
    }
    shell.stamp = first.stamp;
    let mut core = DaemonCore::new(config, *loaded, opts, Now::system());
    core.start(Now::system());
    if shell.stamp.is_some() {
        shell.stat_vv();
    }
    let mut watch_tick = tokio::time::interval(WATCH_EVERY);
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status: Option<status::Status> = None;
    // The daemon's timers (the core's, the watchdog, the metrics rewrite, a
    // stop's grace) are one slot of the process's wakeup planning: they ride
    // on wakeups that happen anyway, and the one alarm rings only for them.
    let slot = shell.pacer.slot();
    let mut watch = Watch::Off;
    loop {
        while let Some(e) = core.poll_effect() {
            if let Effect::Exit(code) = e {
                shell.observe(&core, &mut last_status);
                shell.finish(&mut core, &mut rx).await;
                return code;
            }
            shell.execute(e);
        }
        shell.collect_metrics();
        shell.observe(&core, &mut last_status);
        slot.set(shell.window(&core), None);
        let watching = core.watching_vv();
        match (&watch, watching) {
            (Watch::Off, true) => {
                shell.open_vv_watch();
                watch = Watch::Opening;
            }
            (Watch::Off, false) | (_, true) => {}
            (_, false) => watch = Watch::Off,
        }
        let polling = watching && matches!(watch, Watch::Opening | Watch::Polling);
        let woke = tokio::select! {
            biased;
            Some(sig) = signals.recv() => {
                core.handle(Input::Signal(sig), Now::system());
                None
            }
            Some(()) = reconnect_rx.recv() => {
                info!("control socket: reconnect requested");
                core.handle(Input::Signal(Signal::Reconnect), Now::system());
                None
            }
            Some(m) = rx.recv() => {
                match m {
                    Msg::Session(generation, event) => core.handle(Input::Session { generation, event }, Now::system()),
                    Msg::Ended(generation, end) => {
                        core.handle(Input::SessionEnded { generation, end }, Now::system());
                        // Its report (if any) is queued now and needs the capture.
                        while let Some(e) = core.poll_effect() {
                            if let Effect::Exit(code) = e {
                                shell.sessions.remove(&generation);
                                shell.finish(&mut core, &mut rx).await;
                                return code;
                            }
                            shell.execute(e);
                        }
                        shell.ended(generation);
                    }
                    Msg::Read(origin, out) => {
                        core.handle(Input::Loaded { origin, result: out.result }, Now::system());
                        // A file renamed into place during the read: seen by a
                        // look at the path now.
                        if out.stamp.is_some() {
                            shell.stamp = out.stamp;
                            shell.stat_vv();
                        }
                    }
                    Msg::Refreshed(run, result) => core.handle(Input::Refreshed { run, result }, Now::system()),
                    Msg::Probed(seen) => core.handle(Input::Probed(seen), Now::system()),
                    Msg::Prepared(plan, result) => core.handle(Input::MigrationPrepared { plan, result }, Now::system()),
                    Msg::Prelinked(plan, result) => {
                        let result = shell.prelinked(plan, result);
                        core.handle(Input::Prelinked { plan, result }, Now::system());
                    }
                    Msg::Report(r) => {
                        shell.reports_in_flight = shell.reports_in_flight.saturating_sub(1);
                        core.handle(Input::ReportDone(r), Now::system());
                    }
                    Msg::Stamp(s) => {
                        shell.stat_in_flight = false;
                        if s.is_some() && s != shell.stamp {
                            shell.stamp = s;
                            core.handle(Input::VvChanged, Now::system());
                        }
                        if std::mem::take(&mut shell.stat_again) {
                            shell.stat_vv();
                        }
                    }
                    Msg::MetricsDone => shell.metrics_told(),
                    Msg::VvWatch(r) => {
                        if matches!(watch, Watch::Opening) {
                            let w = r.and_then(|fd| {
                                vv_watch::VvWatch::new(fd, &shell.opts_vv).map_err(|e| e.to_string())
                            });
                            watch = match w {
                                Ok(w) => Watch::Inotify(w),
                                Err(e) => {
                                    info!("cannot watch the directory of {} ({e}): checking it every second", shell.opts_vv.display());
                                    Watch::Polling
                                }
                            };
                            // Whatever happened while it was set up.
                            shell.stat_vv();
                        }
                    }
                }
                None
            }
            wake = slot.kicked() => Some(wake),
            r = watch_changed(&mut watch), if watching => {
                match r {
                    Ok(()) => shell.stat_vv(),
                    Err(e) => {
                        info!("the watch of {} failed ({e}): checking it every second", shell.opts_vv.display());
                        watch = Watch::Polling;
                    }
                }
                None
            }
            _ = watch_tick.tick(), if polling => {
                shell.stat_vv();
                None
            }
        };
        match woke {
            Some(wake) => shell.on_wake(&mut core, &wake),
            // The loop ran for an input: whatever falls due soon rides on it.
            None => {
                slot.awake(Instant::now(), false);
            }
        }
    }
}

/// The control socket's accept loop, ended (and its socket file removed)
/// with the daemon loop.
struct ControlGuard {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Shell {
    /// After every input: a changed status goes to `status` readers and
    /// subscribers and marks the metrics file for a rewrite; a due rewrite
    /// starts (off the loop, one at a time).
    fn observe(&mut self, core: &DaemonCore, last: &mut Option<status::Status>) {
        let st = core.status();
        if last.as_ref() != Some(&st) {
            let now = crate::time::unix_now();
            if self.env.hub.subscribers() > 0 {
                let mut pushed = st.clone();
                pushed.display = self.screen.view();
                self.env.hub.publish(crate::control::status_line(
                    &self.env.instance,
                    &pushed,
                    now,
                ));
            }
            self.status_tx.send_replace(Arc::new(st.clone()));
            if let Some(m) = &mut self.metrics {
                m.schedule.changed();
            }
            *last = Some(st);
        }
        self.write_metrics_if_due(None);
    }

    /// When the daemon's timers need the loop: the core's deadlines (exact),
    /// the watchdog and the metrics rewrite (riding a wakeup when they can),
    /// a stopped session's grace (exact).
    fn window(&self, core: &DaemonCore) -> Option<crate::wake::Window> {
        use crate::wake::{merge, Window};
        let abort_at = self.sessions.values().filter_map(|s| s.abort_at).min();
        [
            core.poll_timeout().map(Window::at),
            core.watchdog_window(),
            self.metrics
                .as_ref()
                .filter(|m| !m.asked)
                .map(|m| m.schedule.window()),
            abort_at.map(Window::at),
        ]
        .into_iter()
        .fold(None, merge)
    }

    /// The planning says the daemon's timers run now (`wake`: the wakeup).
    fn on_wake(&mut self, core: &mut DaemonCore, wake: &crate::wake::Wake) {
        let now = Now::system();
        if core.poll_timeout().is_some_and(|t| now.mono >= t) {
            core.handle_timeout(now);
        }
        if core.watchdog_window().is_some_and(|w| w.ready(wake)) {
            core.watchdog_early(now);
        }
        if self
            .sessions
            .values()
            .any(|s| s.abort_at.is_some_and(|t| now.mono >= t))
        {
            self.abort_overdue();
        }
        self.collect_metrics();
        self.write_metrics_if_due(Some(wake));
        // A write still running when the next one falls due (a stalled
        // disk): from now on its end wakes the loop.
        if let Some(m) = &self.metrics {
            let overdue = now.mono >= m.schedule.window().due;
            if overdue && m.schedule.in_flight() {
                self.ask_metrics();
            }
        }
    }

    /// Takes the end of a metrics write, if one ended since the last look.
    fn collect_metrics(&mut self) {
        if let Some(r) = self
            .metrics
            .as_ref()
            .and_then(|m| m.writer.as_ref())
            .and_then(|w| w.take_done())
        {
            self.metrics_written(r);
        }
    }

    /// The writer tells the loop when the write in flight ends.
    fn ask_metrics(&mut self) {
        let Some(m) = &mut self.metrics else {
            return;
        };
        if m.asked {
            return;
        }
        if let Some(w) = &m.writer {
            m.asked = true;
            let tx = self.tx.clone();
            w.tell_when_done(move || {
                let _ = tx.send(Msg::MetricsDone);
            });
        }
    }

    /// The writer told the loop its write ended.
    fn metrics_told(&mut self) {
        if let Some(m) = &mut self.metrics {
            m.asked = false;
        }
        self.collect_metrics();
        self.write_metrics_if_due(None);
    }

    fn write_metrics_if_due(&mut self, wake: Option<&crate::wake::Wake>) {
        let Some(m) = &mut self.metrics else {
            return;
        };
        if !m.schedule.poll_write(Instant::now(), wake) {
            return;
        }
        let traffic = self.traffic.snapshot();
        let mut status = (*self.status_tx.borrow().clone()).clone();
        status.display = self.screen.view();
        let text = crate::metrics::render(&crate::metrics::Snapshot {
            instance: &self.env.instance,
            version: env!("CARGO_PKG_VERSION"),
            status: &status,
            traffic: &traffic,
            now: crate::time::unix_now(),
        });
        match &m.writer {
            Some(w) => w.submit(text),
            None => self.metrics_written(Err("no writer thread".into())),
        }
    }

    /// The metrics file still has a write running or due (the exit waits).
    fn metrics_pending(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.schedule.pending())
    }

    fn metrics_written(&mut self, r: Result<(), String>) {
        let Some(m) = &mut self.metrics else {
            return;
        };
        m.schedule.written();
        match r {
            Ok(()) => {
                if m.failing {
                    info!("metrics file {} written again", m.path.display());
                }
                m.failing = false;
            }
            Err(e) if !m.failing => {
                m.failing = true;
                warn!(
                    "cannot write the metrics file {}: {e} (further failures are logged at debug level)",
                    m.path.display()
                );
            }
            Err(e) => tracing::debug!("metrics file {} not written: {e}", m.path.display()),
        }
    }

    fn read_job(&self) -> ReadJob {
        ReadJob {
            path: self.opts_vv.clone(),
            config: self.config.clone(),
            load: self.env.load_vv.clone(),
            stuck: self.stuck_reads.clone(),
        }
    }

    fn execute(&mut self, e: Effect) {
        match e {
            Effect::StartSession {
                generation,
                settings,
                config,
                tls,
                adopt,
            } => {
                // One session at a time on the server: a new link while the old
                // one is still being torn down races spice-server's own teardown
                // (which crashed QEMU here). The start waits for the old end,
                // bounded by STOP_GRACE.
                let start = PendingStart {
                    generation,
                    settings,
                    config,
                    tls,
                    adopt,
                };
                if self.sessions.values().any(|s| s.stopping) {
                    self.pending_start = Some(start);
                } else {
                    self.start_session(start);
                }
            }
            Effect::StopSession { generation, how } => {
                if self
                    .pending_start
                    .as_ref()
                    .is_some_and(|p| p.generation == generation)
                {
                    self.pending_start = None;
                }
                if let Some(s) = self.sessions.get_mut(&generation) {
                    s.stopping = true;
                    let _ = s.stop.send(how);
                    s.abort_at.get_or_insert(Instant::now() + STOP_GRACE);
                }
            }
            Effect::ReadVv { origin } => {
                let read = self.read_job();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = read.run(true).await;
                    let _ = tx.send(Msg::Read(origin, r));
                });
            }
            Effect::CheckVv => self.stat_vv(),
            Effect::PrepareMigration { plan, settings } => {
                let config = self.config.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let job = tokio::task::spawn_blocking(move || env::prepare(*settings, &config));
                    let r = match tokio::time::timeout(VV_READ_TIMEOUT, job).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("loading the TLS roots did not finish in time".into()),
                    };
                    let _ = tx.send(Msg::Prepared(plan, r.map(Box::new)));
                });
            }
            Effect::Prelink {
                plan,
                generation,
                settings,
                tls,
                session_id,
                channels,
                deadline,
            } => {
                self.drop_all_prelinks();
                let ctx = self.session_ctx(generation, settings, self.config.clone(), tls, None);
                let tx = self.tx.clone();
                let job = tokio::spawn(async move {
                    let r = session::prelink(ctx, session_id, channels, deadline).await;
                    let _ = tx.send(Msg::Prelinked(plan, r));
                });
                self.prelinking = Some((plan, job.abort_handle()));
            }
            Effect::MigrateReply { generation, linked } => {
                let sent = self.sessions.get(&generation).is_some_and(|s| {
                    s.cmds
                        .try_send(session::SessionCmd::MigrateReply { linked })
                        .is_ok()
                });
                if !sent {
                    warn!("session {generation} is gone: the server gets no answer to its migration announcement");
                }
            }
            Effect::DropPrelinked { plan } => self.drop_prelinks(plan),
            Effect::RunRefresh { run, secrets } => {
                // Dropping a run's future kills its child.
                if let Some(old) = self.refresh_job.take() {
                    old.abort();
                }
                let fut = (self.env.refresh)(self.config.clone(), secrets);
                let tx = self.tx.clone();
                let job = tokio::spawn(async move {
                    let r = fut.await.map(Box::new);
                    let _ = tx.send(Msg::Refreshed(run, r));
                });
                self.refresh_job = Some(job.abort_handle());
            }
            Effect::WriteReport(mut job) => {
                if self.config.display.report_last_frame {
                    job.last_frame = self.screen.shot();
                }
                let capture = self
                    .sessions
                    .get(&job.generation)
                    .and_then(|s| s.capture.clone());
                let write = self.env.write_report.clone();
                let tx = self.tx.clone();
                self.reports_in_flight += 1;
                let blocking = tokio::task::spawn_blocking(move || write(*job, capture));
                tokio::spawn(async move {
                    let r = match blocking.await {
                        Ok(r) => r,
                        Err(e) => Err(format!("the report writer failed: {e}")),
                    };
                    let _ = tx.send(Msg::Report(r));
                });
            }
            Effect::Probe { settings, config } => {
                let tx = self.tx.clone();
                let connector = (self.env.connector)(settings.clone(), config, None);
                tokio::spawn(async move {
                    let seen = match crate::link::Target::plain(&settings) {
                        Some(target) => connector.probe(target, self::core::PROBE_EVERY).await,
                        None => crate::link::Probe::Unknown,
                    };
                    let _ = tx.send(Msg::Probed(seen));
                });
            }
            Effect::Notify(n) => self.env.notifier.notify(n),
            Effect::Exit(_) => {}
        }
    }

    /// A session ended: a start that waited for it goes now.
    fn ended(&mut self, generation: u64) {
        self.sessions.remove(&generation);
        if !self.sessions.values().any(|s| s.stopping) {
            if let Some(p) = self.pending_start.take() {
                self.start_session(p);
            }
        }
    }

    /// Linking for `plan` finished: its links are kept if that plan is still
    /// being linked for, else closed (a plan given up on meanwhile: its
    /// result may have been queued before the job was aborted).
    fn prelinked(&mut self, plan: u64, result: Result<Prelinks, String>) -> Result<usize, String> {
        let current = self.prelinking.as_ref().is_some_and(|(p, _)| *p == plan);
        if current {
            self.prelinking = None;
        }
        result.map(|links| {
            let n = links.len();
            if current {
                self.prelinks = Some((plan, links));
            } else {
                info!("closing {n} links made at the migration target for a plan given up on");
            }
            n
        })
    }

    /// Closes the links made at a migration target for `plan`, and stops
    /// making them.
    fn drop_prelinks(&mut self, plan: u64) {
        if self.prelinking.as_ref().is_some_and(|(p, _)| *p == plan) {
            self.drop_all_prelinks();
        }
        if self.prelinks.as_ref().is_some_and(|(p, _)| *p == plan) {
            self.drop_all_prelinks();
        }
    }

    /// Closes every link made at a migration target, and stops making them.
    fn drop_all_prelinks(&mut self) {
        if let Some((_, job)) = self.prelinking.take() {
            job.abort();
        }
        if let Some((_, links)) = self.prelinks.take() {
            info!("closing {} links made at the migration target", links.len());
        }
    }

    fn session_ctx(
        &self,
        generation: u64,
        settings: Arc<crate::vv::ConnectionSettings>,
        config: Arc<Config>,
        tls: Option<Arc<crate::link::TlsSetup>>,
        capture: Option<SharedCapture>,
    ) -> SessionCtx {
        SessionCtx {
            connector: (self.env.connector)(settings.clone(), config.clone(), tls),
            settings,
            config,
            capture: capture.map(|c| c as Arc<dyn crate::tap::CaptureSink>),
            start: Instant::now(),
            start_unix: crate::time::unix_now(),
            generation,
            traffic: self.traffic.clone(),
            adopted: None,
            screen: self.screen.clone(),
            pacer: self.pacer.clone(),
        }
    }

    fn start_session(&mut self, p: PendingStart) {
        let PendingStart {
            generation,
            settings,
            config,
            tls,
            adopt,
        } = p;
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let capture = config
            .report
            .enabled
            .then(|| report::Capture::shared(&config.report));
        let mut ctx = self.session_ctx(generation, settings, config, tls, capture.clone());
        if let Some(plan) = adopt {
            ctx.adopted = self
                .prelinks
                .take_if(|(p, _)| *p == plan)
                .map(|(_, links)| Arc::new(session::Adopted::new(links)));
        }
        self.drop_all_prelinks();
        let tx = self.tx.clone();
        let emit_tx = tx.clone();
        let emit = move |ev| {
            let _ = emit_tx.send(Msg::Session(generation, ev));
        };
        let inner = tokio::spawn(session::run(ctx, emit, stop_rx, cmd_rx));
        let abort = inner.abort_handle();
        tokio::spawn(async move {
            let end = match inner.await {
                Ok(end) => end,
                Err(e) if e.is_panic() => {
                    error!("the session task panicked (a bug in spiced)");
                    SessionEnd::panicked()
                }
                Err(_) => SessionEnd::stopped(),
            };
            let _ = tx.send(Msg::Ended(generation, Box::new(end)));
        });
        self.sessions.insert(
            generation,
            SessionTask {
                stop: stop_tx,
                cmds: cmd_tx,
                abort,
                capture,
                abort_at: None,
                stopping: false,
            },
        );
    }

    fn abort_overdue(&mut self) {
        let now = Instant::now();
        for (g, s) in &mut self.sessions {
            if s.abort_at.is_some_and(|t| now >= t) {
                warn!("session {g} did not stop within {STOP_GRACE:?}; aborting it");
                s.abort.abort();
                s.abort_at = None;
            }
        }
    }

    /// Sets up the inotify watch of the .vv's directory, off the loop and
    /// bounded like a read; the result comes back as `Msg::VvWatch`.
    fn open_vv_watch(&self) {
        let path = self.opts_vv.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || vv_watch::open(&path));
            let r = match tokio::time::timeout(VV_READ_TIMEOUT, job).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("setting it up did not finish in time".into()),
            };
            let _ = tx.send(Msg::VvWatch(r));
        });
    }

    /// One stat of the .vv at a time, off the loop; one asked for meanwhile
    /// follows it.
    fn stat_vv(&mut self) {
        if self.stat_in_flight {
            self.stat_again = true;
            return;
        }
        self.stat_in_flight = true;
        let path = self.opts_vv.clone();
        let stamp = self.env.stamp;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || stamp(&path));
            let s = match tokio::time::timeout(VV_READ_TIMEOUT, job).await {
                Ok(Ok(s)) => s,
                _ => None,
            };
            let _ = tx.send(Msg::Stamp(s));
        });
    }

    /// The loop is over: sessions say goodbye and reports in flight finish, both
    /// bounded by [`EXIT_GRACE`].
    async fn finish(&mut self, core: &mut DaemonCore, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        for s in self.sessions.values() {
            let _ = s.stop.send(Stop::Polite);
        }
        // The final state (stopped, gave up) reaches the metrics file too.
        self.collect_metrics();
        self.write_metrics_if_due(None);
        let wait = async {
            while !self.sessions.is_empty() || self.reports_in_flight > 0 || self.metrics_pending()
            {
                if self.metrics_pending() {
                    self.ask_metrics();
                }
                match rx.recv().await {
                    Some(Msg::Ended(g, _)) => {
                        self.sessions.remove(&g);
                    }
                    Some(Msg::MetricsDone) => self.metrics_told(),
                    Some(Msg::Report(r)) => {
                        self.reports_in_flight = self.reports_in_flight.saturating_sub(1);
                        core.handle(Input::ReportDone(r), Now::system());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        };
        if tokio::time::timeout(EXIT_GRACE, wait).await.is_err() {
            warn!(
                "exiting with {} session(s) and {} report(s) still in flight",
                self.sessions.len(),
                self.reports_in_flight
            );
        }
        for s in self.sessions.values() {
            s.abort.abort();
        }
    }
}

/// A .vv re-read, off the loop and bounded (see [`VV_READ_TIMEOUT`]).
struct ReadJob {
    path: PathBuf,
    config: Arc<Config>,
    load: env::LoadVv,
    stuck: Arc<AtomicUsize>,
}

impl ReadJob {
    async fn run(self, delete: bool) -> ReadOutcome {
        let failed = |message: String| ReadOutcome {
            stamp: None,
            result: Err(message.into()),
        };
        if self.stuck.load(Ordering::Relaxed) > 0 {
            return failed(format!(
                "an earlier read of {} never returned (a FIFO without a writer, or stalled storage)",
                self.path.display()
            ));
        }
        self.stuck.fetch_add(1, Ordering::Relaxed);
        let (path, config, load, stuck) = (self.path.clone(), self.config, self.load, self.stuck);
        let job = tokio::task::spawn_blocking(move || {
            let r = load(&path, &config, delete);
            stuck.fetch_sub(1, Ordering::Relaxed);
            r
        });
        match tokio::time::timeout(VV_READ_TIMEOUT, job).await {
            Ok(Ok(r)) => ReadOutcome {
                stamp: r.stamp,
                result: r.result.map(Box::new),
            },
            Ok(Err(e)) => failed(format!("reading the .vv failed: {e}")),
            Err(_) => failed(format!(
                "reading {} did not finish within {} s (a FIFO without a writer, or stalled storage)",
                self.path.display(),
                VV_READ_TIMEOUT.as_secs()
            )),
        }
    }
}
