#![no_main]
// See spiced::fuzz::report_zip: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::report_zip(data));
