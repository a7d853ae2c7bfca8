//! Smoke tests of the integration-test harness (tests/common) against a real QEMU:
//! every helper other tests rely on is exercised here once, so a broken harness
//! shows up as a harness failure, not as a mysterious spiced failure.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The lab's spice-gtk client, from the `shared/` folder beside the checkout (CI
/// lays one there) — optional: the test skips without it.
fn reference_client() -> Option<std::path::PathBuf> {
    let beside =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spice-lab/spice-gtk-client.py");
    [beside, "/work/shared/spice-lab/spice-gtk-client.py".into()]
        .into_iter()
        .find(|p| p.exists())
}

/// Single-letter process state from /proc/PID/stat (`R`, `S`, `T`, `Z`, ...).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may contain spaces.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

#[test]
fn plain_qemu_answers_qmp_and_accepts_tcp() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    eprintln!(
        "plain QEMU pid {} ready in {:?} on port {}",
        q.pid(),
        q.start_time(),
        q.port()
    );
    let info = q.qmp().query_spice_raw();
    assert_eq!(info["enabled"], true);
    assert_eq!(info["auth"], "none");
    assert_eq!(info["port"], u64::from(q.port()));
    assert_eq!(q.connected_channel_count(), 0);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", q.pid())).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "spiced-test-qem",
        "process name (comm is 15 chars)"
    );

    // The port accepts a raw TCP connection (not a SPICE channel until it links).
    assert!(port_accepts(q.port()));
    assert_eq!(q.connected_channel_count(), 0);

    // An unknown command is an error reply, not a broken connection.
    match q.qmp().execute("no-such-command", None) {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    assert!(q.qmp().execute("query-status", None).is_ok());
    assert!(q.is_running());
    eprintln!("stderr after a raw connect: {:?}", q.stderr_text());
}

#[test]
fn reference_client_links_all_channels() {
    if !require_qemu() {
        return;
    }
    let Some(reference) = reference_client().filter(|_| Path::new("/usr/bin/python3").exists())
    else {
        eprintln!("skipping: the lab's reference client (shared/spice-lab) is not present");
        return;
    };
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let port = q.port().to_string();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&reference)
        .args(["--port", &port, "--seconds", "3", "--expect", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Tied to the test process: a killed test run leaves no client behind.
    let client = spawn_tied(cmd).expect("run the reference client");
    // spice-gtk opens 10 of the 11 channels (smartcard only on request).
    let linked = q.wait_channel_count(10, Duration::from_secs(10));
    let channels = q.channels();
    // SPICE_INITIALIZED arrived while nobody waited: it must have been buffered.
    let init = q
        .qmp()
        .wait_event("SPICE_INITIALIZED", Duration::from_secs(5));
    let out = client.wait_with_output().expect("reference client output");
    eprintln!(
        "reference client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(linked, "query-spice saw {channels:?}");
    assert!(channels.iter().all(|c| !c.tls));
    let main = channels.iter().find(|c| c.channel_type == 1).expect("main");
    assert!(channels
        .iter()
        .all(|c| c.connection_id == main.connection_id));
    assert!(init.is_some(), "no SPICE_INITIALIZED event");
    assert!(out.status.success());
    assert!(q.wait_channel_count(0, Duration::from_secs(5)));
}

#[tokio::test]
async fn async_waits_do_not_block_the_runtime() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    // A raw link from a task on the same (current-thread) runtime: the waits below
    // must yield for it to run.
    let port = q.port();
    let linker = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(&main_link_message()).await?;
        let mut magic = [0u8; 4];
        s.read_exact(&mut magic).await?;
        Ok::<_, std::io::Error>((magic, s))
    });
    // A link reply is not a linked channel: the wait ends by timeout, but the task
    // above ran meanwhile and got its reply.
    let linked = q
        .wait_channel_count_async(1, Duration::from_millis(500))
        .await;
    assert!(!linked);
    assert!(linker.is_finished(), "the runtime was blocked");
    let (magic, _s) = linker.await.expect("join").expect("link reply");
    assert_eq!(&magic, b"REDQ");
    let ev = q.wait_event_async("NO_SUCH_EVENT", Duration::from_millis(100));
    assert!(ev.await.is_none());
}

#[test]
fn password_qemu_takes_ticket_commands() {
    if !require_qemu() {
        return;
    }
    // A comma in the password checks QEMU option escaping.
    let q = Qemu::start(QemuOpts::with_password("s3cret,pw"));
    eprintln!("password QEMU ready in {:?}", q.start_time());
    assert_eq!(q.qmp().query_spice_raw()["auth"], "spice");
    let mut qmp = q.qmp();
    qmp.set_password("other").expect("set_password");
    qmp.expire_password("+30").expect("expire_password +30");
    qmp.expire_password("now").expect("expire_password now");
    qmp.expire_password("never").expect("expire_password never");
}

