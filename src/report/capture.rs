//! The in-memory traffic capture behind `traffic.pcap`: every channel's
//! plaintext SPICE messages of the last `capture_secs` (and at most
//! `capture_max_bytes`), plus each connection's link exchange, which is kept
//! outside the ring so the SPICE dissector can always make sense of the stream.
//!
//! Privacy is applied when a record is taken, so the bytes never sit in memory:
//! the ticket block is stored as zeros, and unless `capture_input_payloads` is
//! set, the bodies of client→server inputs messages (keystrokes) and of main
//! AGENT_DATA messages (clipboard) are zeroed, their headers kept (the 6-byte
//! mini header, or the 18-byte full header of a server without MINI_HEADER).

use super::pcap::{write_pcap, PcapStream};
use crate::config::ReportConfig;
use crate::wire::frame::HeaderKind;
use crate::wire::msg;
use crate::wire::{ChannelId, ChannelType};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A link record longer than this is truncated (real ones are well under 1 KiB).
const MAX_LINK_RECORD: usize = 64 * 1024;
/// Link records kept per connection (link mess, reply, auth mechanism, ticket, result).
const MAX_LINK_RECORDS: usize = 8;
/// Connections remembered (reconnects within one capture make new ones).
const MAX_STREAMS: usize = 64;
/// Client ports of the synthetic streams start here, one per connection.
const FIRST_CLIENT_PORT: u16 = 40_000;

/// The same direction type the channel state machine uses.
pub use crate::tap::Direction;
use crate::tap::LinkRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A whole link-phase message: the client's `REDQ` header + SpiceLinkMess
    /// (which starts a new connection for that channel), the server's reply,
    /// the client's auth mechanism word, the server's link result.
    Link,
    /// The client's encrypted ticket block: only its length is kept (zeros).
    LinkTicket,
    /// One whole mini-header message (6-byte header + body) as on the wire
    /// (a full-header message is recorded with [`Capture::record_message`]).
    Message,
}

/// A capture shared between the channel tasks (which record) and the reporter
/// (which encodes). `record` is O(len) and short, so a std mutex is right.
pub type SharedCapture = Arc<Mutex<Capture>>;

/// A link record: few per connection, so each owns its bytes.
#[derive(Debug, Clone)]
struct Record {
    dir: Direction,
    at: Duration,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Stream {
    ch: ChannelId,
    client_port: u16,
    link: Vec<Record>,
    /// Number of its newest ring message: it has messages in the ring while
    /// the ring's oldest is not newer (see [`in_ring`]), which eviction keeps
    /// true without looking the stream up.
    last_seq: Option<u64>,
    last_at: Duration,
    /// A newer connection of the same channel exists.
    superseded: bool,
    closed: bool,
}

/// A ring message: its bytes are the next `len` bytes of the [`ByteRing`]
/// (entries and bytes are both oldest first).
#[derive(Debug, Clone, Copy)]
struct Entry {
    stream: u64,
    /// Numbers increase along the ring.
    seq: u64,
    at: Duration,
    len: usize,
    dir: Direction,
}

/// Bounded capture of the session's SPICE traffic. See the module docs.
#[derive(Debug, Clone)]
pub struct Capture {
    max_age: Duration,
    max_bytes: usize,
    keep_payloads: bool,
    streams: BTreeMap<u64, Stream>,
    current: BTreeMap<ChannelId, u64>,
    next_stream: u64,
    ring: VecDeque<Entry>,
    next_seq: u64,
    bytes: ByteRing,
    /// Superseded streams in `streams`: without any, the MAX_STREAMS loop in
    /// `trim` has nothing to drop.
    superseded: usize,
    /// Only superseded streams with nothing in the ring can be forgotten, once
    /// the horizon passes their `last_at`: `trim` walks `streams` only when
    /// that may have happened, not on every record. At most the `last_at` of
    /// every such stream.
    sweep_after: Option<Duration>,
    /// At most the `last_seq` of every superseded stream with messages in the
    /// ring: once eviction passes it, one may have become forgettable.
    sweep_after_seq: Option<u64>,
    dropped: u64,
}

impl Capture {
    pub fn new(cfg: &ReportConfig) -> Capture {
        let secs = if cfg.capture_secs.is_finite() {
            cfg.capture_secs.clamp(0.0, 86_400.0)
        } else {
            0.0
        };
        Capture {
            max_age: Duration::from_secs_f64(secs),
            max_bytes: cfg.capture_max_bytes,
            keep_payloads: cfg.capture_input_payloads,
            streams: BTreeMap::new(),
            current: BTreeMap::new(),
            next_stream: 0,
            ring: VecDeque::new(),
            next_seq: 0,
            bytes: ByteRing::default(),
            superseded: 0,
            sweep_after: None,
            sweep_after_seq: None,
            dropped: 0,
        }
    }

    pub fn shared(cfg: &ReportConfig) -> SharedCapture {
        Arc::new(Mutex::new(Capture::new(cfg)))
    }

    /// Moves everything recorded out, leaving an empty capture with the same
    /// limits. O(1), so the lock is held only for a moment: call it at the
    /// disconnect and run [`Capture::to_pcap`] on the result off the lock.
    pub fn take(&mut self) -> Capture {
        let empty = Capture {
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            keep_payloads: self.keep_payloads,
            streams: BTreeMap::new(),
            current: BTreeMap::new(),
            next_stream: self.next_stream,
            ring: VecDeque::new(),
            next_seq: 0,
            bytes: ByteRing::default(),
            superseded: 0,
            sweep_after: None,
            sweep_after_seq: None,
            dropped: 0,
        };
        std::mem::replace(self, empty)
    }

    /// A capture of 0 seconds or 0 bytes records nothing.
    pub fn is_enabled(&self) -> bool {
        !self.max_age.is_zero() && self.max_bytes > 0
    }

    /// Records `bytes` seen on `ch` at `at` (time since the session started).
    /// A `Message` is taken to have the mini header; see [`Capture::record_message`].
    pub fn record(
        &mut self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        kind: RecordKind,
        bytes: &[u8],
    ) {
        self.record_with(ch, dir, at, kind, HeaderKind::Mini, bytes);
    }

