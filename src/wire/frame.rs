//! Message framing after the link: the 6-byte mini header (u16 type, u32 size) when
//! both sides have `MINI_HEADER`, else the 18-byte full header (u64 serial, u16
//! type, u32 size, u32 sub-list offset). The decoder never allocates more than the
//! bytes that actually arrived, and refuses a message larger than its cap.

use super::{le_u16, le_u32, WireError};

pub const MINI_HEADER_LEN: usize = 6;
pub const FULL_HEADER_LEN: usize = 18;
/// Default cap on one server message. Real display messages stay far below (a
/// full-HD uncompressed image is ~8 MiB); the link-time network test PING is ~256 KiB.
pub const DEFAULT_MAX_MESSAGE: u32 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Mini,
    Full,
}

impl HeaderKind {
    pub fn header_len(self) -> usize {
        match self {
            HeaderKind::Mini => MINI_HEADER_LEN,
            HeaderKind::Full => FULL_HEADER_LEN,
        }
    }
}

/// One whole message as it crossed the wire (header included, for captures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: u16,
    /// Header + body.
    pub bytes: Vec<u8>,
    pub header_len: usize,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }
}

/// Splits an inbound byte stream into frames.
#[derive(Debug)]
pub struct Decoder {
    kind: HeaderKind,
    max: u32,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf` (compacted lazily).
    pos: usize,
}

impl Decoder {
    pub fn new(kind: HeaderKind, max_message: u32) -> Self {
        Decoder {
            kind,
            max: max_message,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error if
    /// the announced size exceeds the cap (the channel must then be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let avail = &self.buf[self.pos..];
        let hlen = self.kind.header_len();
        if avail.len() < hlen {
            return Ok(None);
        }
        let (msg_type, size) = match self.kind {
            HeaderKind::Mini => (le_u16(avail, 0), le_u32(avail, 2)),
            HeaderKind::Full => (le_u16(avail, 8), le_u32(avail, 10)),
        };
        let (Some(msg_type), Some(size)) = (msg_type, size) else {
            return Ok(None);
        };
        if size > self.max {
            return Err(WireError::TooLarge {
                what: "server message",
                size: size.into(),
                max: self.max.into(),
            });
        }
        let total = hlen + size as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let bytes = avail[..total].to_vec();
        self.pos += total;
        Ok(Some(Frame {
            msg_type,
            bytes,
            header_len: hlen,
        }))
    }
}

/// Frames outbound messages (keeps the serial for full headers).
#[derive(Debug)]
pub struct Encoder {
    kind: HeaderKind,
    serial: u64,
}

impl Encoder {
    pub fn new(kind: HeaderKind) -> Self {
        Encoder { kind, serial: 0 }
    }

    pub fn kind(&self) -> HeaderKind {
        self.kind
    }

    pub fn frame(&mut self, msg_type: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.kind.header_len() + body.len());
        if self.kind == HeaderKind::Full {
            self.serial += 1;
            out.extend_from_slice(&self.serial.to_le_bytes());
        }
        out.extend_from_slice(&msg_type.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        if self.kind == HeaderKind::Full {
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mini_round_trip_across_arbitrary_splits() {
        let mut enc = Encoder::new(HeaderKind::Mini);
        let mut wire = enc.frame(4, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        wire.extend(enc.frame(3, &[]));
        for split in 0..wire.len() {
            let mut d = Decoder::new(HeaderKind::Mini, 1024);
            d.push(&wire[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            d.push(&wire[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].msg_type, 4);
            assert_eq!(got[0].body().len(), 12);
            assert_eq!(got[1].msg_type, 3);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn full_header_serials_increase() {
        let mut enc = Encoder::new(HeaderKind::Full);
        let a = enc.frame(1, &[9, 9, 9, 9]);
        let b = enc.frame(2, &[]);
        assert_eq!(&a[..8], &1u64.to_le_bytes());
        assert_eq!(&b[..8], &2u64.to_le_bytes());
        let mut d = Decoder::new(HeaderKind::Full, 1024);
        d.push(&a);
        d.push(&b);
        assert_eq!(d.next_frame().unwrap().unwrap().body(), &[9, 9, 9, 9]);
        assert_eq!(d.next_frame().unwrap().unwrap().msg_type, 2);
    }

    #[test]
    fn oversized_message_is_refused_before_any_allocation() {
        let mut d = Decoder::new(HeaderKind::Mini, 1000);
        let mut h = 101u16.to_le_bytes().to_vec();
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        d.push(&h);
        assert!(matches!(
            d.next_frame(),
            Err(WireError::TooLarge { size, .. }) if size == u64::from(u32::MAX)
        ));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            for kind in [HeaderKind::Mini, HeaderKind::Full] {
                let mut d = Decoder::new(kind, 256);
                for c in &chunks {
                    d.push(c);
                    while let Ok(Some(_)) = d.next_frame() {}
                }
            }
        }
    }
}
