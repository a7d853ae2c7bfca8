//! The local status and control socket (protocol v1, docs/control.md): a unix
//! socket, mode 0600, speaking newline-delimited JSON. `status` answers with
//! the daemon's [`Status`]; `subscribe` streams the journal's key events (every
//! log event carrying a `message_id`, forwarded by [`EventLayer`]) and a status
//! line on every change; `reconnect` is SIGUSR1.
//!
//! Nothing here can hold the daemon up: events fan out through a bounded
//! `broadcast` ring (publishing never waits; a subscriber that falls behind
//! the ring, or whose socket stops taking bytes for [`WRITE_TIMEOUT`], is
//! dropped), requests are bounded in size, clients in number, and `reconnect`
//! reaches the loop through a bounded queue with `try_send`.
//!
//! `spiced status` is the client ([`client_main`]).

use crate::daemon::status::Status;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The protocol version every message carries.
pub const VERSION: u32 = 1;
/// Clients connected at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// A request line longer than this is refused and the connection closed.
pub const MAX_REQUEST: usize = 4096;
/// Lines a subscriber may be behind before it is dropped.
pub const SUBSCRIBER_BACKLOG: usize = 256;
/// A line a client does not take within this long drops the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that sends no request for this long is closed (subscribers are
/// exempt: they only read).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where `spiced status INSTANCE` looks: `/run/spiced/INSTANCE.sock`.
pub const RUN_DIR: &str = "/run/spiced";

/// The fan-out of subscribe lines. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(SUBSCRIBER_BACKLOG)
    }
}

impl Hub {
    pub fn new(backlog: usize) -> Hub {
        Hub {
            tx: broadcast::channel(backlog.max(1)).0,
        }
    }

    /// Hands `line` (one JSON object, no newline) to every subscriber. Never
    /// waits: the ring overwrites what a slow subscriber has not read.
    pub fn publish(&self, line: String) {
        // Err: nobody subscribed.
        let _ = self.tx.send(Arc::from(line));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// A status message: `{"version":1,"type":"status","instance":..,"now":..,<Status>}`.
#[derive(Serialize)]
struct StatusMsg<'a> {
    version: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    instance: &'a str,
    now: f64,
    #[serde(flatten)]
    status: &'a Status,
}

/// The status line sent for `status` and pushed to subscribers on a change.
pub fn status_line(instance: &str, status: &Status, now: f64) -> String {
    let msg = StatusMsg {
        version: VERSION,
        kind: "status",
        instance,
        now,
        status,
    };
    serde_json::to_string(&msg).unwrap_or_else(|e| error_line(&format!("status: {e}")))
}

fn error_line(msg: &str) -> String {
    serde_json::json!({"version": VERSION, "type": "error", "error": msg}).to_string()
}

fn ok_line(cmd: &str) -> String {
    serde_json::json!({"version": VERSION, "type": "ok", "cmd": cmd}).to_string()
}

// ---------------------------------------------------------------- events

/// A `tracing` layer that forwards every event carrying a `message_id` field
/// (exactly the journal's key events, see `events`) to the [`Hub`] as
/// `{"version":1,"type":"event",...}`. It formats the event and hands it to
/// the broadcast ring; it never waits, and never logs (that would recurse).
pub struct EventLayer {
    hub: Hub,
}

impl EventLayer {
    pub fn new(hub: Hub) -> EventLayer {
        EventLayer { hub }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    message_id: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f, serde_json::Value::from(format!("{v:?}")));
    }
}

