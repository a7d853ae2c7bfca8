//! The link stage of every SPICE channel: `SpiceLinkHeader` + `SpiceLinkMess` from
//! the client, `SpiceLinkReply` (server RSA key and caps) back, then the auth
//! mechanism, the encrypted ticket and the link result. Encoding and decoding only.

use super::{le_u32, ChannelId, WireError};

pub const MAGIC: [u8; 4] = *b"REDQ";
pub const VERSION_MAJOR: u32 = 2;
pub const VERSION_MINOR: u32 = 2;
pub const HEADER_LEN: usize = 16;
/// DER SubjectPublicKeyInfo of the server's RSA-1024 key in a link reply.
pub const PUB_KEY_LEN: usize = 162;
/// Fixed part of SpiceLinkReply: error, key, num_common_caps, num_channel_caps, caps_offset.
pub const REPLY_FIXED_LEN: usize = 4 + PUB_KEY_LEN + 12;
/// Fixed part of SpiceLinkMess.
pub const MESS_FIXED_LEN: usize = 18;
/// A link reply larger than this is not a SPICE server (real ones send < 200 bytes).
pub const MAX_REPLY_LEN: u32 = 4096;
/// Caps words accepted per list (real servers send 1).
const MAX_CAPS_WORDS: u32 = 64;

/// Common capability bits (`SPICE_COMMON_CAP_*`).
pub mod common_cap {
    pub const PROTOCOL_AUTH_SELECTION: u32 = 0;
    pub const AUTH_SPICE: u32 = 1;
    pub const AUTH_SASL: u32 = 2;
    pub const MINI_HEADER: u32 = 3;
}

/// `SPICE_COMMON_CAP_AUTH_SPICE` as an auth mechanism number.
pub const AUTH_MECHANISM_SPICE: u32 = 1;

/// A capability set: bit N lives in word N/32.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps(pub Vec<u32>);

impl Caps {
    pub fn from_bits(bits: &[u32]) -> Caps {
        let mut c = Caps::default();
        for &b in bits {
            c.set(b);
        }
        c
    }
    pub fn set(&mut self, bit: u32) {
        let w = (bit / 32) as usize;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (bit % 32);
    }
    pub fn has(&self, bit: u32) -> bool {
        self.0
            .get((bit / 32) as usize)
            .is_some_and(|w| w & (1 << (bit % 32)) != 0)
    }
    /// Set bit numbers, for logs and reports.
    pub fn bits(&self) -> Vec<u32> {
        (0..self.0.len() as u32 * 32)
            .filter(|&b| self.has(b))
            .collect()
    }
}

/// What the client sends to open a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMess {
    /// 0 for main (always: non-zero means "migration target"); the session id for
    /// every other channel.
    pub connection_id: u32,
    pub channel: ChannelId,
    pub common_caps: Caps,
    pub channel_caps: Caps,
}

impl LinkMess {
    /// Header + body, ready for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let ncommon = self.common_caps.0.len();
        let nchan = self.channel_caps.0.len();
        let body_len = MESS_FIXED_LEN + 4 * (ncommon + nchan);
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.push(self.channel.ty.to_u8());
        out.push(self.channel.id);
        out.extend_from_slice(&(ncommon as u32).to_le_bytes());
        out.extend_from_slice(&(nchan as u32).to_le_bytes());
        out.extend_from_slice(&(MESS_FIXED_LEN as u32).to_le_bytes());
        for w in self.common_caps.0.iter().chain(self.channel_caps.0.iter()) {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// Decodes the 16-byte link header the server answers with; returns the body size.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<u32, WireError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&h[..4]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let major = le_u32(h, 4).unwrap_or(0);
    let minor = le_u32(h, 8).unwrap_or(0);
    if major != VERSION_MAJOR {
        return Err(WireError::VersionMismatch { major, minor });
    }
    let size = le_u32(h, 12).unwrap_or(0);
    if size > MAX_REPLY_LEN {
        return Err(WireError::TooLarge {
            what: "link reply",
            size: size.into(),
            max: MAX_REPLY_LEN.into(),
        });
    }
    Ok(size)
}

/// The server's answer to a link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReply {
    /// A `SPICE_LINK_ERR_*` code; non-zero means the link is refused already.
    pub error: u32,
    pub pub_key: Vec<u8>,
    pub common_caps: Caps,
    pub channel_caps: Caps,
}

