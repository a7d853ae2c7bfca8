//! The fleet's alerting rules (`contrib/prometheus/spiced-alerts.yml`,
//! docs/metrics.md "Alerting") through Prometheus' own `promtool`: the rules
//! load (`promtool check rules`), their unit tests pass (`promtool test rules
//! spiced-alerts.test.yml`: every alert firing and not firing), every alert is
//! tested both ways and names its kiosk, every spiced series they use exists;
//! and the rules hold on what the real spiced writes as Debian's node_exporter
//! serves it (label names, the file label, the instance in the file name).
//! Without promtool (Debian's `prometheus`) or node_exporter: skipped, or a
//! failure when `CI` is set.

mod common;
use common::{free_port, have_program, kill_child, port_accepts, spawn_tied, wait_until};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/prometheus")
        .join(name)
}

const RULES: &str = "spiced-alerts.yml";
const RULE_TESTS: &str = "spiced-alerts.test.yml";

/// Whether `program` is installed; without it: a failure under `CI`, else a
/// skip note.
fn require(program: &str, package: &str) -> bool {
    if have_program(program) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{program} is required (CI is set): apt-get install {package} (scripts/install-deps.sh)"
    );
    eprintln!("skipping: {program} not installed (apt-get install {package})");
    false
}

/// `promtool ARGS` in `dir`: (success, stdout + stderr).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !require("promtool", "prometheus") {
        return;
    }
    let dir = contrib("");
    let (ok, text) = promtool(&dir, &["check", "rules", RULES]);
    assert!(ok, "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let (ok, text) = promtool(&dir, &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// The alerts of the rules file: (name, its block of lines).
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ") {
            out.push((name.trim().to_string(), String::new()));
        } else if t.starts_with("- record: ") || t.starts_with("- name: ") {
            out.push((String::new(), String::new()));
        } else if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

#[test]
fn every_alert_is_tested_firing_and_silent_and_names_its_kiosk() {
    let rules = std::fs::read_to_string(contrib(RULES)).unwrap();
    let tests = std::fs::read_to_string(contrib(RULE_TESTS)).unwrap();
    // For each `alertname: X` of the unit tests: whether its exp_alerts is empty.
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut silent = BTreeSet::new();
    let mut firing = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname: ") {
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => silent.insert(name.to_string()),
                Some(&"exp_alerts:") => firing.insert(name.to_string()),
                other => panic!("alertname: {name} followed by {other:?}"),
            };
        }
    }
    let all = alerts(&rules);
    assert!(all.len() >= 10, "{all:?}");
    for (name, block) in &all {
        assert!(firing.contains(name), "{name}: no unit test sees it fire");
        assert!(
            silent.contains(name),
            "{name}: no unit test sees it stay silent"
        );
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{name}: no severity"
        );
        let summary = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("summary: "))
            .unwrap_or_else(|| panic!("{name}: no summary"));
        assert!(
            summary.starts_with("\"{{ $labels.instance }}"),
            "{name}: the summary must start with the kiosk: {summary}"
        );
    }
    let names: BTreeSet<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), all.len(), "alert names are unique: {all:?}");
    for name in firing.union(&silent) {
        assert!(
            names.contains(name.as_str()),
            "tests name an unknown alert {name}"
        );
    }
}

