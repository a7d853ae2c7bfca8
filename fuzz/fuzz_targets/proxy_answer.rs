#![no_main]
// See spiced::fuzz::proxy_answer: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::proxy_answer(data));
