#![no_main]
// See spiced::fuzz::display_mirror: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::display_mirror(data));
