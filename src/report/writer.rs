//! Writing one report zip into the spool directory, atomically, and keeping the
//! spool within its limits. Synchronous on purpose: the daemon shell runs it on
//! `spawn_blocking`, so a slow or full disk never stalls the event loop.

use super::cause::DisconnectCause;
use super::redact;
use crate::config::ReportConfig;
use crate::secret::Secret;
use crate::time::Utc;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Report files are `spiced-disconnect-<channel>-<yyyymmddThhmmssZ>.zip`.
pub const FILE_PREFIX: &str = "spiced-disconnect-";
pub const FILE_SUFFIX: &str = ".zip";
/// In-progress files (deleted on failure; stale ones removed by retention).
const TEMP_PREFIX: &str = ".spiced-disconnect-";
const TEMP_SUFFIX: &str = ".tmp";
/// A temp file this old was left by a crash and may be removed.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// The zip entries.
pub const CAUSE_ENTRY: &str = "disconnect-cause.json";
pub const SESSION_ENTRY: &str = "session.json";
pub const PCAP_ENTRY: &str = "traffic.pcap";
pub const LOG_ENTRY: &str = "log.txt";
pub const LAST_FRAME_ENTRY: &str = "last-frame.png";

/// Where reports go when neither `--spool` nor `report.spool_dir` is set and
/// systemd gave no STATE_DIRECTORY.
pub const DEFAULT_SPOOL: &str = "/var/spool/spiced";

/// Everything one report holds: a [`super::ReportJob`] plus the capture and log
/// lines, consumed by [`write_report`].
#[derive(Debug, Clone)]
pub struct ReportInput {
    pub cause: DisconnectCause,
    /// Server name/uuid, caps per channel, redacted settings, config.
    pub session: serde_json::Value,
    /// [`super::Capture::to_pcap`] output (may be empty: the entry is then omitted).
    pub pcap: Vec<u8>,
    /// [`super::LogRing::snapshot`] output.
    pub log_lines: Vec<String>,
    /// Strings that must not appear in any entry (password, ticket, ...).
    pub secrets: Vec<Secret>,
    /// `last-frame.png` (the display mirror's last frame), if any.
    pub last_frame_png: Option<Vec<u8>>,
}

/// `--spool DIR`, else `report.spool_dir`, else `$STATE_DIRECTORY/reports` (the
/// first of systemd's colon-separated list), else `/var/spool/spiced`.
pub fn resolve_spool_dir(cli: Option<&Path>, cfg: &ReportConfig) -> PathBuf {
    let env = std::env::var_os("STATE_DIRECTORY");
    resolve_spool_dir_from(cli, cfg, env.as_deref())
}

/// [`resolve_spool_dir`] with the environment passed in (for tests).
pub fn resolve_spool_dir_from(
    cli: Option<&Path>,
    cfg: &ReportConfig,
    state_directory: Option<&OsStr>,
) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(p) = &cfg.spool_dir {
        return p.clone();
    }
    if let Some(first) = state_directory
        .and_then(|s| s.to_str())
        .and_then(|s| s.split(':').next())
        .filter(|s| !s.is_empty())
    {
        return Path::new(first).join("reports");
    }
    PathBuf::from(DEFAULT_SPOOL)
}

