//! The systemd units in systemd/, read as files and run as command lines on the
//! built binary: the template's ExecStart works with and without the optional
//! per-instance config, the path unit watches the file the service reads and
//! hands it to the reload unit (no start limit, failures forgotten on a new
//! file, the old place moved in), each service may write only its own
//! directory under /run, the restart rules match spiced's exit codes, and the
//! man page the .deb ships comes from the same command line definitions.
//! (systemd-analyze verify/security run in scripts/check-units.sh, and the
//! units live under a real systemd in scripts/kiosk-vm.sh: CI.)

mod common;

use common::{spawn_tied, wait_until};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn unit(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every value of `key=` in a unit, in order (comments and other keys skipped).
fn values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// The one value of `key=`.
fn value(text: &str, key: &str) -> String {
    let v = values(text, key);
    assert_eq!(v.len(), 1, "{key}= should appear once, got {v:?}");
    v[0].clone()
}

/// ExecStart's argv with `%i` = `instance` and the absolute paths it names moved
/// under `root`, so the unit's own command line runs on a test machine.
fn exec_start(text: &str, instance: &str, root: &Path) -> (String, Vec<String>) {
    let line = value(text, "ExecStart").replace("%i", instance);
    let mut words = line.split_whitespace();
    let bin = words.next().unwrap_or_default().to_string();
    let args = words
        .map(|w| match w.strip_prefix('/') {
            Some(abs) => root.join(abs).display().to_string(),
            None => w.to_string(),
        })
        .collect();
    (bin, args)
}

/// The value after `flag` in ExecStart (the path as the unit has it).
fn exec_arg(text: &str, flag: &str) -> String {
    let line = value(text, "ExecStart");
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == flag)
        .unwrap_or_else(|| panic!("no {flag} in {line}"));
    words[i + 1].to_string()
}

#[test]
fn service_units_restart_only_when_it_can_help() {
    for name in ["spiced.service", "spiced@.service"] {
        let u = unit(name);
        assert_eq!(value(&u, "Type"), "notify", "{name}");
        assert_eq!(value(&u, "Restart"), "on-failure", "{name}");
        assert_eq!(
            value(&u, "RestartPreventExitStatus"),
            format!("{} {}", spiced::exit::TICKET, spiced::exit::CONFIG),
            "{name}"
        );
        assert_eq!(
            values(&u, "ExecReload").last().map(String::as_str),
            Some("/bin/kill -HUP $MAINPID"),
            "{name}"
        );
        assert!(!values(&u, "WatchdogSec").is_empty(), "{name}");
        assert!(
            value(&u, "ExecStart").starts_with("/usr/bin/spiced "),
            "{name}: the .deb installs /usr/bin/spiced"
        );
    }
}

#[test]
fn the_template_is_one_session_per_instance() {
    let u = unit("spiced@.service");
    assert_eq!(exec_arg(&u, "--vv"), "/run/spiced/%i/console.vv");
    assert_eq!(exec_arg(&u, "--config-if-exists"), "/etc/spiced/%i.toml");
    assert!(values(&u, "Environment").contains(&"SPICED_INSTANCE=%i".to_string()));
    assert_eq!(value(&u, "StateDirectory"), "spiced/%i");
    let tmpfiles = unit("spiced.tmpfiles");
    for dir in ["/run/spiced", "/run/spiced/default"] {
        assert!(
            tmpfiles
                .lines()
                .any(|l| l.starts_with(&format!("d {dir} 0700 root root"))),
            "{tmpfiles}"
        );
    }
    // The single-session unit is the instance "default": what `spiced status`
    // without a name asks.
    let single = unit("spiced.service");
    assert_eq!(exec_arg(&single, "--vv"), "/run/spiced/default/console.vv");
}

