//! The shipped refresh commands (`scripts/spiced-refresh-proxmox`,
//! `scripts/spiced-refresh-ovirt`, `scripts/spiced-refresh-kerbside`) against a
//! local HTTP server that answers as the documented APIs do (Proxmox VE API
//! viewer: `POST /nodes/{node}/qemu/{vmid}/spiceproxy`; oVirt REST API guide:
//! SSO token, `vms?search=`, `graphicsconsoles`, the
//! `remoteviewerconnectionfile` action; Kerbside 0.8's `kerbside.api` routes:
//! `POST /auth`, `GET /console/proxy/{source}/{uuid}/console.vv`). The real
//! Kerbside is exercised by `scripts/kerbside.sh`.
//! Their stdout must be a .vv that `spiced --check` accepts with the right
//! settings; a refused credential is one line on stderr that never quotes it.
//! The credential goes to `--url`'s host only: a second fake host (127.0.0.2)
//! that a redirect points at must never see it, and a plain http:// URL is
//! refused without `--allow-http` (the tests' fake APIs speak plain HTTP, so
//! every other run passes it).

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const PVE_TOKEN: &str = "kiosk@pve!spiced=6f1c9c2e-0d8a-4b7e-9a51-secret";
const OVIRT_PASSWORD: &str = "ovirt-S3cret/pw";
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

/// One request as the fake API saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake API answers.
struct Reply {
    status: u16,
    ty: &'static str,
    body: String,
    location: Option<String>,
}

impl From<(u16, &'static str, String)> for Reply {
    fn from((status, ty, body): (u16, &'static str, String)) -> Reply {
        Reply {
            status,
            ty,
            body,
            location: None,
        }
    }
}

/// A redirect (`status` 301/302/303/307/308) to `location`.
fn redirect(status: u16, location: String) -> Reply {
    Reply {
        status,
        ty: "text/plain",
        body: String::new(),
        location: Some(location),
    }
}

type Seen = Arc<Mutex<Vec<Request>>>;

/// A one-thread HTTP/1.1 server on 127.0.0.1: `answer` maps a request to a reply.
fn serve<R: Into<Reply>>(answer: impl Fn(&Request) -> R + Send + 'static) -> (u16, Seen) {
    serve_on("127.0.0.1", answer)
}

/// `serve` on another loopback address (127.0.0.2 is another host to a client).
fn serve_on<R: Into<Reply>>(
    ip: &str,
    answer: impl Fn(&Request) -> R + Send + 'static,
) -> (u16, Seen) {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let req = Request {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let reply: Reply = answer(&req).into();
            log.lock().unwrap().push(req);
            let location = reply
                .location
                .map(|l| format!("Location: {l}\r\n"))
                .unwrap_or_default();
            let _ = write!(
                s,
                "HTTP/1.1 {} X\r\nContent-Type: {}\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                reply.status,
                reply.ty,
                reply.body.len(),
                reply.body
            );
        }
    });
    (port, seen)
}

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn have_python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("python3 missing");
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg(script(cmd))
        .args(args)
        .output()
        .expect("run the script");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `spiced --vv - --check` on `vv`: the effective settings.
fn check(vv: &str) -> serde_json::Value {
    let mut c = Command::new(common::spiced_bin())
        .args(["--vv", "-", "--check"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spiced --check");
    c.stdin.take().unwrap().write_all(vv.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "spiced --check refused:\n{vv}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--check JSON")
}

/// "METHOD /path" of every request the fake API saw, without query strings.
fn seen_calls(seen: &Mutex<Vec<Request>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap_or("")))
        .collect()
}

