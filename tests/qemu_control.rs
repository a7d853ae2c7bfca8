//! The control socket and the metrics file against a real QEMU and the real
//! spiced binary: `status` while connected and pending, `subscribe` through a
//! kill and the reconnect, `reconnect` relinks, a subscriber that never reads
//! is dropped without slowing the session, one-off subscribers give their
//! slots back as they close, the socket's mode and path rules,
//! `spiced status`; the metrics file read by Debian's node_exporter (textfile
//! collector) over HTTP after a connect, a kill and a reconnect.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LINK_TIMEOUT: Duration = Duration::from_secs(30);
const INSTANCE: &str = "kiosk-test";

fn config(dir: &Path, sock: &Path, prom: Option<&Path>) -> String {
    let mut s = format!(
        "[report]\nspool_dir = \"{}\"\n\n[control]\nsocket = \"{}\"\n",
        dir.join("spool").display(),
        sock.display()
    );
    if let Some(p) = prom {
        s.push_str(&format!("\n[metrics]\ntextfile = \"{}\"\n", p.display()));
    }
    s
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

/// One request, one answer.
fn ask(sock: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{{\"cmd\":\"{cmd}\"}}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v = json(&line);
    assert_eq!(v["version"], 1, "{v}");
    v
}

fn wait_status(
    sock: &Path,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(timeout, || {
        if !sock.exists() {
            return false;
        }
        last = ask(sock, "status");
        cond(&last)
    });
    assert!(ok, "status never showed {what}; last: {last}");
    last
}

fn connected_all(v: &serde_json::Value) -> bool {
    v["state"] == "connected" && v["channels_up"] == 11
}

/// A subscriber that reads every line on a thread and hands them over.
struct Subscriber {
    lines: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl Subscriber {
    fn start(sock: &Path) -> Subscriber {
        let mut s = UnixStream::connect(sock).unwrap();
        writeln!(s, "{{\"cmd\":\"subscribe\"}}").unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                if tx.send(json(&line)).is_err() {
                    return;
                }
            }
        });
        Subscriber {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `cond` (lines before it are kept in `seen`).
    fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if cond(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "subscribe never showed {what}; last lines: {:?}",
                    &self.seen[self.seen.len().saturating_sub(5)..]
                ),
            }
        }
    }
}

