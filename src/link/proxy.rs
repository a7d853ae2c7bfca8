//! HTTP CONNECT proxy: the .vv `proxy=` URL, the CONNECT request, the parse of the
//! proxy's answer (sans-IO), and the small async driver that runs them on a socket.
//!
//! The URL is read as spice-gtk reads it: no scheme means `http`, default port
//! 3128, optional `user:password@`, IPv6 literals in brackets, trailing slashes
//! ignored. Only `http` is supported. The target host goes into CONNECT verbatim
//! (Proxmox's `pvespiceproxy:<ticket>` is not a DNS name; only the proxy knows it).
//! The answer is read with a bounded buffer and deadline; bytes the proxy sent
//! after the header's blank line already belong to the tunnel and are kept.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::error::TransportError;
use crate::secret::Secret;

/// Largest proxy answer header accepted.
pub const MAX_HEADER: usize = 16 * 1024;

/// A parsed `proxy=` value. Its `Debug`/`Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.user.is_some())
            .finish()
    }
}

impl std::fmt::Display for ProxyUrl {
    /// `host:port` (IPv6 in brackets), never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&authority(&self.host, self.port))
    }
}

fn bad(reason: impl Into<String>) -> TransportError {
    TransportError::BadProxyUrl {
        reason: reason.into(),
    }
}

impl ProxyUrl {
    pub fn parse(url: &str) -> Result<ProxyUrl, TransportError> {
        let url = url.trim();
        let rest = match split_scheme(url) {
            (Some(scheme), rest) => {
                if !scheme.eq_ignore_ascii_case("http") {
                    // The scheme never holds credentials, so it may be quoted.
                    let shown: String = scheme.chars().take(16).collect();
                    return Err(bad(format!(
                        "scheme `{shown}` is not supported (only http://)"
                    )));
                }
                rest
            }
            (None, rest) => rest,
        };
        // The credentials end at the LAST `@`: people write passwords with `/`,
        // `@`, `:` unencoded, and `/` in a password must not read as a path.
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        if hostport.contains('/') || hostport.contains('?') || hostport.contains('#') {
            return Err(bad("a proxy URL has no path"));
        }
        let (user, password, hostport) = match userinfo {
            Some(userinfo) => {
                let (u, p) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(Secret::new(p))),
                    None => (userinfo, None),
                };
                (Some(u.to_string()), p, hostport)
            }
            None => (None, None, hostport),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("missing `]` after an IPv6 address"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(format!("`[{h}]` is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after `]`"))?,
                ),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the host contains spaces or control characters"));
        }
        let port = match port {
            None => 3128,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(format!("port `{p}` is not a number in 1..65535"))),
            },
        };
        Ok(ProxyUrl {
            host: host.to_string(),
            port,
            user,
            password,
        })
    }
}

/// `scheme://rest` → `(Some(scheme), rest)`; no scheme → `(None, url)`. Only
/// RFC 3986 scheme characters count, so a `://` inside credentials
/// (`u:pa://x@proxy`) is not taken for a scheme (and never quoted as one).
pub fn split_scheme(url: &str) -> (Option<&str>, &str) {
    match url.find("://") {
        Some(i)
            if i > 0
                && url[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            (Some(&url[..i]), &url[i + 3..])
        }
        _ => (None, url),
    }
}

/// The `user[:password]` part of a proxy URL, as [`ProxyUrl::parse`] reads it:
/// everything before the last `@` after the scheme. `None` without credentials.
pub fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = split_scheme(url.trim());
    rest.rfind('@').map(|at| &rest[..at])
}

