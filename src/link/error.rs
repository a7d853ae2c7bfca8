//! `TransportError`: every way turning connection settings into a byte stream can
//! fail, one variant per story an operator needs to read.
//!
//! `Display` is one line, never containing a secret (the proxy credentials are never
//! stored here; a Proxmox `pvespiceproxy:` host, which embeds the ticket, is shown
//! shortened by [`shown_host`]). `cause()` is the stable short word that goes into
//! reports and logs; `is_transient()` says whether retrying can help.

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use crate::secret::Secret;

/// How a [`TransportError`] should be handled: what the operator (or the
/// supervisor) can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportClass {
    /// Network trouble (or a proxy 5xx): the same settings may work a moment later.
    Network,
    /// The .vv/config cannot work (bad proxy URL, CA, host-subject, a proxy 4xx
    /// policy refusal): exit 78.
    Config,
    /// The server certificate was refused (CA, name, host-subject): exit 78.
    TlsVerification,
    /// The proxy refused the ticket carried in the CONNECT target (Proxmox's
    /// spiceproxy answers 401/403 to an expired one): handled like link result
    /// PERMISSION_DENIED, only a fresh ticket helps.
    TicketRefused,
    /// The proxy wants (other) credentials (407): a configuration problem, exit 78.
    ProxyAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The .vv `proxy=` value cannot be used (reason never holds credentials).
    BadProxyUrl { reason: String },
    /// The .vv `host-subject=` value cannot be parsed.
    BadHostSubject { reason: String },
    /// The .vv `ca=` (or the system roots) cannot be used.
    BadCa(String),
    /// The target host cannot be sent (control characters would split the
    /// CONNECT request). `reason` never quotes the host.
    BadTarget { reason: String },
    /// Name resolution failed (`proxy`: it was the proxy's name).
    Resolve {
        host: String,
        proxy: bool,
        kind: ErrorKind,
        detail: String,
    },
    /// TCP connect to the server failed on every address (`addr`: the last tried).
    Connect {
        addr: SocketAddr,
        kind: ErrorKind,
        tried: usize,
    },
    /// TCP connect to the proxy failed.
    ProxyConnect { proxy: String, kind: ErrorKind },
    /// The proxy answered CONNECT with a non-2xx status.
    ProxyStatus {
        proxy: String,
        target: String,
        status: u16,
        status_line: String,
    },
    /// The proxy answered something that is not an HTTP response header.
    ProxyBadResponse {
        proxy: String,
        target: String,
        detail: String,
    },
    /// The proxy did not finish its answer to CONNECT in time.
    ProxyTimeout {
        proxy: String,
        target: String,
        after: Duration,
    },
    /// A connect stage ran out of `keepalive.connect_timeout_secs`.
    Timeout { stage: String, after: Duration },
    /// The TLS handshake failed for a reason other than the certificate.
    TlsHandshake {
        detail: String,
        kind: Option<ErrorKind>,
    },
    /// The server certificate (chain, validity, name) was refused.
    CertVerify(String),
    /// The chain is fine but the subject is not the .vv's `host-subject`.
    HostSubjectMismatch { expected: String, found: String },
    /// Any other I/O failure during `stage`.
    Io { stage: String, kind: ErrorKind },
}

