//! Telling a middlebox's idle cut from a takeover, from the counters alone.
//!
//! A proxy, NAT or firewall that cuts idle flows closes each flow when it has
//! been silent for its timeout T. When it cuts main, spice-server drops every
//! other channel of the client at once. So at the end main had been silent for
//! T, and no channel for much longer (it would have been cut first); channels
//! with traffic (a live display) may have been busy up to the end. A takeover
//! closes everything at an arbitrary moment, and two takeovers rarely come after
//! the same silence on main. Seen twice with the same T, it is an idle cut: the
//! keepalive for the rest of the run goes below T (never under a second), and
//! the session relinks at once instead of being taken for a takeover.
//!
//! What cannot be told apart: two takeovers after the same silence on main (±
//! the tolerance). Then spiced takes the session back once, with a shorter
//! keepalive; a third close is judged by the takeover rule again.
//!
//! Each loss also gets a [`CutLike`] for the takeover rule: no cut, maybe one,
//! or a cut's shape after less silence on main than the close before it that
//! may have been a cut (what the cut after a middlebox's first one looks like).

use crate::channel::counters::ChannelCounters;
use crate::reconnect::CutLike;
use crate::session::SessionEnd;
use crate::wire::ChannelId;
use std::time::Duration;
use tokio::time::Instant;

/// Idle times shorter than this are no middlebox timeout (and the keepalive
/// floor is a second).
const MIN_IDLE: f64 = 1.0;
/// Two cuts further apart than this are not paired.
const PAIR_WINDOW: Duration = Duration::from_secs(300);
/// The learned keepalive never goes below this.
const FLOOR: Duration = Duration::from_secs(1);

/// How close two cuts' T must be to be "the same T". A middlebox checks its
/// timers now and then (the chaos soak's proxy under load: 5.2 s and 5.9 s for
/// one 5 s timeout), so a second either way.
fn tolerance(t: f64) -> f64 {
    (0.15 * t).max(1.0)
}

/// How long a channel had been silent both ways when it closed (None: it never
/// linked, or has not closed).
fn idle(c: &ChannelCounters) -> Option<f64> {
    let closed = c.closed_at_secs?;
    let last = [
        c.last_recv_ts_secs,
        c.last_send_ts_secs,
        c.connected_at_secs,
    ]
    .into_iter()
    .flatten()
    .fold(f64::NEG_INFINITY, f64::max);
    last.is_finite().then_some(closed - last)
}

