//! TLS for SPICE channels, with remote-viewer's certificate rules.
//!
//! The chain is always verified (rustls/webpki, ring provider, TLS 1.2 and 1.3)
//! against the .vv's `ca` (PEM, one or more certificates) or, without one, the
//! system store. Then the name: with `host-subject` the certificate subject must
//! match it (see [`super::subject`]) and the host name is not looked at (Proxmox's
//! `pvespiceproxy:...` host is not a name at all); without it the host name or IP
//! must be in the certificate's subjectAltName, or — like spice-common — in its CN
//! when the certificate has no DNS/IP subjectAltName at all. SNI is sent only for
//! DNS names.
//!
//! X.509 v1 server certificates are refused (webpki accepts only v3 end-entity
//! certificates); the error says so and how to fix it. `tls.insecure = true`
//! accepts any certificate and logs a warning at every connect.
//! `tls-ciphers` (an OpenSSL cipher string) is not mapped: rustls offers only
//! modern AEAD suites.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::time::Instant;

use super::error::TransportError;
use super::stream::Stream;
use super::subject::{CertSubject, HostSubject};
use crate::config::TlsConfig;
use crate::vv::ConnectionSettings;

/// SNI placeholder when the host is not a DNS name (only with host-subject or
/// insecure, where the name is not checked); never sent.
const PLACEHOLDER_NAME: &str = "spice-server.invalid";

/// Files tried for the system CA bundle, first found wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
const SYSTEM_DIR: &str = "/etc/ssl/certs";
/// A CA file larger than this is not read.
const MAX_CA_FILE: u64 = 8 * 1024 * 1024;

/// What was checked beside the chain.
#[derive(Debug)]
enum NameCheck {
    Subject(HostSubject),
    HostName,
    Insecure,
}