fn secret_file(dir: &Path, text: &str) -> String {
    let p = dir.join("secret");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn pve_api(r: &Request) -> (u16, &'static str, String) {
    let auth_ok = r.header("Authorization") == Some(&format!("PVEAPIToken={PVE_TOKEN}"));
    if r.method != "POST" || r.path != "/api2/json/nodes/pve1/qemu/101/spiceproxy" {
        return (501, "text/plain", "no such call".into());
    }
    if !auth_ok {
        return (401, "application/json", r#"{"data":null}"#.into());
    }
    let data = serde_json::json!({"data": {
        "type": "spice",
        "host": "pvespiceproxy:6643a1b2:101:pve1::8fa3c0de5b9e41d2a7f3",
        "password": "Xq7mQ2pL9vR4tY8wZ1cB",
        "proxy": "http://pve1.example:3128",
        "tls-port": 61000,
        "delete-this-file": 1,
        "host-subject": "OU=PVE Cluster Node,O=Proxmox Virtual Environment,CN=pve1.example",
        "ca": CA,
        "title": "VM 101 - kiosk",
        "secure-attention": "Ctrl+Alt+Ins",
        "release-cursor": "Ctrl+Alt+R",
        "toggle-fullscreen": "Shift+F11"
    }});
    (200, "application/json", data.to_string())
}

#[test]
fn proxmox_refresh_mints_a_vv_spiced_accepts() {
    if !have_python() {
        return;
    }
    let (port, seen) = serve(pve_api);
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), &format!("{PVE_TOKEN}\n"));
    let url = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run(
        "spiced-refresh-proxmox",
        &[
            "--url",
            &url,
            "--allow-http",
            "--node",
            "pve1",
            "--vmid",
            "101",
            "--token-file",
            &token,
            "--proxy",
            "pve1.example",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("[virt-viewer]\n"), "{out}");
    let s = check(&out);
    assert_eq!(s["host"], "pvespiceproxy:...", "{s}");
    assert_eq!(s["tls_port"], 61000);
    assert_eq!(s["single_use_ticket"], true);
    assert_eq!(s["proxy"], "http://pve1.example:3128");
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(req.body, "proxy=pve1.example");

    // A refused token: exit 1, one line, the token never printed.
    let bad = secret_file(dir.path(), "kiosk@pve!spiced=wrong-one");
    let (code, out, err) = run(
        "spiced-refresh-proxmox",
        &[
            "--url",
            &url,
            "--allow-http",
            "--node",
            "pve1",
            "--vmid",
            "101",
            "--token-file",
            &bad,
        ],
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("HTTP 401") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !err.contains("wrong-one") && !err.contains("secret"),
        "{err}"
    );
    let (code, out, _) = run("spiced-refresh-proxmox", &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("spiceproxy") && out.contains("--token-file"));
}

fn ovirt_api(r: &Request) -> (u16, &'static str, String) {
    let bearer = r.header("Authorization") == Some("Bearer T0KEN-abc");
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/ovirt-engine/sso/oauth/token") => {
            let form: Vec<&str> = r.body.split('&').collect();
            let pw = format!(
                "password={}",
                OVIRT_PASSWORD.replace('/', "%2F")
            );
            if form.contains(&"grant_type=password")
                && form.contains(&"scope=ovirt-app-api")
                && form.contains(&"username=kiosk%40internal")
                && form.contains(&pw.as_str())
            {
                (200, "application/json", r#"{"access_token":"T0KEN-abc","token_type":"bearer","exp":"1800"}"#.into())
            } else {
                (400, "application/json", r#"{"error":"access_denied"}"#.into())
            }
        }
        _ if !bearer => (401, "text/plain", "".into()),
        ("GET", "/ovirt-engine/api/vms?search=name=kiosk-07") => (
            200,
            "application/json",
            r#"{"vm":[{"id":"2a7d3c1e-6b55-4f0e-9b1a-0d6c2f1e8a41","name":"kiosk-07"}]}"#.into(),
        ),
        ("GET", "/ovirt-engine/api/vms/2a7d3c1e-6b55-4f0e-9b1a-0d6c2f1e8a41/graphicsconsoles") => (
            200,
            "application/json",
            r#"{"graphics_console":[{"id":"766e63","protocol":"vnc"},{"id":"7370696365","protocol":"spice"}]}"#.into(),
        ),
        ("POST", "/ovirt-engine/api/vms/2a7d3c1e-6b55-4f0e-9b1a-0d6c2f1e8a41/graphicsconsoles/7370696365/remoteviewerconnectionfile")
            if r.body == "<action/>" =>
        {
            let vv = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ovirt.vv"))
                .unwrap();
            let esc = vv.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            (
                200,
                "application/xml",
                format!("<action>\n  <remote_viewer_connection_file>\n{esc}  </remote_viewer_connection_file>\n</action>\n"),
            )
        }
        _ => (404, "text/plain", "".into()),
    }
}

#[test]
fn ovirt_refresh_fetches_the_engines_file() {
    if !have_python() {
        return;
    }
    let (port, seen) = serve(ovirt_api);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), &format!("{OVIRT_PASSWORD}\n"));
    let url = format!("http://127.0.0.1:{port}/ovirt-engine");
    let (code, out, err) = run(
        "spiced-refresh-ovirt",
        &[
            "--url",
            &url,
            "--allow-http",
            "--user",
            "kiosk@internal",
            "--password-file",
            &pw,
            "--vm",
            "kiosk-07",
        ],
    );
    assert_eq!(code, 0, "{err}\n{:?}", seen.lock().unwrap());
    let s = check(&out);
    assert_eq!(s["tls_port"], 5901, "{s}");
    assert_eq!(s["port"], serde_json::Value::Null, "port=-1: TLS only");
    assert_eq!(s["single_use_ticket"], true);
    let calls = seen_calls(&seen);
    assert_eq!(calls.len(), 4, "{calls:?}");

    // A wrong password: exit 1, one line, neither it nor a token printed.
    let bad = secret_file(dir.path(), "not-it");
    let (code, out, err) = run(
        "spiced-refresh-ovirt",
        &[
            "--url",
            &url,
            "--allow-http",
            "--user",
            "kiosk@internal",
            "--password-file",
            &bad,
            "--vm-id",
            "x",
        ],
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.lines().count() == 1 && !err.contains("not-it"), "{err}");
    let (code, out, _) = run("spiced-refresh-ovirt", &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("remoteviewerconnectionfile"));
}

