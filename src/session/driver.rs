//! The I/O of one channel: connect and link it (moving it to TLS when the server
//! asks), then move bytes between the socket and the sans-IO [`Channel`] state
//! machine until the channel fails or the session stops it.
//!
//! What the channel says travels two ways, so a slow reader can never stall it:
//! lifecycle messages (linked, MAIN_INIT, CHANNELS_LIST, ...) on an unbounded
//! queue — few, and never dropped — and informational events on a bounded one
//! whose overflow is dropped and counted.

use super::{ChannelLinkInfo, SessionCtx, Stop};
use crate::channel::counters::ChannelCounters;
use crate::channel::{Channel, ChannelEvent};
use crate::failure::Failure;
use crate::link::handshake::{self, LinkError};
use crate::link::{Stream, Target};
use crate::tap::{Direction, LinkRecord};
use crate::wire::link::LinkErrorCode;
use crate::wire::ChannelId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::info;

/// A write that cannot finish in this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a polite stop waits for a freshly linked channel's first server
/// message (see the stop branch in `run`).
const SETTLE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a polite goodbye (DISCONNECTING, TLS close_notify) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
const READ_BUF: usize = 64 * 1024;

/// What a running channel tells the session.
#[derive(Debug)]
pub(super) enum ChannelMsg {
    Up {
        channel: ChannelId,
        info: ChannelLinkInfo,
    },
    Event(ChannelId, ChannelEvent),
}

/// The two ways out of a channel task (see the module docs).
#[derive(Clone)]
pub(super) struct Outlets {
    pub lifecycle: mpsc::UnboundedSender<ChannelMsg>,
    pub info: mpsc::Sender<ChannelMsg>,
    pub dropped: Arc<AtomicU64>,
}

