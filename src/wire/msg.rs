//! SPICE message types spiced understands, server messages it parses, and the
//! client messages it may send — through a per-channel allow-list, because one
//! wrong client byte can drop a channel or abort QEMU (see docs/keepalive.md).

use super::frame::{Encoder, Frame};
use super::{le_u32, le_u64, ChannelType, WireError};

/// Server → client, every channel.
pub mod server {
    pub const MIGRATE: u16 = 1;
    pub const MIGRATE_DATA: u16 = 2;
    pub const SET_ACK: u16 = 3;
    pub const PING: u16 = 4;
    pub const WAIT_FOR_CHANNELS: u16 = 5;
    pub const DISCONNECTING: u16 = 6;
    pub const NOTIFY: u16 = 7;
    pub const LIST: u16 = 8;
    /// Main channel.
    pub const MAIN_MIGRATE_BEGIN: u16 = 101;
    pub const MAIN_MIGRATE_CANCEL: u16 = 102;
    pub const MAIN_INIT: u16 = 103;
    pub const MAIN_CHANNELS_LIST: u16 = 104;
    pub const MAIN_MOUSE_MODE: u16 = 105;
    pub const MAIN_MULTI_MEDIA_TIME: u16 = 106;
    pub const MAIN_AGENT_CONNECTED: u16 = 107;
    pub const MAIN_AGENT_DISCONNECTED: u16 = 108;
    pub const MAIN_AGENT_DATA: u16 = 109;
    pub const MAIN_AGENT_TOKEN: u16 = 110;
    pub const MAIN_MIGRATE_SWITCH_HOST: u16 = 111;
    pub const MAIN_MIGRATE_END: u16 = 112;
    pub const MAIN_NAME: u16 = 113;
    pub const MAIN_UUID: u16 = 114;
    pub const MAIN_AGENT_CONNECTED_TOKENS: u16 = 115;
}

/// Client → server.
pub mod client {
    pub const ACK_SYNC: u16 = 1;
    pub const ACK: u16 = 2;
    pub const PONG: u16 = 3;
    /// Outside a migration spice-server treats this as fatal and QEMU aborts.
    /// Never on any allow-list.
    pub const MIGRATE_FLUSH_MARK: u16 = 4;
    pub const MIGRATE_DATA: u16 = 5;
    pub const DISCONNECTING: u16 = 6;
    /// Semi-seamless migration: the target linked (or could not be) after
    /// MAIN_MIGRATE_BEGIN; only sent on a main that advertised the capability.
    pub const MAIN_MIGRATE_CONNECTED: u16 = 102;
    pub const MAIN_MIGRATE_CONNECT_ERROR: u16 = 103;
    pub const MAIN_ATTACH_CHANNELS: u16 = 104;
    pub const MAIN_AGENT_DATA: u16 = 107;
    /// On the target's main, after the source's MAIN_MIGRATE_END: start the
    /// session here (the target answers with MAIN_INIT).
    pub const MAIN_MIGRATE_END: u16 = 109;
    pub const DISPLAY_INIT: u16 = 101;
    /// spice-server 0.15 accepts any value (an unknown one only warns) and any
    /// number of them; spiced sends one, and only when the server advertises
    /// `PREF_COMPRESSION`.
    pub const DISPLAY_PREFERRED_COMPRESSION: u16 = 103;
}

/// `SPICE_IMAGE_COMPRESSION_LZ`: what the display mirror asks for.
pub const IMAGE_COMPRESSION_LZ: u8 = 6;

/// The client message types spiced may emit on a channel. Everything else is
/// refused by [`Writer`], whatever the caller asks.
pub fn allowed(channel: ChannelType, msg_type: u16) -> bool {
    // Channel-specific numbers overlap (103 is MIGRATE_CONNECT_ERROR on main,
    // PREFERRED_COMPRESSION on display): decide per channel.
    match msg_type {
        client::ACK_SYNC | client::ACK | client::PONG | client::DISCONNECTING => true,
        _ => match channel {
            ChannelType::Main => matches!(
                msg_type,
                client::MAIN_ATTACH_CHANNELS
                    | client::MAIN_MIGRATE_CONNECTED
                    | client::MAIN_MIGRATE_CONNECT_ERROR
                    | client::MAIN_MIGRATE_END
            ),
            ChannelType::Display => matches!(
                msg_type,
                client::DISPLAY_INIT | client::DISPLAY_PREFERRED_COMPRESSION
            ),
            _ => false,
        },
    }
}