/// The TLS client side of one session: built once from the .vv, reused for
/// every channel. Cheap to clone.
#[derive(Clone)]
pub struct TlsSetup {
    with_sni: Arc<ClientConfig>,
    without_sni: Arc<ClientConfig>,
    check_subject: bool,
    insecure: bool,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("host_subject", &self.check_subject)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl TlsSetup {
    /// The session's TLS material, built once per .vv, only when the .vv has
    /// a tls-port. The daemon's start and `--check` both call this, so
    /// `--check` refuses exactly what the daemon would (exit 78). Blocking
    /// (the system root store is read from disk).
    pub fn for_settings(
        settings: &ConnectionSettings,
        tls: &TlsConfig,
    ) -> Result<Option<TlsSetup>, TransportError> {
        if settings.tls_port.is_none() {
            return Ok(None);
        }
        TlsSetup::new(settings, tls).map(Some)
    }

    /// Parses `ca` and `host-subject`; loads the system roots when there is no `ca`.
    pub fn new(settings: &ConnectionSettings, tls: &TlsConfig) -> Result<TlsSetup, TransportError> {
        if let Some(ciphers) = &settings.tls_ciphers {
            tracing::debug!(
                tls_ciphers = %ciphers,
                "tls-ciphers from the .vv is not applied: rustls offers only modern AEAD suites"
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algs = provider.signature_verification_algorithms;
        let host_subject = match settings.host_subject.as_deref() {
            Some(text) => {
                Some(
                    HostSubject::parse(text).map_err(|e| TransportError::BadHostSubject {
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let check_subject = host_subject.is_some();
        let (check, roots, origin) = if tls.insecure {
            (NameCheck::Insecure, RootCertStore::empty(), "nothing")
        } else {
            let (roots, origin) = match settings.ca.as_deref() {
                Some(pem) => (roots_from_pem(pem)?, "the `ca` from the .vv"),
                None => (system_roots()?, "the system CA store"),
            };
            let check = match host_subject {
                Some(s) => NameCheck::Subject(s),
                None => NameCheck::HostName,
            };
            (check, roots, origin)
        };
        let verifier = Arc::new(SpiceVerifier {
            roots: Arc::new(roots),
            algs,
            check,
            origin,
        });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TransportError::TlsHandshake {
                detail: format!("TLS setup: {e}"),
                kind: None,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        cfg.enable_sni = true;
        let with_sni = Arc::new(cfg.clone());
        cfg.enable_sni = false;
        Ok(TlsSetup {
            with_sni,
            without_sni: Arc::new(cfg),
            check_subject,
            insecure: tls.insecure,
        })
    }

    /// Runs the TLS handshake over `stream` for `host` (the .vv host, used for
    /// SNI and name checks); `shown_host` is the host as errors may show it.
    pub async fn handshake(
        &self,
        stream: Stream,
        host: &str,
        shown_host: &str,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Stream, TransportError> {
        if self.insecure {
            tracing::warn!(
                host = %shown_host,
                "tls.insecure = true: the server certificate is NOT verified; anyone on the path can impersonate the server"
            );
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let (name, config) = if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            (ServerName::IpAddress(ip.into()), &self.with_sni)
        } else if let Ok(dns) = ServerName::try_from(host.to_string()) {
            (dns, &self.with_sni)
        } else if self.check_subject || self.insecure {
            (
                ServerName::try_from(PLACEHOLDER_NAME).map_err(|_| {
                    TransportError::TlsHandshake {
                        detail: "internal placeholder name rejected".into(),
                        kind: None,
                    }
                })?,
                &self.without_sni,
            )
        } else {
            return Err(TransportError::CertVerify(format!(
                "host `{shown_host}` is neither a DNS name nor an IP address, so the certificate cannot be checked against it; the .vv needs a host-subject"
            )));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let socket = stream.socket();
        let tls = tokio::time::timeout_at(deadline, connector.connect(name, stream))
            .await
            .map_err(|_| TransportError::Timeout {
                stage: format!("TLS handshake with {shown_host}"),
                after: budget,
            })?
            .map_err(classify)?;
        let (_, conn) = tls.get_ref();
        tracing::debug!(
            host = %shown_host,
            version = ?conn.protocol_version(),
            suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
            "TLS established"
        );
        Ok(Stream::layered(tls, socket))
    }
}

/// Reads every certificate of the .vv's `ca`.
fn roots_from_pem(pem: &str) -> Result<RootCertStore, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::BadCa(format!("`ca` in the .vv is not valid PEM: {e}")))?;
    if certs.is_empty() {
        // remote-viewer's `ca` is the PEM text itself; a path is a common slip.
        let hint = if pem.trim_start().starts_with('/') {
            " (it looks like a file name: the .vv carries the certificate itself)"
        } else {
            ""
        };
        return Err(TransportError::BadCa(format!(
            "`ca` in the .vv holds no PEM certificate{hint}"
        )));
    }
    let n = certs.len();
    let mut roots = RootCertStore::empty();
    for (i, der) in certs.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            TransportError::BadCa(format!(
                "`ca` in the .vv: certificate {} of {n} cannot be a trust anchor: {e}",
                i + 1
            ))
        })?;
    }
    Ok(roots)
}

/// The system CA store: `SSL_CERT_FILE`, the usual bundle files, else the PEM
/// files of `SSL_CERT_DIR` or /etc/ssl/certs. Unusable entries are skipped.
fn system_roots() -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        files.push(f.into());
    }
    files.extend(SYSTEM_BUNDLES.iter().map(Into::into));
    for f in &files {
        if let Some(text) = read_bounded(f) {
            add_all(&mut roots, &text);
            if !roots.is_empty() {
                return Ok(roots);
            }
        }
    }
    let dir = std::env::var_os("SSL_CERT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| SYSTEM_DIR.into());
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            let is_pem = matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pem") | Some("crt")
            );
            if is_pem {
                if let Some(text) = read_bounded(&p) {
                    add_all(&mut roots, &text);
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(TransportError::BadCa(format!(
            "the .vv has no `ca` and no system CA certificate was found (tried {} and {})",
            SYSTEM_BUNDLES[0],
            dir.display()
        )));
    }
    Ok(roots)
}

fn read_bounded(path: &std::path::Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_CA_FILE {
        return None;
    }
    std::fs::read(path).ok()
}

fn add_all(roots: &mut RootCertStore, pem: &[u8]) {
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    let (added, skipped) = roots.add_parsable_certificates(certs);
    tracing::trace!(added, skipped, "system CA certificates");
}

/// A verification failure carried through rustls to [`classify`].
#[derive(Debug)]
struct Rejected(TransportError);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Rejected {}

fn reject(e: TransportError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Rejected(e),
    ))))
}

#[derive(Debug)]
struct SpiceVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    check: NameCheck,
    /// Where the roots came from, for messages.
    origin: &'static str,
}

