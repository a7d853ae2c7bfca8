#![no_main]
// Server bytes after the link, on main, display and inputs: never panic, every
// answer stays on the allow-list (the Writer refuses anything else).
use libfuzzer_sys::fuzz_target;
use spiced::channel::Channel;
use spiced::config::KeepaliveConfig;
use spiced::wire::frame::HeaderKind;
use spiced::wire::{ChannelId, ChannelType};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
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
});
