//! The daemon loop: it owns the reconnect supervisor and drives everything else
//! from its decisions — starting sessions, writing disconnect reports off the hot
//! path, telling systemd, handling signals, fresh tickets and the exit code.
//!
//! Every wait here is a `select!` over things that cannot block each other: the
//! session's event queue, the session's end, the supervisor's next deadline,
//! signals, the .vv watcher, the refresh command and the watchdog tick.

use crate::cli::RunArgs;
use crate::config::Config;
use crate::exit;
use crate::link::error::shown_host;
use crate::link::{self, TlsSetup, TransportError};
use crate::reconnect::{
    Action, FailClass, GiveUpReason, Input, Now, State, Supervisor, TicketInfo,
};
use crate::report::{
    self, Capture, DisconnectCause, LogRing, ReportInput, Reporter, SharedCapture,
};
use crate::session::{
    self, BoxStream, Cause, ConnectFailure, ConnectFuture, Connector, Failure, SessionCtx,
    SessionEnd, SessionEvent, Stop,
};
use crate::systemd::{Notice, Notifier, SdNotify};
use crate::vv::{self, ConnectionSettings};
use crate::wire::link::LinkErrorCode;
use crate::wire::ChannelId;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// Runs spiced until it stops; returns the process exit code (see `exit`).
pub fn main(args: &RunArgs) -> u8 {
    let config = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spiced: {e}");
                return exit::CONFIG;
            }
        },
        None => Config::default(),
    };
    let ring = LogRing::new(config.report.log_lines);
    crate::logging::init(&config.log.filter, Some(ring.clone()));
    let Some(vv_path) = args.vv.clone() else {
        error!("no --vv FILE given");
        return exit::CONFIG;
    };
    let parsed = match vv::load(&vv_path, true) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    for w in &parsed.warnings {
        warn!("{w}");
    }
    let tls = match tls_setup(&parsed.settings, &config) {
        Ok(t) => t,
        Err(e) => {
            error!("{}: {e}", vv_path.display());
            return exit::CONFIG;
        }
    };
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
    let daemon = Daemon {
        reporter: Reporter::new(spool, &config.report),
        config: Arc::new(config),
        vv_path,
        settings: Arc::new(parsed.settings),
        tls,
        notifier: Box::new(SdNotify),
        ring,
        reports: mpsc::channel(16),
        reports_in_flight: 0,
        started: tokio::time::Instant::now(),
    };
    rt.block_on(daemon.run())
}

/// TLS material, built once per .vv — only when the .vv has a tls-port.
fn tls_setup(
    s: &ConnectionSettings,
    config: &Config,
) -> Result<Option<Arc<TlsSetup>>, TransportError> {
    if s.tls_port.is_none() {
        return Ok(None);
    }
    TlsSetup::new(s, &config.tls).map(|t| Some(Arc::new(t)))
}

/// Opens channel streams with the transport (TCP, proxy, TLS) of `link`.
struct TransportConnector {
    settings: Arc<ConnectionSettings>,
    config: Arc<Config>,
    tls: Option<Arc<TlsSetup>>,
}

fn transport_failure(e: TransportError) -> ConnectFailure {
    let cause = match e.cause() {
        "tls_error" | "cert_error" => Cause::TlsError,
        _ => Cause::ConnectFailed,
    };
    ConnectFailure {
        message: e.to_string(),
        cause,
        io_kind: e.io_kind(),
        transient: e.is_transient(),
    }
}

impl Connector for TransportConnector {
    fn connect(&self, channel: ChannelId, tls: bool) -> ConnectFuture<'_> {
        Box::pin(async move {
            let port = if tls {
                self.settings.tls_port
            } else {
                self.settings.port
            };
            let Some(port) = port else {
                return Err(ConnectFailure {
                    message: format!(
                        "{channel} needs {} but the .vv has no {}",
                        if tls { "TLS" } else { "a plain port" },
                        if tls { "tls-port" } else { "port" }
                    ),
                    cause: Cause::ConnectFailed,
                    io_kind: None,
                    transient: false,
                });
            };
            let target = link::Target {
                host: self.settings.host.clone(),
                port,
                tls,
            };
            let s = link::connect(&self.settings, &self.config, self.tls.as_deref(), &target)
                .await
                .map_err(transport_failure)?;
            let b: BoxStream = Box::new(s);
            Ok(b)
        })
    }
}

