//! Fuzz entry points: every parser that reads the network or a file, each fed
//! arbitrary bytes. The invariants are the daemon's: no panic, no allocation
//! beyond the caps the parsers enforce, every error typed (the results are
//! dropped here; their types say what went wrong). cargo-fuzz runs them from
//! `fuzz/` where a nightly toolchain exists; `tests/fuzz_stable.rs` runs the
//! same functions with a seeded mutator on stable (`scripts/fuzz.sh` picks).

use crate::channel::Channel;
use crate::config::{Config, KeepaliveConfig};
use crate::wire::frame::{Decoder, HeaderKind};
use crate::wire::{msg, ChannelId, ChannelType};
use std::time::Duration;

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory under `fuzz/corpus/`.
pub const TARGETS: [(&str, Target); 11] = [
    ("vv_parse", vv_parse),
    ("config_toml", config_toml),
    ("frame_decoder", frame_decoder),
    ("server_messages", server_messages),
    ("channel_bytes", channel_bytes),
    ("link_reply", link_reply),
    ("proxy_answer", proxy_answer),
    ("report_zip", report_zip),
    ("report_json", report_json),
    ("display_mirror", display_mirror),
    ("display_images", display_images),
];

/// The channel types a server can send to.
const CHANNELS: [ChannelType; 10] = [
    ChannelType::Main,
    ChannelType::Display,
    ChannelType::Inputs,
    ChannelType::Cursor,
    ChannelType::Playback,
    ChannelType::Record,
    ChannelType::Smartcard,
    ChannelType::Usbredir,
    ChannelType::Port,
    ChannelType::Webdav,
];

/// A console.vv, as an operator or a broker writes it.
pub fn vv_parse(data: &[u8]) {
    let _ = crate::vv::parse(data, "fuzz.vv");
}

/// The daemon's TOML config (validation included).
pub fn config_toml(data: &[u8]) {
    let _ = Config::from_toml(&String::from_utf8_lossy(data), "fuzz.toml");
}

/// Mini and full headers, the bytes arriving in uneven pieces.
pub fn frame_decoder(data: &[u8]) {
    for kind in [HeaderKind::Mini, HeaderKind::Full] {
        // A small cap, so a declared size cannot make the test buffer much.
        let mut d = Decoder::new(kind, 1 << 20);
        for chunk in data.chunks(61) {
            d.push(chunk);
            loop {
                match d.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
}

/// Every server message parser, on every channel type.
pub fn server_messages(data: &[u8]) {
    let mut d = Decoder::new(HeaderKind::Mini, 1 << 20);
    d.push(data);
    while let Ok(Some(frame)) = d.next_frame() {
        for ty in CHANNELS {
            let _ = msg::parse(ty, &frame);
        }
    }
}

/// The channel state machine after the link: whatever the server sends, it
/// never panics and only answers what its allow-list permits.
pub fn channel_bytes(data: &[u8]) {
    for ty in [ChannelType::Main, ChannelType::Display, ChannelType::Inputs] {
        for header in [HeaderKind::Mini, HeaderKind::Full] {
            let mut ch = Channel::new(
                ChannelId::new(ty, 0),
                header,
                &KeepaliveConfig::default(),
                Duration::ZERO,
            );
            for (i, chunk) in data.chunks(97).enumerate() {
                let now = Duration::from_millis(i as u64 * 500);
                if ch.on_bytes(chunk, now).is_err() || ch.handle_timeout(now).is_err() {
                    break;
                }
                while ch.poll_transmit(now).is_some() {}
                while ch.poll_event().is_some() {}
            }
        }
    }
}

/// The server's link reply, then the ticket encryption with the key it carries.
pub fn link_reply(data: &[u8]) {
    use crate::wire::link::{decode_header, LinkReply, HEADER_LEN};
    if let Some(h) = data.get(..HEADER_LEN) {
        let mut a = [0u8; HEADER_LEN];
        a.copy_from_slice(h);
        let _ = decode_header(&a);
    }
    if let Ok(r) = LinkReply::decode(data) {
        let _ = crate::ticket::encrypt(&r.pub_key, None);
    }
}

/// An HTTP proxy's answer to CONNECT.
pub fn proxy_answer(data: &[u8]) {
    let _ = crate::link::proxy::parse_answer(data);
}

/// A report zip, as `spiced report` opens it.
pub fn report_zip(data: &[u8]) {
    let name = std::path::Path::new("fuzz.zip");
    if let Ok(raw) = crate::report::read_cause_from(std::io::Cursor::new(data), name) {
        report_json(&raw);
    }
}

/// A disconnect-cause.json, as `spiced report` summarises it.
pub fn report_json(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::report::format_summary("fuzz.zip", &v);
    }
}

/// The display mirror: display channel frames (mini headers) drawn into a
/// mirror with small caps, so no input can make it hold much.
pub fn display_mirror(data: &[u8]) {
    let limits = crate::display::Limits {
        max_surfaces: 16,
        max_surface_pixels: 256 * 256,
        offscreen_bytes: 64 * 1024,
        pixmap_cache_bytes: 64 * 1024,
        glz_window_bytes: 64 * 1024,
        max_streams: 4,
    };
    let mut m = crate::display::Mirror::new(limits);
    let mut d = Decoder::new(HeaderKind::Mini, 1 << 20);
    d.push(data);
    let mut now = Duration::ZERO;
    while let Ok(Some(frame)) = d.next_frame() {
        now += Duration::from_millis(10);
        m.on_message(frame.msg_type, frame.body(), now);
    }
    if let Some(f) = m.frame() {
        let _ = f.digest();
    }
}

/// The image decoders on their own: LZ (with a palette), GLZ (twice, so the
/// second refers into the window), JPEG.
pub fn display_images(data: &[u8]) {
    use crate::display::{jpeg, lz};
    let max = 256 * 256;
    let pal: Vec<u32> = (0..256).collect();
    let _ = lz::decode_lz(data, Some(&pal), max);
    let mut w = lz::GlzWindow::new(64 * 1024);
    let _ = lz::decode_glz(data, &mut w, max);
    let _ = lz::decode_glz(data, &mut w, max);
    let _ = jpeg::decode(data, max);
}
