//! The idle rules, as pure functions of time (seconds since session start as a
//! `Duration`).
//!
//! * [`IdleTimer`]: a channel silent in both directions for `idle` sends one
//!   keepalive (ACK_SYNC echoing the current ACK generation — see
//!   docs/keepalive.md for why that message and no other). Deadlines are
//!   coalesced: moved earlier onto a grid of `idle / 2` counted from the
//!   session's start, which every channel of a session shares, so the channels
//!   of an idle session send on the same few wakeups instead of one each.
//! * [`Backstop`]: no inbound byte on main for `timeout` ends the session: the
//!   server PINGs main every 15 s, so silence there means a frozen or wedged
//!   server — something TCP cannot see, since the server's kernel keeps ACKing.
//!   Halfway through the silence main sends a probe the server must answer
//!   (ATTACH_CHANNELS ⇒ CHANNELS_LIST), so a timeout shorter than the server's
//!   PING interval still never fires on a healthy server.

use std::time::Duration;

/// Fires after `idle` of two-way silence; any byte in either direction resets it.
#[derive(Debug, Clone)]
pub struct IdleTimer {
    idle: Option<Duration>,
    last_activity: Duration,
}

impl IdleTimer {
    /// `idle` of `None` (or zero) disables the timer.
    pub fn new(idle: Option<Duration>, now: Duration) -> Self {
        IdleTimer {
            idle: idle.filter(|d| !d.is_zero()),
            last_activity: now,
        }
    }

    /// A byte went out or came in.
    pub fn on_traffic(&mut self, now: Duration) {
        self.last_activity = self.last_activity.max(now);
    }

    /// When a keepalive is due, if ever: `idle` after the last byte, moved
    /// back to the grid (never later, and never before `idle / 2` of silence).
    pub fn deadline(&self) -> Option<Duration> {
        self.idle.map(|i| coalesce(self.last_activity + i, i / 2))
    }

    pub fn due(&self, now: Duration) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// `due` rounded down to a multiple of `grid` (unchanged for a zero grid).
fn coalesce(due: Duration, grid: Duration) -> Duration {
    let g = grid.as_nanos();
    if g == 0 {
        return due;
    }
    let n = due.as_nanos() / g;
    // n * g <= due, which fits a Duration.
    let nanos = n * g;
    Duration::new(
        u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
        (nanos % 1_000_000_000) as u32,
    )
}

/// Ends the session when main has been silent inbound for `timeout`.
#[derive(Debug, Clone)]
pub struct Backstop {
    timeout: Option<Duration>,
    last_rx: Duration,
}

impl Backstop {
    pub fn new(timeout: Option<Duration>, now: Duration) -> Self {
        Backstop {
            timeout: timeout.filter(|d| !d.is_zero()),
            last_rx: now,
        }
    }

    pub fn on_rx(&mut self, now: Duration) {
        self.last_rx = self.last_rx.max(now);
    }

    pub fn deadline(&self) -> Option<Duration> {
        self.timeout.map(|t| self.last_rx + t)
    }

    /// When to ask the server for a sign of life: halfway to the deadline.
    pub fn probe_at(&self) -> Option<Duration> {
        self.timeout.map(|t| self.last_rx + t / 2)
    }

    /// `Some(silence)` once the timeout has passed.
    pub fn expired(&self, now: Duration) -> Option<Duration> {
        self.deadline()
            .filter(|d| now >= *d)
            .map(|_| now.saturating_sub(self.last_rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn fires_after_exactly_idle_of_two_way_silence() {
        let t = IdleTimer::new(Some(S(15)), S(0));
        assert!(!t.due(S(14)));
        assert!(!t.due(Duration::from_millis(14_999)));
        assert!(t.due(S(15)));
        assert_eq!(t.deadline(), Some(S(15)));
    }

    #[test]
    fn traffic_either_way_postpones_it() {
        let mut t = IdleTimer::new(Some(S(15)), S(0));
        t.on_traffic(S(10)); // inbound: due at 25, on the 7.5 s grid 22.5
        assert!(!t.due(S(15)));
        assert_eq!(t.deadline(), Some(Duration::from_millis(22_500)));
        t.on_traffic(S(20)); // outbound: due at 35, on the grid 30
        assert!(!t.due(S(29)));
        assert!(t.due(S(30)));
    }

    #[test]
    fn deadlines_are_coalesced_never_late_never_before_half_the_interval() {
        let idle = S(15);
        let mut deadlines = std::collections::BTreeSet::new();
        // Channels whose last byte came anywhere in one 7.5 s slot share one.
        for ms in (7_500..15_000).step_by(250) {
            let last = Duration::from_millis(ms);
            let t = IdleTimer::new(Some(idle), last);
            let d = t.deadline().expect("enabled");
            assert!(d <= last + idle, "late: {last:?} -> {d:?}");
            assert!(d >= last + idle / 2, "early: {last:?} -> {d:?}");
            deadlines.insert(d);
        }
        assert_eq!(deadlines.len(), 1, "{deadlines:?}");
        // Any idle and any moment: the same bounds.
        for idle_ms in [1_000u64, 1_500, 4_300, 15_000, 3_600_000] {
            for last_ms in [0u64, 1, 999, 7_499, 123_456_789] {
                let (idle, last) = (
                    Duration::from_millis(idle_ms),
                    Duration::from_millis(last_ms),
                );
                let d = IdleTimer::new(Some(idle), last)
                    .deadline()
                    .expect("enabled");
                assert!(
                    d <= last + idle && d >= last + idle / 2,
                    "{idle:?} {last:?} {d:?}"
                );
            }
        }
    }

    #[test]
    fn sending_the_keepalive_resets_it() {
        let mut t = IdleTimer::new(Some(S(15)), S(0));
        assert!(t.due(S(15)));
        t.on_traffic(S(15));
        assert!(!t.due(S(29)));
        assert_eq!(t.deadline(), Some(S(30)));
    }

    #[test]
    fn disabled_never_fires() {
        let t = IdleTimer::new(crate::time::secs_opt(0.0), S(0));
        assert!(!t.due(S(1_000_000)));
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn backstop_counts_inbound_only() {
        let mut b = Backstop::new(Some(S(90)), S(0));
        b.on_rx(S(10));
        assert_eq!(b.expired(S(99)), None);
        assert_eq!(b.expired(S(100)), Some(S(90)));
        assert_eq!(Backstop::new(None, S(0)).expired(S(1 << 30)), None);
    }

    #[test]
    fn backstop_probes_halfway() {
        let mut b = Backstop::new(Some(S(10)), S(0));
        assert_eq!(b.probe_at(), Some(S(5)));
        b.on_rx(S(7));
        assert_eq!(b.probe_at(), Some(S(12)));
        assert_eq!(b.deadline(), Some(S(17)));
    }
}
