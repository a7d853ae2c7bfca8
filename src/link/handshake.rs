//! Drives the SPICE link stage over an already-connected stream: link message,
//! reply, auth mechanism, encrypted ticket, link result. The bytes come from
//! `wire::link`; this module only moves them, bounded by the caller's timeout.

use crate::secret::Secret;
use crate::tap::Direction;
use crate::ticket::{self, TicketError};
use crate::wire::frame::HeaderKind;
use crate::wire::link::{
    common_cap, decode_header, Caps, LinkErrorCode, LinkMess, LinkReply, AUTH_MECHANISM_SPICE,
    HEADER_LEN,
};
use crate::wire::{ChannelId, ChannelType, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Channel capability bits spiced advertises (only what it honours).
pub mod channel_cap {
    /// SPICE_MAIN_CAP_SEMI_SEAMLESS_MIGRATE: the server announces a migration
    /// with MAIN_MIGRATE_BEGIN, before it happens, instead of SWITCH_HOST after.
    pub const MAIN_SEMI_SEAMLESS_MIGRATE: u32 = 0;
    /// SPICE_MAIN_CAP_NAME_AND_UUID: the server sends the VM's name and UUID.
    pub const MAIN_NAME_AND_UUID: u32 = 1;
    /// SPICE_DISPLAY_CAP_PREF_COMPRESSION (a server cap spiced checks, never
    /// advertises): the server takes DISPLAY_PREFERRED_COMPRESSION.
    pub const DISPLAY_PREF_COMPRESSION: u32 = 6;
}

pub use crate::tap::LinkRecord;

/// Receives the link-stage bytes for the capture.
pub type LinkTap<'a> = &'a mut (dyn FnMut(Direction, LinkRecord, &[u8]) + Send);

/// Why a link failed.
#[derive(Debug)]
pub enum LinkError {
    Io(std::io::Error),
    Wire(WireError),
    /// The server refused: a `SPICE_LINK_ERR_*`.
    Refused(LinkErrorCode),
    Ticket(TicketError),
    /// The server offers no auth mechanism spiced speaks (e.g. SASL only).
    NoSupportedAuth,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                f.write_str("server closed the connection during the link")
            }
            LinkError::Io(e) => write!(f, "i/o error during the link: {e}"),
            LinkError::Wire(e) => write!(f, "{e}"),
            LinkError::Refused(c) => write!(f, "{c}"),
            LinkError::Ticket(e) => write!(f, "{e}"),
            LinkError::NoSupportedAuth => {
                f.write_str("server requires an auth mechanism spiced does not support (SASL)")
            }
        }
    }
}

impl LinkError {
    /// True when only changed settings can help (exit 78, never retried): a
    /// password longer than spice-server accepts, or a server that offers no
    /// auth mechanism spiced speaks. Retrying the same .vv cannot succeed.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            LinkError::Ticket(TicketError::PasswordTooLong(_)) | LinkError::NoSupportedAuth
        )
    }
}

impl std::error::Error for LinkError {}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e)
    }
}

/// A linked channel: the framing to use from now on and what the server offers.
#[derive(Debug, Clone)]
pub struct Linked {
    pub header: HeaderKind,
    pub server_common_caps: Caps,
    pub server_channel_caps: Caps,
    pub client_common_caps: Caps,
    pub client_channel_caps: Caps,
}

/// The link message spiced sends for a channel.
pub fn link_mess(channel: ChannelId, connection_id: u32, semi_seamless: bool) -> LinkMess {
    let common = Caps::from_bits(&[
        common_cap::PROTOCOL_AUTH_SELECTION,
        common_cap::AUTH_SPICE,
        common_cap::MINI_HEADER,
    ]);
    let chan = match channel.ty {
        ChannelType::Main if semi_seamless => Caps::from_bits(&[
            channel_cap::MAIN_NAME_AND_UUID,
            channel_cap::MAIN_SEMI_SEAMLESS_MIGRATE,
        ]),
        ChannelType::Main => Caps::from_bits(&[channel_cap::MAIN_NAME_AND_UUID]),
        _ => Caps::default(),
    };
    LinkMess {
        connection_id,
        channel,
        common_caps: common,
        channel_caps: chan,
    }
}

