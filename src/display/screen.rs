//! The daemon's view of the guest's screen, shared between the display
//! channel task that feeds the mirror and the readers (screenshot, reports,
//! status, metrics, screen.png). Cloning shares it. With `[display] mirror =
//! false` it is [`Screen::off`]: it holds nothing and hands out no feed, so
//! the display channel behaves exactly as without a mirror.
//!
//! It outlives links and sessions: the last frame stays readable after a
//! loss, and when the screen last changed ([`super::fresh`]) carries over a
//! reconnect (a repaint of the same picture is no change). Times inside are
//! "screen time": a [`Duration`] since the first link's start, so a session's
//! own clock (what the channel passes) is shifted by when that session began.
//!
//! Readers lock only to copy a handle on the frame (the pixels are shared
//! copy-on-write), to hash what was drawn since the last look, or to sample
//! the digest; nothing is encoded under the lock.

use super::fresh::{FreshEvent, Freshness};
use super::{Frame, Limits, Mirror, Touch};
use crate::events;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the display channel feeds (a [`crate::channel::Channel`] hands it
/// every display message, and asks it for its one deadline).
pub trait DisplaySink: Send + Sync {
    /// `body` without the header; `now` since the session started.
    fn message(&self, msg_type: u16, body: &[u8], now: Duration);
    /// When [`DisplaySink::tick`] has work (session time): the stale check.
    fn deadline(&self) -> Option<Duration> {
        None
    }
    fn tick(&self, _now: Duration) {}
}

#[derive(Clone, Default)]
pub struct Screen(Option<Arc<Shared>>);

struct Shared {
    limits: Limits,
    state: Mutex<State>,
}

struct State {
    mirror: Option<Mirror>,
    /// The previous link's frame, until the current link draws a screen.
    last: Option<Frame>,
    /// Which feed is current (a feed of an older link stops counting).
    feed: u64,
    /// The first link's start: screen time 0.
    origin: Option<Instant>,
    /// The current link's session start in screen time.
    offset: Duration,
    fresh: Freshness,
    /// The current feed's link is up.
    live: bool,
}

/// A display channel's feed into the screen.
pub struct Feed {
    shared: Arc<Shared>,
    id: u64,
}

/// The frame and when the screen last changed (unix seconds).
#[derive(Debug, Clone)]
pub struct Shot {
    pub frame: Frame,
    pub changed_at_unix: Option<f64>,
    /// How many times the screen changed before this frame (equal numbers:
    /// the same picture, give or take a blinking cursor).
    pub changes: u64,
}

/// The screen for `status`, the metrics file and reports (times in unix
/// seconds, from the reader's clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DisplayView {
    pub width: u32,
    pub height: u32,
    /// When the screen last changed; None before the first frame.
    pub changed_at: Option<f64>,
    /// Seconds since then.
    pub unchanged_secs: Option<f64>,
    /// [`super::digest`] of the frame.
    pub digest: Option<String>,
    /// Unchanged for `display.stale_after` (the stale event went out); None
    /// when `stale_after` is off.
    pub stale: Option<bool>,
    /// A display channel is feeding the mirror now.
    pub linked: bool,
    /// Draws on any surface, and video frames, on this link.
    pub draws: u64,
    pub stream_frames: u64,
    /// Bytes the mirror holds beside the primary surface.
    pub extra_bytes: u64,
    /// What the mirror did not decode or draw on this link, by kind.
    pub skipped: BTreeMap<String, u64>,
}

impl Screen {
    pub fn off() -> Screen {
        Screen(None)
    }

