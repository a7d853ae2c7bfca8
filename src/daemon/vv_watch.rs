//! Noticing a new .vv while waiting for a ticket, without a wakeup a second:
//! inotify on the .vv's directory tells the loop when something there was
//! written, created, renamed, removed or changed its attributes; the loop
//! then stats the .vv (off the loop) and reads it if it is new. Setting the
//! watch up resolves the path, which can block on stalled storage, so it runs
//! off the loop too. Where inotify cannot be had (no more watches, a file
//! system without it) the loop checks the path every second instead.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tokio::io::unix::AsyncFd;

/// What changes in the directory are watched for.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_ATTRIB
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// The inotify header before each event's name (wd, mask, cookie, len).
const EVENT_HEADER: usize = 16;

/// An inotify descriptor watching the .vv's directory (blocking: run it off
/// the loop).
pub fn open(vv: &Path) -> io::Result<OwnedFd> {
    let dir = match vv.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("the .vv directory has a NUL byte"))?;
    // SAFETY: `fd` is an inotify descriptor, `c` a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), MASK) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The registered watch.
pub struct VvWatch {
    fd: AsyncFd<OwnedFd>,
    name: OsString,
    buf: Vec<u8>,
}

impl VvWatch {
    /// Registers `fd` (from [`open`]) with the reactor.
    pub fn new(fd: OwnedFd, vv: &Path) -> io::Result<VvWatch> {
        // SAFETY: the AsyncFd owns the descriptor and closes it on drop only.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(VvWatch {
            fd,
            name: vv.file_name().map(OsString::from).unwrap_or_default(),
            buf: vec![0; 4096],
        })
    }

    /// Resolves when something happened to the .vv (or the watch itself: its
    /// directory went away, events were lost). `Err`: the watch is broken.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: reads into our own buffer, at most its length.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(e);
            }
            let n = usize::try_from(n).unwrap_or(0);
            if concerns(&self.buf[..n.min(self.buf.len())], &self.name) {
                return Ok(());
            }
        }
    }
}

/// Whether a batch of inotify events names `name`, or says the watch itself
/// changed (moved, removed, overflowed): then the .vv must be looked at.
fn concerns(mut events: &[u8], name: &OsString) -> bool {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while events.len() >= EVENT_HEADER {
        let (Some(mask), Some(len)) = (word(events, 4), word(events, 12)) else {
            return true;
        };
        let end = EVENT_HEADER.saturating_add(len as usize);
        let Some(raw) = events.get(EVENT_HEADER..end) else {
            return true;
        };
        let this = raw.split(|b| *b == 0).next().unwrap_or_default();
        let about_self = mask
            & (libc::IN_Q_OVERFLOW | libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF)
            != 0;
        if about_self || this == name.as_bytes() {
            return true;
        }
        events = &events[end..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        padded.resize(name.len().div_ceil(16) * 16, 0);
        let mut v = 1i32.to_ne_bytes().to_vec();
        v.extend(mask.to_ne_bytes());
        v.extend(0u32.to_ne_bytes());
        v.extend((padded.len() as u32).to_ne_bytes());
        v.extend(padded);
        v
    }

    #[test]
    fn only_events_about_the_file_or_the_watch_count() {
        let name = OsString::from("k.vv");
        let other = event(libc::IN_CLOSE_WRITE, "other.vv");
        assert!(!concerns(&other, &name));
        let mine = [other.clone(), event(libc::IN_MOVED_TO, "k.vv")].concat();
        assert!(concerns(&mine, &name));
        assert!(concerns(&event(libc::IN_Q_OVERFLOW, ""), &name));
        // A name prefix is not the name; truncated input is looked at.
        assert!(!concerns(&event(libc::IN_CREATE, "k.vv.tmp"), &name));
        assert!(concerns(&mine[..other.len() + 20], &name));
    }

    #[tokio::test]
    async fn a_file_renamed_in_is_noticed_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let vv = dir.path().join("k.vv");
        let mut w = VvWatch::new(open(&vv).unwrap(), &vv).unwrap();
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.changed())
                .await
                .is_err(),
            "another file is none of its business"
        );
        std::fs::write(dir.path().join("k.tmp"), "[virt-viewer]\n").unwrap();
        std::fs::rename(dir.path().join("k.tmp"), &vv).unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("noticed")
            .unwrap();
    }
}
