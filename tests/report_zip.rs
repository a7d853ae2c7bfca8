//! Report zips end to end: contents and schema, secret scrubbing, cooldown with a
//! fake clock, spool retention, disk failures, and the `spiced report` summary.

use spiced::channel::counters::ChannelCounters;
use spiced::config::ReportConfig;
use spiced::report::{
    enforce_retention, summarize, write_report, Capture, Direction, DisconnectCause, LogRing,
    RecordKind, ReportInput, Reporter,
};
use spiced::secret::Secret;
use spiced::wire::{ChannelId, ChannelType};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PASSWORD: &str = "s3cr3t-Pa55word";

fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2024-02-29T12:34:56Z
const T0: u64 = 1_709_210_096;

fn input(channel: &str) -> ReportInput {
    let mut cause = DisconnectCause::new(channel, "reset", "connection reset by peer");
    cause.error_kind = Some("ConnectionReset".into());
    cause.session_uptime_secs = 125.5;
    cause.auto_reconnect_count = 3;
    cause.reconnect_state = "backoff 4s".into();
    cause.reports_skipped_since_last = 2;
    cause.per_channel.insert(
        "main".into(),
        ChannelCounters {
            bytes_in: 123_456,
            bytes_out: 2048,
            messages_in: 120,
            messages_out: 60,
            last_recv_ts_secs: Some(120.0),
            last_send_ts_secs: Some(121.5),
            last_ping_recv_ts_secs: Some(115.0),
            ping_recv_count: 16,
            pong_send_count: 16,
            connected_at_secs: Some(0.1),
            closed_at_secs: Some(125.5),
            close_reason: Some("reset".into()),
            ..Default::default()
        },
    );
    cause.per_channel.insert(
        "usbredir:1".into(),
        ChannelCounters {
            client_keepalive_send_count: 8,
            last_client_keepalive_send_ts_secs: Some(110.0),
            ..Default::default()
        },
    );
    ReportInput {
        cause,
        session: serde_json::json!({"server": {"name": "vm1"}, "caps": {"main": [11]}}),
        pcap: Vec::new(),
        log_lines: vec!["2024-02-29T12:34:50.000Z  INFO spiced: linked".into()],
        secrets: vec![Secret::new(PASSWORD)],
        last_frame_png: None,
    }
}

fn unzip(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        out.push((f.name().unwrap().to_string(), b));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn reports_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("spiced-disconnect-") && n.ends_with(".zip"))
        .collect();
    v.sort();
    v
}

