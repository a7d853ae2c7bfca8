//! Standard base64 with padding (RFC 4648, section 4): a proxy's Basic
//! credentials and the form of them that must be scrubbed, and the PNG in a
//! control-socket `screenshot` answer (decoded by `spiced screenshot`).

const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `data` in base64 with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes `s` encodes; None when it is not padded base64 of this alphabet.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| ABC.iter().position(|b| *b == c).map(|v| v as u32);
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for q in s.chunks(4) {
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for c in &q[..4 - pad] {
            n = (n << 6) | val(*c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648's test vectors, and bytes outside ASCII.
    #[test]
    fn rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(i.as_bytes()), o);
        }
        assert_eq!(encode(&[0xfb, 0xff, 0x00]), "+/8A");
    }

    #[test]
    fn decode_inverts_encode_and_refuses_what_is_not_base64() {
        for n in 0..64u8 {
            let d: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&d)).as_deref(), Some(&d[..]));
        }
        for bad in ["a===", "abc", "ab=c", "ab!d"] {
            assert!(decode(bad).is_none(), "{bad}");
        }
    }
}
