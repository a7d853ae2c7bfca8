//! The idle rules, as pure functions of time (seconds since session start as a
//! `Duration`).
//!
//! * [`IdleTimer`]: a channel silent in both directions for `idle` sends one
//!   keepalive (ACK_SYNC echoing the current ACK generation — see
//!   docs/keepalive.md for why that message and no other). That is the
//!   deadline, stretched by at most `ping_grace_secs` when a server PING is
//!   expected by then (the server's PING period is 15 s plus the round trip,
//!   so the keepalive rides on it instead of costing a wakeup of its own);
//!   the keepalive may also go out earlier, riding on a wakeup that
//!   happens anyway (the server's PING on another channel, any traffic), so a
//!   timer of spiced's own is needed only when nothing else wakes it
//!   ([`crate::wake`]). Early keepalives are rate-limited: a burst of four,
//!   then one per `idle / 2`, whatever the wakeups; none in the first
//!   `idle / 2` after the link, while the server sends its opening messages
//!   (SET_ACK, the channel's INIT, the PING pair): an ACK_SYNC ahead of the
//!   server's SET_ACK would echo no generation, and those messages would be
//!   counted as the keepalive's replies.
//! * [`Backstop`]: no inbound byte on main for `timeout` ends the session: the
//!   server PINGs main every 15 s, so silence there means a frozen or wedged
//!   server — something TCP cannot see, since the server's kernel keeps ACKing.
//!   Halfway through the silence main sends a probe the server must answer
//!   (ATTACH_CHANNELS ⇒ CHANNELS_LIST), so a timeout shorter than the server's
//!   PING interval still never fires on a healthy server.

use crate::wake::Window;
use std::time::Duration;

/// An early keepalive needs at least this much silence before it: sooner it
/// would buy nothing, and spend the rate limit a later wakeup needs (a
/// timer rings a moment before a PING: the PING carries nothing).
pub const MIN_SILENCE: Duration = Duration::from_millis(5);

/// Fires after `idle` of two-way silence (or up to `grace` later, riding on a
/// PING of the server expected by then); any byte in either direction resets it.
#[derive(Debug, Clone)]
pub struct IdleTimer {
    idle: Option<Duration>,
    grace: Duration,
    last_activity: Duration,
    /// The rate limit of keepalives (GCRA, one per `idle / 2`, bursts of
    /// four): one more may go out early once this is at most `1.5 idle` ahead.
    credit: Duration,
}

impl IdleTimer {
    /// `idle` of `None` (or zero) disables the timer. `now` is the link: the
    /// rate limit starts spent, so the first early keepalive waits `idle / 2`.
    /// `grace`: how long past `idle` the keepalive may wait for a wakeup that
    /// is expected by then (`keepalive.ping_grace_secs`).
    pub fn new(idle: Option<Duration>, grace: Duration, now: Duration) -> Self {
        let idle = idle.filter(|d| !d.is_zero());
        IdleTimer {
            idle,
            grace,
            last_activity: now,
            credit: now + idle.map_or(Duration::ZERO, |i| i * 2),
        }
    }

    /// A byte went out or came in.
    pub fn on_traffic(&mut self, now: Duration) {
        self.last_activity = self.last_activity.max(now);
    }

    /// A keepalive went out at `now` (it is traffic too).
    pub fn on_keepalive(&mut self, now: Duration) {
        self.on_traffic(now);
        if let Some(i) = self.idle {
            self.credit = self.credit.max(now) + i / 2;
        }
    }

    /// When a keepalive is due at the latest: `idle` after the last byte.
    pub fn deadline(&self) -> Option<Duration> {
        self.idle.map(|i| self.last_activity + i)
    }

    /// When a keepalive may go out at the earliest: [`MIN_SILENCE`] after
    /// the last byte, within the rate limit.
    pub fn earliest(&self) -> Option<Duration> {
        self.idle
            .map(|i| (self.last_activity + MIN_SILENCE).max(self.credit.saturating_sub(i + i / 2)))
    }

    /// Both, for the wakeup planning ([`crate::wake`]).
    pub fn window(&self) -> Option<Window<Duration>> {
        Some(Window {
            earliest: self.earliest()?,
            due: self.deadline()?,
            grace: self.grace,
        })
    }

    pub fn due(&self, now: Duration) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// When the server's next PING on a channel should come: spice-server PINGs
/// a channel on a timer it restarts when the PONG to the second PING of a
/// pair arrives, so the last interval predicts the next one. Main and
/// display are PINGed every 15 s from the start (PING_TEST_TIMEOUT_MS in
/// server/red-channel-client.cpp); the other channels get their pair at link
/// and then one every few minutes (docs/spice-notes.md). The wakeup planning
/// uses it to know that a PING will wake the process soon ([`crate::wake`]);
/// a wrong prediction costs a timer wakeup at most.
#[derive(Debug, Clone, Default)]
pub struct PingClock {
    last: Option<Duration>,
    period: Option<Duration>,
}

/// PINGs closer than this are one pair (spice-server sends two at once).
const PING_PAIR: Duration = Duration::from_secs(1);
/// Intervals longer than this predict nothing useful.
const PING_PERIOD_MAX: Duration = Duration::from_secs(600);
/// spice-server's PING period on main and display.
const SERVER_PERIOD: Duration = Duration::from_secs(15);

impl PingClock {
    /// A channel the server PINGs every 15 s from the start (main, display).
    pub fn every_15s() -> PingClock {
        PingClock {
            last: None,
            period: Some(SERVER_PERIOD),
        }
    }

