#![no_main]
// See spiced::fuzz::link_reply: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::link_reply(data));