    /// `stale_after`: the stale event's threshold (None: off).
    pub fn on(limits: Limits, stale_after: Option<Duration>) -> Screen {
        Screen(Some(Arc::new(Shared {
            limits,
            state: Mutex::new(State {
                mirror: None,
                last: None,
                feed: 0,
                origin: None,
                offset: Duration::ZERO,
                fresh: Freshness::new(stale_after),
                live: false,
            }),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn limits(&self) -> Option<Limits> {
        self.0.as_ref().map(|s| s.limits)
    }

    fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
        s.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new display link whose session started at `start`: a fresh mirror
    /// replaces the last one (whose frame stays readable until the new one
    /// has a screen). None when the mirror is off.
    pub fn attach(&self, start: Instant) -> Option<Feed> {
        let shared = self.0.as_ref()?.clone();
        let id = {
            let mut st = Self::lock(&shared);
            st.feed += 1;
            let origin = *st.origin.get_or_insert(start);
            st.offset = start.saturating_duration_since(origin);
            if let Some(f) = st.mirror.take().and_then(|mut m| m.frame()) {
                st.last = Some(f);
            }
            st.mirror = Some(Mirror::new(shared.limits));
            st.live = true;
            st.feed
        };
        Some(Feed { shared, id })
    }

    /// The current frame (or the last one of an ended link), now.
    pub fn shot(&self) -> Option<Shot> {
        self.shot_at(Instant::now(), crate::time::unix_now())
    }

    pub fn shot_at(&self, now: Instant, now_unix: f64) -> Option<Shot> {
        let mut st = Self::lock(self.0.as_ref()?);
        let ev = st.look();
        let frame = st.frame();
        let changed_at_unix = st.unchanged_for(now).map(|d| now_unix - d.as_secs_f64());
        let changes = st.fresh.changes();
        State::announce_after(st, ev);
        Some(Shot {
            frame: frame?,
            changed_at_unix,
            changes,
        })
    }

    /// The screen now; None when the mirror is off.
    pub fn view(&self) -> Option<DisplayView> {
        self.view_at(Instant::now(), crate::time::unix_now())
    }

    pub fn view_at(&self, now: Instant, now_unix: f64) -> Option<DisplayView> {
        let mut st = Self::lock(self.0.as_ref()?);
        let ev = st.look();
        let frame = st.frame();
        let unchanged = st.unchanged_for(now);
        let m = st.mirror.as_ref();
        let view = DisplayView {
            width: frame.as_ref().map_or(0, |f| f.width),
            height: frame.as_ref().map_or(0, |f| f.height),
            changed_at: unchanged.map(|d| now_unix - d.as_secs_f64()),
            unchanged_secs: unchanged.map(|d| d.as_secs_f64()),
            digest: frame.map(|f| f.digest()),
            stale: st.fresh.stale_after().map(|_| st.fresh.is_stale()),
            linked: m.is_some() && st.live,
            draws: m.map_or(0, |m| m.stats().draws),
            stream_frames: m.map_or(0, |m| m.stats().stream_frames),
            extra_bytes: m.map_or(0, |m| m.extra_bytes() as u64),
            skipped: m.map(|m| m.stats().skipped.clone()).unwrap_or_default(),
        };
        State::announce_after(st, ev);
        Some(view)
    }
}

impl State {
    fn frame(&mut self) -> Option<Frame> {
        self.mirror
            .as_mut()
            .and_then(Mirror::frame)
            .or_else(|| self.last.clone())
    }

    /// Looks at what was drawn since the last look, whatever the timing (a
    /// reader or the stale check wants the screen as it is now).
    fn look(&mut self) -> Option<FreshEvent> {
        if !self.fresh.pending() {
            return None;
        }
        match self.mirror.as_mut().and_then(Mirror::frame_hash) {
            Some(hash) => self.fresh.frame(hash),
            None => {
                // No screen to look at (destroyed, refused).
                self.fresh.discard();
                None
            }
        }
    }

    /// Logs `ev` (with the digest of the frame it is about) after releasing
    /// the lock.
    fn announce_after(mut st: std::sync::MutexGuard<'_, State>, ev: Option<FreshEvent>) {
        let Some(ev) = ev else {
            return;
        };
        let digest = st.frame().map(|f| f.digest());
        let after = st.fresh.stale_after();
        drop(st);
        announce(ev, digest, after);
    }

    fn unchanged_for(&self, now: Instant) -> Option<Duration> {
        let origin = self.origin?;
        self.fresh
            .unchanged_for(now.saturating_duration_since(origin))
    }
}

impl Feed {
    /// The link ended: keep its frame, free everything else.
    pub fn end(&self) {
        let mut st = Screen::lock(&self.shared);
        if st.feed == self.id {
            st.live = false;
            if let Some(m) = st.mirror.as_mut() {
                m.shrink();
            }
        }
    }
}

/// Logs a freshness event (the journal's `screen_stale` / `screen_changed`).
fn announce(ev: FreshEvent, digest: Option<String>, stale_after: Option<Duration>) {
    let digest = digest.unwrap_or_default();
    let whole = |d: Duration| crate::time::fmt_dur(Duration::from_secs(d.as_secs()));
    match ev {
        FreshEvent::Stale { unchanged } => tracing::warn!(
            message_id = events::SCREEN_STALE,
            unchanged_secs = unchanged.as_secs(),
            digest = %digest,
            "screen unchanged for {} (display.stale_after = {} s); digest {digest}",
            whole(unchanged),
            stale_after.map_or(0, |d| d.as_secs()),
        ),
        FreshEvent::Changed { unchanged } => tracing::info!(
            message_id = events::SCREEN_CHANGED,
            unchanged_secs = unchanged.as_secs(),
            digest = %digest,
            "screen changed again after {} unchanged; digest {digest}",
            whole(unchanged),
        ),
    }
}

impl DisplaySink for Feed {
    fn message(&self, msg_type: u16, body: &[u8], now: Duration) {
        let mut st = Screen::lock(&self.shared);
        if st.feed != self.id {
            return;
        }
        let at = st.offset + now;
        // What was drawn before this message, once settled, is a frame.
        let ev = if st.fresh.due(at) { st.look() } else { None };
        let Some(m) = st.mirror.as_mut() else {
            return;
        };
        match m.on_message(msg_type, body, now) {
            Touch::None => {}
            Touch::Drawn => st.fresh.drawn(at),
            Touch::Created => {
                st.fresh.surface_created(at);
                st.last = None;
            }
        }
        State::announce_after(st, ev);
    }

    fn deadline(&self) -> Option<Duration> {
        let st = Screen::lock(&self.shared);
        if st.feed != self.id {
            return None;
        }
        st.fresh.deadline().map(|d| d.saturating_sub(st.offset))
    }

    fn tick(&self, now: Duration) {
        let mut st = Screen::lock(&self.shared);
        if st.feed != self.id {
            return;
        }
        let at = st.offset + now;
        // A change not looked at yet moves the deadline.
        let changed = st.look();
        let ev = changed.or_else(|| st.fresh.poll(at));
        State::announce_after(st, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fill, surface_create};
    use super::super::wire::msg;
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A screen and a feed whose session starts at `origin`.
    fn screen(stale_after: Option<Duration>) -> (Screen, Feed, Instant) {
        let s = Screen::on(Limits::default(), stale_after);
        let origin = Instant::now();
        let f = s.attach(origin).unwrap();
        (s, f, origin)
    }

    fn paint(f: &Feed, at: Duration, color: u32) {
        f.message(msg::DRAW_FILL, &fill(0, 0, 0, 8, 4, color), at);
    }

    #[test]
    fn unchanged_for_grows_while_the_pixels_stay_and_redraws_do_not_count() {
        let (s, f, o) = screen(None);
        assert_eq!(s.view_at(o, 1000.0).unwrap().changed_at, None);
        f.message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), ms(0));
        paint(&f, ms(100), 0xff);
        let v = s.view_at(o + ms(3100), 1003.1).unwrap();
        assert_eq!((v.width, v.height), (8, 4));
        assert_eq!(v.unchanged_secs, Some(3.0));
        assert_eq!(v.changed_at, Some(1000.1));
        assert_eq!(v.stale, None, "stale_after off");
        assert!(v.linked);
        let digest = v.digest.clone();
        // The same pixels painted again and again: no change.
        for i in 0..20 {
            paint(&f, ms(4000 + 100 * i), 0xff);
        }
        let v = s.view_at(o + ms(10_100), 1010.1).unwrap();
        assert_eq!(v.unchanged_secs, Some(10.0));
        assert_eq!(v.digest, digest);
        // Other pixels: a change, at the draw's time.
        f.message(msg::DRAW_FILL, &fill(0, 0, 0, 4, 4, 0xffffff), ms(11_000));
        let v = s.view_at(o + ms(12_000), 1012.0).unwrap();
        assert_eq!(v.unchanged_secs, Some(1.0));
        assert_ne!(v.digest, digest);
    }

    #[test]
    fn a_blinking_cursor_is_no_change() {
        let (s, f, o) = screen(None);
        f.message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), ms(0));
        paint(&f, ms(3000), 0x123456);
        // A cursor cell toggles every 270 ms for a minute.
        for i in 0..222u64 {
            let c = if i % 2 == 0 { 0xffffff } else { 0x123456 };
            f.message(msg::DRAW_FILL, &fill(0, 0, 3, 1, 4, c), ms(3270 + 270 * i));
        }
        let v = s.view_at(o + ms(63_270), 0.0).unwrap();
        // The first blink was a change (a new frame); none after it.
        assert_eq!(v.unchanged_secs, Some(60.0));
    }

    #[test]
    fn the_stale_check_is_one_deadline_and_fires_once() {
        let s5 = Duration::from_secs(5);
        let (s, f, o) = screen(Some(s5));
        assert_eq!(f.deadline(), None, "nothing shown yet: no timer");
        f.message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), ms(0));
        paint(&f, ms(2500), 1);
        // The paint is not looked at yet (no message since): at the latest
        // 500 ms after it, then 5 s after it for the stale check.
        assert_eq!(f.deadline(), Some(ms(3000)));
        f.tick(ms(3000));
        assert_eq!(f.deadline(), Some(ms(7500)));
        assert_eq!(s.view_at(o + s5, 0.0).unwrap().stale, Some(false));
        f.tick(ms(7500));
        let v = s.view_at(o + ms(7500), 0.0).unwrap();
        assert_eq!(v.stale, Some(true));
        assert_eq!(f.deadline(), None, "once: no further timer while stale");
        // The same picture again: still stale.
        paint(&f, ms(9000), 1);
        assert_eq!(s.view_at(o + ms(9100), 0.0).unwrap().stale, Some(true));
        // Another: changed again, and the next deadline is 5 s after it.
        paint(&f, ms(10_000), 2);
        assert_eq!(s.view_at(o + ms(10_100), 0.0).unwrap().stale, Some(false));
        assert_eq!(f.deadline(), Some(ms(15_000)));
    }

