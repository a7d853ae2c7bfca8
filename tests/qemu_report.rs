//! Disconnect-cause reports written by the real spiced binary against a real
//! QEMU: one report per disconnect storm, its schema and counters, the pcap as
//! tshark decodes it, secrets kept out of every byte, the cooldown, retention
//! and a full disk, and `spiced report` on the result.
//!
//! The "QEMU killed mid-session" report is made once (`kill_report`) and shared
//! by the tests that read it; it lives under Cargo's target tmp dir so it can be
//! inspected after a run.

mod common;
use ::spiced::report::file_channel_name;
use ::spiced::time::Utc;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The 11 channels the harness's QEMU offers, as spiced names them.
const CHANNELS: usize = 11;
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// `[reconnect]` for a quick give-up: one attempt, 0.2 s after the drop.
const ONE_ATTEMPT: &str = "[reconnect]\nmax_attempts = 1\ninitial_delay_secs = 0.2\n";

/// A TOML basic string for `p` (Rust's debug escaping is a subset of TOML's).
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// `reconnect` section text plus a `[report]` section with `spool_dir` and `report`.
fn config(reconnect: &str, spool: &Path, report: &str) -> String {
    format!(
        "{reconnect}\n[report]\nspool_dir = {}\n{report}\n",
        toml_path(spool)
    )
}

/// Report zips in `dir`, sorted by name.
fn zips(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("spiced-disconnect-") && n.ends_with(".zip"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file name in `dir`, sorted.
fn all_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// (name, bytes) of every entry of a zip.
fn unzip(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::File::open(path).expect("open zip");
    let mut z = zip::ZipArchive::new(f).expect("a valid zip");
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).expect("zip entry");
            let mut b = Vec::new();
            e.read_to_end(&mut b).expect("read zip entry");
            (e.name().expect("entry name").to_string(), b)
        })
        .collect()
}

fn entry<'a>(entries: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_slice())
        .unwrap_or_else(|| panic!("no {name} in the zip"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The channel named by the daemon's `session lost after X s: CH failed first:` line.
fn failed_first(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("session lost after"))?;
    let rest = &line[line.find("session lost after ")?..];
    let rest = &rest[rest.find(" s: ")? + 4..];
    Some(rest[..rest.find(" failed first:")?].to_string())
}

/// `yyyymmddThhmmssZ` → `yyyy-mm-ddThh:mm:ssZ`.
fn stamp_to_rfc3339(s: &str) -> String {
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// The `yyyymmddThhmmssZ` stamp of a report named for `channel_file`.
fn stamp_of(name: &str, channel_file: &str) -> String {
    let prefix = format!("spiced-disconnect-{channel_file}-");
    let stamp = name
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(".zip"))
        .unwrap_or_else(|| panic!("{name} is not named for channel {channel_file}"));
    let b = stamp.as_bytes();
    assert!(
        b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit),
        "{name}: not a yyyymmddThhmmssZ stamp"
    );
    stamp.to_string()
}

/// QEMU killed mid-session with reconnects failing: what spiced left behind.
struct KillReport {
    zip: PathBuf,
    work: PathBuf,
    port: u16,
    log: String,
    failed_first: String,
}

/// Made once, by the first test that needs it; later callers wait for it.
fn kill_report() -> &'static KillReport {
    static CELL: OnceLock<KillReport> = OnceLock::new();
    CELL.get_or_init(make_kill_report)
}

