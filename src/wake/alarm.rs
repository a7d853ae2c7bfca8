//! The process's one timer of its own. The real one is a timerfd registered
//! with tokio's reactor: the kernel makes it readable once, at the deadline.
//! tokio's own timer wheel would not do: it parks with a timeout derived from
//! the wheel, which moves a timer more than ~4 s away down its levels at slot
//! boundaries, each a wakeup of its own (about three for a 15 s timer). Tests
//! use tokio's timer instead, so paused time drives them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

/// One deadline at a time.
pub struct Alarm {
    armed: Option<Instant>,
    how: How,
}

enum How {
    Timerfd(AsyncFd<OwnedFd>),
    Tokio(Option<Pin<Box<Sleep>>>),
}

impl Alarm {
    /// A timerfd in the reactor (needs a tokio runtime with I/O); tokio's
    /// timer where the kernel refuses one.
    pub fn timerfd() -> Alarm {
        match new_timerfd() {
            Ok(fd) => Alarm {
                armed: None,
                how: How::Timerfd(fd),
            },
            Err(e) => {
                tracing::debug!("no timerfd ({e}): using tokio's timer");
                Alarm::tokio()
            }
        }
    }

    /// tokio's timer (paused-time tests).
    pub fn tokio() -> Alarm {
        Alarm {
            armed: None,
            how: How::Tokio(None),
        }
    }

    /// Rings at `at` (None: never). Re-arming replaces the old deadline.
    pub fn set(&mut self, at: Option<Instant>) {
        if at == self.armed {
            return;
        }
        self.armed = at;
        match &mut self.how {
            How::Timerfd(fd) => {
                if let Err(e) = settime(fd.get_ref(), at) {
                    tracing::warn!("timerfd_settime failed ({e}): using tokio's timer");
                    self.how = How::Tokio(None);
                    self.armed = None;
                    self.set(at);
                }
            }
            How::Tokio(sleep) => match (at, sleep.as_mut()) {
                (Some(at), Some(s)) => s.as_mut().reset(at),
                (Some(at), None) => *sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                (None, _) => *sleep = None,
            },
        }
    }

    /// Resolves when the armed deadline has passed, with that deadline (and
    /// disarms); never while disarmed.
    pub async fn fired(&mut self) -> Instant {
        let Some(at) = self.armed else {
            return std::future::pending().await;
        };
        let failed = match &mut self.how {
            How::Timerfd(fd) => wait(fd).await.err(),
            How::Tokio(Some(s)) => {
                s.as_mut().await;
                None
            }
            How::Tokio(None) => return std::future::pending().await,
        };
        if let Some(e) = failed {
            // Never seen; a broken timerfd must not turn into a busy loop.
            tracing::warn!("timerfd wait failed ({e}): using tokio's timer");
            self.how = How::Tokio(None);
            self.armed = None;
            self.set(Some(at));
            if let How::Tokio(Some(s)) = &mut self.how {
                s.as_mut().await;
            }
        }
        self.armed = None;
        if let How::Tokio(s) = &mut self.how {
            *s = None;
        }
        at
    }
}

fn new_timerfd() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the result is checked before it is used as a fd.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the AsyncFd owns the descriptor and never replaces or closes it
    // while registered (it is closed when the AsyncFd is dropped).
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Arms `fd` relative to now (CLOCK_MONOTONIC, the clock of `Instant`).
fn settime(fd: &OwnedFd, at: Option<Instant>) -> io::Result<()> {
    let value = match at {
        // A zero value would disarm: the smallest delay instead.
        Some(at) => at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1)),
        None => Duration::ZERO,
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: libc::time_t::try_from(value.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(value.subsec_nanos() as i32),
        },
    };
    // SAFETY: `fd` is a timerfd we own; `spec` outlives the call.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the timerfd has expired, and consumes the expiration.
async fn wait(fd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    loop {
        let mut guard = fd.readable().await?;
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `n` from a descriptor we own.
        let r = unsafe { libc::read(fd.get_ref().as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
        if r == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.kind() == io::ErrorKind::WouldBlock {
            // Re-armed since it became readable, or a stale readiness.
            guard.clear_ready();
            continue;
        }
        return Err(e);
    }
}