const KERBSIDE_JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJraW9zayJ9.c2lnbmF0dXJl";
const KERBSIDE_PASSWORD: &str = "kerb-S3cret";

fn kerbside_api(r: &Request) -> (u16, &'static str, String) {
    let bearer = r.header("Authorization") == Some(&format!("Bearer {KERBSIDE_JWT}"));
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/auth") => {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if body["username"] == "kiosk" && body["password"] == KERBSIDE_PASSWORD {
                (
                    200,
                    "application/json",
                    format!(
                        r#"{{"access_token": "{KERBSIDE_JWT}", "expires_in": 900, "token_type": "Bearer"}}"#
                    ),
                )
            } else {
                (
                    401,
                    "application/json",
                    r#"{"error": "unauthorized"}"#.into(),
                )
            }
        }
        _ if !bearer => (
            401,
            "application/json",
            r#"{"msg": "Missing Authorization Header"}"#.into(),
        ),
        ("GET", "/console/proxy/lab/6f4e2c1a-0000-0000-0000-000000000001/console.vv") => (
            200,
            "application/x-virt-viewer",
            format!(
                "[virt-viewer]\ntype=spice\nhost=kerbside.example\nport=5900\ntls-port=5901\n\
                 password=one-time-123\ndelete-this-file=1\nca={}\nhost-subject=O=lab,CN=kerbside\n\
                 enable-smartcard=1\nenable-usb-autoshare=1\n",
                CA.replace('\n', "\\n")
            ),
        ),
        _ => (
            404,
            "application/json",
            r#"{"error": "console not found"}"#.into(),
        ),
    }
}

