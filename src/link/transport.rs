//! From connection settings to a byte stream for one SPICE channel: resolve, TCP
//! connect (every address, socket options from `[keepalive]`), optionally through
//! an HTTP CONNECT proxy, optionally TLS. The SPICE link handshake runs on top.
//!
//! All stages share one deadline, `keepalive.connect_timeout_secs`; a timeout names
//! the stage that ran out of it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::error::{shown_authority, shown_host, TransportError};
use super::proxy::{self, ProxyUrl};
use super::sockopt;
use super::tls::TlsSetup;
use crate::config::{Config, KeepaliveConfig};
use crate::vv::ConnectionSettings;

pub use super::stream::{Io, Stream};

/// Where one channel connects: the .vv host and the plain or TLS port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Opens the byte stream for one channel.
///
/// `tls` is the session's prebuilt [`TlsSetup`]; with `None` a TLS target builds
/// one on the spot (parsing `ca` and `host-subject` again).
pub async fn connect(
    settings: &ConnectionSettings,
    config: &Config,
    tls: Option<&TlsSetup>,
    target: &Target,
) -> Result<Stream, TransportError> {
    let budget = connect_budget(&config.keepalive);
    let deadline = Instant::now() + budget;
    let password = settings.password.as_ref();
    let shown_target = shown_authority(&target.host, target.port, password);
    let shown_name = shown_host(&target.host, password);
    let stream: Stream = match settings.proxy.as_deref().filter(|p| !p.trim().is_empty()) {
        Some(url) => {
            let proxy = ProxyUrl::parse(url)?;
            let tcp = tcp_connect(
                &proxy.host,
                proxy.port,
                Role::Proxy(proxy.to_string()),
                &config.keepalive,
                deadline,
                budget,
            )
            .await?;
            let socket = std::os::fd::AsRawFd::as_raw_fd(&tcp);
            let tunnel = proxy::tunnel(
                tcp,
                &proxy,
                &target.host,
                target.port,
                &shown_target,
                deadline,
                budget,
            )
            .await?;
            Stream::layered(tunnel, Some(socket))
        }
        None => Stream::tcp(
            tcp_connect(
                &target.host,
                target.port,
                Role::Server(shown_name.clone()),
                &config.keepalive,
                deadline,
                budget,
            )
            .await?,
        ),
    };
    if !target.tls {
        return Ok(stream);
    }
    let built;
    let setup = match tls {
        Some(s) => s,
        None => {
            built = TlsSetup::new(settings, &config.tls)?;
            &built
        }
    };
    setup
        .handshake(stream, &target.host, &shown_name, deadline, budget)
        .await
}

impl Target {
    /// The .vv host on its plain port, the only kind a probe may ask (None for
    /// a TLS-only .vv).
    pub fn plain(settings: &ConnectionSettings) -> Option<Target> {
        Some(Target {
            host: settings.host.clone(),
            port: settings.port?,
            tls: false,
        })
    }
}

/// What a readiness probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The TCP connect (or the proxy's CONNECT) succeeded.
    Listening,
    /// Refused: nothing listens there (or the proxy answered 502/503/504).
    Refused,
    /// No answer in time, or a failure that says nothing about the server.
    Unknown,
}

/// Connects to `target`'s first hop as a channel would (resolve, TCP, the
/// proxy's CONNECT) within `within`, and closes at once: no TLS, no SPICE link,
/// so the server sees a connection end before its link header (spice-server
/// 0.15 logs nothing for that on a plain port, but warns on a TLS port: callers
/// probe plain ports only).
pub async fn probe(
    settings: &ConnectionSettings,
    config: &Config,
    target: &Target,
    within: Duration,
) -> Probe {
    let mut cfg = config.clone();
    cfg.keepalive.connect_timeout_secs = within.as_secs_f64().max(0.01);
    let plain = Target {
        tls: false,
        ..target.clone()
    };
    match connect(settings, &cfg, None, &plain).await {
        Ok(stream) => {
            drop(stream);
            Probe::Listening
        }
        Err(e) if e.server_refused() => Probe::Refused,
        Err(_) => Probe::Unknown,
    }
}

fn connect_budget(k: &KeepaliveConfig) -> Duration {
    // Config::validate keeps it finite and > 0; guard anyway (no panic on input).
    Duration::try_from_secs_f64(k.connect_timeout_secs)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(15))
}

/// Who we are connecting to, for error messages (already redacted).
enum Role {
    Server(String),
    Proxy(String),
}

