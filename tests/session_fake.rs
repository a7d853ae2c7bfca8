//! Session behaviour against an in-process fake SPICE server, for the faults a real
//! QEMU cannot produce on demand (malformed frames, lying sizes, exact timings).
//! The real-server tests live in tests/qemu_*.rs.

use rsa::pkcs8::EncodePublicKey;
use spiced::config::Config;
use spiced::failure::Cause;
use spiced::link::{ConnectFuture, Connector, Stream, Target};
use spiced::session::{self, SessionCtx, SessionEnd, SessionEvent, Stop};
use spiced::vv::ConnectionSettings;
use spiced::wire::{ChannelId, ChannelType};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    /// The display channel announces a 3 GiB message.
    OversizedDisplayMessage,
    /// Inputs sends a PING too short to hold its fields.
    TruncatedPingOnInputs,
    /// The server refuses inputs' link with NEED_SECURED on the plain port.
    InputsNeedSecured,
    /// The server goes quiet on main (frozen) but keeps the socket open.
    FrozenMain,
    /// The server closes the cursor channel right after its link, every time.
    CursorDropped,
    /// Main floods NOTIFY messages right after MAIN_INIT, before anything else.
    NotifyFlood,
    /// The display channel sends hostile draw commands (see `hostile_display`).
    HostileDisplay,
}

struct Fake {
    key_der: Vec<u8>,
    fault: Fault,
    /// (channel, tls) of every link, in order.
    connects: Arc<Mutex<Vec<(ChannelId, bool)>>>,
    /// Every client message type received per channel.
    received: Arc<Mutex<Vec<(ChannelId, u16)>>>,
    /// Set to true: every server side closes its connection (QEMU gone).
    close_all: tokio::sync::watch::Sender<bool>,
}

fn mini(t: u16, body: &[u8]) -> Vec<u8> {
    let mut v = t.to_le_bytes().to_vec();
    v.extend((body.len() as u32).to_le_bytes());
    v.extend(body);
    v
}

fn ping(id: u32) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend(7u64.to_le_bytes());
    mini(4, &b)
}