    #[test]
    fn a_reconnect_repainting_the_same_picture_is_no_change() {
        let (s, f, o) = screen(Some(Duration::from_secs(60)));
        f.message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), ms(0));
        paint(&f, ms(100), 7);
        f.end();
        let v = s.view_at(o + ms(20_000), 0.0).unwrap();
        assert!(!v.linked);
        assert!(v.digest.is_some(), "the last frame stays");
        // The next session starts 30 s after the first.
        let f2 = s.attach(o + Duration::from_secs(30)).unwrap();
        assert!(
            s.shot_at(o + ms(30_000), 0.0).is_some(),
            "the last frame until a new screen"
        );
        assert_eq!(
            f2.deadline(),
            Some(ms(60_100 - 30_000)),
            "in the new session's time"
        );
        // The old feed no longer counts.
        paint(&f, ms(35_000), 9);
        f2.message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), ms(0));
        paint(&f2, ms(50), 7);
        let v = s.view_at(o + ms(40_000), 0.0).unwrap();
        assert!(v.linked);
        assert_eq!(v.unchanged_secs, Some(39.9));
        // A different picture after the reconnect is a change.
        paint(&f2, ms(5_000), 8);
        let v = s.view_at(o + ms(36_000), 0.0).unwrap();
        assert_eq!(v.unchanged_secs, Some(1.0));
    }

    #[test]
    fn off_has_no_view_and_no_feed() {
        let s = Screen::off();
        assert!(s.attach(Instant::now()).is_none());
        assert!(s.view().is_none());
        assert!(s.shot().is_none());
    }
}
