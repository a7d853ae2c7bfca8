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