/// The log line that shows what the idle-cut and takeover rules weighed, so
/// their verdict can be checked from the journal: main's silence before it
/// closed, the longest silence of any other channel (what `pattern` weighs),
/// and what else counted.
pub fn shape_line(end: &SessionEnd, cut_like: CutLike) -> Option<String> {
    let main = idle(end.counters.get(&ChannelId::MAIN)?)?;
    let other = end
        .counters
        .iter()
        .filter(|(id, _)| **id != ChannelId::MAIN)
        .filter_map(|(id, c)| Some((*id, idle(c)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("no other channel closed".into(), |(ch, t)| {
            format!("longest silence elsewhere {t:.1} s ({ch})")
        });
    let gone = if end.server_gone {
        "; the server went away"
    } else {
        ""
    };
    let shorter = if cut_like == CutLike::Shorter {
        "; less silence on main than at the close before"
    } else {
        ""
    };
    Some(format!(
        "close shape: main silent {main:.1} s before the close, {other}{gone}{shorter}"
    ))
}

/// T when `end` looks like an idle cut: main closed by the peer after T of
/// silence, and no channel silent much longer (a middlebox cuts each flow when
/// *it* has been idle for T, so a channel idle for longer would have been cut
/// first). Channels with more recent traffic (a live display) do not matter:
/// once main is cut, spice-server drops the whole client.
pub fn pattern(end: &SessionEnd) -> Option<f64> {
    if !may_be_cut(end) || end.counters.len() < 2 {
        return None;
    }
    let t = idle(end.counters.get(&ChannelId::MAIN)?)?;
    let none_longer = end
        .counters
        .values()
        .all(|c| idle(c).is_some_and(|i| i <= t + tolerance(t)));
    none_longer.then_some(t)
}

/// Whether `end` may be a middlebox's idle cut at all, whatever the other
/// channels did: main closed by the peer after 1 s or more of silence both ways,
/// with the server still there. The first cut after a middlebox starts cutting
/// (or changes its timeout) comes after any silence longer than its timeout and
/// takes every channel idle that long with it, so it has no telling shape.
pub fn may_be_cut(end: &SessionEnd) -> bool {
    // The server's address refused a connection right after the close: the
    // server itself went away (killed, restarted), whatever the silence was.
    // Once the keepalive is short, every loss comes after a silence of about
    // that interval, so without this two server restarts look like one cut.
    if end.server_gone {
        return false;
    }
    let Some(main) = end.counters.get(&ChannelId::MAIN) else {
        return false;
    };
    matches!(
        main.close_reason.as_deref(),
        Some("server_closed" | "reset")
    ) && idle(main).is_some_and(|t| t >= MIN_IDLE)
}

/// What one lost session tells the idle-cut rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Seen twice: the keepalive interval from now on.
    pub learned: Option<Duration>,
    /// What the takeover rule is told of the close.
    pub cut_like: CutLike,
}

/// The idle-cut rule across sessions (see the module docs).
#[derive(Debug)]
pub struct IdleCuts {
    /// The keepalive interval in force (None: off).
    idle: Option<Duration>,
    /// The last close with a cut's shape, and main's silence before it.
    candidate: Option<(Instant, f64)>,
    /// The last close that may have been a cut, and main's silence before it.
    last_maybe: Option<(Instant, f64)>,
    last: Option<Duration>,
}

impl IdleCuts {
    pub fn new(idle: Option<Duration>) -> Self {
        IdleCuts {
            idle,
            candidate: None,
            last_maybe: None,
            last: None,
        }
    }

    /// The silence that the last learnt cut came after.
    pub fn last_idle(&self) -> Option<Duration> {
        self.last
    }

    /// Feeds a lost session: the new keepalive interval when this loss
    /// completes the pattern (and the interval actually gets shorter), and how
    /// much it looks like a cut to the takeover rule.
    pub fn observe(&mut self, end: &SessionEnd, now: Instant) -> Verdict {
        if !may_be_cut(end) {
            return Verdict {
                learned: None,
                cut_like: CutLike::No,
            };
        }
        let main = end.counters.get(&ChannelId::MAIN).and_then(idle);
        let before = std::mem::replace(&mut self.last_maybe, main.map(|t| (now, t)));
        let learned = self.pair(end, now);
        // The first cut after a middlebox starts cutting comes after whatever
        // silence the session had (never less than its timeout); the next one,
        // on a fresh session, after the timeout itself.
        let shorter = pattern(end).is_some_and(|t| {
            before
                .is_some_and(|(at, t0)| now.saturating_duration_since(at) <= PAIR_WINDOW && t < t0)
        });
        Verdict {
            learned,
            cut_like: if shorter {
                CutLike::Shorter
            } else {
                CutLike::Maybe
            },
        }
    }

    /// Pairs a cut's shape with the last one; the new interval when they match.
    fn pair(&mut self, end: &SessionEnd, now: Instant) -> Option<Duration> {
        let t = pattern(end)?;
        let paired = self.candidate.take().filter(|(at, t0)| {
            now.saturating_duration_since(*at) <= PAIR_WINDOW && (t - t0).abs() <= tolerance(t)
        });
        if paired.is_none() {
            self.candidate = Some((now, t));
            return None;
        }
        let learned = Duration::from_secs_f64((t / 2.0 * 10.0).floor() / 10.0).max(FLOOR);
        if self.idle.is_some_and(|i| learned >= i) {
            return None; // no shorter keepalive to give: treat it as any loss
        }
        self.idle = Some(learned);
        self.last = Some(Duration::from_secs_f64(t));
        tracing::warn!(
            "idle cut by a middlebox after ~{t:.1} s of silence on main (seen twice): \
             keepalive interval for this run lowered to {:.1} s",
            learned.as_secs_f64()
        );
        Some(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionInfo;
    use crate::wire::ChannelType;
    use std::collections::BTreeMap;

    /// (last traffic, close, reason) per channel.
    fn end(chs: &[(f64, f64, &str)]) -> SessionEnd {
        let types = [
            ChannelType::Main,
            ChannelType::Display,
            ChannelType::Inputs,
            ChannelType::Cursor,
            ChannelType::Playback,
        ];
        let counters: BTreeMap<ChannelId, ChannelCounters> = chs
            .iter()
            .zip(types)
            .map(|(&(last, closed, why), ty)| {
                (
                    ChannelId::new(ty, 0),
                    ChannelCounters {
                        connected_at_secs: Some(0.1),
                        last_recv_ts_secs: Some(last),
                        closed_at_secs: Some(closed),
                        close_reason: Some(why.into()),
                        ..ChannelCounters::default()
                    },
                )
            })
            .collect();
        SessionEnd {
            failure: None,
            counters,
            uptime: Duration::from_secs(6),
            connected: true,
            all_linked: true,
            server_closed_session: true,
            server_gone: false,
            info: SessionInfo::default(),
        }
    }

    /// tinyproxy `Timeout 5` cut main 5.0 s after its last byte; spice-server
    /// then dropped the rest of the client at once.
    fn proxy_cut() -> SessionEnd {
        end(&[
            (0.30, 5.30, "server_closed"),
            (0.42, 5.31, "server_closed"),
            (0.45, 5.31, "server_closed"),
            (0.47, 5.31, "server_closed"),
        ])
    }

    /// A takeover 5.5 s after the link of a session whose display is live: the
    /// same shape as a cut of main (the pairing tells them apart).
    fn takeover() -> SessionEnd {
        end(&[
            (0.30, 5.80, "server_closed"),
            (5.62, 5.80, "server_closed"),
            (0.45, 5.81, "server_closed"),
            (0.47, 5.81, "server_closed"),
        ])
    }

    /// Main closed soon after traffic while another channel had been silent
    /// far longer: a middlebox would have cut that one first.
    fn not_a_cut() -> SessionEnd {
        end(&[(4.30, 5.80, "server_closed"), (0.20, 5.80, "server_closed")])
    }

    #[test]
    fn the_patterns_differ() {
        assert_eq!(
            pattern(&proxy_cut()).map(|t| (t * 10.0).round()),
            Some(50.0)
        );
        assert_eq!(pattern(&takeover()).map(|t| (t * 10.0).round()), Some(55.0));
        assert_eq!(pattern(&not_a_cut()), None);
        // Main alone proves nothing.
        assert_eq!(pattern(&end(&[(0.3, 5.3, "server_closed")])), None);
        // Main must be closed by the peer.
        assert_eq!(
            pattern(&end(&[
                (0.3, 5.3, "keepalive_timeout"),
                (0.3, 5.3, "server_closed")
            ])),
            None
        );
        // Short silences are no middlebox timeout.
        assert_eq!(
            pattern(&end(&[(0.3, 0.8, "reset"), (0.4, 0.9, "reset")])),
            None
        );
    }

    #[test]
    fn any_close_after_a_silence_on_main_may_be_a_cut() {
        // Another channel silent far longer: no cut's shape, but it may be the
        // first cut of a middlebox that just started cutting.
        assert!(pattern(&not_a_cut()).is_none());
        let first_cut = end(&[(2.0, 9.0, "server_closed"), (0.2, 9.0, "server_closed")]);
        assert!(pattern(&first_cut).is_none());
        assert!(may_be_cut(&first_cut));
        assert!(may_be_cut(&proxy_cut()));
        // Main busy up to the end, an error close, or a server gone: no cut.
        assert!(!may_be_cut(&end(&[
            (8.5, 9.0, "server_closed"),
            (0.2, 9.0, "server_closed")
        ])));
        assert!(!may_be_cut(&end(&[
            (2.0, 9.0, "keepalive_timeout"),
            (0.2, 9.0, "server_closed")
        ])));
        let gone = SessionEnd {
            server_gone: true,
            ..proxy_cut()
        };
        assert!(!may_be_cut(&gone));
    }

    #[tokio::test(start_paused = true)]
    async fn seen_twice_lowers_the_keepalive_once() {
        let mut c = IdleCuts::new(Some(Duration::from_secs(15)));
        let t0 = Instant::now();
        assert_eq!(
            c.observe(&proxy_cut(), t0).learned,
            None,
            "once is not a pattern"
        );
        let learned = c.observe(&proxy_cut(), t0 + Duration::from_secs(7)).learned;
        assert_eq!(learned, Some(Duration::from_millis(2500)));
        // The same again cannot lower it further: 2.5 s is already below T/2.
        assert_eq!(
            c.observe(&proxy_cut(), t0 + Duration::from_secs(20))
                .learned,
            None
        );
        assert_eq!(
            c.observe(&proxy_cut(), t0 + Duration::from_secs(30))
                .learned,
            None
        );
    }

    /// Chaos seed 14849789246449697476: after a cut had lowered the keepalive
    /// to 2.5 s, two server kills 25 s apart both came after ~2.4 s of silence
    /// on main and were taken for a cut at 2.4 s. The server had gone away
    /// both times (its address refused a connection): no middlebox.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_went_away_is_no_idle_cut() {
        let gone = || SessionEnd {
            server_gone: true,
            ..end(&[
                (0.10, 2.50, "server_closed"),
                (0.12, 2.50, "server_closed"),
                (0.15, 2.51, "server_closed"),
            ])
        };
        assert_eq!(pattern(&gone()), None);
        let mut c = IdleCuts::new(Some(Duration::from_millis(2500)));
        let t0 = Instant::now();
        assert_eq!(c.observe(&gone(), t0).learned, None);
        assert_eq!(
            c.observe(&gone(), t0 + Duration::from_secs(25)).learned,
            None
        );
        // The same silences with the server still there are a cut.
        let there = || SessionEnd {
            server_gone: false,
            ..gone()
        };
        assert_eq!(
            c.observe(&there(), t0 + Duration::from_secs(30)).learned,
            None
        );
        assert!(c
            .observe(&there(), t0 + Duration::from_secs(40))
            .learned
            .is_some());
    }

    /// Chaos seed 10626483591465904736: a proxy's 5 s cut switched on twice
    /// within a minute, each time under a session idle for longer (6.5 s, then
    /// 11.2 s), then the cut of the fresh session after 5.0 s.
    #[tokio::test(start_paused = true)]
    async fn a_cut_after_less_silence_than_the_close_before_is_told_apart() {
        let after = |t: f64| end(&[(0.3, 0.3 + t, "server_closed"), (0.4, 0.3 + t, "reset")]);
        let mut c = IdleCuts::new(Some(Duration::from_secs(15)));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(c.observe(&after(6.5), at(0)).cut_like, CutLike::Maybe);
        // Longer than the close before: any first cut (or a takeover).
        assert_eq!(c.observe(&after(11.2), at(28)).cut_like, CutLike::Maybe);
        let v = c.observe(&after(5.0), at(49));
        assert_eq!((v.cut_like, v.learned), (CutLike::Shorter, None));
        assert_eq!(
            shape_line(&after(5.0), v.cut_like).as_deref(),
            Some(
                "close shape: main silent 5.0 s before the close, longest silence \
                 elsewhere 4.9 s (display); less silence on main than at the close before"
            )
        );
        // The same silence again: learnt.
        let v = c.observe(&after(5.0), at(70));
        assert_eq!(v.cut_like, CutLike::Maybe);
        assert_eq!(v.learned, Some(Duration::from_millis(2500)));
        // A shorter silence than a close 5 minutes before proves nothing.
        assert_eq!(c.observe(&after(9.0), at(100)).cut_like, CutLike::Maybe);
        assert_eq!(
            c.observe(&after(4.0), at(101) + PAIR_WINDOW).cut_like,
            CutLike::Maybe
        );
        // A shorter silence without a cut's shape (another channel silent far
        // longer), or a close that may be no cut at all.
        assert_eq!(c.observe(&after(9.0), at(500)).cut_like, CutLike::Maybe);
        assert_eq!(c.observe(&not_a_cut(), at(501)).cut_like, CutLike::Maybe);
        let busy = end(&[(8.9, 9.0, "server_closed"), (0.2, 9.0, "server_closed")]);
        assert_eq!(c.observe(&busy, at(502)).cut_like, CutLike::No);
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_a_checking_interval_apart_are_paired() {
        let mut c = IdleCuts::new(Some(Duration::from_secs(15)));
        let t0 = Instant::now();
        let late = end(&[(0.3, 6.15, "server_closed"), (0.4, 6.15, "server_closed")]);
        assert_eq!(c.observe(&late, t0).learned, None);
        assert!(c
            .observe(&proxy_cut(), t0 + Duration::from_secs(20))
            .learned
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn takeovers_and_far_apart_cuts_are_not_paired() {
        let mut c = IdleCuts::new(Some(Duration::from_secs(15)));
        let t0 = Instant::now();
        assert_eq!(c.observe(&not_a_cut(), t0).learned, None);
        assert_eq!(
            c.observe(&not_a_cut(), t0 + Duration::from_secs(7)).learned,
            None
        );
        // Two cuts after different silences are no pattern.
        let other = end(&[(0.3, 9.3, "server_closed"), (0.4, 9.3, "server_closed")]);
        assert_eq!(c.observe(&proxy_cut(), t0).learned, None);
        assert_eq!(
            c.observe(&other, t0 + Duration::from_secs(10)).learned,
            None
        );
        assert_eq!(c.observe(&proxy_cut(), t0).learned, None);
        assert_eq!(
            c.observe(&proxy_cut(), t0 + PAIR_WINDOW + Duration::from_secs(1))
                .learned,
            None
        );
    }
}
