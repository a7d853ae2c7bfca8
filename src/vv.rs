//! console.vv: the virt-viewer connection file, read as remote-viewer reads it.
//!
//! The syntax is GLib's GKeyFile: `[group]` headers, `key=value` lines, `#`
//! comment lines, C-like escapes in string values and `;`-separated lists. The
//! settings live in the mandatory `[virt-viewer]` group; other groups (oVirt's
//! `[ovirt]`) are kept but unused. Parsing is pure ([`parse`]); [`load`] is the
//! file edge (stdin for `-`, `delete-this-file`). Errors are one line naming the
//! file, the line and the key, and never contain the password.

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// Larger inputs are refused: real .vv files are a few KiB (a CA chain at most).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// spice-server refuses longer tickets (SPICE_MAX_PASSWORD_LENGTH is 60 with the NUL).
const MAX_PASSWORD_BYTES: usize = 59;

const MAIN_GROUP: &str = "virt-viewer";
const REDACTED: &str = "<redacted>";

/// Keys of `[virt-viewer]` that spiced reads; every other key is logged at debug
/// level and ignored.
const HONOURED: &[&str] = &[
    "type",
    "host",
    "port",
    "tls-port",
    "password",
    "ca",
    "host-subject",
    "secure-channels",
    "disable-channels",
    "delete-this-file",
    "proxy",
    "title",
    "tls-ciphers",
    "ticket-valid-until",
];

/// The connection settings spiced takes from a .vv file. `Debug` hides the
/// password, the proxy credentials, the CA and a ticket-bearing Proxmox host.
#[derive(Clone, Default, PartialEq)]
pub struct ConnectionSettings {
    /// `host`: name or IP (IPv6 without brackets), or a proxy-side name such as
    /// Proxmox's `pvespiceproxy:...` when `proxy` is set.
    pub host: String,
    /// `port`: plain port, if any.
    pub port: Option<u16>,
    /// `tls-port`: TLS port, if any.
    pub tls_port: Option<u16>,
    /// `password`: the SPICE ticket. Never logged.
    pub password: Option<Secret>,
    /// `ca`: PEM text of the CA certificate(s) (escapes already decoded).
    pub ca: Option<String>,
    /// `host-subject`: the certificate subject to match instead of the host name.
    pub host_subject: Option<String>,
    /// `secure-channels`: channel names that must use TLS ("all" allowed).
    pub secure_channels: Vec<String>,
    /// `disable-channels`: channel names never linked.
    pub disable_channels: Vec<String>,
    /// `delete-this-file=1`: the ticket is single-use.
    pub delete_this_file: bool,
    /// `proxy`: e.g. `http://proxy.example:3128`.
    pub proxy: Option<String>,
    /// `title`.
    pub title: Option<String>,
    /// `tls-ciphers` (OpenSSL cipher string), as written.
    pub tls_ciphers: Option<String>,
    /// Extension `ticket-valid-until`: unix seconds after which the ticket is dead.
    pub ticket_valid_until: Option<i64>,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("host", &self.shown_host())
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .field("password", &self.password)
            .field("ca", &self.ca.as_ref().map(|_| REDACTED))
            .field("host_subject", &self.host_subject)
            .field("secure_channels", &self.secure_channels)
            .field("disable_channels", &self.disable_channels)
            .field("delete_this_file", &self.delete_this_file)
            .field("proxy", &self.proxy.as_deref().map(redact_proxy))
            .field("title", &self.title)
            .field("tls_ciphers", &self.tls_ciphers)
            .field("ticket_valid_until", &self.ticket_valid_until)
            .finish()
    }
}

impl ConnectionSettings {
    /// The host as logs show it: a Proxmox `pvespiceproxy:<ticket>` host shortened
    /// (see [`crate::link::error::shown_host`]).
    pub fn shown_host(&self) -> String {
        crate::link::error::shown_host(&self.host, self.password.as_ref())
    }

    /// Every setting, for reports and logs: `password` and `ca` become
    /// `"<redacted>"` when present, proxy credentials are hidden and a
    /// ticket-bearing host is shortened as in the logs.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.shown_host(),
            "port": self.port,
            "tls_port": self.tls_port,
            "password": self.password.as_ref().map(|_| REDACTED),
            "ca": self.ca.as_ref().map(|_| REDACTED),
            "host_subject": self.host_subject,
            "secure_channels": self.secure_channels,
            "disable_channels": self.disable_channels,
            "delete_this_file": self.delete_this_file,
            "proxy": self.proxy.as_deref().map(redact_proxy),
            "title": self.title,
            "tls_ciphers": self.tls_ciphers,
            "ticket_valid_until": self.ticket_valid_until,
        })
    }
}

/// The effective settings as `spiced --check` prints them (field names are a
/// contract; absent values are null; the password only as `password_set`).
pub fn check_json(s: &ConnectionSettings) -> serde_json::Value {
    serde_json::json!({
        "host": (!s.host.is_empty()).then(|| s.shown_host()),
        "port": s.port,
        "tls_port": s.tls_port,
        "proxy": s.proxy.as_deref().map(redact_proxy),
        "host_subject": s.host_subject,
        "ca_present": s.ca.is_some(),
        "password_set": s.password.as_ref().is_some_and(|p| !p.is_empty()),
        "secure_channels": s.secure_channels,
        "disable_channels": s.disable_channels,
        "single_use_ticket": s.delete_this_file,
        "ticket_valid_until": s.ticket_valid_until,
        "title": s.title,
    })
}

/// `http://user:pass@proxy:3128` → `http://<redacted>@proxy:3128`: proxy
/// credentials are as secret as the ticket. The credentials are everything
/// before the LAST `@` (as `ProxyUrl::parse` reads them), so `/`, `@`, `:` or
/// `%` in a password cannot leave part of it visible.
pub fn redact_proxy(p: &str) -> String {
    let p = p.trim();
    let (scheme, rest) = crate::link::proxy::split_scheme(p);
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    match rest.rfind('@') {
        Some(at) => format!("{scheme}{REDACTED}{}", &rest[at..]),
        None => p.to_string(),
    }
}

/// A parsed .vv file.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub settings: ConnectionSettings,
    /// Problems that did not stop the parse, each one line naming file and line.
    pub warnings: Vec<String>,
    /// Groups other than `[virt-viewer]` (e.g. `[ovirt]`), raw values as written.
    /// Kept, never used; values are `Secret` because oVirt puts session tokens here.
    pub other_groups: BTreeMap<String, BTreeMap<String, Secret>>,
}

/// Why a .vv file cannot be used. Displays as one line:
/// `console.vv:7: key 'port': not a number: "59x0"`. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VvError {
    /// The file as named on the command line (`<stdin>` for `-`).
    pub origin: String,
    /// 1-based line; for a missing key, the line of the `[virt-viewer]` header.
    pub line: Option<usize>,
    /// The key concerned, if any.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for VvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key '{key}': ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for VvError {}