/// `host:port` with an IPv6 literal bracketed (as CONNECT and Host need it).
pub fn authority(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The CONNECT request for `host:port`, with Basic credentials if the URL had any.
/// A host with control characters is refused, never sent: a CR/LF would end the
/// request line and let the .vv inject headers (the .vv parser refuses such hosts
/// too; this is defence in depth). The error never quotes the host, which may
/// embed a ticket.
pub fn connect_request(proxy: &ProxyUrl, host: &str, port: u16) -> Result<Vec<u8>, TransportError> {
    if host.chars().any(char::is_control) {
        return Err(TransportError::BadTarget {
            reason: "the host contains control characters".into(),
        });
    }
    let target = authority(host, port);
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(user) = &proxy.user {
        let pass = proxy.password.as_ref().map(Secret::expose).unwrap_or("");
        let token = crate::base64::encode(format!("{user}:{pass}").as_bytes());
        req.push_str("Proxy-Authorization: Basic ");
        req.push_str(&token);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    Ok(req.into_bytes())
}

/// What the bytes received so far say about the proxy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAnswer {
    /// The header is not complete yet: read more.
    Incomplete,
    /// The header ended after `header_len` bytes; the rest is tunnel data.
    Done {
        status: u16,
        status_line: String,
        header_len: usize,
    },
    /// Not an HTTP answer, or a header over [`MAX_HEADER`].
    Invalid(String),
}

/// Parses the proxy's answer header from the start of `buf`.
pub fn parse_answer(buf: &[u8]) -> ProxyAnswer {
    const PREFIX: &[u8] = b"HTTP/";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return ProxyAnswer::Invalid(format!(
            "the answer is not HTTP: `{}`",
            crate::text::printable_bytes(first_line(buf))
        ));
    }
    let header_len = match find_header_end(buf) {
        Some(len) => len,
        None if buf.len() >= MAX_HEADER => {
            return ProxyAnswer::Invalid(format!(
                "answer header longer than {} KiB",
                MAX_HEADER / 1024
            ))
        }
        None => return ProxyAnswer::Incomplete,
    };
    if header_len > MAX_HEADER {
        return ProxyAnswer::Invalid(format!(
            "answer header longer than {} KiB",
            MAX_HEADER / 1024
        ));
    }
    let line = crate::text::printable_bytes(first_line(&buf[..header_len]));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    let status = match (version.len() >= 8, code.len() == 3, code.parse::<u16>()) {
        (true, true, Ok(s)) if (100..600).contains(&s) => s,
        _ => {
            return ProxyAnswer::Invalid(format!("malformed status line `{line}`"));
        }
    };
    ProxyAnswer::Done {
        status,
        status_line: line,
        header_len,
    }
}

/// Index just past the blank line ending the header (`\r\n\r\n` or bare `\n\n`).
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => {}
        }
        i = next;
    }
    None
}

fn first_line(buf: &[u8]) -> &[u8] {
    let end = buf
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(buf.len());
    &buf[..end.min(200)]
}