/// A message spiced sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// Echo of SET_ACK's generation; also the keepalive (silent and side-effect
    /// free in spice-server when the generation is the current one).
    AckSync {
        generation: u32,
    },
    Ack,
    Pong {
        id: u32,
        timestamp: u64,
    },
    /// Polite goodbye before a local shutdown.
    Disconnecting {
        time_stamp: u64,
        reason: u32,
    },
    AttachChannels,
    /// Once per display link (a second one aborts the server).
    DisplayInit,
    /// DISPLAY_INIT with the display mirror's cache and GLZ window sizes (in
    /// pixels); the same once-per-link rule.
    DisplayInitSized {
        pixmap_cache: i64,
        glz_window: i32,
    },
    /// The image compression the display mirror decodes best.
    PreferredCompression(u8),
    /// The answer to MAIN_MIGRATE_BEGIN: every channel is linked at the target.
    MigrateConnected,
    /// The answer to MAIN_MIGRATE_BEGIN: the target could not be linked (the
    /// server falls back to MAIN_MIGRATE_SWITCH_HOST when the move completes).
    MigrateConnectError,
    /// Sent first on the target's main once the source said MAIN_MIGRATE_END.
    MigrateEnd,
}

impl ClientMsg {
    pub fn msg_type(&self) -> u16 {
        match self {
            ClientMsg::AckSync { .. } => client::ACK_SYNC,
            ClientMsg::Ack => client::ACK,
            ClientMsg::Pong { .. } => client::PONG,
            ClientMsg::Disconnecting { .. } => client::DISCONNECTING,
            ClientMsg::AttachChannels => client::MAIN_ATTACH_CHANNELS,
            ClientMsg::DisplayInit | ClientMsg::DisplayInitSized { .. } => client::DISPLAY_INIT,
            ClientMsg::PreferredCompression(_) => client::DISPLAY_PREFERRED_COMPRESSION,
            ClientMsg::MigrateConnected => client::MAIN_MIGRATE_CONNECTED,
            ClientMsg::MigrateConnectError => client::MAIN_MIGRATE_CONNECT_ERROR,
            ClientMsg::MigrateEnd => client::MAIN_MIGRATE_END,
        }
    }

    /// The one channel a channel-specific message belongs to (their numbers
    /// overlap: 103 is MIGRATE_CONNECT_ERROR on main, PREFERRED_COMPRESSION
    /// on display).
    fn channel(&self) -> Option<ChannelType> {
        match self {
            ClientMsg::AttachChannels
            | ClientMsg::MigrateConnected
            | ClientMsg::MigrateConnectError
            | ClientMsg::MigrateEnd => Some(ChannelType::Main),
            ClientMsg::DisplayInit
            | ClientMsg::DisplayInitSized { .. }
            | ClientMsg::PreferredCompression(_) => Some(ChannelType::Display),
            _ => None,
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            ClientMsg::AckSync { generation } => generation.to_le_bytes().to_vec(),
            ClientMsg::Ack
            | ClientMsg::AttachChannels
            | ClientMsg::MigrateConnected
            | ClientMsg::MigrateConnectError
            | ClientMsg::MigrateEnd => Vec::new(),
            ClientMsg::Pong { id, timestamp } => {
                let mut b = id.to_le_bytes().to_vec();
                b.extend_from_slice(&timestamp.to_le_bytes());
                b
            }
            ClientMsg::Disconnecting { time_stamp, reason } => {
                let mut b = time_stamp.to_le_bytes().to_vec();
                b.extend_from_slice(&reason.to_le_bytes());
                b
            }
            ClientMsg::PreferredCompression(c) => vec![*c],
            ClientMsg::DisplayInitSized {
                pixmap_cache,
                glz_window,
            } => {
                let mut b = vec![1u8];
                b.extend_from_slice(&pixmap_cache.to_le_bytes());
                b.push(1);
                b.extend_from_slice(&glz_window.to_le_bytes());
                b
            }
            ClientMsg::DisplayInit => {
                // Ids 1/1 and sizes as spice-gtk sends them (its cache sizes / 4,
                // GLZ window 12 MiB / 4): the server sizes its bookkeeping from
                // these; spiced decodes no pixels so the values only shape traffic.
                let mut b = vec![1u8];
                b.extend_from_slice(&(80i64 * 1024 * 1024 / 4).to_le_bytes());
                b.push(1);
                b.extend_from_slice(&(12i32 * 1024 * 1024 / 4).to_le_bytes());
                b
            }
        }
    }
}

