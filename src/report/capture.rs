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
    /// Ring entries still referencing this stream.
    in_ring: usize,
    last_at: Duration,
    /// A newer connection of the same channel exists.
    superseded: bool,
    closed: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    stream: u64,
    rec: Record,
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
    ring_bytes: usize,
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
            ring_bytes: 0,
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
            ring_bytes: 0,
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
                    let mut data = bytes.to_vec();
                    if !self.keep_payloads && is_private(ch, dir, header, &data) {
                        data[header.header_len()..].fill(0);
                    }
                    self.ring_bytes += data.len();
                    self.ring.push_back(Entry {
                        stream: sid,
                        rec: Record { dir, at, data },
                    });
                    if let Some(s) = self.streams.get_mut(&sid) {
                        s.in_ring += 1;
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
        let horizon = now.saturating_sub(self.max_age);
        while let Some(front) = self.ring.front() {
            if self.ring_bytes <= self.max_bytes && front.rec.at >= horizon {
                break;
            }
            if let Some(e) = self.ring.pop_front() {
                self.ring_bytes -= e.rec.data.len();
                if let Some(s) = self.streams.get_mut(&e.stream) {
                    s.in_ring = s.in_ring.saturating_sub(1);
                }
            }
        }
        // Forget old connections that were replaced and have nothing left in the
        // window; the current connection of each channel keeps its link records.
        self.streams
            .retain(|_, s| !(s.superseded && s.in_ring == 0 && s.last_at < horizon));
        while self.streams.len() > MAX_STREAMS {
            let victim = self
                .streams
                .iter()
                .find(|(_, s)| s.superseded)
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            self.drop_stream(id);
        }
    }

    /// Bytes of messages currently in the ring (link records not included).
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
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
        for e in &self.ring {
            if let Some(ps) = index.get(&e.stream).and_then(|i| streams.get_mut(*i)) {
                ps.records
                    .push((e.rec.dir, e.rec.at, e.rec.data.as_slice()));
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
            let fresh = self
                .streams
                .get(&id)
                .is_some_and(|s| s.link.is_empty() && s.in_ring == 0);
            if !new_connection || fresh {
                return id;
            }
            if let Some(s) = self.streams.get_mut(&id) {
                s.superseded = true;
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
                in_ring: 0,
                last_at: at,
                superseded: false,
                closed: false,
            },
        );
        self.current.insert(ch, id);
        id
    }

    fn drop_stream(&mut self, id: u64) {
        self.streams.remove(&id);
        let before = self.ring.len();
        let mut freed = 0;
        self.ring.retain(|e| {
            let keep = e.stream != id;
            if !keep {
                freed += e.rec.data.len();
            }
            keep
        });
        self.ring_bytes -= freed;
        self.dropped += (before - self.ring.len()) as u64;
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
        c.ring.iter().map(|e| e.rec.data.clone()).collect()
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
        assert_eq!(c.ring.front().unwrap().rec.at, Duration::from_secs(39));
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
}