#[test]
fn tls_qemu_completes_a_verified_handshake() {
    if !require_qemu() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = Instant::now();
    let certs = Certs::generate(dir.path(), "spiced-test");
    eprintln!("certs generated in {:?}", t0.elapsed());
    assert_eq!(certs.host_subject(), "O=spice-lab,CN=spiced-test");
    assert!(certs.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    for f in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }

    let q = Qemu::start(QemuOpts {
        tls_channels: vec!["default".into()],
        ..QemuOpts::with_tls(&certs)
    });
    eprintln!("TLS QEMU ready in {:?}", q.start_time());
    assert_eq!(
        q.qmp().query_spice_raw()["tls-port"],
        u64::from(q.tls_port())
    );
    let ca = certs.ca_path();
    let s_client = |port: u16, extra: &[&str]| {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(&ca)
            .args(["-verify_return_error"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client")
    };
    let out = s_client(q.tls_port(), &["-verify_ip", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "s_client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The plain port speaks no TLS: the same handshake there must fail.
    assert!(!s_client(q.port(), &[]).status.success());

    // TLS only: no plain port at all.
    let only = Qemu::start(QemuOpts {
        plain_port: false,
        ..QemuOpts::with_tls(&certs)
    });
    assert_eq!(only.ports().0, None);
    assert!(s_client(only.tls_port(), &[]).status.success());
}

#[test]
fn kill_frees_the_port_and_restart_reuses_it() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let (port, old_pid) = (q.port(), q.pid());
    // A client connection that stays open across the restart, as a real client's
    // would (its server side lingers in FIN_WAIT2): the port must still be reusable.
    let mut held = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    held.write_all(&main_link_message()).expect("send link");
    let t0 = Instant::now();
    q.kill();
    eprintln!("kill took {:?}", t0.elapsed());
    assert!(!q.is_running());
    assert!(!port_accepts(port), "port {port} still accepts after kill");

    q.restart_same_ports();
    eprintln!("restart on port {port} ready in {:?}", q.start_time());
    assert_eq!(q.port(), port);
    assert_ne!(q.pid(), old_pid);
    assert!(port_accepts(port));
    assert_eq!(q.connected_channel_count(), 0);
    // Restarting a running server works too (it kills first).
    q.restart_same_ports();
    assert!(port_accepts(port));
}

#[test]
fn stop_freezes_and_cont_resumes() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    q.stop();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(q.pid()) == 'T'),
        "not stopped: state {}",
        proc_state(q.pid())
    );
    // A frozen QEMU's listen socket still completes TCP handshakes (the kernel does).
    assert!(port_accepts(q.port()));
    q.cont();
    assert!(wait_until(Duration::from_secs(5), || proc_state(q.pid()) != 'T'));
    assert_eq!(q.connected_channel_count(), 0);
}

#[test]
fn paused_two_head_qemu_starts() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts {
        paused: true,
        heads: 2,
        ..Default::default()
    });
    eprintln!("paused 2-head QEMU ready in {:?}", q.start_time());
    let status = q.qmp().execute("query-status", None).expect("query-status");
    assert_eq!(status["running"], false);
    assert!(q.stderr_text().is_empty(), "stderr: {}", q.stderr_text());
}

/// A SPICE link message for the main channel, no caps: 16-byte header + 18 bytes.
fn main_link_message() -> Vec<u8> {
    let mut m = b"REDQ".to_vec();
    for v in [2u32, 2, 18] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&0u32.to_le_bytes()); // connection id: new session
    m.extend_from_slice(&[1, 0]); // channel type main, id 0
    for v in [0u32, 0, 18] {
        m.extend_from_slice(&v.to_le_bytes()); // no caps; caps offset
    }
    m
}

/// Sends a CONNECT through the proxy listening on `proxy_port` and returns the
/// status line and the connection (the tunnel, if the status is 200).
fn connect_via(proxy_port: u16, port: u16) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    // Read the response head byte by byte: nothing of the tunnel may be consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    (text.lines().next().unwrap_or("").to_owned(), s)
}

#[test]
fn tinyproxy_tunnels_to_qemu() {
    if !require_qemu() || !Tinyproxy::available() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let proxy = Tinyproxy::start(&[q.port()], 30);
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{}", proxy.port()));

    let (status, mut tunnel) = connect_via(proxy.port(), q.port());
    assert!(status.contains(" 200 "), "CONNECT answered {status:?}");
    // The tunnel reaches spice-server: it answers a link message with REDQ.
    tunnel.write_all(&main_link_message()).unwrap();
    let mut magic = [0u8; 4];
    tunnel
        .read_exact(&mut magic)
        .expect("link reply through the proxy");
    assert_eq!(&magic, b"REDQ");

    // A port not in ConnectPort is refused.
    let other = free_port();
    let (status, _) = connect_via(proxy.port(), other);
    assert!(
        status.contains(" 403 "),
        "CONNECT to {other} answered {status:?}"
    );
}

