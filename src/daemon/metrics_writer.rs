//! The metrics file's writer: a thread of its own, handed the latest text.
//!
//! A blocking-pool task per write would start a new thread at nearly every
//! periodic rewrite (the pool lets an idle thread go after 10 s; the rewrite
//! comes every ~15 s), and the end of each would wake the event loop. This
//! thread sleeps until it has something to write, and tells the loop that a
//! write ended only when the loop asks ([`Writer::tell_when_done`]); otherwise
//! the loop picks the result up on its next turn ([`Writer::take_done`]).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Tell = Box<dyn FnOnce() + Send>;

pub struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The text to write next (a newer one replaces it).
    job: Option<String>,
    /// How the last write ended, until taken.
    done: Option<Result<(), String>>,
    /// Called once when the next result is stored.
    tell: Option<Tell>,
    /// The loop is gone: the thread ends.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Writer {
    /// Starts the thread writing to `path` with `write` (blocking).
    pub fn spawn(
        path: Arc<PathBuf>,
        write: fn(&std::path::Path, &str) -> std::io::Result<()>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("spiced-metrics".into())
            .spawn(move || run(&s, &path, write))?;
        Ok(Writer { shared })
    }

    /// Writes `text` (after the write in flight, if any).
    pub fn submit(&self, text: String) {
        self.shared.lock().job = Some(text);
        self.shared.wake.notify_one();
    }

    /// How the last write ended, once.
    pub fn take_done(&self) -> Option<Result<(), String>> {
        self.shared.lock().done.take()
    }

    /// Calls `tell` (from the writer's thread) when the write in flight has
    /// ended; at once when a result is already waiting.
    pub fn tell_when_done(&self, tell: impl FnOnce() + Send + 'static) {
        let mut g = self.shared.lock();
        if g.done.is_some() {
            drop(g);
            tell();
        } else {
            g.tell = Some(Box::new(tell));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn run(
    s: &Shared,
    path: &std::path::Path,
    write: fn(&std::path::Path, &str) -> std::io::Result<()>,
) {
    loop {
        let text = {
            let mut g = s.lock();
            loop {
                if g.closed {
                    return;
                }
                if let Some(t) = g.job.take() {
                    break t;
                }
                g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = write(path, &text).map_err(|e| e.to_string());
        let tell = {
            let mut g = s.lock();
            g.done = Some(r);
            g.tell.take()
        };
        if let Some(tell) = tell {
            tell();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn fail(_: &std::path::Path, t: &str) -> std::io::Result<()> {
        if t == "bad" {
            Err(std::io::Error::other("disk full"))
        } else {
            Ok(())
        }
    }

    #[test]
    fn writes_and_tells_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("m.prom"));
        let w = Writer::spawn(path.clone(), crate::metrics::write_atomic).unwrap();
        let (tx, rx) = mpsc::channel();
        w.tell_when_done(move || tx.send(()).unwrap());
        w.submit("a 1\n".into());
        rx.recv_timeout(Duration::from_secs(10)).expect("told");
        assert_eq!(w.take_done(), Some(Ok(())));
        assert_eq!(w.take_done(), None, "once");
        assert_eq!(std::fs::read_to_string(&*path).unwrap(), "a 1\n");
        // Asked after the end: told at once.
        let (tx, rx) = mpsc::channel();
        w.submit("a 2\n".into());
        let (tx2, rx2) = mpsc::channel();
        w.tell_when_done(move || tx2.send(()).unwrap());
        rx2.recv_timeout(Duration::from_secs(10)).unwrap();
        w.tell_when_done(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("told at once");
        assert_eq!(std::fs::read_to_string(&*path).unwrap(), "a 2\n");
    }

    #[test]
    fn a_failed_write_is_reported() {
        let w = Writer::spawn(Arc::new("/x".into()), fail).unwrap();
        let (tx, rx) = mpsc::channel();
        w.tell_when_done(move || tx.send(()).unwrap());
        w.submit("bad".into());
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(w.take_done(), Some(Err("disk full".into())));
    }
}