async fn serve(
    mut s: DuplexStream,
    key: Vec<u8>,
    fault: Fault,
    tls: bool,
    received: Arc<Mutex<Vec<(ChannelId, u16)>>>,
    connects: Arc<Mutex<Vec<(ChannelId, bool)>>>,
    mut close_all: tokio::sync::watch::Receiver<bool>,
) {
    let mut h = [0u8; 16];
    if s.read_exact(&mut h).await.is_err() {
        return;
    }
    let n = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    let mut body = vec![0; n];
    if s.read_exact(&mut body).await.is_err() {
        return;
    }
    let ch = ChannelId::new(ChannelType::from_u8(body[4]), body[5]);
    connects.lock().unwrap().push((ch, tls));
    let refuse = fault == Fault::InputsNeedSecured && ch.ty == ChannelType::Inputs && !tls;
    let mut r = (if refuse { 5u32 } else { 0 }).to_le_bytes().to_vec();
    r.extend(&key);
    r.extend(1u32.to_le_bytes());
    r.extend(0u32.to_le_bytes());
    r.extend(178u32.to_le_bytes());
    r.extend(0b1011u32.to_le_bytes());
    let mut hdr = b"REDQ".to_vec();
    hdr.extend(2u32.to_le_bytes());
    hdr.extend(2u32.to_le_bytes());
    hdr.extend((r.len() as u32).to_le_bytes());
    let _ = s.write_all(&[hdr, r].concat()).await;
    if refuse {
        return;
    }
    let mut skip = [0u8; 4 + 128];
    if s.read_exact(&mut skip).await.is_err() {
        return;
    }
    let _ = s.write_all(&0u32.to_le_bytes()).await;

    let mut out = Vec::new();
    match ch.ty {
        ChannelType::Main => {
            let mut init = Vec::new();
            for v in [0x1234u32, 1, 3, 2, 0, 10, 0, 0] {
                init.extend(v.to_le_bytes());
            }
            out.extend(mini(103, &init));
            if fault == Fault::NotifyFlood {
                // time_stamp u64, severity u32, visibility u32, what u32, len u32, text
                let mut n = vec![0u8; 8];
                n.extend(1u32.to_le_bytes());
                n.extend(0u32.to_le_bytes());
                n.extend(0u32.to_le_bytes());
                n.extend(2u32.to_le_bytes());
                n.extend(b"hi");
                for _ in 0..5000 {
                    out.extend(mini(7, &n));
                }
            }
            out.extend(ping(1));
        }
        ChannelType::Display if fault == Fault::OversizedDisplayMessage => {
            out.extend(302u16.to_le_bytes());
            out.extend((3u32 << 30).to_le_bytes());
        }
        ChannelType::Display if fault == Fault::HostileDisplay => {
            out.extend(hostile_display());
            out.extend(ping(2));
        }
        ChannelType::Inputs if fault == Fault::TruncatedPingOnInputs => {
            out.extend(mini(4, &[1, 2, 3]));
        }
        _ => out.extend(ping(2)),
    }
    let _ = s.write_all(&out).await;
    if fault == Fault::CursorDropped && ch.ty == ChannelType::Cursor {
        return;
    }
    // Then answer like a server: CHANNELS_LIST after ATTACH_CHANNELS; record all.
    let mut buf = vec![0u8; 4096];
    let mut acc = Vec::new();
    let frozen = fault == Fault::FrozenMain;
    let mut lists_sent = 0;
    loop {
        let r = tokio::select! {
            r = s.read(&mut buf) => r,
            _ = close_all.wait_for(|c| *c) => return,
        };
        let n = match r {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        acc.extend_from_slice(&buf[..n]);
        while acc.len() >= 6 {
            let t = u16::from_le_bytes([acc[0], acc[1]]);
            let len = u32::from_le_bytes([acc[2], acc[3], acc[4], acc[5]]) as usize;
            if acc.len() < 6 + len {
                break;
            }
            acc.drain(..6 + len);
            received.lock().unwrap().push((ch, t));
            // A frozen server answers nothing after its first CHANNELS_LIST (the
            // kernel still takes the bytes): main's probes go unanswered.
            if ch.ty == ChannelType::Main && t == 104 && !(frozen && lists_sent > 0) {
                let list = [3u32.to_le_bytes().to_vec(), vec![2, 0, 3, 0, 4, 0]].concat();
                let _ = s.write_all(&mini(104, &list)).await;
                lists_sent += 1;
            }
        }
    }
}

// Display messages (layouts as spice-server marshals them; src/display/wire.rs).

fn surface_create(id: u32, w: u32, h: u32, primary: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [id, w, h, 32, u32::from(primary)] {
        b.extend(v.to_le_bytes());
    }
    mini(314, &b)
}

fn rect(b: &mut Vec<u8>, l: i32, t: i32, r: i32, bt: i32) {
    for v in [t, l, bt, r] {
        b.extend(v.to_le_bytes());
    }
}

/// The draw header: surface, box, no clip.
fn base(surface: u32, l: i32, t: i32, r: i32, bt: i32) -> Vec<u8> {
    let mut b = surface.to_le_bytes().to_vec();
    rect(&mut b, l, t, r, bt);
    b.push(0);
    b
}

fn fill(surface: u32, l: i32, t: i32, r: i32, bt: i32, color: u32) -> Vec<u8> {
    let mut b = base(surface, l, t, r, bt);
    b.push(1);
    b.extend(color.to_le_bytes());
    b.extend(8u16.to_le_bytes());
    b.extend([0; 13]);
    mini(302, &b)
}

/// DRAW_COPY of a 32-bit bitmap `w` x `h` claiming `stride` bytes a row,
/// with `data` as its pixels (maybe fewer than it claims), cached as `cache`.
fn copy_bitmap(w: u32, h: u32, data: &[u8], cache: Option<u64>) -> Vec<u8> {
    let mut b = base(0, 0, 0, w as i32, h as i32);
    let img = (b.len() + 4 + 16 + 2 + 1 + 13) as u32;
    b.extend(img.to_le_bytes());
    rect(&mut b, 0, 0, w as i32, h as i32);
    b.extend(8u16.to_le_bytes());
    b.push(0);
    b.extend([0; 13]);
    b.extend(cache.unwrap_or(0).to_le_bytes());
    b.push(0); // BITMAP
    b.push(u8::from(cache.is_some())); // CACHE_ME
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.push(8); // 32BIT
    b.push(4); // top-down
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend((w * 4).to_le_bytes());
    b.extend(0u32.to_le_bytes()); // no palette
    b.extend(data);
    mini(304, &b)
}

/// DRAW_COPY of the cached image `id`, never defined.
fn copy_cached(id: u64) -> Vec<u8> {
    let mut b = base(0, 0, 0, 8, 8);
    let img = (b.len() + 4 + 16 + 2 + 1 + 13) as u32;
    b.extend(img.to_le_bytes());
    rect(&mut b, 0, 0, 8, 8);
    b.extend(8u16.to_le_bytes());
    b.push(0);
    b.extend([0; 13]);
    b.extend(id.to_le_bytes());
    b.push(103); // FROM_CACHE
    b.push(0);
    b.extend(8u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    mini(304, &b)
}

/// A display channel out to hurt: a primary surface too large to exist,
/// draws far outside the screen, on a surface never created, from a cache id
/// never defined, a truncated image, an image claiming 4096 x 4096 pixels
/// it does not carry, 200 off-screen surfaces of 256 KiB, 100 images of
/// 64 KiB to cache, 100 video streams and a garbage video frame; then one
/// good fill.
fn hostile_display() -> Vec<u8> {
    let mut out = surface_create(0, 100_000, 100_000, true);
    out.extend(surface_create(0, 640, 480, true));
    out.extend(fill(0, -1_000_000_000, -5, 1_000_000_000, 5, 0x00ff00));
    out.extend(fill(0, i32::MIN, i32::MIN, i32::MAX, i32::MAX, 0x000010));
    out.extend(fill(77, 0, 0, 10, 10, 0xffffff));
    out.extend(copy_cached(0xdead));
    out.extend(copy_bitmap(64, 64, &[0x55; 1000], None));
    out.extend(copy_bitmap(4096, 4096, &[1; 64], None));
    for id in 1..=200 {
        out.extend(surface_create(id, 256, 256, false));
    }
    for id in 1..=100u64 {
        out.extend(copy_bitmap(
            128,
            128,
            &vec![id as u8; 128 * 128 * 4],
            Some(id),
        ));
    }
    for id in 0..100u32 {
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend(id.to_le_bytes());
        b.push(1); // top-down
        b.push(1); // MJPEG
        b.extend([0u8; 24]); // stamp, width, height, src_width, src_height
        let mut d = Vec::new();
        rect(&mut d, 0, 0, 64, 64);
        b.extend(d);
        b.push(0);
        out.extend(mini(122, &b));
    }
    let mut data = 5u32.to_le_bytes().to_vec();
    data.extend(0u32.to_le_bytes());
    data.extend(16u32.to_le_bytes());
    data.extend([
        0xff, 0xd8, 0xff, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ]);
    out.extend(mini(123, &data));
    out.extend(fill(0, 10, 10, 20, 20, 0xff0000));
    out
}

impl Connector for Fake {
    fn connect(&self, target: Target) -> ConnectFuture<'_> {
        let (c, s) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(
            s,
            self.key_der.clone(),
            self.fault,
            target.tls,
            self.received.clone(),
            self.connects.clone(),
            self.close_all.subscribe(),
        ));
        Box::pin(async move {
            let b = Stream::new(c);
            Ok(b)
        })
    }
}

