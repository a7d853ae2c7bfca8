//! console.vv: the virt-viewer connection file, read as remote-viewer reads it
//! (GKeyFile syntax, `[virt-viewer]` group).
//!
//! (parser: to be written — see issue 2)

use crate::secret::Secret;

/// The connection settings spiced takes from a .vv file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionSettings {
    /// `host`: name or IP (IPv6 without brackets), or a proxy-side name such as
    /// Proxmox's `pvespiceproxy:...` when `proxy` is set.
    pub host: String,
    /// `port`: plain port, if any.
    pub port: Option<u16>,
    /// `tls-port`: TLS port, if any.
    pub tls_port: Option<u16>,
    /// `password`: the SPICE ticket. Never logged.
    pub password: Option<Secret>,
    /// `ca`: PEM text of the CA certificate(s) (escapes already decoded).
    pub ca: Option<String>,
    /// `host-subject`: the certificate subject to match instead of the host name.
    pub host_subject: Option<String>,
    /// `secure-channels`: channel names that must use TLS ("all" allowed).
    pub secure_channels: Vec<String>,
    /// `disable-channels`: channel names never linked.
    pub disable_channels: Vec<String>,
    /// `delete-this-file=1`: the ticket is single-use.
    pub delete_this_file: bool,
    /// `proxy`: e.g. `http://proxy.example:3128`.
    pub proxy: Option<String>,
    /// `title`.
    pub title: Option<String>,
    /// `tls-ciphers` (OpenSSL cipher string), as written.
    pub tls_ciphers: Option<String>,
    /// Extension `ticket-valid-until`: unix seconds after which the ticket is dead.
    pub ticket_valid_until: Option<i64>,
}