fn all_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn zip_layout_and_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("does/not/exist/yet");
    let cfg = ReportConfig::default();
    let mut inp = input("usbredir:1");
    let mut cap = Capture::new(&cfg);
    cap.record(
        ChannelId::MAIN,
        Direction::ToClient,
        Duration::ZERO,
        RecordKind::Message,
        &[4, 0, 0, 0, 0, 0],
    );
    inp.pcap = cap.to_pcap(5900, T0 as f64);
    let path = write_report(&spool, &cfg, &inp, wall(T0)).unwrap();
    assert_eq!(
        path.file_name().unwrap(),
        "spiced-disconnect-usbredir-1-20240229T123456Z.zip"
    );
    let entries = unzip(&path);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "disconnect-cause.json",
            "session.json",
            "traffic.pcap",
            "log.txt"
        ]
    );
    let cause: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(cause["channel"], "usbredir:1");
    assert_eq!(cause["cause"], "reset");
    assert_eq!(cause["time"], "2024-02-29T12:34:56Z");
    assert_eq!(cause["schema_version"], 1);
    assert_eq!(cause["spiced_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(cause["reports_skipped_since_last"], 2);
    assert_eq!(cause["per_channel"]["main"]["bytes_in"], 123_456);
    assert_eq!(cause["per_channel"]["main"]["close_reason"], "reset");
    assert_eq!(
        cause["per_channel"]["usbredir:1"]["client_keepalive_send_count"],
        8
    );
    assert_eq!(&entries[2].1[..4], &0xa1b2_c3d4u32.to_le_bytes());
    assert_eq!(
        entries[3].1,
        b"2024-02-29T12:34:50.000Z  INFO spiced: linked\n"
    );
    // Nothing but the report in the spool (no temp file left).
    assert_eq!(all_files(&spool).len(), 1);
}

#[test]
fn no_secret_survives_anywhere() {
    use tracing_subscriber::layer::SubscriberExt;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ReportConfig {
        capture_input_payloads: true,
        ..ReportConfig::default()
    };
    let ring = LogRing::new(cfg.log_lines);
    let sub = tracing_subscriber::registry().with(ring.clone());
    tracing::subscriber::with_default(sub, || {
        // A careless log line that leaks the password.
        tracing::warn!(password = PASSWORD, "link failed with {PASSWORD}");
    });
    let mut inp = input("main");
    inp.log_lines = ring.snapshot();
    assert!(
        inp.log_lines[0].contains(PASSWORD),
        "precondition: the log line leaks"
    );
    inp.cause.error_message = format!("server said: bad password {PASSWORD}");
    inp.session = serde_json::json!({
        "settings": {"password": PASSWORD, "host": "h"},
        PASSWORD: [format!("x{PASSWORD}y")],
    });
    // Clipboard data (kept: capture_input_payloads) carrying the password.
    let mut cap = Capture::new(&cfg);
    let mut agent = 107u16.to_le_bytes().to_vec();
    agent.extend_from_slice(&(PASSWORD.len() as u32).to_le_bytes());
    agent.extend_from_slice(PASSWORD.as_bytes());
    cap.record(
        ChannelId::MAIN,
        Direction::ToServer,
        Duration::ZERO,
        RecordKind::Message,
        &agent,
    );
    inp.pcap = cap.to_pcap(5900, T0 as f64);
    assert!(
        contains(&inp.pcap, PASSWORD.as_bytes()),
        "precondition: the pcap leaks"
    );

    let path = write_report(tmp.path(), &cfg, &inp, wall(T0)).unwrap();
    let raw = std::fs::read(&path).unwrap();
    assert!(!contains(&raw, PASSWORD.as_bytes()));
    for (name, bytes) in unzip(&path) {
        assert!(!contains(&bytes, PASSWORD.as_bytes()), "secret in {name}");
        if name.ends_with(".json") {
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("still valid JSON");
            assert!(!v.to_string().contains(PASSWORD));
        }
        if name == "log.txt" || name == "disconnect-cause.json" {
            assert!(
                contains(&bytes, b"<redacted>"),
                "{name} marks the redaction"
            );
        }
    }
}

#[test]
fn cooldown_with_fake_clock_writes_one_and_counts_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ReportConfig::default();
    let mut rep = Reporter::new(tmp.path().to_path_buf(), &cfg);
    let mut disconnect = |mono: u64, wall_secs: u64| -> Option<PathBuf> {
        let skipped = rep.should_write(Duration::from_secs(mono))?;
        let mut inp = input("main");
        inp.cause.reports_skipped_since_last = skipped;
        let res = write_report(rep.dir(), &cfg, &inp, wall(wall_secs));
        rep.record_result(&res);
        Some(res.unwrap())
    };
    let first = disconnect(1000, T0).expect("first disconnect reported");
    assert!(
        disconnect(1010, T0 + 10).is_none(),
        "10 s later: within cooldown"
    );
    assert_eq!(reports_in(tmp.path()).len(), 1);
    let third = disconnect(1070, T0 + 70).expect("after 60 s: reported");
    assert_eq!(reports_in(tmp.path()).len(), 2);
    let skipped = |p: &Path| {
        let v: serde_json::Value = serde_json::from_slice(&unzip(p)[0].1).unwrap();
        v["reports_skipped_since_last"].as_u64().unwrap()
    };
    assert_eq!(skipped(&first), 0);
    assert_eq!(skipped(&third), 1);
}