struct Daemon {
    config: Arc<Config>,
    vv_path: PathBuf,
    settings: Arc<ConnectionSettings>,
    tls: Option<Arc<TlsSetup>>,
    reporter: Reporter,
    notifier: Box<dyn Notifier>,
    ring: LogRing,
    reports: (
        mpsc::Sender<std::io::Result<PathBuf>>,
        mpsc::Receiver<std::io::Result<PathBuf>>,
    ),
    /// Reports being written right now.
    reports_in_flight: usize,
    /// The daemon's monotonic origin (report cooldown).
    started: tokio::time::Instant,
}

/// A session in flight.
struct Running {
    generation: u64,
    stop: watch::Sender<Stop>,
    capture: Option<SharedCapture>,
    start_unix: f64,
    server_port: u16,
    /// The session reported `Connected` to the supervisor.
    connected: bool,
}

/// What identifies a .vv file on disk, to notice a new one.
fn file_stamp(p: &Path) -> Option<(u64, u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.len(),
    ))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How the supervisor should read a failed connect attempt.
fn fail_class(f: &Failure) -> FailClass {
    if let Some(code) = f.link_code {
        return match code {
            LinkErrorCode::PermissionDenied => FailClass::PermissionDenied,
            LinkErrorCode::BadConnectionId => FailClass::BadConnectionId,
            LinkErrorCode::NeedSecured
            | LinkErrorCode::NeedUnsecured
            | LinkErrorCode::ChannelNotAvailable => FailClass::Config,
            other => FailClass::Protocol {
                code: Some(other.code()),
            },
        };
    }
    match f.cause {
        Cause::TlsError if !f.transient => FailClass::TlsVerification,
        Cause::ProtocolError => FailClass::Protocol { code: None },
        _ if !f.transient => FailClass::Config,
        _ => FailClass::Network,
    }
}

/// Runs the refresh command; its stdout is a fresh .vv.
async fn run_refresh(argv: Vec<String>, timeout: Duration) -> Result<vv::Parsed, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("reconnect.refresh_command is empty".into());
    };
    let child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("refresh command {prog}: cannot start: {e}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("refresh command {prog}: {e}")),
        Err(_) => {
            return Err(format!(
                "refresh command {prog} did not finish within {:.0} s (killed)",
                timeout.as_secs_f64()
            ))
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(format!(
            "refresh command {prog} failed ({}): {first}",
            out.status
        ));
    }
    if out.stdout.len() > vv::MAX_FILE_BYTES {
        return Err(format!(
            "refresh command {prog}: output larger than a .vv file may be"
        ));
    }
    vv::parse(&out.stdout, "refresh_command output").map_err(|e| e.to_string())
}