    pub fn on_ping(&mut self, now: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_sub(last);
            if gap >= PING_PAIR {
                self.period = (gap <= PING_PERIOD_MAX).then_some(gap);
            }
        }
        // The timer restarts at the pair's last PING.
        self.last = Some(now);
    }

    /// The next PING, once the period is known.
    pub fn next(&self) -> Option<Duration> {
        Some(self.last? + self.period?)
    }
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
        let t = IdleTimer::new(Some(S(15)), Duration::ZERO, S(0));
        assert!(!t.due(S(14)));
        assert!(!t.due(Duration::from_millis(14_999)));
        assert!(t.due(S(15)));
        assert_eq!(t.deadline(), Some(S(15)));
    }

    #[test]
    fn traffic_either_way_postpones_it() {
        let mut t = IdleTimer::new(Some(S(15)), Duration::ZERO, S(0));
        t.on_traffic(S(10)); // inbound
        assert!(!t.due(S(24)));
        assert_eq!(t.deadline(), Some(S(25)));
        t.on_traffic(S(20)); // outbound
        assert!(!t.due(S(34)));
        assert!(t.due(S(35)));
    }

    #[test]
    fn early_keepalives_wait_for_silence_and_are_rate_limited() {
        let ms = Duration::from_millis;
        let mut t = IdleTimer::new(Some(S(15)), Duration::ZERO, S(0));
        // A fresh link: none while the server sends its opening messages.
        assert_eq!(t.earliest(), Some(ms(7_500)));
        assert_eq!(t.deadline(), Some(S(15)));
        // By 1.5 idle after the link the whole burst is there. Not on the
        // wakeup of the last byte, nor right after it.
        t.on_traffic(S(30));
        assert_eq!(t.earliest(), Some(S(30) + MIN_SILENCE));
        // Four early ones at once are fine (the PINGs of main and display
        // come as two wakeups ~30 ms apart, both carry keepalives, and a
        // timer that rang a moment before them may have sent one too), a
        // fifth must wait.
        t.on_keepalive(S(31));
        t.on_keepalive(S(31) + ms(10));
        t.on_keepalive(S(31) + ms(20));
        assert!(t.earliest().unwrap() <= S(32));
        t.on_keepalive(S(32));
        assert_eq!(t.earliest(), Some(S(31) + ms(7_500)));
        // Sustained: one per idle / 2.
        t.on_keepalive(S(39));
        assert_eq!(t.earliest(), Some(S(46)));
        assert_eq!(t.deadline(), Some(S(54)));
        // Plain traffic spends no budget.
        t.on_traffic(S(50));
        assert_eq!(t.earliest(), Some(S(50) + MIN_SILENCE));
        let w = t.window().unwrap();
        assert_eq!((w.earliest, w.due), (t.earliest().unwrap(), S(65)));
    }

    #[test]
    fn sending_the_keepalive_resets_it() {
        let mut t = IdleTimer::new(Some(S(15)), Duration::ZERO, S(0));
        assert!(t.due(S(15)));
        t.on_traffic(S(15));
        assert!(!t.due(S(29)));
        assert_eq!(t.deadline(), Some(S(30)));
    }

    #[test]
    fn disabled_never_fires() {
        let t = IdleTimer::new(crate::time::secs_opt(0.0), Duration::ZERO, S(0));
        assert!(!t.due(S(1_000_000)));
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn the_ping_clock_predicts_from_the_last_interval_after_a_pair() {
        let ms = Duration::from_millis;
        // A secondary channel: its pair at link says nothing about the next.
        let mut c = PingClock::default();
        assert_eq!(c.next(), None);
        c.on_ping(ms(40));
        c.on_ping(ms(140));
        assert_eq!(c.next(), None, "one pair shows no period");
        // 5-minute PINGs of an idle secondary channel still predict.
        c.on_ping(ms(300_140));
        assert_eq!(c.next(), Some(ms(600_140)));
        c.on_ping(ms(1_300_140));
        assert_eq!(c.next(), None, "too far apart to mean anything");
        // Main or display: 15 s after the second PING of the pair at link.
        let mut c = PingClock::every_15s();
        assert_eq!(c.next(), None);
        c.on_ping(ms(95));
        c.on_ping(ms(195));
        assert_eq!(c.next(), Some(ms(15_195)));
        c.on_ping(ms(15_197));
        assert_eq!(c.next(), Some(ms(30_199)));
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