fn key() -> Vec<u8> {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let sk = rsa::PrivateKey::new(&mut rand::rng(), 1024).unwrap();
        sk.to_public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    })
    .clone()
}

fn ctx(fault: Fault, cfg: Config) -> (SessionCtx, Arc<Fake>) {
    ctx_with_screen(fault, cfg, spiced::display::screen::Screen::off())
}

fn ctx_with_screen(
    fault: Fault,
    cfg: Config,
    screen: spiced::display::screen::Screen,
) -> (SessionCtx, Arc<Fake>) {
    let fake = Arc::new(Fake {
        key_der: key(),
        fault,
        connects: Arc::new(Mutex::new(Vec::new())),
        received: Arc::new(Mutex::new(Vec::new())),
        close_all: tokio::sync::watch::channel(false).0,
    });
    let settings = ConnectionSettings {
        host: "fake".into(),
        port: Some(1),
        tls_port: Some(2),
        ..Default::default()
    };
    let c = SessionCtx {
        settings: Arc::new(settings),
        config: Arc::new(cfg),
        connector: fake.clone(),
        capture: None,
        start: tokio::time::Instant::now(),
        start_unix: 1_700_000_000.0,
        generation: 1,
        traffic: Default::default(),
        adopted: None,
        screen,
        pacer: spiced::wake::Pacer::start(spiced::wake::Alarm::tokio()),
    };
    (c, fake)
}

