//! spiced's journal on a central host with systemd's own tools, as
//! docs/systemd.md ("The journal on a central host") sets it up: spiced logs to
//! a real systemd-journald (`scripts/journald-sandbox.sh`, root), the journal
//! files are pushed by `systemd-journal-upload` over HTTPS (server certificate
//! checked against the CA, client certificate sent) to `systemd-journal-remote`
//! listening on loopback, each configured by a drop-in as the docs show it
//! (`journal-upload.conf.d/`, `journal-remote.conf.d/` in a private
//! /etc/systemd, bind-mounted in a mount namespace of their own), and
//! `journalctl --directory` on what the collector wrote finds spiced's entries
//! by SPICED_INSTANCE, MESSAGE_ID and priority, with their fields and the
//! kiosk's _HOSTNAME. An upload that cannot verify
//! the collector's certificate sends nothing. Needs root, systemd-journald,
//! journalctl, unshare, openssl and Debian's systemd-journal-remote.

mod common;
use ::spiced::events;
use common::journal::{field, journal};
use common::{free_port, have_program, kill_child, port_accepts, spawn_tied, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/journald-sandbox.sh");
const INSTANCE: &str = "kiosk7";

/// The first of `names` under /lib/systemd or /usr/lib/systemd.
fn systemd_program(name: &str) -> Option<PathBuf> {
    ["/lib/systemd", "/usr/lib/systemd"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Root and every tool; without them: a failure under `CI`, else a skip note.
fn require_tools() -> Option<(PathBuf, PathBuf)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let remote = systemd_program("systemd-journal-remote");
    let upload = systemd_program("systemd-journal-upload");
    let why = if !root {
        "not root (the journald sandbox mounts in a private namespace)"
    } else if systemd_program("systemd-journald").is_none()
        || !have_program("journalctl")
        || !have_program("unshare")
        || !have_program("openssl")
    {
        "systemd-journald, journalctl, unshare or openssl missing (apt-get install systemd util-linux openssl)"
    } else if remote.is_none() || upload.is_none() {
        "systemd-journal-remote/-upload missing (apt-get install systemd-journal-remote)"
    } else {
        return Some((remote?, upload?));
    };
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipping: {why}");
    None
}

/// Runs `cmd` to its end, at most `limit`; (exit code, stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = spawn_tied(cmd).expect("spawn");
    let end = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if Instant::now() >= end {
            kill_child(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(err).unwrap_or_default())
}

/// `program args...` in a mount namespace of its own where `etc` is
/// /etc/systemd: the configuration files it reads are the test's.
fn with_etc_systemd(etc: &Path, program: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/systemd && exec "$@""#)
        .arg(etc)
        .arg(program);
    c
}

/// A private /etc/systemd in `dir` holding one drop-in (`NAME.conf.d/FILE`).
fn etc_with(dir: &Path, dropin: &str, text: &str) -> PathBuf {
    let file = dir.join(dropin);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, text).unwrap();
    dir.to_path_buf()
}

/// systemd-journal-remote on 127.0.0.1 over HTTPS (its key and certificate
/// from `etc`'s journal-remote.conf.d), writing into `out`.
struct Collector {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Collector {
    fn start(remote: &Path, etc: &Path, out: &Path, log: PathBuf) -> Collector {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = with_etc_systemd(etc, remote);
            cmd.arg(format!("--listen-https=127.0.0.1:{port}"))
                .arg(format!("--output={}/", out.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut child = spawn_tied(cmd).expect("start systemd-journal-remote");
            if wait_until(Duration::from_secs(10), || {
                port_accepts(port) || matches!(child.try_wait(), Ok(Some(_)))
            }) && matches!(child.try_wait(), Ok(None))
            {
                return Collector { child, port, log };
            }
            kill_child(&mut child);
        }
        panic!("systemd-journal-remote did not listen");
    }

    /// SIGTERM: it writes what it received and closes its files.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child (unshare and sh exec'd into it).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let ended = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(ended, "systemd-journal-remote did not stop: {log}");
        log
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// systemd-journal-upload of the journal files in `dir` once (no --follow),
/// configured by `etc`'s journal-upload.conf.d (URL, CA, key and certificate).
fn upload(upload: &Path, etc: &Path, dir: &Path) -> Command {
    let mut c = with_etc_systemd(etc, upload);
    c.arg(format!("--directory={}", dir.display()))
        .arg("--follow=no");
    c
}

/// The kiosk's drop-in, as docs/systemd.md shows it.
fn upload_conf(url: &str, trust: &Path, certs: &common::Certs) -> String {
    format!(
        "[Upload]\nURL={url}\nTrustedCertificateFile={}\nServerKeyFile={}\nServerCertificateFile={}\n",
        trust.display(),
        certs.dir().join("server-key.pem").display(),
        certs.dir().join("server-cert.pem").display()
    )
}

#[test]
fn spiced_entries_reach_a_collector_through_journal_upload_and_remote() {
    let Some((remote, uploader)) = require_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The kiosk: spiced, SPICED_INSTANCE=kiosk7, logging to a real journald;
    // its server is not there, so it tries twice and gives up (69).
    let vv = common::write_vv(
        d,
        &[("host", "127.0.0.1"), ("port", &free_port().to_string())],
    );
    let toml = d.join("spiced.toml");
    std::fs::write(
        &toml,
        "[log]\ntarget = \"journald\"\n\
         [reconnect]\nmax_attempts = 1\ninitial_delay_secs = 0.1\n\
         [report]\nenabled = false\n",
    )
    .unwrap();
    let kiosk = d.join("kiosk-journal");
    let mut cmd = Command::new("bash");
    cmd.arg(SANDBOX)
        .arg("--keep")
        .arg(&kiosk)
        .arg("--")
        .arg(common::spiced_bin())
        .arg("--vv")
        .arg(&vv)
        .arg("--config")
        .arg(&toml)
        .env("SPICED_INSTANCE", INSTANCE);
    let (code, err) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, Some(69), "spiced in the journald sandbox: {err}");
    let local = journal(&kiosk, &[&format!("SPICED_INSTANCE={INSTANCE}")]);
    assert!(local.len() >= 5, "{local:#?}");

    // The collector, HTTPS on loopback; the kiosk checks its certificate.
    // (The kiosk presents the collector's own key and certificate: Debian's
    // journal-remote does not check client certificates, and upload only needs
    // a pair to present.)
    let certs = common::Certs::generate(&d.join("pki"), "collector");
    let received = d.join("remote");
    std::fs::create_dir(&received).unwrap();
    let collector_etc = etc_with(
        &d.join("collector-etc"),
        "journal-remote.conf.d/tls.conf",
        &format!(
            "[Remote]\nServerKeyFile={}\nServerCertificateFile={}\n",
            certs.dir().join("server-key.pem").display(),
            certs.dir().join("server-cert.pem").display()
        ),
    );
    let collector = Collector::start(&remote, &collector_etc, &received, d.join("remote.log"));
    let url = format!("https://127.0.0.1:{}", collector.port);

    // An upload that cannot verify the collector sends nothing.
    let stranger = d.join("unrelated-ca.pem");
    std::fs::write(&stranger, common::certs::unrelated_ca_pem("someone else")).unwrap();
    let stranger_etc = etc_with(
        &d.join("stranger-etc"),
        "journal-upload.conf.d/central.conf",
        &upload_conf(&url, &stranger, &certs),
    );
    let (code, err) = run_bounded(
        upload(&uploader, &stranger_etc, &kiosk),
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "an upload to an unverified collector: {err}");
    assert!(err.contains("certificate"), "{err}");

    let kiosk_etc = etc_with(
        &d.join("kiosk-etc"),
        "journal-upload.conf.d/central.conf",
        &upload_conf(&url, &certs.ca_path(), &certs),
    );
    let (code, err) = run_bounded(
        upload(&uploader, &kiosk_etc, &kiosk),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "systemd-journal-upload: {err}");
    let log = collector.stop();
    eprintln!("systemd-journal-remote: {log}");

    // On the collector: every spiced entry, with its fields.
    let got = journal(&received, &[&format!("SPICED_INSTANCE={INSTANCE}")]);
    assert_eq!(got.len(), local.len(), "{got:#?}");
    let gave_up = journal(
        &received,
        &[
            &format!("MESSAGE_ID={}", events::GAVE_UP),
            &format!("SPICED_INSTANCE={INSTANCE}"),
        ],
    );
    assert_eq!(gave_up.len(), 1, "{gave_up:#?}");
    let g = &gave_up[0];
    assert_eq!(field(g, "PRIORITY"), "3");
    assert_eq!(field(g, "SPICED_CAUSE"), "retries_exhausted");
    assert_eq!(field(g, "SYSLOG_IDENTIFIER"), "spiced");
    assert!(field(g, "MESSAGE").starts_with("giving up:"), "{g:#}");
    let local_host = field(&local[0], "_HOSTNAME");
    assert!(!local_host.is_empty());
    assert_eq!(field(g, "_HOSTNAME"), local_host, "the kiosk's host name");
    let attempts = journal(
        &received,
        &[&format!("MESSAGE_ID={}", events::RECONNECT_ATTEMPT)],
    );
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(field(&attempts[0], "SPICED_ATTEMPT"), "1");
    // -p warning: the failed connects and the give-up, nothing at info.
    let warnings = journal(
        &received,
        &["-p", "warning", &format!("SPICED_INSTANCE={INSTANCE}")],
    );
    assert!(warnings.len() >= 3, "{warnings:#?}");
    assert!(warnings
        .iter()
        .all(|e| matches!(field(e, "PRIORITY"), "0" | "1" | "2" | "3" | "4")));
}
