#![no_main]
// See spiced::fuzz::frame_decoder: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::frame_decoder(data));
