//! The socket server: binding the socket (its path rules), client slots
//! (at most [`MAX_CLIENTS`]), one task per connection reading requests and
//! answering them, and the stream to a subscriber.

use super::hub::Hub;
use super::protocol::{
    error_line, ok_line, parse_request, status_line, Request, PERMISSION_DENIED,
};
use crate::daemon::status::Status;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

/// Clients connected at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// A request line longer than this is refused and the connection closed.
pub const MAX_REQUEST: usize = 4096;
/// A line a client does not take within this long drops the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that sends no request for this long is closed (subscribers are
/// exempt: they only read).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the connection tasks share.
#[derive(Clone)]
pub struct ServerCtx {
    pub instance: Arc<str>,
    pub status: watch::Receiver<Arc<Status>>,
    pub hub: Hub,
    /// `reconnect` requests into the daemon loop.
    pub reconnect: mpsc::Sender<()>,
    /// What `screenshot` reads (the display mirror; off: an error answer).
    pub screen: crate::display::screen::Screen,
}

/// Checks the socket path and binds it with mode 0600. The rules
/// (docs/control.md): the directory must exist and must not be writable by
/// others unless it is sticky (someone else could swap the socket); a socket
/// file left by a dead spiced is replaced; a live one (something answers) or
/// anything that is not a socket is refused. Blocking (a stat and a connect
/// to a local socket): call it once at start-up.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let shown = crate::text::printable(&path.display().to_string());
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dm = std::fs::metadata(dir).map_err(|e| {
        format!(
            "control.socket {shown}: its directory {}: {e}",
            crate::text::printable(&dir.display().to_string())
        )
    })?;
    if !dm.is_dir() {
        return Err(format!(
            "control.socket {shown}: the parent is not a directory"
        ));
    }
    if dm.mode() & 0o022 != 0 && dm.mode() & 0o1000 == 0 {
        return Err(format!(
            "control.socket {shown}: its directory is writable by other users and not sticky (mode {:o}); use a directory only spiced's user can write, such as /run/spiced",
            dm.mode() & 0o7777
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "control.socket {shown}: another process is listening on it (another spiced for the same instance?)"
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                format!("control.socket {shown}: cannot remove the stale socket: {e}")
            })?;
        }
        Ok(_) => {
            return Err(format!(
                "control.socket {shown}: exists and is not a socket; refusing to replace it"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("control.socket {shown}: {e}")),
    }
    // Created 0600 from the start (the umask is process-wide, but only makes
    // what other threads create meanwhile stricter), then made sure of.
    // SAFETY: umask(2) cannot fail and touches no memory.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("control.socket {shown}: cannot bind: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control.socket {shown}: cannot set mode 0600: {e}"))?;
    Ok(listener)
}

/// Accepts clients until the listener's task is aborted (the shell keeps its
/// handle). At most [`MAX_CLIENTS`] at once.
pub async fn serve(listener: UnixListener, ctx: ServerCtx) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("control socket: accept failed: {e}");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    connection(stream, ctx).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut s = stream;
                    let line = error_line(&format!("too many clients (at most {MAX_CLIENTS})"));
                    let _ = send(&mut s, &line).await;
                });
            }
        }
    }
}

/// Whether a peer may use the socket: root, or spiced's own user. The 0600
/// mode already keeps others out; this holds if the mode is changed by hand.
fn peer_allowed(s: &UnixStream) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    s.peer_cred()
        .map(|c| c.uid() == 0 || c.uid() == me)
        .unwrap_or(false)
}

async fn send(s: &mut (impl AsyncWriteExt + Unpin), line: &str) -> Result<(), ()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let w = async {
        s.write_all(&bytes).await?;
        s.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, w).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes. None: the client
/// went away or was idle too long; Err: too long.
async fn read_request(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Option<Result<String, ()>> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let chunk = r.fill_buf().await.ok()?;
            if chunk.is_empty() {
                return None;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            buf.extend_from_slice(&chunk[..take]);
            r.consume(take);
            if buf.len() > MAX_REQUEST + 1 {
                return Some(Err(()));
            }
            if done {
                return Some(Ok(()));
            }
        }
    };
    match tokio::time::timeout(IDLE_TIMEOUT, read).await {
        Ok(Some(Ok(()))) => Some(Ok(String::from_utf8_lossy(&buf).trim().to_string())),
        Ok(Some(Err(()))) => Some(Err(())),
        _ => None,
    }
}

async fn connection(stream: UnixStream, ctx: ServerCtx) {
    if !peer_allowed(&stream) {
        let mut s = stream;
        let _ = send(&mut s, &error_line(PERMISSION_DENIED)).await;
        return;
    }
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match read_request(&mut r).await {
            None => return,
            Some(Err(())) => {
                let e = format!("request longer than {MAX_REQUEST} bytes");
                let _ = send(&mut w, &error_line(&e)).await;
                return;
            }
            Some(Ok(l)) => l,
        };
        if line.is_empty() {
            continue;
        }
        let reply = match parse_request(&line) {
            Request::Status => current_status(&ctx),
            Request::Reconnect => {
                // Full: reconnects are already queued; this one folds into them.
                let _ = ctx.reconnect.try_send(());
                ok_line("reconnect")
            }
            Request::Subscribe => {
                // Subscribe first, so nothing between the snapshot and the
                // stream is missed.
                let rx = ctx.hub.subscribe();
                if send(&mut w, &current_status(&ctx)).await.is_err() {
                    return;
                }
                stream_to(rx, r, w).await;
                return;
            }
            Request::Screenshot => crate::display::control::screenshot_line(&ctx.screen).await,
            Request::Bad(e) => error_line(&e),
        };
        if send(&mut w, &reply).await.is_err() {
            return;
        }
    }
}

fn current_status(ctx: &ServerCtx) -> String {
    let mut st = (*ctx.status.borrow().clone()).clone();
    // Live: when the screen last changed is read now, not at the last change.
    st.display = ctx.screen.view();
    status_line(&ctx.instance, &st, crate::time::unix_now())
}

/// Streams hub lines to one subscriber until it falls behind or goes away.
/// Its read half is watched meanwhile: a subscriber that closed gives its
/// client slot back at once, not at the next line that fails to reach it
/// (with nothing published, that could be never).
async fn stream_to(
    mut rx: broadcast::Receiver<Arc<str>>,
    mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    loop {
        // Both are cancel-safe: a line not yet received stays in the ring,
        // and bytes read from a subscriber are ignored anyway.
        let got = tokio::select! {
            got = rx.recv() => got,
            () = closed(&mut r) => return,
        };
        match got {
            Ok(line) => {
                if send(&mut w, &line).await.is_err() {
                    tracing::warn!(
                        "control socket: a subscriber stopped reading for {} s or went away; dropped it",
                        WRITE_TIMEOUT.as_secs()
                    );
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("control socket: a subscriber fell {n} events behind; dropped it");
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Returns when the peer has closed its end (EOF) or the socket failed.
/// Whatever a subscriber sends after `subscribe` is read and ignored.
async fn closed(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) {
    loop {
        match r.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(bytes) => {
                let n = bytes.len();
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests;
