//! A SPICE-aware HTTP CONNECT proxy for tests, shaped like Kerbside's protocol
//! firewall: it tunnels like any CONNECT proxy, learns each tunnel's SPICE channel
//! from the client's link message as it passes, and can close the tunnels of
//! chosen channel types a set time after the server answered the link (Kerbside's
//! default firewall ends port and webdav ~1 s after they link).
//!
//! Like Proxmox's spiceproxy it can send every CONNECT to one address whatever
//! the target names (a `pvespiceproxy:<ticket>...` host) and demand proxy
//! credentials (`FirewallOpts`); like a NAT or proxy with an idle timeout it can
//! start cutting idle tunnels at any time (`set_idle_cut`).
//!
//! Plain Rust on std threads, in the test process: a thread accepts, each tunnel
//! has a thread per direction, a listed tunnel has a timer thread, a reaper
//! enforces the idle cut. Every tunnel is
//! recorded (`tunnels()`); dropping the `Firewall` closes the listener and every
//! tunnel through it. Only plain (non-TLS) SPICE can be inspected: through TLS the
//! link message is ciphertext and the channel stays unknown.

use super::wait_until;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest CONNECT request head read (request line + headers).
const MAX_HEAD: usize = 8192;
/// Connecting to the CONNECT target must finish within this.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The client's link header (16 bytes: `REDQ`, major, minor, size) plus
/// connection_id (u32), channel_type (u8) and channel_id (u8).
const LINK_PREFIX: usize = 16 + 6;

/// Who ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The firewall's `terminate` rule for the tunnel's channel type.
    Firewall,
    /// The client closed (EOF) or its socket failed.
    Client,
    /// The server closed (EOF) or its socket failed.
    Server,
    /// The firewall was dropped or `close_all` was called.
    Stopped,
    /// Nothing crossed it in either direction for the idle-cut time.
    IdleCut,
}

/// How a firewall behaves besides relaying.
#[derive(Debug, Clone, Default)]
pub struct FirewallOpts {
    /// Close tunnels of these channel types this long after the link reply.
    pub terminate: Vec<(u8, Duration)>,
    /// Connect every tunnel here, whatever the CONNECT target says.
    pub route: Option<std::net::SocketAddr>,
    /// Demand `Proxy-Authorization: Basic base64(USER:PASSWORD)` (this value is
    /// `USER:PASSWORD`); anything else is answered 407.
    pub basic_auth: Option<String>,
}

/// One CONNECT tunnel as the firewall saw it.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The CONNECT target (`host:port`); empty if the request was unusable.
    pub target: String,
    /// The HTTP status the firewall answered (200, or 400/405/502).
    pub status: u16,
    /// From the client's link message (`None` until 22 bytes passed, or if the
    /// tunnel did not start with `REDQ`).
    pub connection_id: Option<u32>,
    pub channel_type: Option<u8>,
    pub channel_id: Option<u8>,
    /// When the client's TCP connection was accepted.
    pub opened_at: Instant,
    /// When the server's first bytes (its link reply) passed back to the client.
    pub replied_at: Option<Instant>,
    /// When the tunnel ended, and who ended it (`None`: still open).
    pub ended_at: Option<Instant>,
    pub ended_by: Option<EndedBy>,
    /// Bytes relayed client -> server and server -> client (tunnel payload only).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// When a byte last crossed, either way (the idle cut's clock).
    pub last_active: Instant,
}

impl Tunnel {
    fn new(opened_at: Instant) -> Tunnel {
        Tunnel {
            target: String::new(),
            status: 0,
            connection_id: None,
            channel_type: None,
            channel_id: None,
            opened_at,
            replied_at: None,
            ended_at: None,
            ended_by: None,
            bytes_up: 0,
            bytes_down: 0,
            last_active: opened_at,
        }
    }

    /// Whether the tunnel is still open.
    pub fn is_open(&self) -> bool {
        self.ended_at.is_none()
    }

    /// Whether the tunnel was open at `t` (opened before it and not ended by then).
    pub fn open_at(&self, t: Instant) -> bool {
        self.opened_at <= t && self.ended_at.is_none_or(|e| e > t)
    }

