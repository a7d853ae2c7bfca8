//! Test code only: the parent declares this module under #[cfg(test)].
//! The daemon's decisions, driven through `DaemonCore` with hand-made inputs and
//! injected time: no sockets, no files, no sleeps.

use super::core::*;
use crate::channel::counters::ChannelCounters;
use crate::config::Config;
use crate::failure::{Cause, Failure};
use crate::reconnect::{Now, State};
use crate::session::{SessionEnd, SessionEvent, SessionInfo, Stop};
use crate::systemd::Notice;
use crate::vv::ConnectionSettings;
use crate::wire::{ChannelId, ChannelType};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod stale;
mod vv_path;

const UNIX0: f64 = 1_800_000_000.0;

struct H {
    core: DaemonCore,
    t0: Instant,
    t: Duration,
    /// Every effect seen, in order, as text (sessions by generation).
    log: Vec<String>,
    generation: u64,
    /// The file name of every report job queued.
    reports: Vec<String>,
    /// When each readiness check was asked for (seconds); kept out of `log`.
    probes: Vec<f64>,
    /// The host of every session started, in order.
    hosts: Vec<String>,
    /// The migration plan of the last PrepareMigration or Prelink.
    plan: u64,
    /// The last refresh command run asked for.
    run: u64,
}

fn settings() -> ConnectionSettings {
    ConnectionSettings {
        host: "vm.example".into(),
        port: Some(5900),
        ..Default::default()
    }
}

fn loaded(s: ConnectionSettings) -> Loaded {
    Loaded {
        settings: s,
        warnings: vec![],
        tls: None,
    }
}

impl H {
    fn with(config: Config, s: ConnectionSettings) -> H {
        let t0 = Instant::now();
        let opts = Options {
            vv_path: "/run/console.vv".into(),
            watchdog: Some(Duration::from_secs(10)),
            spool: "/var/spool/spiced".into(),
        };
        let now = Now::new(t0, UNIX0);
        let core = DaemonCore::new(Arc::new(config), loaded(s), opts, now);
        let mut h = H {
            core,
            t0,
            t: Duration::ZERO,
            log: vec![],
            generation: 0,
            reports: vec![],
            probes: vec![],
            hosts: vec![],
            plan: 0,
            run: 0,
        };
        h.core.start(now);
        h.drain();
        h
    }

    fn new() -> H {
        H::with(Config::default(), settings())
    }

    fn now(&self) -> Now {
        Now::new(self.t0 + self.t, UNIX0 + self.t.as_secs_f64())
    }

    /// Runs every timer due up to `t` (seconds since start), in order.
    fn at(&mut self, t: f64) {
        let until = Duration::from_secs_f64(t);
        while let Some(d) = self.core.poll_timeout() {
            let d = d.saturating_duration_since(self.t0);
            if d > until {
                break;
            }
            self.t = self.t.max(d);
            self.core.handle_timeout(self.now());
            self.drain();
        }
        self.t = until;
    }