#[test]
fn retention_keeps_newest_fifty_and_leaves_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for other in [
        "notes.txt",
        "other.zip",
        "spiced-disconnect-main.txt",
        "xspiced-disconnect-a.zip",
    ] {
        std::fs::write(dir.join(other), b"keep me").unwrap();
    }
    let cfg = ReportConfig::default();
    let mut written = Vec::new();
    for i in 0..60u64 {
        let ch = if i % 2 == 0 { "main" } else { "display" };
        let p = write_report(dir, &cfg, &input(ch), wall(T0 + i * 60)).unwrap();
        written.push(p.file_name().unwrap().to_str().unwrap().to_string());
    }
    let left = reports_in(dir);
    assert_eq!(left.len(), 50);
    for old in &written[..10] {
        assert!(
            !left.contains(old),
            "{old} (one of the 10 oldest) should be gone"
        );
    }
    for new in &written[10..] {
        assert!(left.contains(new), "{new} should remain");
    }
    for other in [
        "notes.txt",
        "other.zip",
        "spiced-disconnect-main.txt",
        "xspiced-disconnect-a.zip",
    ] {
        assert_eq!(std::fs::read(dir.join(other)).unwrap(), b"keep me");
    }
}

#[test]
fn retention_honours_max_bytes_and_never_deletes_the_new_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for d in 1..=6 {
        let name = format!("spiced-disconnect-main-2024010{d}T000000Z.zip");
        std::fs::write(dir.join(name), vec![0u8; 1000]).unwrap();
    }
    let deleted = enforce_retention(dir, 50, 3500, None).unwrap();
    assert_eq!(deleted.len(), 3);
    assert_eq!(
        reports_in(dir),
        [
            "spiced-disconnect-main-20240104T000000Z.zip",
            "spiced-disconnect-main-20240105T000000Z.zip",
            "spiced-disconnect-main-20240106T000000Z.zip"
        ]
    );
    // A budget smaller than one report still keeps the one just written.
    let cfg = ReportConfig {
        max_bytes: 10,
        ..ReportConfig::default()
    };
    let p = write_report(dir, &cfg, &input("main"), wall(T0)).unwrap();
    assert_eq!(reports_in(dir), [p.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn unwritable_spool_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    let spool = file.join("reports");
    let cfg = ReportConfig::default();
    let mut rep = Reporter::new(spool.clone(), &cfg);
    let res = write_report(&spool, &cfg, &input("main"), wall(T0));
    assert!(res.is_err());
    assert!(rep.record_result(&res), "first failure warns");
    let res = write_report(&spool, &cfg, &input("main"), wall(T0 + 60));
    assert!(
        !rep.record_result(&res),
        "second failure does not warn again"
    );
    assert_eq!(all_files(tmp.path()), ["file.txt"]);
}

/// A 64 KiB tmpfs, unmounted on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount() -> Option<TinyFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyFs(dir))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_disk_is_an_error_and_leaves_no_temp_file() {
    let Some(fs) = TinyFs::mount() else {
        eprintln!("note: cannot mount a tmpfs (not root?); skipping the full-disk test");
        return;
    };
    let spool = fs.0.path().join("reports");
    let cfg = ReportConfig::default();
    // 256 KiB of incompressible bytes cannot fit in 64 KiB.
    let mut inp = input("main");
    let mut x: u32 = 12345;
    inp.pcap = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let res = write_report(&spool, &cfg, &inp, wall(T0));
    let err = res.expect_err("disk full must be an error");
    eprintln!("full disk error: {err}");
    assert!(
        all_files(&spool).is_empty(),
        "left behind: {:?}",
        all_files(&spool)
    );
    // A small report still fits afterwards: the spool was not left full.
    let ok = write_report(&spool, &cfg, &input("main"), wall(T0 + 60));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn summary_of_a_generated_report() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inp = input("main");
    inp.cause.keepalive_timeout_fired = true;
    let path = write_report(tmp.path(), &ReportConfig::default(), &inp, wall(T0)).unwrap();
    let out = summarize(&path).unwrap();
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].contains("reset on channel main"), "{out}");
    assert!(
        out.contains("2024-02-29T12:34:56Z, after 2m 05s of session"),
        "{out}"
    );
    assert!(
        out.contains("connection reset by peer [ConnectionReset]"),
        "{out}"
    );
    assert!(out.contains("keepalive:"), "{out}");
    assert!(
        out.contains("backoff 4s (3 automatic reconnects so far)"),
        "{out}"
    );
    assert!(
        out.contains("2 earlier disconnect(s) not reported"),
        "{out}"
    );
    let main = lines
        .iter()
        .find(|l| l.trim_start().starts_with("main*"))
        .unwrap();
    for cell in [
        "120.6 KiB",
        "2.0 KiB",
        "120",
        "60",
        "-5.5s",
        "-4.0s",
        "16/16 (-10.5s)",
        "reset (-0.0s)",
    ] {
        assert!(main.contains(cell), "{cell:?} missing in {main:?}");
    }
    let usb = lines
        .iter()
        .find(|l| l.trim_start().starts_with("usbredir:1"))
        .unwrap();
    assert!(usb.contains("8 (-15.5s)") && usb.contains("never"), "{usb}");
    assert!(
        lines.len() <= 16,
        "short enough for a terminal: {}",
        lines.len()
    );
}

