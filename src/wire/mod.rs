//! Sans-IO SPICE wire codec: link messages, mini-header framing, typed messages.
//! Nothing here touches a socket; every length read from the peer is bounded.

/// A SPICE channel type (spice-protocol `SPICE_CHANNEL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelType {
    Main,
    Display,
    Inputs,
    Cursor,
    Playback,
    Record,
    Tunnel,
    Smartcard,
    Usbredir,
    Port,
    Webdav,
    /// A type this build does not know; still linked and drained.
    Other(u8),
}

impl ChannelType {
    pub fn from_u8(v: u8) -> ChannelType {
        match v {
            1 => ChannelType::Main,
            2 => ChannelType::Display,
            3 => ChannelType::Inputs,
            4 => ChannelType::Cursor,
            5 => ChannelType::Playback,
            6 => ChannelType::Record,
            7 => ChannelType::Tunnel,
            8 => ChannelType::Smartcard,
            9 => ChannelType::Usbredir,
            10 => ChannelType::Port,
            11 => ChannelType::Webdav,
            o => ChannelType::Other(o),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            ChannelType::Main => 1,
            ChannelType::Display => 2,
            ChannelType::Inputs => 3,
            ChannelType::Cursor => 4,
            ChannelType::Playback => 5,
            ChannelType::Record => 6,
            ChannelType::Tunnel => 7,
            ChannelType::Smartcard => 8,
            ChannelType::Usbredir => 9,
            ChannelType::Port => 10,
            ChannelType::Webdav => 11,
            ChannelType::Other(o) => o,
        }
    }

    /// The name used in .vv files (`secure-channels`, `disable-channels`), the TOML
    /// config, logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            ChannelType::Main => "main",
            ChannelType::Display => "display",
            ChannelType::Inputs => "inputs",
            ChannelType::Cursor => "cursor",
            ChannelType::Playback => "playback",
            ChannelType::Record => "record",
            ChannelType::Tunnel => "tunnel",
            ChannelType::Smartcard => "smartcard",
            ChannelType::Usbredir => "usbredir",
            ChannelType::Port => "port",
            ChannelType::Webdav => "webdav",
            ChannelType::Other(_) => "unknown",
        }
    }

    /// Parses a channel name as written in .vv files and the config ("usbredir",
    /// "display", ...; virt-viewer also accepts "spicevmc" for usbredir).
    pub fn from_name(s: &str) -> Option<ChannelType> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "main" => ChannelType::Main,
            "display" => ChannelType::Display,
            "inputs" => ChannelType::Inputs,
            "cursor" => ChannelType::Cursor,
            "playback" => ChannelType::Playback,
            "record" => ChannelType::Record,
            "tunnel" => ChannelType::Tunnel,
            "smartcard" => ChannelType::Smartcard,
            "usbredir" | "spicevmc" => ChannelType::Usbredir,
            "port" => ChannelType::Port,
            "webdav" => ChannelType::Webdav,
            _ => return None,
        })
    }
}

/// One channel of a session: type and id (two usbredir channels differ by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    pub ty: ChannelType,
    pub id: u8,
}

impl ChannelId {
    pub const MAIN: ChannelId = ChannelId {
        ty: ChannelType::Main,
        id: 0,
    };

    pub fn new(ty: ChannelType, id: u8) -> Self {
        ChannelId { ty, id }
    }
}

/// `main`, `display`, `usbredir:1`: the type name, plus `:id` when id is not 0.
/// Used as the key in logs, reports and file names.
impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ty {
            ChannelType::Other(t) => write!(f, "type{t}")?,
            ty => f.write_str(ty.name())?,
        }
        if self.id != 0 {
            write!(f, ":{}", self.id)?;
        }
        Ok(())
    }
}

pub mod frame;
pub mod link;
pub mod msg;

/// A byte sequence from the peer that spiced refuses. Always fatal for the channel
/// it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The link reply did not start with `REDQ`.
    BadMagic([u8; 4]),
    /// The server speaks a protocol major version spiced does not.
    VersionMismatch { major: u32, minor: u32 },
    /// A link message or reply is shorter than its fixed part or its caps.
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// The peer announced a message larger than the cap.
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
    /// A message body is too short for its type.
    BadBody {
        msg_type: u16,
        need: usize,
        have: usize,
    },
    /// spiced refused to emit a client message type not on the channel's allow-list.
    NotAllowed { channel: ChannelType, msg_type: u16 },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadMagic(m) => write!(
                f,
                "not a SPICE server: link reply starts with {:?} instead of \"REDQ\"",
                String::from_utf8_lossy(m)
            ),
            WireError::VersionMismatch { major, minor } => write!(
                f,
                "server speaks SPICE protocol {major}.{minor}; spiced speaks 2.x"
            ),
            WireError::Truncated { what, need, have } => {
                write!(f, "{what} truncated: need {need} bytes, got {have}")
            }
            WireError::TooLarge { what, size, max } => {
                write!(f, "{what} of {size} bytes exceeds the limit of {max} bytes")
            }
            WireError::BadBody {
                msg_type,
                need,
                have,
            } => write!(
                f,
                "message type {msg_type} has a {have}-byte body, needs at least {need}"
            ),
            WireError::NotAllowed { channel, msg_type } => write!(
                f,
                "refusing to send client message type {msg_type} on the {} channel (not on its allow-list)",
                channel.name()
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Little-endian readers over a body; callers check lengths first or get `None`.
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}