async fn sleep_until_opt(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn join_opt(j: &mut Option<JoinHandle<SessionEnd>>) -> Option<SessionEnd> {
    match j {
        Some(h) => h.await.ok(),
        None => std::future::pending().await,
    }
}

async fn oneshot_opt<T>(r: &mut Option<oneshot::Receiver<T>>) -> Option<T> {
    match r {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn shown_host(&self) -> String {
        shown_host(&self.settings.host, self.settings.password.as_ref())
    }

    fn status(&self, s: String) {
        self.notifier.notify(Notice::Status(s));
    }

    fn start_session(
        &mut self,
        generation: u64,
    ) -> (
        Running,
        JoinHandle<SessionEnd>,
        mpsc::Receiver<SessionEvent>,
    ) {
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let capture = self
            .config
            .report
            .enabled
            .then(|| Capture::shared(&self.config.report));
        let ctx = SessionCtx {
            settings: self.settings.clone(),
            config: self.config.clone(),
            connector: Arc::new(TransportConnector {
                settings: self.settings.clone(),
                config: self.config.clone(),
                tls: self.tls.clone(),
            }),
            capture: capture.clone().map(|c| c as Arc<dyn session::CaptureSink>),
            start: tokio::time::Instant::now(),
        };
        let server_port = self
            .settings
            .port
            .or(self.settings.tls_port)
            .unwrap_or(5900);
        let run = Running {
            generation,
            stop: stop_tx,
            capture,
            start_unix: unix_now(),
            server_port,
            connected: false,
        };
        (run, tokio::spawn(session::run(ctx, ev_tx, stop_rx)), ev_rx)
    }

    /// Stops a session and waits for it (bounded).
    async fn stop_session(
        run: Running,
        handle: JoinHandle<SessionEnd>,
        how: Stop,
    ) -> Option<SessionEnd> {
        let _ = run.stop.send(how);
        match tokio::time::timeout(Duration::from_secs(8), handle).await {
            Ok(Ok(end)) => Some(end),
            _ => None,
        }
    }

    /// Re-reads the .vv (SIGHUP or a new file). Keeps the old settings on error.
    fn reload(&mut self, why: &str) -> Option<TicketInfo> {
        let parsed = match vv::load(&self.vv_path, true) {
            Ok(p) => p,
            Err(e) => {
                warn!("{why}: cannot use the new .vv ({e}); keeping the current one");
                return None;
            }
        };
        self.apply_settings(parsed, why)
    }

    fn apply_settings(&mut self, parsed: vv::Parsed, why: &str) -> Option<TicketInfo> {
        for w in &parsed.warnings {
            warn!("{w}");
        }
        match tls_setup(&parsed.settings, &self.config) {
            Ok(t) => self.tls = t,
            Err(e) => {
                warn!("{why}: cannot use the new .vv ({e}); keeping the current one");
                return None;
            }
        }
        info!(
            "{why}: new connection settings for {}",
            shown_host(&parsed.settings.host, parsed.settings.password.as_ref())
        );
        let ticket = TicketInfo::from_settings(&parsed.settings);
        self.settings = Arc::new(parsed.settings);
        Some(ticket)
    }

    /// Writes the disconnect report for `end` (cooldown permitting), off the hot path.
    fn report(&mut self, run: &Running, end: &SessionEnd, sup: &Supervisor) {
        let Some(f) = &end.failure else { return };
        if !self.config.report.enabled {
            return;
        }
        let Some(skipped) = self.reporter.should_write(self.started.elapsed()) else {
            return;
        };
        let mut cause = DisconnectCause::new(
            f.channel.to_string(),
            f.cause.as_str().to_string(),
            f.message.clone(),
        );
        cause.error_kind = f.io_kind.clone();
        cause.keepalive_timeout_fired = f.cause == Cause::KeepaliveTimeout;
        cause.session_uptime_secs = end.uptime.as_secs_f64();
        cause.per_channel = end
            .counters
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        cause.auto_reconnect_count = sup.reconnect_count();
        cause.reconnect_state = sup.describe();
        cause.reports_skipped_since_last = skipped;
        let session = serde_json::json!({
            "server": {
                "name": end.info.name,
                "uuid": end.info.uuid,
                "session_id": end.info.session_id,
            },
            "offered_channels": end.info.offered,
            "not_linked": end.info.not_linked,
            "channels": end.info.channels,
            "dropped_events": end.info.dropped_events,
            "settings": self.settings.redacted_json(),
            "config": redacted_config(&self.config),
        });
        let capture = run
            .capture
            .as_ref()
            .and_then(|c| c.lock().ok().map(|mut g| g.take()));
        let mut secrets: Vec<crate::secret::Secret> =
            self.settings.password.iter().cloned().collect();
        if self.shown_host() != self.settings.host {
            secrets.push(crate::secret::Secret::new(self.settings.host.clone()));
        }
        let log_lines = self.ring.snapshot();
        let dir = self.reporter.dir().to_path_buf();
        let cfg = self.config.report.clone();
        let (port, start_unix, uptime) = (run.server_port, run.start_unix, end.uptime);
        let wall = SystemTime::now();
        // The result comes back through the loop (a failure warns once); if the
        // loop is gone by then, the result is dropped.
        let done = self.reports.0.clone();
        self.reports_in_flight += 1;
        let job = tokio::task::spawn_blocking(move || {
            let pcap = capture
                .map(|mut c| {
                    c.trim(uptime);
                    c.to_pcap(port, start_unix)
                })
                .unwrap_or_default();
            let input = ReportInput {
                cause,
                session,
                pcap,
                log_lines,
                secrets,
            };
            report::write_report(&dir, &cfg, &input, wall)
        });
        tokio::spawn(async move {
            let res = job
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let _ = done.try_send(res);
        });
    }

    fn report_done(&mut self, res: std::io::Result<PathBuf>) {
        self.reports_in_flight = self.reports_in_flight.saturating_sub(1);
        self.reporter.record_result(&res);
    }

    /// Feeds a finished session to the supervisor (and writes its report).
    fn session_ended(
        &mut self,
        run: &mut Running,
        end: SessionEnd,
        sup: &mut Supervisor,
    ) -> Vec<Action> {
        let now = Now::system();
        let mut actions = Vec::new();
        // MAIN_INIT came but its event was not read before the end: still say so.
        if end.connected && !run.connected {
            run.connected = true;
            actions.extend(sup.handle(
                Input::Connected {
                    generation: run.generation,
                },
                now,
            ));
        }
        let input = match &end.failure {
            None => None,
            // A whole session closed cleanly by the server counts as main's close
            // (that is what the takeover rule looks at); the report keeps the
            // channel that was noticed first.
            Some(f) if end.connected => Some(Input::Disconnected {
                generation: run.generation,
                channel: if end.server_closed_session {
                    ChannelId::MAIN
                } else {
                    f.channel
                },
                cause: format!("{}: {}", f.cause.as_str(), f.message),
                clean_close: f.cause == Cause::ServerClosed,
            }),
            Some(f) => Some(Input::ConnectFailed {
                class: fail_class(f),
                channel: f.channel,
                message: f.message.clone(),
            }),
        };
        if let Some(f) = &end.failure {
            if end.connected {
                warn!(channel = %f.channel, cause = f.cause.as_str(), "session lost after {:.1} s: {} failed first: {}", end.uptime.as_secs_f64(), f.channel, f.message);
            } else {
                warn!(channel = %f.channel, cause = f.cause.as_str(), "connect failed: {}", f.message);
            }
        }
        if let Some(i) = input {
            actions.extend(sup.handle(i, now));
        }
        self.report(run, &end, sup);
        actions
    }

    async fn run(mut self) -> u8 {
        let (Ok(mut sigterm), Ok(mut sigint), Ok(mut sighup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot install signal handlers");
            return exit::FAILURE;
        };
        let mut sup = Supervisor::from_config(
            &self.config.reconnect,
            TicketInfo::from_settings(&self.settings),
        );
        let mut actions: VecDeque<Action> = sup.start(Now::system()).into();
        // The running session, split so `select!` can borrow its parts apart.
        let mut running: Option<Running> = None;
        let mut join: Option<JoinHandle<SessionEnd>> = None;
        let mut events: Option<mpsc::Receiver<SessionEvent>> = None;
        let mut generation = 0u64;
        let mut ready_sent = false;
        // READY at the latest this long after the first session is established,
        // even if some channel never links (systemd must not time out the start).
        let mut ready_by: Option<tokio::time::Instant> = None;
        let mut refresh: Option<oneshot::Receiver<Result<vv::Parsed, String>>> = None;
        let mut vv_stamp = file_stamp(&self.vv_path);
        let mut watch_tick = tokio::time::interval(Duration::from_secs(1));
        let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
        let mut shutting_down = false;

        loop {
            while let Some(a) = actions.pop_front() {
                match a {
                    Action::ConnectNow { attempt } => {
                        if let (Some(old), Some(h)) = (running.take(), join.take()) {
                            Self::stop_session(old, h, Stop::Polite).await;
                        }
                        generation += 1;
                        if attempt > 0 {
                            info!("reconnect attempt {attempt} (session {generation})");
                        } else {
                            info!("connecting to {} (session {generation})", self.shown_host());
                        }
                        self.status(if attempt == 0 {
                            format!("connecting to {}", self.shown_host())
                        } else {
                            format!("reconnecting to {} (attempt {attempt})", self.shown_host())
                        });
                        let (r, h, e) = self.start_session(generation);
                        running = Some(r);
                        join = Some(h);
                        events = Some(e);
                    }
                    Action::Transition(t) => {
                        info!("reconnect: {t}");
                        self.status(sup.describe());
                        // READY once the daemon is settled: fully linked (below), or
                        // retrying / waiting, so systemd's start does not hang on a
                        // server that is down.
                        if !ready_sent
                            && !matches!(
                                sup.state(),
                                State::Connecting { .. } | State::Idle | State::Connected { .. }
                            )
                        {
                            ready_sent = true;
                            self.notifier.notify(Notice::Ready);
                        }
                    }
                    Action::Info(m) => info!("{m}"),
                    Action::Warn(m) => warn!("{m}"),
                    Action::RunRefreshCommand => {
                        let argv = self.config.reconnect.refresh_command.clone();
                        let timeout =
                            Duration::from_secs_f64(self.config.reconnect.refresh_timeout_secs);
                        info!("running reconnect.refresh_command for a fresh ticket");
                        let (tx, rx) = oneshot::channel();
                        refresh = Some(rx);
                        tokio::spawn(async move {
                            let _ = tx.send(run_refresh(argv, timeout).await);
                        });
                    }
                    Action::GiveUp(reason) => {
                        return self.finish(running.take(), join.take(), Some(reason)).await;
                    }
                    Action::Stop => {
                        return self.finish(running.take(), join.take(), None).await;
                    }
                }
            }
            let waiting_for_ticket = matches!(sup.state(), State::WaitingForTicket { .. });
            if waiting_for_ticket {
                self.status(format!(
                    "{}: waiting for a fresh ticket (a new {} or SIGHUP)",
                    sup.describe(),
                    self.vv_path.display()
                ));
            }

            tokio::select! {
                biased;
                _ = sigterm.recv() => {
                    if !shutting_down { shutting_down = true; info!("SIGTERM: stopping"); }
                    self.notifier.notify(Notice::Stopping);
                    actions.extend(sup.handle(Input::Shutdown, Now::system()));
                }
                _ = sigint.recv() => {
                    if !shutting_down { shutting_down = true; info!("SIGINT: stopping"); }
                    self.notifier.notify(Notice::Stopping);
                    actions.extend(sup.handle(Input::Shutdown, Now::system()));
                }
                _ = sighup.recv() => {
                    info!("SIGHUP: re-reading {}", self.vv_path.display());
                    vv_stamp = file_stamp(&self.vv_path);
                    if let Some(ticket) = self.reload("SIGHUP") {
                        actions.extend(sup.handle(Input::Reload { ticket }, Now::system()));
                    }
                }
                Some(ev) = recv_opt(&mut events) => {
                    let Some(run) = running.as_mut() else { continue };
                    match ev {
                        SessionEvent::Connected { .. } => {
                            run.connected = true;
                            if !ready_sent && ready_by.is_none() {
                                ready_by = Some(tokio::time::Instant::now() + Duration::from_secs_f64(self.config.keepalive.connect_timeout_secs));
                            }
                            actions.extend(sup.handle(Input::Connected { generation: run.generation }, Now::system()));
                        }
                        SessionEvent::AllChannelsUp { count } => {
                            self.status(format!("connected: {count} channels linked to {}", self.shown_host()));
                            if !ready_sent {
                                ready_sent = true;
                                self.notifier.notify(Notice::Ready);
                            }
                        }
                        SessionEvent::ChannelUp { .. } | SessionEvent::ServerName(_) | SessionEvent::ServerUuid(_) => {}
                    }
                }
                end = join_opt(&mut join) => {
                    join = None;
                    let Some(mut run) = running.take() else { continue };
                    events = None;
                    match end {
                        Some(end) => {
                            actions.extend(self.session_ended(&mut run, end, &mut sup));
                        }
                        None => {
                            error!("session task failed");
                            return exit::FAILURE;
                        }
                    }
                }
                _ = sleep_until_opt(sup.next_deadline()) => {
                    actions.extend(sup.poll(Now::system()));
                }
                r = oneshot_opt(&mut refresh) => {
                    refresh = None;
                    match r {
                        Some(Ok(parsed)) => {
                            if let Some(ticket) = self.apply_settings(parsed, "refresh command") {
                                actions.extend(sup.handle(Input::Reload { ticket }, Now::system()));
                            } else {
                                actions.extend(sup.handle(Input::RefreshFailed { message: "refresh command output is not usable".into() }, Now::system()));
                            }
                        }
                        Some(Err(message)) => {
                            warn!("{message}");
                            actions.extend(sup.handle(Input::RefreshFailed { message }, Now::system()));
                        }
                        None => {
                            actions.extend(sup.handle(Input::RefreshFailed { message: "refresh command task ended".into() }, Now::system()));
                        }
                    }
                }
                Some(res) = self.reports.1.recv() => self.report_done(res),
                _ = watch_tick.tick(), if waiting_for_ticket => {
                    let stamp = file_stamp(&self.vv_path);
                    if stamp.is_some() && stamp != vv_stamp {
                        vv_stamp = stamp;
                        if let Some(ticket) = self.reload("new .vv file") {
                            actions.extend(sup.handle(Input::Reload { ticket }, Now::system()));
                        }
                    }
                }
                _ = sleep_until_opt(ready_by), if !ready_sent => {
                    ready_sent = true;
                    warn!("not every channel linked within {:.0} s of the session start; telling systemd we are ready anyway", self.config.keepalive.connect_timeout_secs);
                    self.notifier.notify(Notice::Ready);
                }
                _ = tick_opt(&mut watchdog) => {
                    self.notifier.notify(Notice::Watchdog);
                }
            }
        }
    }

    /// Ends the daemon: stops the session politely, returns the exit code.
    async fn finish(
        &mut self,
        run: Option<Running>,
        join: Option<JoinHandle<SessionEnd>>,
        reason: Option<GiveUpReason>,
    ) -> u8 {
        self.notifier.notify(Notice::Stopping);
        if let (Some(r), Some(h)) = (run, join) {
            Self::stop_session(r, h, Stop::Polite).await;
        }
        // Let reports being written finish (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.reports_in_flight > 0 {
                match self.reports.1.recv().await {
                    Some(res) => self.report_done(res),
                    None => break,
                }
            }
        })
        .await;
        match reason {
            None => {
                info!("stopped");
                exit::OK
            }
            Some(r) => {
                error!("giving up: {r} (exit status {})", r.exit_code());
                self.status(format!("gave up: {r}"));
                r.exit_code()
            }
        }
    }
}