/// The one directory under /run a service unit may write: `-/run/spiced/X`
/// bound into a read-only tmpfs on /run/spiced (so no other instance's files
/// are even visible), nothing else under /run.
fn own_run_dir(name: &str) -> String {
    let u = unit(name);
    assert_eq!(value(&u, "TemporaryFileSystem"), "/run/spiced:ro", "{name}");
    assert_eq!(value(&u, "ProtectSystem"), "strict", "{name}");
    // systemd 252 left /run writable under ProtectSystem=strict once
    // ProtectKernelTunables= and the other kernel protections were set too
    // (the kiosk VM found it).
    assert!(
        values(&u, "ReadOnlyPaths").contains(&"/run".to_string()),
        "{name}"
    );
    let bind = value(&u, "BindPaths");
    let dir = bind
        .strip_prefix("-/run/spiced/")
        .unwrap_or_else(|| panic!("{name}: BindPaths={bind}"));
    assert!(!dir.is_empty() && !dir.contains('/'), "{name}: {bind}");
    for key in ["ReadWritePaths", "BindPaths", "RuntimeDirectory"] {
        for v in values(&u, key) {
            let p = v.trim_start_matches(['-', '+']);
            assert!(
                !p.starts_with("/run") || v == bind,
                "{name}: {key}={v} makes more of /run writable than its own directory"
            );
        }
    }
    dir.to_string()
}

#[test]
fn each_service_writes_only_its_own_directory_under_run() {
    // Deleting (renaming aside) a single-use .vv needs its directory writable;
    // the control socket is bound there too.
    let dir = own_run_dir("spiced@.service");
    assert_eq!(dir, "%i");
    let vv = exec_arg(&unit("spiced@.service"), "--vv");
    assert_eq!(Path::new(&vv).parent(), Some(Path::new("/run/spiced/%i")));
    assert_eq!(own_run_dir("spiced.service"), "default");
    // The reload unit writes /run/spiced (the move from the old place) only.
    let reload = unit("spiced-reload@.service");
    assert_eq!(value(&reload, "ReadOnlyPaths"), "/run");
    assert_eq!(value(&reload, "ReadWritePaths"), "/run/spiced");
    // `spiced status NAME` looks where spiced@NAME may bind its socket.
    let sock = spiced::control::socket_for(None, Some("kiosk1")).expect("socket path");
    assert_eq!(sock.parent(), Some(Path::new("/run/spiced/kiosk1")));
    let sock = spiced::control::socket_for(None, Some("default")).expect("socket path");
    assert_eq!(sock.parent(), Some(Path::new("/run/spiced/default")));
}

#[test]
fn the_path_unit_hands_the_file_the_service_reads_to_the_reload_unit() {
    let service = unit("spiced@.service");
    let path = unit("spiced@.path");
    let reload = unit("spiced-reload@.service");
    let vv = exec_arg(&service, "--vv");
    // PathExists= would retrigger while a rejected file stays (restart loop).
    // The second path is the old place, moved in by the reload unit.
    assert_eq!(values(&path, "PathChanged"), [vv.as_str(), LEGACY_VV]);
    assert!(values(&path, "PathExists").is_empty());
    assert_eq!(value(&path, "Unit"), "spiced-reload@%i.service");
    assert_eq!(
        values(&reload, "ConditionPathExists"),
        [format!("|{vv}"), format!("|{LEGACY_VV}")]
    );
    let exec = values(&reload, "ExecStart");
    assert_eq!(exec.len(), 3, "{exec:?}");
    assert!(exec[0].starts_with("/bin/sh -c "), "{exec:?}");
    assert_eq!(
        exec[2],
        "/usr/bin/systemctl --no-block reload-or-restart spiced@%i.service"
    );
}

/// Where spiced@NAME's .vv was before each instance had its own directory.
const LEGACY_VV: &str = "/run/spiced/%i.vv";

#[test]
fn no_new_file_is_refused_by_a_start_limit() {
    // systemd's default start limit on the reload unit (5 in 10 s) failed the
    // sixth file within 10 s, and the path unit with it, for good.
    let reload = unit("spiced-reload@.service");
    assert_eq!(value(&reload, "StartLimitIntervalSec"), "0");
    // A path unit past its trigger limit stops watching for good too.
    let path = unit("spiced@.path");
    assert_eq!(value(&path, "TriggerLimitIntervalSec"), "0");
    // The instance's own start limit bounds systemd's restarts...
    let service = unit("spiced@.service");
    assert_eq!(value(&service, "StartLimitBurst"), "10");
    // ...but a new file forgets earlier failures before it starts the instance:
    // ten bad files (exit 78) must not make an eleventh, good one "repeated too
    // quickly".
    let exec = values(&reload, "ExecStart");
    let reset = exec
        .iter()
        .position(|l| l == "-/usr/bin/systemctl reset-failed spiced@%i.service")
        .unwrap_or_else(|| panic!("no reset-failed in {exec:?}"));
    let start = exec
        .iter()
        .position(|l| l.contains("reload-or-restart spiced@%i.service"))
        .unwrap_or_else(|| panic!("no reload-or-restart in {exec:?}"));
    assert!(reset < start, "{exec:?}");
}