#[test]
fn summary_errors_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.zip");
    let e = summarize(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.zip"), "{e}");
    assert_eq!(
        spiced::report::cli_main(&missing, false),
        spiced::exit::FAILURE
    );

    let notzip = tmp.path().join("notzip.zip");
    std::fs::write(&notzip, b"hello").unwrap();
    assert!(summarize(&notzip)
        .unwrap_err()
        .to_string()
        .contains("not a zip"));
    assert_eq!(
        spiced::report::cli_main(&notzip, true),
        spiced::exit::FAILURE
    );

    let nocause = tmp.path().join("nocause.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&nocause).unwrap());
        z.start_file("other.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut z, b"x").unwrap();
        z.finish().unwrap();
    }
    assert!(summarize(&nocause)
        .unwrap_err()
        .to_string()
        .contains("no disconnect-cause.json"));
    assert_eq!(
        spiced::report::cli_main(&nocause, false),
        spiced::exit::FAILURE
    );

    let good = write_report(
        tmp.path(),
        &ReportConfig::default(),
        &input("main"),
        wall(T0),
    )
    .unwrap();
    assert_eq!(spiced::report::cli_main(&good, false), spiced::exit::OK);
    assert_eq!(spiced::report::cli_main(&good, true), spiced::exit::OK);
    let raw = spiced::report::read_cause_json(&good).unwrap();
    assert_eq!(
        raw,
        unzip(&good)[0].1,
        "--json prints the entry byte for byte"
    );
}

#[test]
fn channel_type_names_in_file_names() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = ChannelId::new(ChannelType::Usbredir, 2).to_string();
    let p = write_report(tmp.path(), &ReportConfig::default(), &input(&ch), wall(T0)).unwrap();
    assert_eq!(
        p.file_name().unwrap(),
        "spiced-disconnect-usbredir-2-20240229T123456Z.zip"
    );
    // Same channel, same second: a second report does not overwrite the first.
    let q = write_report(tmp.path(), &ReportConfig::default(), &input(&ch), wall(T0)).unwrap();
    assert_eq!(
        q.file_name().unwrap(),
        "spiced-disconnect-usbredir-2-20240229T123456Z-2.zip"
    );
}