impl Outlets {
    fn send(&self, m: ChannelMsg) {
        let lossless = match &m {
            ChannelMsg::Up { .. } => true,
            ChannelMsg::Event(_, ev) => is_lifecycle(ev),
        };
        if lossless {
            // Fails only when the session is gone, and then nobody needs it.
            let _ = self.lifecycle.send(m);
        } else if self.info.try_send(m).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Events that change what the session does; the rest is for logs only.
fn is_lifecycle(ev: &ChannelEvent) -> bool {
    matches!(
        ev,
        ChannelEvent::MainInit(_)
            | ChannelEvent::AgentConnected(_)
            | ChannelEvent::ChannelsList(_)
            | ChannelEvent::ServerDisconnecting { .. }
            | ChannelEvent::MigrateSwitchHost(_)
            | ChannelEvent::MigrateBegin(_)
            | ChannelEvent::MigrateCancel
            | ChannelEvent::MigrateEnd
    )
}

/// How a channel task ended.
#[derive(Debug)]
pub(super) struct ChannelEnd {
    pub channel: ChannelId,
    pub counters: ChannelCounters,
    /// None: stopped by the session.
    pub failure: Option<Failure>,
}

/// A linked channel not yet run: made at a migration target ahead of the move.
pub struct Parked {
    pub stream: Stream,
    pub linked: handshake::Linked,
    pub tls: bool,
}

/// Connects and links one channel, moving it to TLS if the server asks.
pub(super) async fn link_channel(
    ctx: &SessionCtx,
    ch: ChannelId,
    connection_id: u32,
) -> Result<Parked, Failure> {
    let s = &ctx.settings;
    let mut tls = super::wants_tls(s, ch);
    let mut moved = false;
    loop {
        let port = if tls { s.tls_port } else { s.port };
        let Some(port) = port else {
            return Err(Failure::no_port(ch, tls, moved));
        };
        let target = Target {
            host: s.host.clone(),
            port,
            tls,
        };
        let mut stream = ctx
            .connector
            .connect(target)
            .await
            .map_err(|e| Failure::transport(ch, &e))?;
        let semi_seamless = ctx.config.reconnect.semi_seamless_migration;
        let mess = handshake::link_mess(ch, connection_id, semi_seamless);
        let cap = ctx.capture.clone();
        let start = ctx.start;
        let mut tap = move |dir: Direction, rec: LinkRecord, b: &[u8]| {
            if let Some(c) = &cap {
                c.link(ch, dir, start.elapsed(), rec, b);
            }
        };
        match handshake::handshake(&mut stream, &mess, s.password.as_ref(), &mut tap).await {
            Ok(linked) => {
                return Ok(Parked {
                    stream,
                    linked,
                    tls,
                })
            }
            Err(LinkError::Refused(LinkErrorCode::NeedSecured)) if !tls => {
                info!(channel = %ch, "server requires TLS on {ch}: moving it to tls-port");
                tls = true;
                moved = true;
            }
            Err(e) => return Err(Failure::link(ch, e)),
        }
    }
}

/// A whole channel: link, then run until it fails or is stopped.
pub(super) async fn run(
    ctx: SessionCtx,
    ch: ChannelId,
    connection_id: u32,
    mut stop: watch::Receiver<Stop>,
    out: Outlets,
    mut replies: Option<mpsc::Receiver<bool>>,
) -> ChannelEnd {
    let connect_timeout = crate::time::secs(ctx.config.keepalive.connect_timeout_secs);
    let mut end = ChannelEnd {
        channel: ch,
        counters: ChannelCounters::default(),
        failure: None,
    };
    let adopted = ctx.adopted.as_ref().and_then(|a| a.take(ch));
    let was_adopted = adopted.is_some();
    let linking = tokio::time::timeout(connect_timeout, async {
        match adopted {
            Some(p) => Ok(p),
            None => link_channel(&ctx, ch, connection_id).await,
        }
    });
    let Parked {
        mut stream,
        linked,
        tls,
    } = tokio::select! {
        r = linking => match r {
            Ok(Ok(x)) => x,
            Ok(Err(f)) => { end.failure = Some(f); return end; }
            Err(_) => {
                end.failure = Some(Failure::link_timeout(ch, connect_timeout.as_secs_f64()));
                return end;
            }
        },
        _ = super::stopped(&mut stop) => return end,
    };
    out.send(ChannelMsg::Up {
        channel: ch,
        info: ChannelLinkInfo {
            tls,
            server_common_caps: linked.server_common_caps.bits(),
            server_channel_caps: linked.server_channel_caps.bits(),
            client_common_caps: linked.client_common_caps.bits(),
            client_channel_caps: linked.client_channel_caps.bits(),
        },
    });

    let feed = (ch.ty == crate::wire::ChannelType::Display && ch.id == 0)
        .then(|| ctx.screen.attach(ctx.start))
        .flatten()
        .map(Arc::new);
    let mut state = match (&feed, ctx.screen.limits()) {
        (Some(f), Some(l)) => Channel::with_mirror(
            ch,
            linked.header,
            &ctx.config.keepalive,
            ctx.now(),
            crate::channel::MirrorLink {
                sink: f.clone(),
                pixmap_cache: l.pixmap_cache_pixels(),
                glz_window: l.glz_window_pixels(),
                prefer_lz: linked
                    .server_channel_caps
                    .has(crate::link::handshake::channel_cap::DISPLAY_PREF_COMPRESSION),
            },
        ),
        _ => Channel::new(ch, linked.header, &ctx.config.keepalive, ctx.now()),
    };
    if let Some(c) = &ctx.capture {
        state.set_tap(c.clone());
    }
    if was_adopted {
        info!(channel = %ch, session = ctx.generation, "channel {ch}: taking over the link made at the migration target");
        state.adopted_after_migration();
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut aborted = false;
    let mut traffic = ctx.traffic.publisher(ch);
    // The keepalive, main's probe and backstop are planned with every other
    // periodic job of the process: they run when the process is awake anyway
    // (any channel's traffic), a timer of its own only when nothing else woke it.
    let slot = ctx.pacer.slot();
    let at = |d: Duration| crate::time::after(ctx.start, d);
    let mut woken_by_io = false;
    // A changing screen arrives in bursts: the kernel gathers each one before
    // it wakes the process (crate::wake::lowat).
    let mut lowat = (ch.ty == crate::wire::ChannelType::Display && stream.socket().is_some())
        .then(crate::wake::Lowat::<tokio::time::Instant>::new);
    let failure = loop {
        traffic.publish(state.counters());
        // Flush answers first (they are tiny; the server always reads).
        let mut werr = None;
        while let Some(bytes) = state.poll_transmit(ctx.now()) {
            let w = async {
                stream.write_all(&bytes).await?;
                stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, w).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    werr = Some(Failure::io(ch, &e, false));
                    break;
                }
                Err(_) => {
                    werr = Some(Failure::write_stalled(ch, WRITE_TIMEOUT.as_secs()));
                    break;
                }
            }
        }
        if let Some(f) = werr {
            break Some(f);
        }
        while let Some(ev) = state.poll_event() {
            out.send(ChannelMsg::Event(ch, ev));
        }
        slot.set(
            state.wake_window().map(|w| w.map(at)),
            state.expected_ping().map(at),
        );
        if std::mem::take(&mut woken_by_io) {
            // Bytes woke the process: whatever falls due soon rides on it.
            slot.awake(tokio::time::Instant::now(), state.take_periodic_ping());
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => break Some(Failure::io(ch, &std::io::ErrorKind::UnexpectedEof.into(), false)),
                Ok(n) => {
                    let before = state.counters().messages_in;
                    if let Err(e) = state.on_bytes(&buf[..n], ctx.now()) {
                        break Some(Failure::channel(ch, e));
                    }
                    woken_by_io = true;
                    if let Some(l) = lowat.as_mut() {
                        let messages = state.counters().messages_in.saturating_sub(before);
                        let mark = l.on_read(tokio::time::Instant::now(), n, messages, state.ack_headroom());
                        apply_mark(&stream, &mut lowat, mark, ch);
                    }
                }
                Err(e) => break Some(Failure::io(ch, &e, false)),
            },
            () = hold_until(lowat.as_ref().and_then(|l| l.deadline())) => {
                let mark = lowat.as_mut().and_then(|l| l.on_deadline(tokio::time::Instant::now()));
                apply_mark(&stream, &mut lowat, mark, ch);
            }
            Some(linked) = next_reply(&mut replies) => state.migrate_reply(linked),
            wake = slot.kicked() => {
                let wake = wake.map(|i| i.saturating_duration_since(ctx.start));
                if let Err(e) = state.handle_wake(&wake) {
                    break Some(Failure::channel(ch, e));
                }
            }
            s = super::stopped(&mut stop) => {
                if s == Stop::Polite {
                    // spice-server 0.15 can crash (the whole VM with it) when a
                    // client leaves a channel it is still setting up on its worker
                    // thread. The first server message says the setup is done.
                    if state.counters().messages_in == 0 {
                        let settle = async {
                            while state.counters().messages_in == 0 {
                                match stream.read(&mut buf).await {
                                    Ok(n) if n > 0 => {
                                        if state.on_bytes(&buf[..n], ctx.now()).is_err() {
                                            break;
                                        }
                                    }
                                    _ => break,
                                }
                            }
                        };
                        let _ = tokio::time::timeout(SETTLE_TIMEOUT, settle).await;
                        // Answers owed (PONG, ACK_SYNC) go before the goodbye.
                    }
                    state.close(crate::time::unix_millis());
                    let bye = async {
                        while let Some(b) = state.poll_transmit(ctx.now()) {
                            stream.write_all(&b).await?;
                        }
                        stream.flush().await?;
                        stream.shutdown().await
                    };
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, bye).await;
                } else {
                    aborted = true;
                }
                break None;
            }
        }
    };
    let reason = match &failure {
        Some(f) => f.cause.as_str(),
        // The session ended for another reason and closed this one.
        None if aborted => "session_ended",
        None => "local_shutdown",
    };
    state.mark_closed(ctx.now(), reason);
    if let Some(f) = &feed {
        f.end();
    }
    traffic.publish(state.counters());
    if let Some(c) = &ctx.capture {
        c.closed(ch);
    }
    end.counters = state.counters().clone();
    end.failure = failure;
    end
}

/// Sets the socket's low-water mark; a socket that refuses one keeps the
/// kernel's default for the rest of the channel.
fn apply_mark(
    stream: &Stream,
    lowat: &mut Option<crate::wake::Lowat<tokio::time::Instant>>,
    mark: Option<usize>,
    ch: ChannelId,
) {
    let Some(m) = mark else { return };
    if let Err(e) = stream.set_recv_lowat(m) {
        tracing::debug!(channel = %ch, "SO_RCVLOWAT {m} refused ({e}): waking on every byte");
        let _ = stream.set_recv_lowat(1);
        *lowat = None;
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn hold_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next answer to send on main, if this channel takes answers.
async fn next_reply(r: &mut Option<mpsc::Receiver<bool>>) -> Option<bool> {
    match r {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