/// Runs a unit's `[+-]/bin/sh -c '...'` line with %i = `instance` and every
/// /run path moved under `root`.
fn run_shell_line(line: &str, instance: &str, root: &Path) -> std::process::Output {
    let line = line.trim_start_matches(['+', '-']).replace("%i", instance);
    let script = line
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not a /bin/sh -c '...' line: {line}"));
    let script = script.replace("/run/", &format!("{}/run/", root.display()));
    Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("run sh")
}

#[test]
fn a_file_at_the_old_place_is_moved_into_the_instance_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let run = root.path().join("run/spiced");
    std::fs::create_dir_all(&run).expect("mkdir");
    let line = &values(&unit("spiced-reload@.service"), "ExecStart")[0];
    // Nothing at the old place: nothing happens.
    let out = run_shell_line(line, "kiosk1", root.path());
    assert!(out.status.success(), "{out:?}");
    assert!(!run.join("kiosk1").exists());
    // A file there: moved to kiosk1/console.vv, the directory made 0700.
    std::fs::write(run.join("kiosk1.vv"), "[virt-viewer]\n").expect("write");
    let out = run_shell_line(line, "kiosk1", root.path());
    assert!(out.status.success(), "{out:?}");
    assert!(!run.join("kiosk1.vv").exists());
    assert_eq!(
        std::fs::read_to_string(run.join("kiosk1/console.vv")).expect("moved"),
        "[virt-viewer]\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(run.join("kiosk1"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // ...replacing what was there (the newer file wins).
    std::fs::write(run.join("kiosk1.vv"), "newer").expect("write");
    let out = run_shell_line(line, "kiosk1", root.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(run.join("kiosk1/console.vv")).expect("moved"),
        "newer"
    );
}

#[test]
fn the_single_session_unit_still_takes_run_console_vv() {
    let u = unit("spiced.service");
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("run")).expect("mkdir");
    // Before start and before the SIGHUP of a reload, outside the sandbox ("+").
    let pre = value(&u, "ExecStartPre");
    let reload = &values(&u, "ExecReload")[0];
    assert!(
        pre.starts_with('+') && reload.starts_with('+'),
        "{pre} {reload}"
    );
    assert_eq!(&pre, reload);
    let out = run_shell_line(&pre, "", root.path());
    assert!(out.status.success(), "{out:?}");
    std::fs::write(root.path().join("run/console.vv"), "old place").expect("write");
    let out = run_shell_line(&pre, "", root.path());
    assert!(out.status.success(), "{out:?}");
    assert!(!root.path().join("run/console.vv").exists());
    assert_eq!(
        std::fs::read_to_string(root.path().join("run/spiced/default/console.vv")).expect("moved"),
        "old place"
    );
}

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    /// A fake / with /run/spiced/kiosk1/console.vv pointing at `port`.
    fn new(port: u16) -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["run/spiced/kiosk1", "etc/spiced", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        std::fs::write(
            dir.path().join("run/spiced/kiosk1/console.vv"),
            format!("[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport={port}\n"),
        )
        .expect("write .vv");
        Root { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The template's command line for kiosk1, as systemd would run it.
    fn command(&self, extra: &[&str]) -> Command {
        let (bin, args) = exec_start(&unit("spiced@.service"), "kiosk1", self.dir.path());
        assert_eq!(bin, "/usr/bin/spiced");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spiced"));
        cmd.args(args)
            .args(extra)
            .env("STATE_DIRECTORY", self.path("state"))
            .env("SPICED_INSTANCE", "kiosk1")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    fn check(&self) -> std::process::Output {
        self.command(&["--check"])
            .output()
            .expect("run spiced --check")
    }
}

#[test]
fn the_template_command_line_checks_with_and_without_the_instance_config() {
    let root = Root::new(5900);
    let out = root.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("kiosk1.toml: every option has its default"),
        "{stderr}"
    );

    let toml = root.path("etc/spiced/kiosk1.toml");
    std::fs::write(&toml, "[reconnect]\nwait_for_ticket_secs = 600.0\n").expect("write");
    let out = root.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("every option has its default"), "{stderr}");

    std::fs::write(&toml, "[reconnect]\nwait_for_ticket = 600.0\n").expect("write");
    let out = root.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("kiosk1.toml"), "{stderr}");
}

