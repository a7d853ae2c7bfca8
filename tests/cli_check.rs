//! `spiced --vv FILE --check` and the command-line contract, run on the built
//! binary: exact JSON on stdout, one-line errors on stderr, exit 0 / 78.

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const PVE: &str = include_str!("fixtures/proxmox.vv");
const OVIRT: &str = include_str!("fixtures/ovirt.vv");
const SECRETS: &[&str] = &[
    "Xq7mQ2pL9vR4tY8wZ1cB",
    "6643a1b2:101:node1::8fa3c0de5b9e41d2a7f3",
    "pa/ss",
    "alice",
    "oV1rtT1ck3tS3cr3t",
    "ssoT0k3nS3cr3tValue",
    "JSESSIONIDs3cr3t",
];

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spiced"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VIRT_VIEWER_KEEP_FILE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let o = Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    for s in SECRETS {
        assert!(
            !o.stdout.contains(s) && !o.stderr.contains(s),
            "secret leaked"
        );
    }
    o
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_string()
}

/// `--check` succeeded: exit 0, one JSON line, the object.
fn check_ok(args: &[&str], stdin: Option<&[u8]>) -> (Value, String) {
    let o = run(args, stdin);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.stdout);
    (serde_json::from_str(&o.stdout).unwrap(), o.stderr)
}

/// `--check` failed: exit 78, nothing on stdout, stderr returned.
fn check_fails(args: &[&str]) -> String {
    let o = run(args, None);
    assert_eq!(o.code, 78, "stdout: {} stderr: {}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "");
    o.stderr
}

fn pve_json() -> Value {
    json!({
        // Shortened exactly as the logs show it: the host embeds the ticket.
        "host": "pvespiceproxy:...",
        "port": null,
        "tls_port": 61000,
        "proxy": "http://192.0.2.10:3128",
        "host_subject": "OU=PVE Cluster Node,O=Proxmox Virtual Environment,CN=node1.example",
        "ca_present": true,
        "password_set": true,
        "secure_channels": [],
        "disable_channels": [],
        "single_use_ticket": true,
        "ticket_valid_until": null,
        "title": "VM 101 - kiosk-01",
    })
}

#[test]
fn proxmox_file_checks_and_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "console.vv", PVE);
    let (j, stderr) = check_ok(&["--vv", &f, "--check"], None);
    assert_eq!(j, pve_json());
    assert_eq!(stderr, "");
    assert!(
        Path::new(&f).exists(),
        "--check never deletes (delete-this-file=1)"
    );
}

#[test]
fn ovirt_file_checks() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "console.vv", OVIRT);
    let (j, stderr) = check_ok(&["--check", "--vv", &f], None);
    assert_eq!(
        j,
        json!({
            "host": "192.0.2.21",
            "port": null,
            "tls_port": 5901,
            "proxy": null,
            "host_subject": "O=example.com,CN=host21.example.com",
            "ca_present": true,
            "password_set": true,
            "secure_channels": ["main", "inputs", "cursor", "playback", "record",
                                "display", "smartcard", "usbredir"],
            "disable_channels": [],
            "single_use_ticket": true,
            "ticket_valid_until": null,
            "title": "kiosk-07:%d",
        })
    );
    assert_eq!(stderr, "");
    assert!(Path::new(&f).exists());
}

#[test]
fn crlf_and_bom_files_check_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(PVE.replace('\n', "\r\n").as_bytes());
    let f = write(dir.path(), "crlf.vv", bytes);
    assert_eq!(check_ok(&["--vv", &f, "--check"], None).0, pve_json());
}

#[test]
fn stdin_is_read_for_dash() {
    let (j, _) = check_ok(&["--vv", "-", "--check"], Some(PVE.as_bytes()));
    assert_eq!(j, pve_json());
    let o = run(
        &["--vv", "-", "--check"],
        Some(b"[virt-viewer]\ntype=spice\n"),
    );
    assert_eq!(o.code, 78);
    assert_eq!(
        o.stderr,
        "<stdin>:1: key 'host': missing in [virt-viewer]\n"
    );
}

#[test]
fn minimal_file_with_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.vv",
        "[virt-viewer]\ntype=spice\nhost=192.0.2.5\nport=5900\nx-made-up=1\nzoom-in=ctrl+plus\n\
         disable-channels=usbredir;webdav;\nticket-valid-until=1764320000\n",
    );
    let (j, stderr) = check_ok(&["--vv", &f, "--check"], None);
    assert_eq!(stderr, "", "unknown keys are only debug-logged");
    assert_eq!(
        j,
        json!({
            "host": "192.0.2.5", "port": 5900, "tls_port": null, "proxy": null,
            "host_subject": null, "ca_present": false, "password_set": false,
            "secure_channels": [], "disable_channels": ["usbredir", "webdav"],
            "single_use_ticket": false, "ticket_valid_until": 1764320000, "title": null,
        })
    );
    // RUST_LOG=debug shows them.
    let out = Command::new(env!("CARGO_BIN_EXE_spiced"))
        .args(["--vv", &f, "--check"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("x-made-up") && stderr.contains("zoom-in"),
        "{stderr}"
    );
}