/// Resolves `host` and connects to each address in turn until one answers; each
/// attempt gets an equal share of what is left of the deadline.
async fn tcp_connect(
    host: &str,
    port: u16,
    role: Role,
    ka: &KeepaliveConfig,
    deadline: Instant,
    budget: Duration,
) -> Result<TcpStream, TransportError> {
    let (is_proxy, name) = match &role {
        Role::Server(n) => (false, n.clone()),
        Role::Proxy(n) => (true, n.clone()),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let looked_up =
                tokio::time::timeout_at(deadline, tokio::net::lookup_host((bare, port)))
                    .await
                    .map_err(|_| TransportError::Timeout {
                        stage: format!(
                            "resolving {}`{name}`",
                            if is_proxy { "proxy " } else { "" }
                        ),
                        after: budget,
                    })?;
            match looked_up {
                Ok(it) => it.collect(),
                Err(e) => {
                    return Err(TransportError::Resolve {
                        host: name,
                        proxy: is_proxy,
                        kind: e.kind(),
                        detail: e.to_string(),
                    })
                }
            }
        }
    };
    if addrs.is_empty() {
        return Err(TransportError::Resolve {
            host: name,
            proxy: is_proxy,
            kind: std::io::ErrorKind::NotFound,
            detail: "no address".into(),
        });
    }
    let tried = addrs.len();
    match connect_addrs(&addrs, ka, deadline).await {
        Ok(stream) => {
            tracing::debug!(peer = ?stream.peer_addr().ok(), proxy = is_proxy, "TCP connected");
            Ok(stream)
        }
        Err(Some((_, kind))) if is_proxy => Err(TransportError::ProxyConnect { proxy: name, kind }),
        Err(Some((addr, kind))) => Err(TransportError::Connect { addr, kind, tried }),
        Err(None) => Err(TransportError::Timeout {
            stage: if is_proxy {
                format!("TCP connect to proxy {name}")
            } else {
                format!("TCP connect to {name}:{port}")
            },
            after: budget,
        }),
    }
}

/// Tries each address in turn (IPv6 and IPv4 as resolved), each attempt getting
/// an equal share of what is left until `deadline`. The error is the last
/// address that failed and how, or `None` when every attempt timed out.
async fn connect_addrs(
    addrs: &[SocketAddr],
    ka: &KeepaliveConfig,
    deadline: Instant,
) -> Result<TcpStream, Option<(SocketAddr, std::io::ErrorKind)>> {
    let mut last_err = None;
    for (i, addr) in addrs.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX).max(1);
        let share = (deadline - now) / left;
        // A socket that cannot even be made (IPv6 disabled, ...) fails only this address.
        let sock = match new_socket(addr, ka) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "socket setup failed");
                last_err = Some((*addr, e.kind()));
                continue;
            }
        };
        match tokio::time::timeout(share, sock.connect(*addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "TCP connect failed");
                last_err = Some((*addr, e.kind()));
            }
            Err(_) => tracing::debug!(%addr, "TCP connect timed out"),
        }
    }
    Err(last_err)
}

fn new_socket(addr: &SocketAddr, ka: &KeepaliveConfig) -> std::io::Result<TcpSocket> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sockopt::apply(socket2::SockRef::from(&sock), ka)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings() -> ConnectionSettings {
        ConnectionSettings {
            host: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn plain_tcp_carries_bytes_and_sets_options() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let mut s = connect(&settings(), &Config::default(), None, &t)
            .await
            .unwrap();
        s.write_all(b"REDQ").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"REDQ");
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn refused_names_the_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let e = connect(&settings(), &Config::default(), None, &t)
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
        assert_eq!(e.cause(), "connect_refused");
        assert!(e.is_transient());
    }

    #[tokio::test]
    async fn every_address_is_tried() {
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        let mut addrs = vec![closed];
        // An IPv6 address first, as getaddrinfo often orders them (refused or
        // unsupported here: either way the next address is tried).
        addrs.insert(
            0,
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), closed.port()),
        );
        addrs.push(open);
        let deadline = Instant::now() + Duration::from_secs(5);
        let ka = KeepaliveConfig::default();
        let s = connect_addrs(&addrs, &ka, deadline).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), open);
        let e = connect_addrs(&addrs[..2], &ka, deadline).await.unwrap_err();
        assert_eq!(e, Some((closed, std::io::ErrorKind::ConnectionRefused)));
    }

    #[tokio::test]
    async fn unresolvable_host_is_dns() {
        let t = Target {
            host: "no-such-host.invalid".into(),
            port: 5900,
            tls: false,
        };
        let e = connect(&settings(), &Config::default(), None, &t)
            .await
            .err()
            .unwrap();
        assert_eq!(e.cause(), "dns", "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot resolve host `no-such-host.invalid`"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bad_proxy_url_is_a_config_error() {
        let s = ConnectionSettings {
            proxy: Some("socks5://u:secret@p:1".into()),
            ..settings()
        };
        let t = Target {
            host: "h".into(),
            port: 1,
            tls: false,
        };
        let e = connect(&s, &Config::default(), None, &t)
            .await
            .err()
            .unwrap();
        assert_eq!(e.cause(), "config_error");
        assert!(!e.to_string().contains("secret"));
    }
}
