//! One SPICE session: link main, link every channel the server lists, run one task
//! per channel, and end with the first channel that fails (or a local stop).
//!
//! Channel tasks never await anything the session might stop draining: their
//! events go through `try_send` on a bounded queue (a full queue drops and counts),
//! their end result through the `JoinSet`, and stopping is a `watch` they select on.

use crate::channel::counters::ChannelCounters;
use crate::channel::{Channel, ChannelError, ChannelEvent, Direction, Tap};
use crate::config::Config;
use crate::link::handshake::{self, LinkError, LinkRecord};
use crate::vv::ConnectionSettings;
use crate::wire::link::LinkErrorCode;
use crate::wire::{ChannelId, ChannelType};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Any byte stream a channel can run over (TCP, TLS, a proxy tunnel, a test pipe).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}
pub type BoxStream = Box<dyn AsyncStream>;

/// Why a session (or a connect attempt) ended. The names are the `cause` field of
/// disconnect reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The server closed the connection cleanly (EOF): QEMU stopped, or another
    /// client took the session over.
    ServerClosed,
    /// Connection reset or aborted.
    Reset,
    TlsError,
    ReadError,
    /// Main was silent past `keepalive.main_timeout_secs` (server frozen).
    KeepaliveTimeout,
    /// TCP gave up: unacknowledged data or keepalive probes (black-holed path).
    DeadPeer,
    ProtocolError,
    TicketRejected,
    /// The server refused a link for another reason.
    LinkError,
    /// TCP/proxy/TLS connect failed.
    ConnectFailed,
    LocalShutdown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ServerClosed => "server_closed",
            Cause::Reset => "reset",
            Cause::TlsError => "tls_error",
            Cause::ReadError => "read_error",
            Cause::KeepaliveTimeout => "keepalive_timeout",
            Cause::DeadPeer => "dead_peer",
            Cause::ProtocolError => "protocol_error",
            Cause::TicketRejected => "ticket_rejected",
            Cause::LinkError => "link_error",
            Cause::ConnectFailed => "connect_failed",
            Cause::LocalShutdown => "local_shutdown",
        }
    }
}

/// What failed, where, and why — attributed to one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub channel: ChannelId,
    pub cause: Cause,
    pub message: String,
    /// `std::io::ErrorKind` name; None for EOF, clean close or our own timeout.
    pub io_kind: Option<String>,
    /// The server's link refusal, if that is what happened.
    pub link_code: Option<LinkErrorCode>,
    /// Could the same attempt succeed later (network trouble) or never (bad cert)?
    pub transient: bool,
    /// Did this happen while linking (before the channel ran)?
    pub during_link: bool,
}

/// A failed connect (TCP, proxy, TLS), as the connector reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectFailure {
    pub message: String,
    pub cause: Cause,
    pub io_kind: Option<String>,
    pub transient: bool,
}

pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxStream, ConnectFailure>> + Send + 'a>>;

/// Opens the byte stream for one channel: plain or TLS, direct or through a proxy.
pub trait Connector: Send + Sync {
    fn connect(&self, channel: ChannelId, tls: bool) -> ConnectFuture<'_>;
}

/// Receives every byte of traffic for the capture (link records and messages).
pub trait CaptureSink: Send + Sync {
    fn link(&self, ch: ChannelId, dir: Direction, at: Duration, rec: LinkRecord, bytes: &[u8]);
    fn message(
        &self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        header: crate::wire::frame::HeaderKind,
        bytes: &[u8],
    );
    /// The channel's connection ended.
    fn closed(&self, ch: ChannelId);
}

struct TapAdapter(Arc<dyn CaptureSink>);

impl Tap for TapAdapter {
    fn message(
        &mut self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        header: crate::wire::frame::HeaderKind,
        bytes: &[u8],
    ) {
        self.0.message(ch, dir, at, header, bytes);
    }
}

/// What the session tells the daemon while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// Main linked and the server sent MAIN_INIT.
    Connected {
        session_id: u32,
    },
    ChannelUp {
        channel: ChannelId,
        tls: bool,
    },
    /// Every channel the server listed (minus skipped ones) is linked.
    AllChannelsUp {
        count: usize,
    },
    ServerName(String),
    ServerUuid(String),
}

/// How to stop a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// Send DISCONNECTING and close TLS properly (SIGTERM).
    Polite,
    /// Drop everything now (another channel already failed).
    Abort,
}

