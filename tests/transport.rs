//! The transport against real programs on 127.0.0.1: a real tinyproxy for HTTP
//! CONNECT, the harness's openssl-made certificates (tests/common) served by a
//! tokio-rustls server, and a real spice-server in the harness's QEMU.
//!
//! Missing programs (tinyproxy, openssl, QEMU): the test fails when `CI` is set,
//! else it is skipped with a note on stderr.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::certs::unrelated_ca_pem;
use common::{free_port, have_program, require_qemu, Certs, Qemu, QemuOpts, Tinyproxy};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spiced::config::Config;
use spiced::link::{connect, Target, TlsSetup, TransportError};
use spiced::secret::Secret;
use spiced::vv::ConnectionSettings;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The server certificate's CN, and the subject a matching host-subject names.
const CN: &str = "spice-lab-server";
const SUBJECT: &str = "O=spice-lab,CN=spice-lab-server";

/// True if `prog` is installed; otherwise fails under CI or prints a skip note.
fn have(prog: &str) -> bool {
    let found = have_program(prog);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{prog} is required (CI is set): apt-get install {prog}");
        }
        eprintln!("SKIPPED: {prog} not found (install it, e.g. apt-get install {prog})");
    }
    found
}

// ---------------------------------------------------------------- certificates

/// The harness's CA + v3 server certificate for `CN` (SAN IP:127.0.0.1 +
/// DNS:localhost, serverAuth), plus `v1-cert.pem`: an X.509 v1 certificate for
/// the same key. The directory lives as long as the returned `TempDir`. `None`
/// (test skipped) without openssl.
fn make_certs() -> Option<(tempfile::TempDir, Certs)> {
    if !have("openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), CN);
    assert_eq!(certs.host_subject(), SUBJECT);
    certs.write_x509_v1_server_cert(&certs.dir().join("v1-cert.pem"));
    Some((dir, certs))
}

// ---------------------------------------------------------------- servers

/// Echoes every byte on every accepted connection.
async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn echo_server(bind: &str) -> u16 {
    let l = TcpListener::bind(bind).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_echo(s));
        }
    });
    port
}

/// Serves `cert` (any version: the key is not checked against it, so a v1
/// certificate can be served too).
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn tls_echo_server(certs: &Certs, cert: &str, bind: &str) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![CertificateDer::from_pem_file(certs.dir().join(cert)).unwrap()];
    let key = PrivateKeyDer::from_pem_file(certs.dir().join("server-key.pem")).unwrap();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let ck = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(ck)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind(bind).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve_echo(tls).await;
                }
            });
        }
    });
    port
}

/// A minimal CONNECT proxy that tunnels any target to 127.0.0.1:`to` and
/// reports the request header it received.
async fn fake_proxy(to: u16) -> (u16, tokio::sync::oneshot::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
            if c.read(&mut b).await.unwrap() == 0 {
                return;
            }
            head.push(b[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        let mut up = tokio::net::TcpStream::connect(("127.0.0.1", to))
            .await
            .unwrap();
        c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
    });
    (port, rx)
}

// ---------------------------------------------------------------- helpers

fn target(host: &str, port: u16, tls: bool) -> Target {
    Target {
        host: host.into(),
        port,
        tls,
    }
}

fn settings(host: &str) -> ConnectionSettings {
    ConnectionSettings {
        host: host.into(),
        ..Default::default()
    }
}

fn tls_settings(certs: &Certs, host: &str, subject: Option<&str>) -> ConnectionSettings {
    ConnectionSettings {
        ca: Some(certs.ca_pem()),
        host_subject: subject.map(str::to_string),
        ..settings(host)
    }
}

async fn roundtrip(s: &mut spiced::link::Stream) {
    s.write_all(b"REDQ\x02\x00\x00\x00").await.unwrap();
    let mut b = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&b, b"REDQ\x02\x00\x00\x00");
}

async fn tls_connect(
    s: &ConnectionSettings,
    port: u16,
) -> Result<spiced::link::Stream, TransportError> {
    let t = target(&s.host, port, true);
    tls_connect_target(s, &t).await
}

// ---------------------------------------------------------------- proxy

#[tokio::test]
async fn tinyproxy_connect_carries_bytes() {
    if !Tinyproxy::available() {
        return;
    }
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Tinyproxy::start(&[echo], 5);
    let s = ConnectionSettings {
        proxy: Some(proxy.url()),
        ..settings("127.0.0.1")
    };
    let t = target("127.0.0.1", echo, false);
    let mut stream = connect(&s, &Config::default(), None, &t).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test]