impl ServerCertVerifier for SpiceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let subject = match &self.check {
            NameCheck::Insecure => return Ok(ServerCertVerified::assertion()),
            NameCheck::Subject(s) => Some(s),
            NameCheck::HostName => None,
        };
        if is_x509_v1(end_entity) {
            return Err(reject(TransportError::CertVerify(
                "the server certificate is X.509 v1, which spiced (rustls/webpki) does not accept; \
                 reissue it as v3 (with basicConstraints, subjectAltName and extendedKeyUsage=serverAuth) \
                 or, at your own risk, set tls.insecure = true"
                    .into(),
            )));
        }
        let cert = ParsedCertificate::try_from(end_entity)
            .map_err(|e| reject(TransportError::CertVerify(describe(&e, self.origin))))?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(|e| reject(TransportError::CertVerify(describe(&e, self.origin))))?;
        match subject {
            Some(expected) => {
                let found = CertSubject::from_der(end_entity)
                    .map_err(|e| reject(TransportError::CertVerify(e)))?;
                if expected.matches(&found) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(reject(TransportError::HostSubjectMismatch {
                        expected: expected.as_str().to_string(),
                        found: found.to_string(),
                    }))
                }
            }
            None => match verify_server_name(&cert, server_name) {
                Ok(()) => Ok(ServerCertVerified::assertion()),
                Err(e) if cn_fallback_matches(end_entity, server_name) => {
                    tracing::debug!(error = %e, "certificate has no subjectAltName; its CN matches the host");
                    Ok(ServerCertVerified::assertion())
                }
                Err(e) => Err(reject(TransportError::CertVerify(describe(
                    &e,
                    self.origin,
                )))),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if matches!(self.check, NameCheck::Insecure) {
            // The certificate itself is not trusted, so its signature proves nothing;
            // skipping it lets even X.509 v1 servers work in insecure mode.
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if matches!(self.check, NameCheck::Insecure) {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn is_x509_v1(der: &[u8]) -> bool {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert.version() == x509_parser::x509::X509Version::V1,
        Err(_) => false,
    }
}

/// spice-common's rule: without any DNS/IP subjectAltName, the CN may carry the
/// host name (wildcards within one label allowed).
fn cn_fallback_matches(der: &[u8], name: &ServerName<'_>) -> bool {
    let host = match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => return false,
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    use x509_parser::extensions::GeneralName;
    let has_san_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_))),
        Ok(None) => false,
        // A malformed or duplicated extension: no fallback.
        Err(_) => true,
    };
    if has_san_names {
        return false;
    }
    let matched = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| hostname_matches(cn, &host));
    matched
}

/// Case-insensitive host comparison where each `*` matches part of one label.
fn hostname_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    wildcard(p.as_bytes(), h.as_bytes())
}

fn wildcard(p: &[u8], h: &[u8]) -> bool {
    match p.iter().position(|&c| c == b'*') {
        None => p == h,
        Some(star) => {
            if h.len() < star || p[..star] != h[..star] {
                return false;
            }
            let rest = &p[star + 1..];
            let mut j = star;
            loop {
                if wildcard(rest, &h[j..]) {
                    return true;
                }
                if j >= h.len() || h[j] == b'.' {
                    return false;
                }
                j += 1;
            }
        }
    }
}