/// `usbredir:1` → `usbredir-1`; anything but `[A-Za-z0-9_-]` becomes `-`.
pub fn file_channel_name(channel: &str) -> String {
    let s: String = channel
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// The report's file name (without a collision suffix).
pub fn report_file_name(channel: &str, wall: SystemTime) -> String {
    format!(
        "{FILE_PREFIX}{}-{}{FILE_SUFFIX}",
        file_channel_name(channel),
        Utc::from_system(wall).compact()
    )
}

/// `name` with a collision number: `n` 1 is `name` itself, 2 and up go before
/// the suffix (`...Z.zip` → `...Z-2.zip`).
pub fn numbered_file_name(name: &str, n: u32) -> String {
    if n <= 1 {
        return name.to_string();
    }
    let stem = name.strip_suffix(FILE_SUFFIX).unwrap_or(name);
    format!("{stem}-{n}{FILE_SUFFIX}")
}

/// Builds the zip for `input` into `dir` (created if missing), fsyncs it,
/// renames it into place and applies retention. `wall` names the file and
/// fills `time`. On error nothing is left behind in `dir`.
pub fn write_report(
    dir: &Path,
    cfg: &ReportConfig,
    input: &ReportInput,
    wall: SystemTime,
) -> io::Result<PathBuf> {
    let name = report_file_name(&input.cause.channel, wall);
    write_report_named(dir, cfg, input, wall, &name)
}

/// [`write_report`] to the file `name` (chosen in advance, so the log line of the
/// disconnect can name it); only if another file already has that name does it
/// get a collision number.
pub fn write_report_named(
    dir: &Path,
    cfg: &ReportConfig,
    input: &ReportInput,
    wall: SystemTime,
    name: &str,
) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let entries = build_entries(input, wall)?;

    // Built in memory (bounded: the pcap is at most capture_max_bytes), so a
    // disk error surfaces on one plain write and never inside the zip encoder.
    let bytes = build_zip(&entries, wall)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.as_file_mut().write_all(&bytes)?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;

    let mut n = 1;
    let path = loop {
        let path = dir.join(numbered_file_name(name, n));
        match tmp.persist_noclobber(&path) {
            Ok(_) => break path,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                tmp = e.file;
                n += 1;
            }
            // Dropping e.file deletes the temp file.
            Err(e) => return Err(e.error),
        }
    };
    // Make the rename durable; a failure here does not undo the report.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }

    if let Err(e) = enforce_retention(dir, cfg.max_files, cfg.max_bytes, Some(&path)) {
        tracing::warn!(dir = %dir.display(), error = %e, "report spool retention failed");
    }
    Ok(path)
}