type Events = tokio::sync::mpsc::UnboundedReceiver<SessionEvent>;

/// Starts a session whose events the test reads.
fn start(
    c: SessionCtx,
) -> (
    tokio::task::JoinHandle<SessionEnd>,
    Events,
    tokio::sync::watch::Sender<Stop>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Run);
    let emit = move |ev| {
        let _ = tx.send(ev);
    };
    // No daemon asks anything of these sessions.
    let (_, cmds) = tokio::sync::mpsc::channel(1);
    (
        tokio::spawn(session::run(c, emit, stop_rx, cmds)),
        rx,
        stop_tx,
    )
}

/// Waits until the session settles; returns how many channels are up.
async fn wait_all_up(rx: &mut Events) -> usize {
    loop {
        match rx.recv().await {
            Some(SessionEvent::Settled { up, .. }) => return up.len(),
            Some(_) => {}
            None => return 0,
        }
    }
}

#[tokio::test]
async fn links_every_listed_channel_and_stops_politely() {
    let (c, fake) = ctx(Fault::None, Config::default());
    let (run, mut rx, stop_tx) = start(c);
    assert_eq!(wait_all_up(&mut rx).await, 4);
    stop_tx.send(Stop::Polite).unwrap();
    let end = run.await.unwrap();
    assert_eq!(end.failure, None);
    assert!(end.connected && end.all_linked);
    assert_eq!(end.counters.len(), 4);
    let connects = fake.connects.lock().unwrap().clone();
    assert_eq!(connects[0], (ChannelId::MAIN, false));
    let recv = fake.received.lock().unwrap().clone();
    let display = ChannelId::new(ChannelType::Display, 0);
    assert_eq!(
        recv.iter().filter(|r| **r == (display, 101)).count(),
        1,
        "exactly one DISPLAY_INIT"
    );
    // Every channel answered its PING and said goodbye (DISCONNECTING = 6).
    for ch in connects.iter().map(|c| c.0) {
        assert!(recv.contains(&(ch, 3)), "{ch} PONG");
        assert!(recv.contains(&(ch, 6)), "{ch} DISCONNECTING");
    }
    assert!(!recv.iter().any(|r| r.1 == 4), "never MIGRATE_FLUSH_MARK");
}

/// A config in which losing `required` ends the session.
fn requiring(required: &str) -> Config {
    let mut cfg = Config::default();
    cfg.channels.required = vec!["main".into(), required.into()];
    cfg
}