use common::channel_types::{MAIN, PORT, WEBDAV};

#[test]
fn firewall_tunnels_to_qemu_and_learns_the_channel() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let fw = Firewall::open();
    assert_eq!(fw.url(), format!("http://127.0.0.1:{}", fw.port()));

    let (status, mut tunnel) = connect_via(fw.port(), q.port());
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    let link = main_link_message();
    tunnel.write_all(&link).unwrap();
    let mut magic = [0u8; 4];
    tunnel
        .read_exact(&mut magic)
        .expect("link reply through the firewall");
    assert_eq!(&magic, b"REDQ");
    assert!(
        fw.wait_for(Duration::from_secs(5), |t| t.len() == 1
            && t[0].replied_at.is_some()),
        "{fw:?}"
    );
    let t = &fw.tunnels()[0];
    assert_eq!(t.target, format!("127.0.0.1:{}", q.port()));
    assert_eq!(t.status, 200);
    assert_eq!(
        (t.connection_id, t.channel_type, t.channel_id),
        (Some(0), Some(MAIN), Some(0))
    );
    assert_eq!(t.bytes_up, link.len() as u64, "forwarded unchanged");
    assert!(t.bytes_down >= 4, "{t:?}");
    assert!(t.is_open() && !t.closed_by_firewall());
    assert_eq!((fw.linked(MAIN), fw.open_of(MAIN)), (1, 1));

    // The client leaving ends the tunnel, recorded as the client's doing.
    drop(tunnel);
    assert!(
        fw.wait_for(Duration::from_secs(5), |t| t[0].ended_by
            == Some(EndedBy::Client)),
        "{fw:?}"
    );
    assert_eq!(fw.open_count(), 0);

    // Nothing listening at the target: 502. Not a CONNECT: 405.
    let (status, _) = connect_via(fw.port(), free_port());
    assert!(status.contains(" 502 "), "{status:?}");
    let mut get = TcpStream::connect(("127.0.0.1", fw.port())).unwrap();
    get.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(get, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = get.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply:?}");

    // Dropping the firewall closes the tunnels through it.
    let (_, mut held) = connect_via(fw.port(), q.port());
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(fw.wait_for(Duration::from_secs(5), |t| t.iter().any(|t| t.is_open())));
    drop(fw);
    let mut b = [0u8; 1];
    assert!(
        matches!(held.read(&mut b), Ok(0)),
        "the tunnel outlived the firewall"
    );
}

