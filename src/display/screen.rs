//! The daemon's view of the guest's screen, shared between the display
//! channel task that feeds the mirror and the readers (screenshot, reports,
//! status, metrics). Cloning shares it. With `[display] mirror = false` it is
//! [`Screen::off`]: it holds nothing and hands out no feed, so the display
//! channel behaves exactly as without a mirror.
//!
//! Readers lock only to copy a handle on the frame (the pixels are shared
//! copy-on-write) or to sample the digest; nothing is encoded under the lock.

use super::{Frame, Limits, Mirror, MirrorStats};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the display channel feeds (a [`crate::channel::Channel`] hands it
/// every display message).
pub trait DisplaySink: Send + Sync {
    /// `body` without the header; `now` since the session started.
    fn message(&self, msg_type: u16, body: &[u8], now: Duration);
}

#[derive(Clone, Default)]
pub struct Screen(Option<Arc<Shared>>);

struct Shared {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    mirror: Option<Mirror>,
    /// The wall clock at the feeding session's start.
    start_unix: f64,
    /// Which feed is current (a feed of an older link stops counting).
    feed: u64,
}

/// A display channel's feed into the screen.
pub struct Feed {
    shared: Arc<Shared>,
    id: u64,
}

/// The frame and when it was last drawn (unix seconds).
#[derive(Debug, Clone)]
pub struct Shot {
    pub frame: Frame,
    pub changed_at_unix: Option<f64>,
}

/// Display freshness for status, metrics and reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Freshness {
    pub width: u32,
    pub height: u32,
    /// When the screen was last drawn (unix seconds); None before the first draw.
    pub changed_at: Option<f64>,
    /// [`super::digest`] of the frame.
    pub digest: Option<String>,
    /// Bytes the mirror holds beside the primary surface.
    pub extra_bytes: u64,
    pub stats: MirrorStats,
}

impl Screen {
    pub fn off() -> Screen {
        Screen(None)
    }

    pub fn on(limits: Limits) -> Screen {
        Screen(Some(Arc::new(Shared {
            limits,
            state: Mutex::new(State::default()),
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

    /// A new display link: a fresh mirror replaces the last one (whose frame
    /// stays readable until then). None when the mirror is off.
    pub fn attach(&self, start_unix: f64) -> Option<Feed> {
        let shared = self.0.as_ref()?.clone();
        let id = {
            let mut st = Self::lock(&shared);
            st.feed += 1;
            st.mirror = Some(Mirror::new(shared.limits));
            st.start_unix = start_unix;
            st.feed
        };
        Some(Feed { shared, id })
    }

    /// The current frame, or the last one of an ended link.
    pub fn shot(&self) -> Option<Shot> {
        let st = Self::lock(self.0.as_ref()?);
        let frame = st.mirror.as_ref()?.frame()?;
        let changed_at_unix = frame.changed_at.map(|d| st.start_unix + d.as_secs_f64());
        Some(Shot {
            frame,
            changed_at_unix,
        })
    }

    pub fn freshness(&self) -> Option<Freshness> {
        let st = Self::lock(self.0.as_ref()?);
        let m = st.mirror.as_ref()?;
        let f = m.frame();
        Some(Freshness {
            width: f.as_ref().map_or(0, |f| f.width),
            height: f.as_ref().map_or(0, |f| f.height),
            changed_at: m.changed_at().map(|d| st.start_unix + d.as_secs_f64()),
            digest: f.map(|f| f.digest()),
            extra_bytes: m.extra_bytes() as u64,
            stats: m.stats().clone(),
        })
    }
}

impl Feed {
    /// The link ended: keep its frame, free everything else.
    pub fn end(&self) {
        let mut st = Screen::lock(&self.shared);
        if st.feed == self.id {
            if let Some(m) = st.mirror.as_mut() {
                m.shrink();
            }
        }
    }
}

impl DisplaySink for Feed {
    fn message(&self, msg_type: u16, body: &[u8], now: Duration) {
        let mut st = Screen::lock(&self.shared);
        if st.feed != self.id {
            return;
        }
        if let Some(m) = st.mirror.as_mut() {
            m.on_message(msg_type, body, now);
        }
    }
}