fn make_kill_report() -> KillReport {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu_report_kill");
    let _ = std::fs::remove_dir_all(&work);
    let spool = work.join("spool");
    std::fs::create_dir_all(&spool).expect("create spool");
    let q = Qemu::start(QemuOpts::default());
    let port = q.port();
    let vv = write_vv(&work, &[("host", "127.0.0.1"), ("port", &port.to_string())]);
    let mut s = Spiced::start(&vv, &config(ONE_ATTEMPT, &spool, ""), &[]);
    assert!(
        q.wait_channel_count(CHANNELS, LINK_TIMEOUT),
        "QEMU sees {} channels",
        q.connected_channel_count()
    );
    assert!(s.wait_log("session fully linked: 11 channels", LINK_TIMEOUT));
    // Not a synchronisation: the scenario is "a session that ran for ~3 s".
    std::thread::sleep(Duration::from_secs(3));
    let before = Utc::from_system(SystemTime::now()).compact();
    q.kill();
    let code = s.wait_exit(Duration::from_secs(30));
    let after = Utc::from_system(SystemTime::now()).compact();
    let log = s.log();
    assert_eq!(code, Some(69), "retries exhausted; log:\n{log}");
    assert!(log.contains("reconnect attempt 1"), "{log}");
    assert!(log.contains("connect failed:"), "{log}");
    assert_eq!(
        log.matches("disconnect report written:").count(),
        1,
        "{log}"
    );

    let failed = failed_first(&log).unwrap_or_else(|| panic!("no failed-first line:\n{log}"));
    let names = zips(&spool);
    assert_eq!(names.len(), 1, "one report for the storm: {names:?}");
    let stamp = stamp_of(&names[0], &file_channel_name(&failed));
    assert!(
        before <= stamp && stamp <= after,
        "stamp {stamp} outside [{before}, {after}]"
    );
    let zip = spool.join(&names[0]);
    let size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "kill report: {} ({size} B), failed first: {failed}",
        names[0]
    );
    KillReport {
        zip,
        work,
        port,
        log,
        failed_first: failed,
    }
}

fn is_num_or_null(v: &Value) -> bool {
    v.is_null() || v.is_number()
}