pub async fn handshake<S>(
    s: &mut S,
    mess: &LinkMess,
    password: Option<&Secret>,
    tap: LinkTap<'_>,
) -> Result<Linked, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let out = mess.encode();
    s.write_all(&out).await?;
    s.flush().await?;
    tap(Direction::ToServer, LinkRecord::Link, &out);

    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await?;
    let size = decode_header(&h).map_err(LinkError::Wire)?;
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body).await?;
    tap(
        Direction::ToClient,
        LinkRecord::Link,
        &[&h[..], &body[..]].concat(),
    );
    let reply = LinkReply::decode(&body).map_err(LinkError::Wire)?;
    if let Some(code) = LinkErrorCode::from_u32(reply.error) {
        return Err(LinkError::Refused(code));
    }

    let sc = &reply.common_caps;
    if sc.has(common_cap::PROTOCOL_AUTH_SELECTION) {
        if !sc.has(common_cap::AUTH_SPICE) {
            return Err(LinkError::NoSupportedAuth);
        }
        let m = AUTH_MECHANISM_SPICE.to_le_bytes();
        s.write_all(&m).await?;
        tap(Direction::ToServer, LinkRecord::Link, &m);
    }
    let ct = ticket::encrypt(&reply.pub_key, password).map_err(LinkError::Ticket)?;
    s.write_all(&ct).await?;
    s.flush().await?;
    tap(Direction::ToServer, LinkRecord::Ticket, &ct);

    let mut r = [0u8; 4];
    s.read_exact(&mut r).await?;
    tap(Direction::ToClient, LinkRecord::Link, &r);
    if let Some(code) = LinkErrorCode::from_u32(u32::from_le_bytes(r)) {
        return Err(LinkError::Refused(code));
    }
    let header = if sc.has(common_cap::MINI_HEADER) && mess.common_caps.has(common_cap::MINI_HEADER)
    {
        HeaderKind::Mini
    } else {
        HeaderKind::Full
    };
    Ok(Linked {
        header,
        server_common_caps: reply.common_caps,
        server_channel_caps: reply.channel_caps,
        client_common_caps: mess.common_caps.clone(),
        client_channel_caps: mess.channel_caps.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::link::{PUB_KEY_LEN, REPLY_FIXED_LEN};
    use rsa::pkcs8::EncodePublicKey;
    use rsa::PrivateKey;
    use std::sync::OnceLock;
    use tokio::io::{duplex, DuplexStream};

    /// One server key for every test (1024-bit RSA generation is slow).
    fn key() -> &'static PrivateKey {
        static KEY: OnceLock<PrivateKey> = OnceLock::new();
        KEY.get_or_init(|| PrivateKey::new(&mut rand::rng(), 1024).unwrap())
    }

    fn key_der() -> Vec<u8> {
        key()
            .to_public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn reply(error: u32, key: &[u8], common: u32) -> Vec<u8> {
        let mut b = error.to_le_bytes().to_vec();
        let mut k = key.to_vec();
        k.resize(PUB_KEY_LEN, 0);
        b.extend(k);
        b.extend(1u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((REPLY_FIXED_LEN as u32).to_le_bytes());
        b.extend(common.to_le_bytes());
        let mut h = b"REDQ".to_vec();
        h.extend(2u32.to_le_bytes());
        h.extend(2u32.to_le_bytes());
        h.extend((b.len() as u32).to_le_bytes());
        [h, b].concat()
    }

    /// A scripted server: reads the link, answers, checks the ticket.
    async fn fake_server(mut s: DuplexStream, common: u32, result: u32) -> Option<Vec<u8>> {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await.ok()?;
        let n = u32::from_le_bytes(h[12..16].try_into().ok()?) as usize;
        let mut body = vec![0; n];
        s.read_exact(&mut body).await.ok()?;
        s.write_all(&reply(0, &key_der(), common)).await.ok()?;
        if common & 1 != 0 {
            let mut m = [0u8; 4];
            s.read_exact(&mut m).await.ok()?;
            assert_eq!(u32::from_le_bytes(m), 1);
        }
        let mut ct = [0u8; 128];
        s.read_exact(&mut ct).await.ok()?;
        let pt = key().oaep_decrypt::<sha1::Sha1>(&ct).ok()?;
        s.write_all(&result.to_le_bytes()).await.ok()?;
        Some(pt)
    }

    /// The client end of a scripted server.
    fn scripted(common: u32, result: u32) -> DuplexStream {
        let (c, s) = duplex(4096);
        tokio::spawn(fake_server(s, common, result));
        c
    }

    /// The client end of a server that reads the link message, then sends `answer`.
    fn canned(answer: Vec<u8>) -> DuplexStream {
        let (c, mut s) = duplex(4096);
        tokio::spawn(async move {
            let mut h = [0u8; 40];
            let _ = s.read(&mut h).await;
            let _ = s.write_all(&answer).await;
        });
        c
    }

    /// Links main without a password or capture.
    async fn link_main(mut c: DuplexStream) -> Result<Linked, LinkError> {
        handshake(
            &mut c,
            &link_mess(ChannelId::MAIN, 0, false),
            None,
            &mut |_, _, _| {},
        )
        .await
    }

    #[tokio::test]
    async fn links_with_ticket_and_records_it_only_as_ticket() {
        let (mut c, s) = duplex(4096);
        let server = tokio::spawn(fake_server(s, 0b1011, 0));
        let mut records = Vec::new();
        let mut tap = |d: Direction, r: LinkRecord, b: &[u8]| records.push((d, r, b.len()));
        let pw = Secret::new("pw");
        let linked = handshake(
            &mut c,
            &link_mess(ChannelId::MAIN, 0, false),
            Some(&pw),
            &mut tap,
        )
        .await
        .unwrap();
        assert_eq!(linked.header, HeaderKind::Mini);
        assert_eq!(server.await.unwrap().unwrap(), b"pw\0");
        assert!(records.contains(&(Direction::ToServer, LinkRecord::Ticket, 128)));
        assert_eq!(
            records.iter().filter(|r| r.1 == LinkRecord::Ticket).count(),
            1
        );
    }

    #[tokio::test]
    async fn permission_denied_is_typed() {
        let e = link_main(scripted(0b1011, 7)).await.unwrap_err();
        assert!(matches!(
            e,
            LinkError::Refused(LinkErrorCode::PermissionDenied)
        ));
        assert!(e.to_string().contains("ticket rejected by server"));
    }

    #[tokio::test]
    async fn need_secured_in_reply_and_full_header_fallback() {
        let e = link_main(canned(reply(5, &[], 0))).await.unwrap_err();
        assert!(matches!(e, LinkError::Refused(LinkErrorCode::NeedSecured)));
        let l = link_main(scripted(0b0011, 0)).await.unwrap();
        assert_eq!(l.header, HeaderKind::Full);
    }

    #[tokio::test]
    async fn sasl_only_server_and_garbage_are_errors() {
        let e = link_main(canned(reply(0, &key_der(), 0b0101)))
            .await
            .unwrap_err();
        assert!(matches!(e, LinkError::NoSupportedAuth));
        assert!(e.is_config());
        let e = link_main(canned(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(e, LinkError::Wire(WireError::BadMagic(_))));
        assert!(!e.is_config());
    }

    #[test]
    fn too_long_password_is_a_configuration_problem() {
        assert!(LinkError::Ticket(TicketError::PasswordTooLong(60)).is_config());
        assert!(LinkError::NoSupportedAuth.is_config());
        // The server's key or the network are not the operator's settings.
        assert!(!LinkError::Ticket(TicketError::BadServerKey).is_config());
        assert!(!LinkError::Ticket(TicketError::Encrypt).is_config());
        assert!(!LinkError::Refused(LinkErrorCode::PermissionDenied).is_config());
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!LinkError::Io(eof).is_config());
    }
}