    /// Records one whole message framed with `header` (mini, or the full 18-byte
    /// header of a server without MINI_HEADER): the privacy filter reads the
    /// type and blanks the body at that header's offsets.
    pub fn record_message(
        &mut self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        header: HeaderKind,
        bytes: &[u8],
    ) {
        self.record_with(ch, dir, at, RecordKind::Message, header, bytes);
    }

    fn record_with(
        &mut self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        kind: RecordKind,
        header: HeaderKind,
        bytes: &[u8],
    ) {
        if !self.is_enabled() || bytes.is_empty() {
            return;
        }
        let new_connection =
            kind == RecordKind::Link && dir == Direction::ToServer && bytes.starts_with(b"REDQ");
        let sid = self.stream_for(ch, at, new_connection);
        match kind {
            RecordKind::Link | RecordKind::LinkTicket => {
                let data = if kind == RecordKind::LinkTicket {
                    vec![0u8; bytes.len().min(MAX_LINK_RECORD)]
                } else {
                    bytes[..bytes.len().min(MAX_LINK_RECORD)].to_vec()
                };
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.last_at = s.last_at.max(at);
                    if s.link.len() < MAX_LINK_RECORDS {
                        s.link.push(Record { dir, at, data });
                    } else {
                        self.dropped += 1;
                    }
                }
            }
            RecordKind::Message => {
                if bytes.len() > self.max_bytes {
                    // Keeping it would evict everything else; count it instead.
                    self.dropped += 1;
                } else {
                    // Making room first evicts what evicting after the push
                    // would, and the byte ring never holds more than the budget.
                    self.evict(self.horizon(at), bytes.len());
                    let kept = if !self.keep_payloads && is_private(ch, dir, header, bytes) {
                        header.header_len()
                    } else {
                        bytes.len()
                    };
                    // A private body goes in as zeros: it is never stored.
                    let (stored, blanked) = bytes.split_at(kept.min(bytes.len()));
                    self.bytes.push(stored, blanked.len(), self.max_bytes);
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.ring.push_back(Entry {
                        stream: sid,
                        seq,
                        at,
                        len: bytes.len(),
                        dir,
                    });
                    if let Some(s) = self.streams.get_mut(&sid) {
                        s.last_seq = Some(seq);
                        s.last_at = s.last_at.max(at);
                    }
                }
            }
        }
        self.trim(at);
    }

    /// Marks `ch`'s current connection as closed (a FIN ends its stream).
    pub fn close(&mut self, ch: ChannelId) {
        if let Some(s) = self
            .current
            .get(&ch)
            .and_then(|id| self.streams.get_mut(id))
        {
            s.closed = true;
        }
    }

    /// Evicts what is older than `capture_secs` before `now` or over the byte
    /// budget. Call it with the disconnect time before [`Capture::to_pcap`].
    pub fn trim(&mut self, now: Duration) {
        let horizon = self.horizon(now);
        self.evict(horizon, 0);
        // An idle session keeps a few small messages: give back what a busy
        // minute grew the ring to (the anonymous memory of an idle spiced).
        self.bytes.shrink();
        // Forget old connections that were replaced and have nothing left in the
        // window; the current connection of each channel keeps its link records.
        let front = self.front_seq();
        if self.sweep_after.is_some_and(|t| t < horizon)
            || self.sweep_after_seq.is_some_and(|q| !in_ring(front, q))
        {
            self.sweep(horizon);
        }
        while self.superseded > 0 && self.streams.len() > MAX_STREAMS {
            let victim = self
                .streams
                .iter()
                .find(|(_, s)| s.superseded)
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            self.drop_stream(id);
        }
    }

    fn horizon(&self, now: Duration) -> Duration {
        now.saturating_sub(self.max_age)
    }

    /// Pops the oldest messages while the ring holds more than `max_bytes - room`
    /// bytes or its oldest message is older than `horizon`.
    fn evict(&mut self, horizon: Duration, room: usize) {
        let budget = self.max_bytes.saturating_sub(room);
        let mut left = self.bytes.len();
        while let Some(front) = self.ring.front() {
            if left <= budget && front.at >= horizon {
                break;
            }
            left = left.saturating_sub(front.len);
            self.ring.pop_front();
        }
        self.bytes.pop_front(self.bytes.len().saturating_sub(left));
    }

    /// Forgets the superseded streams with nothing in the ring and nothing since
    /// `horizon`, and recomputes what `trim` decides to sweep on.
    fn sweep(&mut self, horizon: Duration) {
        let front = self.front_seq();
        let mut superseded = 0;
        let mut after = None;
        let mut after_seq = None;
        self.streams.retain(|_, s| {
            if !s.superseded {
                return true;
            }
            match s.last_seq.filter(|&q| in_ring(front, q)) {
                Some(q) => lower(&mut after_seq, q),
                None if s.last_at < horizon => return false,
                None => lower(&mut after, s.last_at),
            }
            superseded += 1;
            true
        });
        self.superseded = superseded;
        self.sweep_after = after;
        self.sweep_after_seq = after_seq;
    }

    fn front_seq(&self) -> Option<u64> {
        self.ring.front().map(|e| e.seq)
    }