async fn tinyproxy_forbidden_port_quotes_the_status_line() {
    if !Tinyproxy::available() {
        return;
    }
    let allowed = echo_server("127.0.0.1:0").await;
    let forbidden = echo_server("127.0.0.1:0").await;
    let proxy = Tinyproxy::start(&[allowed], 5);
    let s = ConnectionSettings {
        proxy: Some(format!("{}/", proxy.url())),
        ..settings("127.0.0.1")
    };
    let t = target("127.0.0.1", forbidden, false);
    let e = connect(&s, &Config::default(), None, &t)
        .await
        .err()
        .unwrap();
    match &e {
        TransportError::ProxyStatus {
            status,
            status_line,
            ..
        } => {
            assert_eq!(*status, 403);
            assert!(
                status_line.starts_with("HTTP/1.") && status_line.contains(" 403"),
                "{status_line}"
            );
            let want = format!(
                "proxy 127.0.0.1:{} answered `{status_line}` to CONNECT 127.0.0.1:{forbidden}",
                proxy.port()
            );
            assert_eq!(e.to_string(), want);
        }
        other => panic!("expected ProxyStatus, got {other:?}"),
    }
    assert_eq!(e.cause(), "proxy_error");
    assert!(!e.is_transient());
    eprintln!("tinyproxy said: {e}");
}

#[tokio::test]
async fn proxy_not_running_is_proxy_connect_refused() {
    let port = free_port();
    let s = ConnectionSettings {
        proxy: Some(format!("http://127.0.0.1:{port}")),
        ..settings("pvespiceproxy:secret-ticket:100:node1::abc")
    };
    let t = target(&s.host, 61000, false);
    let e = connect(&s, &Config::default(), None, &t)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, TransportError::ProxyConnect { .. }), "{e:?}");
    assert_eq!(e.io_kind().as_deref(), Some("ConnectionRefused"));
    assert_eq!(e.cause(), "proxy_error");
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("cannot connect to proxy 127.0.0.1:{port}: connection refused")
    );
}

#[tokio::test]
async fn proxy_on_ipv6_literal() {
    let Ok(l) = TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    };
    let port = l.local_addr().unwrap().port();
    let echo = echo_server("127.0.0.1:0").await;
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut head = vec![0u8; 256];
        let n = c.read(&mut head).await.unwrap();
        head.truncate(n);
        assert!(
            head.starts_with(b"CONNECT [::1]:"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut up = tokio::net::TcpStream::connect(("127.0.0.1", echo))
            .await
            .unwrap();
        c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
    });
    let s = ConnectionSettings {
        proxy: Some(format!("http://[::1]:{port}")),
        ..settings("::1")
    };
    let t = target("::1", 5900, false);
    let mut stream = connect(&s, &Config::default(), None, &t).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test(start_paused = true)]
async fn silent_proxy_times_out() {
    // Accepted by the kernel's backlog, never answered.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let s = ConnectionSettings {
        proxy: Some(format!("http://127.0.0.1:{port}")),
        ..settings("spice.example")
    };
    let t = target("spice.example", 5900, false);
    let e = connect(&s, &Config::default(), None, &t)
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("proxy 127.0.0.1:{port} did not answer CONNECT spice.example:5900 within 15 s")
    );
    assert_eq!(e.cause(), "timeout");
    drop(l);
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_host_subject_match_connects() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    let s = tls_settings(&certs, "127.0.0.1", Some(SUBJECT));
    let mut stream = tls_connect(&s, port).await.unwrap();
    roundtrip(&mut stream).await;
    // Spacing and case differences are canonicalised as OpenSSL does.
    let s = tls_settings(
        &certs,
        "127.0.0.1",
        Some(" O= Spice-Lab ,CN=SPICE-LAB-SERVER"),
    );
    let mut stream = tls_connect(&s, port).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test]