    fn input(&mut self, i: Input) {
        self.core.handle(i, self.now());
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.core.poll_effect() {
            let line = match e {
                Effect::StartSession {
                    generation,
                    adopt,
                    settings,
                    ..
                } => {
                    self.generation = generation;
                    self.hosts.push(settings.host.clone());
                    if adopt.is_some() {
                        format!("start {generation} adopting")
                    } else {
                        format!("start {generation}")
                    }
                }
                Effect::Prelink {
                    plan,
                    generation,
                    settings,
                    session_id,
                    channels,
                    ..
                } => {
                    self.plan = plan;
                    format!(
                        "prelink {generation} {} id {session_id} +{}",
                        settings.host,
                        channels.len()
                    )
                }
                Effect::MigrateReply { generation, linked } => {
                    format!("reply {generation} {linked}")
                }
                Effect::DropPrelinked { .. } => "drop prelinks".into(),
                Effect::CheckVv => "check vv".into(),
                Effect::StopSession { generation, how } => format!("stop {generation} {how:?}"),
                Effect::ReadVv { origin } => format!("read {origin:?}"),
                Effect::RunRefresh { run, .. } => {
                    self.run = run;
                    "refresh".into()
                }
                Effect::PrepareMigration { plan, settings } => {
                    self.plan = plan;
                    format!("migrate {}", settings.host)
                }
                Effect::WriteReport(j) => {
                    self.reports.push(j.file_name.clone());
                    format!("report {} {}", j.cause.channel, j.cause.cause)
                }
                Effect::Notify(Notice::Status(s)) => format!("status {s}"),
                Effect::Notify(n) => format!("{n:?}"),
                Effect::Exit(c) => format!("exit {c}"),
                Effect::Probe { .. } => {
                    self.probes.push(self.t.as_secs_f64());
                    continue;
                }
            };
            self.log.push(line);
        }
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    fn event(&mut self, event: SessionEvent) {
        let generation = self.generation;
        self.input(Input::Session { generation, event });
    }

    fn connected(&mut self) {
        self.event(SessionEvent::Connected { session_id: 1 });
    }

    fn settled(&mut self, up: usize, down: &[ChannelId]) {
        let up = (0..up)
            .map(|i| ChannelId::new(ChannelType::Usbredir, i as u8))
            .collect();
        self.event(SessionEvent::Settled {
            up,
            down: down.to_vec(),
        });
    }

    fn end(&mut self, end: SessionEnd) {
        let generation = self.generation;
        self.input(Input::SessionEnded {
            generation,
            end: Box::new(end),
        });
    }

    fn count(&self, prefix: &str) -> usize {
        self.log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn lost(f: Failure, uptime: f64) -> SessionEnd {
    SessionEnd {
        server_closed_session: f.channel == ChannelId::MAIN && f.cause == Cause::ServerClosed,
        server_gone: false,
        failure: Some(f),
        counters: BTreeMap::new(),
        uptime: Duration::from_secs_f64(uptime),
        connected: true,
        all_linked: true,
        info: SessionInfo::default(),
    }
}

fn failed(f: Failure) -> SessionEnd {
    SessionEnd {
        connected: false,
        ..lost(f, 0.1)
    }
}

fn eof(ch: ChannelId) -> Failure {
    Failure::io(ch, &std::io::ErrorKind::UnexpectedEof.into(), false)
}

fn refused() -> Failure {
    Failure::transport(
        ChannelId::MAIN,
        &crate::link::TransportError::Connect {
            addr: "127.0.0.1:5900".parse().unwrap(),
            kind: std::io::ErrorKind::ConnectionRefused,
            tried: 1,
        },
    )
}

#[tokio::test(start_paused = true)]
async fn ready_comes_once_the_session_is_settled() {
    let mut h = H::new();
    assert_eq!(h.take(), ["status connecting to vm.example", "start 1"]);
    h.connected();
    assert_eq!(h.count("Ready"), 0, "not before the channels are linked");
    h.settled(10, &[]);
    assert_eq!(
        h.take(),
        [
            "status connected to vm.example: linking channels",
            "status connected: 10 channels linked to vm.example",
            "Ready"
        ]
    );
    h.settled(10, &[]);
    assert_eq!(h.count("Ready"), 0, "once");
}

#[tokio::test(start_paused = true)]
async fn ready_by_connect_timeout_when_a_channel_never_links() {
    let mut h = H::new();
    h.at(2.0);
    h.connected();
    h.take();
    h.at(16.9);
    assert_eq!(h.count("Ready"), 0);
    h.at(17.1);
    assert_eq!(h.count("Ready"), 1, "{:?}", h.log);
}

#[tokio::test(start_paused = true)]
async fn ready_while_retrying_a_server_that_is_down() {
    let mut h = H::new();
    h.end(failed(refused()));
    let log = h.take();
    assert!(log.contains(&"Ready".to_string()), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("status pending: attempt 1 after 1s")),
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn watchdog_follows_the_loop_and_never_bursts() {
    let mut h = H::new();
    h.take();
    h.at(35.0);
    assert_eq!(h.count("Watchdog"), 3, "at 10, 20, 30 s");
    h.take();
    // A stalled loop (nothing polled for a minute) feeds nothing, then one.
    h.t = Duration::from_secs(100);
    h.core.handle_timeout(h.now());
    h.drain();
    assert_eq!(h.take(), ["Watchdog"]);
    assert_eq!(h.core.poll_timeout(), Some(h.t0 + Duration::from_secs(110)));
}

#[tokio::test(start_paused = true)]
async fn degraded_channels_show_in_status_and_get_a_report() {
    let mut h = H::new();
    h.connected();
    h.settled(9, &[]);
    h.take();
    let port = ChannelId::new(ChannelType::Port, 0);
    h.event(SessionEvent::ChannelLost {
        channel: port,
        failure: Box::new(eof(port)),
        counters: Box::new(ChannelCounters::default()),
        relink_in: None,
        info: Box::new(SessionInfo::default()),
    });
    h.event(SessionEvent::ChannelDown {
        channel: port,
        reason: "the single-use ticket was already used".into(),
    });
    let log = h.take();
    assert_eq!(log[0], "report port server_closed");
    assert!(
        log.last()
            .unwrap()
            .contains("degraded: port (the single-use ticket was already used) down"),
        "{log:?}"
    );
    assert_eq!(h.core.state().name(), "connected");
}

#[tokio::test(start_paused = true)]
async fn exit_codes_of_every_give_up() {
    let single = ConnectionSettings {
        delete_this_file: true,
        ..settings()
    };
    type Script = Box<dyn Fn(&mut H)>;
    let cases: Vec<(ConnectionSettings, Script, u8)> = vec![
        // Single-use ticket: the session ends, no retry.
        (
            single,
            Box::new(|h| {
                h.connected();
                h.end(lost(eof(ChannelId::MAIN), 30.0));
            }),
            77,
        ),
        // Three failed attempts.
        (
            settings(),
            Box::new(|h| {
                h.end(failed(refused()));
                for t in [1.0, 5.0, 21.0] {
                    h.at(t);
                    h.end(failed(refused()));
                }
            }),
            69,
        ),
        // The server refuses the ticket.
        (
            settings(),
            Box::new(|h| {
                let f = Failure::link(
                    ChannelId::MAIN,
                    crate::link::handshake::LinkError::Refused(
                        crate::wire::link::LinkErrorCode::PermissionDenied,
                    ),
                );
                h.end(failed(f));
            }),
            77,
        ),
        // spiceproxy refuses the ticket in the CONNECT target.
        (
            settings(),
            Box::new(|h| {
                h.end(failed(Failure::transport(ChannelId::MAIN, &proxy(401))));
            }),
            77,
        ),
        // The proxy wants credentials: a configuration problem.
        (
            settings(),
            Box::new(|h| {
                h.end(failed(Failure::transport(ChannelId::MAIN, &proxy(407))));
            }),
            78,
        ),
        // The certificate does not verify.
        (
            settings(),
            Box::new(|h| {
                let e = crate::link::TransportError::CertVerify("unknown issuer".into());
                h.end(failed(Failure::transport(ChannelId::MAIN, &e)));
            }),
            78,
        ),
        // A bad link reply: a bug on one side.
        (
            settings(),
            Box::new(|h| {
                let e = crate::link::handshake::LinkError::Wire(crate::wire::WireError::BadMagic(
                    *b"HTTP",
                ));
                h.end(failed(Failure::link(ChannelId::MAIN, e)));
            }),
            1,
        ),
        // SIGTERM, whatever the state.
        (
            settings(),
            Box::new(|h| h.input(Input::Signal(Signal::Terminate))),
            0,
        ),
    ];
    for (i, (s, script, code)) in cases.into_iter().enumerate() {
        let mut h = H::with(Config::default(), s);
        script(&mut h);
        let log = h.take();
        assert_eq!(
            log.last().map(String::as_str),
            Some(format!("exit {code}").as_str()),
            "case {i}: {log:?}"
        );
        assert!(log.contains(&"Stopping".to_string()), "case {i}: {log:?}");
        assert!(h.core.is_exited());
        // Nothing after the exit.
        h.input(Input::Signal(Signal::Hangup));
        assert!(h.take().is_empty());
    }
}

fn proxy(status: u16) -> crate::link::TransportError {
    crate::link::TransportError::ProxyStatus {
        proxy: "proxy:3128".into(),
        target: "pvespiceproxy:...:61000".into(),
        status,
        status_line: format!("HTTP/1.1 {status} x"),
    }
}

#[tokio::test(start_paused = true)]
async fn sigterm_stops_the_session_politely_in_every_state() {
    // Connected.
    let mut h = H::new();
    h.connected();
    h.take();
    h.input(Input::Signal(Signal::Terminate));
    assert_eq!(
        h.take(),
        ["status stopped", "stop 1 Polite", "Stopping", "exit 0"]
    );
    // Waiting out a back-off: no session to stop.
    let mut h = H::new();
    h.end(failed(refused()));
    h.take();
    h.input(Input::Signal(Signal::Terminate));
    assert_eq!(h.take().last().map(String::as_str), Some("exit 0"));
}

#[tokio::test(start_paused = true)]
async fn a_sighup_storm_reads_once_and_reconnects_once() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.take();
    for _ in 0..100 {
        h.input(Input::Signal(Signal::Hangup));
    }
    assert_eq!(h.count("read"), 1, "one read in flight at a time");
    let fresh = ConnectionSettings {
        password: Some(crate::secret::Secret::new("new")),
        ..settings()
    };
    h.input(Input::Loaded {
        origin: Origin::Sighup,
        result: Ok(Box::new(loaded(fresh.clone()))),
    });
    // The storm folded into one more read; it finds the same file.
    h.input(Input::Loaded {
        origin: Origin::Sighup,
        result: Ok(Box::new(loaded(fresh))),
    });
    let log = h.take();
    assert_eq!(
        log.iter().filter(|l| l.starts_with("read")).count(),
        2,
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("start")).count(),
        1,
        "{log:?}"
    );
    assert!(log.contains(&"stop 1 Polite".to_string()), "{log:?}");
    h.connected();
    assert_eq!(h.core.state().name(), "connected");
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_vv_keeps_the_session() {
    let mut h = H::new();
    h.connected();
    h.take();
    h.input(Input::Signal(Signal::Hangup));
    h.input(Input::Loaded {
        origin: Origin::Sighup,
        result: Err("reading /run/console.vv did not finish within 5 s".into()),
    });
    assert_eq!(h.take(), ["read Sighup"]);
    assert_eq!(h.core.state().name(), "connected");
}

#[tokio::test(start_paused = true)]
async fn one_refresh_child_at_a_time() {
    let mut cfg = Config::default();
    cfg.reconnect.refresh_command = vec!["/bin/true".into()];
    cfg.reconnect.wait_for_ticket_secs = 60.0;
    let single = ConnectionSettings {
        delete_this_file: true,
        ..settings()
    };
    let mut h = H::with(cfg, single.clone());
    h.connected();
    h.end(lost(eof(ChannelId::MAIN), 30.0));
    assert_eq!(h.count("refresh"), 1, "{:?}", h.log);
    assert!(h.core.watching_vv());
    // The refresh fails; a new .vv that is the same single-use ticket...
    h.input(Input::Refreshed {
        run: h.run,
        result: Err("refresh command failed".into()),
    });
    // ...and a fresh file that works.
    let fresh = ConnectionSettings {
        password: Some(crate::secret::Secret::new("fresh")),
        ..single
    };
    h.input(Input::VvChanged);
    h.input(Input::Loaded {
        origin: Origin::NewFile,
        result: Ok(Box::new(loaded(fresh))),
    });
    assert_eq!(h.count("refresh"), 1);
    assert_eq!(h.count("start"), 2, "{:?}", h.log);
    assert_eq!(h.core.state().name(), "connecting");
}

#[tokio::test(start_paused = true)]
async fn a_panicked_session_is_a_loss_with_a_report_and_a_retry() {
    let mut h = H::new();
    h.connected();
    h.take();
    let mut end = SessionEnd::panicked();
    end.connected = true;
    h.end(end);
    let log = h.take();
    assert!(
        log.contains(&"report main internal_error".to_string()),
        "{log:?}"
    );
    assert!(matches!(h.core.state(), State::Pending { attempt: 1, .. }));
}

/// The session-lost line names the file its report job then writes (the
/// journal's SPICED_REPORT), stamped with the time of the loss.
#[tokio::test(start_paused = true)]
async fn the_session_lost_line_names_its_report_file() {
    use tracing_subscriber::layer::SubscriberExt;
    let mut h = H::new();
    h.connected();
    h.take();
    h.at(2.5);
    let ring = crate::report::LogRing::new(50);
    let sub = tracing_subscriber::registry().with(ring.clone());
    tracing::subscriber::with_default(sub, || h.end(lost(eof(ChannelId::MAIN), 2.5)));
    assert_eq!(h.reports, ["spiced-disconnect-main-20270115T080002Z.zip"]);
    let lines = ring.snapshot();
    let line = lines
        .iter()
        .find(|l| l.contains("session lost after"))
        .expect("a session-lost line");
    assert!(
        line.contains("report=\"/var/spool/spiced/spiced-disconnect-main-20270115T080002Z.zip\"")
            && line.contains(crate::events::SESSION_LOST)
            && line.contains("session=1"),
        "{line}"
    );
    // Within the cooldown: no report, so no path on the line.
    h.at(10.0);
    h.connected();
    let ring = crate::report::LogRing::new(50);
    let sub = tracing_subscriber::registry().with(ring.clone());
    tracing::subscriber::with_default(sub, || h.end(lost(eof(ChannelId::MAIN), 5.0)));
    assert_eq!(h.reports.len(), 1);
    let lines = ring.snapshot();
    let line = lines
        .iter()
        .find(|l| l.contains("session lost after"))
        .expect("a second session-lost line");
    assert!(!line.contains("report="), "{line}");
}

#[tokio::test(start_paused = true)]
async fn stale_sessions_are_ignored() {
    let mut h = H::new();
    h.connected();
    h.input(Input::Session {
        generation: 99,
        event: SessionEvent::Connected { session_id: 2 },
    });
    h.input(Input::SessionEnded {
        generation: 99,
        end: Box::new(lost(eof(ChannelId::MAIN), 1.0)),
    });
    assert_eq!(h.core.state().name(), "connected");
}

/// Counters of a session every channel of which a proxy closed after 5 s idle.
fn idle_cut_end(base: f64) -> SessionEnd {
    cut_after(base, 5.0)
}

/// Counters of a session every channel of which a proxy closed after `idle` s.
fn cut_after(base: f64, idle: f64) -> SessionEnd {
    let counters = [ChannelType::Main, ChannelType::Display, ChannelType::Inputs]
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let last = base + 0.3 + 0.05 * i as f64;
            (
                ChannelId::new(*ty, 0),
                ChannelCounters {
                    connected_at_secs: Some(base),
                    last_recv_ts_secs: Some(last),
                    closed_at_secs: Some(last + idle),
                    close_reason: Some("server_closed".into()),
                    ..ChannelCounters::default()
                },
            )
        })
        .collect();
    SessionEnd {
        counters,
        ..lost(eof(ChannelId::MAIN), idle + 0.3)
    }
}

/// A core linked at 0.1 s, every loss getting a report (no cooldown).
fn linked_without_cooldown() -> H {
    let mut cfg = Config::default();
    cfg.report.cooldown_secs = 0.0;
    let mut h = H::with(cfg, settings());
    h.at(0.1);
    h.connected();
    h
}

#[tokio::test(start_paused = true)]
async fn an_idle_cut_seen_twice_is_learnt_not_taken_for_a_takeover() {
    let mut h = linked_without_cooldown();
    h.at(5.6);
    h.end(idle_cut_end(0.0));
    assert!(matches!(h.core.state(), State::Pending { attempt: 1, .. }));
    h.at(6.6);
    h.connected();
    h.at(12.2);
    h.take();
    h.end(idle_cut_end(0.0));
    let log = h.take();
    // Relinked at once, with the shorter keepalive, not after a takeover delay.
    assert!(log.contains(&"start 3".to_string()), "{log:?}");
    assert!(log.iter().any(|l| l == "report main idle_cut"), "{log:?}");
    assert!(matches!(h.core.state(), State::Connecting { attempt: 0 }));
    assert_eq!(h.core.idle_secs(), 2.5);
    // The metrics and the control socket count the second as what it was.
    let d = h.core.status().counts.disconnects;
    assert_eq!(
        (d.get("server_closed"), d.get("idle_cut")),
        (Some(&1), Some(&1)),
        "{d:?}"
    );
    assert_eq!(h.core.status().last_disconnect.unwrap().cause, "idle_cut");
}

/// Chaos seed 18381381220734413630: a proxy starts cutting flows idle for 5 s
/// under a session whose channels had been idle up to 12 s (main 8 s): the
/// first cut comes after main's 8 s with other channels silent longer (no
/// idle-cut shape), the next ones after 5 s. Learnt at the third close, never
/// taken for a takeover.
#[tokio::test(start_paused = true)]
async fn a_cut_switched_on_under_a_session_is_learnt_not_taken_for_a_takeover() {
    let mut h = linked_without_cooldown();
    h.at(20.0);
    let mut first = idle_cut_end(0.0);
    for (id, c) in first.counters.iter_mut() {
        let silent = if *id == ChannelId::MAIN { 8.0 } else { 12.0 };
        c.last_recv_ts_secs = Some(20.0 - silent);
        c.closed_at_secs = Some(20.0);
    }
    first.uptime = Duration::from_secs(20);
    assert!(super::idle_cut::pattern(&first).is_none());
    assert!(super::idle_cut::may_be_cut(&first));
    h.end(first);
    assert!(matches!(h.core.state(), State::Pending { attempt: 1, .. }));
    h.at(21.0);
    h.connected();
    h.at(26.6);
    h.take();
    h.end(idle_cut_end(0.0));
    // A takeover would wait takeover_delay_secs (60 s), not the back-off's 4 s.
    let st = h.core.state();
    assert!(
        matches!(st, State::Pending { attempt: 2, delay, .. } if *delay == Duration::from_secs(4)),
        "the second close taken for a takeover: {st:?}"
    );
    h.at(30.6);
    h.connected();
    h.at(36.2);
    h.end(idle_cut_end(0.0));
    let log = h.take();
    assert!(log.iter().any(|l| l == "report main idle_cut"), "{log:?}");
    assert!(matches!(h.core.state(), State::Connecting { attempt: 0 }));
    assert_eq!(h.core.idle_secs(), 2.5);
}

/// Chaos seed 10626483591465904736: a proxy's 5 s cut switched on twice within
/// a minute, each time under a session idle for longer (6.5 s, then 11.2 s),
/// then the fresh session's cut after 5.0 s: three takeover-like closes, none
/// of them a takeover. Learnt at the next cut.
#[tokio::test(start_paused = true)]
async fn a_cut_switched_on_twice_is_learnt_not_taken_for_a_takeover() {
    let mut h = linked_without_cooldown();
    // (linked, closed, main's silence, the back-off's attempt and delay)
    for (linked, closed, idle, attempt, delay) in [
        (0.1, 7.0, 6.5, 1, 1),
        (8.0, 20.0, 11.2, 2, 4),
        (24.0, 29.6, 5.0, 3, 16),
    ] {
        if linked > 0.1 {
            h.at(linked);
            h.connected();
        }
        h.at(closed);
        h.end(cut_after(0.0, idle));
        // A takeover would wait takeover_delay_secs (60 s).
        let st = h.core.state();
        assert!(
            matches!(st, State::Pending { attempt: a, delay: d, .. }
                if *a == attempt && *d == Duration::from_secs(delay)),
            "the close after {idle} s: {st:?}"
        );
    }
    h.at(45.6);
    h.connected();
    h.at(51.2);
    h.take();
    h.end(cut_after(0.0, 5.0));
    let log = h.take();
    assert!(log.iter().any(|l| l == "report main idle_cut"), "{log:?}");
    assert!(matches!(h.core.state(), State::Connecting { attempt: 0 }));
    assert_eq!(h.core.idle_secs(), 2.5);
}

/// A clean close after main heard nothing for `quiet` s (display still busy).
fn closed_after_quiet(up: f64, quiet: f64) -> SessionEnd {
    let ch = |ty, last_recv: f64| {
        (
            ChannelId::new(ty, 0),
            ChannelCounters {
                connected_at_secs: Some(0.0),
                last_recv_ts_secs: Some(last_recv),
                last_send_ts_secs: Some(up - 0.5),
                closed_at_secs: Some(up),
                close_reason: Some("server_closed".into()),
                ..ChannelCounters::default()
            },
        )
    };
    SessionEnd {
        counters: [
            ch(ChannelType::Main, up - quiet),
            ch(ChannelType::Display, up - 0.2),
        ]
        .into_iter()
        .collect(),
        ..lost(eof(ChannelId::MAIN), up)
    }
}

/// Two sessions up 30 s each, both ending in a clean close after main heard
/// nothing for `quiet` s: the state after the second.
fn after_two_quiet_closes(quiet: f64) -> State {
    let mut h = H::new();
    h.connected();
    h.at(30.0);
    h.end(closed_after_quiet(30.0, quiet));
    h.at(31.0);
    h.connected();
    h.at(61.0);
    h.take();
    h.end(closed_after_quiet(30.0, quiet));
    h.core.state().clone()
}

#[tokio::test(start_paused = true)]
async fn clean_closes_after_the_server_fell_silent_are_no_takeover() {
    // The server stopped PINGing main (a black hole) and dropped us; its FIN
    // came once the path was back. Twice in the window: plain retries.
    let st = after_two_quiet_closes(25.0);
    assert!(
        matches!(st, State::Pending { attempt: 2, delay, .. } if delay == Duration::from_secs(4)),
        "{st:?}"
    );
    // The same closes with main PINGed 3 s before: the second is a takeover.
    let st = after_two_quiet_closes(3.0);
    assert!(
        matches!(st, State::Pending { delay, .. } if delay == Duration::from_secs(60)),
        "a takeover waits takeover_delay_secs: {st:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn sigusr1_relinks_now_unless_the_ticket_forbids_it() {
    let mut h = H::new();
    h.connected();
    h.take();
    h.input(Input::Signal(Signal::Reconnect));
    let log = h.take();
    assert!(
        log.contains(&"stop 1 Polite".to_string()) && log.contains(&"start 2".to_string()),
        "{log:?}"
    );

    let single = ConnectionSettings {
        delete_this_file: true,
        ..settings()
    };
    let mut h = H::with(Config::default(), single);
    h.connected();
    h.take();
    h.input(Input::Signal(Signal::Reconnect));
    assert_eq!(
        h.count("start"),
        0,
        "a used single-use ticket cannot relink"
    );
    let _ = Stop::Run;
}

fn reset(ch: ChannelId) -> Failure {
    Failure::io(ch, &std::io::ErrorKind::ConnectionReset.into(), false)
}

#[tokio::test(start_paused = true)]
async fn status_while_connecting_connected_pending_and_waiting() {
    let mut cfg = Config::default();
    cfg.reconnect.wait_for_ticket_secs = 600.0;
    let s = ConnectionSettings {
        ticket_valid_until: Some(UNIX0 as i64 + 3600),
        ..settings()
    };
    let mut h = H::with(cfg, s);
    let st = h.core.status();
    assert_eq!(st.state, "connecting");
    assert_eq!(st.since, Some(UNIX0));
    assert_eq!((st.attempt, st.attempt_budget), (None, Some(3)));
    assert_eq!(st.ticket_valid_until, Some(UNIX0 as i64 + 3600));
    assert_eq!(st.host, "vm.example");
    assert_eq!(h.core.status(), st, "no input, no change");

    h.at(2.0);
    h.connected();
    h.settled(3, &[]);
    let st = h.core.status();
    assert_eq!(st.state, "connected");
    assert_eq!(
        (st.since, st.established),
        (Some(UNIX0 + 2.0), Some(UNIX0 + 2.0))
    );
    assert_eq!((st.channels_up, st.channels_total), (3, 3));
    assert_eq!(st.agent_connected, None, "the server has not said");
    h.event(SessionEvent::Agent { connected: true });
    assert_eq!(h.core.status().agent_connected, Some(true));
    // A channel other than main is lost: degraded, counted.
    h.event(SessionEvent::ChannelLost {
        channel: ChannelId::new(ChannelType::Usbredir, 1),
        failure: Box::new(reset(ChannelId::new(ChannelType::Usbredir, 1))),
        counters: Box::default(),
        relink_in: None,
        info: Box::default(),
    });
    let st = h.core.status();
    assert_eq!((st.channels_up, st.channels_total), (2, 3));
    assert_eq!(
        st.channels_down.get("usbredir:1").map(String::as_str),
        Some("reset")
    );
    assert_eq!(st.counts.channel_losses.get("reset"), Some(&1));
    assert_eq!(st.counts.reports_written, 0, "queued, not written yet");

    // Main is lost at t=10: pending attempt 1 after 1 s.
    h.at(10.0);
    h.end(lost(reset(ChannelId::MAIN), 8.0));
    let st = h.core.status();
    assert_eq!(st.state, "pending");
    assert_eq!((st.attempt, st.attempt_budget), (Some(1), Some(3)));
    assert_eq!(st.since, Some(UNIX0 + 10.0));
    assert_eq!(st.next_attempt_at, Some(UNIX0 + 11.0));
    assert_eq!((st.established, st.channels_up), (None, 0));
    assert_eq!(st.agent_connected, None, "no session: unknown");
    let d = st.last_disconnect.clone().unwrap();
    assert_eq!(
        (d.at, d.channel.as_str(), d.cause.as_str()),
        (UNIX0 + 10.0, "main", "reset")
    );
    assert_eq!(st.counts.disconnects.get("reset"), Some(&1));
    // The channel loss's report was written first, then this one's (cooldown:
    // this one is skipped).
    assert_eq!(st.counts.reports_skipped, 1);
    h.input(Input::ReportDone(Ok("/spool/a.zip".into())));
    let st = h.core.status();
    assert_eq!(st.counts.reports_written, 1);
    assert_eq!(
        st.last_disconnect.unwrap().report,
        None,
        "that report was the channel loss's"
    );

    // Attempt 1 starts and fails: connecting 1/3, then pending 2.
    h.at(11.0);
    let st = h.core.status();
    assert_eq!((st.state, st.attempt), ("connecting", Some(1)));
    assert_eq!(st.next_attempt_at, None);
    assert_eq!(st.counts.reconnect_attempts, 1);
    h.end(failed(refused()));
    let st = h.core.status();
    assert_eq!((st.state, st.attempt), ("pending", Some(2)));
    assert_eq!(st.counts.connect_failures.get("connect_failed"), Some(&1));

    // Attempt 2 links: connected again, one reconnect.
    h.at(20.0);
    h.connected();
    let st = h.core.status();
    assert_eq!((st.state, st.reconnects), ("connected", 1));
    assert_eq!(st.established, Some(UNIX0 + 20.0));

    // A single-use ticket used up: waiting for a fresh one.
    let single = ConnectionSettings {
        delete_this_file: true,
        ..settings()
    };
    let mut cfg = Config::default();
    cfg.reconnect.wait_for_ticket_secs = 600.0;
    let mut h = H::with(cfg, single);
    h.connected();
    h.at(5.0);
    h.end(lost(reset(ChannelId::MAIN), 5.0));
    let st = h.core.status();
    assert_eq!(st.state, "waiting_for_ticket");
    assert_eq!(st.since, Some(UNIX0 + 5.0));
    assert_eq!(st.counts.reports_written, 0);
    h.input(Input::ReportDone(Ok("/spool/b.zip".into())));
    let st = h.core.status();
    assert_eq!(
        st.last_disconnect.unwrap().report.as_deref(),
        Some("/spool/b.zip"),
        "the report of the last disconnect is named"
    );
}

/// Neither the ticket nor a ticket-bearing host nor proxy credentials reach
/// the status (hence the control socket and the metrics file).
#[tokio::test(start_paused = true)]
async fn status_carries_no_secret() {
    let s = ConnectionSettings {
        host: "pvespiceproxy:6560a1f2:100:pve1::ticketsecret".into(),
        password: Some(crate::secret::Secret::new("s3cr3t-ticket")),
        proxy: Some("http://user:proxypass@proxy.example:3128".into()),
        ..settings()
    };
    let mut h = H::with(Config::default(), s);
    h.connected();
    h.settled(2, &[]);
    h.end(lost(reset(ChannelId::MAIN), 1.0));
    let st = h.core.status();
    assert_eq!(st.host, "pvespiceproxy:...");
    let line = crate::control::status_line("k", &st, UNIX0);
    for secret in ["ticketsecret", "s3cr3t-ticket", "proxypass", "6560a1f2"] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
}

#[tokio::test(start_paused = true)]
async fn status_counts_failed_reports_and_gave_up() {
    let mut cfg = Config::default();
    cfg.reconnect.enabled = false;
    let mut h = H::with(cfg, settings());
    h.connected();
    h.end(lost(reset(ChannelId::MAIN), 1.0));
    h.input(Input::ReportDone(Err("disk full".into())));
    let st = h.core.status();
    assert_eq!(st.state, "gave_up");
    assert_eq!(st.counts.reports_failed, 1);
    assert_eq!(st.counts.reconnect_attempts, 0);
    assert_eq!(st.last_disconnect.unwrap().report, None);
}

/// The shell, run for real (real time: blocking work does not let paused time
/// advance) against fakes that never answer.
mod shell {
    use super::super::env::{Env, LoadVv, MakeConnector, Refresh, WriteReport};
    use super::super::{run, Options, Signal, EXIT_GRACE};
    use super::*;
    use crate::link::{ConnectFuture, Connector, Target};
    use crate::systemd::Notifier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    #[derive(Default)]
    pub(super) struct Notices(pub(super) Mutex<Vec<Notice>>);
    impl Notifier for Notices {
        fn notify(&self, n: Notice) {
            self.0.lock().unwrap().push(n);
        }
    }

    /// A connector whose connects never finish (a server that never answers) or
    /// fail at once (refused).
    struct Conn {
        hang: bool,
        connects: Arc<AtomicUsize>,
    }
    impl Connector for Conn {
        fn connect(&self, _: Target) -> ConnectFuture<'_> {
            self.connects.fetch_add(1, Ordering::SeqCst);
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

    pub(super) struct Fakes {
        pub(super) notices: Arc<Notices>,
        pub(super) connects: Arc<AtomicUsize>,
        pub(super) reads: Arc<AtomicUsize>,
    }

    /// `block_reads`: every .vv read after the first blocks for ever (a FIFO).
    /// `block_reports`: report writes never return.
    pub(super) fn env(hang: bool, block_reads: bool, block_reports: bool) -> (Env, Fakes) {
        let f = Fakes {
            notices: Arc::new(Notices::default()),
            connects: Arc::new(AtomicUsize::new(0)),
            reads: Arc::new(AtomicUsize::new(0)),
        };
        let connects = f.connects.clone();
        let connector: MakeConnector = Arc::new(move |_, _, _| {
            Arc::new(Conn {
                hang,
                connects: connects.clone(),
            })
        });
        let reads = f.reads.clone();
        let load_vv: LoadVv = Arc::new(move |_, _, _| {
            if reads.fetch_add(1, Ordering::SeqCst) > 0 && block_reads {
                loop {
                    std::thread::park();
                }
            }
            super::super::VvRead {
                stamp: None,
                result: Ok(loaded(settings())),
            }
        });
        let write_report: WriteReport = Arc::new(move |_, _| {
            if block_reports {
                loop {
                    std::thread::park();
                }
            }
            Ok("/dev/null".into())
        });
        let refresh: Refresh = Arc::new(|_, _| Box::pin(async { Err("no".to_string()) }));
        let env = Env {
            notifier: f.notices.clone(),
            connector,
            load_vv,
            write_report,
            refresh,
            stamp: |_| None,
            hub: crate::control::Hub::default(),
            instance: "test".into(),
            alarm: crate::wake::Alarm::tokio,
        };
        (env, f)
    }

    /// Runs `f` on a runtime that is shut down like `daemon::main` does: blocking
    /// work that never returns is abandoned, not waited for.
    pub(super) fn in_rt<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f)));
        rt.shutdown_timeout(Duration::from_millis(100));
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    pub(super) fn opts() -> Options {
        Options {
            vv_path: "/run/console.vv".into(),
            watchdog: None,
            spool: "/nonexistent".into(),
        }
    }

