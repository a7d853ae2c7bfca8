//! Coalesced wakeups: periodic work (keepalives, main's probe and backstop,
//! the metrics rewrite, the watchdog ping, the daemon's timers) rides on the
//! wakeups that happen anyway, and a timer of spiced's own fires only when
//! nothing else woke it — once, at the deadline.
//!
//! An idle session is woken by the server every ~15 s (a PING pair on main
//! and on display). Each piece of periodic work says when it may run and
//! when it must ([`Window`]); whenever the process is awake for any reason
//! ([`Wake`]), everything that would fall due before the next wakeup is
//! expected runs now. When the next wakeup comes is estimated from the
//! wakeups the tasks expect (the server's next PING on a channel) and how
//! long the process slept lately ([`Horizon`]); a wrong guess only costs a
//! timer wakeup, never a missed deadline: the one alarm ([`Alarm`], a
//! timerfd in the reactor) is armed at the earliest due time of all
//! ([`Plan`]).
//!
//! The decisions are sans-IO ([`Window`], [`Horizon`], [`Plan`], over any
//! [`Time`]); [`Pacer`] is the shared shell the tasks register with, and
//! [`Alarm`] the seam between the timerfd and tokio's (paused) clock.

mod alarm;
pub(crate) mod horizon;
pub(crate) mod lowat;
pub(crate) mod pacer;
pub(crate) mod plan;
#[cfg(test)]
mod tests;

pub use alarm::Alarm;
pub use horizon::Horizon;
pub use lowat::Lowat;
pub use pacer::{Pacer, Slot};
pub use plan::Plan;

use std::ops::Add;
use std::time::Duration;

/// A point in time the decisions work on: tokio's `Instant` in the shells,
/// a `Duration` since some origin in the sans-IO state machines and tests.
pub trait Time: Copy + Ord + Add<Duration, Output = Self> + std::fmt::Debug {
    /// How long after `earlier` this is (zero when it is not after it).
    fn since(self, earlier: Self) -> Duration;
    /// `d` earlier (this, where that is before the clock's origin).
    fn before(self, d: Duration) -> Self;
}

impl Time for tokio::time::Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }

    fn before(self, d: Duration) -> Self {
        self.checked_sub(d).unwrap_or(self)
    }
}

impl Time for Duration {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_sub(earlier)
    }

    fn before(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

/// When a piece of periodic work may run (from `earliest` on) and when it
/// must (at `due`, or up to `grace` later when a wakeup from outside is
/// expected by then: see [`Plan::next_due`]). An exact deadline has
/// `earliest` and `due` equal and no grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<T = tokio::time::Instant> {
    pub earliest: T,
    pub due: T,
    pub grace: Duration,
}

impl<T: Time> Window<T> {
    /// Work that runs at `due` exactly, never earlier.
    pub fn at(due: T) -> Self {
        Window {
            earliest: due,
            due,
            grace: Duration::ZERO,
        }
    }

    /// The latest the work may run when a wakeup is expected by then.
    pub fn hard(&self) -> T {
        self.due + self.grace
    }

    /// Whether the work runs at this wakeup: it is due, or it may run and
    /// would pass its grace before the next wakeup is expected. `earliest`
    /// is compared with the start of the wakeup, so work that a task of this
    /// same wakeup just did (a byte sent, a file written) does not qualify.
    pub fn ready(&self, wake: &Wake<T>) -> bool {
        wake.now >= self.due
            || (wake.start >= self.earliest && self.hard() < wake.now + wake.horizon)
    }

    /// The window of doing both (the earlier of each bound).
    pub fn merge(self, other: Window<T>) -> Window<T> {
        let due = self.due.min(other.due);
        Window {
            earliest: self.earliest.min(other.earliest),
            due,
            grace: self.hard().min(other.hard()).since(due),
        }
    }

    /// The same window on another clock.
    pub fn map<U: Time>(self, f: impl Fn(T) -> U) -> Window<U> {
        Window {
            earliest: f(self.earliest),
            due: f(self.due),
            grace: self.grace,
        }
    }
}

/// Merges optional windows (None: nothing to do).
pub fn merge<T: Time>(a: Option<Window<T>>, b: Option<Window<T>>) -> Option<Window<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    }
}

/// One wakeup of the process: when it began (the first task that ran after
/// a sleep), the moment of the decision, and how long the process may sleep
/// next ([`Horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake<T = tokio::time::Instant> {
    pub start: T,
    pub now: T,
    pub horizon: Duration,
}

impl<T: Time> Wake<T> {
    /// A wakeup by a deadline alone (nothing rides along).
    pub fn timer(now: T) -> Self {
        Wake {
            start: now,
            now,
            horizon: Duration::ZERO,
        }
    }

    /// The same wakeup on another clock.
    pub fn map<U: Time>(self, f: impl Fn(T) -> U) -> Wake<U> {
        Wake {
            start: f(self.start),
            now: f(self.now),
            horizon: self.horizon,
        }
    }
}
