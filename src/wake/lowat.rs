//! How many bytes a streaming display channel lets the kernel gather before it
//! wakes the process (the socket's receive low-water mark).
//!
//! A changing screen reaches the client as bursts: spice-server writes each
//! update as a run of messages, and the bytes arrive in pieces (a TCP segment
//! on loopback, a receive-offload batch on a network). A client woken by every
//! piece wakes several times per update; spiced needs the update, not the
//! pieces. So once updates recur (bursts less than [`MAX_HOLD`] apart), the
//! mark is set to three quarters of the last burst: the kernel holds the
//! first pieces and wakes the process once the update is mostly in.
//!
//! Three limits keep a mark from stalling anything:
//! - the server stops after `2 x window + 1` unacknowledged messages until the
//!   client ACKs (see `channel`): the mark never asks for more than half the
//!   messages the server may still send, at the burst's average size (an X
//!   desktop's ~1 KB messages reach that stop in every 40 KB);
//! - a deadline: data left under the mark (a smaller update, the last one of
//!   a run) is read at most a hold after the last read, where the hold is one
//!   and a half times the period of the bursts (between [`MIN_HOLD`] and
//!   [`MAX_HOLD`]); then the mark goes back to one byte;
//! - each time data waited for the deadline, later marks are halved (down
//!   to none), and grow back only after [`CLEAN_BURSTS`] bursts without.
//!
//! A stream without gaps (an X desktop under load: small draws back to back,
//! the bytes arriving every few hundred microseconds) has no bursts to size a
//! mark by. Once one burst has lasted [`STREAM_AFTER`], the mark is what the
//! stream brings in [`STREAM_SPAN`] at its rate so far (under the same ACK
//! ceiling and caution, at least [`MIN_STREAM_MARK`]), and data left under
//! it is read by a deadline of [`GAP`]: a stream that pauses is read as
//! soon as it would count as a new burst anyway.
//!
//! Sans-IO: reads and the deadline go in, the mark to set comes out.

use super::Time;
use std::time::Duration;

/// Reads closer together than this belong to one burst.
pub const GAP: Duration = Duration::from_millis(5);
/// The shortest hold under a mark.
pub const MIN_HOLD: Duration = Duration::from_millis(20);
/// Bursts further apart than this are no stream; also the longest any data
/// waits under a mark.
pub const MAX_HOLD: Duration = Duration::from_millis(250);
/// A mark below this saves too little to be worth a setsockopt.
pub const MIN_MARK: usize = 16 * 1024;
/// The highest mark (bytes waiting in the kernel at most, besides the hold).
pub const MAX_MARK: usize = 256 * 1024;
/// A burst this long is a stream.
pub const STREAM_AFTER: Duration = Duration::from_millis(20);
/// A stream wakes the process once per this much of its data (well under
/// [`GAP`], so a stream at half the rate still reads as one).
pub const STREAM_SPAN: Duration = Duration::from_millis(2);
/// The lowest mark on a stream; marks are multiples of it, so a steady
/// stream keeps one mark (no setsockopt per read).
pub const MIN_STREAM_MARK: usize = 4 * 1024;

/// The low-water mark of one channel's socket.
#[derive(Debug, Clone)]
pub struct Lowat<T> {
    /// What the socket is set to (1: the kernel's default).
    mark: usize,
    last_read: Option<T>,
    /// When the current burst and the one before it began.
    burst_start: Option<T>,
    prev_burst_start: Option<T>,
    burst_bytes: usize,
    burst_messages: u64,
    deadline: Option<T>,
    /// Marks are divided by 2^caution: raised each time data waited under a
    /// mark until the deadline, lowered after [`CLEAN_BURSTS`] without.
    caution: u32,
    clean_bursts: u32,
    /// When the deadline last lowered the mark.
    lowered: Option<T>,
}

/// Bursts read without a deadline before marks grow back by half a step.
pub const CLEAN_BURSTS: u32 = 64;
/// Past this caution a mark stays under [`MIN_MARK`]: marks are off.
const MAX_CAUTION: u32 = 5;

impl<T: Time> Default for Lowat<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Time> Lowat<T> {
    /// The kernel's default: wake on any byte.
    pub fn new() -> Self {
        Lowat {
            mark: 1,
            last_read: None,
            burst_start: None,
            prev_burst_start: None,
            burst_bytes: 0,
            burst_messages: 0,
            deadline: None,
            caution: 0,
            clean_bursts: 0,
            lowered: None,
        }
    }

    /// The mark the socket should have.
    pub fn mark(&self) -> usize {
        self.mark
    }

    /// When data still under the mark must be read (None: no mark set).
    pub fn deadline(&self) -> Option<T> {
        self.deadline
    }

