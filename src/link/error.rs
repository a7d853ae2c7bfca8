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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The .vv `proxy=` value cannot be used (reason never holds credentials).
    BadProxyUrl { reason: String },
    /// The .vv `host-subject=` value cannot be parsed.
    BadHostSubject { reason: String },
    /// The .vv `ca=` (or the system roots) cannot be used.
    BadCa(String),
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
            BadProxyUrl { .. } | BadHostSubject { .. } | BadCa(_) => "config_error",
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

    /// True when the same settings may well work a moment later (network trouble);
    /// false when only a changed .vv/config/certificate can help.
    pub fn is_transient(&self) -> bool {
        use TransportError::*;
        match self {
            BadProxyUrl { .. } | BadHostSubject { .. } | BadCa(_) => false,
            CertVerify(_) | HostSubjectMismatch { .. } => false,
            // 5xx: the proxy could not reach the server (or is overloaded);
            // 4xx: refused by policy or authentication, retrying will not change it.
            ProxyStatus { status, .. } => *status >= 500,
            Resolve { .. }
            | Connect { .. }
            | ProxyConnect { .. }
            | ProxyBadResponse { .. }
            | ProxyTimeout { .. }
            | Timeout { .. }
            | TlsHandshake { .. }
            | Io { .. } => true,
        }
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
                ..
            } => write!(
                f,
                "proxy {proxy} answered `{status_line}` to CONNECT {target}"
            ),
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

    #[test]
    fn proxy_4xx_is_permanent() {
        let e = TransportError::ProxyStatus {
            proxy: "p:3128".into(),
            target: "h:1".into(),
            status: 407,
            status_line: "HTTP/1.1 407 Proxy Authentication Required".into(),
        };
        assert!(!e.is_transient());
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
}