/// Frames client messages for one channel, enforcing the allow-list and the
/// once-per-link rule of DISPLAY_INIT.
#[derive(Debug)]
pub struct Writer {
    channel: ChannelType,
    enc: Encoder,
    display_init_sent: bool,
}

impl Writer {
    pub fn new(channel: ChannelType, enc: Encoder) -> Self {
        Writer {
            channel,
            enc,
            display_init_sent: false,
        }
    }

    pub fn encode(&mut self, msg: &ClientMsg) -> Result<Vec<u8>, WireError> {
        if msg.channel().is_some_and(|c| c != self.channel) {
            return Err(WireError::NotAllowed {
                channel: self.channel,
                msg_type: msg.msg_type(),
            });
        }
        if msg.msg_type() == client::DISPLAY_INIT {
            if self.display_init_sent {
                return Err(WireError::NotAllowed {
                    channel: self.channel,
                    msg_type: client::DISPLAY_INIT,
                });
            }
            self.display_init_sent = true;
        }
        self.encode_raw(msg.msg_type(), &msg.body())
    }

    /// The one gate every outbound byte passes.
    fn encode_raw(&mut self, msg_type: u16, body: &[u8]) -> Result<Vec<u8>, WireError> {
        if !allowed(self.channel, msg_type) {
            return Err(WireError::NotAllowed {
                channel: self.channel,
                msg_type,
            });
        }
        Ok(self.enc.frame(msg_type, body))
    }
}

/// Server messages spiced acts on; everything else is counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    SetAck {
        generation: u32,
        window: u32,
    },
    Ping {
        id: u32,
        timestamp: u64,
    },
    Disconnecting {
        reason: u32,
    },
    Notify {
        severity: u32,
        message: String,
    },
    MainInit(MainInit),
    ChannelsList(Vec<(u8, u8)>),
    MouseMode {
        supported: u32,
        current: u32,
    },
    AgentConnected(bool),
    Name(String),
    Uuid([u8; 16]),
    /// Semi-seamless migration starts: link to this target now, keep the source.
    MigrateBegin(MigrateDst),
    /// The migration failed: drop what was linked at the target.
    MigrateCancel,
    /// The migration completed: move to the target linked after MigrateBegin.
    MigrateEnd,
    /// Follow a completed migration by relinking at the target.
    MigrateSwitchHost(MigrateDst),
    Other(u16),
}

/// Where a live migration goes: the target's host, plain port, TLS port (0 or
/// 65535: none) and certificate subject (empty: none), as the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateDst {
    pub port: u16,
    pub sport: u16,
    pub host: String,
    pub subject: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MainInit {
    pub session_id: u32,
    pub display_channels_hint: u32,
    pub supported_mouse_modes: u32,
    pub current_mouse_mode: u32,
    pub agent_connected: u32,
    pub agent_tokens: u32,
}

/// A CHANNELS_LIST longer than this is refused (real servers list ~13).
pub const MAX_CHANNELS: u32 = 256;

fn need(frame: &Frame, n: usize) -> Result<&[u8], WireError> {
    let b = frame.body();
    if b.len() < n {
        return Err(WireError::BadBody {
            msg_type: frame.msg_type,
            need: n,
            have: b.len(),
        });
    }
    Ok(b)
}

/// Bounded, lossy text from a length-prefixed field (names, notify text).
fn text(b: &[u8], at: usize, len: usize) -> String {
    let end = at.saturating_add(len).min(b.len());
    let s = b.get(at..end).unwrap_or(&[]);
    let s = s.strip_suffix(&[0]).unwrap_or(s);
    String::from_utf8_lossy(&s[..s.len().min(1024)]).into_owned()
}