impl LinkReply {
    /// Decodes a reply body. An error reply may be shorter than a full one: the
    /// error code alone is enough then.
    pub fn decode(body: &[u8]) -> Result<LinkReply, WireError> {
        let error = le_u32(body, 0).ok_or(WireError::Truncated {
            what: "link reply",
            need: 4,
            have: body.len(),
        })?;
        if error != 0 && body.len() < REPLY_FIXED_LEN {
            return Ok(LinkReply {
                error,
                pub_key: Vec::new(),
                common_caps: Caps::default(),
                channel_caps: Caps::default(),
            });
        }
        if body.len() < REPLY_FIXED_LEN {
            return Err(WireError::Truncated {
                what: "link reply",
                need: REPLY_FIXED_LEN,
                have: body.len(),
            });
        }
        let pub_key = body[4..4 + PUB_KEY_LEN].to_vec();
        let at = 4 + PUB_KEY_LEN;
        let ncommon = le_u32(body, at).unwrap_or(0);
        let nchan = le_u32(body, at + 4).unwrap_or(0);
        let offset = le_u32(body, at + 8).unwrap_or(0) as usize;
        if ncommon > MAX_CAPS_WORDS || nchan > MAX_CAPS_WORDS {
            return Err(WireError::TooLarge {
                what: "link reply caps list",
                size: u64::from(ncommon.max(nchan)),
                max: MAX_CAPS_WORDS.into(),
            });
        }
        let need = offset + 4 * (ncommon + nchan) as usize;
        if body.len() < need {
            return Err(WireError::Truncated {
                what: "link reply caps",
                need,
                have: body.len(),
            });
        }
        let words = |start: usize, n: u32| -> Vec<u32> {
            (0..n as usize)
                .filter_map(|i| le_u32(body, start + 4 * i))
                .collect()
        };
        Ok(LinkReply {
            error,
            pub_key,
            common_caps: Caps(words(offset, ncommon)),
            channel_caps: Caps(words(offset + 4 * ncommon as usize, nchan)),
        })
    }
}

/// `SPICE_LINK_ERR_*`: why a server refused a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkErrorCode {
    Error,
    InvalidMagic,
    InvalidData,
    VersionMismatch,
    NeedSecured,
    NeedUnsecured,
    PermissionDenied,
    BadConnectionId,
    ChannelNotAvailable,
    Unknown(u32),
}

impl LinkErrorCode {
    /// `None` for 0 (OK).
    pub fn from_u32(v: u32) -> Option<LinkErrorCode> {
        Some(match v {
            0 => return None,
            1 => LinkErrorCode::Error,
            2 => LinkErrorCode::InvalidMagic,
            3 => LinkErrorCode::InvalidData,
            4 => LinkErrorCode::VersionMismatch,
            5 => LinkErrorCode::NeedSecured,
            6 => LinkErrorCode::NeedUnsecured,
            7 => LinkErrorCode::PermissionDenied,
            8 => LinkErrorCode::BadConnectionId,
            9 => LinkErrorCode::ChannelNotAvailable,
            o => LinkErrorCode::Unknown(o),
        })
    }

    pub fn code(self) -> u32 {
        match self {
            LinkErrorCode::Error => 1,
            LinkErrorCode::InvalidMagic => 2,
            LinkErrorCode::InvalidData => 3,
            LinkErrorCode::VersionMismatch => 4,
            LinkErrorCode::NeedSecured => 5,
            LinkErrorCode::NeedUnsecured => 6,
            LinkErrorCode::PermissionDenied => 7,
            LinkErrorCode::BadConnectionId => 8,
            LinkErrorCode::ChannelNotAvailable => 9,
            LinkErrorCode::Unknown(o) => o,
        }
    }

    /// What an operator reads.
    pub fn describe(self) -> &'static str {
        match self {
            LinkErrorCode::Error => "server refused the link (generic error)",
            LinkErrorCode::InvalidMagic => {
                "server says the link message was malformed (bad magic): a spiced bug"
            }
            LinkErrorCode::InvalidData => {
                "server says the link message was malformed (invalid data): a spiced bug"
            }
            LinkErrorCode::VersionMismatch => "server does not speak this SPICE protocol version",
            LinkErrorCode::NeedSecured => "server requires TLS on this channel",
            LinkErrorCode::NeedUnsecured => "server requires this channel without TLS",
            LinkErrorCode::PermissionDenied => {
                "ticket rejected by server (wrong, expired or unset password)"
            }
            LinkErrorCode::BadConnectionId => "server does not know this session id (session gone)",
            LinkErrorCode::ChannelNotAvailable => "channel not available on the server",
            LinkErrorCode::Unknown(_) => "server refused the link with an unknown error code",
        }
    }
}