/// Every log line with a `message_id` (the journal's key events) logged after
/// the first `skip` lines (once the subscription was live) must have reached
/// the subscriber, as many times per id.
fn key_events_match(log: &str, skip: usize, seen: &[serde_json::Value]) -> usize {
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().skip(skip) {
        if let Some(rest) = line.split("message_id=").nth(1) {
            let id = rest
                .trim_start_matches('"')
                .split(|c: char| !c.is_ascii_hexdigit())
                .next()
                .unwrap_or("")
                .to_string();
            *logged.entry(id).or_default() += 1;
        }
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for v in seen.iter().filter(|v| v["type"] == "event") {
        *got.entry(v["message_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for (id, n) in &logged {
        assert!(
            got.get(id).copied().unwrap_or(0) >= *n,
            "key event {id} logged {n} times, subscribe saw {:?}",
            got.get(id)
        );
    }
    logged.values().sum()
}

/// Debian's node_exporter with only its textfile collector, on a free port.
struct Exporter {
    child: std::process::Child,
    port: u16,
}

impl Exporter {
    fn start(dir: &Path) -> Option<Exporter> {
        if !have_program("prometheus-node-exporter") {
            assert!(
                std::env::var_os("CI").is_none(),
                "prometheus-node-exporter is missing (scripts/install-deps.sh installs it)"
            );
            eprintln!("SKIP metrics scrape: prometheus-node-exporter not installed (scripts/install-deps.sh)");
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = std::process::Command::new("prometheus-node-exporter");
            cmd.arg("--collector.disable-defaults")
                .arg("--collector.textfile")
                .arg(format!("--collector.textfile.directory={}", dir.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = spawn_tied(cmd).expect("start node_exporter");
            if wait_until(Duration::from_secs(10), || port_accepts(port)) {
                return Some(Exporter { child, port });
            }
            kill_child(&mut child);
        }
        panic!("node_exporter did not listen");
    }

    /// GET /metrics: (name, labels) ⇒ value, parsed from the exposition text.
    fn scrape(&self) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{body}"
        );
        let mut out = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if !line.starts_with("spiced_") && !line.starts_with("node_textfile") {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels: BTreeMap<String, String> = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            out.insert((name.to_string(), labels), value.parse::<f64>().unwrap());
        }
        out
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

type Scrape = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The value of `name` with these labels besides spiced_instance.
fn metric(m: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.insert("spiced_instance".into(), INSTANCE.into());
    m.get(&(name.to_string(), want)).copied()
}

/// The sum of `name` over every label set.
fn total(m: &Scrape, name: &str) -> f64 {
    m.iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

fn wait_scrape(e: &Exporter, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = Scrape::new();
    let ok = wait_until(Duration::from_secs(20), || {
        last = e.scrape();
        cond(&last)
    });
    assert!(ok, "the metrics never showed {what}: {last:?}");
    assert_eq!(
        metric(&last, "node_textfile_scrape_error", &[]).or_else(|| last
            .iter()
            .find(|((n, _), _)| n == "node_textfile_scrape_error")
            .map(|(_, v)| *v)),
        Some(0.0),
        "node_exporter parsed the file without error"
    );
    last
}

fn connection_ids(q: &Qemu) -> Vec<i64> {
    let mut ids: Vec<i64> = q.channels().iter().map(|c| c.connection_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn status_subscribe_reconnect_and_metrics_against_real_qemu() {
    if !require_qemu() {
        return;
    }
    let q = Qemu::start(QemuOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let port = q.port().to_string();
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", &port)]);
    let sock = dir.path().join("spiced.sock");
    let promdir = dir.path().join("textfile");
    std::fs::create_dir(&promdir).unwrap();
    let prom = promdir.join(format!("spiced-{INSTANCE}.prom"));
    let exporter = Exporter::start(&promdir);
    let s = Spiced::start_env(
        &vv,
        &config(dir.path(), &sock, Some(&prom)),
        &[],
        &[("SPICED_INSTANCE", INSTANCE)],
    );

    // Connected: status, the socket's mode, spiced status.
    let v = wait_status(&sock, LINK_TIMEOUT, "11 channels up", connected_all);
    assert_eq!(v["instance"], INSTANCE);
    assert_eq!(v["channels_total"], 11);
    assert!(v["established"].as_f64().is_some(), "{v}");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is 0600");
    let out = std::process::Command::new(spiced_bin())
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("spiced {INSTANCE}: connected")),
        "{text}"
    );
    assert!(text.contains("11 of 11 up"), "{text}");
    let out = std::process::Command::new(spiced_bin())
        .args(["status", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        json(String::from_utf8_lossy(&out.stdout).trim())["state"],
        "connected"
    );

    // One-off subscribers, twice as many as there are client slots, come and
    // go while nothing happens (nothing published): each slot comes back as
    // its subscriber closes (spiced closes its end too), and `spiced status`
    // is answered at once afterwards.
    for i in 0..32 {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(c, "{{\"cmd\":\"subscribe\"}}").unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        assert_eq!(json(&first)["type"], "status", "subscriber {i}");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        assert!(
            r.read_to_end(&mut rest).is_ok(),
            "subscriber {i}: spiced still holds it 5 s after it closed"
        );
    }
    let out = std::process::Command::new(spiced_bin())
        .args(["status", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "after 32 one-off subscribers: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    if let Some(e) = &exporter {
        let m = wait_scrape(e, "the session up", |m| {
            metric(m, "spiced_session_up", &[]) == Some(1.0)
                && metric(m, "spiced_channels_up", &[]) == Some(11.0)
        });
        assert_eq!(
            metric(&m, "spiced_state", &[("state", "connected")]),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, "spiced_state", &[("state", "pending")]),
            Some(0.0)
        );
        assert!(
            metric(
                &m,
                "spiced_channel_received_bytes_total",
                &[("channel", "main")]
            )
            .unwrap()
                > 0.0
        );
        // Every channel has its series; what it sent after the last status
        // change shows at the next write (within 15 s), checked at the end.
        assert!(metric(
            &m,
            "spiced_channel_sent_bytes_total",
            &[("channel", "display")]
        )
        .is_some());
        assert_eq!(total(&m, "spiced_disconnects_total"), 0.0);
        assert_eq!(
            metric(&m, "spiced_reconnect_attempts_total", &[]),
            Some(0.0)
        );
        assert!(metric(&m, "spiced_session_uptime_seconds", &[]).is_some());
        println!(
            "metrics after connect: {} spiced series",
            m.keys().filter(|(n, _)| n.starts_with("spiced_")).count()
        );
    }

    // `reconnect` relinks: a new connection id on the same QEMU.
    let old_ids = connection_ids(&q);
    let mut sub = Subscriber::start(&sock);
    sub.wait(Duration::from_secs(5), "the first snapshot", |v| {
        v["type"] == "status"
    });
    // Key events logged from here on must all reach the subscriber.
    let subscribed_at = s.log().lines().count();
    let t = Instant::now();
    assert_eq!(ask(&sock, "reconnect")["type"], "ok");
    sub.wait(LINK_TIMEOUT, "connecting", |v| v["state"] == "connecting");
    sub.wait(LINK_TIMEOUT, "connected again", connected_all);
    let relink = t.elapsed();
    assert!(q.wait_channel_count(11, Duration::from_secs(10)));
    let new_ids = connection_ids(&q);
    assert_ne!(new_ids, old_ids, "a new session");
    assert_eq!(ask(&sock, "status")["reconnects"], 1);
    println!("reconnect command relinked 11 channels in {relink:?}");

    // Kill QEMU: subscribe sees the loss and the attempts; status says pending.
    let killed = Instant::now();
    q.kill();
    let v = sub.wait(Duration::from_secs(10), "pending", |v| {
        v["state"] == "pending"
    });
    assert_eq!(
        (v["attempt"].clone(), v["attempt_budget"].clone()),
        (1.into(), 3.into())
    );
    let d = &v["last_disconnect"];
    assert_eq!(d["channel"], "main", "{v}");
    let cause = d["cause"].as_str().unwrap().to_string();
    assert!(v["next_attempt_at"].as_f64().is_some());
    sub.wait(Duration::from_secs(10), "attempt 1", |v| {
        v["state"] == "connecting" && v["attempt"] == 1
    });
    let v = sub.wait(Duration::from_secs(10), "pending attempt 2", |v| {
        v["state"] == "pending" && v["attempt"] == 2
    });
    assert_eq!(v["counts"]["connect_failures"]["connect_failed"], 1, "{v}");
    let st = ask(&sock, "status");
    assert_eq!(
        (st["state"].clone(), st["attempt"].clone()),
        ("pending".into(), 2.into())
    );
    if let Some(e) = &exporter {
        let m = wait_scrape(e, "the loss", |m| {
            metric(m, "spiced_reconnect_attempt", &[]) == Some(2.0)
        });
        assert_eq!(metric(&m, "spiced_session_up", &[]), Some(0.0));
        assert_eq!(
            metric(&m, "spiced_state", &[("state", "pending")]),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, "spiced_disconnects_total", &[("cause", &cause)]),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &m,
                "spiced_connect_failures_total",
                &[("cause", "connect_failed")]
            ),
            Some(1.0)
        );
        assert!(metric(&m, "spiced_last_disconnect_timestamp_seconds", &[]).unwrap() > 1.7e9);
        assert!(metric(&m, "spiced_session_uptime_seconds", &[]).is_none());
    }

    // While the server is down: a subscriber that never reads, then a storm
    // of `reconnect` requests, each a fresh connect refused at once (two
    // status lines each, no server involved). The stuck subscriber is
    // dropped; every request is still handled at once.
    let stuck = UnixStream::connect(&sock).unwrap();
    (&stuck).write_all(b"{\"cmd\":\"subscribe\"}\n").unwrap();
    let failed = |v: &serde_json::Value| {
        v["counts"]["connect_failures"]["connect_failed"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut failures = failed(&ask(&sock, "status"));
    let mut cycles = Vec::new();
    let mut dropped = false;
    let storm = Instant::now();
    while storm.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        assert_eq!(ask(&sock, "reconnect")["type"], "ok");
        // A connect more has failed (the request's, or the back-off's
        // should the request have come while that one was running).
        let v = sub.wait(Duration::from_secs(10), "a refused connect", |v| {
            v["state"] == "pending" && failed(v) > failures
        });
        failures = failed(&v);
        cycles.push(t.elapsed());
        if cycles.len() % 50 == 0 && s.log().contains("control socket: a subscriber") {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the never-reading subscriber was not dropped after {} requests",
        cycles.len()
    );
    cycles.sort();
    let (median, worst) = (cycles[cycles.len() / 2], cycles[cycles.len() - 1]);
    println!(
        "{} reconnect requests with a stuck subscriber in {:?}: median {median:?}, worst {worst:?}; {} lines to the reading one",
        cycles.len(),
        storm.elapsed(),
        sub.seen.len()
    );
    assert!(worst < Duration::from_secs(2), "a request waited {worst:?}");
    // The stuck one's connection was closed by spiced: reading it now ends.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    assert!((&stuck).read_to_end(&mut sink).is_ok(), "closed by spiced");
    assert_eq!(ask(&sock, "status")["state"], "pending");

    // Restart QEMU: the next attempt links; subscribe and status say connected.
    q.restart_same_ports();
    let restart = Instant::now();
    sub.wait(LINK_TIMEOUT, "connected after the restart", connected_all);
    let back = killed.elapsed();
    let restarted = restart.elapsed();
    let st = ask(&sock, "status");
    assert!(connected_all(&st), "{st}");
    assert_eq!(st["last_disconnect"]["cause"], cause.as_str());
    let reconnects = st["reconnects"].as_u64().unwrap();
    assert_eq!(reconnects, 2, "the reconnect command's and this one");
    assert!(
        restarted < Duration::from_secs(10),
        "linked {restarted:?} after the restart (the back-off is 1 s)"
    );
    println!("killed → connected again in {back:?}, {restarted:?} after QEMU was back");
    if let Some(e) = &exporter {
        let m = wait_scrape(e, "the reconnect", |m| {
            metric(m, "spiced_session_up", &[]) == Some(1.0)
                && metric(m, "spiced_channels_up", &[]) == Some(11.0)
        });
        assert_eq!(
            metric(&m, "spiced_reconnects_total", &[]),
            Some(reconnects as f64)
        );
        // The metrics say what the status says.
        let c = &st["counts"];
        assert_eq!(
            metric(&m, "spiced_reconnect_attempts_total", &[]),
            c["reconnect_attempts"].as_f64()
        );
        // Attempt 1 after the kill, attempt 1 after the storm (each request
        // starts afresh, not as an attempt).
        assert_eq!(c["reconnect_attempts"], 2, "{c}");
        assert_eq!(
            metric(
                &m,
                "spiced_connect_failures_total",
                &[("cause", "connect_failed")]
            ),
            c["connect_failures"]["connect_failed"].as_f64()
        );
        assert_eq!(
            metric(&m, "spiced_reports_skipped_total", &[]),
            c["reports_skipped"].as_f64()
        );
        assert_eq!(metric(&m, "spiced_reconnect_attempt", &[]), Some(0.0));
        assert_eq!(total(&m, "spiced_disconnects_total"), 1.0);
        assert_eq!(
            metric(&m, "spiced_reports_written_total", &[]),
            c["reports_written"].as_f64()
        );
        assert!(
            c["reports_written"].as_u64().unwrap() >= 1,
            "the loss's report"
        );
        assert!(
            metric(
                &m,
                "spiced_channel_sent_bytes_total",
                &[("channel", "display")]
            )
            .unwrap()
                > 0.0,
            "bytes sent on display over {} sessions",
            reconnects + 1
        );
        assert!(
            metric(
                &m,
                "spiced_channel_received_bytes_total",
                &[("channel", "main")]
            )
            .unwrap()
                > 0.0
        );
        println!(
            "metrics after the reconnect: {:?}",
            m.iter()
                .filter(|((n, _), _)| n.starts_with("spiced_reports")
                    || n.starts_with("spiced_disconnects"))
                .collect::<Vec<_>>()
        );
    }
    let key = key_events_match(&s.log(), subscribed_at, &sub.seen);
    println!(
        "{key} key log events (message_id) all seen by subscribe; {} lines in all",
        sub.seen.len()
    );
}

/// A socket path that is not a socket, or in a directory others can write to,
/// is refused (exit 78); a client of another user is refused by the socket's
/// mode; `spiced status` says 69 with no daemon.
#[test]
fn wrong_permissions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: spiced keeps retrying, which is all this needs.
    let vv = write_vv(dir.path(), &[("host", "127.0.0.1"), ("port", "1")]);
    let sock = dir.path().join("spiced.sock");

    std::fs::write(&sock, "not a socket").unwrap();
    let mut s = Spiced::start(&vv, &config(dir.path(), &sock, None), &[]);
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        Some(78),
        "{}",
        s.log()
    );
    assert!(
        s.log().contains("exists and is not a socket"),
        "{}",
        s.log()
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket");
    std::fs::remove_file(&sock).unwrap();

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut s = Spiced::start(&vv, &config(dir.path(), &open.join("s.sock"), None), &[]);
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        Some(78),
        "{}",
        s.log()
    );
    assert!(s.log().contains("writable by other users"), "{}", s.log());

    let status = |args: &[&str]| {
        std::process::Command::new(spiced_bin())
            .arg("status")
            .args(args)
            .output()
            .unwrap()
    };
    let out = status(&["--socket", &sock.display().to_string()]);
    assert_eq!(out.status.code(), Some(69), "no daemon: {out:?}");

    // A live daemon: its socket is 0600, so another user cannot connect even
    // where the directory lets it reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = Spiced::start(&vv, &config(dir.path(), &sock, None), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "{}",
        s.log()
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(connect_as(65534, &sock), libc::EACCES, "nobody is refused");
        assert_eq!(connect_as(0, &sock), 0, "root may connect");
        // Through a mode loosened by hand, spiced itself refuses the peer
        // (SO_PEERCRED): `spiced status` says "not allowed", 77.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = std::process::Command::new(spiced_bin())
            .args(["status", "--socket"])
            .arg(&sock)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(77), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "{out:?}"
        );
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    } else {
        eprintln!("SKIP the other-user check: it needs root to switch users");
    }
    // "idle" while the .vv is read, then retrying a port nobody listens on.
    wait_status(
        &sock,
        Duration::from_secs(10),
        "connecting or pending",
        |v| ["connecting", "pending"].contains(&v["state"].as_str().unwrap_or("")),
    );
    // A second spiced for the same socket is refused, the first keeps it.
    let mut second = Spiced::start(&vv, &config(dir.path(), &sock, None), &[]);
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(78));
    assert!(
        second.log().contains("another process is listening"),
        "{}",
        second.log()
    );
    assert_eq!(ask(&sock, "status")["type"], "status");
    assert_eq!(s.stop(), Some(0));
    assert!(!sock.exists(), "the socket is removed on exit");
}

/// connect(2) to `sock` from a child running as `uid`; 0 or the errno.
fn connect_as(uid: u32, sock: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(sock.as_os_str().as_bytes()).unwrap();
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes_with_nul()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes async-signal-safe system calls on memory
    // prepared before the fork, then _exits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(100);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let code = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        assert!(libc::WIFEXITED(st));
        let code = libc::WEXITSTATUS(st);
        assert_ne!(code, 100, "setuid failed");
        code
    }
}
