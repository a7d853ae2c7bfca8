//! When the screen last changed, and whether it has stopped changing
//! (sans-IO: frame hashes and the time in, events out; no clock, no timer).
//!
//! What counts as a change (docs/display.md):
//!
//! - The pixels changed: a draw that paints what was there is no change
//!   ([`super::tiles`] hashes the frame).
//! - A frame is looked at once the drawing has settled: when no draw came for
//!   [`SETTLE`] (looked at when the next message arrives, or when someone
//!   asks), or at the latest [`MAX_LAG`] after the first unsettled draw (a
//!   screen that never stops drawing). The half-drawn states of one update
//!   are not frames of their own.
//! - A frame that only toggles back to the one before it is no change: a
//!   blinking cursor (the VGA text cursor blinks without the guest doing
//!   anything, about 3.7 draws a second, and goes on blinking in a hung
//!   guest) leaves "unchanged for" growing. A third frame is a change.
//! - After a new primary surface (a reconnect, a mode change) frames are
//!   looked at only after [`GRACE`]: the server repaints the screen first,
//!   and a repaint of what was shown before the reconnect is no change.
//!
//! With `stale_after`, [`Freshness::poll`] says [`FreshEvent::Stale`] once
//! when the screen has not changed for that long, and the next change says
//! [`FreshEvent::Changed`]. [`Freshness::deadline`] is the one time the
//! caller must look and poll: none without `stale_after` (readers look when
//! they read), none on a screen that is stale and not drawn on.

use std::time::Duration;

/// Quiet time after which the drawing counts as settled.
pub const SETTLE: Duration = Duration::from_millis(50);
/// A screen that never pauses is looked at this often.
pub const MAX_LAG: Duration = Duration::from_millis(500);
/// After a new primary surface, the repaint's time.
pub const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshEvent {
    /// No change for `unchanged` (at least `stale_after`).
    Stale { unchanged: Duration },
    /// The screen changed again after the stale event; it had not changed
    /// for `unchanged`.
    Changed { unchanged: Duration },
}

#[derive(Debug, Clone, Default)]
pub struct Freshness {
    stale_after: Option<Duration>,
    /// The frame shown and the one before it (the toggle partner).
    current: Option<u64>,
    previous: Option<u64>,
    changed_at: Option<Duration>,
    /// Changes so far (a new number: a new picture).
    changes: u64,
    /// Draws not looked at yet: the first one's time and the last one's.
    pending: Option<(Duration, Duration)>,
    grace_until: Option<Duration>,
    /// The stale event went out (until the next change).
    stale: bool,
}

impl Freshness {
    pub fn new(stale_after: Option<Duration>) -> Freshness {
        Freshness {
            stale_after,
            ..Freshness::default()
        }
    }

    /// When the screen last changed (None before the first frame).
    pub fn changed_at(&self) -> Option<Duration> {
        self.changed_at
    }