    /// Runs the loop; `script` sends signals while it runs. Returns the exit code
    /// and how long the loop took after the last signal.
    pub(super) async fn drive(
        config: Config,
        env: Env,
        script: impl FnOnce(mpsc::UnboundedSender<Signal>) -> tokio::task::JoinHandle<()>,
    ) -> (u8, Duration) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(config), opts(), env, rx));
        script(tx).await.unwrap();
        let signalled = std::time::Instant::now();
        let code = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the loop must end")
            .unwrap();
        (code, signalled.elapsed())
    }

    fn after(
        secs: f64,
        sigs: Vec<Signal>,
        tx: mpsc::UnboundedSender<Signal>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            for s in sigs {
                tx.send(s).unwrap();
            }
        })
    }

    #[test]
    fn sigterm_while_linking_to_a_server_that_never_answers() {
        in_rt(async {
            let (env, f) = env(true, false, false);
            let (code, took) = drive(Config::default(), env, |tx| {
                after(0.3, vec![Signal::Terminate], tx)
            })
            .await;
            assert_eq!(code, 0);
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(f.connects.load(Ordering::SeqCst), 1);
            let n = f.notices.0.lock().unwrap().clone();
            assert!(n.contains(&Notice::Stopping), "{n:?}");
        })
    }

    /// Waits (yielding, bounded) until `cond` holds.
    pub(super) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "never: {what}");
    }

    /// The control socket answers while the loop runs and `reconnect` relinks;
    /// the metrics file shows the final state; the socket file goes with the
    /// loop.
    #[test]
    fn the_control_socket_and_the_metrics_file_follow_the_loop_to_its_end() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        in_rt(async {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("c.sock");
            let prom = dir.path().join("m.prom");
            let mut cfg = Config::default();
            cfg.control.socket = Some(sock.clone());
            cfg.metrics.textfile = Some(prom.clone());
            // Connects are refused and retried only after an hour: a second
            // connect can only be the `reconnect` request's.
            cfg.reconnect.initial_delay_secs = 3600.0;
            cfg.reconnect.max_delay_secs = 3600.0;
            let (env, f) = env(false, false, false);
            let connects = f.connects.clone();
            let path = sock.clone();
            let (code, _) = drive(cfg, env, move |tx| {
                tokio::spawn(async move {
                    until("the socket is bound", || path.exists()).await;
                    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
                    let (r, mut w) = s.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut line = String::new();
                    let mut states = Vec::new();
                    // "idle" until the .vv is read, "connecting", then "pending".
                    let v = loop {
                        line.clear();
                        w.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
                        r.read_line(&mut line).await.unwrap();
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                        states.push(v["state"].to_string());
                        if v["state"] == "pending" || states.len() > 1000 {
                            break v;
                        }
                        tokio::task::yield_now().await;
                    };
                    let allowed = ["\"idle\"", "\"connecting\"", "\"pending\""];
                    assert!(
                        states.iter().all(|s| allowed.contains(&s.as_str())),
                        "{states:?}"
                    );
                    assert_eq!(v["version"], 1);
                    assert_eq!(v["instance"], "test");
                    assert_eq!(v["state"], "pending", "{states:?}");
                    assert_eq!(v["attempt"], 1);
                    assert_eq!(v["attempt_budget"], 3);
                    assert_eq!(v["counts"]["connect_failures"]["connect_failed"], 1);
                    assert_eq!(v["host"], "vm.example");
                    line.clear();
                    w.write_all(b"{\"cmd\":\"reconnect\"}\n").await.unwrap();
                    r.read_line(&mut line).await.unwrap();
                    assert!(line.contains("\"ok\""), "{line}");
                    until("a second connect", || connects.load(Ordering::SeqCst) == 2).await;
                    tx.send(Signal::Terminate).unwrap();
                })
            })
            .await;
            assert_eq!(code, 0);
            let text = std::fs::read_to_string(&prom).unwrap();
            assert!(
                text.contains(r#"spiced_state{spiced_instance="test",state="stopped"} 1"#),
                "{text}"
            );
            assert!(!sock.exists(), "the socket file is removed");
            assert_eq!(f.connects.load(Ordering::SeqCst), 2);
        })
    }

    #[test]
    fn sigterm_during_the_backoff() {
        in_rt(async {
            let (env, f) = env(false, false, false);
            let (code, took) = drive(Config::default(), env, |tx| {
                after(0.5, vec![Signal::Terminate], tx)
            })
            .await;
            assert_eq!(code, 0);
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(
                f.connects.load(Ordering::SeqCst),
                1,
                "waiting out the 1 s back-off"
            );
            let n = f.notices.0.lock().unwrap().clone();
            assert!(n.contains(&Notice::Ready), "READY while retrying: {n:?}");
        })
    }

    #[test]
    fn a_report_write_that_never_returns_does_not_hold_the_exit() {
        in_rt(async {
            let (env, _f) = env(false, false, true);
            // Reconnecting off: the failed connect gets its report and gives up (69)
            // while the report is still being written.
            let mut cfg = Config::default();
            cfg.reconnect.enabled = false;
            let (tx, rx) = mpsc::unbounded_channel::<Signal>();
            let start = std::time::Instant::now();
            let code =
                tokio::time::timeout(Duration::from_secs(10), run(Arc::new(cfg), opts(), env, rx))
                    .await
                    .expect("bounded exit");
            drop(tx);
            assert_eq!(code, 69);
            assert!(
                start.elapsed() < EXIT_GRACE + Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        })
    }

    #[test]
    fn a_vv_that_never_reads_never_blocks_the_loop() {
        in_rt(async {
            let (env, f) = env(false, true, false);
            // SIGHUP: the re-read blocks for ever (a FIFO with no writer); SIGTERM
            // must still be handled at once.
            let (code, took) = drive(Config::default(), env, |tx| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    tx.send(Signal::Hangup).unwrap();
                    // Scenario time: the read is stuck by now.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tx.send(Signal::Hangup).unwrap();
                    tx.send(Signal::Terminate).unwrap();
                })
            })
            .await;
            assert_eq!(code, 0);
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(
                f.reads.load(Ordering::SeqCst),
                2,
                "one stuck read, the storm folded"
            );
        })
    }

    #[test]
    fn a_sighup_storm_costs_at_most_two_reads() {
        in_rt(async {
            let (env, f) = env(true, false, false);
            let (code, _) = drive(Config::default(), env, |tx| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    for _ in 0..100 {
                        tx.send(Signal::Hangup).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tx.send(Signal::Terminate).unwrap();
                })
            })
            .await;
            assert_eq!(code, 0);
            let reads = f.reads.load(Ordering::SeqCst);
            assert!(
                (2..=3).contains(&reads),
                "the start read plus at most two: {reads}"
            );
            assert_eq!(
                f.connects.load(Ordering::SeqCst),
                1,
                "the same .vv: no reconnect"
            );
        })
    }

    #[test]
    fn a_first_read_that_never_returns_is_a_config_error_or_a_clean_stop() {
        in_rt(async {
            let (tx, rx) = mpsc::unbounded_channel();
            let (mut env, _f) = env(false, false, false);
            env.load_vv = Arc::new(|_, _, _| loop {
                std::thread::park();
            });
            let task = tokio::spawn(run(Arc::new(Config::default()), opts(), env, rx));
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Signal::Terminate).unwrap();
            let code = tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .expect("SIGTERM is handled while the first read hangs")
                .unwrap();
            assert_eq!(code, 0);
        })
    }
}