    /// Bytes of messages currently in the ring (link records not included).
    pub fn ring_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Messages currently in the ring.
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Records dropped because a single message exceeded the byte budget or a
    /// connection had too many link records.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Encodes the capture as a pcap: one TCP stream per channel connection,
    /// link records first, then the ring's messages. `server_port` is the
    /// SPICE port (for `tshark -d tcp.port==PORT,spice`); `start_unix` is the
    /// wall-clock time (Unix seconds) at which the session started. Empty when
    /// nothing was recorded (the report then has no `traffic.pcap`).
    pub fn to_pcap(&self, server_port: u16, start_unix: f64) -> Vec<u8> {
        let flat = self.bytes.contiguous();
        let mut index: BTreeMap<u64, usize> = BTreeMap::new();
        let mut streams: Vec<PcapStream<'_>> = Vec::new();
        for (id, s) in &self.streams {
            index.insert(*id, streams.len());
            streams.push(PcapStream {
                client_port: s.client_port,
                records: s
                    .link
                    .iter()
                    .map(|r| (r.dir, r.at, r.data.as_slice()))
                    .collect(),
                closed: s.closed || s.superseded,
            });
        }
        let mut offset = 0usize;
        for e in &self.ring {
            let end = offset.saturating_add(e.len);
            let data = flat.get(offset..end);
            offset = end;
            if let (Some(ps), Some(data)) =
                (index.get(&e.stream).and_then(|i| streams.get_mut(*i)), data)
            {
                ps.records.push((e.dir, e.at, data));
            }
        }
        streams.retain(|s| !s.records.is_empty());
        if streams.is_empty() {
            return Vec::new();
        }
        write_pcap(&streams, server_port, start_unix)
    }

    /// The channel of each stream, by client port (for the docs and tests).
    pub fn client_ports(&self) -> Vec<(ChannelId, u16)> {
        self.streams
            .values()
            .map(|s| (s.ch, s.client_port))
            .collect()
    }

    fn stream_for(&mut self, ch: ChannelId, at: Duration, new_connection: bool) -> u64 {
        if let Some(&id) = self.current.get(&ch) {
            if !new_connection {
                return id;
            }
            let front = self.front_seq();
            let fresh = self.streams.get(&id).is_some_and(|s| {
                s.link.is_empty() && !s.last_seq.is_some_and(|q| in_ring(front, q))
            });
            if fresh {
                return id;
            }
            if let Some(s) = self.streams.get_mut(&id) {
                if !s.superseded {
                    s.superseded = true;
                    self.superseded += 1;
                    match s.last_seq.filter(|&q| in_ring(front, q)) {
                        Some(q) => lower(&mut self.sweep_after_seq, q),
                        None => lower(&mut self.sweep_after, s.last_at),
                    }
                }
            }
        }
        let id = self.next_stream;
        self.next_stream += 1;
        let client_port = FIRST_CLIENT_PORT.wrapping_add((id % 20_000) as u16);
        self.streams.insert(
            id,
            Stream {
                ch,
                client_port,
                link: Vec::new(),
                last_seq: None,
                last_at: at,
                superseded: false,
                closed: false,
            },
        );
        self.current.insert(ch, id);
        id
    }

    /// Forgets a stream and its ring messages. O(ring), but only with more than
    /// MAX_STREAMS connections in the window.
    fn drop_stream(&mut self, id: u64) {
        if self.streams.remove(&id).is_some_and(|s| s.superseded) {
            self.superseded = self.superseded.saturating_sub(1);
        }
        // Rewrite the kept messages into the same buffer from a copy.
        let flat = self.bytes.contiguous().into_owned();
        self.bytes.clear();
        let before = self.ring.len();
        let mut offset = 0usize;
        let bytes = &mut self.bytes;
        let limit = self.max_bytes;
        self.ring.retain(|e| {
            let end = offset.saturating_add(e.len);
            let data = flat.get(offset..end).unwrap_or_default();
            offset = end;
            if e.stream == id {
                return false;
            }
            bytes.push(data, 0, limit);
            true
        });
        self.dropped += (before - self.ring.len()) as u64;
    }
}

/// Whether a stream whose newest ring message is numbered `last_seq` still has
/// messages in a ring whose oldest is numbered `front`: the ring only loses
/// its oldest, or every message of a stream that is then forgotten.
fn in_ring(front: Option<u64>, last_seq: u64) -> bool {
    front.is_some_and(|f| f <= last_seq)
}

fn lower<T: Ord + Copy>(bound: &mut Option<T>, value: T) {
    *bound = Some(bound.map_or(value, |b| b.min(value)));
}

/// Smallest buffer the byte ring starts with (a budget below it is used as is).
const MIN_RING_CAPACITY: usize = 4 * 1024;

/// The ring's message bytes, oldest first, in one circular buffer that grows
/// geometrically up to the byte budget and then stays: recording a message is
/// a copy and evicting one moves `head`, neither allocates.
#[derive(Clone, Default)]
struct ByteRing {
    /// All initialised (zeros before first use); its length is the capacity.
    buf: Vec<u8>,
    head: usize,
    len: usize,
}

impl ByteRing {
    fn len(&self) -> usize {
        self.len
    }

    /// The buffer index `offset` bytes past the head (`offset <= capacity`).
    fn index(&self, offset: usize) -> usize {
        let i = self.head.saturating_add(offset);
        if i >= self.buf.len() {
            i - self.buf.len()
        } else {
            i
        }
    }

    /// Appends `data` and then `zeros` zero bytes. The buffer grows only when
    /// full, doubling but never past `limit` unless this message needs it.
    fn push(&mut self, data: &[u8], zeros: usize, limit: usize) {
        let n = data.len().saturating_add(zeros);
        let need = self.len.saturating_add(n);
        if need > self.buf.len() {
            let grown = self
                .buf
                .len()
                .saturating_mul(2)
                .max(MIN_RING_CAPACITY)
                .min(limit);
            self.grow(need.max(grown));
        }
        let tail = self.index(self.len).min(self.buf.len());
        let (wrapped, after) = self.buf.split_at_mut(tail);
        let first = n.min(after.len());
        let second = (n - first).min(wrapped.len());
        let mut src = data;
        for dst in [&mut after[..first], &mut wrapped[..second]] {
            let (copied, zeroed) = dst.split_at_mut(src.len().min(dst.len()));
            let (now, rest) = src.split_at(copied.len());
            copied.copy_from_slice(now);
            zeroed.fill(0);
            src = rest;
        }
        self.len += first + second;
    }

    fn grow(&mut self, capacity: usize) {
        let (a, b) = self.as_slices();
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(a);
        buf.extend_from_slice(b);
        buf.resize(capacity, 0);
        self.buf = buf;
        self.head = 0;
    }