#[test]
fn kerbside_refresh_fetches_a_proxy_vv_with_a_token_or_a_login() {
    if !have_python() {
        return;
    }
    let (port, seen) = serve(kerbside_api);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let uuid = "6f4e2c1a-0000-0000-0000-000000000001";
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{KERBSIDE_JWT}\n")).unwrap();
    let token = token.display().to_string();
    let base = [
        "--url",
        url.as_str(),
        "--allow-http",
        "--source",
        "lab",
        "--uuid",
        uuid,
    ];
    let with =
        |more: &[&str]| -> Vec<String> { base.iter().chain(more).map(|s| s.to_string()).collect() };
    let args = with(&["--token-file", &token]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run("spiced-refresh-kerbside", &args);
    assert_eq!(code, 0, "{err}");
    let s = check(&out);
    assert_eq!(s["single_use_ticket"], true, "{s}");
    assert_eq!(s["tls_port"], 5901, "{s}");
    // A login instead of a token: POST /auth first.
    let pw = secret_file(dir.path(), KERBSIDE_PASSWORD);
    let args = with(&["--user", "kiosk", "--password-file", &pw]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run("spiced-refresh-kerbside", &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("[virt-viewer]"), "{out}");
    let calls = seen_calls(&seen);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[1], "POST /auth");
    // A refused login and an unknown console: exit 1, one line, no secret.
    let bad = secret_file(dir.path(), "not-it");
    let args = with(&["--user", "kiosk", "--password-file", &bad]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run("spiced-refresh-kerbside", &args);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.lines().count() == 1 && !err.contains("not-it"), "{err}");
    let (code, _, err) = run(
        "spiced-refresh-kerbside",
        &[
            "--url",
            &url,
            "--allow-http",
            "--source",
            "lab",
            "--uuid",
            "nope",
            "--token-file",
            &token,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 404") && !err.contains(KERBSIDE_JWT),
        "{err}"
    );
    // Usage errors: exit 2.
    let (code, _, _) = run("spiced-refresh-kerbside", &base);
    assert_eq!(code, 2);
    let (code, out, _) = run("spiced-refresh-kerbside", &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("/console/proxy/"));
}

/// The other host a redirect pointed at must have seen nothing: no request at
/// all (the redirect was refused, not followed), so surely none carrying
/// `secret` in a header, its path or its body.
fn assert_untouched(other: &Seen, secrets: &[&str]) {
    let seen = other.lock().unwrap();
    for r in seen.iter() {
        for secret in secrets {
            let carried = r.headers.iter().any(|(_, v)| v.contains(secret))
                || r.path.contains(secret)
                || r.body.contains(secret);
            assert!(
                !carried,
                "the credential reached the other host: {} {}",
                r.method, r.path
            );
        }
    }
    assert!(
        seen.is_empty(),
        "a redirect to another host was followed: {:?}",
        seen.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

/// One line on stderr saying a redirect to 127.0.0.2 was refused.
fn assert_refused_redirect(code: i32, out: &str, err: &str, secrets: &[&str]) {
    assert_eq!((code, out), (1, ""), "{err}");
    assert!(
        err.lines().count() == 1 && err.contains("redirect") && err.contains("127.0.0.2"),
        "{err}"
    );
    for s in secrets {
        assert!(!err.contains(s), "{err}");
    }
}

/// Without `--allow-http` a plain http:// URL is a usage error, before any
/// request.
fn assert_plain_http_refused(cmd: &str, args: &[&str], seen: &Seen) {
    let before = seen.lock().unwrap().len();
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--allow-http")
        .collect();
    let (code, out, err) = run(cmd, &args);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.lines().count() == 1 && err.contains("http://") && err.contains("--allow-http"),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), before, "{cmd} sent a request");
}

#[test]
fn proxmox_refresh_sends_its_token_to_no_other_host_and_not_over_plain_http() {
    if !have_python() {
        return;
    }
    // The other host takes the token as the API would: following the
    // redirect with it would even "work".
    let (other, other_seen) = serve_on("127.0.0.2", pve_api);
    let (port, seen) =
        serve(move |r: &Request| redirect(302, format!("http://127.0.0.2:{other}{}", r.path)));
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), PVE_TOKEN);
    let url = format!("http://127.0.0.1:{port}");
    let args = [
        "--url",
        &url,
        "--allow-http",
        "--node",
        "pve1",
        "--vmid",
        "101",
        "--token-file",
        &token,
    ];
    let (code, out, err) = run("spiced-refresh-proxmox", &args);
    assert_refused_redirect(code, &out, &err, &[PVE_TOKEN, "secret"]);
    assert_untouched(&other_seen, &["6f1c9c2e"]);
    assert_eq!(
        seen_calls(&seen),
        ["POST /api2/json/nodes/pve1/qemu/101/spiceproxy"]
    );
    assert_plain_http_refused("spiced-refresh-proxmox", &args, &seen);
}