/// One readable sentence for a rustls certificate error.
fn describe(e: &rustls::Error, origin: &str) -> String {
    use CertificateError as C;
    let rustls::Error::InvalidCertificate(ce) = e else {
        return e.to_string();
    };
    match ce {
        C::UnknownIssuer => format!("it is not signed by {origin} (unknown issuer)"),
        C::Expired | C::ExpiredContext { .. } => match ce {
            C::ExpiredContext { not_after, .. } => {
                format!("it expired at {}", unix_time(not_after.as_secs()))
            }
            _ => "it has expired".into(),
        },
        C::NotValidYet => "it is not valid yet".into(),
        C::NotValidYetContext { not_before, .. } => {
            format!("it is not valid before {}", unix_time(not_before.as_secs()))
        }
        C::NotValidForName => "it is not valid for this host name".into(),
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = match expected {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                _ => "the host".to_string(),
            };
            format!(
                "it is valid for {} but not for {expected} (set host-subject in the .vv to check the subject instead)",
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| presented_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        }
        C::BadSignature => "its signature is invalid".into(),
        C::UnsupportedSignatureAlgorithmContext { .. } => {
            "it is signed with an algorithm rustls does not accept (SHA-1, MD5 or a weak key?)"
                .into()
        }
        C::BadEncoding => "it is not a well-formed X.509 certificate".into(),
        C::Other(other) => format!("{other}"),
        other => format!("{other:?}"),
    }
}

/// rustls lists presented names in Debug form (`DnsName("x")`, `IpAddress(1.2.3.4)`).
fn presented_name(p: &str) -> String {
    let inner = p
        .strip_prefix("DnsName(")
        .or_else(|| p.strip_prefix("IpAddress("))
        .and_then(|r| r.strip_suffix(')'));
    match inner {
        Some(i) => i.trim_matches('"').to_string(),
        None => p.to_string(),
    }
}

fn unix_time(secs: u64) -> String {
    crate::time::format_unix_utc(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Turns a failed handshake (tokio-rustls wraps rustls errors in io::Error) into
/// the precise error.
fn classify(e: std::io::Error) -> TransportError {
    let kind = e.kind();
    let Some(inner) = e.get_ref() else {
        return TransportError::TlsHandshake {
            detail: match kind {
                std::io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the handshake (is this a TLS port?)"
                        .into()
                }
                _ => format!("I/O error during the handshake: {e}"),
            },
            kind: Some(kind),
        };
    };
    let Some(re) = inner.downcast_ref::<rustls::Error>() else {
        return TransportError::TlsHandshake {
            detail: format!("{e}"),
            kind: Some(kind),
        };
    };
    match re {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<Rejected>() {
                Some(Rejected(t)) => t.clone(),
                None => TransportError::CertVerify(other.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(_) => TransportError::CertVerify(describe(re, "the CA")),
        rustls::Error::AlertReceived(alert) => TransportError::TlsHandshake {
            detail: format!(
                "the server sent TLS alert {alert:?} (spiced speaks TLS 1.2/1.3 with modern cipher suites only)"
            ),
            kind: None,
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => TransportError::TlsHandshake {
            detail: format!("the server does not speak TLS here ({re}); is this the plain port?"),
            kind: None,
        },
        other => TransportError::TlsHandshake {
            detail: other.to_string(),
            kind: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_are_plain() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("other"), "other");
    }

    #[test]
    fn wildcards_match_within_one_label() {
        assert!(hostname_matches("spice.example", "SPICE.example"));
        assert!(hostname_matches("*.example", "spice.example"));
        assert!(hostname_matches("sp*.example", "spice.example"));
        assert!(!hostname_matches("*.example", "a.spice.example"));
        assert!(!hostname_matches("*.example", "example"));
        assert!(!hostname_matches("spice.example", "spice.example.org"));
        assert!(hostname_matches("127.0.0.1", "127.0.0.1"));
    }

    #[test]
    fn ca_pem_errors_are_bad_ca() {
        assert!(matches!(
            roots_from_pem("hello"),
            Err(TransportError::BadCa(_))
        ));
        let e = roots_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.to_string().contains("certificate 1 of 1"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn system_roots_load() {
        // The machines have ca-certificates; a missing store is an error, not a panic.
        match system_roots() {
            Ok(r) => assert!(!r.is_empty()),
            Err(e) => assert!(matches!(e, TransportError::BadCa(_))),
        }
    }

    #[test]
    fn bad_host_subject_fails_setup() {
        let s = ConnectionSettings {
            host_subject: Some("cn=lower".into()),
            ..Default::default()
        };
        let e = TlsSetup::new(&s, &TlsConfig::default()).unwrap_err();
        assert!(matches!(e, TransportError::BadHostSubject { .. }), "{e}");
        assert_eq!(e.cause(), "config_error");
    }
}
