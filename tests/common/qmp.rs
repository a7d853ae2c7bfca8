//! A small synchronous QMP client over QEMU's unix socket: greeting, capability
//! negotiation, commands matched to replies by `id`, and asynchronous events
//! buffered until a test asks for them.
//!
//! QEMU's QMP socket serves one client at a time, so `Qemu` keeps exactly one
//! connection open for its whole life (opened at start, so no event is missed) and
//! hands it out behind a mutex. Calls block the calling thread; from an async test
//! use `tokio::task::spawn_blocking` (or a multi-thread runtime) for long waits.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest QMP line accepted (a query-spice with every channel is ~3 KB).
const MAX_LINE: usize = 4 << 20;
/// How long a command may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed QMP exchange.
#[derive(Debug)]
pub enum QmpError {
    /// Socket error, timeout or QEMU closed the connection.
    Io(std::io::Error),
    /// A line that is not the JSON QMP promises.
    Protocol(String),
    /// QEMU answered with `{"error": {"class": .., "desc": ..}}`.
    Command { class: String, desc: String },
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "QMP i/o: {e}"),
            QmpError::Protocol(m) => write!(f, "QMP protocol: {m}"),
            QmpError::Command { class, desc } => write!(f, "QMP error {class}: {desc}"),
        }
    }
}

impl std::error::Error for QmpError {}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> Self {
        QmpError::Io(e)
    }
}

/// One connected SPICE channel as `query-spice` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiceChannel {
    /// SPICE channel type (1 main, 2 display, 3 inputs, 4 cursor, 5 playback,
    /// 6 record, 8 smartcard, 9 usbredir, 10 port, 11 webdav).
    pub channel_type: u8,
    pub channel_id: u8,
    /// Whether the channel runs over TLS.
    pub tls: bool,
    /// The client's address and port as the server sees them.
    pub host: String,
    pub port: String,
    /// The session id every channel of one client session shares.
    pub connection_id: i64,
}

/// A QMP connection in command mode.
pub struct Qmp {
    sock: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    events: VecDeque<Value>,
    next_id: u64,
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp").field("path", &self.path).finish()
    }
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode, all within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let sock = UnixStream::connect(path)?;
        let mut qmp = Qmp {
            sock,
            path: path.to_path_buf(),
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
        };
        let greeting = qmp
            .read_line(deadline)?
            .ok_or_else(|| QmpError::Protocol("no greeting in time".into()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The socket path this connection uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `cmd` with optional `args` and returns its `return` value. Events that
    /// arrive meanwhile are kept for `wait_event`/`take_events`.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(args) = args {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.sock.write_all(line.as_bytes())?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let reply = self.read_line(deadline)?.ok_or_else(|| {
                QmpError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply to {cmd} within {REPLY_TIMEOUT:?}"),
                ))
            })?;
            if reply.get("event").is_some() {
                self.events.push_back(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // a late reply to an earlier, timed-out command
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                return Err(QmpError::Command {
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected reply: {reply}")));
        }
    }

    /// The raw `query-spice` return value (`enabled`, `port`, `tls-port`, `auth`,
    /// `channels`, ...). Panics if QMP fails: this is a test helper.
    pub fn query_spice_raw(&mut self) -> Value {
        self.execute("query-spice", None)
            .unwrap_or_else(|e| panic!("query-spice: {e}"))
    }

    /// Every SPICE channel currently connected, sorted by (type, id).
    pub fn query_spice(&mut self) -> Vec<SpiceChannel> {
        self.try_query_spice()
            .unwrap_or_else(|| panic!("query-spice failed"))
    }

    /// `query_spice` that says None instead of panicking when QMP fails (a
    /// frozen or dying QEMU).
    pub fn try_query_spice(&mut self) -> Option<Vec<SpiceChannel>> {
        let ret = self.execute("query-spice", None).ok()?;
        let mut out: Vec<SpiceChannel> = ret
            .get("channels")
            .and_then(Value::as_array)
            .map(|chans| chans.iter().filter_map(parse_channel).collect())
            .unwrap_or_default();
        out.sort_by_key(|c| (c.channel_type, c.channel_id));
        Some(out)
    }

    /// How many SPICE channels are connected right now.
    pub fn connected_channel_count(&mut self) -> usize {
        self.query_spice().len()
    }

    /// `set_password` for SPICE. Note: an earlier expiry stays in force; follow it
    /// with `expire_password("never")` to make the new ticket usable.
    pub fn set_password(&mut self, password: &str) -> Result<(), QmpError> {
        let args = json!({ "protocol": "spice", "password": password });
        self.execute("set_password", Some(args)).map(|_| ())
    }

    /// `expire_password` for SPICE: `time` is `"now"`, `"never"`, `"+N"` (N seconds
    /// from now) or an absolute unix time.
    pub fn expire_password(&mut self, time: &str) -> Result<(), QmpError> {
        let args = json!({ "protocol": "spice", "time": time });
        self.execute("expire_password", Some(args)).map(|_| ())
    }

    /// A human-monitor command (e.g. `info spice`), its text output.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        let ret = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        Ok(ret.as_str().unwrap_or_default().to_owned())
    }

    /// Waits up to `timeout` for the event `name` (e.g. `SPICE_DISCONNECTED`,
    /// `SPICE_INITIALIZED`) and removes it from the buffer; buffered events count,
    /// oldest first. Other events stay buffered.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let is_it = |e: &Value| e.get("event").and_then(Value::as_str) == Some(name);
            if let Some(pos) = self.events.iter().position(is_it) {
                return self.events.remove(pos);
            }
            match self.read_line(deadline) {
                Ok(Some(v)) if v.get("event").is_some() => self.events.push_back(v),
                Ok(Some(_)) => {} // a late reply to a timed-out command
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Everything buffered so far, plus what is readable right now.
    pub fn take_events(&mut self) -> Vec<Value> {
        while let Ok(Some(v)) = self.read_line(Instant::now() + Duration::from_millis(1)) {
            if v.get("event").is_some() {
                self.events.push_back(v);
            }
        }
        self.events.drain(..).collect()
    }

    /// Reads one JSON line; `Ok(None)` when `deadline` passes first.
    fn read_line(&mut self, deadline: Instant) -> Result<Option<Value>, QmpError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| QmpError::Protocol(format!("bad JSON line: {e}")));
            }
            if self.buf.len() > MAX_LINE {
                return Err(QmpError::Protocol("line too long".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16384];
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn parse_channel(c: &Value) -> Option<SpiceChannel> {
    Some(SpiceChannel {
        channel_type: u8::try_from(c.get("channel-type")?.as_u64()?).ok()?,
        channel_id: u8::try_from(c.get("channel-id")?.as_u64()?).ok()?,
        tls: c.get("tls")?.as_bool()?,
        host: c
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        port: c
            .get("port")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        connection_id: c.get("connection-id").and_then(Value::as_i64).unwrap_or(0),
    })
}