#[test]
fn ovirt_refresh_sends_its_password_and_token_to_no_other_host_and_not_over_plain_http() {
    if !have_python() {
        return;
    }
    let (other, other_seen) = serve_on("127.0.0.2", ovirt_api);
    // The engine hands out the token, then redirects the VM search (with the
    // bearer token) elsewhere; a second engine redirects the password POST.
    let (port, seen) = serve(move |r: &Request| {
        if r.path.starts_with("/ovirt-engine/api/vms?") {
            redirect(302, format!("http://127.0.0.2:{other}{}", r.path))
        } else {
            ovirt_api(r).into()
        }
    });
    let (port2, seen2) =
        serve(move |r: &Request| redirect(308, format!("http://127.0.0.2:{other}{}", r.path)));
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), OVIRT_PASSWORD);
    for (port, seen) in [(port, &seen), (port2, &seen2)] {
        let url = format!("http://127.0.0.1:{port}/ovirt-engine");
        let args = [
            "--url",
            &url,
            "--allow-http",
            "--user",
            "kiosk@internal",
            "--password-file",
            &pw,
            "--vm",
            "kiosk-07",
        ];
        let (code, out, err) = run("spiced-refresh-ovirt", &args);
        assert_refused_redirect(code, &out, &err, &[OVIRT_PASSWORD, "T0KEN-abc"]);
        assert_untouched(&other_seen, &["T0KEN-abc", "S3cret"]);
        assert_plain_http_refused("spiced-refresh-ovirt", &args, seen);
    }
    assert_eq!(
        seen_calls(&seen),
        [
            "POST /ovirt-engine/sso/oauth/token",
            "GET /ovirt-engine/api/vms"
        ]
    );
}

#[test]
fn kerbside_refresh_follows_redirects_on_its_host_only_and_not_over_plain_http() {
    if !have_python() {
        return;
    }
    let uuid = "6f4e2c1a-0000-0000-0000-000000000001";
    let (other, other_seen) = serve_on("127.0.0.2", kerbside_api);
    // Console "moved" redirects on the same host (relative Location) and is
    // served there; console "elsewhere" redirects to the other host.
    let (port, seen) = serve(move |r: &Request| -> Reply {
        match r.path.as_str() {
            "/console/proxy/lab/moved/console.vv" => {
                redirect(302, format!("/v2/console/proxy/lab/{uuid}/console.vv"))
            }
            "/console/proxy/lab/elsewhere/console.vv" => redirect(
                302,
                format!("http://127.0.0.2:{other}/console/proxy/lab/{uuid}/console.vv"),
            ),
            p => {
                let mut r = r.clone();
                r.path = p.strip_prefix("/v2").unwrap_or(p).to_string();
                kerbside_api(&r).into()
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), KERBSIDE_JWT);
    let url = format!("http://127.0.0.1:{port}");
    let args = |console: &'static str| {
        [
            "--url".to_string(),
            url.clone(),
            "--allow-http".into(),
            "--source".into(),
            "lab".into(),
            "--uuid".into(),
            console.into(),
            "--token-file".into(),
            token.clone(),
        ]
    };
    let moved = args("moved");
    let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
    let (code, out, err) = run("spiced-refresh-kerbside", &moved);
    assert_eq!(code, 0, "{err}");
    assert_eq!(check(&out)["single_use_ticket"], true);
    let elsewhere = args("elsewhere");
    let elsewhere: Vec<&str> = elsewhere.iter().map(String::as_str).collect();
    let (code, out, err) = run("spiced-refresh-kerbside", &elsewhere);
    assert_refused_redirect(code, &out, &err, &[KERBSIDE_JWT]);
    assert_untouched(&other_seen, &[KERBSIDE_JWT]);
    assert_eq!(
        seen_calls(&seen),
        [
            "GET /console/proxy/lab/moved/console.vv",
            &format!("GET /v2/console/proxy/lab/{uuid}/console.vv"),
            "GET /console/proxy/lab/elsewhere/console.vv",
        ]
    );
    assert_plain_http_refused("spiced-refresh-kerbside", &moved, &seen);
}