async fn tls_host_subject_mismatch() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    for wrong in [
        "O=x,CN=y",
        "CN=spice-lab-server,O=spice-lab",
        "CN=spice-lab-server",
    ] {
        let s = tls_settings(&certs, "127.0.0.1", Some(wrong));
        let e = tls_connect(&s, port).await.err().unwrap();
        assert_eq!(
            e,
            TransportError::HostSubjectMismatch {
                expected: wrong.into(),
                found: SUBJECT.into()
            }
        );
        assert_eq!(
            e.to_string(),
            format!("certificate subject `{SUBJECT}` does not match host-subject `{wrong}`")
        );
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn tls_without_host_subject_checks_ip_and_name() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    for host in ["127.0.0.1", "localhost"] {
        let s = tls_settings(&certs, host, None);
        let mut stream = tls_connect(&s, port)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        roundtrip(&mut stream).await;
    }
    // 127.0.0.2 is loopback too, but not in the certificate.
    let port2 = tls_echo_server(&certs, "server-cert.pem", "127.0.0.2:0").await;
    let s = tls_settings(&certs, "127.0.0.2", None);
    let e = tls_connect(&s, port2).await.err().unwrap();
    assert!(matches!(e, TransportError::CertVerify(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "server certificate rejected: it is valid for 127.0.0.1, localhost but not for 127.0.0.2 \
         (set host-subject in the .vv to check the subject instead)"
    );
    eprintln!("{e}");
}

#[tokio::test]
async fn tls_wrong_ca_is_cert_verify() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    let other_ca = unrelated_ca_pem("someone else's CA");
    for subject in [Some(SUBJECT), None] {
        let s = ConnectionSettings {
            ca: Some(other_ca.clone()),
            ..tls_settings(&certs, "127.0.0.1", subject)
        };
        let e = tls_connect(&s, port).await.err().unwrap();
        assert_eq!(
            e,
            TransportError::CertVerify(
                "it is not signed by the `ca` from the .vv (unknown issuer)".into()
            )
        );
        assert_eq!(e.cause(), "cert_error");
    }
    // With several CAs in `ca`, the right one anywhere in the list is enough.
    let both = format!("{other_ca}{}", certs.ca_pem());
    let s = ConnectionSettings {
        ca: Some(both),
        ..tls_settings(&certs, "127.0.0.1", Some(SUBJECT))
    };
    let mut stream = tls_connect(&s, port).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test]
async fn tls_x509_v1_is_refused_clearly_unless_insecure() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "v1-cert.pem", "127.0.0.1:0").await;
    let s = tls_settings(&certs, "127.0.0.1", Some(SUBJECT));
    let e = tls_connect(&s, port).await.err().unwrap();
    assert!(matches!(e, TransportError::CertVerify(_)), "{e:?}");
    assert!(e.to_string().contains("X.509 v1"), "{e}");
    // Insecure mode accepts it (and anything else).
    let mut cfg = Config::default();
    cfg.tls.insecure = true;
    let setup = TlsSetup::new(&s, &cfg.tls).unwrap();
    let t = target("127.0.0.1", port, true);
    let mut stream = connect(&s, &cfg, Some(&setup), &t).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test]
async fn tls_through_tinyproxy() {
    if !Tinyproxy::available() {
        return;
    }
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    let proxy = Tinyproxy::start(&[port], 5);
    let s = ConnectionSettings {
        proxy: Some(proxy.url()),
        ..tls_settings(&certs, "localhost", Some(SUBJECT))
    };
    // No prebuilt TlsSetup: connect builds one.
    let t = target("localhost", port, true);
    let mut stream = connect(&s, &Config::default(), None, &t).await.unwrap();
    roundtrip(&mut stream).await;
}

#[tokio::test]
async fn proxmox_shape_ticket_host_through_proxy_with_auth() {
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    let tls_port = tls_echo_server(&certs, "server-cert.pem", "127.0.0.1:0").await;
    let (proxy_port, request) = fake_proxy(tls_port).await;
    let ticket = "PVESPICEPROXY:65a1b2c3::deadbeef";
    let host = format!("pvespiceproxy:{ticket}");
    let s = ConnectionSettings {
        proxy: Some(format!("http://spice:pa55@127.0.0.1:{proxy_port}")),
        password: Some(Secret::new(ticket)),
        tls_port: Some(61000),
        ..tls_settings(&certs, &host, Some(SUBJECT))
    };
    let t = target(&host, 61000, true);
    let mut stream = tls_connect_target(&s, &t).await.unwrap();
    roundtrip(&mut stream).await;
    let req = request.await.unwrap();
    assert_eq!(
        req,
        format!(
            "CONNECT {host}:61000 HTTP/1.1\r\nHost: {host}:61000\r\nProxy-Authorization: Basic c3BpY2U6cGE1NQ==\r\n\r\n"
        )
    );

    // Without host-subject such a host cannot be checked: refused, ticket not shown.
    let s = ConnectionSettings {
        host_subject: None,
        ..s
    };
    let (proxy_port, _req) = fake_proxy(tls_port).await;
    let s = ConnectionSettings {
        proxy: Some(format!("http://127.0.0.1:{proxy_port}")),
        ..s
    };
    let e = tls_connect_target(&s, &t).await.err().unwrap();
    assert!(matches!(e, TransportError::CertVerify(_)), "{e:?}");
    assert!(!e.to_string().contains("deadbeef"), "{e}");
    assert!(e.to_string().contains("pvespiceproxy:..."), "{e}");
}