#[test]
fn warnings_go_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "w.vv",
        "[virt-viewer]\ntype=spice\nhost=h\nport=1\nticket-valid-until=soon\n",
    );
    let (j, stderr) = check_ok(&["--vv", &f, "--check"], None);
    assert_eq!(j["ticket_valid_until"], Value::Null);
    assert_eq!(
        stderr,
        format!("warning: {f}:5: key 'ticket-valid-until': not unix seconds: \"soon\"; ignored\n")
    );
}

#[test]
fn bad_files_exit_78_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pw = "password=Xq7mQ2pL9vR4tY8wZ1cB\n";
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "nohost.vv",
            format!("[virt-viewer]\n{pw}type=spice\nport=5900\n").into_bytes(),
            ":1: key 'host': missing in [virt-viewer]".into(),
        ),
        (
            "noport.vv",
            format!("# x\n[virt-viewer]\n{pw}type=spice\nhost=h\n").into_bytes(),
            ":2: key 'port': missing in [virt-viewer]: neither port nor tls-port is set".into(),
        ),
        (
            "port.vv",
            format!("[virt-viewer]\n{pw}type=spice\nhost=h\n#\n#\nport=59x0\n").into_bytes(),
            ":7: key 'port': not a number: \"59x0\"".into(),
        ),
        (
            "range.vv",
            format!("[virt-viewer]\n{pw}type=spice\nhost=h\ntls-port=65536\n").into_bytes(),
            ":5: key 'tls-port': out of range: \"65536\" (ports are 1-65535)".into(),
        ),
        (
            "vnc.vv",
            format!("[virt-viewer]\n{pw}type=vnc\nhost=h\nport=5900\n").into_bytes(),
            ":3: key 'type': \"vnc\" is not supported: spiced speaks SPICE only".into(),
        ),
        (
            "nogroup.vv",
            format!("[ovirt]\nhost=engine\n{pw}").into_bytes(),
            ": no [virt-viewer] group: not a virt-viewer connection file".into(),
        ),
        (
            "binary.vv",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
            ":1: binary data (NUL byte): not a .vv text file".into(),
        ),
        (
            "latin1.vv",
            [
                format!("[virt-viewer]\n{pw}type=spice\ntitle=Caf").as_bytes(),
                b"\xe9\n", // Latin-1, not UTF-8
            ]
            .concat(),
            ":4: not UTF-8 text: not a .vv text file".into(),
        ),
    ];
    for (name, contents, want) in cases {
        let f = write(dir.path(), name, contents);
        let stderr = check_fails(&["--vv", &f, "--check"]);
        assert_eq!(stderr, format!("{f}{want}\n"), "{name}");
    }
    let missing = dir.path().join("missing.vv");
    let missing = missing.to_str().unwrap();
    let stderr = check_fails(&["--vv", missing, "--check"]);
    assert_eq!(
        stderr,
        format!("{missing}: cannot read: No such file or directory (os error 2)\n")
    );
}

#[test]
fn proxy_credentials_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for (proxy, shown) in [
        (
            "http://alice:pa/ss@proxy:3128",
            "http://<redacted>@proxy:3128",
        ),
        (
            "http://alice:pa@ss/x@proxy:3128",
            "http://<redacted>@proxy:3128",
        ),
        ("alice:pa/ss@proxy:3128", "<redacted>@proxy:3128"),
    ] {
        let f = write(
            dir.path(),
            "p.vv",
            format!("[virt-viewer]\ntype=spice\nhost=h\nport=1\nproxy={proxy}\n"),
        );
        // `run` asserts no SECRETS (alice, pa/ss) on stdout or stderr.
        let (j, _) = check_ok(&["--vv", &f, "--check"], None);
        assert_eq!(j["proxy"], shown);
    }
}

#[test]
fn control_characters_in_vv_values_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    for (proxy, line) in [("", 3), ("proxy=http://192.0.2.10:3128\n", 4)] {
        let f = write(
            dir.path(),
            "c.vv",
            format!(
                "[virt-viewer]\ntype=spice\n{proxy}host=pvespiceproxy:6643a1b2:101:node1::8fa3c0de5b9e41d2a7f3\\r\\nX-Injected: 1\nport=1\n"
            ),
        );
        let stderr = check_fails(&["--vv", &f, "--check"]);
        assert_eq!(
            stderr,
            format!("{f}:{line}: key 'host': contains a control character (line break, NUL, escape...): refused\n")
        );
    }
    let f = write(
        dir.path(),
        "t.vv",
        "[virt-viewer]\ntype=spice\nhost=h\nport=1\ntitle=\u{1b}]0;x\u{7}\n",
    );
    let stderr = check_fails(&["--vv", &f, "--check"]);
    assert!(
        stderr.contains("key 'title': contains a control character"),
        "{stderr}"
    );
}

