#![no_main]
// See spiced::fuzz::channel_bytes: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::channel_bytes(data));