/// A zip holding one deflated `disconnect-cause.json` of `size` (>= 1) zero
/// bytes, written by hand (fixed-Huffman literal 0, length-258 distance-1
/// matches, literal 0s for the rest): 1 GB expands from ~7 MB without ever
/// compressing it. Without `with_crc` the CRC is left 0: a reader that stops
/// at a limit never checks it.
fn zero_bomb(path: &Path, size: u64, with_crc: bool) {
    let crc = if with_crc { crc32_of_zeros(size) } else { 0 };
    let matches = (size - 1) / 258;
    let extra = (size - 1) % 258;
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, v: u64, len: u32) {
            self.acc |= v << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, c: u64, len: u32) {
            let mut r = 0;
            for i in 0..len {
                r |= ((c >> i) & 1) << (len - 1 - i);
            }
            self.put(r, len);
        }
    }
    let mut b = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // BTYPE = fixed Huffman
    b.code(0b0011_0000, 8); // literal 0
    for _ in 0..matches {
        b.code(0b1100_0101, 8); // length code 285: 258 bytes
        b.code(0, 5); // distance code 0: distance 1
    }
    for _ in 0..extra {
        b.code(0b0011_0000, 8);
    }
    b.code(0, 7); // end of block
    if b.n > 0 {
        b.out.push(b.acc as u8);
    }
    let data = b.out;
    let name = b"disconnect-cause.json";
    let mut z = Vec::new();
    let u16le = |z: &mut Vec<u8>, v: u16| z.extend_from_slice(&v.to_le_bytes());
    let u32le = |z: &mut Vec<u8>, v: u32| z.extend_from_slice(&v.to_le_bytes());
    // Local file header.
    u32le(&mut z, 0x0403_4b50);
    for v in [20u16, 0, 8, 0, 0x21] {
        u16le(&mut z, v);
    }
    u32le(&mut z, crc);
    u32le(&mut z, data.len() as u32);
    u32le(&mut z, size as u32);
    u16le(&mut z, name.len() as u16);
    u16le(&mut z, 0);
    z.extend_from_slice(name);
    z.extend_from_slice(&data);
    // Central directory.
    let cd = z.len() as u32;
    u32le(&mut z, 0x0201_4b50);
    for v in [20u16, 20, 0, 8, 0, 0x21] {
        u16le(&mut z, v);
    }
    u32le(&mut z, crc);
    u32le(&mut z, data.len() as u32);
    u32le(&mut z, size as u32);
    for v in [name.len() as u16, 0, 0, 0, 0] {
        u16le(&mut z, v);
    }
    u32le(&mut z, 0); // external attributes
    u32le(&mut z, 0); // local header offset
    z.extend_from_slice(name);
    let cd_len = z.len() as u32 - cd;
    // End of central directory.
    u32le(&mut z, 0x0605_4b50);
    for v in [0u16, 0, 1, 1] {
        u16le(&mut z, v);
    }
    u32le(&mut z, cd_len);
    u32le(&mut z, cd);
    u16le(&mut z, 0);
    std::fs::write(path, z).unwrap();
}

