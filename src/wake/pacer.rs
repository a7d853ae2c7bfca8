//! The shell around [`Plan`] and [`Horizon`] that tasks share: a task
//! registers a [`Slot`] with the window of its periodic work, says when it
//! runs anyway ([`Pacer::awake`]), and waits for [`Slot::kicked`] among its
//! other futures. One task per process rings the [`Alarm`] at the earliest
//! due time.
//!
//! Kicking a task is a waker call on the runtime's own thread: the task runs
//! in the same turn of the event loop, no extra wakeup of the process.

use super::{Alarm, Plan, Wake, Window};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a sleep of the process counts towards the horizon: several of
/// the server's 15 s PING periods.
pub const MEMORY: Duration = Duration::from_secs(60);

/// The wakeups of one process, shared by every task with periodic work.
pub struct Pacer {
    inner: Mutex<Inner>,
    /// The earliest due time moved: the alarm task re-arms.
    rearm: Notify,
}

struct Inner {
    plan: Plan<Instant>,
    /// Indexed like the plan's slots.
    slots: Vec<Option<Arc<Kick>>>,
    /// What the alarm is set to.
    armed: Option<Instant>,
    scratch: Vec<usize>,
}

#[derive(Default)]
struct Kick {
    wake: Mutex<Option<Wake>>,
    notify: Notify,
}

impl Pacer {
    /// A pacer without its alarm task (see [`Pacer::start`]).
    pub fn new() -> Arc<Pacer> {
        Arc::new(Pacer {
            inner: Mutex::new(Inner {
                plan: Plan::new(MEMORY),
                slots: Vec::new(),
                armed: None,
                scratch: Vec::new(),
            }),
            rearm: Notify::new(),
        })
    }

    /// A pacer whose alarm task runs on the current runtime (until the
    /// runtime ends).
    pub fn start(alarm: Alarm) -> Arc<Pacer> {
        let p = Pacer::new();
        tokio::spawn(ring(p.clone(), alarm));
        p
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves plain data behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new slot with nothing to do yet.
    pub fn slot(self: &Arc<Self>) -> Slot {
        let kick = Arc::new(Kick::default());
        let mut g = self.lock();
        let id = g.plan.add();
        if g.slots.len() <= id {
            g.slots.resize(id + 1, None);
        }
        g.slots[id] = Some(kick.clone());
        Slot {
            pacer: self.clone(),
            id,
            kick,
        }
    }

    /// A task runs at `now` (it read bytes, a signal came, ...): every slot
    /// whose work should run at this wakeup is kicked. `ping`: the server's
    /// periodic PING woke it ([`Plan::awake`]). Returns the wakeup.
    pub fn awake(&self, now: Instant, ping: bool) -> Wake {
        let mut g = self.lock();
        let mut ids = std::mem::take(&mut g.scratch);
        ids.clear();
        let wake = g.plan.awake(now, ping, &mut ids);
        for id in &ids {
            if let Some(Some(k)) = g.slots.get(*id) {
                *k.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(wake);
                k.notify.notify_one();
            }
        }
        if !ids.is_empty() {
            self.moved(&g);
        }
        g.scratch = ids;
        wake
    }

    /// Tells the alarm task when the earliest due time is not what it armed.
    fn moved(&self, g: &Inner) {
        if g.plan.next_due() != g.armed {
            self.rearm.notify_one();
        }
    }

    /// Slots registered (for tests and logs).
    pub fn slots(&self) -> usize {
        self.lock().plan.len()
    }
}

/// Rings the alarm at the earliest due time, re-armed whenever it moves.
async fn ring(pacer: Arc<Pacer>, mut alarm: Alarm) {
    loop {
        let want = {
            let mut g = pacer.lock();
            g.armed = g.plan.next_due();
            g.armed
        };
        alarm.set(want);
        tokio::select! {
            biased;
            _ = pacer.rearm.notified() => {}
            at = alarm.fired() => {
                // The timerfd is set from a clock read a moment before
                // `Instant::now()`: it may ring a hair early by that clock.
                pacer.awake(Instant::now().max(at), false);
            }
        }
    }
}

/// One task's periodic work, registered with the [`Pacer`]; removed on drop.
pub struct Slot {
    pacer: Arc<Pacer>,
    id: usize,
    kick: Arc<Kick>,
}

impl Slot {
    /// The work's window now (None: nothing to do), and when the task
    /// expects to be woken from outside (the server's next PING). Call it
    /// before waiting, whenever either may have moved.
    pub fn set(&self, window: Option<Window>, expect: Option<Instant>) {
        let mut g = self.pacer.lock();
        g.plan.set(self.id, window, expect);
        self.pacer.moved(&g);
    }

    /// The process is awake at `now` because of this task (see
    /// [`Pacer::awake`]).
    pub fn awake(&self, now: Instant, ping: bool) -> Wake {
        self.pacer.awake(now, ping)
    }

    /// Resolves when the work should run, with the wakeup it rides on.
    /// Cancel-safe: a kick is kept until it is taken.
    pub async fn kicked(&self) -> Wake {
        loop {
            if let Some(w) = self
                .kick
                .wake
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return w;
            }
            self.kick.notify.notified().await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.pacer.lock();
        g.plan.remove(self.id);
        if let Some(s) = g.slots.get_mut(self.id) {
            *s = None;
        }
        self.pacer.moved(&g);
    }
}