async fn tick_opt(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The config for `session.json`: the refresh command's arguments may carry a
/// broker token, so only the program name is kept.
fn redacted_config(c: &Config) -> serde_json::Value {
    let mut c = c.clone();
    if let Some((prog, args)) = c.reconnect.refresh_command.split_first() {
        let mut v = vec![prog.clone()];
        v.extend(args.iter().map(|_| "<redacted>".to_string()));
        c.reconnect.refresh_command = v;
    }
    serde_json::to_value(&c).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_json_config_hides_refresh_command_arguments() {
        let mut c = Config::default();
        c.reconnect.refresh_command = vec!["/usr/bin/broker".into(), "--token=s3cr3t".into()];
        let v = redacted_config(&c).to_string();
        assert!(!v.contains("s3cr3t"), "{v}");
        assert!(
            v.contains("/usr/bin/broker") && v.contains("<redacted>"),
            "{v}"
        );
    }

    #[test]
    fn link_refusals_map_to_supervisor_classes() {
        let f = |code: Option<LinkErrorCode>, cause: Cause, transient: bool| Failure {
            channel: ChannelId::MAIN,
            cause,
            message: String::new(),
            io_kind: None,
            link_code: code,
            transient,
            during_link: true,
        };
        use LinkErrorCode as L;
        assert_eq!(
            fail_class(&f(Some(L::PermissionDenied), Cause::TicketRejected, false)),
            FailClass::PermissionDenied
        );
        assert_eq!(
            fail_class(&f(Some(L::BadConnectionId), Cause::LinkError, true)),
            FailClass::BadConnectionId
        );
        assert_eq!(
            fail_class(&f(Some(L::InvalidData), Cause::LinkError, false)),
            FailClass::Protocol { code: Some(3) }
        );
        assert_eq!(
            fail_class(&f(Some(L::NeedSecured), Cause::LinkError, false)),
            FailClass::Config
        );
        assert_eq!(
            fail_class(&f(None, Cause::TlsError, false)),
            FailClass::TlsVerification
        );
        assert_eq!(
            fail_class(&f(None, Cause::ConnectFailed, true)),
            FailClass::Network
        );
        assert_eq!(
            fail_class(&f(None, Cause::TlsError, true)),
            FailClass::Network
        );
    }
}
