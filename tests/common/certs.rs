//! Throwaway TLS material for SPICE tests: a test CA and one server certificate
//! made with the openssl CLI, laid out as QEMU's `x509-dir` expects
//! (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`).
//!
//! The server certificate is X.509 v3 (rustls refuses v1) with serverAuth and
//! SAN IP:127.0.0.1 + DNS:localhost; its subject is `/O=spice-lab/CN=<cn>`, so the
//! host-subject a client matches is `O=spice-lab,CN=<cn>`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Generated certificates in a directory the caller owns (e.g. a `tempfile::TempDir`).
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
    cn: String,
}

impl Certs {
    /// Makes a CA and a server certificate for `cn` in `dir` (created if needed).
    /// Takes ~0.5 s (two RSA-2048 keys). Panics if openssl fails.
    pub fn generate(dir: &Path, cn: &str) -> Certs {
        assert!(
            !cn.contains([',', '/', '=', '\\']),
            "CN must not contain , / = or \\"
        );
        std::fs::create_dir_all(dir).expect("create cert dir");
        // The CA key and CSR never enter the x509-dir: QEMU needs none of them.
        let work = tempfile::tempdir().expect("temp dir for CA key");
        let w = work.path();
        let ca_cert = dir.join("ca-cert.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "30",
            "-keyout",
            &s(&w.join("ca-key.pem")),
            "-out",
            &s(&ca_cert),
            "-subj",
            "/O=spice-lab/CN=spice-lab test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            &s(&dir.join("server-key.pem")),
            "-out",
            &s(&w.join("server.csr")),
            "-subj",
            &format!("/O=spice-lab/CN={cn}"),
        ]);
        let ext = w.join("ext.cnf");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
        .expect("write ext.cnf");
        // A random serial: two CAs made in one test must not issue equal serials.
        let serial = format!("0x{:016x}", super::random_u64());
        openssl(&[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "30",
            "-in",
            &s(&w.join("server.csr")),
            "-CA",
            &s(&ca_cert),
            "-CAkey",
            &s(&w.join("ca-key.pem")),
            "-set_serial",
            &serial,
            "-extfile",
            &s(&ext),
            "-out",
            &s(&dir.join("server-cert.pem")),
        ]);
        std::fs::copy(&ca_cert, dir.join("ca.pem")).expect("copy ca.pem");
        openssl(&[
            "verify",
            "-CAfile",
            &s(&ca_cert),
            &s(&dir.join("server-cert.pem")),
        ]);
        Certs {
            dir: dir.to_path_buf(),
            cn: cn.to_owned(),
        }
    }

    /// The x509-dir to give QEMU.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate for clients (`ca.pem`, same as `ca-cert.pem`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA certificate as PEM text (what a .vv `ca=` carries).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).expect("read ca.pem")
    }

    /// The server certificate's subject in host-subject form: `O=spice-lab,CN=<cn>`.
    pub fn host_subject(&self) -> String {
        format!("O=spice-lab,CN={}", self.cn)
    }

    /// The CN the server certificate was made for.
    pub fn cn(&self) -> &str {
        &self.cn
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.first().copied().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Writes to `out` an X.509 v1 certificate (no extensions) for the server key,
    /// with the server certificate's subject: what old tooling issues and rustls
    /// refuses. Self-signed, since the CA key is not kept; spiced rejects a v1
    /// certificate before it looks for the issuer.
    pub fn write_x509_v1_server_cert(&self, out: &Path) {
        let work = tempfile::tempdir().expect("temp dir for the v1 CSR");
        let csr = s(&work.path().join("v1.csr"));
        let key = s(&self.dir.join("server-key.pem"));
        let subj = format!("/O=spice-lab/CN={}", self.cn);
        openssl(&["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr]);
        // `x509 -req` without -extfile writes a v1 certificate.
        let serial = format!("0x{:016x}", super::random_u64());
        let out = s(out);
        let sign = ["-signkey", &key, "-set_serial", &serial, "-out", &out];
        let mut args = vec!["x509", "-req", "-sha256", "-days", "30", "-in", &csr];
        args.extend(sign);
        openssl(&args);
    }
}

/// PEM text of a self-signed CA that signed nothing here, with subject
/// `/O=spice-lab/CN=<cn>`: a `ca` that must not verify any `Certs` server. Pick a
/// `cn` other than the test CA's so verification reports an unknown issuer.
pub fn unrelated_ca_pem(cn: &str) -> String {
    let work = tempfile::tempdir().expect("temp dir for the unrelated CA");
    let key = s(&work.path().join("key.pem"));
    let cert = s(&work.path().join("cert.pem"));
    let subj = format!("/O=spice-lab/CN={cn}");
    // EC P-256: the key is thrown away, so make it the fast kind.
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let mut args = vec!["req", "-x509", "-sha256", "-days", "30"];
    args.extend(ec.split(' '));
    args.extend(["-keyout", &key, "-out", &cert, "-subj", &subj]);
    args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(&args);
    std::fs::read_to_string(&cert).expect("read the unrelated CA")
}
