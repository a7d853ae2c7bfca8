//! Who needs waking: every registered piece of periodic work with its
//! [`Window`] (ordered by due time, so a wakeup finds what runs with it and
//! the alarm knows the one moment nothing else may be waited for), and the
//! wakeups the tasks expect from outside (the server's next PING on a
//! channel), which say how long the process will sleep next.

use super::{Horizon, Time, Wake, Window};
use std::collections::BTreeSet;
use std::time::Duration;

/// An expected wakeup may come this much later than expected (the server's
/// PING timer restarts at our PONG, plus its scheduling: milliseconds).
pub const EXPECTED_SLACK: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
struct Entry<T> {
    window: Option<Window<T>>,
    expect: Option<T>,
    /// Told to run and not heard from since: left out of the alarm until its
    /// task has run (its new window replaces this one).
    kicked: bool,
}

/// The table of windows and expected wakeups. Slot ids are reused after
/// [`Plan::remove`].
#[derive(Debug, Clone)]
pub struct Plan<T> {
    entries: Vec<Option<Entry<T>>>,
    free: Vec<usize>,
    /// (due, slot) of every entry with a window that is not kicked.
    by_due: BTreeSet<(T, usize)>,
    /// (expected wakeup, slot).
    by_expect: BTreeSet<(T, usize)>,
    horizon: Horizon<T>,
}

impl<T: Time> Plan<T> {
    /// `memory`: how long a sleep of the process counts ([`Horizon`]).
    pub fn new(memory: Duration) -> Self {
        Plan {
            entries: Vec::new(),
            free: Vec::new(),
            by_due: BTreeSet::new(),
            by_expect: BTreeSet::new(),
            horizon: Horizon::new(memory),
        }
    }

    /// A new slot with nothing to do yet.
    pub fn add(&mut self) -> usize {
        let e = Entry {
            window: None,
            expect: None,
            kicked: false,
        };
        match self.free.pop() {
            Some(id) => {
                self.entries[id] = Some(e);
                id
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }

    pub fn remove(&mut self, id: usize) {
        if let Some(e) = self.entries.get_mut(id).and_then(Option::take) {
            self.unindex(id, &e);
            self.free.push(id);
        }
    }

    fn unindex(&mut self, id: usize, e: &Entry<T>) {
        if let (Some(w), false) = (e.window, e.kicked) {
            self.by_due.remove(&(w.due, id));
        }
        if let Some(x) = e.expect {
            self.by_expect.remove(&(x, id));
        }
    }

    /// The slot's work now has this window (None: nothing to do), and its
    /// task expects to be woken from outside at `expect`; a kicked slot
    /// counts again.
    pub fn set(&mut self, id: usize, window: Option<Window<T>>, expect: Option<T>) {
        let Some(Some(old)) = self.entries.get(id).cloned() else {
            return;
        };
        self.unindex(id, &old);
        self.entries[id] = Some(Entry {
            window,
            expect,
            kicked: false,
        });
        if let Some(w) = window {
            self.by_due.insert((w.due, id));
        }
        if let Some(x) = expect {
            self.by_expect.insert((x, id));
        }
    }

    /// A task runs at `now`: the wakeup, and the slots whose work runs at it
    /// (see [`Window::ready`]) in `out`, marked kicked. How long the process
    /// may sleep next: the longest recent sleep ([`Horizon`]), or less when
    /// a task expects a wakeup sooner. When the server's periodic PING woke
    /// it (`ping`), the next expected wakeup alone: the PINGs are the
    /// heartbeat of an idle session, and right after linking the process has
    /// not slept enough to tell.
    pub fn awake(&mut self, now: T, ping: bool, out: &mut Vec<usize>) -> Wake<T> {
        let mut wake = self.horizon.awake(now);
        let after = wake.now + super::horizon::SAME_WAKE;
        if let Some((next, _)) = self.by_expect.range((after, 0)..).next() {
            let until = next.since(wake.now).saturating_add(EXPECTED_SLACK);
            wake.horizon = if ping { until } else { wake.horizon.min(until) };
        }
        let until = wake.now + wake.horizon;
        let ready: Vec<(T, usize)> = self
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= wake.now || *due < until)
            .filter(|(_, id)| {
                self.entries[*id]
                    .as_ref()
                    .and_then(|e| e.window)
                    .is_some_and(|w| w.ready(&wake))
            })
            .copied()
            .collect();
        for key in ready {
            self.by_due.remove(&key);
            if let Some(Some(e)) = self.entries.get_mut(key.1) {
                e.kicked = true;
            }
            out.push(key.1);
        }
        wake
    }

    /// When the alarm must ring: the earliest due time of a slot not
    /// already told to run, or as much later as its grace allows when a
    /// wakeup from outside is expected within the grace (the server's PING
    /// period is 15 s plus the round trip: a keepalive due a moment before
    /// the PING rides on it instead of costing a wakeup of its own). A PING
    /// expected up to [`EXPECTED_SLACK`] before the deadline counts too: it
    /// comes a little after its time (a channel that linked just after the
    /// PING pair at link falls due between the expected PING and the real one).
    pub fn next_due(&self) -> Option<T> {
        let mut best: Option<T> = None;
        for (due, id) in &self.by_due {
            if best.is_some_and(|b| b <= *due) {
                break;
            }
            let grace = self.entries[*id]
                .as_ref()
                .and_then(|e| e.window)
                .map_or(Duration::ZERO, |w| w.grace);
            let hard = *due + grace;
            let at = match self
                .by_expect
                .range((due.before(EXPECTED_SLACK), 0)..)
                .next()
            {
                Some((x, _)) if !grace.is_zero() && *x <= hard => hard,
                _ => *due,
            };
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        best
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
