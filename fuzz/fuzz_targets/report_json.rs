#![no_main]
// See spiced::fuzz::report_json: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::report_json(data));
