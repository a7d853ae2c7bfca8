//! How long the process may sleep next: the longest sleep of the recent
//! past, with a margin. On an idle session that is the server's PING period
//! (~15 s), so everything falling due within it rides on the next PING; on a
//! busy one it is milliseconds, so work waits until just before it is due.

use super::{Time, Wake};
use std::collections::VecDeque;
use std::time::Duration;

/// Calls closer together than this belong to one wakeup (the tasks a wakeup
/// runs take microseconds each).
pub const SAME_WAKE: Duration = Duration::from_millis(1);

/// Sleeps remembered at most (the longest ones; a shorter memory only makes
/// the horizon shorter, which costs a timer wakeup, never a deadline).
const REMEMBERED: usize = 32;

/// The recent sleeps of the process, fed by every task that runs.
#[derive(Debug, Clone)]
pub struct Horizon<T> {
    /// How long a sleep is remembered.
    memory: Duration,
    /// The last time a task said it was awake.
    last: Option<T>,
    /// When the current wakeup began.
    start: Option<T>,
    /// (when the sleep ended, how long it was): a queue of decreasing lengths,
    /// so the front is the longest sleep still remembered.
    sleeps: VecDeque<(T, Duration)>,
}

impl<T: Time> Horizon<T> {
    /// Sleeps are remembered for `memory`.
    pub fn new(memory: Duration) -> Self {
        Horizon {
            memory,
            last: None,
            start: None,
            sleeps: VecDeque::new(),
        }
    }

    /// A task runs at `now`: the wakeup it belongs to.
    pub fn awake(&mut self, now: T) -> Wake<T> {
        let now = self.last.map_or(now, |l| now.max(l));
        let start = match (self.last, self.start) {
            (Some(last), Some(start)) if now.since(last) <= SAME_WAKE => start,
            (last, _) => {
                if let Some(last) = last {
                    self.remember(now, now.since(last));
                }
                now
            }
        };
        self.last = Some(now);
        self.start = Some(start);
        Wake {
            start,
            now,
            horizon: self.horizon(now),
        }
    }

    fn remember(&mut self, end: T, slept: Duration) {
        while self.sleeps.back().is_some_and(|(_, s)| *s <= slept) {
            self.sleeps.pop_back();
        }
        if self.sleeps.len() == REMEMBERED {
            self.sleeps.pop_back();
        }
        self.sleeps.push_back((end, slept));
    }

    /// The longest sleep that ended within `memory` before `now`, plus a
    /// quarter (the server's PINGs drift by milliseconds; a longer guess
    /// only moves work a little earlier).
    fn horizon(&mut self, now: T) -> Duration {
        while self
            .sleeps
            .front()
            .is_some_and(|(end, _)| now.since(*end) > self.memory)
        {
            self.sleeps.pop_front();
        }
        self.sleeps
            .front()
            .map_or(Duration::ZERO, |(_, s)| s.saturating_add(*s / 4))
    }
}