    /// Whether the firewall's `terminate` rule ended this tunnel.
    pub fn closed_by_firewall(&self) -> bool {
        self.ended_by == Some(EndedBy::Firewall)
    }

    /// From the server's link reply to the firewall closing the tunnel (`None`
    /// unless the firewall closed it after a reply).
    pub fn closed_after_reply(&self) -> Option<Duration> {
        match (self.closed_by_firewall(), self.replied_at, self.ended_at) {
            (true, Some(r), Some(e)) => Some(e.saturating_duration_since(r)),
            _ => None,
        }
    }
}

/// State shared by the accept thread, the tunnel threads and the test.
struct Shared {
    opts: FirewallOpts,
    idle_cut: Mutex<Option<Duration>>,
    tunnels: Mutex<Vec<Tunnel>>,
    /// Both sockets of every tunnel that got that far, by tunnel index, to close
    /// them all on drop.
    sockets: Mutex<Vec<(usize, TcpStream, TcpStream)>>,
    stopping: AtomicBool,
}

impl Shared {
    fn tunnels(&self) -> MutexGuard<'_, Vec<Tunnel>> {
        self.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sockets(&self) -> MutexGuard<'_, Vec<(usize, TcpStream, TcpStream)>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end of tunnel `i` (the first caller wins) and shuts both
    /// sockets, so the other direction's relay ends too. Returns whether this call
    /// ended it.
    fn end(&self, i: usize, by: EndedBy) -> bool {
        {
            let mut t = self.tunnels();
            if t[i].ended_at.is_some() {
                return false;
            }
            t[i].ended_at = Some(Instant::now());
            t[i].ended_by = Some(by);
        }
        let mut socks = self.sockets();
        if let Some(pos) = socks.iter().position(|(n, _, _)| *n == i) {
            let (_, c, s) = socks.swap_remove(pos);
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
        true
    }
}

/// A running SPICE-aware CONNECT proxy on 127.0.0.1. Stopped on drop.
pub struct Firewall {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Firewall {
    /// Starts a firewall that lets every channel through.
    pub fn open() -> Firewall {
        Firewall::start(Vec::new())
    }

    /// Starts a firewall that closes every tunnel whose channel type is listed,
    /// the given time after the server's first reply passed back through it
    /// (e.g. `vec![(10, 1s), (11, 1s)]`: Kerbside's treatment of port and webdav).
    /// Returns once it listens.
    pub fn start(terminate: Vec<(u8, Duration)>) -> Firewall {
        Firewall::with(FirewallOpts {
            terminate,
            ..FirewallOpts::default()
        })
    }