#[tokio::test]
async fn oversized_message_fails_the_channel_it_came_on() {
    let (c, _) = ctx(Fault::OversizedDisplayMessage, requiring("display"));
    let (run, _rx, _stop) = start(c);
    let end = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a required channel's failure ends the session")
        .unwrap();
    let f = end.failure.expect("a failure");
    assert_eq!(f.channel, ChannelId::new(ChannelType::Display, 0));
    assert_eq!(f.cause, Cause::ProtocolError);
    assert!(f.message.contains("exceeds the limit"), "{}", f.message);
}

#[tokio::test]
async fn malformed_ping_is_a_protocol_error_on_inputs() {
    let (c, _) = ctx(Fault::TruncatedPingOnInputs, requiring("inputs"));
    let (run, _rx, _stop) = start(c);
    let end = run.await.unwrap();
    let f = end.failure.unwrap();
    assert_eq!(f.channel, ChannelId::new(ChannelType::Inputs, 0));
    assert_eq!(f.cause, Cause::ProtocolError);
}

/// Losing an optional channel does not end the session: it is reported, relinked
/// with the back-off (1 s, 4 s, 16 s), and left down once the budget is spent.
#[tokio::test(start_paused = true)]
async fn an_optional_channel_lost_is_relinked_then_left_down() {
    let (c, fake) = ctx(Fault::CursorDropped, Config::default());
    let start_at = tokio::time::Instant::now();
    let (run, mut rx, stop) = start(c);
    let cursor = ChannelId::new(ChannelType::Cursor, 0);
    let mut lost = Vec::new();
    let reason = loop {
        match rx.recv().await.expect("the session must not end") {
            SessionEvent::ChannelLost {
                channel, relink_in, ..
            } => {
                assert_eq!(channel, cursor);
                lost.push(relink_in);
            }
            SessionEvent::ChannelDown { channel, reason } => {
                assert_eq!(channel, cursor);
                break reason;
            }
            _ => {}
        }
    };
    let s = Duration::from_secs;
    assert_eq!(lost, [Some(s(1)), Some(s(4)), Some(s(16)), None]);
    assert!(reason.contains("relink attempts"), "{reason}");
    // Main, display and inputs stayed up all along; the session is still running.
    assert_eq!(
        rx.recv().await,
        Some(SessionEvent::Settled {
            up: vec![
                ChannelId::MAIN,
                ChannelId::new(ChannelType::Display, 0),
                ChannelId::new(ChannelType::Inputs, 0)
            ],
            down: vec![cursor]
        })
    );
    assert!(start_at.elapsed() >= s(21), "{:?}", start_at.elapsed());
    assert!(!run.is_finished());
    let links = |ch| {
        fake.connects
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == ch)
            .count()
    };
    assert_eq!(links(cursor), 4, "the first link and three relinks");
    assert_eq!(links(ChannelId::MAIN), 1, "main was never relinked");
    stop.send(Stop::Abort).unwrap();
    assert_eq!(run.await.unwrap().failure, None);
}