/// Parses what spiced needs from a frame of the given channel.
pub fn parse(channel: ChannelType, frame: &Frame) -> Result<ServerMsg, WireError> {
    let t = frame.msg_type;
    let u32_at = |b: &[u8], i: usize| le_u32(b, i).unwrap_or(0);
    match t {
        server::SET_ACK => {
            let b = need(frame, 8)?;
            return Ok(ServerMsg::SetAck {
                generation: u32_at(b, 0),
                window: u32_at(b, 4),
            });
        }
        server::PING => {
            let b = need(frame, 12)?;
            return Ok(ServerMsg::Ping {
                id: u32_at(b, 0),
                timestamp: le_u64(b, 4).unwrap_or(0),
            });
        }
        server::DISCONNECTING => {
            let b = need(frame, 12)?;
            return Ok(ServerMsg::Disconnecting {
                reason: u32_at(b, 8),
            });
        }
        server::NOTIFY => {
            // time_stamp u64, severity, visibility, what, message_len, message
            let b = need(frame, 24)?;
            return Ok(ServerMsg::Notify {
                severity: u32_at(b, 8),
                message: text(b, 24, u32_at(b, 20) as usize),
            });
        }
        _ => {}
    }
    if channel != ChannelType::Main {
        return Ok(ServerMsg::Other(t));
    }
    Ok(match t {
        server::MAIN_INIT => {
            let b = need(frame, 24)?;
            ServerMsg::MainInit(MainInit {
                session_id: u32_at(b, 0),
                display_channels_hint: u32_at(b, 4),
                supported_mouse_modes: u32_at(b, 8),
                current_mouse_mode: u32_at(b, 12),
                agent_connected: u32_at(b, 16),
                agent_tokens: u32_at(b, 20),
            })
        }
        server::MAIN_CHANNELS_LIST => {
            let b = need(frame, 4)?;
            let n = u32_at(b, 0);
            if n > MAX_CHANNELS {
                return Err(WireError::TooLarge {
                    what: "channels list",
                    size: n.into(),
                    max: MAX_CHANNELS.into(),
                });
            }
            let b = need(frame, 4 + 2 * n as usize)?;
            ServerMsg::ChannelsList(
                (0..n as usize)
                    .map(|i| (b[4 + 2 * i], b[5 + 2 * i]))
                    .collect(),
            )
        }
        server::MAIN_MOUSE_MODE => {
            let b = need(frame, 8)?;
            ServerMsg::MouseMode {
                supported: u32_at(b, 0),
                current: u32_at(b, 4),
            }
        }
        server::MAIN_AGENT_CONNECTED | server::MAIN_AGENT_CONNECTED_TOKENS => {
            ServerMsg::AgentConnected(true)
        }
        server::MAIN_AGENT_DISCONNECTED => ServerMsg::AgentConnected(false),
        server::MAIN_NAME => {
            let b = need(frame, 4)?;
            ServerMsg::Name(text(b, 4, u32_at(b, 0) as usize))
        }
        server::MAIN_UUID => {
            let b = need(frame, 16)?;
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[..16]);
            ServerMsg::Uuid(u)
        }
        server::MAIN_MIGRATE_BEGIN => ServerMsg::MigrateBegin(migrate_dst(frame)?),
        server::MAIN_MIGRATE_SWITCH_HOST => ServerMsg::MigrateSwitchHost(migrate_dst(frame)?),
        server::MAIN_MIGRATE_CANCEL => ServerMsg::MigrateCancel,
        server::MAIN_MIGRATE_END => ServerMsg::MigrateEnd,
        o => ServerMsg::Other(o),
    })
}

/// The target of MIGRATE_BEGIN and MIGRATE_SWITCH_HOST (one layout): port u16,
/// sport u16, host_size u32, host offset u32, subject_size u32, subject offset
/// u32, the offsets from the body's start, the strings NUL-terminated.
fn migrate_dst(frame: &Frame) -> Result<MigrateDst, WireError> {
    let b = need(frame, 20)?;
    let at = |i: usize| le_u32(b, i).unwrap_or(0) as usize;
    Ok(MigrateDst {
        port: super::le_u16(b, 0).unwrap_or(0),
        sport: super::le_u16(b, 2).unwrap_or(0),
        host: text(b, at(8), at(4)),
        subject: text(b, at(16), at(12)),
    })
}

