#![no_main]
// The server's link reply: header and body decoding, then the ticket encryption
// against whatever key it carries.
use libfuzzer_sys::fuzz_target;
use spiced::wire::link::{decode_header, LinkReply, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HEADER_LEN) {
        let mut a = [0u8; HEADER_LEN];
        a.copy_from_slice(h);
        let _ = decode_header(&a);
    }
    if let Ok(r) = LinkReply::decode(data) {
        let _ = spiced::ticket::encrypt(&r.pub_key, None);
    }
});
