//! The .vv path: what the daemon notices of the file there without a SIGHUP,
//! and that looking at it never holds the loop.
//!
//! Test code only: the parent declares this module under #[cfg(test)].

use super::shell::{drive, env, in_rt, until};
use super::*;
use crate::link::{ConnectFuture, Connector, Target};
use crate::systemd::Notifier;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A stat of the .vv that never returns (stalled storage) must not hold the
/// loop: SIGTERM is still handled at once. Run on its own thread: a loop that
/// is held cannot time itself out.
#[test]
fn a_stat_of_the_vv_that_never_returns_does_not_hold_the_loop() {
    static STATS: AtomicUsize = AtomicUsize::new(0);
    fn stuck(_: &Path) -> Option<crate::daemon::Stamp> {
        STATS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(8));
        None
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = in_rt(async {
            let (mut env, _f) = env(false, false, false);
            env.stamp = stuck;
            drive(Config::default(), env, |tx| {
                tokio::spawn(async move {
                    until("a stat of the .vv", || STATS.load(Ordering::SeqCst) > 0).await;
                    tx.send(Signal::Terminate).unwrap();
                })
            })
            .await
        });
        let _ = done_tx.send(out);
    });
    let (code, took) = done_rx
        .recv_timeout(Duration::from_secs(4))
        .expect("SIGTERM is handled while a stat of the .vv hangs");
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Refuses every connect, or (`hang`) never answers.
struct Refusing {
    hang: bool,
}

impl Connector for Refusing {
    fn connect(&self, _: Target) -> ConnectFuture<'_> {
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Err(crate::link::TransportError::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                kind: std::io::ErrorKind::ConnectionRefused,
                tried: 1,
            })
        })
    }
}

/// A producer that renames a new .vv into place the moment spiced says READY:
/// the moment systemd would merge its reload into the start job.
struct RenamesAtReady {
    dir: PathBuf,
}

impl Notifier for RenamesAtReady {
    fn notify(&self, n: Notice) {
        if n == Notice::Ready {
            write_vv(&self.dir, "b.example");
        }
    }
}