impl Fields {
    fn put(&mut self, f: &Field, v: serde_json::Value) {
        match f.name() {
            "message" => {
                self.message = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            "message_id" => {
                self.message_id = Some(match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            name => {
                self.fields.insert(name.to_string(), v);
            }
        }
    }
}

/// The event line for an event with `message_id` (None without one).
fn event_line(event: &Event<'_>, now: f64) -> Option<String> {
    let mut v = Fields::default();
    event.record(&mut v);
    let id = v.message_id?;
    let name = crate::events::ALL
        .iter()
        .find(|(_, i)| *i == id)
        .map(|(n, _)| *n);
    let line = serde_json::json!({
        "version": VERSION,
        "type": "event",
        "time": now,
        "level": event.metadata().level().as_str(),
        "message_id": id,
        "name": name,
        "message": v.message,
        "fields": v.fields,
    });
    Some(line.to_string())
}

impl<S: Subscriber> Layer<S> for EventLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if self.hub.subscribers() == 0 {
            return;
        }
        if let Some(line) = event_line(event, crate::time::unix_now()) {
            self.hub.publish(line);
        }
    }
}

// ---------------------------------------------------------------- server

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
    let shown = crate::logging::escape_controls(&path.display().to_string());
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dm = std::fs::metadata(dir).map_err(|e| {
        format!(
            "control.socket {shown}: its directory {}: {e}",
            crate::logging::escape_controls(&dir.display().to_string())
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
                    client(stream, ctx).await;
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

/// What a request line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Status,
    Subscribe,
    Reconnect,
    Screenshot,
    Bad(String),
}

fn parse_request(line: &str) -> Request {
    #[derive(serde::Deserialize)]
    struct Req {
        cmd: String,
    }
    match serde_json::from_str::<Req>(line) {
        Ok(r) => match r.cmd.as_str() {
            "status" => Request::Status,
            "subscribe" => Request::Subscribe,
            "reconnect" => Request::Reconnect,
            "screenshot" => Request::Screenshot,
            other => Request::Bad(format!(
                "unknown cmd {:?} (status, subscribe, reconnect, screenshot)",
                crate::logging::escape_controls(other)
            )),
        },
        Err(_) => Request::Bad("not a JSON request like {\"cmd\":\"status\"}".into()),
    }
}

async fn client(stream: UnixStream, ctx: ServerCtx) {
    if !peer_allowed(&stream) {
        let mut s = stream;
        let _ = send(&mut s, &error_line("permission denied")).await;
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
                stream_to(rx, w).await;
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
async fn stream_to(mut rx: broadcast::Receiver<Arc<str>>, mut w: tokio::net::unix::OwnedWriteHalf) {
    loop {
        match rx.recv().await {
            Ok(line) => {
                if send(&mut w, &line).await.is_err() {
                    tracing::warn!(
                        "control socket: a subscriber stopped reading for {} s; dropped it",
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

// ---------------------------------------------------------------- client

/// Where `spiced status` connects: `--socket PATH`, else
/// `/run/spiced/INSTANCE.sock` for INSTANCE (or `SPICED_INSTANCE`, or "default").
pub fn socket_for(socket: Option<&Path>, instance: Option<&str>) -> Result<PathBuf, String> {
    if let Some(p) = socket {
        return Ok(p.to_path_buf());
    }
    let env = std::env::var(crate::metrics::INSTANCE_ENV).ok();
    let name = match instance {
        Some(i) => i.to_string(),
        None => crate::metrics::instance_name(env.as_deref()),
    };
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "{:?} is not an instance name",
            crate::logging::escape_controls(&name)
        ));
    }
    Ok(Path::new(RUN_DIR).join(format!("{name}.sock")))
}

/// `spiced status [--json] [--socket PATH | INSTANCE]`. Exit: 0 ok; 69 no
/// daemon (no socket, nobody listening); 77 not allowed to connect; 1 a
/// protocol error (docs/control.md).
pub fn client_main(json: bool, socket: Option<&Path>, instance: Option<&str>) -> u8 {
    let path = match socket_for(socket, instance) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("spiced status: {e}");
            return crate::exit::CONFIG;
        }
    };
    let shown = crate::logging::escape_controls(&path.display().to_string());
    let line = match request(&path, "status") {
        Ok(l) => l,
        Err(RequestError::Connect(e)) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                crate::exit::TICKET // 77, EX_NOPERM
            } else {
                crate::exit::RETRIES_EXHAUSTED // 69, EX_UNAVAILABLE
            };
            eprintln!("spiced status: cannot connect to {shown}: {e} (is spiced running?)");
            return code;
        }
        Err(RequestError::Protocol(e)) => {
            eprintln!(
                "spiced status: {shown}: {}",
                crate::logging::escape_controls(&e)
            );
            return crate::exit::FAILURE;
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("spiced status: {shown}: the answer is not JSON: {e}");
            return crate::exit::FAILURE;
        }
    };
    if v["version"] != VERSION {
        eprintln!(
            "spiced status: {shown}: protocol version {} (this spiced speaks {VERSION})",
            crate::logging::escape_controls(&v["version"].to_string())
        );
        return crate::exit::FAILURE;
    }
    if v["type"] != "status" {
        let e = v["error"].as_str().unwrap_or("unexpected answer");
        eprintln!(
            "spiced status: {shown}: {}",
            crate::logging::escape_controls(e)
        );
        return crate::exit::FAILURE;
    }
    if json {
        // serde_json escapes every control character.
        println!("{v}");
    } else {
        print!("{}", human(&v));
    }
    crate::exit::OK
}

enum RequestError {
    Connect(std::io::Error),
    Protocol(String),
}

/// One request, one answer line (bounded: 1 MiB, 10 s).
fn request(path: &Path, cmd: &str) -> Result<String, RequestError> {
    use std::io::{BufRead, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(RequestError::Connect)?;
    let t = Some(Duration::from_secs(10));
    let p = |e: std::io::Error| RequestError::Protocol(e.to_string());
    s.set_read_timeout(t).map_err(p)?;
    s.set_write_timeout(t).map_err(p)?;
    s.write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())
        .map_err(p)?;
    let mut line = String::new();
    std::io::BufReader::new(s.take(1 << 20))
        .read_line(&mut line)
        .map_err(p)?;
    if !line.ends_with('\n') {
        return Err(RequestError::Protocol(
            "the answer ended early (or is over 1 MiB)".into(),
        ));
    }
    Ok(line)
}

/// One screen for an operator. Every string from the daemon is escaped.
pub fn human(v: &serde_json::Value) -> String {
    use crate::logging::escape_controls as esc;
    use std::fmt::Write as _;
    let s = |k: &str| esc(v[k].as_str().unwrap_or("?"));
    let now = v["now"].as_f64().unwrap_or(0.0);
    let when = |t: &serde_json::Value| -> Option<String> {
        let t = t.as_f64()?;
        let at = crate::reconnect::format_unix_utc(t as i64);
        let d = now - t;
        Some(if d >= 0.0 {
            format!(
                "{at} ({} ago)",
                crate::time::fmt_dur(Duration::from_secs(d as u64))
            )
        } else {
            format!(
                "{at} (in {})",
                crate::time::fmt_dur(Duration::from_secs((-d) as u64))
            )
        })
    };
    let mut o = String::new();
    let _ = writeln!(o, "spiced {}: {}", s("instance"), s("describe"));
    let _ = writeln!(o, "  server:       {}", s("host"));
    if let Some(w) = when(&v["since"]) {
        let _ = writeln!(o, "  state since:  {w}");
    }
    if v["state"] == "connected" {
        let _ = writeln!(
            o,
            "  channels:     {} of {} up",
            v["channels_up"], v["channels_total"]
        );
        if let Some(down) = v["channels_down"].as_object() {
            for (ch, why) in down {
                let _ = writeln!(
                    o,
                    "    down: {} ({})",
                    esc(ch),
                    esc(why.as_str().unwrap_or("?"))
                );
            }
        }
    }
    if let Some(a) = v["attempt"].as_u64() {
        let budget = v["attempt_budget"]
            .as_u64()
            .map_or("unlimited".to_string(), |b| b.to_string());
        let _ = writeln!(o, "  attempt:      {a} of {budget}");
        if let Some(w) = when(&v["next_attempt_at"]) {
            let _ = writeln!(o, "  next attempt: {w}");
        }
    }
    if let Some(a) = v["agent_connected"].as_bool() {
        let _ = writeln!(
            o,
            "  guest agent:  {}",
            if a { "connected" } else { "not connected" }
        );
    }
    crate::display::control::human_display(&mut o, &v["display"], now);
    let _ = writeln!(o, "  reconnects:   {}", v["reconnects"]);
    if let Some(d) = v["last_disconnect"].as_object() {
        let f = |k: &str| esc(d.get(k).and_then(|x| x.as_str()).unwrap_or("?"));
        let at = when(&d.get("at").cloned().unwrap_or_default()).unwrap_or_default();
        let _ = writeln!(
            o,
            "  last disconnect: {at}: {} on {}: {}",
            f("cause"),
            f("channel"),
            f("message")
        );
        if let Some(r) = d.get("report").and_then(|r| r.as_str()) {
            let _ = writeln!(o, "    report: {}", esc(r));
        }
    }
    if let Some(t) = v["ticket_valid_until"].as_i64() {
        let w = when(&serde_json::Value::from(t as f64)).unwrap_or_default();
        let _ = writeln!(o, "  ticket valid until: {w}");
    }
    let c = &v["counts"];
    let sum = |k: &str| -> u64 {
        c[k].as_object()
            .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
            .unwrap_or(0)
    };
    let _ = writeln!(
        o,
        "  counts:       {} disconnects, {} channel losses, {} failed connects, {} reconnect attempts; reports {} written, {} skipped, {} failed",
        sum("disconnects"),
        sum("channel_losses"),
        sum("connect_failures"),
        c["reconnect_attempts"],
        c["reports_written"],
        c["reports_skipped"],
        c["reports_failed"]
    );
    o
}

#[cfg(test)]
mod tests;