impl std::fmt::Display for LinkErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (link error {})", self.describe(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChannelType;

    fn main_mess() -> LinkMess {
        LinkMess {
            connection_id: 0,
            channel: ChannelId::MAIN,
            common_caps: Caps::from_bits(&[0, 1, 3]),
            channel_caps: Caps::from_bits(&[1]),
        }
    }

    #[test]
    fn link_mess_golden_bytes() {
        let b = main_mess().encode();
        let expect: Vec<u8> = [
            &b"REDQ"[..],
            &2u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &26u32.to_le_bytes(), // 18 + 2 caps words
            &0u32.to_le_bytes(),  // connection id
            &[1, 0],              // main, id 0
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &18u32.to_le_bytes(),
            &0b1011u32.to_le_bytes(),
            &0b10u32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(b, expect);
    }

    #[test]
    fn secondary_link_carries_session_id_and_channel() {
        let m = LinkMess {
            connection_id: 0xdeadbeef,
            channel: ChannelId::new(ChannelType::Usbredir, 1),
            common_caps: Caps::default(),
            channel_caps: Caps::default(),
        };
        let b = m.encode();
        assert_eq!(&b[16..20], &0xdeadbeefu32.to_le_bytes());
        assert_eq!(&b[20..22], &[9, 1]);
        assert_eq!(decode_header(b[..16].try_into().unwrap()).unwrap(), 18);
    }

    pub(crate) fn reply_body(error: u32, common: u32, chan: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&error.to_le_bytes());
        b.extend_from_slice(&[0x30; PUB_KEY_LEN]);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(REPLY_FIXED_LEN as u32).to_le_bytes());
        b.extend_from_slice(&common.to_le_bytes());
        b.extend_from_slice(&chan.to_le_bytes());
        b
    }

    #[test]
    fn reply_round_trip() {
        let r = LinkReply::decode(&reply_body(0, 0b1011, 0b110)).unwrap();
        assert_eq!(r.error, 0);
        assert_eq!(r.pub_key.len(), PUB_KEY_LEN);
        assert!(r.common_caps.has(common_cap::MINI_HEADER));
        assert!(!r.common_caps.has(common_cap::AUTH_SASL));
        assert_eq!(r.channel_caps.bits(), vec![1, 2]);
    }

    #[test]
    fn short_error_reply_is_an_error_code_not_a_decode_failure() {
        let r = LinkReply::decode(&5u32.to_le_bytes()).unwrap();
        assert_eq!(
            LinkErrorCode::from_u32(r.error),
            Some(LinkErrorCode::NeedSecured)
        );
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        assert!(matches!(
            LinkReply::decode(&[1, 2]),
            Err(WireError::Truncated { .. })
        ));
        let mut b = reply_body(0, 1, 1);
        b.truncate(REPLY_FIXED_LEN + 2);
        assert!(matches!(
            LinkReply::decode(&b),
            Err(WireError::Truncated { .. })
        ));
        let mut big = reply_body(0, 1, 1);
        big[4 + PUB_KEY_LEN..4 + PUB_KEY_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            LinkReply::decode(&big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn header_checks() {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(b"HTTP");
        assert!(matches!(decode_header(&h), Err(WireError::BadMagic(_))));
        h[..4].copy_from_slice(b"REDQ");
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            decode_header(&h),
            Err(WireError::VersionMismatch { major: 1, .. })
        ));
        h[4..8].copy_from_slice(&2u32.to_le_bytes());
        h[12..16].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(matches!(decode_header(&h), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn every_link_error_code_is_typed_and_described() {
        for code in 1..=9 {
            let e = LinkErrorCode::from_u32(code).unwrap();
            assert_eq!(e.code(), code);
            assert!(!matches!(e, LinkErrorCode::Unknown(_)));
            assert!(e.to_string().contains(&format!("link error {code}")));
        }
        assert_eq!(LinkErrorCode::from_u32(0), None);
        assert_eq!(
            LinkErrorCode::from_u32(42),
            Some(LinkErrorCode::Unknown(42))
        );
        assert!(LinkErrorCode::PermissionDenied
            .to_string()
            .contains("ticket rejected"));
        assert!(LinkErrorCode::NeedSecured
            .to_string()
            .contains("requires TLS"));
    }
}