/// What identifies a file on disk: a file renamed into place, or the same file
/// rewritten, has another. Regular files only: a FIFO or a device has no
/// contents to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_file().then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
        })
    }

    /// The file at `path` now (following a symlink), if it is a regular one.
    pub fn at(path: &Path) -> Option<Stamp> {
        Stamp::of(&std::fs::metadata(path).ok()?)
    }
}

/// One read of a .vv file.
#[derive(Debug)]
pub struct VvFile {
    /// The file read, taken from the open file (not the path): a file renamed
    /// into place during the read has another stamp. None for stdin, a FIFO,
    /// or a file that could not be opened.
    pub stamp: Option<Stamp>,
    /// There was no file at the path.
    pub missing: bool,
    pub parsed: Result<Parsed, VvError>,
}

/// Reads a .vv file (`-` = stdin) and parses it. With `delete_if_requested`, a file
/// saying `delete-this-file=1` is deleted after a successful parse, as
/// remote-viewer does (also like remote-viewer, not when `VIRT_VIEWER_KEEP_FILE`
/// is set). A failed delete is a warning, not an error.
pub fn load(path: &Path, delete_if_requested: bool) -> Result<Parsed, VvError> {
    read(path, delete_if_requested).parsed
}

/// [`load`], saying which file was read.
pub fn read(path: &Path, delete_if_requested: bool) -> VvFile {
    read_with(path, delete_if_requested, &mut || {})
}

