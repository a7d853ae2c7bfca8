//! The failure taxonomy: every way a channel can fail — socket I/O, transport
//! (TCP, proxy, TLS), the SPICE link, the channel state machine, a panicking task —
//! becomes one [`Failure`]: attributed to a channel, with a stable cause word for
//! reports and logs and a [`FailClass`] that tells the reconnect supervisor whether
//! retrying can help. This is the only place that makes that judgement.

use crate::channel::ChannelError;
use crate::link::handshake::LinkError;
use crate::link::{TransportClass, TransportError};
use crate::reconnect::FailClass;
use crate::wire::link::LinkErrorCode;
use crate::wire::ChannelId;
use serde::Serialize;

/// Why a channel (and maybe the session) ended. The names are the `cause` field of
/// disconnect reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The server closed the connection cleanly (EOF): QEMU stopped, another
    /// client took the session over, or a middlebox closed the tunnel.
    ServerClosed,
    /// Connection reset or aborted.
    Reset,
    TlsError,
    ReadError,
    /// Main was silent past `keepalive.main_timeout_secs` (server frozen).
    KeepaliveTimeout,
    /// TCP gave up: unacknowledged data or keepalive probes (black-holed path).
    DeadPeer,
    ProtocolError,
    TicketRejected,
    /// The server refused a link for another reason.
    LinkError,
    /// TCP/proxy/TLS connect failed.
    ConnectFailed,
    /// The settings cannot work for this channel (e.g. no port for it).
    ConfigError,
    /// A channel task panicked: a bug in spiced, never a silent loss.
    InternalError,
    /// Every channel had been idle for the same time when it closed, twice: a
    /// middlebox cuts idle flows.
    IdleCut,
    LocalShutdown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ServerClosed => "server_closed",
            Cause::Reset => "reset",
            Cause::TlsError => "tls_error",
            Cause::ReadError => "read_error",
            Cause::KeepaliveTimeout => "keepalive_timeout",
            Cause::DeadPeer => "dead_peer",
            Cause::ProtocolError => "protocol_error",
            Cause::TicketRejected => "ticket_rejected",
            Cause::LinkError => "link_error",
            Cause::ConnectFailed => "connect_failed",
            Cause::ConfigError => "config_error",
            Cause::InternalError => "internal_error",
            Cause::IdleCut => "idle_cut",
            Cause::LocalShutdown => "local_shutdown",
        }
    }
}

/// What failed, where, and why — attributed to one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub channel: ChannelId,
    pub cause: Cause,
    /// One line, no secrets.
    pub message: String,
    /// `std::io::ErrorKind` name; None for EOF, clean close or our own timeout.
    pub io_kind: Option<String>,
    /// The server's link refusal, if that is what happened.
    pub link_code: Option<LinkErrorCode>,
    /// How the reconnect supervisor must read it.
    pub class: FailClass,
    /// Did this happen while linking (before the channel ran)?
    pub during_link: bool,
    /// The server's address refused the connection (or the proxy said it could
    /// not reach it): the server was not running at that moment.
    pub server_refused: bool,
}

impl Failure {
    /// Could the same attempt succeed later (network trouble) or never?
    pub fn transient(&self) -> bool {
        matches!(self.class, FailClass::Network | FailClass::BadConnectionId)
    }

    /// The server refused this channel for good (it will not take it on a retry).
    pub fn refused(&self) -> bool {
        self.during_link && !self.transient()
    }

    fn new(channel: ChannelId, cause: Cause, message: String, class: FailClass) -> Failure {
        Failure {
            channel,
            cause,
            message,
            io_kind: None,
            link_code: None,
            class,
            during_link: false,
            server_refused: false,
        }
    }

