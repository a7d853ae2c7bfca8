//! The process's stderr as log lines see it: whether it is a journald stream
//! ([`is_journal_stream`]), and a way to write to it that never blocks the
//! caller ([`Stderr`]).
//!
//! stderr can block for good: a pipe nobody reads, a terminal paused with
//! Ctrl-S, journald's stream while journald stalls. Lines are logged on the
//! event loop, so they are not written there: they go into a bounded queue
//! in memory ([`CAPACITY`] bytes) that one writer thread drains. A line that
//! does not fit is dropped and counted; once stderr takes lines again, the
//! writer says how many were lost. At exit, [`flush`] waits, bounded, for
//! what is still queued.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of lines that may wait for stderr. A single longer line is taken
/// when nothing waits.
pub const CAPACITY: usize = 1 << 20;

/// How long the process waits at exit for stderr to take what is queued
/// (within the 2 s exit bound, docs/exit-codes.md).
pub const EXIT_FLUSH: Duration = Duration::from_millis(300);

/// Whether `JOURNAL_STREAM` (`DEV:INO`, decimal, as systemd sets it) names the
/// file `dev`/`ino`. systemd documents this check: the variable is inherited by
/// children whose stderr was redirected elsewhere, so its presence alone says
/// nothing.
pub fn stream_matches(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// This process's stderr is a journald stream.
pub fn is_journal_stream() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let var = std::env::var("JOURNAL_STREAM").ok();
    if var.is_none() {
        return false;
    }
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => stream_matches(var.as_deref(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// A bounded queue of lines drained into a writer by a thread of its own.
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the writer has nothing left to write.
    idle: Condvar,
    capacity: usize,
    /// The line saying how many lines were dropped.
    dropped_line: fn(u64) -> String,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer is writing a line it took.
    writing: bool,
    dropped: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drain(&self, mut out: impl Write) {
        loop {
            let (line, dropped) = {
                let mut s = self.lock();
                s.writing = false;
                while s.lines.is_empty() {
                    self.idle.notify_all();
                    s = self.queued.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                let line = s.lines.pop_front().unwrap_or_default();
                s.bytes -= line.len();
                s.writing = true;
                (line, std::mem::take(&mut s.dropped))
            };
            // Errors (stderr closed) drop the line: there is nowhere else.
            if dropped > 0 {
                let _ = out.write_all((self.dropped_line)(dropped).as_bytes());
            }
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    }
}

impl Queue {
    /// A queue of at most `capacity` bytes draining into `out`.
    /// `dropped_line(n)` is written before the next line after `n` were
    /// dropped.
    pub fn start(
        out: impl Write + Send + 'static,
        capacity: usize,
        dropped_line: fn(u64) -> String,
    ) -> std::io::Result<Queue> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            idle: Condvar::new(),
            capacity,
            dropped_line,
        });
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("spiced-stderr".into())
            .spawn(move || writer.drain(out))?;
        Ok(Queue { inner })
    }

    /// Queues `line` (bytes that stay together); never waits. False: the
    /// queue was full and the line is dropped.
    pub fn push(&self, line: Vec<u8>) -> bool {
        let mut s = self.inner.lock();
        if !s.lines.is_empty() && s.bytes + line.len() > self.inner.capacity {
            s.dropped += 1;
            return false;
        }
        s.bytes += line.len();
        s.lines.push_back(line);
        self.inner.queued.notify_one();
        true
    }

    /// Waits until everything queued is written, at most `timeout`. False:
    /// some is still waiting (stderr does not take it).
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.inner.lock();
        while !s.lines.is_empty() || s.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .inner
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn dropped_line(n: u64) -> String {
    // On a journal stream the prefix makes it a warning.
    let prefix = if is_journal_stream() { "<4>" } else { "" };
    format!("{prefix}spiced: {n} log lines dropped: stderr was not taking them\n")
}

/// The process's queue in front of stderr; None if its thread cannot start.
fn global() -> Option<&'static Queue> {
    static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();
    QUEUE
        .get_or_init(|| Queue::start(std::io::stderr(), CAPACITY, dropped_line).ok())
        .as_ref()
}

/// Writes `line` to stderr without waiting (see the module).
pub fn write_line(line: Vec<u8>) {
    match global() {
        Some(q) => {
            q.push(line);
        }
        // No thread: a blocking write beats a lost line.
        None => {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Waits until stderr has taken every queued line, at most `timeout`. Call it
/// before the process exits.
pub fn flush(timeout: Duration) -> bool {
    global().is_none_or(|q| q.flush(timeout))
}

/// A [`MakeWriter`] for `tracing`: each event's bytes become one queued line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// One event's bytes, queued when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_line(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(stream_matches(Some("64769:1234"), 64769, 1234));
        assert!(stream_matches(Some(" 8:99\n"), 8, 99));
        assert!(!stream_matches(Some("64769:1234"), 64769, 1235));
        assert!(!stream_matches(Some("64768:1234"), 64769, 1234));
        assert!(!stream_matches(Some(""), 0, 0));
        assert!(!stream_matches(Some("1234"), 0, 1234));
        assert!(!stream_matches(Some("a:b"), 0, 0));
        assert!(!stream_matches(None, 0, 0));
    }

    /// A pipe of one page whose read end is returned (never read unless the
    /// test does).
    fn small_pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array with two fresh descriptors, owned
        // from here on.
        let (r, w) = unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        // SAFETY: fcntl on a descriptor owned here.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        (r, std::fs::File::from(w))
    }

    fn dropped(n: u64) -> String {
        format!("[{n} dropped]\n")
    }

    /// A stderr that never drains: 10 000 lines (far more than the pipe and
    /// the queue hold) are all taken at once, the queue stays bounded, the
    /// excess is counted, and flush gives up at its deadline.
    #[test]
    fn a_stderr_that_never_drains_never_stalls_the_caller() {
        let (_unread, w) = small_pipe();
        let q = Queue::start(w, 64 * 1024, dropped).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::thread::spawn(move || {
            let taken = (0..10_000)
                .filter(|i| q.push(format!("line {i:05} {}\n", "x".repeat(100)).into_bytes()))
                .count();
            let flushed = q.flush(Duration::from_millis(50));
            tx.send((taken, flushed, q.inner.lock().bytes)).unwrap();
        });
        let (taken, flushed, queued) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the caller stalled on a stderr nobody reads");
        lines.join().unwrap();
        assert!(taken < 10_000 && taken > 500, "{taken}");
        assert!(!flushed, "nothing can be flushed into a full pipe");
        assert!(queued <= 64 * 1024, "{queued}");
    }

    /// Once stderr drains again, every line taken arrives once, in order,
    /// and notes count those dropped meanwhile.
    #[test]
    fn lines_arrive_in_order_and_drops_are_counted() {
        use std::io::Read;
        let (r, w) = small_pipe();
        let q = Queue::start(w, 2048, dropped).unwrap();
        let mut taken: Vec<String> = (0..200)
            .map(|i| format!("{i:03} {}\n", "y".repeat(60)))
            .filter(|l| q.push(l.clone().into_bytes()))
            .collect();
        assert!(taken.len() < 200, "the queue never filled");
        // The writer keeps the pipe open: read up to the last line.
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut got = String::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with("last\n") {
                let n = f.read(&mut buf).unwrap();
                assert!(n > 0);
                got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            }
            got
        });
        assert!(q.flush(Duration::from_secs(10)), "drained");
        assert!(q.push(b"last\n".to_vec()));
        taken.push("last\n".into());
        let got = reader.join().unwrap();
        let mut lines = Vec::new();
        let mut lost = 0;
        for l in got.split_inclusive('\n') {
            match l
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(" dropped]\n"))
            {
                Some(n) => lost += n.parse::<usize>().unwrap(),
                None => lines.push(l.to_string()),
            }
        }
        assert_eq!(lines, taken);
        assert_eq!(lost, 201 - taken.len());
    }
}