/// [`read`] with a seam between the read and the delete (tests: a producer's
/// rename landing there).
fn read_with(path: &Path, delete_if_requested: bool, before_delete: &mut dyn FnMut()) -> VvFile {
    let from_stdin = path.as_os_str() == "-";
    let origin = if from_stdin {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let cannot_read = |e: std::io::Error| VvError {
        origin: origin.clone(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    };
    // The file stays open until the delete is done: its inode cannot be
    // reused by a newer file meanwhile, so device and inode name it.
    let (read, opened, _file) = if from_stdin {
        (read_bounded(std::io::stdin().lock()), None, None)
    } else {
        match std::fs::File::open(path) {
            Ok(f) => {
                let meta = f.metadata().ok();
                (read_bounded(&f), meta, Some(f))
            }
            Err(e) => {
                return VvFile {
                    stamp: None,
                    missing: e.kind() == std::io::ErrorKind::NotFound,
                    parsed: Err(cannot_read(e)),
                }
            }
        }
    };
    let stamp = opened.as_ref().and_then(Stamp::of);
    let parsed = read.map_err(cannot_read).and_then(|bytes| {
        let mut parsed = parse(&bytes, &origin)?;
        if parsed.settings.delete_this_file && delete_if_requested && !from_stdin {
            if std::env::var_os("VIRT_VIEWER_KEEP_FILE").is_some() {
                parsed.warnings.push(format!(
                    "{origin}: delete-this-file is set but VIRT_VIEWER_KEEP_FILE is too: file kept"
                ));
            } else {
                before_delete();
                if let Err(e) = consume(path, opened.as_ref()) {
                    parsed.warnings.push(format!(
                        "{origin}: delete-this-file is set but the file could not be deleted: {e}"
                    ));
                } else {
                    tracing::debug!(file = %origin, "deleted the .vv file (delete-this-file)");
                }
            }
        }
        Ok(parsed)
    });
    VvFile {
        stamp,
        missing: false,
        parsed,
    }
}

/// Deletes the single-use file that was read, and only that one (`read`: its
/// metadata, from the file, still open). A producer may rename a newer file into
/// place at any moment, so the path is first renamed to a private name in the
/// same directory and compared with what was read (device and inode): the
/// file read is deleted; a newer one is put back, unless a yet newer one is
/// there by then (the older is then dropped). The path never names a file
/// spiced is about to delete.
fn consume(path: &Path, read: Option<&std::fs::Metadata>) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(read) = read else {
        return std::fs::remove_file(path);
    };
    // Named after the file (two instances sharing a directory never collide,
    // even with the same pid in their own namespaces), within NAME_MAX.
    let name = path.file_name().unwrap_or_default().as_bytes();
    let mut private = std::ffi::OsString::from(".");
    private.push(std::ffi::OsStr::from_bytes(&name[..name.len().min(128)]));
    private.push(format!(
        ".spiced-used-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let private = path.with_file_name(private);
    match std::fs::rename(path, &private) {
        Ok(()) => {}
        // Gone already (deleted by someone else): nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let moved = std::fs::metadata(&private)?;
    if (moved.dev(), moved.ino()) == (read.dev(), read.ino()) {
        return std::fs::remove_file(&private);
    }
    // A newer file landed between the read and the rename: it goes back.
    match rename_noreplace(&private, path) {
        Ok(()) => {
            tracing::debug!(file = %path.display(), "a newer .vv was renamed into place during the read: kept for the next read");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::remove_file(&private),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!(
                "a newer file renamed into place during the read could not be put back from {}: {e}",
                private.display()
            ),
        )),
    }
}

/// rename(2) that never replaces an existing `to` (renameat2 RENAME_NOREPLACE;
/// a hard link and an unlink where the file system lacks it).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(e);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Reads at most one byte more than [`MAX_FILE_BYTES`], so `parse` can refuse
/// an oversized input without ever holding an unbounded one.
fn read_bounded(r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses .vv bytes; `origin` names the file in errors and warnings. Pure: no
/// I/O, no clock (`ticket-valid-until` is judged by the caller).
pub fn parse(bytes: &[u8], origin: &str) -> Result<Parsed, VvError> {
    let p = Parser {
        origin,
        warnings: Vec::new(),
    };
    p.run(bytes)
}

struct Entry {
    key: String,
    /// As written after `=` (leading whitespace removed, escapes not yet decoded).
    raw: String,
    line: usize,
}

struct Group {
    name: String,
    /// Line of the first `[name]` header (GKeyFile merges repeated groups).
    line: usize,
    entries: Vec<Entry>,
}

impl Group {
    /// GKeyFile semantics: a repeated key's last value wins.
    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// g_ascii_isspace: the whitespace GKeyFile trims.
fn is_gspace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A value shown in an error: trimmed, bounded, quoted and escaped.
fn shown(v: &str) -> String {
    let v = v.trim_matches(is_gspace);
    let mut s: String = v.chars().take(40).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

enum EscapeError {
    AtEnd,
    Invalid(char),
}

/// Decodes GKeyFile escapes (`\s \n \t \r \\`, and `\;` inside lists). A list
/// splits on unescaped `;`; a trailing `;` ends the list rather than adding an
/// empty item. A non-list value is always exactly one piece.
fn unescape(raw: &str, list: bool) -> Result<Vec<String>, EscapeError> {
    let mut pieces = Vec::new();
    let mut cur = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                None => return Err(EscapeError::AtEnd),
                Some('s') => cur.push(' '),
                Some('n') => cur.push('\n'),
                Some('t') => cur.push('\t'),
                Some('r') => cur.push('\r'),
                Some('\\') => cur.push('\\'),
                Some(';') if list => cur.push(';'),
                Some(o) => return Err(EscapeError::Invalid(o)),
            },
            ';' if list => pieces.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !list || !cur.is_empty() {
        pieces.push(cur);
    }
    Ok(pieces)
}

enum IntError {
    NotANumber,
    OutOfRange,
}

/// GKeyFile integers (strtol): optional sign and decimal digits, surrounding
/// whitespace allowed, nothing else.
fn parse_int(raw: &str) -> Result<i64, IntError> {
    let t = raw.trim_matches(is_gspace);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntError::NotANumber);
    }
    t.parse::<i64>().map_err(|_| IntError::OutOfRange)
}

struct Parser<'a> {
    origin: &'a str,
    warnings: Vec<String>,
}

impl Parser<'_> {
    fn error(&self, line: Option<usize>, key: Option<&str>, message: impl Into<String>) -> VvError {
        VvError {
            origin: self.origin.to_string(),
            line,
            key: key.map(str::to_string),
            message: message.into(),
        }
    }

    fn warn(&mut self, line: usize, key: &str, message: impl fmt::Display) {
        self.warnings
            .push(format!("{}:{line}: key '{key}': {message}", self.origin));
    }

    fn run(mut self, bytes: &[u8]) -> Result<Parsed, VvError> {
        let groups = self.key_file(bytes)?;
        let mut main = None;
        let mut other_groups = BTreeMap::new();
        for g in groups {
            if g.name == MAIN_GROUP {
                main = Some(g);
            } else {
                let entries = g
                    .entries
                    .into_iter()
                    .map(|e| (e.key, Secret::new(e.raw)))
                    .collect();
                other_groups.insert(g.name, entries);
            }
        }
        let Some(main) = main else {
            return Err(self.error(
                None,
                None,
                "no [virt-viewer] group: not a virt-viewer connection file",
            ));
        };
        let settings = self.settings(&main)?;
        Ok(Parsed {
            settings,
            warnings: self.warnings,
            other_groups,
        })
    }

    /// The GKeyFile layer: bytes → groups of raw entries.
    fn key_file(&self, bytes: &[u8]) -> Result<Vec<Group>, VvError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(self.error(
                None,
                None,
                format!("too large for a .vv file (more than {MAX_FILE_BYTES} bytes)"),
            ));
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        // Positions below are in the BOM-less slice; count lines in that slice too.
        let line_of = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
        if let Some(pos) = bytes.iter().position(|&b| b == 0) {
            return Err(self.error(
                Some(line_of(pos)),
                None,
                "binary data (NUL byte): not a .vv text file",
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            self.error(
                Some(line_of(e.valid_up_to())),
                None,
                "not UTF-8 text: not a .vv text file",
            )
        })?;

        let mut groups: Vec<Group> = Vec::new();
        let mut current: Option<usize> = None;
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let line = line.trim_start_matches(is_gspace);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = self.group_name(rest, n)?;
                current = Some(match groups.iter().position(|g| g.name == name) {
                    Some(idx) => idx,
                    None => {
                        groups.push(Group {
                            name: name.to_string(),
                            line: n,
                            entries: Vec::new(),
                        });
                        groups.len() - 1
                    }
                });
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(self.error(
                    Some(n),
                    None,
                    "not a key=value pair, a [group] header or a # comment",
                ));
            };
            let key = key.trim_end_matches(is_gspace);
            let raw = value.trim_start_matches(is_gspace);
            // A plain key, or `key[locale]` (a translation).
            let valid = match key.find('[') {
                None => !key.contains(']'),
                Some(i) => {
                    i > 0 && key.len() > i + 1 && key.ends_with(']') && {
                        let locale = &key[i + 1..key.len() - 1];
                        !locale.contains(['[', ']'])
                    }
                }
            };
            if !valid {
                return Err(self.error(Some(n), None, format!("invalid key name {}", shown(key))));
            }
            let Some(g) = current else {
                return Err(self.error(Some(n), None, "key=value line before any [group] header"));
            };
            if key.contains('[') {
                // `title[de]=...`: a translation; remote-viewer reads untranslated keys.
                tracing::debug!(
                    file = self.origin,
                    line = n,
                    key,
                    "ignoring translated .vv key"
                );
                continue;
            }
            groups[g].entries.push(Entry {
                key: key.to_string(),
                raw: raw.to_string(),
                line: n,
            });
        }
        Ok(groups)
    }

    /// `rest` is a header line after its `[`. GKeyFile allows spaces and tabs after
    /// the `]`, nothing else; the name is non-empty without brackets or controls.
    fn group_name<'t>(&self, rest: &'t str, n: usize) -> Result<&'t str, VvError> {
        let bad = || self.error(Some(n), None, "malformed [group] header");
        let (name, after) = rest.split_once(']').ok_or_else(bad)?;
        if name.is_empty()
            || name.contains('[')
            || name.chars().any(char::is_control)
            || !after.chars().all(|c| c == ' ' || c == '\t')
        {
            return Err(bad());
        }
        Ok(name)
    }

    /// The `[virt-viewer]` group → settings.
    fn settings(&mut self, g: &Group) -> Result<ConnectionSettings, VvError> {
        let missing =
            |p: &Self, key: &str, why: &str| p.error(Some(g.line), Some(key), why.to_string());

        // type: remote-viewer refuses a file without it.
        let ty = self
            .string(g, "type")?
            .ok_or_else(|| missing(self, "type", "missing in [virt-viewer]"))?;
        let ty_trim = ty.0.trim_matches(is_gspace);
        if !ty_trim.eq_ignore_ascii_case("spice") {
            return Err(self.error(
                Some(ty.1),
                Some("type"),
                format!(
                    "{} is not supported: spiced speaks SPICE only",
                    shown(ty_trim)
                ),
            ));
        }

        // Values that reach the wire (CONNECT, TLS name checks) or a log line.
        for key in ["host", "proxy", "host-subject", "title", "tls-ciphers"] {
            self.no_controls(g, key)?;
        }
        let host = self
            .string(g, "host")?
            .ok_or_else(|| missing(self, "host", "missing in [virt-viewer]"))?;
        let host_name = host.0.trim_matches(is_gspace).to_string();
        if host_name.is_empty() {
            return Err(self.error(Some(host.1), Some("host"), "empty"));
        }

        let port = self.port(g, "port")?;
        let tls_port = self.port(g, "tls-port")?;
        if port.is_none() && tls_port.is_none() {
            return Err(missing(
                self,
                "port",
                "missing in [virt-viewer]: neither port nor tls-port is set",
            ));
        }

        let ca = self.non_empty(g, "ca")?;
        if let (Some(ca), Some(e)) = (&ca, g.get("ca")) {
            if !ca.contains("-----BEGIN") {
                self.warn(e.line, "ca", "does not look like PEM (no -----BEGIN line)");
            }
        }
        let password = self.non_empty(g, "password")?;
        if let (Some(pw), Some(e)) = (&password, g.get("password")) {
            if pw.len() > MAX_PASSWORD_BYTES {
                let msg =
                    format!("longer than {MAX_PASSWORD_BYTES} bytes: spice-server will refuse it");
                self.warn(e.line, "password", msg);
            }
        }
        if let Some(e) = g.get("unix-path") {
            self.warn(e.line, "unix-path", "not supported by spiced; ignored");
        }

        let settings = ConnectionSettings {
            host: host_name,
            port,
            tls_port,
            password: password.map(Secret::new),
            ca,
            host_subject: self.non_empty(g, "host-subject")?,
            secure_channels: self.channels(g, "secure-channels", true)?,
            disable_channels: self.channels(g, "disable-channels", false)?,
            delete_this_file: self.delete_this_file(g),
            proxy: self
                .non_empty(g, "proxy")?
                .map(|p| p.trim_matches(is_gspace).to_string()),
            title: self.non_empty(g, "title")?,
            tls_ciphers: self.non_empty(g, "tls-ciphers")?,
            ticket_valid_until: self.ticket_valid_until(g),
        };

        for e in &g.entries {
            if !HONOURED.contains(&e.key.as_str()) {
                tracing::debug!(
                    file = self.origin,
                    line = e.line,
                    key = %e.key.chars().take(64).collect::<String>(),
                    "ignoring .vv key spiced does not use"
                );
            }
        }
        Ok(settings)
    }

    /// A string key, escapes decoded, with the line it came from.
    fn string(&self, g: &Group, key: &str) -> Result<Option<(String, usize)>, VvError> {
        let Some(e) = g.get(key) else { return Ok(None) };
        let mut pieces = unescape(&e.raw, false).map_err(|err| self.escape_error(e, err))?;
        Ok(Some((pieces.pop().unwrap_or_default(), e.line)))
    }

    /// Refuses a value holding a control character after escape decoding (CR,
    /// LF, tab, NUL, DEL, other C0/C1), spaces and tabs at its ends aside: a
    /// line break in `host` would split the proxy's CONNECT request, and none
    /// belongs in a log line. The value is never quoted (a host may embed the
    /// ticket).
    fn no_controls(&self, g: &Group, key: &str) -> Result<(), VvError> {
        let Some((v, line)) = self.string(g, key)? else {
            return Ok(());
        };
        if v.trim_matches([' ', '\t']).chars().any(char::is_control) {
            return Err(self.error(
                Some(line),
                Some(key),
                "contains a control character (line break, NUL, escape...): refused",
            ));
        }
        Ok(())
    }

    /// A string key where an empty value means "not set".
    fn non_empty(&self, g: &Group, key: &str) -> Result<Option<String>, VvError> {
        Ok(self
            .string(g, key)?
            .map(|(v, _)| v)
            .filter(|v| !v.is_empty()))
    }

    fn escape_error(&self, e: &Entry, err: EscapeError) -> VvError {
        let msg = match err {
            EscapeError::AtEnd => "backslash at the end of the value".to_string(),
            // Never echo anything from the password line.
            EscapeError::Invalid(_) if e.key == "password" => "invalid escape sequence".to_string(),
            EscapeError::Invalid(c) => {
                format!("invalid escape sequence \"\\{}\"", c.escape_default())
            }
        };
        self.error(Some(e.line), Some(&e.key), msg)
    }

    /// `port` / `tls-port`: 1-65535. `-1` means "none" (oVirt writes `port=-1`
    /// when the console has only a TLS port).
    fn port(&self, g: &Group, key: &str) -> Result<Option<u16>, VvError> {
        let Some(e) = g.get(key) else { return Ok(None) };
        let out_of_range = || {
            self.error(
                Some(e.line),
                Some(key),
                format!("out of range: {} (ports are 1-65535)", shown(&e.raw)),
            )
        };
        match parse_int(&e.raw) {
            Err(IntError::NotANumber) => Err(self.error(
                Some(e.line),
                Some(key),
                format!("not a number: {}", shown(&e.raw)),
            )),
            Err(IntError::OutOfRange) => Err(out_of_range()),
            Ok(-1) => {
                tracing::debug!(file = self.origin, line = e.line, key, "port -1: not set");
                Ok(None)
            }
            Ok(v) => u16::try_from(v)
                .ok()
                .filter(|&p| p != 0)
                .map(Some)
                .ok_or_else(out_of_range),
        }
    }

    /// A channel list (`main;inputs;usbredir;`). Unknown names are dropped with a
    /// warning; `all` is meaningful in `secure-channels` only.
    fn channels(&mut self, g: &Group, key: &str, allow_all: bool) -> Result<Vec<String>, VvError> {
        let Some(e) = g.get(key) else {
            return Ok(Vec::new());
        };
        let pieces = unescape(&e.raw, true).map_err(|err| self.escape_error(e, err))?;
        let mut names: Vec<String> = Vec::new();
        for p in pieces {
            let name = p.trim_matches(is_gspace).to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let known = (allow_all && name == "all")
                || crate::wire::ChannelType::from_name(&name).is_some();
            if !known {
                self.warn(
                    e.line,
                    key,
                    format_args!("unknown channel name {}: ignored", shown(&name)),
                );
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// virt-viewer reads `delete-this-file` as an integer (non-zero = delete);
    /// GKeyFile's boolean spellings `true`/`false` are accepted too. Anything else
    /// reads as 0, as in remote-viewer, with a warning.
    fn delete_this_file(&mut self, g: &Group) -> bool {
        const KEY: &str = "delete-this-file";
        let Some(e) = g.get(KEY) else { return false };
        let v = e.raw.trim_matches(is_gspace);
        match v {
            "true" => {
                self.warn(
                    e.line,
                    KEY,
                    "\"true\" taken as 1 (remote-viewer expects an integer here and would keep the file)",
                );
                true
            }
            "false" => false,
            _ => match parse_int(v) {
                Ok(n) => n != 0,
                Err(_) => {
                    self.warn(
                        e.line,
                        KEY,
                        format_args!(
                            "not 0/1/true/false: {}; taken as 0, as remote-viewer does",
                            shown(v)
                        ),
                    );
                    false
                }
            },
        }
    }

    /// The `ticket-valid-until=<unix seconds>` extension. Malformed: a warning and
    /// treated as absent (the ticket then has no known expiry).
    fn ticket_valid_until(&mut self, g: &Group) -> Option<i64> {
        const KEY: &str = "ticket-valid-until";
        let e = g.get(KEY)?;
        match parse_int(&e.raw) {
            Ok(v) if v >= 0 => Some(v),
            _ => {
                self.warn(
                    e.line,
                    KEY,
                    format_args!("not unix seconds: {}; ignored", shown(&e.raw)),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PVE: &[u8] = include_bytes!("../tests/fixtures/proxmox.vv");
    const OVIRT: &[u8] = include_bytes!("../tests/fixtures/ovirt.vv");
    const PW: &str = "Xq7mQ2pL9vR4tY8wZ1cB";

    fn ok(text: &str) -> Parsed {
        match parse(text.as_bytes(), "console.vv") {
            Ok(p) => p,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// Parses, expects an error, checks its line and key, returns its one line.
    fn err(text: &str, line: Option<usize>, key: Option<&str>) -> String {
        let e = parse(text.as_bytes(), "console.vv").expect_err("must fail");
        assert_eq!(e.line, line, "{e}");
        assert_eq!(e.key.as_deref(), key, "{e}");
        let s = e.to_string();
        assert!(!s.contains('\n'), "one line: {s:?}");
        assert!(s.starts_with("console.vv"), "{s}");
        s
    }

    #[test]
    fn minimal_file() {
        let p = ok("[virt-viewer]\ntype=spice\nhost=192.0.2.5\nport=5900\n");
        let s = p.settings;
        assert_eq!(s.host, "192.0.2.5");
        assert_eq!(s.port, Some(5900));
        assert_eq!(s.tls_port, None);
        assert_eq!(s.password, None);
        assert!(!s.delete_this_file);
        assert!(p.warnings.is_empty());
        assert!(p.other_groups.is_empty());
    }

    #[test]
    fn proxmox_file() {
        let p = parse(PVE, "console.vv").unwrap();
        let s = &p.settings;
        assert_eq!(
            s.host,
            "pvespiceproxy:6643a1b2:101:node1::8fa3c0de5b9e41d2a7f3"
        );
        assert_eq!(s.port, None);
        assert_eq!(s.tls_port, Some(61000));
        assert_eq!(s.proxy.as_deref(), Some("http://192.0.2.10:3128"));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some(PW));
        assert_eq!(
            s.host_subject.as_deref(),
            Some("OU=PVE Cluster Node,O=Proxmox Virtual Environment,CN=node1.example")
        );
        let ca = s.ca.as_deref().unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----\nMII"), "{ca}");
        assert!(ca.ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(!ca.contains('\\'));
        assert_eq!(ca.lines().count(), 13);
        assert!(s.delete_this_file);
        assert_eq!(s.title.as_deref(), Some("VM 101 - kiosk-01"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn ovirt_file() {
        let p = parse(OVIRT, "console.vv").unwrap();
        let s = &p.settings;
        assert_eq!(s.host, "192.0.2.21");
        assert_eq!(s.port, None, "port=-1 means none");
        assert_eq!(s.tls_port, Some(5901));
        assert_eq!(
            s.secure_channels,
            [
                "main",
                "inputs",
                "cursor",
                "playback",
                "record",
                "display",
                "smartcard",
                "usbredir"
            ]
        );
        assert_eq!(s.tls_ciphers.as_deref(), Some("DEFAULT"));
        assert_eq!(s.title.as_deref(), Some("kiosk-07:%d"));
        assert_eq!(
            s.host_subject.as_deref(),
            Some("O=example.com,CN=host21.example.com")
        );
        assert!(s.delete_this_file);
        assert!(s.ca.is_some());
        let ovirt = &p.other_groups["ovirt"];
        assert_eq!(ovirt["host"].expose(), "engine.example.com:443");
        assert_eq!(ovirt["sso-token"].expose(), "ssoT0k3nS3cr3tValue");
        assert!(!format!("{p:?}").contains("ssoT0k3nS3cr3tValue"));
        assert!(!format!("{p:?}").contains("oV1rtT1ck3tS3cr3t"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn crlf_and_bom_read_like_lf() {
        let lf = parse(PVE, "console.vv").unwrap();
        let text = std::str::from_utf8(PVE).unwrap();
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(parse(crlf.as_bytes(), "console.vv").unwrap(), lf);
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(crlf.as_bytes());
        assert_eq!(parse(&bom, "console.vv").unwrap(), lf);
        // Line numbers are unaffected by the BOM and the CRs.
        let bad = "\u{feff}[virt-viewer]\r\ntype=spice\r\nhost=h\r\nport=x\r\n";
        assert_eq!(
            err(bad, Some(4), Some("port")),
            "console.vv:4: key 'port': not a number: \"x\""
        );
    }

    #[test]
    fn comments_whitespace_and_duplicates() {
        let p = ok(
            "# generated\n\n  # indented comment\n[virt-viewer]\n  type = spice\n\
                    host =  example.org  \nport=1\nport=5900 \ntitle=a # not a comment\n\
                    [other]\nx=1\n[virt-viewer]\ntls-port=5901\n",
        );
        let s = p.settings;
        assert_eq!(s.host, "example.org");
        assert_eq!(s.port, Some(5900), "last value wins");
        assert_eq!(s.tls_port, Some(5901), "a repeated group merges");
        assert_eq!(s.title.as_deref(), Some("a # not a comment"));
        assert!(p.other_groups.contains_key("other"));
    }

    #[test]
    fn escapes_are_decoded() {
        // (`ca`: a PEM block is lines; control characters in host, proxy,
        // host-subject, title and tls-ciphers are refused.)
        let p = ok("[virt-viewer]\ntype=spice\nhost=h\nport=1\nca=\\sa\\tb\\nc\\\\d\\re\n");
        assert_eq!(p.settings.ca.as_deref(), Some(" a\tb\nc\\d\re"));
    }

    #[test]
    fn bad_escapes_name_line_and_key() {
        let base = "[virt-viewer]\ntype=spice\nhost=h\nport=1\n";
        assert_eq!(
            err(&format!("{base}title=a\\qb\n"), Some(5), Some("title")),
            "console.vv:5: key 'title': invalid escape sequence \"\\q\""
        );
        assert_eq!(
            err(&format!("{base}ca=abc\\\n"), Some(5), Some("ca")),
            "console.vv:5: key 'ca': backslash at the end of the value"
        );
        let s = err(
            &format!("{base}password=s3cr\\et\n"),
            Some(5),
            Some("password"),
        );
        assert_eq!(s, "console.vv:5: key 'password': invalid escape sequence");
        // Unused keys are never decoded, so their escapes cannot fail the file.
        ok(&format!("{base}usb-filter=\\q\n"));
        assert_eq!(
            err(&format!("{base}bad]key=1\n"), Some(5), None),
            "console.vv:5: invalid key name \"bad]key\""
        );
    }

    #[test]
    fn lists() {
        let p = ok("[virt-viewer]\ntype=spice\nhost=h\nport=1\n\
                    secure-channels=main; Display;;inputs;main;\n\
                    disable-channels=usbredir;webdav;bogus;all\n");
        let s = &p.settings;
        assert_eq!(s.secure_channels, ["main", "display", "inputs"]);
        assert_eq!(s.disable_channels, ["usbredir", "webdav"]);
        assert_eq!(
            p.warnings,
            [
                "console.vv:6: key 'disable-channels': unknown channel name \"bogus\": ignored",
                "console.vv:6: key 'disable-channels': unknown channel name \"all\": ignored",
            ]
        );
        let p = ok(
            "[virt-viewer]\ntype=spice\nhost=h\nport=1\nsecure-channels=all\ndisable-channels=\n",
        );
        assert_eq!(p.settings.secure_channels, ["all"]);
        assert!(p.settings.disable_channels.is_empty());
        // `\;` is an escaped separator: one (unknown) name, not two.
        let p = ok("[virt-viewer]\ntype=spice\nhost=h\nport=1\ndisable-channels=main\\;inputs\n");
        assert!(p.settings.disable_channels.is_empty());
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn delete_this_file_values() {
        let base = "[virt-viewer]\ntype=spice\nhost=h\nport=1\n";
        for (v, want, warns) in [
            ("1", true, 0),
            ("0", false, 0),
            ("2", true, 0),
            (" 1 ", true, 0),
            ("false", false, 0),
            ("true", true, 1),
            ("yes", false, 1),
            ("", false, 1),
        ] {
            let p = ok(&format!("{base}delete-this-file={v}\n"));
            assert_eq!(p.settings.delete_this_file, want, "{v:?}");
            assert_eq!(p.warnings.len(), warns, "{v:?}: {:?}", p.warnings);
        }
        let p = ok(&format!("{base}delete-this-file=yes\n"));
        assert_eq!(
            p.warnings[0],
            "console.vv:5: key 'delete-this-file': not 0/1/true/false: \"yes\"; taken as 0, as remote-viewer does"
        );
    }

    #[test]
    fn ticket_valid_until() {
        let base = "[virt-viewer]\ntype=spice\nhost=h\nport=1\n";
        let p = ok(&format!("{base}ticket-valid-until=1764320000\n"));
        assert_eq!(p.settings.ticket_valid_until, Some(1_764_320_000));
        assert!(p.warnings.is_empty());
        for v in ["tomorrow", "-5", "1.5", "99999999999999999999999"] {
            let p = ok(&format!("{base}ticket-valid-until={v}\n"));
            assert_eq!(p.settings.ticket_valid_until, None, "{v}");
            assert_eq!(
                p.warnings,
                [format!(
                    "console.vv:5: key 'ticket-valid-until': not unix seconds: \"{v}\"; ignored"
                )]
            );
        }
    }

    #[test]
    fn unknown_keys_and_groups_are_ignored() {
        let p = ok(
            "[virt-viewer]\ntype=spice\nhost=h\nport=1\nx-vendor=1\nzoom-in=ctrl+plus\n\
                    title[de]=Titel\nfullscreen=1\n[ovirt]\nhost=engine\n[x-custom]\nk=v\n",
        );
        assert!(p.warnings.is_empty());
        assert_eq!(p.settings.title, None, "translations are not the key");
        assert_eq!(
            p.other_groups.keys().collect::<Vec<_>>(),
            ["ovirt", "x-custom"]
        );
    }

    #[test]
    fn empty_optional_values_are_absent() {
        let p = ok("[virt-viewer]\ntype=spice\nhost=h\nport=1\npassword=\nca=\nproxy=\ntitle=\n");
        let s = p.settings;
        assert_eq!(
            (s.password, s.ca, s.proxy, s.title),
            (None, None, None, None)
        );
    }

    #[test]
    fn warnings_for_suspicious_values() {
        let p = ok("[virt-viewer]\ntype=spice\nhost=h\nport=1\nca=not pem\nunix-path=/run/x\n");
        assert_eq!(
            p.warnings,
            [
                "console.vv:5: key 'ca': does not look like PEM (no -----BEGIN line)",
                "console.vv:6: key 'unix-path': not supported by spiced; ignored",
            ]
        );
    }

    #[test]
    fn long_password_warns_without_echo() {
        let long = "p".repeat(60);
        let p = ok(&format!(
            "[virt-viewer]\ntype=spice\nhost=h\nport=1\npassword={long}\n"
        ));
        assert_eq!(
            p.warnings,
            ["console.vv:5: key 'password': longer than 59 bytes: spice-server will refuse it"]
        );
        let ok59 = "p".repeat(59);
        assert!(ok(&format!(
            "[virt-viewer]\ntype=spice\nhost=h\nport=1\npassword={ok59}\n"
        ))
        .warnings
        .is_empty());
    }

    #[test]
    fn error_missing_host_names_group_line() {
        let s = err(
            "# c\n[virt-viewer]\ntype=spice\nport=5900\n",
            Some(2),
            Some("host"),
        );
        assert_eq!(s, "console.vv:2: key 'host': missing in [virt-viewer]");
        let s = err(
            "[virt-viewer]\ntype=spice\nhost=  \nport=1\n",
            Some(3),
            Some("host"),
        );
        assert_eq!(s, "console.vv:3: key 'host': empty");
    }

    #[test]
    fn error_no_port_at_all() {
        let s = err(
            "\n[virt-viewer]\ntype=spice\nhost=h\n",
            Some(2),
            Some("port"),
        );
        assert_eq!(
            s,
            "console.vv:2: key 'port': missing in [virt-viewer]: neither port nor tls-port is set"
        );
        // -1 alone is no port either.
        err(
            "[virt-viewer]\ntype=spice\nhost=h\nport=-1\n",
            Some(1),
            Some("port"),
        );
    }

    #[test]
    fn error_bad_ports() {
        let head = "[virt-viewer]\ntype=spice\nhost=h\n# a\n# b\n# c\n";
        assert_eq!(
            err(&format!("{head}port=59x0\n"), Some(7), Some("port")),
            "console.vv:7: key 'port': not a number: \"59x0\""
        );
        assert_eq!(
            err(
                &format!("{head}tls-port=70000\n"),
                Some(7),
                Some("tls-port")
            ),
            "console.vv:7: key 'tls-port': out of range: \"70000\" (ports are 1-65535)"
        );
        for v in ["0", "-2", "99999999999999999999999"] {
            let s = err(&format!("{head}port={v}\n"), Some(7), Some("port"));
            assert!(s.contains("out of range"), "{s}");
        }
        for v in ["", "5900.0", "0x10", "+", "5 900"] {
            let s = err(&format!("{head}port={v}\n"), Some(7), Some("port"));
            assert!(s.contains("not a number"), "{s}");
        }
        // GKeyFile/strtol accept surrounding whitespace and a sign.
        assert_eq!(
            ok(&format!("{head}port=+5900\t\n")).settings.port,
            Some(5900)
        );
    }

    #[test]
    fn error_type() {
        assert_eq!(
            err(
                "[virt-viewer]\ntype=vnc\nhost=h\nport=5900\n",
                Some(2),
                Some("type")
            ),
            "console.vv:2: key 'type': \"vnc\" is not supported: spiced speaks SPICE only"
        );
        assert_eq!(
            err("[virt-viewer]\nhost=h\nport=5900\n", Some(1), Some("type")),
            "console.vv:1: key 'type': missing in [virt-viewer]"
        );
        assert_eq!(
            ok("[virt-viewer]\ntype=SPICE\nhost=h\nport=1\n")
                .settings
                .port,
            Some(1)
        );
    }

    #[test]
    fn error_no_group() {
        assert_eq!(
            err("[ovirt]\nhost=engine\n", None, None),
            "console.vv: no [virt-viewer] group: not a virt-viewer connection file"
        );
        err("", None, None);
        assert_eq!(
            err("type=spice\n[virt-viewer]\n", Some(1), None),
            "console.vv:1: key=value line before any [group] header"
        );
    }

    #[test]
    fn error_syntax() {
        assert_eq!(
            err(
                "[virt-viewer]\ntype=spice\nhost=h\nport=1\nhunter2\n",
                Some(5),
                None
            ),
            "console.vv:5: not a key=value pair, a [group] header or a # comment"
        );
        err("[virt-viewer]\n=spice\n", Some(2), None);
        for header in ["[virt-viewer", "[]", "[virt-viewer] x", "[a[b]"] {
            let s = err(&format!("# x\n{header}\n"), Some(2), None);
            assert_eq!(s, "console.vv:2: malformed [group] header");
        }
        ok("[virt-viewer] \t\ntype=spice\nhost=h\nport=1\n");
    }

    #[test]
    fn error_binary_and_non_utf8() {
        assert_eq!(
            err("[virt-viewer]\ntype=spice\nhost=\0\n", Some(3), None),
            "console.vv:3: binary data (NUL byte): not a .vv text file"
        );
        let e = parse(
            b"[virt-viewer]\ntype=spice\n\nhost=\xff\xfe\n",
            "console.vv",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "console.vv:4: not UTF-8 text: not a .vv text file"
        );
        let e = parse(b"\xEF\xBB\xBF\n\nx\0", "console.vv").unwrap_err();
        assert_eq!(e.line, Some(3), "line numbers ignore the BOM");
        let e = parse(b"\xEF\xBB\xBF\n\xff", "console.vv").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = parse(b"\x7fELF\x02\x01\x01\0\0\0", "x.vv").unwrap_err();
        assert_eq!(e.line, Some(1));
        let big = vec![b'#'; MAX_FILE_BYTES + 1];
        assert!(parse(&big, "big.vv")
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn password_never_in_errors() {
        let bad = [
            format!("[virt-viewer]\npassword={PW}\ntype=spice\nhost=h\nport=x\n"),
            format!("[virt-viewer]\npassword={PW}\\q\ntype=spice\nhost=h\nport=1\n"),
            format!("[virt-viewer]\npassword={PW}\\\ntype=spice\nhost=h\nport=1\n"),
            format!("[virt-viewer]\npassword={PW}\ntype=vnc\nhost=h\nport=1\n"),
            format!("[virt-viewer]\npassword\n{PW}\n"),
            format!("[virt-viewer]\n{PW}\n"),
        ];
        for text in &bad {
            let e = parse(text.as_bytes(), "console.vv").unwrap_err();
            assert!(!e.to_string().contains(PW), "{e}");
            assert!(!format!("{e:?}").contains(PW), "{e:?}");
        }
        let mut raw = format!("[virt-viewer]\npassword={PW}").into_bytes();
        raw.extend_from_slice(b"\xff\n");
        let e = parse(&raw, "console.vv").unwrap_err();
        assert!(!e.to_string().contains(PW), "{e}");
    }

    #[test]
    fn check_json_fields() {
        let p = parse(PVE, "console.vv").unwrap();
        let j = check_json(&p.settings);
        assert_eq!(
            j,
            serde_json::json!({
                // Shortened as in the logs: the host embeds the ticket.
                "host": "pvespiceproxy:...",
                "port": null,
                "tls_port": 61000,
                "proxy": "http://192.0.2.10:3128",
                "host_subject": "OU=PVE Cluster Node,O=Proxmox Virtual Environment,CN=node1.example",
                "ca_present": true,
                "password_set": true,
                "secure_channels": [],
                "disable_channels": [],
                "single_use_ticket": true,
                "ticket_valid_until": null,
                "title": "VM 101 - kiosk-01",
            })
        );
        assert!(!j.to_string().contains(PW));
        let none = check_json(&ConnectionSettings::default());
        assert_eq!(none["host"], serde_json::Value::Null);
        assert_eq!(none["password_set"], false);
    }

    #[test]
    fn redacted_json_hides_secrets() {
        let mut s = parse(PVE, "console.vv").unwrap().settings;
        s.proxy = Some("http://user:pa55@proxy.example:3128".into());
        let j = s.redacted_json();
        assert_eq!(j["password"], "<redacted>");
        assert_eq!(j["ca"], "<redacted>");
        assert_eq!(j["proxy"], "http://<redacted>@proxy.example:3128");
        assert_eq!(j["host"], "pvespiceproxy:...");
        assert_eq!(j["tls_port"], 61000);
        assert_eq!(j["delete_this_file"], true);
        assert_eq!(j.as_object().unwrap().len(), 13, "every setting");
        let text = j.to_string();
        assert!(!text.contains(PW) && !text.contains("pa55") && !text.contains("BEGIN"));
        let empty = ConnectionSettings::default().redacted_json();
        assert_eq!(empty["password"], serde_json::Value::Null);
        assert_eq!(redact_proxy("proxy:3128"), "proxy:3128");
        assert_eq!(redact_proxy("u:p@proxy:3128"), "<redacted>@proxy:3128");
    }

    #[test]
    fn control_characters_are_refused() {
        let base = "[virt-viewer]\ntype=spice\nport=5900\n";
        for (key, value) in [
            ("host", "pvespiceproxy:abc\\r\\nX-Injected: 1"),
            ("host", "h\\n"),
            ("host", "h\\nx"),
            ("host", "h\\tx"),
            ("host", "h\u{7f}x"),
            ("host", "h\u{9b}x"),
            ("host", "h\u{1b}[31m"),
            ("proxy", "http://p:3128\\r\\nX: 1"),
            ("host-subject", "CN=a\\nCN=b"),
            ("title", "VM\u{1b}]0;pwned\u{7}"),
            ("tls-ciphers", "HIGH\\r"),
        ] {
            let host = if key == "host" { "" } else { "host=h\n" };
            let text = format!("{base}{host}{key}={value}\n");
            let e = err(&text, Some(if key == "host" { 4 } else { 5 }), Some(key));
            assert!(e.contains("control character"), "{e}");
            assert!(
                !e.contains("abc") && !e.contains("pwned"),
                "never quoted: {e}"
            );
        }
        // With a proxy too, and surrounding blanks are still just trimmed.
        let p =
            ok("[virt-viewer]\ntype=spice\nport=1\nproxy=http://p:3128\nhost=h\\s\ntitle=\tT\\t\n");
        assert_eq!(p.settings.host, "h");
        let e = err(
            "[virt-viewer]\ntype=spice\nport=1\nproxy=http://p:3128\nhost=pvespiceproxy:x\\ny\n",
            Some(5),
            Some("host"),
        );
        assert!(!e.contains("pvespiceproxy"), "{e}");
    }

    #[test]
    fn proxy_credentials_are_redacted_whatever_they_hold() {
        for (url, shown) in [
            (
                "http://alice:pa/ss@proxy:3128",
                "http://<redacted>@proxy:3128",
            ),
            (
                "http://alice:p@ss@proxy:3128",
                "http://<redacted>@proxy:3128",
            ),
            (
                "http://al@ice:p:a:ss@proxy:3128/",
                "http://<redacted>@proxy:3128/",
            ),
            ("http://alice:p%40ss%2F@proxy", "http://<redacted>@proxy"),
            ("alice:pa/ss@proxy:3128", "<redacted>@proxy:3128"),
            ("alice:pa://ss@proxy", "<redacted>@proxy"),
            ("http://[::1]:3128", "http://[::1]:3128"),
            // A path is not a proxy URL; hiding too much is the safe side.
            ("http://u:pw@proxy/x@y", "http://<redacted>@y"),
        ] {
            assert_eq!(redact_proxy(url), shown, "{url}");
        }
        let mut s = ConnectionSettings {
            host: "pvespiceproxy:TICKET123".into(),
            password: Some(Secret::new("TICKET123")),
            proxy: Some("http://alice:pa/ss@proxy:3128".into()),
            ca: Some("-----BEGIN CA".into()),
            ..Default::default()
        };
        for text in [
            format!("{s:?}"),
            format!("{s:#?}"),
            s.redacted_json().to_string(),
            check_json(&s).to_string(),
        ] {
            for secret in ["TICKET123", "alice", "pa/ss", "ss@", "BEGIN CA"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("pvespiceproxy:..."), "{text}");
            assert!(text.contains("<redacted>@proxy:3128"), "{text}");
        }
        s.host = "spice.example".into();
        assert_eq!(check_json(&s)["host"], "spice.example");
    }

    #[test]
    fn load_deletes_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.vv");
        std::fs::write(&path, PVE).unwrap();
        let p = load(&path, false).unwrap();
        assert!(p.settings.delete_this_file);
        assert!(path.exists(), "not deleted without delete_if_requested");
        let p = load(&path, true).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(!path.exists(), "deleted after a successful read");

        // A file that fails to parse is never deleted.
        let text = std::str::from_utf8(PVE)
            .unwrap()
            .replace("tls-port=61000", "tls-port=x");
        std::fs::write(&path, text).unwrap();
        assert!(load(&path, true).is_err());
        assert!(path.exists());
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A producer renames a newer single-use .vv into place after spiced read
    /// the old one and before it deletes it: the newer file survives (it is
    /// the next read's), nothing else is left behind.
    #[test]
    fn a_vv_renamed_into_place_during_the_read_survives_the_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.vv");
        std::fs::write(&path, PVE).unwrap();
        let newer = std::str::from_utf8(PVE)
            .unwrap()
            .replace(PW, "Newer0000000000000000");
        let mut producer = || {
            let tmp = dir.path().join("console.vv.tmp");
            std::fs::write(&tmp, &newer).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        let f = read_with(&path, true, &mut producer);
        let p = f.parsed.unwrap();
        assert_eq!(p.settings.password.as_ref().map(|s| s.expose()), Some(PW));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
        assert_eq!(names(dir.path()), ["console.vv"]);
        assert!(f.stamp.is_some());
        assert_ne!(f.stamp, Stamp::at(&path), "the file there is another");

        let f = read(&path, true);
        let p = f.parsed.unwrap();
        assert_eq!(
            p.settings.password.as_ref().map(|s| s.expose()),
            Some("Newer0000000000000000")
        );
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    /// Putting a newer file back never replaces a yet newer one.
    #[test]
    fn a_newer_file_is_never_put_back_over_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (older, newest) = (dir.path().join(".older"), dir.path().join("console.vv"));
        std::fs::write(&older, "older").unwrap();
        std::fs::write(&newest, "newest").unwrap();
        let e = rename_noreplace(&older, &newest).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&newest).unwrap(), "newest");
        std::fs::remove_file(&newest).unwrap();
        rename_noreplace(&older, &newest).unwrap();
        assert_eq!(names(dir.path()), ["console.vv"]);
    }

    #[test]
    fn load_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.vv");
        let e = load(&path, true).unwrap_err();
        assert_eq!(e.line, None);
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("{}: cannot read: ", path.display())),
            "{s}"
        );
        assert!(read(&path, true).missing);
        let e = load(dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        let f = read(dir.path(), false);
        assert!(!f.missing);
        assert_eq!(f.stamp, None, "a directory has no contents to compare");
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, "fuzz.vv");
        }

        #[test]
        fn parse_never_panics_on_text(body in "[ -~\\t\\r\\n\\\\;=#\\[\\]é\u{feff}]{0,300}") {
            let text = format!("[virt-viewer]\n{body}");
            if let Err(e) = parse(text.as_bytes(), "fuzz.vv") {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }

        #[test]
        fn parse_never_panics_on_key_values(
            lines in proptest::collection::vec(
                (prop::sample::select(HONOURED), "[ -~\\\\;]{0,20}"), 0..20)
        ) {
            let mut text = String::from("[virt-viewer]\n");
            for (k, v) in lines {
                text.push_str(&format!("{k}={v}\n"));
            }
            let _ = parse(text.as_bytes(), "fuzz.vv");
        }
    }
}
