//! Logging through journald's native protocol: one datagram per line on
//! `/run/systemd/journal/socket`, so every entry has its real `PRIORITY` and the
//! structured fields an operator filters on (`SPICED_CHANNEL=display`,
//! `MESSAGE_ID=...`). What goes in an entry:
//!
//! - `MESSAGE`: the text, then every other field as `key=value`, exactly as the
//!   stderr format prints them (so `journalctl -u spiced` reads as before);
//! - `PRIORITY` (ERROR 3, WARN 4, INFO 6, DEBUG/TRACE 7), `SYSLOG_IDENTIFIER=spiced`,
//!   `CODE_FILE`, `CODE_LINE`;
//! - `MESSAGE_ID` from the `message_id` field (see [`crate::events`]);
//! - `SPICED_<NAME>` for the fields in [`crate::events::FIELDS`];
//! - `SPICED_INSTANCE` from the environment variable of that name (set by
//!   `spiced@.service`), when non-empty.
//!
//! Span fields are not looked at (spiced logs no spans). An entry too big for
//! a datagram (EMSGSIZE) goes, as journald's protocol documents, in a sealed
//! memfd passed with SCM_RIGHTS in an empty datagram: it keeps its fields. A
//! line the socket does not take (journald absent, journald not reading) goes
//! to the fallback writer as `<N>text`, the prefix journald's stream reader
//! turns into the priority. The daemon's fallback is [`crate::stderr::Stderr`],
//! a queue that never blocks the caller (stderr may be a pipe nobody reads).
//! A send waits for room in journald's queue (bursts overrun the kernel's
//! 10-datagram default) but at most [`SEND_TIMEOUT`]; after a timeout sends
//! stop waiting until one gets through again, so a stalled journald costs the
//! event loop one wait, not one per line.

use socket2::{Domain, SockAddr, Socket, Type};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// journald's native-protocol socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// The environment variable naming the unit instance (`spiced@NAME`).
pub const INSTANCE_ENV: &str = "SPICED_INSTANCE";
/// The longest a line waits for room in journald's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// The syslog priority of a tracing level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Appends one field in the native protocol: `NAME=value\n`, or, when the value
/// holds a newline, `NAME\n` + its length (u64 little-endian) + value + `\n`.
/// `name` must be a valid journal field name (upper case, digits, `_`).
pub fn put_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// `SPICED_<NAME>` for a field of [`crate::events::FIELDS`], else None.
fn journal_name(field: &str) -> Option<&'static str> {
    const NAMES: [&str; 8] = [
        "SPICED_CHANNEL",
        "SPICED_SESSION",
        "SPICED_CAUSE",
        "SPICED_STATE",
        "SPICED_ATTEMPT",
        "SPICED_REPORT",
        "SPICED_DIGEST",
        "SPICED_UNCHANGED_SECS",
    ];
    crate::events::FIELDS
        .iter()
        .position(|f| *f == field)
        .and_then(|i| NAMES.get(i).copied())
}

/// The layer. `W` is where lines the socket refused go (stderr in the daemon).
pub struct JournalLayer<W> {
    /// The socket and journald's address; None: every line falls back.
    socket: Option<(Socket, SockAddr)>,
    /// The last send timed out: do not wait until one gets through.
    stalled: AtomicBool,
    instance: Option<String>,
    fallback: W,
}

impl JournalLayer<crate::stderr::Stderr> {
    /// journald's socket, stderr (through its queue) as the fallback, the
    /// instance from the environment.
    pub fn stderr() -> Self {
        let instance = std::env::var(INSTANCE_ENV).ok();
        JournalLayer::new(Path::new(SOCKET), crate::stderr::Stderr, instance)
    }
}