#[test]
fn the_template_command_line_runs_the_daemon_without_the_instance_config() {
    // Accepts the connection and never answers: spiced stays in its first link.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let root = Root::new(port);
    let log = root.path("spiced.log");
    let mut cmd = root.command(&[]);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = spawn_tied(cmd).expect("start spiced");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let seen = wait_until(Duration::from_secs(10), || {
        let s = read();
        s.contains("kiosk1.toml: every option has its default")
            && s.contains("connecting to 127.0.0.1")
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(seen, "{}", read());
    assert_eq!(status.code(), Some(0), "{}", read());
}

#[test]
fn the_template_command_line_refuses_an_invalid_instance_config() {
    let root = Root::new(5900);
    std::fs::write(
        root.path("etc/spiced/kiosk1.toml"),
        "[report]\nmax_files = 0\n",
    )
    .expect("write");
    let out = root
        .command(&[])
        .stdout(Stdio::null())
        .output()
        .expect("run spiced");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("kiosk1.toml"), "{stderr}");
    assert!(stderr.starts_with("spiced: "), "{stderr}");
}

#[test]
fn an_invalid_instance_config_is_an_error_line_in_the_journal() {
    // Under systemd stderr is a journal stream (JOURNAL_STREAM names it) and
    // the config is read before logging is set up: the line must carry its
    // priority itself, or journald files it as info and `-p err` misses it.
    use std::os::unix::fs::MetadataExt;
    let root = Root::new(5900);
    std::fs::write(root.path("etc/spiced/kiosk1.toml"), "[bogus]\nx = 1\n").expect("write");
    let err_path = root.path("stderr");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let m = err.metadata().expect("stat");
    let status = root
        .command(&[])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .expect("run spiced");
    let stderr = std::fs::read_to_string(&err_path).expect("read");
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.starts_with("<3>"), "{stderr}");
    assert!(stderr.contains("kiosk1.toml"), "{stderr}");
}

#[test]
fn the_man_page_comes_from_the_command_line_definitions() {
    let out = Command::new(env!("CARGO_BIN_EXE_spiced"))
        .arg("manpage")
        .output()
        .expect("run spiced manpage");
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).expect("utf-8");
    assert!(page.contains(".TH spiced 1"), "{page}");
    // roff escapes the dashes of option names.
    for want in [r"\-\-vv", r"\-\-config\-if\-exists", r"\-\-check", "report"] {
        assert!(page.contains(want), "{want} missing from:\n{page}");
    }
    assert!(
        !page.contains("manpage"),
        "the hidden command leaked:\n{page}"
    );
}

#[test]
fn the_man_page_lists_only_the_pages_that_are_shipped() {
    let out = Command::new(env!("CARGO_BIN_EXE_spiced"))
        .arg("manpage")
        .output()
        .expect("run spiced manpage");
    let page = String::from_utf8(out.stdout).expect("utf-8");
    // The help subcommand has no page of its own: it is not listed.
    assert!(page.contains(r"spiced\-report(1)"), "{page}");
    assert!(!page.contains(r"spiced\-help"), "{page}");
}

#[test]
fn every_page_spiced_1_refers_to_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Command::new(env!("CARGO_BIN_EXE_spiced"))
        .args(["manpage", "--out-dir"])
        .arg(dir.path())
        .status()
        .expect("run spiced manpage --out-dir");
    assert_eq!(st.code(), Some(0));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // One page per visible subcommand (more come with more subcommands).
    assert!(names.contains(&"spiced.1".to_string()), "{names:?}");
    assert!(names.contains(&"spiced-report.1".to_string()), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("manpage") || n.contains("help")),
        "{names:?}"
    );
    let report = std::fs::read_to_string(dir.path().join("spiced-report.1")).expect("read");
    assert!(report.contains(r"\-\-json"), "{report}");
}