    /// Starts a firewall with these options; returns once it listens.
    pub fn with(opts: FirewallOpts) -> Firewall {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the firewall");
        let port = listener.local_addr().expect("firewall address").port();
        let shared = Arc::new(Shared {
            opts,
            idle_cut: Mutex::new(None),
            tunnels: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("firewall-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("start the firewall's accept thread");
        let sh = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("firewall-reaper".into())
            .spawn(move || reap_idle(&sh))
            .expect("start the firewall's reaper thread");
        Firewall {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The firewall's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, as a .vv `proxy=` value.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, close every tunnel idle (no byte either way) for `after`;
    /// `None` stops cutting.
    pub fn set_idle_cut(&self, after: Option<Duration>) {
        *self
            .shared
            .idle_cut
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = after;
    }

    /// A snapshot of every tunnel so far, in the order they were accepted.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.shared.tunnels().clone()
    }

    /// The tunnels whose link message named channel type `ty`.
    pub fn tunnels_of(&self, ty: u8) -> Vec<Tunnel> {
        self.shared
            .tunnels()
            .iter()
            .filter(|t| t.channel_type == Some(ty))
            .cloned()
            .collect()
    }

    /// How many times channel type `ty` was linked through the firewall (tunnels
    /// of that type the server answered).
    pub fn linked(&self, ty: u8) -> usize {
        self.count(|t| t.channel_type == Some(ty) && t.replied_at.is_some())
    }

    /// How many tunnels of channel type `ty` the firewall closed.
    pub fn closed_by_firewall(&self, ty: u8) -> usize {
        self.count(|t| t.channel_type == Some(ty) && t.closed_by_firewall())
    }

    /// How many tunnels of channel type `ty` are open now.
    pub fn open_of(&self, ty: u8) -> usize {
        self.count(|t| t.channel_type == Some(ty) && t.is_open())
    }

    /// How many tunnels are open now (any channel).
    pub fn open_count(&self) -> usize {
        self.count(Tunnel::is_open)
    }

    /// Polls until `cond` holds for a snapshot of the tunnels; false on timeout.
    /// `cond` may call the firewall's other methods (no lock is held meanwhile).
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&[Tunnel]) -> bool) -> bool {
        wait_until(timeout, || cond(&self.tunnels()))
    }

    /// Closes every open tunnel now (as a proxy restart would); the listener stays.
    pub fn close_all(&self) {
        let n = self.shared.tunnels().len();
        for i in 0..n {
            self.shared.end(i, EndedBy::Stopped);
        }
    }

    fn count(&self, f: impl Fn(&Tunnel) -> bool) -> usize {
        self.shared.tunnels().iter().filter(|t| f(t)).count()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.close_all();
    }
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("port", &self.port)
            .field("opts", &self.shared.opts)
            .field("tunnels", &*self.shared.tunnels())
            .finish()
    }
}

/// Ends idle tunnels while an idle cut is set, checking 20 times a second,
/// until the firewall stops.
fn reap_idle(shared: &Shared) {
    while !shared.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let cut = *shared.idle_cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cut) = cut else { continue };
        let idle: Vec<usize> = shared
            .tunnels()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_open() && t.last_active.elapsed() >= cut)
            .map(|(i, _)| i)
            .collect();
        for i in idle {
            shared.end(i, EndedBy::IdleCut);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let i = {
            let mut t = shared.tunnels();
            t.push(Tunnel::new(Instant::now()));
            t.len() - 1
        };
        let sh = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("firewall-tunnel-{i}"))
            .spawn(move || serve(client, i, sh));
        if spawned.is_err() {
            shared.end(i, EndedBy::Stopped);
        }
    }
}

/// Reads the CONNECT head one byte at a time (so no tunnel byte is consumed),
/// up to the blank line; `None` if the client closed or the head is too long.
fn read_head(client: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD {
            return None;
        }
        match client.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One tunnel: the CONNECT exchange, then a relay thread per direction.
fn serve(mut client: TcpStream, i: usize, shared: Arc<Shared>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let answer = |client: &mut TcpStream, status: u16, reason: &str| {
        shared.tunnels()[i].status = status;
        let _ = write!(
            client,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n"
        );
    };
    let Some(head) = read_head(&mut client) else {
        shared.end(i, EndedBy::Client);
        return;
    };
    if shared.stopping.load(Ordering::SeqCst) {
        shared.end(i, EndedBy::Stopped);
        return;
    }
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    shared.tunnels()[i].target = target.to_owned();
    if method != "CONNECT" {
        answer(&mut client, 405, "Method Not Allowed");
        shared.end(i, EndedBy::Stopped);
        return;
    }
    if let Some(want) = &shared.opts.basic_auth {
        let token = super::base64(want.as_bytes());
        let ok = head.lines().any(|l| {
            let Some((k, v)) = l.split_once(':') else {
                return false;
            };
            let mut v = v.split_whitespace();
            k.trim().eq_ignore_ascii_case("proxy-authorization")
                && v.next().is_some_and(|s| s.eq_ignore_ascii_case("basic"))
                && v.next() == Some(token.as_str())
        });
        if !ok {
            answer(&mut client, 407, "Proxy Authentication Required");
            shared.end(i, EndedBy::Stopped);
            return;
        }
    }
    let addr = match shared.opts.route {
        Some(a) => Some(a),
        None => std::net::ToSocketAddrs::to_socket_addrs(target)
            .ok()
            .and_then(|mut a| a.next()),
    };
    let Some(addr) = addr else {
        answer(&mut client, 400, "Bad Request");
        shared.end(i, EndedBy::Stopped);
        return;
    };
    let server = match TcpStream::connect_timeout(&addr, TARGET_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            answer(&mut client, 502, "Bad Gateway");
            shared.end(i, EndedBy::Server);
            return;
        }
    };
    let _ = client.set_read_timeout(None);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.tunnels()[i].status = 200;
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        shared.end(i, EndedBy::Client);
        return;
    }
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(c2), Ok(s2)) = clones else {
        shared.end(i, EndedBy::Stopped);
        return;
    };
    {
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            shared.end(i, EndedBy::Stopped);
            return;
        };
        shared.sockets().push((i, c3, s3));
    }
    // `close_all`/drop may have run between the 200 and registering the sockets:
    // the tunnel is recorded as ended, but nobody shut these.
    if shared.stopping.load(Ordering::SeqCst) || shared.tunnels()[i].ended_at.is_some() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        shared.end(i, EndedBy::Stopped);
        return;
    }
    // Dropped when the tunnel ends: a pending termination timer then gives up.
    let (ended_tx, ended_rx) = mpsc::channel::<()>();
    let sh = Arc::clone(&shared);
    let up = std::thread::Builder::new()
        .name(format!("firewall-up-{i}"))
        .spawn(move || relay_up(client, s2, i, sh));
    let sh = Arc::clone(&shared);
    let down = std::thread::Builder::new()
        .name(format!("firewall-down-{i}"))
        .spawn(move || relay_down(server, c2, i, sh, ended_rx));
    for h in [up, down].into_iter().flatten() {
        let _ = h.join();
    }
    drop(ended_tx);
}