fn build_zip(entries: &[(&'static str, Vec<u8>)], wall: SystemTime) -> io::Result<Vec<u8>> {
    let mut zip = ZipWriter::new(io::Cursor::new(Vec::new()));
    let utc = Utc::from_system(wall);
    let mtime = zip::DateTime::from_date_and_time(
        u16::try_from(utc.year).unwrap_or(1980),
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
    )
    .unwrap_or_default();
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(mtime)
        .unix_permissions(0o640);
    for (name, data) in entries {
        zip.start_file(*name, opts).map_err(zip_err)?;
        zip.write_all(data)?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

fn zip_err(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// The scrubbed zip entries, in zip order.
fn build_entries(
    input: &ReportInput,
    wall: SystemTime,
) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
    let pats = redact::patterns(&input.secrets);
    let mut cause = input.cause.clone();
    cause.time = Utc::from_system(wall).rfc3339();
    let mut cause_v = serde_json::to_value(&cause).map_err(io::Error::other)?;
    redact::scrub_json(&mut cause_v, &input.secrets);
    let mut session_v = input.session.clone();
    redact::scrub_json(&mut session_v, &input.secrets);

    // JSON is scrubbed as values (above), never as bytes: a secret matching
    // part of a number or of the syntax would garble the file.
    let mut entries = vec![
        (CAUSE_ENTRY, json_bytes(&cause_v)?),
        (SESSION_ENTRY, json_bytes(&session_v)?),
    ];
    if !input.pcap.is_empty() {
        let mut pcap = input.pcap.clone();
        redact::scrub_binary(&mut pcap, &pats);
        entries.push((PCAP_ENTRY, pcap));
    }
    let mut log = input.log_lines.join("\n");
    if !log.is_empty() {
        log.push('\n');
    }
    entries.push((LOG_ENTRY, redact::scrub_text(log.into_bytes(), &pats)));
    if let Some(png) = &input.last_frame_png {
        entries.push((LAST_FRAME_ENTRY, png.clone()));
    }
    Ok(entries)
}

fn json_bytes(v: &serde_json::Value) -> io::Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v).map_err(io::Error::other)?;
    b.push(b'\n');
    Ok(b)
}

/// The `yyyymmddThhmmssZ` stamp in a report file name, if any.
fn stamp_of(name: &str) -> Option<&str> {
    name.strip_suffix(FILE_SUFFIX)?.split('-').rev().find(|p| {
        let b = p.as_bytes();
        b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
    })
}

/// Deletes the oldest `spiced-disconnect-*.zip` files until at most
/// `max_files` and `max_bytes` remain; `keep` (the report just written) is never
/// deleted. Other files are never touched, except this module's own stale temp
/// files. Returns the deleted paths.
pub fn enforce_retention(
    dir: &Path,
    max_files: usize,
    max_bytes: u64,
    keep: Option<&Path>,
) -> io::Result<Vec<PathBuf>> {
    struct Report {
        path: PathBuf,
        stamp: Option<String>,
        mtime: SystemTime,
        name: String,
        len: u64,
    }
    let now = SystemTime::now();
    let mut reports = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = ent.metadata() else { continue };
        // Symlinks and directories are never ours (DirEntry::metadata does not follow).
        if !meta.file_type().is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                let _ = fs::remove_file(ent.path());
            }
            continue;
        }
        if !(name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)) {
            continue;
        }
        reports.push(Report {
            path: ent.path(),
            stamp: stamp_of(&name).map(str::to_string),
            mtime,
            len: meta.len(),
            name,
        });
    }
    // Oldest first: by the time in the name, then mtime, then name.
    reports.sort_by(|a, b| (&a.stamp, a.mtime, &a.name).cmp(&(&b.stamp, b.mtime, &b.name)));
    let mut count = reports.len();
    let mut bytes: u64 = reports.iter().map(|r| r.len).sum();
    let mut deleted = Vec::new();
    for r in &reports {
        if count <= max_files && bytes <= max_bytes {
            break;
        }
        if keep.is_some_and(|k| k == r.path) {
            continue;
        }
        match fs::remove_file(&r.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        count -= 1;
        bytes = bytes.saturating_sub(r.len);
        deleted.push(r.path.clone());
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_dir_resolution() {
        let cfg = ReportConfig::default();
        let st = OsStr::new("/var/lib/spiced:/var/lib/other");
        assert_eq!(
            resolve_spool_dir_from(Some(Path::new("/x")), &cfg, Some(st)),
            PathBuf::from("/x")
        );
        let with_cfg = ReportConfig {
            spool_dir: Some("/cfg".into()),
            ..cfg.clone()
        };
        assert_eq!(
            resolve_spool_dir_from(None, &with_cfg, Some(st)),
            PathBuf::from("/cfg")
        );
        assert_eq!(
            resolve_spool_dir_from(None, &cfg, Some(st)),
            PathBuf::from("/var/lib/spiced/reports")
        );
        assert_eq!(
            resolve_spool_dir_from(None, &cfg, Some(OsStr::new(""))),
            PathBuf::from(DEFAULT_SPOOL)
        );
        assert_eq!(
            resolve_spool_dir_from(None, &cfg, None),
            PathBuf::from(DEFAULT_SPOOL)
        );
    }

    #[test]
    fn file_names() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(
            report_file_name("usbredir:1", t),
            "spiced-disconnect-usbredir-1-20240229T123456Z.zip"
        );
        assert_eq!(
            numbered_file_name("spiced-disconnect-main-20240229T123456Z.zip", 1),
            "spiced-disconnect-main-20240229T123456Z.zip"
        );
        assert_eq!(
            numbered_file_name("spiced-disconnect-main-20240229T123456Z.zip", 3),
            "spiced-disconnect-main-20240229T123456Z-3.zip"
        );
        assert_eq!(file_channel_name("../x"), "---x");
        assert_eq!(file_channel_name(""), "unknown");
        assert_eq!(
            stamp_of("spiced-disconnect-usbredir-1-20240229T123456Z.zip"),
            Some("20240229T123456Z")
        );
        assert_eq!(
            stamp_of("spiced-disconnect-main-20240229T123456Z-2.zip"),
            Some("20240229T123456Z")
        );
        assert_eq!(stamp_of("spiced-disconnect-main.zip"), None);
    }
}