    /// A read at `now` brought `bytes` bytes holding `messages` whole
    /// messages; after them the server may send `headroom` more messages
    /// before it waits for an ACK (None: it never waits). Returns the new mark
    /// when it changed.
    pub fn on_read(
        &mut self,
        now: T,
        bytes: usize,
        messages: u64,
        headroom: Option<u32>,
    ) -> Option<usize> {
        if bytes == 0 {
            return None;
        }
        let same_burst = self.last_read.is_some_and(|t| now.since(t) < GAP);
        if self.lowered.take().is_some_and(|t| now.since(t) < GAP) {
            // Data sat under the mark until the deadline: the server stopped
            // short of it (its ACK window, a smaller update).
            self.caution = (self.caution + 1).min(MAX_CAUTION);
            self.clean_bursts = 0;
        } else if !same_burst || self.in_stream(now) {
            // A stream has no bursts to count: each clean read counts.
            self.clean_bursts += 1;
            if self.clean_bursts >= CLEAN_BURSTS {
                self.clean_bursts = 0;
                self.caution = self.caution.saturating_sub(1);
            }
        }
        if same_burst {
            self.burst_bytes = self.burst_bytes.saturating_add(bytes);
            self.burst_messages = self.burst_messages.saturating_add(messages);
        } else {
            self.prev_burst_start = self.burst_start;
            self.burst_start = Some(now);
            self.burst_bytes = bytes;
            self.burst_messages = messages;
        }
        self.last_read = Some(now);
        let period = match (self.prev_burst_start, self.burst_start) {
            (Some(p), Some(s)) => Some(s.since(p)),
            _ => None,
        }
        .filter(|p| *p <= MAX_HOLD);
        let mut mark = 1;
        if self.in_stream(now) {
            let elapsed = now.since(self.burst_start.unwrap_or(now));
            let span =
                self.burst_bytes as u128 * STREAM_SPAN.as_nanos() / elapsed.as_nanos().max(1);
            let want = self.capped(usize::try_from(span).unwrap_or(usize::MAX), headroom);
            let want = want / MIN_STREAM_MARK * MIN_STREAM_MARK;
            if want >= MIN_STREAM_MARK {
                mark = want.min(MAX_MARK);
                self.deadline = Some(now + GAP);
            }
        } else if let Some(period) = period {
            let want = self.capped(self.burst_bytes / 4 * 3, headroom);
            if want >= MIN_MARK {
                mark = want.min(MAX_MARK);
                let hold = (period * 3 / 2).clamp(MIN_HOLD, MAX_HOLD);
                self.deadline = Some(now + hold);
            }
        }
        if mark == 1 {
            self.deadline = None;
        }
        self.set(mark)
    }

    /// Whether the current burst has gone on for [`STREAM_AFTER`].
    fn in_stream(&self, now: T) -> bool {
        self.last_read.is_some_and(|t| now.since(t) < GAP)
            && self
                .burst_start
                .is_some_and(|s| now.since(s) >= STREAM_AFTER)
    }

    /// `want` under the ACK ceiling, divided by the caution.
    fn capped(&self, mut want: usize, headroom: Option<u32>) -> usize {
        if let Some(h) = headroom {
            // Half of what the server may send: message sizes vary, and a
            // mark it cannot reach stalls both sides until the deadline.
            let avg = self.burst_bytes / usize::try_from(self.burst_messages.max(1)).unwrap_or(1);
            want = want.min(avg.saturating_mul(h as usize / 2));
        }
        want >> self.caution
    }

    /// The deadline passed with nothing read: back to waking on any byte
    /// (the kernel then reports at once what waited under the mark).
    pub fn on_deadline(&mut self, now: T) -> Option<usize> {
        self.deadline = None;
        self.lowered = Some(now);
        self.set(1)
    }