#[test]
fn check_validates_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let vv = write(dir.path(), "console.vv", PVE);
    let good = write(dir.path(), "good.toml", "[reconnect]\nmax_attempts = 5\n");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/spiced.toml");
    for cfg in [good.as_str(), shipped] {
        let (j, stderr) = check_ok(&["--vv", &vv, "--config", cfg, "--check"], None);
        assert_eq!(j, pve_json());
        assert_eq!(stderr, "");
    }

    let unknown = write(dir.path(), "unknown.toml", "[reconnect]\nmax_attempt = 5\n");
    let stderr = check_fails(&["--vv", &vv, "--config", &unknown, "--check"]);
    assert!(stderr.starts_with(&format!("{unknown}: ")), "{stderr}");
    assert!(stderr.contains("unknown field `max_attempt`"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);

    let bad = write(dir.path(), "bad.toml", "[keepalive]\nidle_secs = \"x\"\n");
    let stderr = check_fails(&["--vv", &vv, "--config", &bad, "--check"]);
    assert!(stderr.contains("idle_secs"), "{stderr}");

    let syntax = write(dir.path(), "syntax.toml", "[keepalive\n");
    check_fails(&["--vv", &vv, "--config", &syntax, "--check"]);

    // Both broken: both reported.
    let badvv = write(dir.path(), "bad.vv", "[virt-viewer]\ntype=spice\n");
    let stderr = check_fails(&["--vv", &badvv, "--config", &unknown, "--check"]);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(Path::new(&vv).exists());
}

#[test]
fn help_version_and_usage_errors() {
    let o = run(&["--help"], None);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("--vv"), "{}", o.stdout);
    let o = run(&["--version"], None);
    assert_eq!(o.code, 0);
    assert_eq!(o.stdout, format!("spiced {}\n", env!("CARGO_PKG_VERSION")));
    for args in [
        &[][..],
        &["--check"][..],
        &["--vv"][..],
        &["--vv", "x.vv", "--bogus"][..],
        &["report"][..],
        &["report", "x.zip", "--vv", "y"][..],
    ] {
        let o = run(args, None);
        assert_eq!(o.code, 78, "{args:?}: {}", o.stderr);
        assert!(o.stderr.starts_with("error: "), "{args:?}: {}", o.stderr);
        assert_eq!(o.stdout, "");
    }
}

/// What the daemon refuses at start (exit 78) `--check` refuses too, with the
/// same line: the TLS setup is built, not only the file parsed. A .vv without
/// a tls-port never builds one, in either.
#[test]
fn check_builds_the_tls_setup() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let base = "[virt-viewer]\ntype=spice\nhost=h.example\ntls-port=61000\n";
    let garbage_ca =
        "ca=-----BEGIN CERTIFICATE-----\\nbm90IGEgY2VydA==\\n-----END CERTIFICATE-----\\n\n";
    let cases = [
        (
            "garbage-ca.vv",
            garbage_ca.to_string(),
            "unusable CA certificates: `ca` in the .vv: certificate 1 of 1 cannot be a trust anchor",
        ),
        (
            "bad-pem.vv",
            "ca=-----BEGIN CERTIFICATE-----\\n!!!\\n-----END CERTIFICATE-----\\n\n".into(),
            "unusable CA certificates: `ca` in the .vv is not valid PEM",
        ),
        (
            "ca-path.vv",
            "ca=/etc/pve/pve-root-ca.pem\n".into(),
            "`ca` in the .vv holds no PEM certificate (it looks like a file name: the .vv carries the certificate itself)",
        ),
        (
            "subject.vv",
            "host-subject=XX=node1\n".into(),
            "bad host-subject in the .vv: unknown attribute `XX` in host-subject",
        ),
        (
            "subject-syntax.vv",
            "host-subject=CN\n".into(),
            "bad host-subject in the .vv: ",
        ),
    ];
    for (name, extra, want) in cases {
        let f = write(dir.path(), name, format!("{base}{extra}"));
        let stderr = check_fails(&["--vv", &f, "--check"]);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{f}: ")) && last.contains(want),
            "{name}: {stderr}"
        );
        // The daemon refuses the same file with the same words.
        let o = run(&["--vv", &f, "--spool", spool.to_str().unwrap()], None);
        assert_eq!(o.code, 78, "{name}: the daemon: {}", o.stderr);
        assert!(o.stderr.contains(want), "{name}: the daemon: {}", o.stderr);
    }
    // The same broken `ca` on a plain port is never used: both accept it.
    let plain = write(
        dir.path(),
        "plain.vv",
        format!("[virt-viewer]\ntype=spice\nhost=h.example\nport=5900\n{garbage_ca}"),
    );
    let (j, _) = check_ok(&["--vv", &plain, "--check"], None);
    assert_eq!(j["ca_present"], true);
}