/// Client -> server: forwards everything unchanged, learning the channel from the
/// first 22 bytes on the way.
fn relay_up(mut from: TcpStream, mut to: TcpStream, i: usize, shared: Arc<Shared>) {
    let mut prefix = Vec::with_capacity(LINK_PREFIX);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                shared.end(i, EndedBy::Client);
                return;
            }
            Ok(n) => n,
        };
        if prefix.len() < LINK_PREFIX {
            let take = (LINK_PREFIX - prefix.len()).min(n);
            prefix.extend_from_slice(&buf[..take]);
            if prefix.len() == LINK_PREFIX && prefix.starts_with(b"REDQ") {
                let mut t = shared.tunnels();
                t[i].connection_id = Some(u32::from_le_bytes(
                    prefix[16..20].try_into().expect("4 bytes"),
                ));
                t[i].channel_type = Some(prefix[20]);
                t[i].channel_id = Some(prefix[21]);
            }
        }
        // Recorded before forwarding: the server can only reply after this write.
        {
            let mut t = shared.tunnels();
            t[i].bytes_up += n as u64;
            t[i].last_active = Instant::now();
        }
        if to.write_all(&buf[..n]).is_err() {
            shared.end(i, EndedBy::Server);
            return;
        }
    }
}

/// Server -> client: forwards everything unchanged; on the first bytes (the link
/// reply) it arms the termination timer if the channel type is listed.
fn relay_down(
    mut from: TcpStream,
    mut to: TcpStream,
    i: usize,
    shared: Arc<Shared>,
    ended: mpsc::Receiver<()>,
) {
    let mut ended = Some(ended);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                shared.end(i, EndedBy::Server);
                return;
            }
            Ok(n) => n,
        };
        let first = {
            let mut t = shared.tunnels();
            // Counted as the bytes pass, before they are forwarded.
            t[i].bytes_down += n as u64;
            t[i].last_active = Instant::now();
            let first = t[i].replied_at.is_none();
            if first {
                t[i].replied_at = Some(Instant::now());
            }
            first.then_some(t[i].channel_type).flatten()
        };
        if to.write_all(&buf[..n]).is_err() {
            shared.end(i, EndedBy::Client);
            return;
        }
        let rule = first.and_then(|ty| shared.opts.terminate.iter().find(|(t, _)| *t == ty));
        if let (Some(&(_, after)), Some(rx)) = (rule, ended.take()) {
            let sh = Arc::clone(&shared);
            let _ = std::thread::Builder::new()
                .name(format!("firewall-timer-{i}"))
                .spawn(move || {
                    // The rule's delay *is* the scenario; an earlier end of the
                    // tunnel (sender dropped) cancels it.
                    if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                        sh.end(i, EndedBy::Firewall);
                    }
                });
        }
    }
}