impl TransportError {
    /// Short stable cause word for reports: `config_error`, `dns`,
    /// `connect_refused`, `connect_error`, `proxy_error`, `timeout`, `tls_error`,
    /// `cert_error`, `read_error`.
    pub fn cause(&self) -> &'static str {
        use TransportError::*;
        match self {
            BadProxyUrl { .. } | BadHostSubject { .. } | BadCa(_) | BadTarget { .. } => {
                "config_error"
            }
            Resolve { .. } => "dns",
            Connect {
                kind: ErrorKind::ConnectionRefused,
                ..
            } => "connect_refused",
            Connect { .. } => "connect_error",
            ProxyConnect { .. } | ProxyStatus { .. } | ProxyBadResponse { .. } => "proxy_error",
            ProxyTimeout { .. } | Timeout { .. } => "timeout",
            TlsHandshake { .. } => "tls_error",
            CertVerify(_) | HostSubjectMismatch { .. } => "cert_error",
            Io { .. } => "read_error",
        }
    }

    /// The `std::io::ErrorKind` name (`ConnectionRefused`, ...) when an I/O error
    /// is behind this one.
    pub fn io_kind(&self) -> Option<String> {
        use TransportError::*;
        let kind = match self {
            Resolve { kind, .. }
            | Connect { kind, .. }
            | ProxyConnect { kind, .. }
            | Io { kind, .. } => Some(*kind),
            TlsHandshake { kind, .. } => *kind,
            ProxyTimeout { .. } | Timeout { .. } => Some(ErrorKind::TimedOut),
            _ => None,
        };
        kind.map(|k| format!("{k:?}"))
    }

    /// Nothing listens at the server's address: its TCP port refused, or the
    /// proxy answered 502–504 (it could not reach the server). A server that
    /// was stopped or killed answers so until it is back.
    pub fn server_refused(&self) -> bool {
        matches!(
            self,
            TransportError::Connect {
                kind: ErrorKind::ConnectionRefused,
                ..
            } | TransportError::ProxyStatus {
                status: 502..=504,
                ..
            }
        )
    }

    /// How to handle this error; see [`TransportClass`].
    pub fn class(&self) -> TransportClass {
        use TransportError::*;
        match self {
            BadProxyUrl { .. } | BadHostSubject { .. } | BadCa(_) | BadTarget { .. } => {
                TransportClass::Config
            }
            CertVerify(_) | HostSubjectMismatch { .. } => TransportClass::TlsVerification,
            ProxyStatus { status, .. } => match status {
                407 => TransportClass::ProxyAuth,
                // Proxmox puts the ticket in the CONNECT target; spiceproxy
                // answers a dead one with 401.
                401 | 403 => TransportClass::TicketRefused,
                // The proxy could not reach the server, or is overloaded.
                500.. => TransportClass::Network,
                // Any other refusal is policy: retrying will not change it.
                _ => TransportClass::Config,
            },
            Resolve { .. }
            | Connect { .. }
            | ProxyConnect { .. }
            | ProxyBadResponse { .. }
            | ProxyTimeout { .. }
            | Timeout { .. }
            | TlsHandshake { .. }
            | Io { .. } => TransportClass::Network,
        }
    }

    /// True when the same settings may well work a moment later (network trouble);
    /// false when only a changed .vv/config/certificate/ticket can help.
    pub fn is_transient(&self) -> bool {
        self.class() == TransportClass::Network
    }
}

fn kind_text(kind: ErrorKind) -> String {
    std::io::Error::from(kind).to_string()
}

fn secs(d: &Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TransportError::*;
        match self {
            BadProxyUrl { reason } => write!(f, "bad proxy URL in the .vv: {reason}"),
            BadHostSubject { reason } => write!(f, "bad host-subject in the .vv: {reason}"),
            BadCa(detail) => write!(f, "unusable CA certificates: {detail}"),
            BadTarget { reason } => write!(f, "bad host in the .vv: {reason}"),
            Resolve {
                host,
                proxy,
                detail,
                ..
            } => {
                let what = if *proxy { "proxy host" } else { "host" };
                write!(f, "cannot resolve {what} `{host}`: {detail}")
            }
            Connect { addr, kind, tried } => {
                write!(f, "cannot connect to {addr}: {}", kind_text(*kind))?;
                if *tried > 1 {
                    write!(f, " (tried {tried} addresses)")?;
                }
                Ok(())
            }
            ProxyConnect { proxy, kind } => {
                write!(f, "cannot connect to proxy {proxy}: {}", kind_text(*kind))
            }
            ProxyStatus {
                proxy,
                target,
                status_line,
                status,
            } => {
                write!(
                    f,
                    "proxy {proxy} answered `{status_line}` to CONNECT {target}"
                )?;
                match status {
                    // Said plainly: the status line's reason phrase may be anything.
                    407 => f.write_str(
                        ": proxy authentication required (check the .vv proxy= credentials)",
                    ),
                    // Only Proxmox's spiceproxy carries a ticket in the target;
                    // other proxies answer 403 to a forbidden port, say.
                    401 | 403 if target.starts_with("pvespiceproxy:") => {
                        f.write_str(": the ticket was refused")
                    }
                    _ => Ok(()),
                }
            }
            ProxyBadResponse {
                proxy,
                target,
                detail,
            } => write!(
                f,
                "proxy {proxy} gave no usable answer to CONNECT {target}: {detail}"
            ),
            ProxyTimeout {
                proxy,
                target,
                after,
            } => write!(
                f,
                "proxy {proxy} did not answer CONNECT {target} within {}",
                secs(after)
            ),
            Timeout { stage, after } => write!(f, "timed out after {} during {stage}", secs(after)),
            TlsHandshake { detail, .. } => write!(f, "TLS handshake failed: {detail}"),
            CertVerify(detail) => write!(f, "server certificate rejected: {detail}"),
            HostSubjectMismatch { expected, found } => write!(
                f,
                "certificate subject `{found}` does not match host-subject `{expected}`"
            ),
            Io { stage, kind } => write!(f, "{stage}: {}", kind_text(*kind)),
        }
    }
}