    /// How many times the screen changed (a new number: a new picture).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The stale event is out and no change came since.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    pub fn stale_after(&self) -> Option<Duration> {
        self.stale_after
    }

    /// The primary surface was drawn at `at`.
    pub fn drawn(&mut self, at: Duration) {
        let first = self.pending.map_or(at, |(f, _)| f);
        self.pending = Some((first, at));
    }

    /// A new primary surface at `at`: it is repainted first.
    pub fn surface_created(&mut self, at: Duration) {
        self.grace_until = Some(at + GRACE);
        self.drawn(at);
    }

    /// Whether the drawing so far should be looked at (before a message
    /// that arrives at `now` draws more).
    pub fn due(&self, now: Duration) -> bool {
        let Some((first, last)) = self.pending else {
            return false;
        };
        self.grace_until.is_none_or(|g| now >= g)
            && (now.saturating_sub(last) >= SETTLE || now.saturating_sub(first) >= MAX_LAG)
    }

    /// The pending draws left nothing to look at (no primary surface).
    pub fn discard(&mut self) {
        self.pending = None;
    }

    /// Draws are waiting to be looked at (whatever the timing).
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The frame as it is after the pending draws: its hash. Returns the
    /// "changed again" event when a stale screen changed.
    pub fn frame(&mut self, hash: u64) -> Option<FreshEvent> {
        let (_, last) = self.pending.take()?;
        self.grace_until = None;
        if self.current == Some(hash) {
            return None;
        }
        let toggle = self.previous == Some(hash);
        self.previous = self.current;
        self.current = Some(hash);
        if toggle {
            return None;
        }
        let before = self.changed_at.replace(last);
        self.changes += 1;
        if std::mem::take(&mut self.stale) {
            return Some(FreshEvent::Changed {
                unchanged: last.saturating_sub(before.unwrap_or(last)),
            });
        }
        None
    }

    /// The one time [`Freshness::poll`] has work; None without
    /// `stale_after`. Draws not looked at yet are looked at by the next
    /// message, or at the latest [`MAX_LAG`] after the first of them (after
    /// the grace): a screen drawn once and then left alone is still checked.
    pub fn deadline(&self) -> Option<Duration> {
        let after = self.stale_after?;
        let look = self
            .pending
            .map(|(first, _)| (first + MAX_LAG).max(self.grace_until.unwrap_or_default()));
        let stale = self.changed_at.filter(|_| !self.stale).map(|c| c + after);
        match (look, stale) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The stale event, once per stale period. Look at pending draws first
    /// ([`Freshness::frame`]): a change not looked at yet is still a change.
    pub fn poll(&mut self, now: Duration) -> Option<FreshEvent> {
        if self.stale {
            return None;
        }
        let due = self.changed_at? + self.stale_after?;
        if now < due {
            return None;
        }
        self.stale = true;
        Some(FreshEvent::Stale {
            unchanged: now.saturating_sub(self.changed_at.unwrap_or(now)),
        })
    }

    /// How long the screen has not changed, at `now`.
    pub fn unchanged_for(&self, now: Duration) -> Option<Duration> {
        self.changed_at.map(|c| now.saturating_sub(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Draws at `at`, then the frame looked at with `hash`.
    fn show(f: &mut Freshness, at: Duration, hash: u64) -> Option<FreshEvent> {
        f.drawn(at);
        f.frame(hash)
    }

    #[test]
    fn a_change_is_a_new_frame_and_a_toggle_is_none() {
        let mut f = Freshness::new(None);
        assert_eq!(f.changed_at(), None);
        show(&mut f, ms(100), 1);
        assert_eq!(f.changed_at(), Some(ms(100)));
        // The same pixels drawn again.
        show(&mut f, ms(200), 1);
        assert_eq!(f.changed_at(), Some(ms(100)));
        // A cursor blinks: B, A, B, A...: the first B is a change, then none.
        show(&mut f, ms(300), 2);
        assert_eq!(f.changed_at(), Some(ms(300)));
        for (i, h) in [1, 2, 1, 2, 1].into_iter().enumerate() {
            show(&mut f, ms(570 + 270 * i as u64), h);
        }
        assert_eq!(f.changed_at(), Some(ms(300)));
        assert_eq!(f.unchanged_for(ms(10_300)), Some(Duration::from_secs(10)));
        // A third frame is a change.
        show(&mut f, ms(2000), 3);
        assert_eq!(f.changed_at(), Some(ms(2000)));
        // Nothing pending: nothing to look at.
        assert_eq!(f.frame(9), None);
        assert_eq!(f.changed_at(), Some(ms(2000)));
    }

    #[test]
    fn frames_are_looked_at_once_the_drawing_settles() {
        let mut f = Freshness::new(None);
        assert!(!f.due(ms(0)));
        f.drawn(ms(0));
        f.drawn(ms(30));
        assert!(!f.due(ms(60)), "30 ms after the last draw: still drawing");
        assert!(f.due(ms(80)), "50 ms quiet: settled");
        // A screen that never pauses: looked at after 500 ms.
        let mut g = Freshness::new(None);
        for t in (0..=450).step_by(30) {
            g.drawn(ms(t));
            assert!(!g.due(ms(t + 20)));
        }
        g.drawn(ms(480));
        assert!(
            g.due(ms(500)),
            "20 ms after a draw, but 500 ms after the first"
        );
        // The last draw's time is the change's time.
        g.frame(7);
        assert_eq!(g.changed_at(), Some(ms(480)));
    }

    #[test]
    fn a_repaint_after_a_new_surface_is_no_change() {
        let mut f = Freshness::new(None);
        show(&mut f, ms(100), 5);
        // Reconnect: a new surface (black), then the server repaints.
        f.surface_created(ms(60_000));
        f.drawn(ms(60_010));
        assert!(!f.due(ms(61_000)), "within the grace");
        assert!(f.due(ms(62_010)));
        assert_eq!(f.frame(5), None);
        assert_eq!(f.changed_at(), Some(ms(100)));
        // Another picture after the reconnect is a change.
        f.surface_created(ms(70_000));
        f.frame(6);
        assert_eq!(f.changed_at(), Some(ms(70_000)));
    }

    #[test]
    fn stale_once_per_period_then_changed_again() {
        let s = Duration::from_secs;
        let mut f = Freshness::new(Some(s(30)));
        assert_eq!(f.deadline(), None, "no frame yet");
        show(&mut f, s(1), 1);
        assert_eq!(f.deadline(), Some(s(31)));
        assert_eq!(f.poll(s(30)), None);
        // A blink does not move the deadline.
        show(&mut f, s(10), 2);
        show(&mut f, s(11), 1);
        assert_eq!(f.deadline(), Some(s(10)).map(|d| d + s(30)));
        assert_eq!(f.poll(s(41)), Some(FreshEvent::Stale { unchanged: s(31) }));
        assert!(f.is_stale());
        // Once: no deadline, no second event while it stays.
        assert_eq!(f.deadline(), None);
        assert_eq!(f.poll(s(100)), None);
        show(&mut f, s(200), 1);
        assert_eq!(f.poll(s(300)), None, "a toggle back is still no change");
        assert_eq!(
            show(&mut f, s(400), 3),
            Some(FreshEvent::Changed { unchanged: s(390) })
        );
        assert!(!f.is_stale());
        assert_eq!(f.deadline(), Some(s(430)));
        // Off: never an event.
        let mut off = Freshness::new(None);
        show(&mut off, s(1), 1);
        assert_eq!(off.deadline(), None);
        assert_eq!(off.poll(s(1_000_000)), None);
    }
}