/// QEMU killed after ~3 s of traffic; the failed reconnect falls in the cooldown.
#[test]
fn kill_mid_session_writes_one_complete_report() {
    if !require_qemu() {
        return;
    }
    let r = kill_report();
    let entries = unzip(&r.zip);
    let names: BTreeSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "disconnect-cause.json",
        "session.json",
        "traffic.pcap",
        "log.txt",
    ] {
        assert!(names.contains(want), "{want} missing: {names:?}");
    }

    let cause: Value =
        serde_json::from_slice(entry(&entries, "disconnect-cause.json")).expect("cause JSON");
    // ryll's fields, with ryll's types.
    assert_eq!(cause["channel"], r.failed_first.as_str());
    let msg = cause["error_message"].as_str().expect("error_message");
    assert!(!msg.is_empty() && msg != "error", "{msg}");
    let kind = &cause["cause"];
    assert!(
        kind == "server_closed" || kind == "reset",
        "cause {kind} for a killed server"
    );
    assert!(cause["error_kind"].is_null() || cause["error_kind"].is_string());
    if kind == "server_closed" {
        assert!(cause["error_kind"].is_null(), "EOF has no io kind");
    }
    assert_eq!(cause["keepalive_timeout_fired"], false);
    let uptime = cause["session_uptime_secs"].as_f64().expect("uptime");
    assert!((3.0..120.0).contains(&uptime), "uptime {uptime}");
    // spiced's fields.
    assert_eq!(cause["schema_version"], 1);
    assert_eq!(cause["spiced_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(cause["auto_reconnect_count"], 0);
    assert_eq!(cause["reports_skipped_since_last"], 0);
    assert!(cause["reconnect_state"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let file = r.zip.file_name().unwrap().to_string_lossy().into_owned();
    let stamp = stamp_of(&file, &file_channel_name(&r.failed_first));
    assert_eq!(cause["time"], stamp_to_rfc3339(&stamp).as_str());

    let per = cause["per_channel"].as_object().expect("per_channel");
    assert_eq!(per.len(), CHANNELS, "{:?}", per.keys().collect::<Vec<_>>());
    for ch in ["main", "display", "inputs", "cursor", "playback", "record"] {
        assert!(per.contains_key(ch), "{ch} missing");
    }
    for (ch, c) in per {
        for k in [
            "bytes_in",
            "bytes_out",
            "ping_recv_count",
            "pong_send_count",
            "client_keepalive_send_count",
            "messages_in",
            "messages_out",
            "keepalive_replies",
            "ack_send_count",
        ] {
            assert!(c[k].is_u64(), "{ch}.{k} = {}", c[k]);
        }
        for k in [
            "last_recv_ts_secs",
            "last_send_ts_secs",
            "last_ping_recv_ts_secs",
            "last_client_keepalive_send_ts_secs",
            "connected_at_secs",
            "closed_at_secs",
        ] {
            assert!(is_num_or_null(&c[k]), "{ch}.{k} = {}", c[k]);
        }
        assert!(c["close_reason"].is_null() || c["close_reason"].is_string());
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        assert!(n("bytes_in") > 0 && n("messages_in") > 0, "{ch}: {c}");
        assert!(n("bytes_out") > 0 && n("messages_out") > 0, "{ch}: {c}");
        assert!(n("ping_recv_count") >= 1, "{ch} got no server PING: {c}");
        let (pings, pongs) = (n("ping_recv_count"), n("pong_send_count"));
        assert!(pongs <= pings && pongs + 1 >= pings, "{ch}: {c}");
        assert_eq!(n("keepalive_replies"), 0, "{ch}");
        assert!(c["last_recv_ts_secs"].is_number(), "{ch}");
        assert!(c["last_ping_recv_ts_secs"].is_number(), "{ch}");
        let up = c["connected_at_secs"].as_f64().expect("connected_at_secs");
        assert!((0.0..uptime).contains(&up), "{ch} linked at {up}");
    }
    let main = &per["main"];
    let main_in = main["bytes_in"].as_u64().unwrap_or(0);
    assert!(
        main_in > 250_000,
        "main bytes_in {main_in}: net test missing?"
    );
    let failed = &per[r.failed_first.as_str()];
    assert!(failed["closed_at_secs"].is_number(), "{failed}");
    assert_eq!(failed["close_reason"], *kind);

    let session: Value =
        serde_json::from_slice(entry(&entries, "session.json")).expect("session JSON");
    let settings = &session["settings"];
    assert_eq!(settings["host"], "127.0.0.1");
    assert_eq!(settings["port"], r.port);
    assert!(settings["password"].is_null(), "no password in this .vv");
    assert!(settings["ca"].is_null());
    assert_eq!(session["config"]["reconnect"]["max_attempts"], 1);
    assert!(session["server"].is_object(), "{session}");

    let log = String::from_utf8_lossy(entry(&entries, "log.txt"));
    assert!(log.contains("session lost"), "log.txt:\n{log}");
    assert!(log.contains("session fully linked: 11 channels"), "{log}");

    let pcap = entry(&entries, "traffic.pcap");
    assert!(
        pcap.len() > 24
            && (pcap[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || pcap[..4] == [0x4d, 0x3c, 0xb2, 0xa1]),
        "not a pcap"
    );
    let sizes: Vec<String> = entries
        .iter()
        .map(|(n, b)| format!("{n} {} B", b.len()))
        .collect();
    eprintln!(
        "zip {} B; entries: {}; uptime {uptime:.2} s; main bytes_in {main_in}; cause {kind} on {}",
        std::fs::metadata(&r.zip).map(|m| m.len()).unwrap_or(0),
        sizes.join(", "),
        r.failed_first
    );
    assert!(r.log.contains("session lost after"));
}

fn tshark_available() -> bool {
    match Command::new("tshark").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "tshark is required in CI (apt-get install tshark)"
            );
            eprintln!("skipping: tshark not installed");
            false
        }
    }
}

/// The zip's pcap decodes as SPICE on the session's real port.
#[test]
fn kill_report_pcap_decodes_as_spice() {
    if !require_qemu() || !tshark_available() {
        return;
    }
    let r = kill_report();
    let entries = unzip(&r.zip);
    let file = r.work.join("traffic.pcap");
    std::fs::write(&file, entry(&entries, "traffic.pcap")).expect("write pcap");
    let decode = format!("tcp.port=={},spice", r.port);
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-d", &decode, "-Y", "spice", "-T", "fields"])
        .args(["-e", "tcp.stream", "-e", "spice.channel_type"])
        .args(["-e", "spice.message_type"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // stream -> channel type (from its link message), and messages per stream.
    let mut kind: BTreeMap<u32, String> = BTreeMap::new();
    let mut msgs: BTreeMap<u32, usize> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let Some(Ok(stream)) = f.next().map(str::parse::<u32>) else {
            continue;
        };
        let ct = f.next().unwrap_or("");
        if let Some(first) = ct.split(',').find(|s| !s.is_empty()) {
            kind.entry(stream).or_insert_with(|| first.to_string());
        }
        let n = f
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .count();
        *msgs.entry(stream).or_default() += n;
    }
    let total: usize = msgs.values().sum();
    let per_type = |t: &str| -> usize {
        kind.iter()
            .filter(|(_, k)| k.as_str() == t)
            .map(|(s, _)| msgs.get(s).copied().unwrap_or(0))
            .sum()
    };
    let (main, display) = (per_type("1"), per_type("2"));
    eprintln!(
        "pcap {} B: {} SPICE streams with a link message, {total} SPICE messages decoded \
         (main {main}, display {display})",
        entry(&entries, "traffic.pcap").len(),
        kind.len()
    );
    assert_eq!(kind.len(), CHANNELS, "streams by channel type: {kind:?}");
    assert!(main > 0, "no SPICE messages on the main stream");
    assert!(display > 0, "no SPICE messages on the display stream");
}

/// `spiced report` on the kill report: summary and --json.
#[test]
fn spiced_report_summarises_the_kill_report() {
    if !require_qemu() {
        return;
    }
    let r = kill_report();
    let out = Command::new(spiced_bin())
        .arg("report")
        .arg(&r.zip)
        .output()
        .expect("run spiced report");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf8 summary");
    let entries = unzip(&r.zip);
    let raw = entry(&entries, "disconnect-cause.json");
    let cause: Value = serde_json::from_slice(raw).expect("cause JSON");
    let want = format!(
        "cause:      {} on channel {}",
        cause["cause"].as_str().unwrap_or("?"),
        r.failed_first
    );
    assert!(text.contains(&want), "no `{want}` in:\n{text}");
    let per = cause["per_channel"].as_object().expect("per_channel");
    let (_, table) = text
        .split_once("Per channel")
        .unwrap_or_else(|| panic!("no table:\n{text}"));
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|c| per.contains_key(c.trim_end_matches('*')))
        })
        .collect();
    assert_eq!(rows.len(), CHANNELS, "rows:\n{}", rows.join("\n"));
    let starred: Vec<&&str> = rows.iter().filter(|l| l.contains('*')).collect();
    assert_eq!(starred.len(), 1, "{starred:?}");
    assert!(starred[0]
        .trim_start()
        .starts_with(&format!("{}*", r.failed_first)));
    eprintln!("spiced report:\n{text}");

    let out = Command::new(spiced_bin())
        .args(["report", "--json"])
        .arg(&r.zip)
        .output()
        .expect("run spiced report --json");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("--json output is JSON");
    assert_eq!(printed, cause);
}