    fn set(&mut self, mark: usize) -> Option<usize> {
        (mark != self.mark).then(|| {
            self.mark = mark;
            mark
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The vga-noise guest over loopback: an update every 33 ms as a 64 KB
    /// segment and the rest 1.4 ms later.
    const SEG1: usize = 65_483;
    const SEG2: usize = 57_000;

    /// Feeds updates through a kernel model that wakes the reader when the
    /// bytes waiting reach the mark (or at the deadline); returns the reads.
    fn run(
        updates: &[(Duration, Vec<(Duration, usize)>)],
        headroom: Option<u32>,
    ) -> Vec<(Duration, usize)> {
        let mut l = Lowat::<Duration>::new();
        let mut arrivals: Vec<(Duration, usize)> = updates
            .iter()
            .flat_map(|(t, pieces)| pieces.iter().map(move |(d, n)| (*t + *d, *n)))
            .collect();
        arrivals.sort();
        let mut waiting = 0usize;
        let mut reads = Vec::new();
        let mut i = 0;
        loop {
            let next_arrival = arrivals.get(i).map(|a| a.0);
            let deadline = l.deadline();
            let now = match (next_arrival, deadline) {
                (None, None) => break,
                (Some(a), Some(d)) if d < a => d,
                (None, Some(d)) => d,
                (Some(a), _) => a,
            };
            let woke = if Some(now) == next_arrival {
                waiting += arrivals[i].1;
                i += 1;
                waiting >= l.mark()
            } else {
                l.on_deadline(now);
                waiting > 0
            };
            if woke && waiting > 0 {
                reads.push((now, waiting));
                // ~5 KB messages
                l.on_read(now, waiting, (waiting / 5000) as u64, headroom);
                waiting = 0;
            }
        }
        reads
    }

    fn steady(n: usize, period: Duration) -> Vec<(Duration, Vec<(Duration, usize)>)> {
        (0..n)
            .map(|k| {
                (
                    period * k as u32,
                    vec![(Duration::ZERO, SEG1), (Duration::from_micros(1400), SEG2)],
                )
            })
            .collect()
    }

    #[test]
    fn a_steady_stream_wakes_once_per_update() {
        let reads = run(&steady(100, ms(33)), Some(41));
        // Two wakeups per update while the mark is learnt, then one.
        let late: Vec<_> = reads.iter().filter(|(t, _)| *t >= ms(33 * 3)).collect();
        assert_eq!(late.len(), 97, "{late:?}");
        assert!(late.iter().all(|(_, n)| *n == SEG1 + SEG2));
        // Every byte read, the last update by its deadline.
        let total: usize = reads.iter().map(|r| r.1).sum();
        assert_eq!(total, 100 * (SEG1 + SEG2));
    }

    #[test]
    fn no_mark_on_a_lone_update_or_slow_updates() {
        let reads = run(&steady(5, ms(400)), Some(41));
        assert_eq!(reads.len(), 10, "two wakeups per update, as without a mark");
    }

    #[test]
    fn data_under_the_mark_waits_at_most_a_hold() {
        // A stream, then one small update: read by the deadline.
        let mut u = steady(10, ms(33));
        u.push((ms(330), vec![(Duration::ZERO, 3000)]));
        let reads = run(&u, Some(41));
        let last = reads.last().copied().unwrap();
        assert_eq!(last.1, 3000);
        assert!(last.0 <= ms(298) + ms(50), "{last:?}");
    }

    #[test]
    fn the_mark_never_asks_for_more_than_the_server_may_send_unacknowledged() {
        let mut l = Lowat::<Duration>::new();
        l.on_read(ms(0), 200_000, 600, Some(41));
        // 333-byte messages, half of 41 at most: 6 660 bytes, under MIN_MARK.
        assert_eq!(l.on_read(ms(30), 200_000, 600, Some(41)), None);
        assert_eq!(l.mark(), 1);
        assert_eq!(l.deadline(), None);
        // Bigger messages: the ceiling is 20 x 5000, then 10 x 5000.
        assert_eq!(l.on_read(ms(60), 200_000, 40, Some(41)), Some(100_000));
        assert_eq!(l.on_read(ms(90), 200_000, 40, Some(20)), Some(50_000));
    }

    #[test]
    fn marks_are_capped_and_the_hold_follows_the_period() {
        let mut l = Lowat::<Duration>::new();
        l.on_read(ms(0), 10_000_000, 1, None);
        assert_eq!(l.on_read(ms(100), 10_000_000, 1, None), Some(MAX_MARK));
        assert_eq!(l.deadline(), Some(ms(100) + ms(150)));
        assert_eq!(l.on_read(ms(110), 10_000_000, 1, None), None);
        assert_eq!(l.deadline(), Some(ms(110) + MIN_HOLD));
        assert_eq!(l.on_deadline(ms(130)), Some(1));
        assert_eq!(l.deadline(), None);
    }

    /// An X desktop under load as traced (Xspice, xterm printing base64):
    /// small draws back to back, ~13 MB/s, 200-2000 bytes each, from a
    /// server that stops past 2 x 20 unacknowledged ones; the reader ACKs
    /// every 20 as it reads. Returns (reads, messages read, reads that waited
    /// for the deadline) over 2 s, with marks or without.
    fn xdesktop(marks: bool, pause_every: Option<Duration>) -> (u64, u64, u64) {
        const W: u64 = 20;
        let mut l = Lowat::<Duration>::new();
        let (mut sent, mut read, mut acked, mut reads, mut stalls) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut waiting, mut waiting_msgs) = (0usize, 0u64);
        let mut t = Duration::ZERO;
        let mut next_send = Duration::ZERO;
        let step = Duration::from_micros(10);
        let mut rng = 0x2545_f491_u64;
        while t < Duration::from_secs(2) {
            t += step;
            let paused = pause_every.is_some_and(|p| (t.as_micros() % p.as_micros()) < 30_000);
            if !paused && t >= next_send && sent - acked * W <= 2 * W {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let size = 200 + (rng % 1800) as usize;
                sent += 1;
                waiting += size;
                waiting_msgs += 1;
                // ~13 MB/s at the average size of 1100 bytes.
                next_send = t + Duration::from_nanos(size as u64 * 77);
            }
            if l.deadline().is_some_and(|d| d <= t) {
                l.on_deadline(t);
                if waiting > 0 {
                    stalls += 1;
                }
            }
            let mark = if marks { l.mark() } else { 1 };
            if waiting > 0 && waiting >= mark {
                reads += 1;
                read += waiting_msgs;
                acked = read / W;
                let countdown = (W - read % W) as u32;
                l.on_read(t, waiting, waiting_msgs, Some(W as u32 + 1 + countdown));
                waiting = 0;
                waiting_msgs = 0;
            }
        }
        (reads, read, stalls)
    }

    #[test]
    fn a_stream_without_gaps_wakes_the_reader_per_span_not_per_message() {
        let (plain_reads, plain_msgs, _) = xdesktop(false, None);
        let (reads, msgs, stalls) = xdesktop(true, None);
        assert!(
            plain_reads > 20_000,
            "the model streams: {plain_reads} reads"
        );
        assert!(
            reads * 4 <= plain_reads,
            "{reads} reads with marks, {plain_reads} without"
        );
        assert!(
            msgs * 100 >= plain_msgs * 97,
            "{msgs} messages read, {plain_msgs} without marks"
        );
        assert!(
            stalls <= 2 * MAX_CAUTION as u64,
            "{stalls} reads waited for the deadline"
        );
        // A stream that pauses for 30 ms every 200 ms: each pause leaves a
        // little under the mark, read by the deadline; the rest as above.
        let (plain_reads, plain_msgs, _) = xdesktop(false, Some(ms(200)));
        let (reads, msgs, stalls) = xdesktop(true, Some(ms(200)));
        assert!(
            reads * 3 <= plain_reads,
            "{reads} reads with marks, {plain_reads} without"
        );
        assert!(msgs * 100 >= plain_msgs * 97, "{msgs} vs {plain_msgs}");
        assert!(
            stalls <= 12,
            "{stalls} reads waited for the deadline (10 pauses)"
        );
    }

    /// An X desktop: 60 messages every 10 ms, the first five of each eight
    /// times the size of the rest (an image, then small draws), from a server
    /// that stops past 2 x 20 unacknowledged ones; the reader ACKs every 20
    /// as it reads. Data may wait for the deadline a few times while marks
    /// learn caution, never for long.
    #[test]
    fn a_server_at_its_ack_window_is_not_left_waiting_for_long() {
        const W: u64 = 20;
        for size in [700usize, 1000, 1500, 4000, 9000] {
            let mut l = Lowat::<Duration>::new();
            let (mut backlog, mut sent, mut read, mut acked) = (0u64, 0u64, 0u64, 0u64);
            let (mut waiting, mut waiting_msgs) = (0usize, 0u64);
            let (mut stalls, mut highest) = (0, 1);
            let mut t = Duration::ZERO;
            let step = Duration::from_micros(50);
            while t < Duration::from_secs(4) {
                t += step;
                if t.as_micros().is_multiple_of(10_000) {
                    backlog += 60;
                }
                if backlog > 0 && sent - acked * W <= 2 * W {
                    let big = (sent % 60) < 5;
                    backlog -= 1;
                    sent += 1;
                    waiting += if big { size * 8 } else { size };
                    waiting_msgs += 1;
                }
                if l.deadline().is_some_and(|d| d <= t) {
                    l.on_deadline(t);
                    if waiting > 0 {
                        stalls += 1;
                    }
                }
                if waiting > 0 && waiting >= l.mark() {
                    read += waiting_msgs;
                    acked = read / W;
                    let countdown = (W - read % W) as u32;
                    l.on_read(t, waiting, waiting_msgs, Some(W as u32 + 1 + countdown));
                    highest = highest.max(l.mark());
                    waiting = 0;
                    waiting_msgs = 0;
                }
            }
            assert!(
                stalls <= 2 * MAX_CAUTION,
                "{size}-byte messages: {stalls} reads waited for the deadline"
            );
            assert!(read >= 23_900, "{size}: {read} messages read");
            if size >= 1000 {
                assert!(highest >= MIN_MARK, "{size}: no mark was ever set");
            }
        }
    }
}