/// CRC-32 (IEEE) of `n` zero bytes, bitwise: slow but only for a few MiB.
fn crc32_of_zeros(n: u64) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut c = !0u32;
    for _ in 0..n {
        c = table[(c & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn zip_with_cause(path: &Path, cause: &[u8]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    z.start_file(
        "disconnect-cause.json",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    std::io::Write::write_all(&mut z, cause).unwrap();
    z.finish().unwrap();
}

#[test]
fn oversized_cause_is_refused_without_reading_it_all() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.zip");
    zero_bomb(&bomb, 1 << 30, false); // 1 GiB declared and inflated
    let started = std::time::Instant::now();
    let e = spiced::report::read_cause_json(&bomb).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: disconnect-cause.json is larger than the 16 MiB limit",
            bomb.display()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped at the limit: {:?}",
        started.elapsed()
    );
    assert_eq!(spiced::report::cli_main(&bomb, true), spiced::exit::FAILURE);
    assert!(summarize(&bomb)
        .unwrap_err()
        .to_string()
        .contains("16 MiB limit"));

    // Exactly at the limit is not "larger" (it is just not JSON here); one
    // byte more is.
    let limit = tmp.path().join("limit.zip");
    let at_limit = spiced::report::MAX_CAUSE_BYTES;
    zero_bomb(&limit, at_limit, true);
    let raw = spiced::report::read_cause_json(&limit).unwrap();
    assert_eq!(raw.len() as u64, at_limit);
    zero_bomb(&limit, at_limit + 1, false);
    let e = spiced::report::read_cause_json(&limit).unwrap_err();
    assert!(
        e.to_string().contains("larger than the 16 MiB limit"),
        "{e}"
    );
}

#[test]
fn json_output_is_checked_and_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.zip");
    zip_with_cause(&bad, b"{\"cause\": \"reset\", ");
    let e = spiced::report::cause_json_for_output(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("disconnect-cause.json is not valid JSON"), "{e}");
    assert_eq!(spiced::report::cli_main(&bad, true), spiced::exit::FAILURE);
    // A raw ESC inside a string is not JSON either.
    zip_with_cause(&bad, b"{\"cause\": \"\x1b[2J\"}");
    assert_eq!(spiced::report::cli_main(&bad, true), spiced::exit::FAILURE);

    // DEL and C1 (CSI) are legal raw in JSON strings: printed as \u escapes.
    let c1 = tmp.path().join("c1.zip");
    let text = "{\"cause\": \"a\u{9b}31m\u{7f}\",\n \"error_message\": \"\\u001b[2J\"}";
    zip_with_cause(&c1, text.as_bytes());
    let out = String::from_utf8(spiced::report::cause_json_for_output(&c1).unwrap()).unwrap();
    assert_eq!(
        out,
        "{\"cause\": \"a\\u009b31m\\u007f\",\n \"error_message\": \"\\u001b[2J\"}\n"
    );
    let a: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(a, b, "same JSON value");

    // The summary escapes what the file holds.
    let s = summarize(&c1).unwrap();
    assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
    assert!(s.contains("a\\u{9b}31m\\x7f"), "{s}");
    assert!(s.contains("\\x1b[2J"), "{s}");
}

/// A refresh command's ordinary arguments are not secrets: with `--vmid 101`
/// the number 1101 and the text "vm 101" stay as they are, both JSON entries
/// parse and `spiced report` summarises the file; what is a secret (the
/// password, the value after `--token`) is still scrubbed from every entry.
#[test]
fn ordinary_refresh_arguments_are_not_secrets() {
    use spiced::config::Config;
    use spiced::vv::ConnectionSettings;
    const TOKEN: &str = "T0k3nS3cr3tValue";
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.reconnect.refresh_command = [
        "/usr/share/spiced/spiced-refresh-proxmox",
        "--vmid",
        "101",
        "--node",
        "pve1",
        "--token",
        TOKEN,
        "--token-file",
        "/etc/spiced/pve-token",
    ]
    .map(String::from)
    .to_vec();
    let settings = ConnectionSettings {
        host: "pve1.example".into(),
        password: Some(Secret::new(PASSWORD)),
        ..Default::default()
    };
    let mut inp = input("main");
    inp.secrets = spiced::scrub::secrets(&settings, &config);
    inp.cause.per_channel.get_mut("main").unwrap().bytes_out = 1101;
    inp.cause.error_message = format!("vm 101 on pve1: {TOKEN} and {PASSWORD} refused");
    inp.session = serde_json::json!({
        "server": {"name": "vm 101"},
        "vmid": 1101,
        "config": spiced::report::redacted_config(&config),
    });
    inp.log_lines = vec![format!("refresh for vm 101 on pve1 with {TOKEN}")];
    let path = write_report(tmp.path(), &ReportConfig::default(), &inp, wall(T0)).unwrap();
    let entries = unzip(&path);
    for (name, bytes) in &entries {
        for secret in [TOKEN, PASSWORD] {
            assert!(!contains(bytes, secret.as_bytes()), "{secret} in {name}");
        }
    }
    let entry = |n: &str| &entries.iter().find(|(name, _)| name == n).unwrap().1;
    let cause: serde_json::Value =
        serde_json::from_slice(entry("disconnect-cause.json")).expect("the cause parses");
    assert_eq!(cause["per_channel"]["main"]["bytes_out"], 1101);
    assert_eq!(
        cause["error_message"],
        "vm 101 on pve1: <redacted> and <redacted> refused"
    );
    let session: serde_json::Value =
        serde_json::from_slice(entry("session.json")).expect("the session parses");
    assert_eq!(session["vmid"], 1101);
    assert_eq!(session["server"]["name"], "vm 101");
    let argv = &session["config"]["reconnect"]["refresh_command"];
    assert_eq!(argv[2], "101", "{argv}");
    assert_eq!(argv[6], "<redacted>", "{argv}");
    assert_eq!(argv[8], "/etc/spiced/pve-token", "{argv}");
    let log = String::from_utf8_lossy(entry("log.txt"));
    assert_eq!(log, "refresh for vm 101 on pve1 with <redacted>\n");
    let out = summarize(&path).expect("spiced report reads it");
    assert!(out.contains("vm 101 on pve1"), "{out}");
}