/// A password and a .vv `ca` never reach any byte of the zip.
#[test]
fn secrets_never_reach_the_zip() {
    if !require_qemu() {
        return;
    }
    const PASSWORD: &str = "Pw-report-7f3c9a1e";
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("certs"), "spiced-report-test");
    let spool = dir.path().join("spool");
    let q = Qemu::start(QemuOpts {
        password: Some(PASSWORD.into()),
        tls: Some(&certs),
        plain_port: false,
        ..Default::default()
    });
    let ca = certs.ca_pem();
    let vv = write_vv(
        dir.path(),
        &[
            ("host", "127.0.0.1"),
            ("tls-port", &q.tls_port().to_string()),
            ("password", PASSWORD),
            ("ca", &ca),
            ("host-subject", &certs.host_subject()),
        ],
    );
    let mut s = Spiced::start(&vv, &config(ONE_ATTEMPT, &spool, ""), &[]);
    assert!(
        q.wait_channel_count(CHANNELS, LINK_TIMEOUT),
        "QEMU sees {}",
        q.connected_channel_count()
    );
    assert!(s.wait_log("session fully linked: 11 channels", LINK_TIMEOUT));
    assert!(s.log().contains("up (TLS)"), "{}", s.log());
    q.kill();
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(69),
        "{}",
        s.log()
    );
    let names = zips(&spool);
    assert_eq!(names.len(), 1, "{names:?}");
    let zip = spool.join(&names[0]);

    // The PEM body lines (base64) and the PEM as a whole.
    let body: Vec<&str> = ca
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(body.len() > 5, "a real CA PEM");
    let zip_bytes = std::fs::read(&zip).unwrap();
    assert!(
        !contains(&zip_bytes, PASSWORD.as_bytes()),
        "password in zip file"
    );
    let entries = unzip(&zip);
    let mut total = 0;
    for (name, bytes) in &entries {
        total += bytes.len();
        assert!(!contains(bytes, PASSWORD.as_bytes()), "password in {name}");
        assert!(!contains(bytes, ca.trim().as_bytes()), "ca PEM in {name}");
        assert!(!contains(bytes, b"BEGIN CERTIFICATE"), "a PEM in {name}");
        for l in &body {
            assert!(!contains(bytes, l.as_bytes()), "ca line {l} in {name}");
        }
    }
    let session: Value = serde_json::from_slice(entry(&entries, "session.json")).unwrap();
    assert_eq!(session["settings"]["password"], "<redacted>");
    assert_eq!(session["settings"]["ca"], "<redacted>");
    assert!(!s.log().contains(PASSWORD), "password in spiced's log");
    eprintln!(
        "secrets: zip {} B, {} entries, {total} B unpacked, none holds the password or the ca",
        zip_bytes.len(),
        entries.len()
    );
}