    /// Reallocates at twice the bytes held when they fill at most a quarter:
    /// amortised O(1) against the doubling in [`ByteRing::push`].
    fn shrink(&mut self) {
        if self.buf.len() > MIN_RING_CAPACITY && self.len <= self.buf.len() / 4 {
            self.grow(self.len.saturating_mul(2).max(MIN_RING_CAPACITY));
        }
    }

    /// Drops the oldest `n` bytes.
    fn pop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = self.index(n);
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    fn as_slices(&self) -> (&[u8], &[u8]) {
        let end = self.head.saturating_add(self.len);
        match end.checked_sub(self.buf.len()) {
            Some(wrapped) if wrapped > 0 => (
                self.buf.get(self.head..).unwrap_or_default(),
                self.buf.get(..wrapped).unwrap_or_default(),
            ),
            _ => (self.buf.get(self.head..end).unwrap_or_default(), &[]),
        }
    }

    /// The bytes in order as one slice (copied only if they wrap).
    fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.as_slices() {
            (a, []) => Cow::Borrowed(a),
            (a, b) => Cow::Owned([a, b].concat()),
        }
    }

    /// Empties the ring, keeping its buffer.
    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// The bytes stay out of logs: megabytes, and possibly sensitive.
impl std::fmt::Debug for ByteRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteRing")
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

/// Keystrokes (everything the client sends on inputs) and agent data (clipboard,
/// file transfer) on main. The type is at offset 0 of the mini header (u16
/// type, u32 size) and at offset 8 of the full one (u64 serial, u16 type, u32
/// size, u32 sub_list).
fn is_private(ch: ChannelId, dir: Direction, header: HeaderKind, msg: &[u8]) -> bool {
    if msg.len() <= header.header_len() {
        return false;
    }
    let at = match header {
        HeaderKind::Mini => 0,
        HeaderKind::Full => 8,
    };
    let ty = u16::from_le_bytes([msg[at], msg[at + 1]]);
    match (ch.ty, dir) {
        (ChannelType::Inputs, Direction::ToServer) => true,
        (ChannelType::Main, Direction::ToServer) => ty == msg::client::MAIN_AGENT_DATA,
        (ChannelType::Main, Direction::ToClient) => ty == msg::server::MAIN_AGENT_DATA,
        _ => false,
    }
}

/// The session records into the shared capture through this.
impl crate::tap::CaptureSink for Mutex<Capture> {
    fn link(&self, ch: ChannelId, dir: Direction, at: Duration, rec: LinkRecord, bytes: &[u8]) {
        let kind = match rec {
            LinkRecord::Link => RecordKind::Link,
            LinkRecord::Ticket => RecordKind::LinkTicket,
        };
        if let Ok(mut c) = self.lock() {
            c.record(ch, dir, at, kind, bytes);
        }
    }

    fn message(
        &self,
        ch: ChannelId,
        dir: Direction,
        at: Duration,
        header: HeaderKind,
        bytes: &[u8],
    ) {
        if let Ok(mut c) = self.lock() {
            c.record_message(ch, dir, at, header, bytes);
        }
    }

    fn closed(&self, ch: ChannelId) {
        if let Ok(mut c) = self.lock() {
            c.close(ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Records one whole message (the common case in these tests).
    fn message(c: &mut Capture, ch: ChannelId, dir: Direction, at: Duration, bytes: &[u8]) {
        c.record(ch, dir, at, RecordKind::Message, bytes);
    }

    fn cfg(secs: f64, bytes: usize, keep: bool) -> ReportConfig {
        ReportConfig {
            capture_secs: secs,
            capture_max_bytes: bytes,
            capture_input_payloads: keep,
            ..ReportConfig::default()
        }
    }

    fn ring_data(c: &Capture) -> Vec<Vec<u8>> {
        let flat = c.bytes.contiguous();
        let mut offset = 0;
        c.ring
            .iter()
            .map(|e| {
                offset += e.len;
                flat[offset - e.len..offset].to_vec()
            })
            .collect()
    }

    const INPUTS: ChannelId = ChannelId {
        ty: ChannelType::Inputs,
        id: 0,
    };
    const DISPLAY: ChannelId = ChannelId {
        ty: ChannelType::Display,
        id: 0,
    };

    #[test]
    fn private_payloads_zeroed_by_default() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, false));
        let t = Duration::from_secs(1);
        message(
            &mut c,
            INPUTS,
            Direction::ToServer,
            t,
            &msg(101, b"\x1e\0\0\0"),
        );
        message(&mut c, INPUTS, Direction::ToClient, t, &msg(102, b"\x02\0"));
        message(
            &mut c,
            ChannelId::MAIN,
            Direction::ToServer,
            t,
            &msg(107, b"secret clip"),
        );
        message(
            &mut c,
            ChannelId::MAIN,
            Direction::ToClient,
            t,
            &msg(109, b"guest clip"),
        );
        message(
            &mut c,
            ChannelId::MAIN,
            Direction::ToClient,
            t,
            &msg(114, b"uuid-bytes-here!"),
        );
        let d = ring_data(&c);
        assert_eq!(d[0], msg(101, &[0; 4]));
        assert_eq!(d[1], msg(102, b"\x02\0"), "server->client inputs kept");
        assert_eq!(d[2], msg(107, &[0; 11]));
        assert_eq!(d[3], msg(109, &[0; 10]));
        assert_eq!(
            d[4],
            msg(114, b"uuid-bytes-here!"),
            "UUID is not agent data"
        );
    }