/// Where the migration tests' server moves the session.
fn migration_target() -> crate::session::MigrationTarget {
    crate::session::MigrationTarget {
        host: "10.0.0.2".into(),
        port: Some(5999),
        tls_port: None,
        subject: None,
    }
}

impl H {
    /// The target's settings (with TLS material) are built.
    fn migration_target_ready(&mut self) {
        let s = ConnectionSettings {
            host: "10.0.0.2".into(),
            port: Some(5999),
            ..settings()
        };
        let plan = self.plan;
        self.input(Input::MigrationPrepared {
            plan,
            result: Ok(Box::new(loaded(s))),
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_live_migration_is_followed_without_spending_an_attempt() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.take();
    let target = migration_target();
    h.event(SessionEvent::SwitchHost(target));
    assert_eq!(h.take(), ["migrate 10.0.0.2"]);
    // The source closes the session before the target's settings are ready:
    // no report, no retry.
    h.end(lost(eof(ChannelId::MAIN), 40.0));
    assert!(h.take().is_empty());
    assert_eq!(h.core.state().name(), "connected");
    h.migration_target_ready();
    let log = h.take();
    assert!(log.contains(&"start 2".to_string()), "{log:?}");
    assert!(
        log.iter().any(|l| l == "status connecting to 10.0.0.2"),
        "{log:?}"
    );
    assert!(matches!(h.core.state(), State::Connecting { attempt: 0 }));
    // A SIGHUP with the unchanged .vv does not send the session back.
    h.connected();
    h.input(Input::Signal(Signal::Hangup));
    h.input(Input::Loaded {
        origin: Origin::Sighup,
        result: Ok(Box::new(loaded(settings()))),
    });
    assert_eq!(h.count("start"), 0, "{:?}", h.log);
}

/// Semi-seamless: the target is linked while the source runs, the server is
/// told, and at the source's MIGRATE_END the next session adopts those links
/// (no attempt, no report); a target that fails leaves the session where it is.
#[tokio::test(start_paused = true)]
async fn a_semi_seamless_migration_links_ahead_and_moves_at_the_end() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.take();
    let target = migration_target();
    let begin = |h: &mut H| {
        h.event(SessionEvent::MigrateBegin {
            target: target.clone(),
            session_id: 0x55,
            channels: vec![ChannelId::new(ChannelType::Display, 0)],
        })
    };
    // The target refuses: the server is told, the session stays.
    begin(&mut h);
    assert_eq!(h.take(), ["migrate 10.0.0.2"]);
    h.migration_target_ready();
    assert_eq!(h.take(), ["prelink 1 10.0.0.2 id 85 +1"]);
    h.input(Input::Prelinked {
        plan: h.plan,
        result: Err("connection refused".into()),
    });
    assert_eq!(h.take(), ["drop prelinks", "reply 1 false"]);
    assert_eq!(h.core.state().name(), "connected");
    // A second announcement, linked this time.
    begin(&mut h);
    h.migration_target_ready();
    h.take();
    h.input(Input::Prelinked {
        plan: h.plan,
        result: Ok(2),
    });
    assert_eq!(h.take(), ["reply 1 true"]);
    h.event(SessionEvent::MigrateEnd);
    let log = h.take();
    assert!(log.contains(&"stop 1 Polite".to_string()), "{log:?}");
    assert!(log.contains(&"start 2 adopting".to_string()), "{log:?}");
    assert!(matches!(h.core.state(), State::Connecting { attempt: 0 }));
    // The source's end after the move is no loss.
    h.input(Input::SessionEnded {
        generation: 1,
        end: Box::new(lost(eof(ChannelId::MAIN), 40.0)),
    });
    assert!(h.take().iter().all(|l| !l.starts_with("report")));
    h.connected();
    h.settled(10, &[]);
    assert_eq!(h.core.state().name(), "connected");
    // Later reconnects go to the target, and never adopt again.
    h.end(lost(eof(ChannelId::MAIN), 40.0));
    h.at(100.0);
    let log = h.take();
    assert!(log.contains(&"start 3".to_string()), "{log:?}");
}

/// A migration that fails (MIGRATE_CANCEL) or a source that ends before the
/// move drops the links made at the target.
#[tokio::test(start_paused = true)]
async fn a_cancelled_migration_drops_the_target_links() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.take();
    h.event(SessionEvent::MigrateBegin {
        target: migration_target(),
        session_id: 1,
        channels: vec![],
    });
    h.migration_target_ready();
    h.input(Input::Prelinked {
        plan: h.plan,
        result: Ok(1),
    });
    h.take();
    h.event(SessionEvent::MigrateCancel);
    assert_eq!(h.take(), ["drop prelinks"]);
    assert_eq!(h.core.state().name(), "connected");
}

// ---- readiness checks during the back-off ----

fn gone() -> SessionEnd {
    SessionEnd {
        server_gone: true,
        ..lost(eof(ChannelId::MAIN), 30.0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_back_early_is_retried_at_once_with_one_probe_a_second() {
    use crate::link::Probe;
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.end(gone()); // killed: the retry waits 1 s
    h.at(1.0);
    assert_eq!(h.count("start 2"), 1);
    h.end(failed(refused())); // still down: the next retry waits 4 s (5 s)
    h.take();
    h.at(2.0);
    assert_eq!(h.probes, [2.0], "one check a second while waiting");
    h.input(Input::Probed(Probe::Refused));
    h.at(3.0);
    assert_eq!(h.probes, [2.0, 3.0]);
    assert_eq!(h.count("start"), 0, "still down: no attempt");
    h.input(Input::Probed(Probe::Listening));
    assert_eq!(h.count("start 3"), 1, "back: attempt 2 now, not at 5 s");
    assert!(matches!(h.core.state(), State::Connecting { attempt: 2 }));
    // While connecting: no checks.
    h.at(6.0);
    assert_eq!(h.probes.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_listens_but_fails_keeps_its_back_off() {
    use crate::link::Probe;
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    // Lost without the server going away (a reset), relinked, then the link
    // itself fails while the port listens: no shortcut.
    h.end(lost(
        Failure::io(
            ChannelId::MAIN,
            &std::io::ErrorKind::ConnectionReset.into(),
            false,
        ),
        30.0,
    ));
    h.at(1.0);
    h.end(failed(Failure::link(
        ChannelId::MAIN,
        crate::link::handshake::LinkError::Refused(crate::wire::link::LinkErrorCode::Error),
    )));
    h.take();
    h.at(2.0);
    assert_eq!(h.probes, [2.0]);
    h.input(Input::Probed(Probe::Listening));
    assert_eq!(h.count("start"), 0, "it listened all along");
    h.at(4.9);
    assert_eq!(h.count("start"), 0);
    h.at(5.0);
    assert_eq!(h.count("start 3"), 1, "attempt 2 on its back-off");
}

#[tokio::test(start_paused = true)]
async fn no_checks_shorten_a_takeover_delay_or_a_tls_only_server() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.at(10.0);
    h.end(lost(eof(ChannelId::MAIN), 10.0));
    h.at(11.0);
    h.connected();
    h.at(21.0);
    h.end(lost(eof(ChannelId::MAIN), 10.0)); // a takeover: 60 s delay
    h.at(70.0);
    assert!(h.probes.is_empty(), "{:?}", h.probes);

    let tls_only = ConnectionSettings {
        port: None,
        tls_port: Some(5901),
        ..settings()
    };
    let mut h = H::with(Config::default(), tls_only);
    h.end(failed(refused()));
    h.at(0.9);
    assert!(h.probes.is_empty(), "a TLS port is never probed");
}

#[tokio::test(start_paused = true)]
async fn a_proxmox_reconnect_after_the_ticket_died_refreshes_first() {
    let mut cfg = Config::default();
    cfg.reconnect.refresh_command = vec!["/usr/local/bin/pve-vv".into()];
    let pve = ConnectionSettings {
        host: "pvespiceproxy:6643a1b2:101:node1::8fa3".into(),
        proxy: Some("http://pve.example:3128".into()),
        ..settings()
    };
    // Lost within the ticket's 30 s: a plain retry with it.
    let mut h = H::with(cfg.clone(), pve.clone());
    h.connected();
    h.at(20.0);
    h.end(lost(eof(ChannelId::MAIN), 20.0));
    h.at(21.0);
    assert_eq!(
        (h.count("start"), h.count("refresh")),
        (2, 0),
        "{:?}",
        h.log
    );

    // Lost later: the ticket is dead, so the refresh command runs before any
    // attempt, and its .vv is used at once.
    let mut h = H::with(cfg.clone(), pve.clone());
    h.connected();
    h.at(40.0);
    h.take();
    h.end(lost(eof(ChannelId::MAIN), 40.0));
    assert_eq!(h.count("refresh"), 1, "{:?}", h.log);
    assert_eq!(h.count("start"), 0, "no attempt on a dead ticket");
    h.input(Input::Refreshed {
        run: h.run,
        result: Ok(Box::new(loaded(pve.clone()))),
    });
    assert_eq!(h.count("start"), 1, "{:?}", h.log);

    // Without a refresh command nothing is assumed: the server decides.
    let mut h = H::with(Config::default(), pve);
    h.connected();
    h.at(40.0);
    h.take();
    h.end(lost(eof(ChannelId::MAIN), 40.0));
    h.at(41.0);
    assert_eq!(
        (h.count("start"), h.count("refresh")),
        (1, 0),
        "{:?}",
        h.log
    );
}