/// With a single-use ticket a lost channel cannot be relinked: it stays down
/// at once, and the session carries on.
#[tokio::test(start_paused = true)]
async fn a_single_use_ticket_leaves_a_lost_channel_down() {
    let (mut c, fake) = ctx(Fault::CursorDropped, Config::default());
    let mut settings = (*c.settings).clone();
    settings.delete_this_file = true;
    c.settings = Arc::new(settings);
    let (run, mut rx, stop) = start(c);
    let cursor = ChannelId::new(ChannelType::Cursor, 0);
    let reason = loop {
        if let SessionEvent::ChannelDown { reason, .. } = rx.recv().await.unwrap() {
            break reason;
        }
    };
    assert!(reason.contains("single-use"), "{reason}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!run.is_finished(), "the session carries on");
    let links = fake
        .connects
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == cursor)
        .count();
    assert_eq!(links, 1, "never relinked");
    stop.send(Stop::Abort).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn need_secured_moves_the_channel_to_tls() {
    let (c, fake) = ctx(Fault::InputsNeedSecured, Config::default());
    let (run, mut rx, stop_tx) = start(c);
    assert_eq!(wait_all_up(&mut rx).await, 4);
    stop_tx.send(Stop::Abort).unwrap();
    run.await.unwrap();
    let inputs = ChannelId::new(ChannelType::Inputs, 0);
    let c = fake.connects.lock().unwrap().clone();
    assert!(c.contains(&(inputs, false)) && c.contains(&(inputs, true)));
}

#[tokio::test(start_paused = true)]
async fn main_probe_keeps_a_live_server_under_a_short_backstop() {
    // The fake server PINGs once and then only answers the probes; a 4 s
    // backstop would fire every 4 s without them.
    let mut cfg = Config::default();
    cfg.keepalive.main_timeout_secs = 4.0;
    let (c, fake) = ctx(Fault::None, cfg);
    let (run, mut rx, stop_tx) = start(c);
    wait_all_up(&mut rx).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!run.is_finished(), "a live server must not look frozen");
    stop_tx.send(Stop::Abort).unwrap();
    let end = run.await.unwrap();
    assert_eq!(end.failure, None);
    let probes = fake
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| **r == (ChannelId::MAIN, 104))
        .count();
    // One ATTACH_CHANNELS at link, then a probe every 2 s of silence.
    assert!((25..=32).contains(&probes), "{probes} ATTACH_CHANNELS");
}