/// Formats a UUID as text.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{Decoder, HeaderKind};

    fn frame(t: u16, body: &[u8]) -> Frame {
        let mut e = Encoder::new(HeaderKind::Mini);
        let mut d = Decoder::new(HeaderKind::Mini, 1 << 20);
        d.push(&e.frame(t, body));
        d.next_frame().unwrap().unwrap()
    }

    #[test]
    fn migrate_flush_mark_can_never_be_emitted() {
        let all = [
            ChannelType::Main,
            ChannelType::Display,
            ChannelType::Inputs,
            ChannelType::Cursor,
            ChannelType::Playback,
            ChannelType::Record,
            ChannelType::Tunnel,
            ChannelType::Smartcard,
            ChannelType::Usbredir,
            ChannelType::Port,
            ChannelType::Webdav,
            ChannelType::Other(42),
        ];
        for ch in all {
            let mut w = Writer::new(ch, Encoder::new(HeaderKind::Mini));
            assert!(!allowed(ch, client::MIGRATE_FLUSH_MARK));
            assert_eq!(
                w.encode_raw(client::MIGRATE_FLUSH_MARK, &[]),
                Err(WireError::NotAllowed {
                    channel: ch,
                    msg_type: 4
                })
            );
            // Nothing outside the known-safe set either.
            for t in 0..=u16::MAX {
                if allowed(ch, t) {
                    assert!(
                        [1, 2, 3, 6].contains(&t)
                            || (ch == ChannelType::Main && [102, 103, 104, 109].contains(&t))
                            || (ch == ChannelType::Display && [101, 103].contains(&t)),
                        "{ch:?} allows {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn display_init_only_once_and_only_on_display() {
        let mut w = Writer::new(ChannelType::Display, Encoder::new(HeaderKind::Mini));
        let b = w.encode(&ClientMsg::DisplayInit).unwrap();
        assert_eq!(&b[..2], &101u16.to_le_bytes());
        assert_eq!(b.len(), 6 + 14);
        assert!(w.encode(&ClientMsg::DisplayInit).is_err());
        let sized = ClientMsg::DisplayInitSized {
            pixmap_cache: 1,
            glz_window: 2,
        };
        assert!(w.encode(&sized).is_err());
        let mut w2 = Writer::new(ChannelType::Display, Encoder::new(HeaderKind::Mini));
        assert_eq!(w2.encode(&sized).unwrap().len(), 6 + 14);
        assert!(w2.encode(&ClientMsg::DisplayInit).is_err());
        assert_eq!(
            w2.encode(&ClientMsg::PreferredCompression(IMAGE_COMPRESSION_LZ))
                .unwrap(),
            vec![103, 0, 1, 0, 0, 0, 6]
        );
        assert!(m_pref_refused());
        let mut m = Writer::new(ChannelType::Main, Encoder::new(HeaderKind::Mini));
        assert!(m.encode(&ClientMsg::DisplayInit).is_err());
        let mut i = Writer::new(ChannelType::Inputs, Encoder::new(HeaderKind::Mini));
        assert!(i.encode(&ClientMsg::AttachChannels).is_err());
    }

    fn m_pref_refused() -> bool {
        let mut m = Writer::new(ChannelType::Main, Encoder::new(HeaderKind::Mini));
        m.encode(&ClientMsg::PreferredCompression(6)).is_err()
    }

    #[test]
    fn golden_client_messages() {
        let mut w = Writer::new(ChannelType::Main, Encoder::new(HeaderKind::Mini));
        assert_eq!(
            w.encode(&ClientMsg::Pong {
                id: 7,
                timestamp: 0x0102030405060708
            })
            .unwrap(),
            vec![3, 0, 12, 0, 0, 0, 7, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(
            w.encode(&ClientMsg::AckSync { generation: 2 }).unwrap(),
            vec![1, 0, 4, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(w.encode(&ClientMsg::Ack).unwrap(), vec![2, 0, 0, 0, 0, 0]);
        assert_eq!(
            w.encode(&ClientMsg::AttachChannels).unwrap(),
            vec![104, 0, 0, 0, 0, 0]
        );
        // The migration answers are empty messages on main only.
        for (m, t) in [
            (ClientMsg::MigrateConnected, 102),
            (ClientMsg::MigrateConnectError, 103),
            (ClientMsg::MigrateEnd, 109),
        ] {
            assert_eq!(w.encode(&m).unwrap(), vec![t, 0, 0, 0, 0, 0]);
            let mut d = Writer::new(ChannelType::Display, Encoder::new(HeaderKind::Mini));
            assert!(d.encode(&m).is_err());
        }
    }

    /// MIGRATE_BEGIN as spice-server 0.15 marshals it: the strings after the
    /// fixed part, NUL-terminated, at offsets from the body's start.
    #[test]
    fn parses_the_migration_messages() {
        let mut b = Vec::new();
        b.extend_from_slice(&5901u16.to_le_bytes());
        b.extend_from_slice(&u16::MAX.to_le_bytes());
        b.extend_from_slice(&10u32.to_le_bytes());
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&30u32.to_le_bytes());
        b.extend_from_slice(b"127.0.0.1\0CN=vm\0");
        let want = MigrateDst {
            port: 5901,
            sport: u16::MAX,
            host: "127.0.0.1".into(),
            subject: "CN=vm".into(),
        };
        assert_eq!(
            parse(ChannelType::Main, &frame(101, &b)).unwrap(),
            ServerMsg::MigrateBegin(want.clone())
        );
        assert_eq!(
            parse(ChannelType::Main, &frame(111, &b)).unwrap(),
            ServerMsg::MigrateSwitchHost(want)
        );
        assert_eq!(
            parse(ChannelType::Main, &frame(102, &[])).unwrap(),
            ServerMsg::MigrateCancel
        );
        assert_eq!(
            parse(ChannelType::Main, &frame(112, &[])).unwrap(),
            ServerMsg::MigrateEnd
        );
        // Offsets past the end give empty strings, a short body an error.
        let mut lying = b[..20].to_vec();
        lying[8..12].copy_from_slice(&9999u32.to_le_bytes());
        match parse(ChannelType::Main, &frame(101, &lying)).unwrap() {
            ServerMsg::MigrateBegin(d) => assert_eq!(d.host, ""),
            o => panic!("{o:?}"),
        }
        assert!(parse(ChannelType::Main, &frame(101, &b[..12])).is_err());
        // On another channel these numbers mean something else.
        assert_eq!(
            parse(ChannelType::Display, &frame(101, &b)).unwrap(),
            ServerMsg::Other(101)
        );
    }

    #[test]
    fn parses_main_messages() {
        let mut init = Vec::new();
        for v in [0xabcdu32, 1, 3, 2, 0, 10, 0, 0] {
            init.extend_from_slice(&v.to_le_bytes());
        }
        match parse(ChannelType::Main, &frame(103, &init)).unwrap() {
            ServerMsg::MainInit(i) => assert_eq!(i.session_id, 0xabcd),
            o => panic!("{o:?}"),
        }
        let list = [3u32.to_le_bytes().to_vec(), vec![2, 0, 9, 1, 9, 0]].concat();
        assert_eq!(
            parse(ChannelType::Main, &frame(104, &list)).unwrap(),
            ServerMsg::ChannelsList(vec![(2, 0), (9, 1), (9, 0)])
        );
        let mut ping = 5u32.to_le_bytes().to_vec();
        ping.extend_from_slice(&99u64.to_le_bytes());
        ping.extend_from_slice(&[0; 100]);
        assert_eq!(
            parse(ChannelType::Display, &frame(4, &ping)).unwrap(),
            ServerMsg::Ping {
                id: 5,
                timestamp: 99
            }
        );
        let name = [4u32.to_le_bytes().to_vec(), b"vm1\0".to_vec()].concat();
        assert_eq!(
            parse(ChannelType::Main, &frame(113, &name)).unwrap(),
            ServerMsg::Name("vm1".into())
        );
        assert_eq!(
            parse(ChannelType::Display, &frame(302, &[1, 2, 3])).unwrap(),
            ServerMsg::Other(302)
        );
    }

    #[test]
    fn short_or_lying_bodies_are_errors_not_panics() {
        assert!(parse(ChannelType::Main, &frame(4, &[1, 2])).is_err());
        assert!(parse(ChannelType::Main, &frame(104, &1000u32.to_le_bytes())).is_err());
        assert!(parse(ChannelType::Main, &frame(104, &u32::MAX.to_le_bytes())).is_err());
        let lying_name = [u32::MAX.to_le_bytes().to_vec(), b"x".to_vec()].concat();
        assert_eq!(
            parse(ChannelType::Main, &frame(113, &lying_name)).unwrap(),
            ServerMsg::Name("x".into())
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(t in 0u16..400, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            for ch in [ChannelType::Main, ChannelType::Display, ChannelType::Inputs] {
                let _ = parse(ch, &frame(t, &body));
            }
        }
    }
}