/// The `spiced_*` series names a text uses (`spiced_instance` is the label).
fn series_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(at) = text[i..].find("spiced_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        let before_ok = start == 0 || !(word(bytes[start - 1]) || bytes[start - 1] == b':');
        let name = &text[start..end];
        if before_ok && name != "spiced_instance" {
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn the_rules_use_only_series_spiced_exports() {
    let rules = std::fs::read_to_string(contrib(RULES)).unwrap();
    // The metrics module: src/metrics.rs and whatever lives in src/metrics/.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut metrics = std::fs::read_to_string(src.join("metrics.rs")).unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir(src.join("metrics")) {
        for f in dir.flatten() {
            metrics.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
    }
    let used = series_names(&rules);
    for must in [
        "spiced_session_up",
        "spiced_state",
        "spiced_reconnects_total",
        "spiced_ticket_valid_until_timestamp_seconds",
        "spiced_reports_written_total",
        "spiced_build_info",
    ] {
        assert!(used.contains(must), "{must} not found in {used:?}");
    }
    for name in &used {
        assert!(
            metrics.contains(&format!("\"{name}\"")),
            "the rules use {name}, which src/metrics does not export"
        );
    }
}

/// Debian's node_exporter with only its textfile collector, on a free port.
struct Exporter {
    child: std::process::Child,
    port: u16,
}

impl Exporter {
    fn start(dir: &Path) -> Exporter {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new("prometheus-node-exporter");
            cmd.arg("--collector.disable-defaults")
                .arg("--collector.textfile")
                .arg(format!("--collector.textfile.directory={}", dir.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = spawn_tied(cmd).expect("start node_exporter");
            if wait_until(Duration::from_secs(10), || port_accepts(port)) {
                return Exporter { child, port };
            }
            kill_child(&mut child);
        }
        panic!("node_exporter did not listen");
    }

    /// GET /metrics: the sample lines of spiced's series and the textfile
    /// collector's own.
    fn scrape(&self) -> Vec<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1."), "{body}");
        body.lines()
            .filter(|l| l.starts_with("spiced_") || l.starts_with("node_textfile_"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

const INSTANCE: &str = "e2e-kiosk";
const TARGET: &str = "kiosk-e2e:9100";

/// A promtool unit test whose input is one scrape held for 30 minutes, as if
/// spiced had written its file once at time 0 and then stopped changing
/// (node_textfile_mtime_seconds 0): at `at`, exactly `expect` fire (each
/// alert name with its labels beyond alertname/alertstate/severity/job/instance).
fn scrape_test(
    rules: &Path,
    scrape: &[String],
    at: &str,
    expect: &[(&str, &[(&str, &str)])],
) -> String {
    let target = format!("instance=\"{TARGET}\",job=\"kiosks\"");
    let mut y = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'up{{{target}}}'\n        values: '1x30'\n",
        rules.display()
    );
    for line in scrape {
        let (head, value) = line.rsplit_once(' ').expect("a sample line");
        let series = match head.split_once('{') {
            Some((name, rest)) => format!("{name}{{{target},{rest}"),
            None => format!("{head}{{{target}}}"),
        };
        let value = if head.starts_with("node_textfile_mtime_seconds") {
            "0"
        } else {
            value
        };
        assert!(!series.contains('\''), "{series}");
        y.push_str(&format!(
            "      - series: '{series}'\n        values: '{value}x30'\n"
        ));
    }
    y.push_str(&format!(
        "    promql_expr_test:\n      - expr: ALERTS{{alertstate=\"firing\"}}\n        eval_time: {at}\n        exp_samples:\n"
    ));
    for (alert, labels) in expect {
        let severity = if [
            "SpicedSessionDown",
            "SpicedGaveUp",
            "SpicedKioskUnreachable",
        ]
        .contains(alert)
        {
            "critical"
        } else {
            "warning"
        };
        let mut l = format!(
            "__name__=\"ALERTS\",alertname=\"{alert}\",alertstate=\"firing\",severity=\"{severity}\",{target}"
        );
        for (k, v) in *labels {
            l.push_str(&format!(",{k}=\"{v}\""));
        }
        y.push_str(&format!(
            "          - labels: '{{{l}}}'\n            value: 1\n"
        ));
    }
    if expect.is_empty() {
        y.push_str("          []\n");
    }
    y
}

fn run_scrape_test(dir: &Path, name: &str, yaml: &str) {
    std::fs::write(dir.join(name), yaml).unwrap();
    let (ok, text) = promtool(dir, &["test", "rules", name]);
    assert!(
        ok,
        "promtool test rules {name}:\n{text}\n--- {name} ---\n{yaml}"
    );
}

#[test]
fn the_rules_hold_on_what_spiced_writes_as_node_exporter_serves_it() {
    if !require("promtool", "prometheus")
        || !require("prometheus-node-exporter", "prometheus-node-exporter")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let textfiles = dir.path().join("textfile");
    std::fs::create_dir(&textfiles).unwrap();
    let prom = textfiles.join(format!("spiced-{INSTANCE}.prom"));
    // A server that is not there: spiced stays in its first back-off.
    let vv = common::write_vv(
        dir.path(),
        &[("host", "127.0.0.1"), ("port", &free_port().to_string())],
    );
    let toml = format!(
        "[metrics]\ntextfile = {prom:?}\n\
         [reconnect]\nmax_attempts = 100\ninitial_delay_secs = 600.0\nmax_delay_secs = 600.0\n\
         [report]\nenabled = false\n"
    );
    let mut s = common::Spiced::start_env(&vv, &toml, &[], &[("SPICED_INSTANCE", INSTANCE)]);
    let exporter = Exporter::start(&textfiles);
    let mut scrape = Vec::new();
    let seen = wait_until(Duration::from_secs(20), || {
        scrape = exporter.scrape();
        scrape.iter().any(|l| l.starts_with("spiced_state{"))
            && scrape
                .iter()
                .any(|l| l.starts_with("node_textfile_mtime_seconds"))
    });
    assert!(
        seen,
        "node_exporter never served spiced's file: {scrape:?}\n{}",
        s.log()
    );
    assert!(
        scrape.iter().any(|l| l == "node_textfile_scrape_error 0"),
        "{scrape:?}"
    );
    let file = prom.display().to_string();
    let rules = contrib(RULES);

    // Running without a session (connecting or in back-off), then silent:
    // down after 5 minutes, its file stale after 5 more than its last write.
    assert!(
        !scrape
            .iter()
            .any(|l| l.contains("state=\"gave_up\"} 1") || l.contains("state=\"stopped\"} 1")),
        "{scrape:?}"
    );
    let me: &[(&str, &str)] = &[("spiced_instance", INSTANCE)];
    let stale: &[(&str, &str)] = &[("file", &file), ("spiced_instance", INSTANCE)];
    run_scrape_test(
        dir.path(),
        "running-4m.test.yml",
        &scrape_test(&rules, &scrape, "4m", &[]),
    );
    run_scrape_test(
        dir.path(),
        "running-6m.test.yml",
        &scrape_test(
            &rules,
            &scrape,
            "6m",
            &[("SpicedMetricsStale", stale), ("SpicedSessionDown", me)],
        ),
    );

    // Stopped cleanly: its last write says so; neither "down" nor "stale",
    // but "stopped" after 15 minutes.
    assert_eq!(s.stop(), Some(0), "{}", s.log());
    let stopped = wait_until(Duration::from_secs(20), || {
        scrape = exporter.scrape();
        scrape.iter().any(|l| l.contains("state=\"stopped\"} 1"))
    });
    assert!(stopped, "the file never said stopped: {scrape:?}");
    let stopped_state: &[(&str, &str)] = &[("spiced_instance", INSTANCE), ("state", "stopped")];
    run_scrape_test(
        dir.path(),
        "stopped-16m.test.yml",
        &scrape_test(&rules, &scrape, "16m", &[("SpicedStopped", stopped_state)]),
    );
}