/// Per-channel link facts for `session.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChannelLinkInfo {
    pub tls: bool,
    pub server_common_caps: Vec<u32>,
    pub server_channel_caps: Vec<u32>,
    pub client_common_caps: Vec<u32>,
    pub client_channel_caps: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionInfo {
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub session_id: Option<u32>,
    /// What CHANNELS_LIST offered.
    pub offered: Vec<String>,
    /// Offered but not linked (skipped by config or .vv, or not available).
    pub not_linked: BTreeMap<String, String>,
    pub channels: BTreeMap<String, ChannelLinkInfo>,
    /// Channel events dropped because the session's queue was full (expected 0).
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
    /// Main too was closed cleanly by the server (within 0.5 s of the first
    /// failure): the server ended the whole session, not just one channel.
    pub server_closed_session: bool,
    pub info: SessionInfo,
}

/// Everything a session needs; cheap to clone into tasks.
#[derive(Clone)]
pub struct SessionCtx {
    pub settings: Arc<ConnectionSettings>,
    pub config: Arc<Config>,
    pub connector: Arc<dyn Connector>,
    pub capture: Option<Arc<dyn CaptureSink>>,
    /// The session clock's origin: all `Duration` times are since this instant.
    pub start: Instant,
}

impl SessionCtx {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// TLS when the .vv says so for this channel, or when there is no plain port.
    pub fn wants_tls(&self, ch: ChannelId) -> bool {
        let s = &self.settings;
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

    /// Why this channel must not be linked, if it must not.
    pub fn skip_reason(&self, ch: ChannelId) -> Option<String> {
        let matches = |n: &String| ChannelType::from_name(n) == Some(ch.ty);
        if self.settings.disable_channels.iter().any(matches) {
            return Some("disable-channels in the .vv".into());
        }
        if self.config.channels.skip.iter().any(matches) {
            return Some("channels.skip in the config".into());
        }
        None
    }
}

enum Internal {
    Up {
        channel: ChannelId,
        info: ChannelLinkInfo,
    },
    Event(ChannelId, ChannelEvent),
}

struct ChannelEnd {
    channel: ChannelId,
    counters: ChannelCounters,
    failure: Option<Failure>,
}

fn io_failure(ch: ChannelId, e: &std::io::Error, during_link: bool) -> Failure {
    use std::io::ErrorKind as K;
    let tls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    let (cause, io_kind) = match e.kind() {
        K::UnexpectedEof => (Cause::ServerClosed, None),
        _ if tls => (Cause::TlsError, Some(format!("{:?}", e.kind()))),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            (Cause::Reset, Some(format!("{:?}", e.kind())))
        }
        K::TimedOut => (Cause::DeadPeer, Some(format!("{:?}", e.kind()))),
        k => (Cause::ReadError, Some(format!("{k:?}"))),
    };
    let message = match cause {
        Cause::ServerClosed => "server closed the connection".to_string(),
        Cause::DeadPeer => format!("connection timed out (peer unreachable): {e}"),
        _ => e.to_string(),
    };
    Failure {
        channel: ch,
        cause,
        message,
        io_kind,
        link_code: None,
        transient: true,
        during_link,
    }
}

fn link_failure(ch: ChannelId, e: LinkError) -> Failure {
    match e {
        LinkError::Io(io) => {
            let mut f = io_failure(ch, &io, true);
            f.message = format!("{} during the link", f.message);
            f
        }
        LinkError::Refused(code) => Failure {
            channel: ch,
            cause: if code == LinkErrorCode::PermissionDenied {
                Cause::TicketRejected
            } else {
                Cause::LinkError
            },
            message: format!("{ch}: {code}"),
            io_kind: None,
            link_code: Some(code),
            transient: matches!(code, LinkErrorCode::BadConnectionId | LinkErrorCode::Error),
            during_link: true,
        },
        other => Failure {
            channel: ch,
            cause: Cause::ProtocolError,
            message: format!("{ch}: {other}"),
            io_kind: None,
            link_code: None,
            transient: false,
            during_link: true,
        },
    }
}

fn channel_failure(ch: ChannelId, e: ChannelError) -> Failure {
    let cause = match e {
        ChannelError::Wire(_) => Cause::ProtocolError,
        ChannelError::KeepaliveTimeout { .. } => Cause::KeepaliveTimeout,
    };
    Failure {
        channel: ch,
        cause,
        message: e.to_string(),
        io_kind: None,
        link_code: None,
        transient: true,
        during_link: false,
    }
}