/// The firewall ends a listed channel type about the given time after the
/// server's link reply, and leaves every other channel alone. spiced links all 11
/// channels through it (no channel skipped); what spiced then does about the loss
/// is not this test's business, only the firewall's record and QEMU's view.
#[test]
fn firewall_closes_a_listed_channel_after_link() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let after = Duration::from_secs(1);
    let fw = Firewall::start(vec![(PORT, after)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let vv = write_vv(
        dir.path(),
        &[
            ("host", "127.0.0.1"),
            ("port", &q.port().to_string()),
            ("proxy", &fw.url()),
        ],
    );
    let toml = format!(
        "[channels]\nskip = []\n\n[reconnect]\nenabled = false\n\n[report]\nspool_dir = \"{}\"\n",
        dir.path().join("spool").display()
    );
    let s = Spiced::start(&vv, &toml, &[]);
    assert!(
        s.wait_log("session fully linked: 11 channels", Duration::from_secs(20)),
        "spiced did not link 11 channels through the firewall"
    );
    assert!(
        fw.wait_for(Duration::from_secs(10), |t| t
            .iter()
            .any(Tunnel::closed_by_firewall)),
        "the firewall closed nothing: {fw:?}"
    );
    let tunnels = fw.tunnels();
    let port: Vec<&Tunnel> = tunnels
        .iter()
        .filter(|t| t.channel_type == Some(PORT))
        .collect();
    assert_eq!(port.len(), 1, "{tunnels:?}");
    let took = port[0].closed_after_reply().expect("closed after a reply");
    let closed_at = port[0].ended_at.expect("ended");
    // The other 10 channels were linked and open when the port tunnel was closed.
    let others: Vec<&Tunnel> = tunnels
        .iter()
        .filter(|t| t.channel_type != Some(PORT) && t.replied_at.is_some_and(|r| r < closed_at))
        .collect();
    let open_then = others.iter().filter(|t| t.open_at(closed_at)).count();
    eprintln!(
        "firewall: port closed {took:?} after its link reply; {open_then} of {} other tunnels open then; \
         bytes up/down on port: {}/{}",
        others.len(),
        port[0].bytes_up,
        port[0].bytes_down
    );
    assert!(
        took >= after && took < after + Duration::from_millis(500),
        "closed {took:?} after the link reply"
    );
    assert_eq!(others.len(), 10, "{tunnels:?}");
    assert_eq!(open_then, 10, "{tunnels:?}");
    assert_eq!(fw.closed_by_firewall(PORT), 1);
    assert!(
        tunnels
            .iter()
            .filter(|t| t.channel_type != Some(PORT))
            .all(|t| !t.closed_by_firewall()),
        "{tunnels:?}"
    );
    // QEMU saw the port channel go.
    assert!(
        wait_until(Duration::from_secs(5), || q
            .channels()
            .iter()
            .all(|c| c.channel_type != PORT)),
        "{:?}",
        q.channels()
    );
}

/// spice-gtk's reference client through the firewall (spice-gtk honours the
/// `SPICE_PROXY` environment variable) with port and webdav closed 1 s after
/// link, as Kerbside's default firewall does: it opens 10 channels, keeps 8.
#[test]
fn reference_client_through_the_firewall_keeps_eight_channels() {
    if !require_qemu() {
        return;
    }
    let Some(reference) = reference_client().filter(|_| Path::new("/usr/bin/python3").exists())
    else {
        eprintln!("skipping: the lab's reference client (shared/spice-lab) is not present");
        return;
    };
    let q = Qemu::start(QemuOpts {
        paused: true,
        ..Default::default()
    });
    let after = Duration::from_secs(1);
    let fw = Firewall::start(vec![(PORT, after), (WEBDAV, after)]);
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&reference)
        .args(["--port", &q.port().to_string()])
        // `--expect` counts the channels still open at the end.
        .args(["--seconds", "5", "--expect", "8"])
        .env("SPICE_PROXY", fw.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = spawn_tied(cmd).expect("run the reference client");
    let closed_both = fw.wait_for(Duration::from_secs(10), |t| {
        t.iter().filter(|t| t.closed_by_firewall()).count() == 2
    });
    let eight = q.wait_channel_count(8, Duration::from_secs(5));
    let channels = q.channels();
    let tunnels = fw.tunnels();
    let out = client.wait_with_output().expect("reference client output");
    eprintln!(
        "reference client via firewall: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(closed_both, "{tunnels:?}");
    assert!(eight, "query-spice: {channels:?}");
    assert!(channels
        .iter()
        .all(|c| c.channel_type != PORT && c.channel_type != WEBDAV));
    for t in tunnels.iter().filter(|t| t.closed_by_firewall()) {
        let took = t.closed_after_reply().expect("closed after a reply");
        eprintln!(
            "  {:?} closed {took:?} after its link reply",
            t.channel_type
        );
        assert!(matches!(t.channel_type, Some(PORT | WEBDAV)), "{t:?}");
        assert!(took >= after && took < after + Duration::from_millis(500));
    }
    assert_eq!(
        tunnels.iter().filter(|t| t.replied_at.is_some()).count(),
        10,
        "{tunnels:?}"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    for line in ["port:0: closed", "webdav:0: closed", "channels 8"] {
        assert!(said.lines().any(|l| l == line), "no {line:?}: {said}");
    }
    assert!(out.status.success(), "the reference client failed");
}

#[test]
fn netns_blackhole_silences_the_port() {
    if !require_qemu() {
        return;
    }
    if !NetNs::available() {
        eprintln!("skipping: netns needs root, ip and nft");
        return;
    }
    let ns = NetNs::create("spiced-smoke");
    let q = Qemu::start(QemuOpts {
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    });
    eprintln!("QEMU in netns {} ready in {:?}", ns.name(), q.start_time());
    // QMP is a unix socket: reachable from outside the namespace.
    assert_eq!(q.connected_channel_count(), 0);
    // Connect from inside the namespace with bash's /dev/tcp, bounded by timeout(1).
    let connect_inside = || {
        ns.command("timeout")
            .args(["2", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}", q.port()))
            .status()
            .expect("run bash in the netns")
    };
    assert!(connect_inside().success(), "no connect inside the netns");

    ns.blackhole_port(q.port());
    let t0 = Instant::now();
    let st = connect_inside();
    assert_eq!(st.code(), Some(124), "connect was not black-holed: {st}");
    assert!(t0.elapsed() >= Duration::from_secs(2));

    ns.heal();
    assert!(connect_inside().success(), "no connect after heal");
    q.kill();
}

#[test]
fn write_vv_escapes_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_vv(
        dir.path(),
        &[
            ("host", "127.0.0.1"),
            ("port", "5900"),
            ("ca", "-----BEGIN\nA\\B\n"),
        ],
    );
    let text = std::fs::read_to_string(path).expect("read console.vv");
    assert_eq!(
        text,
        "[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=5900\nca=-----BEGIN\\nA\\\\B\\n\n"
    );
}