impl<W> JournalLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    pub fn new(path: &Path, fallback: W, instance: Option<String>) -> Self {
        let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)
            .and_then(|s| s.set_write_timeout(Some(SEND_TIMEOUT)).map(|()| s))
            .and_then(|s| Ok((s, SockAddr::unix(path)?)))
            .ok();
        JournalLayer {
            socket,
            stalled: AtomicBool::new(false),
            instance: instance.filter(|i| !i.is_empty()),
            fallback,
        }
    }

    /// Sends one entry; false if journald did not take it.
    fn send(&self, datagram: &[u8]) -> bool {
        let Some((sock, addr)) = &self.socket else {
            return false;
        };
        let stalled = self.stalled.load(Ordering::Relaxed);
        let flags = libc::MSG_NOSIGNAL | if stalled { libc::MSG_DONTWAIT } else { 0 };
        let sent = match sock.send_to_with_flags(datagram, addr, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                sealed_memfd(datagram).and_then(|fd| send_fd(sock, addr, &fd, flags))
            }
            other => other.map(|_| ()),
        };
        match sent {
            Ok(()) => {
                if stalled {
                    self.stalled.store(false, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                // SO_SNDTIMEO expiring reads as EAGAIN.
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    self.stalled.store(true, Ordering::Relaxed);
                }
                false
            }
        }
    }

    /// The datagram for one event, and the line for the fallback.
    fn encode(&self, event: &Event<'_>) -> (Vec<u8>, String) {
        let meta = event.metadata();
        let mut v = Fields::default();
        event.record(&mut v);
        let mut message = v.message;
        if !v.rest.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&v.rest);
        }
        let code = meta.file().zip(meta.line());
        self.entry(
            priority(meta.level()),
            &message,
            v.message_id.as_deref(),
            &v.journal,
            code,
        )
    }

    /// One entry: the native-protocol datagram, and the line for the fallback.
    fn entry(
        &self,
        pri: u8,
        message: &str,
        message_id: Option<&str>,
        fields: &[(&'static str, String)],
        code: Option<(&str, u32)>,
    ) -> (Vec<u8>, String) {
        let mut buf = Vec::with_capacity(message.len() + 256);
        put_field(&mut buf, "MESSAGE", message.as_bytes());
        put_field(&mut buf, "PRIORITY", pri.to_string().as_bytes());
        put_field(&mut buf, "SYSLOG_IDENTIFIER", b"spiced");
        if let Some(id) = message_id {
            put_field(&mut buf, "MESSAGE_ID", id.as_bytes());
        }
        for (name, value) in fields {
            put_field(&mut buf, name, value.as_bytes());
        }
        if let Some(i) = &self.instance {
            put_field(&mut buf, "SPICED_INSTANCE", i.as_bytes());
        }
        if let Some((file, line)) = code {
            put_field(&mut buf, "CODE_FILE", file.as_bytes());
            put_field(&mut buf, "CODE_LINE", line.to_string().as_bytes());
        }
        // One event, one stream line: a newline would start an entry without a
        // priority.
        let line = format!("<{pri}>{}\n", crate::text::printable(message));
        (buf, line)
    }

    /// Sends an entry, or writes its line to the fallback.
    fn deliver(&self, datagram: &[u8], line: &str) {
        if !self.send(datagram) {
            // One write per line, so concurrent lines do not interleave.
            let _ = self.fallback.make_writer().write_all(line.as_bytes());
        }
    }

    /// Logs `message` at syslog `priority` (2 crit, 3 err, ...) outside
    /// `tracing`: before it is set up (the config that says how to log did
    /// not load), or from the panic hook.
    pub fn emit(&self, priority: u8, message: &str) {
        let (datagram, line) = self.entry(priority, message, None, &[], None);
        self.deliver(&datagram, &line);
    }
}

/// `data` in a memfd sealed against any change, as journald wants an entry
/// too big for a datagram (it then maps it without copying).
fn sealed_memfd(data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal; a descriptor returned is
    // fresh and owned by the File from here on.
    let mut f = unsafe {
        let fd = libc::memfd_create(
            c"spiced-journal".as_ptr(),
            libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::File::from_raw_fd(fd)
    };
    f.write_all(data)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the descriptor `f` owns.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::F_ADD_SEALS,
            seals,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Sends `fd` to `addr` with SCM_RIGHTS in an empty datagram.
fn send_fd(
    sock: &Socket,
    addr: &SockAddr,
    fd: &std::fs::File,
    flags: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Aligned for a cmsghdr; 64 bytes hold one descriptor's message.
    #[repr(C)]
    union Control {
        _align: libc::cmsghdr,
        buf: [u8; 64],
    }
    // SAFETY: every pointer in the msghdr points into locals alive for the
    // call; the control message is written through the CMSG macros within
    // the CMSG_SPACE(sizeof(int)) bytes the msghdr gives (<= 64).
    unsafe {
        let mut control: Control = std::mem::zeroed();
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_control = control.buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        if libc::sendmsg(sock.as_raw_fd(), &msg, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl<S, W> Layer<S> for JournalLayer<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let (datagram, line) = self.encode(event);
        self.deliver(&datagram, &line);
    }
}

/// What an event carries, sorted for the journal.
#[derive(Default)]
struct Fields {
    message: String,
    /// Every other field but `message_id`, as `key=value` (the stderr format).
    rest: String,
    message_id: Option<String>,
    journal: Vec<(&'static str, String)>,
}

impl Fields {
    fn add(&mut self, field: &Field, raw: String, shown: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = raw,
            "message_id" => self.message_id = Some(raw),
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                self.rest.push_str(&format!("{name}={shown:?}"));
                if let Some(j) = journal_name(name) {
                    self.journal.push((j, raw));
                }
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_string(), &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here too: their Debug is the Display text.
        let raw = format!("{value:?}");
        self.add(field, raw.clone(), &format_args!("{raw}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Parses a native-protocol datagram (both field forms).
    fn parse(mut d: &[u8]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        while !d.is_empty() {
            let nl = d.iter().position(|b| *b == b'\n').unwrap();
            let head = &d[..nl];
            if let Some(eq) = head.iter().position(|b| *b == b'=') {
                let k = String::from_utf8(head[..eq].to_vec()).unwrap();
                out.insert(k, String::from_utf8(head[eq + 1..].to_vec()).unwrap());
                d = &d[nl + 1..];
            } else {
                let k = String::from_utf8(head.to_vec()).unwrap();
                let rest = &d[nl + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let v = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
                assert_eq!(rest[8 + len], b'\n');
                out.insert(k, v);
                d = &rest[8 + len + 1..];
            }
        }
        out
    }

    #[test]
    fn fields_use_the_length_form_only_for_newlines() {
        let mut b = Vec::new();
        put_field(&mut b, "MESSAGE", b"a = b");
        assert_eq!(b, b"MESSAGE=a = b\n");
        let mut b = Vec::new();
        put_field(&mut b, "MESSAGE", b"two\nlines");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(b, want);
        // An injected "\nPRIORITY=0" stays inside the value.
        let mut b = Vec::new();
        put_field(&mut b, "SPICED_CAUSE", b"x\nPRIORITY=0");
        put_field(&mut b, "PRIORITY", b"6");
        let f = parse(&b);
        assert_eq!(f["SPICED_CAUSE"], "x\nPRIORITY=0");
        assert_eq!(f["PRIORITY"], "6");
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn every_event_field_has_a_journal_name() {
        for f in crate::events::FIELDS {
            assert_eq!(
                journal_name(f),
                Some(format!("SPICED_{}", f.to_ascii_uppercase()).as_str())
            );
        }
        assert_eq!(journal_name("error"), None);
    }

    /// journalctl's catalog explains every event id, once, with the headers
    /// `journalctl --update-catalog` expects.
    #[test]
    fn the_catalog_has_one_entry_per_event_id() {
        let catalog = include_str!("../systemd/spiced.catalog");
        let headers: Vec<&str> = catalog
            .lines()
            .filter_map(|l| l.strip_prefix("-- "))
            .collect();
        assert_eq!(headers.len(), crate::events::ALL.len(), "{headers:?}");
        for (name, id) in crate::events::ALL {
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{name}: {id}"
            );
            assert_eq!(headers.iter().filter(|h| **h == id).count(), 1, "{name}");
            let entry = catalog
                .split(&format!("-- {id}\n"))
                .nth(1)
                .and_then(|e| e.split("\n-- ").next())
                .unwrap_or_default();
            for field in ["Subject: ", "Defined-By: spiced\n", "Documentation: "] {
                assert!(entry.contains(field), "{name} lacks {field:?}");
            }
            assert!(entry.contains("\n\n"), "{name} has no explanation");
        }
    }

    fn capture(path: &Path, instance: Option<&str>, f: impl FnOnce()) -> Buf {
        let buf = Buf::default();
        let b = buf.clone();
        let layer = JournalLayer::new(path, move || b.clone(), instance.map(str::to_string));
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, f);
        buf
    }

    #[test]
    fn events_become_structured_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let fallback = capture(&path, Some("kiosk1"), || {
            tracing::warn!(
                channel = %"display",
                cause = "reset",
                session = 3u64,
                report = "/spool/r.zip",
                error = "disk\nfull",
                message_id = crate::events::SESSION_LOST,
                "session lost after {} s",
                1.5
            );
            tracing::debug!("quiet");
        });
        assert_eq!(fallback.text(), "", "nothing may fall back");
        let mut buf = vec![0u8; 65536];
        let n = rx.recv(&mut buf).unwrap();
        let f = parse(&buf[..n]);
        assert_eq!(f["PRIORITY"], "4");
        assert_eq!(f["SYSLOG_IDENTIFIER"], "spiced");
        assert_eq!(f["MESSAGE_ID"], crate::events::SESSION_LOST);
        assert_eq!(f["SPICED_CHANNEL"], "display");
        assert_eq!(f["SPICED_CAUSE"], "reset");
        assert_eq!(f["SPICED_SESSION"], "3");
        assert_eq!(f["SPICED_REPORT"], "/spool/r.zip");
        assert_eq!(f["SPICED_INSTANCE"], "kiosk1");
        assert!(f["CODE_FILE"].ends_with("journal.rs"), "{f:?}");
        assert!(!f.contains_key("SPICED_ERROR"));
        assert_eq!(
            f["MESSAGE"],
            "session lost after 1.5 s channel=display cause=\"reset\" session=3 \
             report=\"/spool/r.zip\" error=\"disk\\nfull\""
        );
        let n = rx.recv(&mut buf).unwrap();
        let f = parse(&buf[..n]);
        assert_eq!(f["PRIORITY"], "7");
        assert_eq!(f["MESSAGE"], "quiet");
        assert!(!f.contains_key("MESSAGE_ID") && !f.contains_key("SPICED_CHANNEL"));
    }

    #[test]
    fn without_the_socket_every_line_goes_to_the_fallback_with_its_priority() {
        let dir = tempfile::tempdir().unwrap();
        let out = capture(&dir.path().join("absent"), None, || {
            tracing::error!("giving up: x");
            tracing::warn!(channel = %"main", "lost\nforged line");
            tracing::info!("linked");
            tracing::debug!("detail");
        });
        assert_eq!(
            out.text(),
            "<3>giving up: x\n<4>lost\\x0aforged line channel=main\n<6>linked\n<7>detail\n"
        );
    }

    /// A line from outside `tracing` (a config error before logging is set
    /// up, a panic): an entry of its own priority; without the socket, `<N>`
    /// and the text on one fallback line, which journald's stream reader
    /// turns into that priority.
    #[test]
    fn direct_lines_keep_their_priority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let buf = Buf::default();
        let b = buf.clone();
        let layer = JournalLayer::new(&path, move || b.clone(), Some("k1".into()));
        layer.emit(3, "/etc/spiced/k1.toml: bad\nsecond line");
        let mut d = vec![0u8; 4096];
        let n = rx.recv(&mut d).unwrap();
        let f = parse(&d[..n]);
        assert_eq!(f["PRIORITY"], "3");
        assert_eq!(f["MESSAGE"], "/etc/spiced/k1.toml: bad\nsecond line");
        assert_eq!(f["SYSLOG_IDENTIFIER"], "spiced");
        assert_eq!(f["SPICED_INSTANCE"], "k1");
        assert_eq!(buf.text(), "");
        let absent = JournalLayer::new(&dir.path().join("absent"), move || buf.clone(), None);
        absent.emit(3, "bad\nforged");
        absent.emit(2, "panicked");
        assert_eq!(
            absent.fallback.make_writer().text(),
            "<3>bad\\x0aforged\n<2>panicked\n"
        );
    }

    /// journald not reading: lines wait once, then fall back without waiting,
    /// each line exactly once; once journald reads again, they go to it again.
    #[test]
    fn a_stalled_journal_costs_one_wait_and_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let buf = Buf::default();
        let b = buf.clone();
        let layer = JournalLayer::new(&path, move || b.clone(), None);
        let sub = tracing_subscriber::registry().with(layer);
        let _g = tracing::subscriber::set_default(sub);
        // More than any queue (max_dgram_qlen, the send buffer) holds.
        const N: usize = 3000;
        let t = std::time::Instant::now();
        for i in 0..N {
            tracing::info!("line {i}");
        }
        let took = t.elapsed();
        let mut got = Vec::new();
        let mut d = vec![0u8; 4096];
        while let Ok(n) = rx.recv(&mut d) {
            got.push(parse(&d[..n])["MESSAGE"].clone());
        }
        let fell_back = buf.text();
        let fell_back: Vec<&str> = fell_back.lines().collect();
        assert!(!fell_back.is_empty(), "the queue never filled");
        assert_eq!(got.len() + fell_back.len(), N);
        let mut all: Vec<String> = got.clone();
        all.extend(
            fell_back
                .iter()
                .map(|l| l.trim_start_matches("<6>").to_string()),
        );
        all.sort();
        all.dedup();
        assert_eq!(all.len(), N, "a line lost or doubled");
        assert!(took < SEND_TIMEOUT * 8, "waited per line: {took:?}");
        // Drained: the next line goes to the journal again.
        tracing::info!("back");
        let n = rx.recv(&mut d).unwrap();
        assert_eq!(parse(&d[..n])["MESSAGE"], "back");
    }

    /// Receives one datagram and the descriptor it carries, if any.
    fn recv_with_fd(rx: &UnixDatagram, buf: &mut [u8]) -> (usize, Option<std::fs::File>) {
        use std::os::fd::{AsRawFd, FromRawFd};
        #[repr(C)]
        union Control {
            _align: libc::cmsghdr,
            buf: [u8; 64],
        }
        // SAFETY: recvmsg into local buffers whose sizes it is given; the
        // control message is read through the CMSG macros, within them.
        unsafe {
            let mut control: Control = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.buf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of::<Control>() as _;
            let n = libc::recvmsg(rx.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            assert!(n >= 0, "{}", std::io::Error::last_os_error());
            let c = libc::CMSG_FIRSTHDR(&msg);
            let fd = if c.is_null() {
                None
            } else {
                assert_eq!(
                    ((*c).cmsg_level, (*c).cmsg_type),
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS)
                );
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                Some(std::fs::File::from_raw_fd(fd))
            };
            (n as usize, fd)
        }
    }

    /// An entry too big for a datagram (EMSGSIZE) goes whole, every field
    /// kept, in a sealed memfd passed with SCM_RIGHTS in an empty datagram, as
    /// journald's native protocol documents; nothing falls back.
    #[test]
    fn an_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd() {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let big = "x".repeat(8 << 20);
        let out = capture(&path, Some("k"), || {
            tracing::warn!(channel = %"display", "{big}");
            tracing::info!("small");
        });
        assert!(
            out.text().is_empty(),
            "{} bytes fell back",
            out.text().len()
        );
        let mut buf = vec![0u8; 65536];
        let (n, fd) = recv_with_fd(&rx, &mut buf);
        assert_eq!(n, 0, "the payload is in the memfd alone");
        let mut memfd = fd.expect("a descriptor");
        // SAFETY: F_GET_SEALS on a descriptor this test owns.
        let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want, "sealed: {seals:#x}");
        // The descriptor shares the sender's file offset (at the end):
        // journald maps the file, so read it from the start.
        let mut entry = Vec::new();
        memfd.seek(std::io::SeekFrom::Start(0)).unwrap();
        memfd.read_to_end(&mut entry).unwrap();
        let f = parse(&entry);
        assert_eq!(f["MESSAGE"].len(), big.len() + " channel=display".len());
        assert_eq!(f["PRIORITY"], "4");
        assert_eq!(f["SPICED_CHANNEL"], "display");
        assert_eq!(f["SPICED_INSTANCE"], "k");
        let (n, fd) = recv_with_fd(&rx, &mut buf);
        assert!(fd.is_none());
        assert_eq!(parse(&buf[..n])["MESSAGE"], "small");
        assert!(rx.recv(&mut buf).is_err(), "two datagrams only");
    }
}
