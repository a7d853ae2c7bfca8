//! Peer-supplied text (server name, notices, .vv values, refresh stderr) made safe
//! for a log line, a header or a terminal: control characters are escaped, never
//! passed through.

/// `s` with every control character (C0, DEL, C1) written as an escape.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// True when `s` holds a control character.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls() {
        assert_eq!(printable("a\x1b[2Jb\r\n\u{9b}"), "a\\x1b[2Jb\\r\\n\\x9b");
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
        assert!(has_control("x\0"));
        assert!(!has_control("x y"));
    }
}