#[tokio::test(start_paused = true)]
async fn frozen_main_is_detected_by_the_backstop() {
    let mut cfg = Config::default();
    cfg.keepalive.main_timeout_secs = 10.0;
    let (c, _) = ctx(Fault::FrozenMain, cfg);
    let start_at = tokio::time::Instant::now();
    let (run, _rx, _stop) = start(c);
    let end = run.await.unwrap();
    let f = end.failure.unwrap();
    assert_eq!(f.channel, ChannelId::MAIN);
    assert_eq!(f.cause, Cause::KeepaliveTimeout);
    let took = start_at.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_channels_send_keepalives_every_idle_period() {
    let mut cfg = Config::default();
    cfg.keepalive.idle_secs = 15.0;
    cfg.keepalive.main_timeout_secs = 0.0;
    let (c, fake) = ctx(Fault::None, cfg);
    let (run, mut rx, stop_tx) = start(c);
    wait_all_up(&mut rx).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    stop_tx.send(Stop::Abort).unwrap();
    let end = run.await.unwrap();
    let cursor = ChannelId::new(ChannelType::Cursor, 0);
    // 61 s of silence after the PONG at ~0 s: keepalives at 15, 30, 45, 60.
    assert_eq!(end.counters[&cursor].client_keepalive_send_count, 4);
    let recv = fake.received.lock().unwrap();
    assert_eq!(recv.iter().filter(|r| **r == (cursor, 1)).count(), 4);
}

#[tokio::test]
async fn teardown_does_not_hang_when_nobody_reads_events() {
    let (c, _) = ctx(Fault::None, Config::default());
    // An event queue the test drops at once.
    let (run, rx, stop_tx) = start(c);
    tokio::task::yield_now().await;
    drop(rx);
    stop_tx.send(Stop::Polite).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("session must stop")
        .unwrap();
}

#[tokio::test]
async fn server_closing_every_channel_is_a_server_closed_session() {
    for _ in 0..5 {
        let (c, fake) = ctx(Fault::None, Config::default());
        let (run, mut rx, _stop_tx) = start(c);
        assert_eq!(wait_all_up(&mut rx).await, 4);
        fake.close_all.send(true).unwrap();
        let end = run.await.unwrap();
        let f = end.failure.unwrap();
        assert_eq!(f.cause, Cause::ServerClosed);
        assert!(end.server_closed_session, "first noticed on {}", f.channel);
        assert_eq!(end.counters.len(), 4);
    }
}

/// A burst of informational events (5000 NOTIFYs in one read) may be dropped and
/// counted, but never the lifecycle: the session is established and fully linked.
#[tokio::test]
async fn a_burst_of_notices_drops_only_notices() {
    let (c, _) = ctx(Fault::NotifyFlood, Config::default());
    let (run, mut rx, stop) = start(c);
    let mut connected = false;
    let up = loop {
        match rx.recv().await.expect("the session must settle") {
            SessionEvent::Connected { .. } => connected = true,
            SessionEvent::Settled { up, .. } => break up.len(),
            _ => {}
        }
    };
    assert!(connected);
    assert_eq!(up, 4);
    stop.send(Stop::Abort).unwrap();
    let end = run.await.unwrap();
    assert!(
        end.info.dropped_events > 0,
        "the flood overflowed the info queue"
    );
    assert!(
        end.info.dropped_events < 5000,
        "{}",
        end.info.dropped_events
    );
}

/// A connector that panics for one channel type: a bug inside a channel task.
struct Panicky {
    inner: Arc<Fake>,
    ty: ChannelType,
}

impl Connector for Panicky {
    fn connect(&self, target: Target) -> ConnectFuture<'_> {
        // The port tells the channel apart only through the link, so panic on
        // the n-th connect instead: main is always the first.
        let n = self.inner.connects.lock().unwrap().len();
        if (self.ty == ChannelType::Main && n == 0) || (self.ty != ChannelType::Main && n > 0) {
            panic!("injected bug");
        }
        self.inner.connect(target)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_channel_task_is_never_lost_silently() {
    // Main's task panics: the session ends with internal_error on main.
    let (mut c, fake) = ctx(Fault::None, Config::default());
    c.connector = Arc::new(Panicky {
        inner: fake,
        ty: ChannelType::Main,
    });
    let (run, _rx, _stop) = start(c);
    let end = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the session ends")
        .unwrap();
    let f = end.failure.expect("a failure");
    assert_eq!(
        (f.channel, f.cause),
        (ChannelId::MAIN, Cause::InternalError)
    );

    // Secondary channels' tasks panic: each is lost, retried with the back-off,
    // and left down once the budget is spent; the session carries on.
    let (mut c, fake) = ctx(Fault::None, Config::default());
    c.connector = Arc::new(Panicky {
        inner: fake,
        ty: ChannelType::Display,
    });
    let (run, mut rx, stop) = start(c);
    let (mut down, mut lost) = (0, 0);
    while down < 3 {
        match rx.recv().await.expect("the session must not end") {
            SessionEvent::ChannelLost { failure, .. } => {
                assert_eq!(failure.cause, Cause::InternalError);
                lost += 1;
            }
            SessionEvent::ChannelDown { .. } => down += 1,
            _ => {}
        }
    }
    assert_eq!(lost, 12, "3 channels, each lost on its link and 3 relinks");
    assert!(!run.is_finished());
    stop.send(Stop::Abort).unwrap();
    assert_eq!(run.await.unwrap().failure, None);
}

/// The deadline of the links made ahead of a migration.
fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(7)
}

/// Links made at a migration target ahead of the move (`session::prelink`)
/// are run by the next session without a new connect: main says MIGRATE_END
/// (109) before anything else, and the other channels run from the start.
#[tokio::test]
async fn a_session_runs_over_the_links_made_ahead_of_a_migration() {
    let (c, fake) = ctx(Fault::None, Config::default());
    let chans: Vec<ChannelId> = [
        ChannelType::Display,
        ChannelType::Cursor,
        ChannelType::Inputs,
    ]
    .into_iter()
    .map(|t| ChannelId::new(t, 0))
    .collect();
    let links = session::prelink(c.clone(), 0x1234, chans, soon())
        .await
        .unwrap();
    assert_eq!(links.len(), 4);
    assert_eq!(fake.connects.lock().unwrap().len(), 4);
    let mut moved = c.clone();
    moved.adopted = Some(Arc::new(session::Adopted::new(links)));
    let (run, mut rx, stop_tx) = start(moved);
    assert_eq!(wait_all_up(&mut rx).await, 4);
    assert_eq!(fake.connects.lock().unwrap().len(), 4, "no new link");
    stop_tx.send(Stop::Polite).unwrap();
    let end = run.await.unwrap();
    assert_eq!(end.failure, None);
    let recv = fake.received.lock().unwrap().clone();
    let first_on_main = recv.iter().find(|r| r.0 == ChannelId::MAIN).map(|r| r.1);
    assert_eq!(first_on_main, Some(109), "{recv:?}");
    assert_eq!(recv.iter().filter(|r| r.1 == 109).count(), 1);
}

/// A target where main cannot be linked fails the whole preparation (the
/// server is then told MIGRATE_CONNECT_ERROR).
#[tokio::test(start_paused = true)]
async fn links_ahead_of_a_migration_fail_when_main_cannot_link() {
    let (mut c, _fake) = ctx(Fault::None, Config::default());
    let mut s = (*c.settings).clone();
    s.port = None;
    s.tls_port = None;
    c.settings = Arc::new(s);
    let r = session::prelink(c, 0x1234, vec![], soon()).await;
    assert!(r.is_err());
}

/// The display channel sends hostile draw commands: every one is clipped or
/// refused and counted, the channel and the session go on, the good draw
/// after them lands, and the mirror holds no more than its caps (its own
/// accounting: off-screen surfaces and caches beside the 640 x 480 screen).
#[tokio::test]
async fn hostile_draw_commands_are_clipped_refused_and_counted() {
    let cfg = Config::default();
    let screen = spiced::display::screen::Screen::on(cfg.display.limits(), None);
    let (c, _) = ctx_with_screen(Fault::HostileDisplay, cfg.clone(), screen.clone());
    let (run, mut rx, stop) = start(c);
    assert_eq!(wait_all_up(&mut rx).await, 4);
    // The good fill, last, landed.
    let mut shot = None;
    for _ in 0..500 {
        shot = screen
            .shot()
            .filter(|s| s.frame.px.get(15 * 640 + 15) == Some(&0xff0000));
        if shot.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shot = shot.expect("the good fill after the hostile ones");
    assert_eq!((shot.frame.width, shot.frame.height), (640, 480));
    // The fill of "everything" was clipped to the screen; the cached images
    // were drawn at the top left.
    assert_eq!(shot.frame.px[300 * 640 + 300], 0x000010);
    assert_eq!(shot.frame.px[0], 0x646464);
    let v = screen.view().unwrap();
    eprintln!("hostile display: {v:?}");
    for key in [
        "surface_create: over the cap",
        "fill: missing target surface",
        "copy: missing cached image",
        "copy: malformed",
        "stream_create: over the cap",
        "stream_data: malformed",
    ] {
        assert!(
            v.skipped.contains_key(key),
            "{key} not counted: {:?}",
            v.skipped
        );
    }
    let caps = cfg.display.offscreen_kib * 1024 + cfg.display.cache_kib * 1024 * 3 / 2;
    assert!(
        v.extra_bytes as usize <= caps,
        "{} bytes beside the screen, cap {caps}",
        v.extra_bytes
    );
    assert!(v.extra_bytes > 0, "the caches were used up to their caps");
    // Nothing was lost.
    stop.send(Stop::Polite).unwrap();
    let end = run.await.unwrap();
    assert_eq!(end.failure, None);
    while let Ok(ev) = rx.try_recv() {
        assert!(
            !matches!(ev, SessionEvent::ChannelLost { .. }),
            "a channel was lost: {ev:?}"
        );
    }
}