/// Connects and links one channel, moving it to TLS if the server asks.
async fn link_channel(
    ctx: &SessionCtx,
    ch: ChannelId,
    connection_id: u32,
) -> Result<(BoxStream, handshake::Linked, bool), Failure> {
    let mut tls = ctx.wants_tls(ch);
    loop {
        let mut stream = ctx.connector.connect(ch, tls).await.map_err(|c| Failure {
            channel: ch,
            cause: c.cause,
            message: c.message,
            io_kind: c.io_kind,
            link_code: None,
            transient: c.transient,
            during_link: true,
        })?;
        let mess = handshake::link_mess(ch, connection_id);
        let cap = ctx.capture.clone();
        let start = ctx.start;
        let mut tap = move |dir: Direction, rec: LinkRecord, b: &[u8]| {
            if let Some(c) = &cap {
                c.link(ch, dir, start.elapsed(), rec, b);
            }
        };
        match handshake::handshake(&mut stream, &mess, ctx.settings.password.as_ref(), &mut tap)
            .await
        {
            Ok(linked) => return Ok((stream, linked, tls)),
            Err(LinkError::Refused(LinkErrorCode::NeedSecured))
                if !tls && ctx.settings.tls_port.is_some() =>
            {
                info!(channel = %ch, "server requires TLS on {ch}: moving it to tls-port");
                tls = true;
            }
            Err(e) => return Err(link_failure(ch, e)),
        }
    }
}

/// A whole channel: link, then run until it fails or is stopped.
async fn channel_task(
    ctx: SessionCtx,
    ch: ChannelId,
    connection_id: u32,
    mut stop: watch::Receiver<Stop>,
    internal: mpsc::Sender<Internal>,
    dropped: Arc<AtomicU64>,
) -> ChannelEnd {
    let connect_timeout = Duration::from_secs_f64(ctx.config.keepalive.connect_timeout_secs);
    let mut end = ChannelEnd {
        channel: ch,
        counters: ChannelCounters::default(),
        failure: None,
    };
    let linking = tokio::time::timeout(connect_timeout, link_channel(&ctx, ch, connection_id));
    let (mut stream, linked, tls) = tokio::select! {
        r = linking => match r {
            Ok(Ok(x)) => x,
            Ok(Err(f)) => { end.failure = Some(f); return end; }
            Err(_) => {
                end.failure = Some(Failure {
                    channel: ch,
                    cause: Cause::ConnectFailed,
                    message: format!("{ch}: connect and link did not finish within {:.0} s", connect_timeout.as_secs_f64()),
                    io_kind: Some("TimedOut".into()),
                    link_code: None,
                    transient: true,
                    during_link: true,
                });
                return end;
            }
        },
        _ = stopped(&mut stop) => return end,
    };
    let send = |m: Internal| {
        if internal.try_send(m).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    send(Internal::Up {
        channel: ch,
        info: ChannelLinkInfo {
            tls,
            server_common_caps: linked.server_common_caps.bits(),
            server_channel_caps: linked.server_channel_caps.bits(),
            client_common_caps: linked.client_common_caps.bits(),
            client_channel_caps: linked.client_channel_caps.bits(),
        },
    });

    let mut state = Channel::new(ch, linked.header, &ctx.config.keepalive, ctx.now());
    if let Some(c) = &ctx.capture {
        state.set_tap(Box::new(TapAdapter(c.clone())));
    }
    // A write that cannot finish in this long means the peer stopped reading.
    let write_timeout = Duration::from_secs(30);
    let mut buf = vec![0u8; 64 * 1024];
    let mut aborted = false;
    let failure = loop {
        // Flush answers first (they are tiny; the server always reads).
        let mut werr = None;
        while let Some(bytes) = state.poll_transmit(ctx.now()) {
            let w = async {
                stream.write_all(&bytes).await?;
                stream.flush().await
            };
            match tokio::time::timeout(write_timeout, w).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    werr = Some(io_failure(ch, &e, false));
                    break;
                }
                Err(_) => {
                    werr = Some(Failure {
                        channel: ch,
                        cause: Cause::DeadPeer,
                        message: format!("{ch}: server stopped reading (write stalled 30 s)"),
                        io_kind: Some("TimedOut".into()),
                        link_code: None,
                        transient: true,
                        during_link: false,
                    });
                    break;
                }
            }
        }
        if let Some(f) = werr {
            break Some(f);
        }
        while let Some(ev) = state.poll_event() {
            send(Internal::Event(ch, ev));
        }
        let deadline = state.poll_timeout().map(|d| ctx.start + d);
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => break Some(io_failure(ch, &std::io::ErrorKind::UnexpectedEof.into(), false)),
                Ok(n) => {
                    if let Err(e) = state.on_bytes(&buf[..n], ctx.now()) {
                        break Some(channel_failure(ch, e));
                    }
                }
                Err(e) => break Some(io_failure(ch, &e, false)),
            },
            _ = sleep_until_opt(deadline) => {
                if let Err(e) = state.handle_timeout(ctx.now()) {
                    break Some(channel_failure(ch, e));
                }
            }
            s = stopped(&mut stop) => {
                if s == Stop::Polite {
                    let unix_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    state.close(ctx.now(), unix_ms);
                    let bye = async {
                        while let Some(b) = state.poll_transmit(ctx.now()) {
                            stream.write_all(&b).await?;
                        }
                        stream.flush().await?;
                        stream.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
                    break None;
                }
                aborted = true;
                break None;
            }
        }
    };
    let reason = match &failure {
        Some(f) => f.cause.as_str(),
        // Another channel failed first and the session closed this one.
        None if aborted => "session_ended",
        None => "local_shutdown",
    };
    state.mark_closed(ctx.now(), reason);
    if let Some(c) = &ctx.capture {
        c.closed(ch);
    }
    end.counters = state.counters().clone();
    end.failure = failure;
    end
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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