impl std::error::Error for TransportError {}

/// A host name fit for logs and errors. Proxmox writes `host=pvespiceproxy:<ticket>`
/// and the same ticket is the SPICE password, so such a host is shortened to its
/// prefix; any other host that happens to contain the password has it elided.
pub fn shown_host(host: &str, password: Option<&Secret>) -> String {
    if let Some(rest) = host.strip_prefix("pvespiceproxy:") {
        if !rest.is_empty() {
            return "pvespiceproxy:...".to_string();
        }
    }
    match password {
        Some(p) if !p.is_empty() && host.contains(p.expose()) => host.replace(p.expose(), "..."),
        _ => host.to_string(),
    }
}

/// `host:port` for messages, with an IPv6 literal in brackets.
pub fn shown_authority(host: &str, port: u16, password: Option<&Secret>) -> String {
    let h = shown_host(host, password);
    if h.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_operator_line() {
        let e = TransportError::ProxyStatus {
            proxy: "127.0.0.1:3128".into(),
            target: "pvespiceproxy:...:61000".into(),
            status: 502,
            status_line: "HTTP/1.1 502 Bad Gateway".into(),
        };
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:3128 answered `HTTP/1.1 502 Bad Gateway` to CONNECT pvespiceproxy:...:61000"
        );
        assert!(e.is_transient());
        assert_eq!(e.cause(), "proxy_error");
        let e = TransportError::HostSubjectMismatch {
            expected: "O=x,CN=y".into(),
            found: "O=spice-lab,CN=spice-lab-server".into(),
        };
        assert_eq!(
            e.to_string(),
            "certificate subject `O=spice-lab,CN=spice-lab-server` does not match host-subject `O=x,CN=y`"
        );
        assert!(!e.is_transient());
        let e = TransportError::Connect {
            addr: "127.0.0.1:5900".parse().unwrap(),
            kind: ErrorKind::ConnectionRefused,
            tried: 2,
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to 127.0.0.1:5900: connection refused (tried 2 addresses)"
        );
        assert_eq!(e.cause(), "connect_refused");
        assert_eq!(e.io_kind().as_deref(), Some("ConnectionRefused"));
        let e = TransportError::Timeout {
            stage: "TLS handshake".into(),
            after: Duration::from_millis(15_000),
        };
        assert_eq!(e.to_string(), "timed out after 15 s during TLS handshake");
        assert_eq!(e.io_kind().as_deref(), Some("TimedOut"));
    }

    fn proxy_status(status: u16, line: &str) -> TransportError {
        TransportError::ProxyStatus {
            proxy: "p:3128".into(),
            target: "pvespiceproxy:...:61000".into(),
            status,
            status_line: format!("HTTP/1.1 {status} {line}"),
        }
    }

    #[test]
    fn proxy_4xx_is_permanent() {
        let e = proxy_status(407, "Proxy Authentication Required");
        assert!(!e.is_transient());
    }

    #[test]
    fn proxy_status_classes() {
        let e = proxy_status(407, "Whatever");
        assert_eq!(e.class(), TransportClass::ProxyAuth);
        assert!(
            e.to_string().contains("proxy authentication required"),
            "{e}"
        );
        for s in [401, 403] {
            let e = proxy_status(s, "Unauthorized");
            assert_eq!(e.class(), TransportClass::TicketRefused, "{s}");
            assert!(!e.is_transient());
            assert!(e.to_string().ends_with("the ticket was refused"), "{e}");
            // Not a Proxmox target: no ticket talk, same class.
            let e = TransportError::ProxyStatus {
                proxy: "p:3128".into(),
                target: "127.0.0.1:5900".into(),
                status: s,
                status_line: format!("HTTP/1.1 {s} Access violation"),
            };
            assert_eq!(e.class(), TransportClass::TicketRefused, "{s}");
            assert!(!e.to_string().contains("ticket"), "{e}");
        }
        for s in [500, 502, 503, 504, 599] {
            let e = proxy_status(s, "Bad Gateway");
            assert_eq!(e.class(), TransportClass::Network, "{s}");
            assert!(e.is_transient());
        }
        for s in [400, 404, 405, 418, 499, 300, 101] {
            let e = proxy_status(s, "Nope");
            assert_eq!(e.class(), TransportClass::Config, "{s}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn other_classes() {
        use TransportClass as C;
        let table = [
            (
                TransportError::BadProxyUrl { reason: "x".into() },
                C::Config,
            ),
            (
                TransportError::BadHostSubject { reason: "x".into() },
                C::Config,
            ),
            (TransportError::BadCa("x".into()), C::Config),
            (TransportError::BadTarget { reason: "x".into() }, C::Config),
            (TransportError::CertVerify("x".into()), C::TlsVerification),
            (
                TransportError::HostSubjectMismatch {
                    expected: "a".into(),
                    found: "b".into(),
                },
                C::TlsVerification,
            ),
            (
                TransportError::ProxyConnect {
                    proxy: "p".into(),
                    kind: ErrorKind::ConnectionRefused,
                },
                C::Network,
            ),
            (
                TransportError::Timeout {
                    stage: "x".into(),
                    after: Duration::from_secs(1),
                },
                C::Network,
            ),
            (
                TransportError::TlsHandshake {
                    detail: "x".into(),
                    kind: None,
                },
                C::Network,
            ),
        ];
        for (e, class) in table {
            assert_eq!(e.class(), class, "{e}");
            assert_eq!(e.is_transient(), class == C::Network, "{e}");
        }
    }

    #[test]
    fn proxmox_ticket_hosts_are_shortened() {
        let pw = Secret::new("PVESPICEPROXY:6571:100:pve1::abcdef");
        assert_eq!(
            shown_host(
                "pvespiceproxy:PVESPICEPROXY:6571:100:pve1::abcdef",
                Some(&pw)
            ),
            "pvespiceproxy:..."
        );
        assert_eq!(
            shown_host("gw-secret123.example", Some(&Secret::new("secret123"))),
            "gw-....example"
        );
        assert_eq!(shown_host("spice.example", None), "spice.example");
        assert_eq!(shown_authority("::1", 5900, None), "[::1]:5900");
        assert_eq!(shown_authority("10.0.0.1", 5900, None), "10.0.0.1:5900");
    }

    #[test]
    fn only_a_refused_port_or_a_proxy_that_cannot_reach_it_says_the_server_is_down() {
        let status = |status| TransportError::ProxyStatus {
            proxy: "proxy".into(),
            target: "host:5900".into(),
            status,
            status_line: format!("HTTP/1.1 {status} x"),
        };
        let connect = |kind| TransportError::Connect {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5900)),
            kind,
            tried: 1,
        };
        for (e, down) in [
            (connect(ErrorKind::ConnectionRefused), true),
            (status(502), true),
            (status(503), true),
            (status(504), true),
            (connect(ErrorKind::TimedOut), false),
            (connect(ErrorKind::ConnectionReset), false),
            (status(500), false),
            (status(401), false),
            (status(407), false),
        ] {
            assert_eq!(e.server_refused(), down, "{e}");
        }
    }
}
