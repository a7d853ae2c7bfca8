#![no_main]
// See spiced::fuzz::vv_parse: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::vv_parse(data));
