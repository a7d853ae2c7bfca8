//! Text that did not come from spiced (server name, notices, .vv and config
//! values, a proxy's answer, refresh stderr, what a report file says) made safe
//! for a log line, a header or a terminal: control characters are escaped,
//! never passed through. The one escape spiced uses.

/// `s` safe for one terminal or log line: every control character (C0 such as
/// ESC, CR, LF and tab; DEL; C1 such as CSI U+009B) written as `\x1b` (below
/// 0x80) or `\u{9b}`, so text from a file, a peer or a child process cannot
/// move the cursor, recolour the terminal or forge a line.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let n = u32::from(c);
            if n < 0x80 {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes from the network (not necessarily UTF-8) as [`printable`] text;
/// invalid UTF-8 shows as U+FFFD.
pub fn printable_bytes(b: &[u8]) -> String {
    printable(&String::from_utf8_lossy(b))
}

/// True when `s` holds a control character.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(printable("plain é ✓ ünïcode"), "plain é ✓ ünïcode");
        assert_eq!(
            printable("a\x1b[31mb\r\n\t\0\x7f\u{9b}c"),
            "a\\x1b[31mb\\x0d\\x0a\\x09\\x00\\x7f\\u{9b}c"
        );
        assert_eq!(
            printable_bytes(b"HTTP/1.1 200 \xff\x1b"),
            "HTTP/1.1 200 \u{fffd}\\x1b"
        );
        assert!(has_control("x\0"));
        assert!(!has_control("x y"));
    }
}
