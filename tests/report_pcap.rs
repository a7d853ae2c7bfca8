//! traffic.pcap as tshark sees it: synthetic SPICE sessions recorded through
//! `Capture` must decode as SPICE, one TCP stream per channel, with the ticket
//! block zeroed and the link exchange present even after the ring dropped the
//! stream's start.

use spiced::config::ReportConfig;
use spiced::report::{Capture, Direction, RecordKind};
use spiced::wire::{ChannelId, ChannelType};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PORT: u16 = 5930;
const START_UNIX: f64 = 1_700_000_000.0;
const TICKET: [u8; 128] = [0xAB; 128];

fn display() -> ChannelId {
    ChannelId::new(ChannelType::Display, 0)
}
fn inputs() -> ChannelId {
    ChannelId::new(ChannelType::Inputs, 0)
}

fn link_header(size: u32) -> Vec<u8> {
    let mut v = b"REDQ".to_vec();
    v.extend_from_slice(&2u32.to_le_bytes());
    v.extend_from_slice(&2u32.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v
}

/// SpiceLinkHeader + SpiceLinkMess with common caps auth-selection, auth-spice, mini-header.
fn link_mess(conn_id: u32, ch: ChannelId) -> Vec<u8> {
    let mut v = link_header(18 + 4);
    v.extend_from_slice(&conn_id.to_le_bytes());
    v.push(ch.ty.to_u8());
    v.push(ch.id);
    v.extend_from_slice(&1u32.to_le_bytes()); // num_common_caps
    v.extend_from_slice(&0u32.to_le_bytes()); // num_channel_caps
    v.extend_from_slice(&18u32.to_le_bytes()); // caps_offset
    v.extend_from_slice(&0b1011u32.to_le_bytes());
    v
}

/// SpiceLinkHeader + SpiceLinkReply (error 0, a fake 162-byte key, same caps).
fn link_reply() -> Vec<u8> {
    let mut v = link_header(4 + 162 + 12 + 4);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&[0x30; 162]);
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&178u32.to_le_bytes());
    v.extend_from_slice(&0b1011u32.to_le_bytes());
    v
}

fn mini(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn ping(id: u32, ts: u64) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&ts.to_le_bytes());
    mini(4, &b)
}

fn pong(id: u32, ts: u64) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&ts.to_le_bytes());
    mini(3, &b)
}

fn link(c: &mut Capture, ch: ChannelId, t: Duration) {
    c.record(
        ch,
        Direction::ToServer,
        t,
        RecordKind::Link,
        &link_mess(0, ch),
    );
    c.record(ch, Direction::ToClient, t, RecordKind::Link, &link_reply());
    c.record(
        ch,
        Direction::ToServer,
        t,
        RecordKind::Link,
        &1u32.to_le_bytes(),
    );
    c.record(ch, Direction::ToServer, t, RecordKind::LinkTicket, &TICKET);
    c.record(
        ch,
        Direction::ToClient,
        t,
        RecordKind::Link,
        &0u32.to_le_bytes(),
    );
}

/// main, display and inputs linked at t=0..; traffic after.
fn session(cfg: &ReportConfig) -> Capture {
    let mut c = Capture::new(cfg);
    let ms = Duration::from_millis;
    link(&mut c, ChannelId::MAIN, ms(0));
    link(&mut c, display(), ms(100));
    link(&mut c, inputs(), ms(150));
    for i in 0..20u32 {
        let t = ms(200 + u64::from(i) * 1000);
        c.record(
            ChannelId::MAIN,
            Direction::ToClient,
            t,
            RecordKind::Message,
            &ping(i, 1000 + u64::from(i)),
        );
        c.record(
            ChannelId::MAIN,
            Direction::ToServer,
            t + ms(1),
            RecordKind::Message,
            &pong(i, 1000 + u64::from(i)),
        );
        c.record(
            display(),
            Direction::ToClient,
            t + ms(2),
            RecordKind::Message,
            &ping(100 + i, 7),
        );
        // KEY_DOWN scancode 0x1e ('a').
        c.record(
            inputs(),
            Direction::ToServer,
            t + ms(3),
            RecordKind::Message,
            &mini(101, &[0x1e, 0, 0, 0]),
        );
    }
    // DISPLAY_INIT: cache id, cache size, glz id, glz window.
    let mut init = vec![1u8];
    init.extend_from_slice(&(20i64 * 1024 * 1024).to_le_bytes());
    init.push(1);
    init.extend_from_slice(&(12i32 * 1024 * 1024 / 4).to_le_bytes());
    c.record(
        display(),
        Direction::ToServer,
        ms(19_500),
        RecordKind::Message,
        &mini(101, &init),
    );
    c
}