/// Two disconnects 10 s apart write one report; the skipped one is counted
/// in the next report once the cooldown is over.
#[test]
fn cooldown_swallows_the_second_disconnect() {
    if !require_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    // Enough attempts that spiced never gives up here; a 15 s cooldown so the
    // third disconnect (after it) is reported.
    let reconnect = "[reconnect]\nmax_attempts = 20\ninitial_delay_secs = 0.2\nfactor = 1.5\n\
                     max_delay_secs = 1\n";
    let mut s = Spiced::start_env(
        &vv,
        &config(reconnect, &spool, "cooldown_secs = 15"),
        &[],
        &[("RUST_LOG", "info,spiced::report=debug")],
    );
    let linked = "session fully linked: 11 channels";
    assert!(s.wait_log(linked, LINK_TIMEOUT), "{}", s.log());

    let first = std::time::Instant::now();
    q.kill();
    assert!(s.wait_log("disconnect report written", Duration::from_secs(15)));
    assert_eq!(zips(&spool).len(), 1);
    q.restart_same_ports();
    assert!(s.wait_log_count(linked, 2, LINK_TIMEOUT), "{}", s.log());
    assert!(q.wait_channel_count(CHANNELS, LINK_TIMEOUT));

    // The scenario: the second disconnect comes 10 s after the first.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(first.elapsed()));
    let skipped_before = s.log().matches("disconnect report skipped").count();
    q.kill();
    assert!(s.wait_log_count("session lost after", 2, Duration::from_secs(15)));
    assert!(
        s.wait_log_count(
            "disconnect report skipped",
            skipped_before + 1,
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
    assert_eq!(zips(&spool).len(), 1, "the cooldown swallows the second");
    assert_eq!(s.log().matches("disconnect report written").count(), 1);

    // A third disconnect after the cooldown is reported and counts the skipped.
    q.restart_same_ports();
    assert!(s.wait_log_count(linked, 3, LINK_TIMEOUT), "{}", s.log());
    assert!(q.wait_channel_count(CHANNELS, LINK_TIMEOUT));
    std::thread::sleep(Duration::from_secs(16).saturating_sub(first.elapsed()));
    q.kill();
    assert!(s.wait_log_count("disconnect report written", 2, Duration::from_secs(15)));
    assert_eq!(s.stop(), Some(0), "{}", s.log());
    let names = zips(&spool);
    assert_eq!(names.len(), 2, "{names:?}");
    let counts: Vec<u64> = names
        .iter()
        .map(|n| {
            let e = unzip(&spool.join(n));
            let c: Value = serde_json::from_slice(entry(&e, "disconnect-cause.json")).unwrap();
            c["reports_skipped_since_last"].as_u64().unwrap()
        })
        .collect();
    // Names sort by time: the first report skipped nothing, the second counts
    // every disconnect the cooldown swallowed (the second drop and any failed
    // reconnect attempt in between).
    eprintln!(
        "cooldown: reports_skipped_since_last {counts:?}; log:\n{}",
        s.lines_with("disconnect report").join("\n")
    );
    assert_eq!(counts[0], 0);
    assert!(counts[1] >= 1, "{counts:?}");
    // Each skip is logged (with its running count) right after the disconnect's
    // log line; those before the third drop are the ones the report counts.
    let log = s.log();
    let third = log
        .match_indices("session lost after")
        .nth(2)
        .map_or(log.len(), |(i, _)| i);
    let reporter_skips = log[..third]
        .lines()
        .filter(|l| l.contains("disconnect report skipped (cooldown)") && l.contains("skipped="))
        .count();
    assert_eq!(counts[1], reporter_skips as u64, "{log}");
}

/// Retention with the real binary: cooldown 0, max_files 2 → the newest two
/// of the storm's reports remain; other files are untouched.
#[test]
fn retention_keeps_the_newest_reports() {
    if !require_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("notes.txt"), "not a report").unwrap();
    let old = "spiced-disconnect-main-20000101T000000Z.zip";
    std::fs::write(spool.join(old), "an old report").unwrap();
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let reconnect = "[reconnect]\nmax_attempts = 3\ninitial_delay_secs = 0.2\nfactor = 1\n";
    let mut s = Spiced::start(
        &vv,
        &config(reconnect, &spool, "cooldown_secs = 0\nmax_files = 2"),
        &[],
    );
    assert!(s.wait_log("session fully linked: 11 channels", LINK_TIMEOUT));
    q.kill();
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(69),
        "{}",
        s.log()
    );
    let written: Vec<String> = s
        .lines_with("disconnect report written: ")
        .iter()
        .filter_map(|l| {
            let p = &l[l.find("written: ")? + 9..];
            // The path, without the fields after it (` report=...`).
            let p = p.split(" report=").next()?;
            Path::new(p.trim())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect();
    // The lost session and three failed attempts: four reports.
    assert_eq!(written.len(), 4, "{}", s.log());
    let mut newest: Vec<String> = written[2..].to_vec();
    newest.sort();
    assert_eq!(zips(&spool), newest, "written: {written:?}");
    assert!(spool.join("notes.txt").exists());
    assert_eq!(all_files(&spool).len(), 3, "{:?}", all_files(&spool));
    eprintln!("retention: wrote {written:?}, kept {newest:?}");
}

/// A 64 KiB tmpfs, unmounted on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    /// None when mounting is impossible (not root); in CI that is a failure.
    fn mount() -> Option<TinyFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run the tests as root)"
            );
            return None;
        }
        Some(TinyFs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A full spool: one warning, the daemon carries on, nothing left behind.
#[test]
fn full_spool_warns_once_and_carries_on() {
    if !require_qemu() {
        return;
    }
    let Some(fs) = TinyFs::mount() else {
        eprintln!("skipping: cannot mount a tmpfs (not root)");
        return;
    };
    let spool = fs.path().to_path_buf();
    // Fill the tmpfs to the last byte so no report can fit.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(spool.join("filler.bin")).unwrap();
        let chunk = [0x5au8; 4096];
        let mut n = 0usize;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            assert!(n <= 1 << 20, "a 64 KiB tmpfs took more than 1 MiB");
        }
        let _ = f.sync_all();
    }
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let vv = write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &q.port().to_string())],
    );
    let reconnect = "[reconnect]\nmax_attempts = 2\ninitial_delay_secs = 0.2\nfactor = 1\n";
    let mut s = Spiced::start_env(
        &vv,
        &config(reconnect, &spool, "cooldown_secs = 0"),
        &[],
        &[("RUST_LOG", "info,spiced::report=debug")],
    );
    assert!(s.wait_log("session fully linked: 11 channels", LINK_TIMEOUT));
    q.kill();
    let code = s.wait_exit(Duration::from_secs(30));
    let log = s.log();
    assert_eq!(code, Some(69), "gives up as usual:\n{log}");
    assert!(log.contains("reconnect attempt 2"), "{log}");
    assert_eq!(
        log.matches("cannot write disconnect reports").count(),
        1,
        "one warning:\n{log}"
    );
    // Every later failure (two failed attempts) is at debug level only.
    assert_eq!(
        log.matches("disconnect report not written").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("disconnect report written"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(all_files(&spool), ["filler.bin"], "nothing left behind");
    eprintln!(
        "full spool: {}",
        s.lines_with("cannot write disconnect reports").join("")
    );
}
