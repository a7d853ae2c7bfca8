//! The defensive secret check applied to every zip entry before it is written:
//! whatever the caller put in, no byte sequence equal to a secret (password,
//! ticket) leaves spiced. JSON entries are scrubbed as values, every string
//! and key ([`scrub_json`]), never as bytes (a secret that happens to match
//! part of a number or of the syntax would garble the file; a number carries
//! no secret); text entries (`log.txt`) get `<redacted>` for every byte
//! occurrence; binary entries (the pcap) get zeros of the same length so their
//! framing stays intact.

use crate::secret::Secret;
use serde_json::Value;

pub const REDACTED: &str = "<redacted>";

/// The byte patterns to hunt for: each secret as is, and as it looks inside a
/// JSON string (quotes, backslashes and control characters escaped).
pub fn patterns(secrets: &[Secret]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in secrets {
        let raw = s.expose();
        if raw.is_empty() {
            continue;
        }
        out.push(raw.as_bytes().to_vec());
        if let Ok(q) = serde_json::to_string(raw) {
            let inner = q.as_bytes()[1..q.len() - 1].to_vec(); // ok: to_string adds the quotes
            if inner != raw.as_bytes() {
                out.push(inner);
            }
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    out.dedup();
    out
}

/// Replaces every secret in string values and object keys of `v`.
pub fn scrub_json(v: &mut Value, secrets: &[Secret]) {
    match v {
        Value::String(s) => scrub_string(s, secrets),
        Value::Array(a) => a.iter_mut().for_each(|x| scrub_json(x, secrets)),
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (mut k, mut x) in old {
                scrub_string(&mut k, secrets);
                scrub_json(&mut x, secrets);
                m.insert(k, x);
            }
        }
        _ => {}
    }
}

pub fn scrub_string(s: &mut String, secrets: &[Secret]) {
    for sec in secrets {
        let raw = sec.expose();
        if !raw.is_empty() && s.contains(raw) {
            *s = s.replace(raw, REDACTED);
        }
    }
}

/// Text: every occurrence of a pattern becomes `<redacted>`.
pub fn scrub_text(data: Vec<u8>, patterns: &[Vec<u8>]) -> Vec<u8> {
    let mut data = data;
    for p in patterns {
        if find(&data, p, 0).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(data.len());
        let mut pos = 0;
        while let Some(i) = find(&data, p, pos) {
            out.extend_from_slice(&data[pos..i]);
            out.extend_from_slice(REDACTED.as_bytes());
            pos = i + p.len();
        }
        out.extend_from_slice(&data[pos..]);
        data = out;
    }
    data
}

/// Binary: every occurrence of a pattern is overwritten with zeros in place.
pub fn scrub_binary(data: &mut [u8], patterns: &[Vec<u8>]) {
    for p in patterns {
        let mut pos = 0;
        while let Some(i) = find(data, p, pos) {
            data[i..i + p.len()].fill(0);
            pos = i + p.len();
        }
    }
}

/// First index >= `from` where `needle` (non-empty) occurs in `hay`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let rel = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += rel;
        if hay[i..i + needle.len()] == *needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_binary_json() {
        let secrets = vec![Secret::new("hunter2"), Secret::new(""), Secret::new("a\"b")];
        let p = patterns(&secrets);
        assert!(p.contains(&b"a\\\"b".to_vec()));
        assert_eq!(
            scrub_text(b"x hunter2 y hunter2hunter2".to_vec(), &p),
            b"x <redacted> y <redacted><redacted>".to_vec()
        );
        let mut bin = b"..hunter2..".to_vec();
        scrub_binary(&mut bin, &p);
        assert_eq!(bin, b"..\0\0\0\0\0\0\0..".to_vec());
        let mut v = serde_json::json!({"pw": "hunter2", "hunter2": ["a\"b", 3]});
        scrub_json(&mut v, &secrets);
        assert_eq!(
            v,
            serde_json::json!({"pw": "<redacted>", "<redacted>": ["<redacted>", 3]})
        );
    }

    #[test]
    fn find_edges() {
        assert_eq!(find(b"abc", b"abc", 0), Some(0));
        assert_eq!(find(b"abc", b"abcd", 0), None);
        assert_eq!(find(b"aab", b"ab", 0), Some(1));
        assert_eq!(find(b"ab", b"b", 2), None);
        assert_eq!(find(b"", b"b", 0), None);
    }
}