/// Sends CONNECT on `stream` (already connected to the proxy) and reads the answer
/// until `deadline`. `shown_target` is the target as it may appear in errors.
pub async fn tunnel<S>(
    mut stream: S,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    shown_target: &str,
    deadline: Instant,
    budget: std::time::Duration,
) -> Result<Prefixed<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let proxy_name = proxy.to_string();
    let timeout = || TransportError::ProxyTimeout {
        proxy: proxy_name.clone(),
        target: shown_target.to_string(),
        after: budget,
    };
    let io_err = |stage: &str, e: io::Error| TransportError::Io {
        stage: format!("{stage} proxy {proxy_name}"),
        kind: e.kind(),
    };
    let req = connect_request(proxy, host, port)?;
    tokio::time::timeout_at(deadline, stream.write_all(&req))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| io_err("sending CONNECT to", e))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| io_err("reading the answer of", e))?;
        if n == 0 {
            return Err(TransportError::ProxyBadResponse {
                proxy: proxy_name.clone(),
                target: shown_target.to_string(),
                detail: if buf.is_empty() {
                    "it closed the connection without answering".into()
                } else {
                    "it closed the connection in the middle of its answer".into()
                },
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_answer(&buf) {
            ProxyAnswer::Incomplete => continue,
            ProxyAnswer::Invalid(detail) => {
                return Err(TransportError::ProxyBadResponse {
                    proxy: proxy_name.clone(),
                    target: shown_target.to_string(),
                    detail,
                })
            }
            ProxyAnswer::Done {
                status,
                status_line,
                header_len,
            } => {
                if !(200..300).contains(&status) {
                    return Err(TransportError::ProxyStatus {
                        proxy: proxy_name.clone(),
                        target: shown_target.to_string(),
                        status,
                        status_line,
                    });
                }
                tracing::debug!(proxy = %proxy_name, target = %shown_target, %status_line, "proxy tunnel open");
                buf.drain(..header_len);
                return Ok(Prefixed::new(buf, stream));
            }
        }
    }
}

/// A stream that first yields bytes already read from `inner`, then `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
    /// Bytes not yet handed to the reader.
    pub fn pending(&self) -> &[u8] {
        &self.prefix[self.pos..]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = ProxyUrl::parse("http://proxy.example:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.is_none()),
            ("proxy.example", 8080, true)
        );
        let u = ProxyUrl::parse("proxy.example").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("proxy.example", 3128));
        let u = ProxyUrl::parse("HTTP://pve1:3128/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("pve1", 3128));
        let u = ProxyUrl::parse("http://[::1]:3128").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3128));
        assert_eq!(u.to_string(), "[::1]:3128");
        let u = ProxyUrl::parse("http://[fe80::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 3128));
    }

    #[test]
    fn url_credentials_are_kept_but_never_shown() {
        let u = ProxyUrl::parse("http://alice:s3cr3t:x@proxy:3128").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s3cr3t:x"));
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("alice"),
            "{shown}"
        );
        let u = ProxyUrl::parse("http://bob@[::1]:1").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.password.is_none(), u.port),
            (Some("bob"), true, 1)
        );
    }

    #[test]
    fn url_errors_never_quote_credentials() {
        for bad_url in [
            "https://u:pw@proxy:3129",
            "socks5://u:pw@proxy:1080",
            "http://u:pw@proxy:99999",
            "http://u:pw@proxy:0",
            "http://u:pw@proxy:x",
            "http://u:pw@[::1",
            "http://u:pw@[::1]x",
            "http://u:pw@[nothex]:1",
            "http://u:pw@:3128",
            "http://u:pw@proxy:3128/path",
            "http://u:pw@",
        ] {
            let e = ProxyUrl::parse(bad_url).unwrap_err();
            assert!(matches!(e, TransportError::BadProxyUrl { .. }), "{bad_url}");
            assert!(!e.to_string().contains("pw"), "{bad_url}: {e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn connect_request_is_verbatim() {
        let p = ProxyUrl::parse("http://proxy:3128").unwrap();
        let r = connect_request(&p, "pvespiceproxy:abc:100:node1::def", 61000).unwrap();
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "CONNECT pvespiceproxy:abc:100:node1::def:61000 HTTP/1.1\r\nHost: pvespiceproxy:abc:100:node1::def:61000\r\n\r\n"
        );
        let r = connect_request(&p, "::1", 5900).unwrap();
        assert!(String::from_utf8(r)
            .unwrap()
            .starts_with("CONNECT [::1]:5900 HTTP/1.1\r\n"));
    }

    #[test]
    fn connect_request_with_basic_auth() {
        let p = ProxyUrl::parse("http://Aladdin:open sesame@proxy").unwrap();
        let r = String::from_utf8(connect_request(&p, "h", 1).unwrap()).unwrap();
        assert!(r.contains("\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"));
    }

    #[test]
    fn connect_request_refuses_control_characters() {
        let p = ProxyUrl::parse("http://proxy:3128").unwrap();
        for host in [
            "h\r\nX-Injected: 1",
            "h\n",
            "h\r",
            "pvespiceproxy:t\0",
            "h\t",
            "h\x7f",
            "h\u{85}",
        ] {
            let e = connect_request(&p, host, 1).unwrap_err();
            assert!(matches!(e, TransportError::BadTarget { .. }), "{host:?}");
            assert!(!e.to_string().contains("pvespiceproxy"), "{e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn credentials_with_scheme_separator_are_not_a_scheme() {
        let u = ProxyUrl::parse("u:pa://x@proxy").unwrap();
        assert_eq!(u.user.as_deref(), Some("u"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pa://x"));
        assert_eq!(u.host, "proxy");
        assert_eq!(userinfo("http://a:b@c@h:1"), Some("a:b@c"));
        assert_eq!(userinfo("h:1"), None);
        assert_eq!(split_scheme("HTTP://h"), (Some("HTTP"), "h"));
        assert_eq!(split_scheme("://h"), (None, "://h"));
    }

    #[test]
    fn url_password_may_hold_slash_and_at() {
        let u = ProxyUrl::parse("http://alice:pa/ss@proxy:3128").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pa/ss"));
        assert_eq!((u.host.as_str(), u.port), ("proxy", 3128));
        let u = ProxyUrl::parse("bob:p@ss/x@[::1]:8/").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p@ss/x"));
        assert_eq!((u.host.as_str(), u.port), ("::1", 8));
    }

    #[test]
    fn answer_2xx_keeps_trailing_bytes() {
        let buf = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\nREDQ";
        match parse_answer(buf) {
            ProxyAnswer::Done {
                status,
                status_line,
                header_len,
            } => {
                assert_eq!(status, 200);
                assert_eq!(status_line, "HTTP/1.1 200 Connection established");
                assert_eq!(&buf[header_len..], b"REDQ");
            }
            other => panic!("{other:?}"),
        }
        // Bare LF line ends are accepted too.
        assert!(matches!(
            parse_answer(b"HTTP/1.0 200 OK\n\nX"),
            ProxyAnswer::Done { header_len: 17, .. }
        ));
    }

    #[test]
    fn answer_errors_quote_the_status_line() {
        for (buf, code, line) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
                    [..],
                407,
                "HTTP/1.1 407 Proxy Authentication Required",
            ),
            (
                &b"HTTP/1.1 502 Bad Gateway\r\n\r\n<html>"[..],
                502,
                "HTTP/1.1 502 Bad Gateway",
            ),
            (
                &b"HTTP/1.0 403 Access violation\r\n\r\n"[..],
                403,
                "HTTP/1.0 403 Access violation",
            ),
        ] {
            match parse_answer(buf) {
                ProxyAnswer::Done {
                    status,
                    status_line,
                    ..
                } => assert_eq!((status, status_line.as_str()), (code, line)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn answer_incomplete_until_blank_line() {
        let full = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_answer(&full[..i]), ProxyAnswer::Incomplete, "at {i}");
        }
        assert!(matches!(parse_answer(full), ProxyAnswer::Done { .. }));
    }

    #[test]
    fn answer_garbage_is_invalid_at_once() {
        assert!(matches!(
            parse_answer(b"SSH-2.0-OpenSSH\r\n"),
            ProxyAnswer::Invalid(_)
        ));
        assert!(matches!(
            parse_answer(b"\x16\x03\x01"),
            ProxyAnswer::Invalid(_)
        ));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 20 OK\r\n\r\n"),
            ProxyAnswer::Invalid(_)
        ));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 abc OK\r\n\r\n"),
            ProxyAnswer::Invalid(_)
        ));
        assert!(matches!(
            parse_answer(b"HTTP/ 200 OK\r\n\r\n"),
            ProxyAnswer::Invalid(_)
        ));
        match parse_answer(b"REDQ\x02\x00\x00\x00") {
            ProxyAnswer::Invalid(d) => {
                assert_eq!(d, "the answer is not HTTP: `REDQ\\x02\\x00\\x00\\x00`")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answer_header_is_capped() {
        let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
        while buf.len() < MAX_HEADER {
            buf.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse_answer(&buf), ProxyAnswer::Invalid(_)));
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(parse_answer(&buf), ProxyAnswer::Invalid(_)));
    }

    #[tokio::test]
    async fn tunnel_keeps_bytes_after_the_header() {
        let (client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let mut got = vec![0u8; 64];
            let n = server.read(&mut got).await.unwrap();
            got.truncate(n);
            server
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nEARLY")
                .await
                .unwrap();
            server.write_all(b"-LATE").await.unwrap();
            got
        });
        let p = ProxyUrl::parse("http://p:1").unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut t = tunnel(
            client,
            &p,
            "h",
            2,
            "h:2",
            deadline,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut got = vec![0u8; 10];
        t.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"EARLY-LATE");
        let req = srv.await.unwrap();
        assert!(req.starts_with(b"CONNECT h:2 HTTP/1.1\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn tunnel_times_out_on_a_silent_proxy() {
        let (client, _server) = tokio::io::duplex(4096);
        let p = ProxyUrl::parse("http://p:1").unwrap();
        let budget = std::time::Duration::from_secs(15);
        let e = tunnel(client, &p, "h", 2, "h:2", Instant::now() + budget, budget)
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "proxy p:1 did not answer CONNECT h:2 within 15 s"
        );
        assert_eq!(e.cause(), "timeout");
    }

    #[tokio::test]
    async fn tunnel_reports_a_proxy_that_hangs_up() {
        let (client, server) = tokio::io::duplex(4096);
        drop(server);
        let p = ProxyUrl::parse("http://p:1").unwrap();
        let d = std::time::Duration::from_secs(5);
        let e = tunnel(client, &p, "h", 2, "h:2", Instant::now() + d, d)
            .await
            .err()
            .unwrap();
        // Writing into a closed duplex fails first: an I/O error naming the proxy.
        assert!(e.to_string().contains("proxy p:1"), "{e}");
    }
}