async fn tls_connect_target(
    s: &ConnectionSettings,
    t: &Target,
) -> Result<spiced::link::Stream, TransportError> {
    let cfg = Config::default();
    let setup = TlsSetup::new(s, &cfg.tls)?;
    connect(s, &cfg, Some(&setup), t).await
}

#[tokio::test]
async fn tls_to_a_plain_port_is_a_handshake_error() {
    let port = echo_server("127.0.0.1:0").await;
    let s = ConnectionSettings {
        host_subject: Some(SUBJECT.into()),
        ..settings("127.0.0.1")
    };
    let e = tls_connect(&s, port).await.err().unwrap();
    assert!(matches!(e, TransportError::TlsHandshake { .. }), "{e:?}");
    assert_eq!(e.cause(), "tls_error");
    eprintln!("{e}");
}

// ---------------------------------------------------------------- real spice-server

#[tokio::test]
async fn qemu_spice_server_tls_link_reply() {
    if !require_qemu() {
        return;
    }
    let Some((_dir, certs)) = make_certs() else {
        return;
    };
    // VM paused: only spice-server has to answer.
    let qemu = Qemu::start(QemuOpts {
        paused: true,
        ..QemuOpts::with_tls(&certs)
    });
    let (plain, tls) = (qemu.port(), qemu.tls_port());

    let s = ConnectionSettings {
        tls_port: Some(tls),
        port: Some(plain),
        ..tls_settings(&certs, "127.0.0.1", Some(SUBJECT))
    };
    let mut stream = tls_connect(&s, tls).await.unwrap();
    // SpiceLinkHeader (REDQ, 2.2, size 18) + SpiceLinkMess for main:0, no caps.
    let mut link = Vec::new();
    link.extend_from_slice(b"REDQ");
    for v in [2u32, 2, 18, 0] {
        link.extend_from_slice(&v.to_le_bytes());
    }
    link.extend_from_slice(&[1, 0]);
    for v in [0u32, 0, 18] {
        link.extend_from_slice(&v.to_le_bytes());
    }
    stream.write_all(&link).await.unwrap();
    let mut magic = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut magic))
        .await
        .expect("link reply in time")
        .unwrap();
    assert_eq!(&magic, b"REDQ");

    // TLS against the plain port: spice-server drops it.
    let e = tls_connect(&s, plain).await.err().unwrap();
    assert_eq!(e.cause(), "tls_error", "{e}");
    eprintln!("TLS to the plain SPICE port: {e}");
}

// ---------------------------------------------------------------- black hole

/// Measures how fast TCP_USER_TIMEOUT ends a black-holed connection: 15 s idle
/// (the application keepalive interval), one write that is never acknowledged,
/// then the kernel gives up. Real time (~40 s), and it installs nft rules, so it
/// runs only inside a private network namespace:
/// `unshare -n sh -c 'ip link set lo up; SPICED_NETNS=1 cargo test --test transport -- --ignored blackhole --nocapture'`
#[tokio::test]
#[ignore = "needs a private network namespace and ~40 s"]
async fn blackhole_is_detected_within_45s_of_the_last_byte() {
    if std::env::var_os("SPICED_NETNS").is_none() || !have("nft") {
        eprintln!("SKIPPED: run inside `unshare -n` with SPICED_NETNS=1");
        return;
    }
    let port = echo_server("127.0.0.1:0").await;
    let t = target("127.0.0.1", port, false);
    let mut stream = connect(&settings("127.0.0.1"), &Config::default(), None, &t)
        .await
        .unwrap();
    roundtrip(&mut stream).await;
    let last_byte = std::time::Instant::now();
    for rule in [
        "add table inet spiced_bh".to_string(),
        "add chain inet spiced_bh in { type filter hook input priority 0; }".to_string(),
        format!("add rule inet spiced_bh in tcp dport {port} drop"),
        format!("add rule inet spiced_bh in tcp sport {port} drop"),
    ] {
        let st = Command::new("nft").args(rule.split(' ')).status().unwrap();
        assert!(st.success(), "nft {rule}");
    }
    // The application keepalive fires after 15 s of silence.
    tokio::time::sleep(Duration::from_secs(15)).await;
    stream.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut b))
        .await
        .expect("the kernel should end the connection");
    let elapsed = last_byte.elapsed();
    eprintln!(
        "black hole: read returned {r:?} {:.1} s after the last byte",
        elapsed.as_secs_f64()
    );
    let e = r.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(elapsed < Duration::from_secs(45), "{elapsed:?}");
}