    /// A full-header message (no MINI_HEADER): u64 serial, u16 type, u32 size,
    /// u32 sub_list, body.
    fn full(serial: u64, ty: u16, body: &[u8]) -> Vec<u8> {
        let mut v = serial.to_le_bytes().to_vec();
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn private_payloads_zeroed_with_the_full_header() {
        use crate::tap::CaptureSink;
        let c = Mutex::new(Capture::new(&cfg(60.0, 1 << 20, false)));
        let t = Duration::from_secs(1);
        let full_hdr = HeaderKind::Full;
        let key = full(1, 101, b"KEYSTROKE-abc");
        let clip_out = full(2, 107, b"CLIPBOARD-out");
        let clip_in = full(3, 109, b"CLIPBOARD-in");
        // Serial 107 makes the first bytes look like a mini AGENT_DATA header:
        // only the full header's own type (114) counts.
        let uuid = full(107, 114, b"uuid-bytes-here!");
        c.message(INPUTS, Direction::ToServer, t, full_hdr, &key);
        c.message(ChannelId::MAIN, Direction::ToServer, t, full_hdr, &clip_out);
        c.message(ChannelId::MAIN, Direction::ToClient, t, full_hdr, &clip_in);
        c.message(ChannelId::MAIN, Direction::ToClient, t, full_hdr, &uuid);
        let c = c.into_inner().unwrap();
        let d = ring_data(&c);
        assert_eq!(d[0], full(1, 101, &[0; 13]), "header kept, body blanked");
        assert_eq!(d[1], full(2, 107, &[0; 13]));
        assert_eq!(d[2], full(3, 109, &[0; 12]));
        assert_eq!(d[3], uuid, "not agent data");
        let pcap = c.to_pcap(5900, 1.0);
        for secret in [&b"KEYSTROKE"[..], b"CLIPBOARD"] {
            assert!(!contains(&pcap, secret), "payload reached the pcap");
        }
        assert!(
            contains(&pcap, &full(1, 101, &[0; 13])),
            "header kept in the pcap"
        );
        assert!(contains(&pcap, b"uuid-bytes-here!"));
    }

    #[test]
    fn private_payloads_kept_when_configured() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, true));
        let t = Duration::from_secs(1);
        message(
            &mut c,
            INPUTS,
            Direction::ToServer,
            t,
            &msg(101, b"\x1e\0\0\0"),
        );
        message(
            &mut c,
            ChannelId::MAIN,
            Direction::ToServer,
            t,
            &msg(107, b"clip"),
        );
        let d = ring_data(&c);
        assert_eq!(d[0], msg(101, b"\x1e\0\0\0"));
        assert_eq!(d[1], msg(107, b"clip"));
    }

    #[test]
    fn ticket_is_zeros() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, true));
        let t = Duration::ZERO;
        c.record(
            ChannelId::MAIN,
            Direction::ToServer,
            t,
            RecordKind::LinkTicket,
            &[0xAB; 128],
        );
        let s = c.streams.values().next().unwrap();
        assert_eq!(s.link[0].data, vec![0u8; 128]);
    }

    #[test]
    fn ring_evicts_by_time() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, false));
        for s in 0..100u64 {
            message(
                &mut c,
                DISPLAY,
                Direction::ToClient,
                Duration::from_secs(s),
                &msg(4, &s.to_le_bytes()),
            );
        }
        // now = 99 s: entries at 39..=99 remain.
        assert_eq!(c.ring_len(), 61);
        assert_eq!(c.ring.front().unwrap().at, Duration::from_secs(39));
        c.trim(Duration::from_secs(150));
        assert_eq!(c.ring_len(), 10, "90..=99 are within 60 s of 150");
    }

    #[test]
    fn ring_evicts_by_bytes_and_keeps_link() {
        let mut c = Capture::new(&cfg(600.0, 1000, false));
        c.record(
            DISPLAY,
            Direction::ToServer,
            Duration::ZERO,
            RecordKind::Link,
            b"REDQ-link-mess",
        );
        for i in 0..50u32 {
            message(
                &mut c,
                DISPLAY,
                Direction::ToClient,
                Duration::from_millis(i.into()),
                &msg(4, &[1; 94]),
            );
        }
        assert_eq!(c.ring_bytes(), 1000);
        assert_eq!(c.ring_len(), 10);
        let s = c.streams.values().next().unwrap();
        assert_eq!(s.link.len(), 1, "link records live outside the ring");
        // A message larger than the whole budget is dropped, not kept alone.
        message(
            &mut c,
            DISPLAY,
            Direction::ToClient,
            Duration::from_millis(60),
            &msg(4, &[1; 2000]),
        );
        assert_eq!(c.ring_len(), 10);
        assert_eq!(c.dropped(), 1);
    }

    #[test]
    fn relink_starts_a_new_stream_and_old_one_expires() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, false));
        c.record(
            DISPLAY,
            Direction::ToServer,
            Duration::ZERO,
            RecordKind::Link,
            b"REDQ1",
        );
        c.record(
            DISPLAY,
            Direction::ToServer,
            Duration::from_secs(10),
            RecordKind::Link,
            b"REDQ2",
        );
        let ports: Vec<u16> = c.client_ports().iter().map(|p| p.1).collect();
        assert_eq!(ports, vec![40_000, 40_001]);
        c.trim(Duration::from_secs(100));
        let ports: Vec<u16> = c.client_ports().iter().map(|p| p.1).collect();
        assert_eq!(ports, vec![40_001], "superseded, idle stream forgotten");
    }

    #[test]
    fn take_leaves_an_empty_capture() {
        let mut c = Capture::new(&cfg(60.0, 1 << 20, false));
        c.record(
            DISPLAY,
            Direction::ToServer,
            Duration::ZERO,
            RecordKind::Link,
            b"REDQ",
        );
        message(
            &mut c,
            DISPLAY,
            Direction::ToClient,
            Duration::ZERO,
            &msg(4, b"x"),
        );
        let taken = c.take();
        assert_eq!(taken.ring_len(), 1);
        assert_eq!(c.ring_len(), 0);
        assert!(c.to_pcap(5900, 0.0).is_empty());
        assert!(!taken.to_pcap(5900, 0.0).is_empty());
        // New streams keep distinct ports from the taken ones.
        c.record(
            DISPLAY,
            Direction::ToServer,
            Duration::ZERO,
            RecordKind::Link,
            b"REDQ",
        );
        assert_eq!(c.client_ports()[0].1, 40_001);
    }

    #[test]
    fn disabled_capture_records_nothing() {
        let mut c = Capture::new(&cfg(0.0, 1 << 20, false));
        message(
            &mut c,
            DISPLAY,
            Direction::ToClient,
            Duration::ZERO,
            &msg(4, b"x"),
        );
        assert_eq!(c.ring_len(), 0);
        assert!(c.client_ports().is_empty());
        assert!(c.to_pcap(5900, 0.0).is_empty());
    }

    /// Deterministic xorshift, so the randomised tests reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    const MAIN: ChannelId = ChannelId::MAIN;

    fn link(c: &mut Capture, ch: ChannelId, at: Duration, bytes: &[u8]) {
        c.record(ch, Direction::ToServer, at, RecordKind::Link, bytes);
    }

    fn ports(c: &Capture) -> Vec<u16> {
        c.client_ports().iter().map(|p| p.1).collect()
    }

    /// Checks the storage against `recorded` (each message as it should be
    /// stored, by sequence number) and the bookkeeping against the ring.
    fn check(c: &Capture, recorded: &[Vec<u8>]) {
        let data = ring_data(c);
        assert_eq!(data.len(), c.ring.len());
        for (e, d) in c.ring.iter().zip(&data) {
            assert_eq!(d, &recorded[e.seq as usize], "message {}", e.seq);
            assert!(c.streams.contains_key(&e.stream), "entry of a lost stream");
        }
        let sum: usize = c.ring.iter().map(|e| e.len).sum();
        assert_eq!(c.ring_bytes(), sum);
        assert!(c.ring_bytes() <= c.max_bytes);
        assert!(c.bytes.buf.len() <= c.max_bytes, "ring buffer over budget");
        let front = c.front_seq();
        for (id, s) in &c.streams {
            let has = c.ring.iter().any(|e| e.stream == *id);
            let says = s.last_seq.is_some_and(|q| in_ring(front, q));
            assert_eq!(has, says, "stream {id}: in the ring");
            if s.superseded && !has {
                assert!(c.sweep_after.is_some_and(|t| t <= s.last_at));
            }
            if let (true, Some(q)) = (s.superseded && has, s.last_seq) {
                assert!(c.sweep_after_seq.is_some_and(|b| b <= q));
            }
        }
        let superseded = c.streams.values().filter(|s| s.superseded).count();
        assert_eq!(c.superseded, superseded);
        assert!(c.streams.len() <= MAX_STREAMS || superseded == 0);
    }

    #[test]
    fn byte_ring_matches_a_deque_across_wraps_and_growth() {
        for (limit, push, pop, rounds) in
            [(1000, 300, 400, 20_000), (1 << 20, 60_000, 80_000, 1_500)]
        {
            let mut ring = ByteRing::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut rng = Rng(7);
            let (mut wrapped, mut moved) = (0, 0);
            for i in 0..rounds {
                if rng.below(3) > 0 {
                    let n = rng.below(push) as usize;
                    let data: Vec<u8> = (0..n).map(|k| (i + k) as u8 | 1).collect();
                    let zeros = rng.below(push / 5) as usize;
                    while model.len() + n + zeros > limit {
                        let k = model.len().min(1 + rng.below(pop) as usize);
                        ring.pop_front(k);
                        model.drain(..k);
                    }
                    let (capacity, head) = (ring.buf.len(), ring.head);
                    ring.push(&data, zeros, limit);
                    if ring.buf.len() > capacity && head > 0 {
                        moved += 1;
                    }
                    model.extend(data.iter().chain([0u8].iter().cycle().take(zeros)));
                } else {
                    let k = rng.below(pop) as usize;
                    ring.pop_front(k);
                    model.drain(..k.min(model.len()));
                    ring.shrink();
                }
                assert_eq!(ring.len(), model.len());
                assert_eq!(&*ring.contiguous(), model.make_contiguous());
                assert!(ring.buf.len() <= limit);
                if !ring.as_slices().1.is_empty() {
                    wrapped += 1;
                }
            }
            assert!(wrapped > rounds / 10, "the wrapped layout was exercised");
            if limit > MIN_RING_CAPACITY {
                assert!(moved > 0, "growth with data away from the start");
            }
        }
    }

    #[test]
    fn a_busy_minute_is_given_back_when_the_session_goes_idle() {
        let mut c = Capture::new(&cfg(60.0, 4 << 20, false));
        let body = vec![7u8; 1000];
        for i in 0..3_000u64 {
            message(
                &mut c,
                DISPLAY,
                Direction::ToClient,
                Duration::from_millis(i),
                &msg(302, &body),
            );
        }
        assert!(c.bytes.buf.len() >= 3_000_000, "{}", c.bytes.buf.len());
        // Idle: a PING and its PONG every 15 s, for two minutes.
        for k in 1..=8u64 {
            let at = Duration::from_secs(3 + 15 * k);
            message(
                &mut c,
                ChannelId::MAIN,
                Direction::ToClient,
                at,
                &msg(4, &[0; 12]),
            );
            message(
                &mut c,
                ChannelId::MAIN,
                Direction::ToServer,
                at,
                &msg(3, &[0; 12]),
            );
        }
        assert_eq!(c.ring_len(), 10, "the last minute");
        assert!(
            c.bytes.buf.len() <= MIN_RING_CAPACITY,
            "{}",
            c.bytes.buf.len()
        );
    }

    #[test]
    fn private_bodies_are_never_stored() {
        for keep in [false, true] {
            let mut c = Capture::new(&cfg(60.0, 700, keep));
            let mut found = false;
            for i in 0..2_000u64 {
                let at = Duration::from_millis(i);
                let body = b"SECRET-PAYLOAD".repeat(1 + (i % 5) as usize);
                match i % 4 {
                    0 => message(&mut c, INPUTS, Direction::ToServer, at, &msg(101, &body)),
                    1 => c.record_message(
                        MAIN,
                        Direction::ToClient,
                        at,
                        HeaderKind::Full,
                        &full(i, 109, &body),
                    ),
                    2 => message(&mut c, MAIN, Direction::ToServer, at, &msg(107, &body)),
                    _ => message(&mut c, DISPLAY, Direction::ToClient, at, &msg(4, &[7; 90])),
                }
                // The whole buffer, free space included.
                found |= contains(&c.bytes.buf, b"SECRET");
            }
            assert_eq!(found, keep, "keep_payloads {keep}");
            let d = ring_data(&c);
            let last = d.len() - 1;
            if !keep {
                assert_eq!(d[last], msg(4, &[7; 90]));
                assert_eq!(d[last - 1], msg(107, &[0; 14 * 4]), "header kept");
                assert_eq!(d[last - 2], full(1997, 109, &[0; 14 * 3]));
                assert_eq!(d[last - 3], msg(101, &[0; 14 * 2]));
            }
        }
    }

    #[test]
    fn byte_budget_and_buffer_stay_bounded() {
        for (secs, max_bytes, top) in [(60.0, 4 << 20, 8192), (600.0, 5000, 5000)] {
            let mut c = Capture::new(&cfg(secs, max_bytes, false));
            let mut rng = Rng(99);
            let body = vec![0x5A; 8192];
            for i in 0..100_000u64 {
                let len = 6 + rng.below(top - 5) as usize;
                let at = Duration::from_millis(i);
                message(
                    &mut c,
                    DISPLAY,
                    Direction::ToClient,
                    at,
                    &msg(4, &body[..len - 6]),
                );
                assert!(c.ring_bytes() <= max_bytes);
            }
            assert!(
                c.bytes.buf.len() <= max_bytes,
                "capacity {}",
                c.bytes.buf.len()
            );
            let sum: usize = c.ring.iter().map(|e| e.len).sum();
            assert_eq!(c.ring_bytes(), sum);
            assert!(
                c.ring_bytes() > max_bytes - top as usize,
                "the budget was used"
            );
        }
    }

    /// (client port, closed, records as (direction, seconds, bytes)).
    type Expected = (u16, bool, Vec<(Direction, u64, Vec<u8>)>);

    /// Streams as `to_pcap` should see them, encoded the same way.
    fn expected_pcap(streams: &[Expected]) -> Vec<u8> {
        let streams: Vec<PcapStream<'_>> = streams
            .iter()
            .map(|(port, closed, recs)| PcapStream {
                client_port: *port,
                records: recs
                    .iter()
                    .map(|(d, s, b)| (*d, Duration::from_secs(*s), b.as_slice()))
                    .collect(),
                closed: *closed,
            })
            .collect();
        write_pcap(&streams, 5930, 1.7e9)
    }

    #[test]
    fn pcap_of_a_mixed_sequence() {
        use Direction::{ToClient as C, ToServer as S};
        let mut c = Capture::new(&cfg(10.0, 300, false));
        let s = Duration::from_secs;
        link(&mut c, DISPLAY, s(0), b"REDQ-display-1");
        c.record(DISPLAY, C, s(0), RecordKind::Link, b"reply-1");
        c.record(DISPLAY, S, s(0), RecordKind::LinkTicket, &[0xAB; 16]);
        link(&mut c, INPUTS, s(0), b"REDQ-inputs");
        let d1 = msg(4, &[1; 50]);
        message(&mut c, DISPLAY, C, s(1), &d1);
        message(&mut c, INPUTS, S, s(2), &msg(101, b"KEYS"));
        message(&mut c, MAIN, S, s(3), &msg(107, b"clip"));
        let d2 = msg(4, &[2; 100]);
        message(&mut c, DISPLAY, C, s(4), &d2);
        link(&mut c, DISPLAY, s(5), b"REDQ-display-2");
        c.record(DISPLAY, C, s(5), RecordKind::Link, b"reply-2");
        let d3 = msg(4, &[3; 80]);
        message(&mut c, DISPLAY, C, s(6), &d3);
        assert_eq!(c.ring_bytes(), 268);
        let d4 = msg(4, &[4; 40]);
        message(&mut c, DISPLAY, C, s(7), &d4);
        assert_eq!(c.ring_bytes(), 258, "d1 evicted by bytes");
        assert!(!c.bytes.as_slices().1.is_empty(), "d4 wraps around");
        message(&mut c, DISPLAY, C, s(8), &msg(4, &[9; 400]));
        assert_eq!(c.dropped(), 1);
        let i1 = msg(102, b"\x02\0");
        message(&mut c, INPUTS, C, s(13), &i1);
        let f1 = full(9, 109, b"clipboard!");
        c.record_message(MAIN, C, s(14), HeaderKind::Full, &f1);
        let f1_kept = full(9, 109, &[0; 10]);
        // The time evictions took the keystroke (at 13) and the clipboard (14).
        assert_eq!(c.ring_len(), 5);
        let old_display = (
            40_000,
            true,
            vec![
                (S, 0, b"REDQ-display-1".to_vec()),
                (C, 0, b"reply-1".to_vec()),
                (S, 0, vec![0; 16]),
                (C, 4, d2.clone()),
            ],
        );
        let inputs = |closed| {
            (
                40_001,
                closed,
                vec![(S, 0, b"REDQ-inputs".to_vec()), (C, 13, i1.clone())],
            )
        };
        let main = (40_002, false, vec![(C, 14, f1_kept.clone())]);
        let display_link = vec![
            (S, 5, b"REDQ-display-2".to_vec()),
            (C, 5, b"reply-2".to_vec()),
        ];
        let mut display = display_link.clone();
        display.extend([(C, 6, d3.clone()), (C, 7, d4.clone())]);
        assert_eq!(
            c.to_pcap(5930, 1.7e9),
            expected_pcap(&[
                old_display,
                inputs(false),
                main.clone(),
                (40_003, false, display)
            ])
        );
        // d2 (the superseded stream's last message, at 4) goes out of the
        // window: the stream and its link records with it.
        let d5 = msg(4, &[5; 20]);
        message(&mut c, DISPLAY, C, s(15), &d5);
        assert_eq!(ports(&c), vec![40_001, 40_002, 40_003]);
        c.close(INPUTS);
        c.trim(s(17));
        assert_eq!(c.ring_bytes(), 108);
        let mut display = display_link;
        display.extend([(C, 7, d4), (C, 15, d5)]);
        assert_eq!(
            c.to_pcap(5930, 1.7e9),
            expected_pcap(&[inputs(true), main, (40_003, false, display)])
        );
    }

    #[test]
    fn superseded_stream_goes_once_its_messages_and_time_are_gone() {
        let mut c = Capture::new(&cfg(10.0, 1000, false));
        let s = Duration::from_secs;
        link(&mut c, DISPLAY, s(0), b"REDQ1");
        message(&mut c, MAIN, Direction::ToClient, s(20), &msg(4, &[1; 10]));
        // Recorded late (channel tasks race for the lock): behind a newer front.
        message(
            &mut c,
            DISPLAY,
            Direction::ToClient,
            s(5),
            &msg(4, &[2; 10]),
        );
        link(&mut c, DISPLAY, s(21), b"REDQ2");
        assert_eq!(
            ports(&c),
            vec![40_000, 40_001, 40_002],
            "old one still in the ring"
        );
        // Evicted by bytes, long after its last record: forgotten at once.
        message(&mut c, MAIN, Direction::ToClient, s(22), &msg(4, &[3; 990]));
        assert_eq!(c.ring_len(), 1);
        assert_eq!(ports(&c), vec![40_001, 40_002]);

        // Evicted while its last record is still within the window: kept
        // until the window passes it.
        link(&mut c, DISPLAY, s(23), b"REDQ3");
        message(
            &mut c,
            DISPLAY,
            Direction::ToClient,
            s(24),
            &msg(4, &[4; 10]),
        );
        link(&mut c, DISPLAY, s(25), b"REDQ4");
        message(&mut c, MAIN, Direction::ToClient, s(26), &msg(4, &[5; 990]));
        assert_eq!(c.ring_len(), 1);
        assert_eq!(ports(&c), vec![40_001, 40_002, 40_003, 40_004]);
        c.trim(s(34));
        assert_eq!(
            ports(&c),
            vec![40_001, 40_003, 40_004],
            "24 is within 10 s of 34, 21 is not"
        );
        c.trim(s(35));
        assert_eq!(ports(&c), vec![40_001, 40_004]);
    }

    #[test]
    fn over_max_streams_the_oldest_superseded_go_with_their_messages() {
        for max_bytes in [1 << 20, 2000] {
            let mut c = Capture::new(&cfg(600.0, max_bytes, false));
            let mut recorded = Vec::new();
            for i in 0..70u8 {
                let at = Duration::from_secs(i.into());
                link(&mut c, DISPLAY, at, b"REDQ");
                let m = msg(4, &vec![i; 10 + usize::from(i)]);
                message(
                    &mut c,
                    INPUTS,
                    Direction::ToClient,
                    at,
                    &msg(4, &[0xEE; 30]),
                );
                message(&mut c, DISPLAY, Direction::ToClient, at, &m);
                recorded.extend([msg(4, &[0xEE; 30]), m]);
                check(&c, &recorded);
            }
            // 70 display connections and inputs: the first 7 display ones went.
            assert_eq!(c.client_ports().len(), MAX_STREAMS);
            assert_eq!(ports(&c)[..2], [40_001, 40_008]);
            if max_bytes == 1 << 20 {
                assert_eq!(c.dropped(), 7);
                assert_eq!(c.ring_len(), 140 - 7);
            }
        }
    }

    #[test]
    fn current_streams_are_never_dropped_for_max_streams() {
        let mut c = Capture::new(&cfg(600.0, 1 << 20, false));
        let t = Duration::from_secs(1);
        link(&mut c, DISPLAY, t, b"REDQ");
        for id in 0..MAX_STREAMS as u8 {
            let ch = ChannelId::new(ChannelType::Usbredir, id);
            link(&mut c, ch, t, b"REDQ");
            message(&mut c, ch, Direction::ToClient, t, &msg(4, &[id; 4]));
        }
        assert_eq!(c.client_ports().len(), MAX_STREAMS + 1, "none superseded");
        link(&mut c, DISPLAY, t, b"REDQ");
        let ports = ports(&c);
        assert_eq!(ports.len(), MAX_STREAMS + 1);
        assert!(!ports.contains(&40_000), "the superseded one went");
        assert_eq!(c.ring_len(), MAX_STREAMS);
    }

    #[test]
    fn random_sequences_keep_storage_and_bookkeeping_consistent() {
        let chans = [MAIN, DISPLAY, INPUTS];
        for (seed, secs, max_bytes) in [(1, 5.0, 4000), (2, 1.0, 600), (3, 30.0, 20_000)] {
            let mut rng = Rng(seed);
            let mut c = Capture::new(&cfg(secs, max_bytes, false));
            let mut recorded = Vec::new();
            let mut t = 0u64;
            for i in 0..5_000u64 {
                let ch = chans[rng.below(3) as usize];
                t = match rng.below(10) {
                    0 => t.saturating_sub(rng.below(3_000)),
                    _ => t + rng.below(200),
                };
                let at = Duration::from_millis(t);
                match rng.below(100) {
                    0..=2 => link(&mut c, ch, at, b"REDQ"),
                    3 => {
                        c.close(ch);
                        check(&c, &recorded);
                        continue;
                    }
                    4 => c.trim(at),
                    _ => {
                        let top = if rng.below(20) == 0 { 800 } else { 120 };
                        let n = 1 + rng.below(top);
                        let body: Vec<u8> = (0..n).map(|k| (i + k) as u8).collect();
                        let m = msg([4, 101, 107][rng.below(3) as usize], &body);
                        let private = is_private(ch, Direction::ToServer, HeaderKind::Mini, &m);
                        let mut kept = m.clone();
                        if private {
                            kept[6..].fill(0);
                        }
                        if m.len() <= max_bytes {
                            recorded.push(kept);
                        }
                        message(&mut c, ch, Direction::ToServer, at, &m);
                    }
                }
                check(&c, &recorded);
                // What the old sweep on every record guaranteed.
                let horizon = at.saturating_sub(c.max_age);
                let front = c.front_seq();
                assert!(!c.streams.values().any(|s| s.superseded
                    && !s.last_seq.is_some_and(|q| in_ring(front, q))
                    && s.last_at < horizon));
            }
        }
    }
}