/// Runs one session until the first channel fails or `stop` says so.
pub async fn run(
    ctx: SessionCtx,
    events: mpsc::Sender<SessionEvent>,
    mut stop: watch::Receiver<Stop>,
) -> SessionEnd {
    let (stop_tx, stop_rx) = watch::channel(Stop::Run);
    let (int_tx, mut int_rx) = mpsc::channel::<Internal>(256);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut tasks: JoinSet<ChannelEnd> = JoinSet::new();
    let notify = |e: SessionEvent| {
        if events.try_send(e).is_err() {
            debug!("session event dropped: daemon queue full");
        }
    };

    let mut info = SessionInfo::default();
    let mut counters = BTreeMap::new();
    let mut spawned: BTreeSet<ChannelId> = BTreeSet::new();
    let mut up: BTreeSet<ChannelId> = BTreeSet::new();
    let mut connected = false;
    let mut all_linked = false;
    let mut session_id = None;

    spawned.insert(ChannelId::MAIN);
    tasks.spawn(channel_task(
        ctx.clone(),
        ChannelId::MAIN,
        0, // always 0: non-zero makes the server treat us as a migration target
        stop_rx.clone(),
        int_tx.clone(),
        dropped.clone(),
    ));

    let failure = loop {
        tokio::select! {
            Some(m) = int_rx.recv() => match m {
                Internal::Up { channel, info: li } => {
                    info!("channel {channel} up{}", if li.tls { " (TLS)" } else { "" });
                    notify(SessionEvent::ChannelUp { channel, tls: li.tls });
                    info.channels.insert(channel.to_string(), li);
                    up.insert(channel);
                    if session_id.is_some() && !all_linked && !info.offered.is_empty() && up.len() == spawned.len() {
                        all_linked = true;
                        info!("session fully linked: {} channels", up.len());
                        notify(SessionEvent::AllChannelsUp { count: up.len() });
                    }
                }
                Internal::Event(ch, ev) => match ev {
                    ChannelEvent::MainInit(init) => {
                        connected = true;
                        session_id = Some(init.session_id);
                        info.session_id = Some(init.session_id);
                        info!("session established (session id {:#x})", init.session_id);
                        notify(SessionEvent::Connected { session_id: init.session_id });
                    }
                    ChannelEvent::ChannelsList(list) => {
                        let Some(sid) = session_id else { continue };
                        info.offered = list.iter().map(|c| c.to_string()).collect();
                        for c in list {
                            if c.ty == ChannelType::Main || spawned.contains(&c) {
                                continue;
                            }
                            if let Some(why) = ctx.skip_reason(c) {
                                // The list comes again after every main probe: say it once.
                                if let std::collections::btree_map::Entry::Vacant(e) =
                                    info.not_linked.entry(c.to_string())
                                {
                                    info!(channel = %c, "not linking {c}: {why}");
                                    e.insert(why);
                                }
                                continue;
                            }
                            spawned.insert(c);
                            tasks.spawn(channel_task(ctx.clone(), c, sid, stop_rx.clone(), int_tx.clone(), dropped.clone()));
                        }
                        if !all_linked && up.len() == spawned.len() {
                            all_linked = true;
                            info!("session fully linked: {} channels", up.len());
                            notify(SessionEvent::AllChannelsUp { count: up.len() });
                        }
                    }
                    ChannelEvent::Name(n) => {
                        if info.name.is_none() {
                            info!("server name: {n}");
                            notify(SessionEvent::ServerName(n.clone()));
                        }
                        info.name = Some(n);
                    }
                    ChannelEvent::Uuid(u) => {
                        if info.uuid.is_none() {
                            info!("server uuid: {u}");
                            notify(SessionEvent::ServerUuid(u.clone()));
                        }
                        info.uuid = Some(u);
                    }
                    ChannelEvent::MouseMode { supported, current } => {
                        debug!("mouse mode {current} (supported mask {supported:#x})");
                    }
                    ChannelEvent::AgentConnected(c) => {
                        info!("guest agent {}", if c { "connected" } else { "disconnected" });
                    }
                    ChannelEvent::Notify { severity, message } => {
                        info!(channel = %ch, "server notice (severity {severity}): {message}");
                    }
                    ChannelEvent::ServerDisconnecting { reason } => {
                        warn!(channel = %ch, "server announced a disconnect (reason {reason})");
                    }
                    ChannelEvent::MigrateSwitchHost { host, port, sport } => {
                        warn!("server asks to switch to {host} (port {port}, tls-port {sport}); spiced does not follow migrations: the session will be re-established by the reconnect policy");
                    }
                },
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok(end) = joined else { continue };
                counters.insert(end.channel, end.counters);
                match end.failure {
                    Some(f) if f.during_link && f.link_code == Some(LinkErrorCode::ChannelNotAvailable) => {
                        warn!(channel = %f.channel, "{}: continuing without it", f.message);
                        info.not_linked.insert(f.channel.to_string(), f.message.clone());
                        spawned.remove(&f.channel);
                    }
                    Some(f) => {
                        if up.contains(&f.channel) {
                            info!("channel {} down: {} ({})", f.channel, f.message, f.cause.as_str());
                        }
                        break Some(f);
                    }
                    None => {}
                }
            }
            s = stopped(&mut stop) => {
                let _ = stop_tx.send(s);
                break None;
            }
        }
    };
    // When the server closes a session, every channel sees EOF at about the same
    // time and any of them may be noticed first. Give main a moment to report its
    // own EOF: "the server closed the whole session" (QEMU stopped, or another
    // client took over) is what the reconnect supervisor needs to know.
    let mut server_closed_session = failure
        .as_ref()
        .is_some_and(|f| f.cause == Cause::ServerClosed && f.channel == ChannelId::MAIN);
    if failure
        .as_ref()
        .is_some_and(|f| f.cause == Cause::ServerClosed && f.channel != ChannelId::MAIN)
    {
        let wait_main = async {
            while let Some(joined) = tasks.join_next().await {
                let Ok(end) = joined else { continue };
                let main_eof = end.channel == ChannelId::MAIN
                    && end
                        .failure
                        .as_ref()
                        .is_some_and(|f| f.cause == Cause::ServerClosed);
                let is_main = end.channel == ChannelId::MAIN;
                if is_main {
                    info!("channel main down: server closed the connection");
                }
                counters.insert(end.channel, end.counters);
                if is_main {
                    return main_eof;
                }
            }
            false
        };
        server_closed_session = tokio::time::timeout(Duration::from_millis(500), wait_main)
            .await
            .unwrap_or(false);
    }
    // Tear down: the rest stop now; collect their counters, bounded in time.
    let mode = if failure.is_some() {
        Stop::Abort
    } else {
        *stop.borrow()
    };
    let _ = stop_tx.send(if mode == Stop::Run { Stop::Abort } else { mode });
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(end) = joined {
                if up.contains(&end.channel) {
                    info!("channel {} down: session closing", end.channel);
                }
                counters.insert(end.channel, end.counters);
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("some channel tasks did not stop within 5 s; aborting them");
        tasks.abort_all();
    }
    for (ch, c) in &counters {
        info!(
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
    info.dropped_events = dropped.load(Ordering::Relaxed);
    SessionEnd {
        failure,
        counters,
        uptime: ctx.now(),
        connected,
        all_linked,
        server_closed_session,
        info,
    }
}
