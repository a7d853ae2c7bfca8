#![no_main]
// See spiced::fuzz::server_messages: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::server_messages(data));
