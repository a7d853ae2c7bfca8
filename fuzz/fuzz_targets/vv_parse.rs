#![no_main]
// A .vv file is operator/broker input: parsing must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spiced::vv::parse(data, "fuzz.vv");
});