    /// A failed socket read or write on a running (or linking) channel.
    pub fn io(ch: ChannelId, e: &std::io::Error, during_link: bool) -> Failure {
        use std::io::ErrorKind as K;
        let tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        let (cause, io_kind) = match e.kind() {
            K::UnexpectedEof => (Cause::ServerClosed, None),
            _ if tls => (Cause::TlsError, Some(format!("{:?}", e.kind()))),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                (Cause::Reset, Some(format!("{:?}", e.kind())))
            }
            K::TimedOut => (Cause::DeadPeer, Some(format!("{:?}", e.kind()))),
            k => (Cause::ReadError, Some(format!("{k:?}"))),
        };
        let message = match cause {
            Cause::ServerClosed => "server closed the connection".to_string(),
            Cause::DeadPeer => format!("connection timed out (peer unreachable): {e}"),
            _ => e.to_string(),
        };
        Failure {
            io_kind,
            during_link,
            ..Failure::new(ch, cause, message, FailClass::Network)
        }
    }

    /// The server stopped reading: a write could not finish in `secs` seconds.
    pub fn write_stalled(ch: ChannelId, secs: u64) -> Failure {
        Failure {
            io_kind: Some("TimedOut".into()),
            ..Failure::new(
                ch,
                Cause::DeadPeer,
                format!("{ch}: server stopped reading (write stalled {secs} s)"),
                FailClass::Network,
            )
        }
    }

    /// Connect + link did not finish within `keepalive.connect_timeout_secs`.
    pub fn link_timeout(ch: ChannelId, secs: f64) -> Failure {
        Failure {
            io_kind: Some("TimedOut".into()),
            during_link: true,
            ..Failure::new(
                ch,
                Cause::ConnectFailed,
                format!("{ch}: connect and link did not finish within {secs:.0} s"),
                FailClass::Network,
            )
        }
    }

    /// The .vv gives no port this channel can use.
    pub fn no_port(ch: ChannelId, tls: bool, after_need_secured: bool) -> Failure {
        let message = if after_need_secured {
            format!(
                "{ch}: the server requires TLS for {ch} (NEED_SECURED) but the .vv has no tls-port"
            )
        } else if tls {
            format!("{ch} needs TLS but the .vv has no tls-port")
        } else {
            format!("{ch} needs a plain port but the .vv has no port")
        };
        Failure {
            during_link: true,
            link_code: after_need_secured.then_some(LinkErrorCode::NeedSecured),
            ..Failure::new(ch, Cause::ConfigError, message, FailClass::Config)
        }
    }

    /// TCP, proxy or TLS could not give us a stream.
    pub fn transport(ch: ChannelId, e: &TransportError) -> Failure {
        let (cause, class) = match e.class() {
            TransportClass::Network if e.cause() == "tls_error" => {
                (Cause::TlsError, FailClass::Network)
            }
            TransportClass::Network => (Cause::ConnectFailed, FailClass::Network),
            TransportClass::TlsVerification => (Cause::TlsError, FailClass::TlsVerification),
            // For Proxmox the ticket travels in the CONNECT target.
            TransportClass::TicketRefused => (Cause::TicketRejected, FailClass::PermissionDenied),
            TransportClass::ProxyAuth | TransportClass::Config => {
                (Cause::ConfigError, FailClass::Config)
            }
        };
        Failure {
            io_kind: e.io_kind(),
            during_link: true,
            server_refused: e.server_refused(),
            ..Failure::new(ch, cause, e.to_string(), class)
        }
    }

    /// The SPICE link handshake failed.
    pub fn link(ch: ChannelId, e: LinkError) -> Failure {
        match e {
            LinkError::Io(io) => {
                let mut f = Failure::io(ch, &io, true);
                f.message = format!("{} during the link", f.message);
                f
            }
            LinkError::Refused(code) => {
                let (cause, class) = match code {
                    LinkErrorCode::PermissionDenied => {
                        (Cause::TicketRejected, FailClass::PermissionDenied)
                    }
                    LinkErrorCode::BadConnectionId => {
                        (Cause::LinkError, FailClass::BadConnectionId)
                    }
                    LinkErrorCode::Error => (Cause::LinkError, FailClass::Network),
                    LinkErrorCode::NeedSecured
                    | LinkErrorCode::NeedUnsecured
                    | LinkErrorCode::ChannelNotAvailable => (Cause::LinkError, FailClass::Config),
                    other => (
                        Cause::LinkError,
                        FailClass::Protocol {
                            code: Some(other.code()),
                        },
                    ),
                };
                Failure {
                    link_code: Some(code),
                    during_link: true,
                    ..Failure::new(ch, cause, format!("{ch}: {code}"), class)
                }
            }
            // Nothing on the server side will change: a password the server cannot
            // take, or an auth mechanism we do not speak.
            e if e.is_config() => Failure {
                during_link: true,
                ..Failure::new(
                    ch,
                    Cause::ConfigError,
                    format!("{ch}: {e}"),
                    FailClass::Config,
                )
            },
            // The server's key could not be used: a bug on one side.
            e @ (LinkError::Ticket(_) | LinkError::NoSupportedAuth) => Failure {
                during_link: true,
                ..Failure::new(
                    ch,
                    Cause::ProtocolError,
                    format!("{ch}: {e}"),
                    FailClass::Protocol { code: None },
                )
            },
            LinkError::Wire(w) => Failure {
                during_link: true,
                ..Failure::new(
                    ch,
                    Cause::ProtocolError,
                    format!("{ch}: {w}"),
                    FailClass::Protocol { code: None },
                )
            },
        }
    }

    /// The channel state machine gave up (bad bytes, frozen main).
    pub fn channel(ch: ChannelId, e: ChannelError) -> Failure {
        let cause = match e {
            ChannelError::Wire(_) => Cause::ProtocolError,
            ChannelError::KeepaliveTimeout { .. } => Cause::KeepaliveTimeout,
        };
        // A bad frame mid-session is retried: the next session starts clean.
        Failure::new(ch, cause, e.to_string(), FailClass::Network)
    }

    /// The channel's task panicked (a bug); the message never carries the payload,
    /// which could hold anything.
    pub fn panicked(ch: ChannelId) -> Failure {
        Failure::new(
            ch,
            Cause::InternalError,
            format!("{ch}: the channel task panicked (a bug in spiced)"),
            FailClass::Network,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};
    use std::time::Duration;

    const CH: ChannelId = ChannelId::MAIN;

    #[test]
    fn link_refusals_map_to_supervisor_classes() {
        use LinkErrorCode as L;
        let class = |c| Failure::link(CH, LinkError::Refused(c)).class;
        assert_eq!(class(L::PermissionDenied), FailClass::PermissionDenied);
        assert_eq!(class(L::BadConnectionId), FailClass::BadConnectionId);
        assert_eq!(class(L::InvalidData), FailClass::Protocol { code: Some(3) });
        assert_eq!(class(L::NeedSecured), FailClass::Config);
        assert_eq!(class(L::Error), FailClass::Network);
        assert_eq!(
            Failure::link(CH, LinkError::Refused(L::PermissionDenied)).cause,
            Cause::TicketRejected
        );
    }

    #[test]
    fn config_shaped_link_errors_are_config() {
        let f = Failure::link(CH, LinkError::NoSupportedAuth);
        assert_eq!((f.cause, f.class), (Cause::ConfigError, FailClass::Config));
        assert!(f.refused());
        let long = crate::secret::Secret::new("x".repeat(60));
        let t = crate::ticket::encrypt(&[1, 2, 3], Some(&long)).unwrap_err();
        let f = Failure::link(CH, LinkError::Ticket(t));
        assert_eq!(f.class, FailClass::Config, "{}", f.message);
        // A server key we cannot use is no configuration problem.
        let t = crate::ticket::encrypt(&[1, 2, 3], None).unwrap_err();
        let f = Failure::link(CH, LinkError::Ticket(t));
        assert_eq!(f.class, FailClass::Protocol { code: None });
    }

    #[test]
    fn protocol_errors_never_claim_a_link_result() {
        let f = Failure::link(
            CH,
            LinkError::Wire(crate::wire::WireError::BadMagic(*b"XXXX")),
        );
        assert_eq!(f.class, FailClass::Protocol { code: None });
    }

    #[test]
    fn transport_classes() {
        let status = |status| TransportError::ProxyStatus {
            proxy: "p:3128".into(),
            target: "h:1".into(),
            status,
            status_line: format!("HTTP/1.1 {status} x"),
        };
        let f = Failure::transport(CH, &status(401));
        assert_eq!(
            (f.class, f.cause),
            (FailClass::PermissionDenied, Cause::TicketRejected)
        );
        assert_eq!(
            Failure::transport(CH, &status(403)).class,
            FailClass::PermissionDenied
        );
        assert_eq!(
            Failure::transport(CH, &status(407)).class,
            FailClass::Config
        );
        assert_eq!(
            Failure::transport(CH, &status(502)).class,
            FailClass::Network
        );
        let cert = TransportError::CertVerify("x".into());
        let f = Failure::transport(CH, &cert);
        assert_eq!(
            (f.class, f.cause),
            (FailClass::TlsVerification, Cause::TlsError)
        );
        let refused = TransportError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            kind: ErrorKind::ConnectionRefused,
            tried: 1,
        };
        assert_eq!(Failure::transport(CH, &refused).class, FailClass::Network);
        let t = TransportError::Timeout {
            stage: "tcp".into(),
            after: Duration::from_secs(1),
        };
        assert!(Failure::transport(CH, &t).transient());
    }

    #[test]
    fn io_errors() {
        let f = Failure::io(CH, &Error::from(ErrorKind::UnexpectedEof), false);
        assert_eq!(f.cause, Cause::ServerClosed);
        assert_eq!(f.io_kind, None);
        let f = Failure::io(CH, &Error::from(ErrorKind::TimedOut), false);
        assert_eq!(f.cause, Cause::DeadPeer);
        let f = Failure::io(CH, &Error::from(ErrorKind::ConnectionReset), false);
        assert_eq!((f.cause, f.class), (Cause::Reset, FailClass::Network));
    }

    #[test]
    fn need_secured_without_tls_port_is_a_vv_problem() {
        let f = Failure::no_port(
            ChannelId::new(crate::wire::ChannelType::Inputs, 0),
            true,
            true,
        );
        assert_eq!(f.class, FailClass::Config);
        assert!(
            f.message.contains("the .vv has no tls-port"),
            "{}",
            f.message
        );
        assert!(f.refused());
    }
}
