#![no_main]
// See spiced::fuzz::config_toml: the same function the stable harness runs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spiced::fuzz::config_toml(data));