/// Writes a .vv for `host` under another name and renames it to console.vv.
fn write_vv(dir: &Path, host: &str) {
    let tmp = dir.join(".console.vv.tmp");
    std::fs::write(
        &tmp,
        format!("[virt-viewer]\ntype=spice\nhost={host}\nport=5900\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("console.vv")).unwrap();
}

/// The real file system, a connector that refuses (or, `hang`, never
/// answers), noting the host of each session, and `notifier`.
fn real_files(
    notifier: Arc<dyn Notifier>,
    hang: bool,
) -> (super::super::Env, Arc<Mutex<Vec<String>>>) {
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let mut env = super::super::Env::real(
        crate::report::LogRing::new(10),
        crate::control::Hub::default(),
    );
    let seen = hosts.clone();
    env.connector = Arc::new(move |settings, _, _| {
        seen.lock().unwrap().push(settings.host.clone());
        Arc::new(Refusing { hang })
    });
    env.notifier = notifier;
    env.write_report = Arc::new(|_, _| Ok("/dev/null".into()));
    env.refresh = Arc::new(|_, _| Box::pin(async { Err("no".to_string()) }));
    (env, hosts)
}

fn opts_in(dir: &Path) -> Options {
    Options {
        vv_path: dir.join("console.vv"),
        watchdog: None,
        spool: dir.join("spool"),
    }
}

/// A .vv written between spiced's read and its READY reaches no SIGHUP under
/// systemd (the reload is merged into the start job): spiced looks at the
/// path once after READY and uses the new file.
#[test]
fn a_vv_replaced_at_ready_is_used_without_a_sighup() {
    in_rt(async {
        let dir = tempfile::tempdir().unwrap();
        write_vv(dir.path(), "a.example");
        let notifier = Arc::new(RenamesAtReady {
            dir: dir.path().to_path_buf(),
        });
        let (env, hosts) = real_files(notifier, false);
        let mut cfg = Config::default();
        cfg.reconnect.initial_delay_secs = 3600.0;
        cfg.reconnect.max_delay_secs = 3600.0;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(super::super::run(
            Arc::new(cfg),
            opts_in(dir.path()),
            env,
            rx,
        ));
        let seen = hosts.clone();
        until_real(Duration::from_secs(5), || {
            seen.lock().unwrap().iter().any(|h| h == "b.example")
        })
        .await;
        tx.send(Signal::Terminate).unwrap();
        assert_eq!(task.await.unwrap(), 0);
        let hosts = hosts.lock().unwrap().clone();
        assert_eq!(hosts.first().map(String::as_str), Some("a.example"));
        assert!(
            hosts.iter().any(|h| h == "b.example"),
            "the new .vv was never used: {hosts:?}"
        );
    })
}

/// Waits (real time, bounded) until `cond` holds; the caller asserts after.
async fn until_real(limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !cond() && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Under systemd a reload while spiced@ is activating is lost, so the path
/// is looked at once, a second after READY; never again while the session
/// runs (no 1 Hz polling of an idle session).
#[tokio::test(start_paused = true)]
async fn the_vv_path_is_looked_at_once_after_ready() {
    let mut h = H::new();
    h.connected();
    h.at(3.0);
    h.settled(10, &[]);
    assert_eq!(h.count("check vv"), 0);
    h.at(3.9);
    assert_eq!(h.count("check vv"), 0);
    h.at(4.0);
    assert_eq!(h.count("check vv"), 1, "{:?}", h.log);
    h.at(3600.0);
    assert_eq!(h.count("check vv"), 1, "once: {:?}", h.log);
    // READY while retrying a server that is down: the same.
    let mut h = H::new();
    h.end(failed(refused()));
    assert_eq!(h.count("Ready"), 1);
    h.at(1.0);
    assert_eq!(h.count("check vv"), 1, "{:?}", h.log);
}

/// The lines logged while `f` runs.
fn logged(f: impl FnOnce()) -> Vec<String> {
    use tracing_subscriber::layer::SubscriberExt;
    let ring = crate::report::LogRing::new(100);
    let sub = tracing_subscriber::registry().with(ring.clone());
    tracing::subscriber::with_default(sub, f);
    ring.snapshot()
}

/// A reload that finds no file after spiced used (and deleted) a single-use
/// .vv is what the path unit's reload for that deletion, or for the file
/// spiced already read, looks like: no warning. Any other missing file is one.
#[tokio::test(start_paused = true)]
async fn a_reload_that_finds_the_used_single_use_vv_gone_is_no_warning() {
    let gone = || {
        Err(LoadError {
            message: "/run/console.vv: cannot read: No such file or directory (os error 2)".into(),
            no_file: true,
        })
    };
    let single = ConnectionSettings {
        delete_this_file: true,
        ..settings()
    };
    let mut h = H::with(Config::default(), single);
    h.connected();
    h.settled(3, &[]);
    let lines = logged(|| {
        h.input(Input::Signal(Signal::Hangup));
        h.input(Input::Loaded {
            origin: Origin::Sighup,
            result: gone(),
        });
    });
    assert!(lines.iter().all(|l| !l.contains("WARN")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the single-use .vv was used")),
        "{lines:#?}"
    );
    assert_eq!(h.core.state().name(), "connected");

    let mut h = H::new();
    h.connected();
    let lines = logged(|| {
        h.input(Input::Signal(Signal::Hangup));
        h.input(Input::Loaded {
            origin: Origin::Sighup,
            result: gone(),
        });
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("cannot use the new .vv")),
        "{lines:#?}"
    );
}

/// Writes a single-use .vv for `host` under another name and renames it to
/// console.vv.
fn write_single_use(dir: &Path, host: &str) {
    let tmp = dir.join(".console.vv.tmp");
    std::fs::write(
        &tmp,
        format!("[virt-viewer]\ntype=spice\nhost={host}\nport=5900\ndelete-this-file=1\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("console.vv")).unwrap();
}

/// A producer renames a new single-use .vv into place while spiced reads
/// (and deletes) the old one: the new file survives and is read next,
/// without a SIGHUP, and before any READY (the first link hangs).
#[test]
fn a_vv_renamed_into_place_during_a_read_is_read_next() {
    in_rt(async {
        let dir = tempfile::tempdir().unwrap();
        write_single_use(dir.path(), "a.example");
        let notices = Arc::new(super::shell::Notices::default());
        let (mut env, _hosts) = real_files(notices.clone(), true);
        let real = env.load_vv.clone();
        let reads = Arc::new(AtomicUsize::new(0));
        let n = reads.clone();
        let producer_dir = dir.path().to_path_buf();
        env.load_vv = Arc::new(move |path, config, delete| {
            let r = real(path, config, delete);
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                write_single_use(&producer_dir, "b.example");
            }
            r
        });
        let mut cfg = Config::default();
        cfg.reconnect.initial_delay_secs = 3600.0;
        cfg.reconnect.max_delay_secs = 3600.0;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(super::super::run(
            Arc::new(cfg),
            opts_in(dir.path()),
            env,
            rx,
        ));
        let n = reads.clone();
        until_real(Duration::from_secs(3), || n.load(Ordering::SeqCst) == 2).await;
        tx.send(Signal::Terminate).unwrap();
        assert_eq!(task.await.unwrap(), 0);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "the new .vv was never read"
        );
        assert!(
            !dir.path().join("console.vv").exists(),
            "both single-use files used and deleted"
        );
        assert!(
            !notices.0.lock().unwrap().contains(&Notice::Ready),
            "found before READY and its look at the path"
        );
    })
}

/// spiced@ started by the path unit with a single-use .vv, then the path
/// unit's reload (for the deletion, or for the file spiced read already):
/// the SIGHUP finds no file, and says so without a warning.
#[test]
fn a_reload_after_spiced_used_the_single_use_vv_is_no_warning() {
    use tracing_subscriber::layer::SubscriberExt;
    let ring = crate::report::LogRing::new(200);
    let sub = tracing_subscriber::registry().with(ring.clone());
    tracing::subscriber::with_default(sub, || {
        in_rt(async {
            let dir = tempfile::tempdir().unwrap();
            write_single_use(dir.path(), "a.example");
            let (env, hosts) = real_files(Arc::new(super::shell::Notices::default()), false);
            let mut cfg = Config::default();
            cfg.reconnect.initial_delay_secs = 3600.0;
            cfg.reconnect.max_delay_secs = 3600.0;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(super::super::run(
                Arc::new(cfg),
                opts_in(dir.path()),
                env,
                rx,
            ));
            let seen = hosts.clone();
            until_real(Duration::from_secs(3), || !seen.lock().unwrap().is_empty()).await;
            assert!(!dir.path().join("console.vv").exists(), "used and deleted");
            tx.send(Signal::Hangup).unwrap();
            until_real(Duration::from_secs(3), || {
                ring.snapshot()
                    .iter()
                    .any(|l| l.contains("SIGHUP: no file at"))
            })
            .await;
            tx.send(Signal::Terminate).unwrap();
            assert_eq!(task.await.unwrap(), 0);
        })
    });
    let lines = ring.snapshot();
    assert!(
        lines.iter().any(|l| l.contains("SIGHUP: no file at")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !(l.contains("WARN") && l.contains(".vv"))),
        "{lines:#?}"
    );
}