fn tshark_available() -> bool {
    match Command::new("tshark").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "tshark is required in CI (apt-get install tshark)"
            );
            eprintln!("note: tshark not installed; skipping the pcap decode check");
            false
        }
    }
}

fn tshark(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// (tcp.stream, channel type, message types) of every SPICE PDU tshark decodes.
fn spice_fields(file: &Path) -> Vec<(String, String, String)> {
    let decode = format!("tcp.port=={PORT},spice");
    tshark(
        file,
        &[
            "-d",
            &decode,
            "-Y",
            "spice",
            "-T",
            "fields",
            "-e",
            "tcp.stream",
            "-e",
            "tcp.srcport",
            "-e",
            "spice.message_type",
        ],
    )
    .lines()
    .map(|l| {
        let mut f = l.split('\t').map(str::to_string);
        (
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
        )
    })
    .collect()
}

#[test]
fn tshark_decodes_spice_on_every_channel_stream() {
    if !tshark_available() {
        return;
    }
    let cfg = ReportConfig::default();
    let c = session(&cfg);
    let pcap = c.to_pcap(PORT, START_UNIX);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.pcap");
    std::fs::write(&file, &pcap).unwrap();

    // One TCP conversation per channel.
    let conv = tshark(&file, &["-q", "-z", "conv,tcp"]);
    let convs: Vec<&str> = conv
        .lines()
        .filter(|l| l.contains(&format!(":{PORT}")) && l.contains("<->"))
        .collect();
    assert_eq!(convs.len(), 3, "{conv}");
    for port in ["40000", "40001", "40002"] {
        assert!(
            convs.iter().any(|l| l.contains(&format!(":{port} "))),
            "{conv}"
        );
    }

    let fields = spice_fields(&file);
    let msgs_on = |stream: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|f| f.0 == stream)
            .flat_map(|f| f.2.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let main_msgs = msgs_on("0");
    let display_msgs = msgs_on("1");
    let inputs_msgs = msgs_on("2");
    eprintln!(
        "decoded SPICE messages: main {}, display {}, inputs {}",
        main_msgs.len(),
        display_msgs.len(),
        inputs_msgs.len()
    );
    // main: 20 PINGs (type 4) and 20 PONGs (type 3).
    assert_eq!(
        main_msgs.iter().filter(|t| *t == "4").count(),
        20,
        "{main_msgs:?}"
    );
    assert_eq!(
        main_msgs.iter().filter(|t| *t == "3").count(),
        20,
        "{main_msgs:?}"
    );
    // display: 20 PINGs and the DISPLAY_INIT (101).
    assert_eq!(
        display_msgs.iter().filter(|t| *t == "4").count(),
        20,
        "{display_msgs:?}"
    );
    assert!(display_msgs.iter().any(|t| t == "101"), "{display_msgs:?}");
    assert_eq!(
        inputs_msgs.iter().filter(|t| *t == "101").count(),
        20,
        "{inputs_msgs:?}"
    );

    // The link exchange is recognised as such on each stream.
    let links = tshark(
        &file,
        &[
            "-d",
            &format!("tcp.port=={PORT},spice"),
            "-Y",
            "spice.link_client",
            "-T",
            "fields",
            "-e",
            "tcp.stream",
        ],
    );
    assert_eq!(links.lines().count(), 3, "{links}");
}

#[test]
fn ticket_and_keystrokes_never_in_pcap() {
    let c = session(&ReportConfig::default());
    let pcap = c.to_pcap(PORT, START_UNIX);
    assert!(
        !pcap.windows(16).any(|w| w == &TICKET[..16]),
        "ticket bytes leaked"
    );
    // The zeroed ticket block follows the 4-byte auth mechanism on each stream.
    let zero_ticket = [0u8; 128];
    assert!(pcap.windows(128).any(|w| w == zero_ticket));
    // KEY_DOWN with scancode 0x1e never appears; the zeroed form does.
    assert!(!pcap.windows(10).any(|w| w == mini(101, &[0x1e, 0, 0, 0])));
    assert!(pcap.windows(10).any(|w| w == mini(101, &[0, 0, 0, 0])));

    let keep = ReportConfig {
        capture_input_payloads: true,
        ..ReportConfig::default()
    };
    let pcap = session(&keep).to_pcap(PORT, START_UNIX);
    assert!(pcap.windows(10).any(|w| w == mini(101, &[0x1e, 0, 0, 0])));
    assert!(
        !pcap.windows(16).any(|w| w == &TICKET[..16]),
        "ticket zeroed regardless"
    );
}

#[test]
fn link_kept_when_ring_dropped_stream_start() {
    if !tshark_available() {
        return;
    }
    // 10 s window: the link at t=0 is far outside it, the early PINGs are evicted.
    let cfg = ReportConfig {
        capture_secs: 10.0,
        ..ReportConfig::default()
    };
    let mut c = session(&cfg);
    c.trim(Duration::from_secs(25));
    let pcap = c.to_pcap(PORT, START_UNIX);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.pcap");
    std::fs::write(&file, &pcap).unwrap();
    let fields = spice_fields(&file);
    let main_pings = fields
        .iter()
        .filter(|f| f.0 == "0")
        .flat_map(|f| f.2.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|t| t == "4")
        .count();
    // PINGs are at 0.2 + i s; the window at 25 s starts at 15 s: i = 15..=19.
    let expected = (0..20u64).filter(|i| 200 + i * 1000 >= 15_000).count();
    assert_eq!(expected, 5);
    assert_eq!(main_pings, expected, "{fields:?}");
    // And the link exchange (from t = 0) is still there on all three streams.
    let links = tshark(
        &file,
        &[
            "-d",
            &format!("tcp.port=={PORT},spice"),
            "-Y",
            "spice.link_client",
            "-T",
            "fields",
            "-e",
            "tcp.stream",
        ],
    );
    assert_eq!(links.lines().count(), 3, "{links}");
}

#[test]
fn big_messages_relinks_and_tcp_sanity() {
    if !tshark_available() {
        return;
    }
    let mut c = session(&ReportConfig::default());
    let s = Duration::from_secs;
    // The link-time network test: a main PING with ~256 KB of padding, split
    // into several TCP segments and reassembled by tshark.
    let mut big = 77u32.to_le_bytes().to_vec();
    big.extend_from_slice(&5u64.to_le_bytes());
    big.extend_from_slice(&vec![0x55; 256 * 1024]);
    c.record(
        ChannelId::MAIN,
        Direction::ToClient,
        s(20),
        RecordKind::Message,
        &mini(4, &big),
    );
    c.record(
        ChannelId::MAIN,
        Direction::ToServer,
        s(20),
        RecordKind::Message,
        &pong(77, 5),
    );
    // display drops and relinks: a second TCP stream for display.
    c.close(display());
    link(&mut c, display(), s(21));
    c.record(
        display(),
        Direction::ToClient,
        s(22),
        RecordKind::Message,
        &ping(500, 1),
    );
    let pcap = c.to_pcap(PORT, START_UNIX);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.pcap");
    std::fs::write(&file, &pcap).unwrap();

    let decode = format!("tcp.port=={PORT},spice");
    let conv = tshark(&file, &["-q", "-z", "conv,tcp"]);
    let n = conv.lines().filter(|l| l.contains("<->")).count();
    assert_eq!(n, 4, "main, display, inputs, display again: {conv}");
    // No lost segments, unseen ACKs, retransmissions...
    let flagged = tshark(
        &file,
        &[
            "-d",
            &decode,
            "-Y",
            "tcp.analysis.flags && !tcp.analysis.window_update",
        ],
    );
    assert!(
        flagged.trim().is_empty(),
        "tcp analysis warnings:\n{flagged}"
    );
    // No malformed SPICE.
    let bad = tshark(
        &file,
        &[
            "-d",
            &decode,
            "-Y",
            "_ws.malformed || _ws.expert.severity >= warning",
        ],
    );
    assert!(bad.trim().is_empty(), "malformed/warnings:\n{bad}");
    // The big PING is one reassembled SPICE message on main; display's new stream decodes.
    let fields = spice_fields(&file);
    let pings_on = |stream: &str| {
        fields
            .iter()
            .filter(|f| f.0 == stream)
            .flat_map(|f| f.2.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|t| t == "4")
            .count()
    };
    assert_eq!(pings_on("0"), 21, "{fields:?}");
    assert_eq!(pings_on("3"), 1, "{fields:?}");
    let big_frames = tshark(
        &file,
        &[
            "-d",
            &decode,
            "-Y",
            "tcp.reassembled.length > 200000",
            "-T",
            "fields",
            "-e",
            "tcp.reassembled.length",
        ],
    );
    assert_eq!(big_frames.trim(), (6 + big.len()).to_string());
}
