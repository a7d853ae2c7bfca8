//! Supervisor tests (compiled only under #[cfg(test)]) with injected time: `at(s)` is `s`
//! seconds after an arbitrary origin on both clocks (wall clock starting at `T0_UNIX`).

use super::*;
use crate::config::{MaxAttempts, OnTakeover, ReconnectConfig};
use crate::exit;
use crate::wire::{ChannelId, ChannelType};
use std::time::Duration;
use tokio::time::Instant;

/// 2023-11-14T22:13:20Z
const T0_UNIX: f64 = 1_700_000_000.0;
const T0: i64 = 1_700_000_000;

fn d(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

struct H {
    sup: Supervisor,
    base: Instant,
    generation: u64,
    /// How long main had heard nothing when the next close comes.
    quiet: Duration,
}

impl H {
    fn new(cfg: ReconnectConfig, ticket: TicketInfo) -> H {
        H {
            sup: Supervisor::from_config(&cfg, ticket),
            base: Instant::now(),
            generation: 0,
            quiet: Duration::from_secs(3),
        }
    }

    fn default() -> H {
        H::new(ReconnectConfig::default(), TicketInfo::default())
    }

    fn at(&self, s: f64) -> Now {
        Now::new(self.base + d(s), T0_UNIX + s)
    }

    fn inst(&self, s: f64) -> Instant {
        self.base + d(s)
    }

    fn start(&mut self, s: f64) -> Vec<Action> {
        let now = self.at(s);
        self.sup.start(now)
    }

    fn connected(&mut self, s: f64) -> Vec<Action> {
        self.generation += 1;
        let i = Input::Connected {
            generation: self.generation,
        };
        self.handle(i, s)
    }

    fn down(&mut self, s: f64, clean: bool) -> Vec<Action> {
        self.close(s, clean, false, CutLike::No)
    }

    /// A clean close after a silence on main (it may be an idle cut).
    fn idle(&mut self, s: f64) -> Vec<Action> {
        self.close(s, true, false, CutLike::Maybe)
    }

    /// A close with a cut's shape after less silence on main than the one before.
    fn shorter_idle(&mut self, s: f64) -> Vec<Action> {
        self.close(s, true, false, CutLike::Shorter)
    }

    /// A clean close after which the server's address refused a probe.
    fn gone(&mut self, s: f64) -> Vec<Action> {
        self.close(s, true, true, CutLike::No)
    }

    fn close(&mut self, s: f64, clean: bool, server_gone: bool, cut_like: CutLike) -> Vec<Action> {
        let i = Input::Disconnected {
            generation: self.generation,
            channel: ChannelId::MAIN,
            cause: if clean {
                "EOF".into()
            } else {
                "connection reset by peer".into()
            },
            shape: CloseShape {
                clean,
                server_gone,
                cut_like,
                server_quiet: self.quiet,
            },
        };
        self.handle(i, s)
    }

    fn fail(&mut self, s: f64, class: FailClass) -> Vec<Action> {
        let i = Input::ConnectFailed {
            class,
            channel: ChannelId::MAIN,
            message: "connection refused".into(),
        };
        self.handle(i, s)
    }

    fn reload(&mut self, s: f64, ticket: TicketInfo) -> Vec<Action> {
        self.handle(Input::Reload { ticket }, s)
    }

    fn handle(&mut self, i: Input, s: f64) -> Vec<Action> {
        let now = self.at(s);
        self.sup.handle(i, now)
    }

    fn poll(&mut self, s: f64) -> Vec<Action> {
        let now = self.at(s);
        self.sup.poll(now)
    }

    /// The pending retry: (attempt, delay, seconds of next_at).
    fn pending(&self) -> (u32, Duration, f64) {
        match self.sup.state() {
            State::Pending {
                attempt,
                delay,
                next_at,
            } => (*attempt, *delay, (*next_at - self.base).as_secs_f64()),
            s => panic!("not pending: {s:?}"),
        }
    }

    /// Up and running at `s`.
    fn up(&mut self, s: f64) {
        if *self.sup.state() == State::Idle {
            assert_eq!(connects(&self.start(s)), vec![0]);
        }
        self.connected(s);
        assert_eq!(self.sup.state().name(), "connected");
    }
}

fn connects(a: &[Action]) -> Vec<u32> {
    a.iter()
        .filter_map(|a| match a {
            Action::ConnectNow { attempt } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn gave_up(a: &[Action]) -> Option<GiveUpReason> {
    a.iter().find_map(|a| match a {
        Action::GiveUp(r) => Some(*r),
        _ => None,
    })
}

fn warns(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Warn(w) => Some(w.text.clone()),
            _ => None,
        })
        .collect()
}

fn transitions(a: &[Action]) -> Vec<Transition> {
    a.iter()
        .filter_map(|a| match a {
            Action::Transition(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

// ---- policy ----

#[test]
fn default_policy_is_1_4_16() {
    let p = ReconnectPolicy::default();
    assert_eq!(
        p.schedule(),
        vec![
            Duration::from_secs(1),
            Duration::from_secs(4),
            Duration::from_secs(16)
        ]
    );
    let mut b = p.backoff();
    assert_eq!(b.next_delay(), Some(Duration::from_secs(1)));
    assert_eq!(b.used(), 1);
    // A fresh backoff starts over.
    assert_eq!(p.backoff().next_delay(), Some(Duration::from_secs(1)));
}

#[test]
fn policy_caps_delays_and_honours_disabled_and_jitter() {
    let cfg = ReconnectConfig {
        max_attempts: MaxAttempts::Limited(4),
        max_delay_secs: 10.0,
        ..Default::default()
    };
    let secs: Vec<u64> = ReconnectPolicy::from_config(&cfg)
        .schedule()
        .iter()
        .map(Duration::as_secs)
        .collect();
    assert_eq!(secs, vec![1, 4, 10, 10]);

    // The first delay is capped too (backon does not cap it).
    let cfg = ReconnectConfig {
        initial_delay_secs: 50.0,
        max_delay_secs: 10.0,
        ..Default::default()
    };
    assert_eq!(
        ReconnectPolicy::from_config(&cfg).schedule()[0],
        Duration::from_secs(10)
    );

    let cfg = ReconnectConfig {
        enabled: false,
        ..Default::default()
    };
    assert!(ReconnectPolicy::from_config(&cfg).schedule().is_empty());

    let cfg = ReconnectConfig {
        jitter: true,
        ..Default::default()
    };
    let p = ReconnectPolicy::from_config(&cfg);
    for _ in 0..20 {
        for (got, base) in p.schedule().into_iter().zip([1u64, 4, 16]) {
            let base = Duration::from_secs(base);
            assert!(got >= base && got < base * 2, "{got:?} vs {base:?}");
        }
    }
}

// ---- schedule and budget ----

#[test]
fn retries_follow_1_4_16_then_give_up() {
    let mut h = H::default();
    h.up(0.0);
    let a = h.down(10.0, false);
    assert!(connects(&a).is_empty());
    assert_eq!(h.pending(), (1, d(1.0), 11.0));
    assert_eq!(h.sup.next_deadline(), Some(h.inst(11.0)));
    assert!(h.poll(10.999).is_empty());
    assert_eq!(connects(&h.poll(11.0)), vec![1]);
    assert_eq!(h.sup.state(), &State::Connecting { attempt: 1 });
    assert_eq!(h.sup.next_deadline(), None);

    h.fail(11.5, FailClass::Network);
    assert_eq!(h.pending(), (2, d(4.0), 15.5));
    assert_eq!(connects(&h.poll(15.5)), vec![2]);
    h.fail(16.0, FailClass::Network);
    assert_eq!(h.pending(), (3, d(16.0), 32.0));
    assert_eq!(connects(&h.poll(32.0)), vec![3]);
    let a = h.fail(33.0, FailClass::Network);
    assert_eq!(gave_up(&a), Some(GiveUpReason::RetriesExhausted));
    assert_eq!(GiveUpReason::RetriesExhausted.exit_code(), 69);
    assert_eq!(h.sup.state().name(), "gave_up");
    assert_eq!(h.sup.next_deadline(), None);
    // Final: nothing more happens.
    assert!(h.poll(100.0).is_empty());
    assert!(h.reload(100.0, TicketInfo::default()).is_empty());
}

// ---- max_attempts = "unlimited" and its gate ----

fn unlimited() -> H {
    let cfg = ReconnectConfig {
        max_attempts: MaxAttempts::Unlimited,
        max_delay_secs: 60.0,
        ..Default::default()
    };
    H::new(cfg, TicketInfo::default())
}

/// From a pending retry: runs it at its time and fails it, `n` times (or until
/// a give-up). Returns the attempts started and the give-up, if any; `t` is
/// the time of the last failure.
fn fail_retries(h: &mut H, n: usize, t: &mut f64) -> (Vec<u32>, Option<GiveUpReason>) {
    let mut started = Vec::new();
    for _ in 0..n {
        let (_, delay, at) = h.pending();
        assert!(delay <= d(60.0), "capped by max_delay_secs: {delay:?}");
        started.extend(connects(&h.poll(at)));
        *t = at + 0.5;
        let a = h.fail(*t, FailClass::Network);
        if let Some(r) = gave_up(&a) {
            let why = transitions(&a)
                .last()
                .map(|t| t.why.clone())
                .unwrap_or_default();
            assert!(why.contains("all 3 attempts"), "{why}");
            assert!(why.contains("unlimited"), "the gate is explained: {why}");
            return (started, Some(r));
        }
    }
    (started, None)
}

#[test]
fn unlimited_keeps_retrying_past_the_default_budget_once_a_session_was_up() {
    let mut h = unlimited();
    h.up(0.0);
    h.down(10.0, false);
    let mut t = 10.0;
    let (started, gave) = fail_retries(&mut h, 30, &mut t);
    assert_eq!(gave, None);
    assert_eq!(started.len(), 30);
    assert_eq!(&started[..5], &[1, 2, 3, 4, 5]);
    assert_eq!(h.sup.state().name(), "pending");
    // Long outages are retried every max_delay_secs.
    assert_eq!(h.pending().1, d(60.0));
}

#[test]
fn unlimited_gives_up_after_the_default_budget_if_never_connected() {
    let mut h = unlimited();
    assert_eq!(connects(&h.start(0.0)), vec![0]);
    let mut t = 0.1;
    h.fail(t, FailClass::Network);
    let (started, gave) = fail_retries(&mut h, 10, &mut t);
    assert_eq!(started, vec![1, 2, 3]);
    assert_eq!(gave, Some(GiveUpReason::RetriesExhausted));
}

#[test]
fn unlimited_gate_closes_again_on_reload() {
    let mut h = unlimited();
    h.up(0.0);
    h.down(10.0, false);
    let mut t = 10.0;
    assert_eq!(fail_retries(&mut h, 5, &mut t).1, None);
    // Fresh settings (SIGHUP, new .vv, refresh): until they bring a session
    // up, a wrong port or bad ticket is not retried forever.
    assert_eq!(connects(&h.reload(t + 1.0, TicketInfo::default())), vec![0]);
    t += 1.5;
    h.fail(t, FailClass::Network);
    let (started, gave) = fail_retries(&mut h, 10, &mut t);
    assert_eq!(started, vec![1, 2, 3]);
    assert_eq!(gave, Some(GiveUpReason::RetriesExhausted));

    // Once the new settings have brought a session up, the gate opens again.
    let mut h = unlimited();
    h.up(0.0);
    h.reload(1.0, TicketInfo::default());
    h.connected(1.5);
    h.down(10.0, false);
    let mut t = 10.0;
    assert_eq!(fail_retries(&mut h, 8, &mut t).1, None);
}

#[test]
fn unlimited_policy_budget_and_schedule() {
    let cfg = ReconnectConfig {
        max_attempts: MaxAttempts::Unlimited,
        ..Default::default()
    };
    let p = ReconnectPolicy::from_config(&cfg);
    assert_eq!(p.max_attempts(), MaxAttempts::Unlimited);
    assert_eq!(p.budget(true), None);
    assert_eq!(p.budget(false), Some(3));
    assert_eq!(p.finite_budget(), 3);
    // The schedule shown in logs stays finite.
    assert_eq!(p.schedule().len(), 3);
    let p = ReconnectPolicy::default();
    assert_eq!((p.budget(true), p.budget(false)), (Some(3), Some(3)));
}

#[test]
fn initial_connect_failures_are_retried_with_the_same_policy() {
    let mut h = H::default();
    assert_eq!(connects(&h.start(0.0)), vec![0]);
    h.fail(0.1, FailClass::Network);
    assert_eq!(h.pending().1, d(1.0));
    h.poll(1.1);
    h.fail(1.2, FailClass::Network);
    assert_eq!(h.pending().1, d(4.0));
    h.poll(5.2);
    h.connected(5.3);
    assert_eq!(h.sup.state().name(), "connected");
    assert_eq!(h.sup.reconnect_count(), 0);
}

#[test]
fn bad_connection_id_counts_as_an_attempt() {
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    h.fail(11.0, FailClass::BadConnectionId);
    assert_eq!(h.pending().0, 2);
    assert_eq!(h.pending().1, d(4.0));
}

#[test]
fn channel_down_storm_of_one_session_counts_once() {
    let mut h = H::default();
    h.up(0.0);
    let mut scheduled = 0;
    for i in 0..5 {
        let a = h.handle(
            Input::Disconnected {
                generation: 1,
                channel: ChannelId::new(ChannelType::Display, 0),
                cause: format!("reset {i}"),
                shape: CloseShape::default(),
            },
            10.0 + i as f64 * 0.01,
        );
        scheduled += transitions(&a).len();
    }
    assert_eq!(scheduled, 1);
    assert_eq!(h.pending(), (1, d(1.0), 11.0));
    // Late events of generation 1 after generation 2 is up are ignored too.
    h.poll(11.0);
    h.connected(11.2);
    assert!(h.down_gen(1, 12.0).is_empty());
    assert_eq!(h.sup.state().name(), "connected");
    assert_eq!(h.sup.reconnect_count(), 1);
}

impl H {
    fn down_gen(&mut self, generation: u64, s: f64) -> Vec<Action> {
        self.handle(
            Input::Disconnected {
                generation,
                channel: ChannelId::MAIN,
                cause: "EOF".into(),
                shape: CloseShape::default(),
            },
            s,
        )
    }
}

/// Uses all three attempts of a cluster that starts at 10 s, each retry linking.
fn burn_cluster() -> H {
    let mut h = H::default();
    h.up(0.0);
    for (down, retry_at) in [(10.0, 11.0), (20.0, 24.0), (30.0, 46.0)] {
        h.down(down, false);
        assert_eq!(h.pending().2, retry_at);
        h.poll(retry_at);
        h.connected(retry_at);
    }
    h
}

#[test]
fn window_edge_299s_does_not_refill_the_budget() {
    let mut h = burn_cluster();
    let a = h.down(10.0 + 299.0, false);
    assert_eq!(gave_up(&a), Some(GiveUpReason::RetriesExhausted));
}

#[test]
fn window_edge_301s_starts_a_fresh_cluster() {
    let mut h = burn_cluster();
    let a = h.down(10.0 + 301.0, false);
    assert_eq!(gave_up(&a), None);
    assert_eq!(h.pending(), (1, d(1.0), 312.0));
}

#[test]
fn reconnect_disabled_gives_up_at_first_disconnect() {
    let cfg = ReconnectConfig {
        enabled: false,
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    h.up(0.0);
    let a = h.down(5.0, false);
    assert_eq!(gave_up(&a), Some(GiveUpReason::ReconnectDisabled));
    assert_eq!(
        GiveUpReason::ReconnectDisabled.exit_code(),
        exit::RETRIES_EXHAUSTED
    );
}

// ---- transitions name channel and cause ----

#[test]
fn transition_names_channel_and_cause() {
    let mut h = H::default();
    h.up(0.0);
    let a = h.handle(
        Input::Disconnected {
            generation: 1,
            channel: ChannelId::new(ChannelType::Usbredir, 1),
            cause: "keepalive_timeout".into(),
            shape: CloseShape::default(),
        },
        7.0,
    );
    let t = transitions(&a);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].from, "connected");
    let line = t[0].to_string();
    assert!(line.contains("usbredir:1: keepalive_timeout"), "{line}");
    assert!(
        line.starts_with("connected -> pending: attempt 1 after 1s"),
        "{line}"
    );
}

// ---- ticket rules ----

#[test]
fn single_use_ticket_gives_up_at_once() {
    let t = TicketInfo {
        single_use: true,
        valid_until: None,
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    let a = h.down(10.0, false);
    assert!(connects(&a).is_empty());
    assert_eq!(gave_up(&a), Some(GiveUpReason::OneShotConsumed));
    assert_eq!(GiveUpReason::OneShotConsumed.exit_code(), exit::TICKET);
}

#[test]
fn single_use_ticket_not_yet_presented_is_retried() {
    let t = TicketInfo {
        single_use: true,
        valid_until: None,
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.start(0.0);
    h.fail(0.5, FailClass::Network);
    assert_eq!(h.pending().0, 1);
    h.poll(1.5);
    // BAD_CONNECTION_ID means main got past authentication: now it is used.
    let a = h.fail(2.0, FailClass::BadConnectionId);
    assert_eq!(gave_up(&a), Some(GiveUpReason::OneShotConsumed));
}

#[test]
fn ticket_expired_at_disconnect_gives_up_with_rfc3339_time() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 100),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    let a = h.down(150.0, false);
    let r = gave_up(&a).expect("gave up");
    assert_eq!(
        r,
        GiveUpReason::TicketExpired {
            valid_until: T0 + 100
        }
    );
    assert_eq!(r.exit_code(), 77);
    assert_eq!(
        r.to_string(),
        "ticket_expired (ticket valid until 2023-11-14T22:15:00Z)"
    );
}

#[test]
fn ticket_expiry_reached_while_pending_gives_up_then() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 103),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(80.0); // after the T-30 s warning time: it is given at the first poll
    h.down(100.0, false);
    h.poll(101.0);
    h.fail(101.0, FailClass::Network);
    assert_eq!(h.pending(), (2, d(4.0), 105.0));
    // Woken at expiry (103), before the retry time (105).
    assert_eq!(h.sup.next_deadline(), Some(h.inst(103.0)));
    assert!(gave_up(&h.poll(102.9)).is_none());
    let a = h.poll(103.0);
    assert!(connects(&a).is_empty());
    assert_eq!(
        gave_up(&a),
        Some(GiveUpReason::TicketExpired {
            valid_until: T0 + 103
        })
    );
}

#[test]
fn expiry_warning_comes_once_30s_before() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 100),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    assert_eq!(h.sup.next_deadline(), Some(h.inst(70.0)));
    let mut all = Vec::new();
    for s in [10.0, 50.0, 69.9] {
        all.extend(warns(&h.poll(s)));
    }
    assert!(all.is_empty());
    let w = warns(&h.poll(70.0));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("2023-11-14T22:15:00Z"), "{}", w[0]);
    for i in 0..100 {
        all.extend(warns(&h.poll(70.0 + i as f64 * 0.25)));
    }
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(h.sup.next_deadline(), None);

    // The same ticket reloaded: no second warning. A new ticket: a new warning.
    h.reload(90.0, t);
    assert!(warns(&h.poll(91.0)).is_empty());
    let t2 = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 200),
    };
    h.reload(92.0, t2);
    assert!(warns(&h.poll(169.0)).is_empty());
    assert_eq!(warns(&h.poll(170.0)).len(), 1);
    assert!(warns(&h.poll(171.0)).is_empty());
}

fn warn_events(a: &[Action]) -> Vec<Option<&'static str>> {
    a.iter()
        .filter_map(|a| match a {
            Action::Warn(w) => Some(w.event),
            _ => None,
        })
        .collect()
}

/// The journal's MESSAGE_IDs come from these tags (see `DaemonCore::apply`).
#[test]
fn ticket_and_clock_warnings_carry_their_event_ids() {
    use crate::events::{CLOCK_SKEW, TICKET_EXPIRED, TICKET_EXPIRING};
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 100),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    assert_eq!(warn_events(&h.poll(70.0)), vec![Some(TICKET_EXPIRING)]);
    // Expired by the disconnect: said once, before the give-up.
    let a = h.down(150.0, false);
    assert_eq!(warn_events(&a), vec![Some(TICKET_EXPIRED)]);
    assert!(warns(&a)[0].contains("2023-11-14T22:15:00Z"), "{a:?}");
    assert!(gave_up(&a).is_some());

    // Already past at start, then accepted by the server: our clock is off.
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 - 10),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    assert_eq!(warn_events(&h.start(0.0)), vec![Some(TICKET_EXPIRED)]);
    assert_eq!(warn_events(&h.connected(1.0)), vec![Some(CLOCK_SKEW)]);

    // Refused although valid by our clock.
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 3600),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    let a = h.fail(11.0, FailClass::PermissionDenied);
    assert_eq!(warn_events(&a), vec![Some(CLOCK_SKEW)]);

    // Anything else is a plain warning.
    let cfg = ReconnectConfig {
        on_takeover: OnTakeover::Reclaim,
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    h.up(0.0);
    h.down(10.0, true);
    h.poll(11.0);
    h.connected(11.1);
    assert_eq!(warn_events(&h.down(20.0, true)), vec![None]);
}

#[test]
fn exhausted_with_a_valid_ticket_warns_about_clock_skew() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 10_000),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    h.down(10.0, false);
    let mut last = Vec::new();
    for _ in 0..3 {
        let at = h.pending().2;
        h.poll(at);
        last = h.fail(at, FailClass::Network);
    }
    assert_eq!(gave_up(&last), Some(GiveUpReason::RetriesExhausted));
    let w = warns(&last);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("clocks may be skewed"), "{}", w[0]);
}

#[test]
fn no_skew_warning_without_a_valid_until() {
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    let mut last = Vec::new();
    for _ in 0..3 {
        let at = h.pending().2;
        h.poll(at);
        last = h.fail(at, FailClass::Network);
    }
    assert!(warns(&last).is_empty());
}

#[test]
fn ticket_already_past_at_start_warns_and_tries_once() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 - 10),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    let a = h.start(0.0);
    assert_eq!(warns(&a).len(), 1);
    assert!(warns(&a)[0].contains("already past"));
    assert_eq!(connects(&a), vec![0]);
    let a = h.fail(1.0, FailClass::Network);
    assert_eq!(
        gave_up(&a),
        Some(GiveUpReason::TicketExpired {
            valid_until: T0 - 10
        })
    );
}

#[test]
fn past_ticket_accepted_by_the_server_is_trusted_over_our_clock() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 - 10),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.start(0.0);
    let a = h.connected(1.0);
    assert!(warns(&a)[0].contains("check the clock"));
    // The server is the authority: a later disconnect is retried.
    h.down(50.0, false);
    assert_eq!(h.pending().0, 1);
    h.poll(51.0);
    h.fail(51.0, FailClass::Network);
    assert_eq!(h.pending().0, 2);
    // Until the server itself says no.
    h.poll(55.0);
    let a = h.fail(55.0, FailClass::PermissionDenied);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TicketRejected));
}

#[test]
fn permission_denied_on_first_connect_gives_up() {
    let mut h = H::default();
    h.start(0.0);
    let a = h.fail(0.2, FailClass::PermissionDenied);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TicketRejected));
    assert_eq!(GiveUpReason::TicketRejected.exit_code(), 77);
}

#[test]
fn permission_denied_on_retry_gives_up_and_flags_skew_if_ticket_looks_valid() {
    let t = TicketInfo {
        single_use: false,
        valid_until: Some(T0 + 3600),
    };
    let mut h = H::new(ReconnectConfig::default(), t);
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    let a = h.fail(11.0, FailClass::PermissionDenied);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TicketRejected));
    assert!(warns(&a).iter().any(|w| w.contains("clocks may be skewed")));
}

#[test]
fn protocol_and_tls_errors_give_up_at_once() {
    let mut h = H::default();
    h.start(0.0);
    let a = h.fail(0.1, FailClass::Protocol { code: Some(3) });
    let r = gave_up(&a).expect("gave up");
    assert_eq!(r, GiveUpReason::ProtocolError { code: Some(3) });
    assert_eq!(r.exit_code(), exit::FAILURE);
    assert_eq!(r.to_string(), "protocol_error (link result 3)");

    // A malformed message after the link (oversized, bad magic) has no link
    // result: the line must not claim "link result 0" (0 is OK).
    let mut h = H::default();
    h.start(0.0);
    let a = h.fail(0.1, FailClass::Protocol { code: None });
    let r = gave_up(&a).expect("gave up");
    assert_eq!(r, GiveUpReason::ProtocolError { code: None });
    assert_eq!(r.exit_code(), exit::FAILURE);
    assert_eq!(r.to_string(), "protocol_error");
    assert_eq!(
        FailClass::Protocol { code: None }.to_string(),
        "protocol error"
    );

    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    let a = h.fail(11.0, FailClass::TlsVerification);
    let r = gave_up(&a).expect("gave up");
    assert_eq!(r, GiveUpReason::TlsVerification);
    assert_eq!(r.exit_code(), exit::CONFIG);
}

// ---- fresh tickets ----

#[test]
fn reload_while_pending_connects_at_once_with_a_fresh_cluster() {
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    h.fail(11.0, FailClass::Network);
    h.poll(15.0);
    h.fail(15.0, FailClass::Network);
    assert_eq!(h.pending().0, 3);
    let a = h.reload(20.0, TicketInfo::default());
    assert_eq!(connects(&a), vec![0]);
    h.fail(20.5, FailClass::Network);
    assert_eq!(h.pending(), (1, d(1.0), 21.5));
}

#[test]
fn reload_while_connected_reconnects_at_once_with_a_fresh_budget() {
    let mut h = burn_cluster();
    let a = h.reload(100.0, TicketInfo::default());
    assert_eq!(connects(&a), vec![0]);
    assert_eq!(h.sup.state().name(), "connecting");
    h.connected(100.5);
    h.down(110.0, false);
    assert_eq!(h.pending().0, 1);
}

#[test]
fn reload_during_a_connect_attempt_gets_a_fresh_try_if_it_fails() {
    let mut h = H::default();
    h.start(0.0);
    h.reload(0.1, TicketInfo::default());
    let a = h.fail(0.2, FailClass::PermissionDenied);
    assert_eq!(gave_up(&a), None);
    assert_eq!(connects(&a), vec![0]);
}

#[test]
fn wait_for_ticket_then_reload_reconnects() {
    let cfg = ReconnectConfig {
        wait_for_ticket_secs: 60.0,
        ..Default::default()
    };
    let t = TicketInfo {
        single_use: true,
        valid_until: None,
    };
    let mut h = H::new(cfg, t);
    h.up(0.0);
    let a = h.down(10.0, false);
    assert_eq!(gave_up(&a), None);
    assert_eq!(h.sup.state().name(), "waiting_for_ticket");
    assert_eq!(
        h.sup.state().describe(),
        "waiting for a fresh ticket (one_shot_consumed)"
    );
    assert_eq!(h.sup.next_deadline(), Some(h.inst(70.0)));
    assert!(h.poll(69.0).is_empty());
    let a = h.reload(40.0, t);
    assert_eq!(connects(&a), vec![0]);
    h.connected(41.0);
    assert_eq!(h.sup.reconnect_count(), 1);
}

#[test]
fn wait_for_ticket_deadline_gives_up_with_the_ticket_reason() {
    let cfg = ReconnectConfig {
        wait_for_ticket_secs: 60.0,
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    h.start(0.0);
    h.fail(0.5, FailClass::PermissionDenied);
    assert_eq!(h.sup.state().name(), "waiting_for_ticket");
    assert!(gave_up(&h.poll(60.4)).is_none());
    let a = h.poll(60.5);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TicketRejected));
}

#[test]
fn refresh_command_runs_while_waiting_for_ticket() {
    let cfg = ReconnectConfig {
        refresh_command: vec!["/usr/local/bin/fetch-vv".into()],
        refresh_timeout_secs: 30.0,
        ..Default::default()
    };
    let mut h = H::new(cfg.clone(), TicketInfo::default());
    h.start(0.0);
    let a = h.fail(1.0, FailClass::PermissionDenied);
    // The state is WaitingForTicket before the command is asked for.
    assert!(matches!(
        a.as_slice(),
        [Action::Transition(_), Action::RunRefreshCommand]
    ));
    assert!(matches!(
        h.sup.state(),
        State::WaitingForTicket {
            refresh_until: Some(_),
            ..
        }
    ));
    // The command delivers: connect with it at once.
    let a = h.reload(3.0, TicketInfo::default());
    assert_eq!(connects(&a), vec![0]);

    // The command fails: with no wait configured that is the end.
    let mut h = H::new(cfg.clone(), TicketInfo::default());
    h.start(0.0);
    h.fail(1.0, FailClass::PermissionDenied);
    let a = h.handle(
        Input::RefreshFailed {
            message: "exit status 2".into(),
        },
        4.0,
    );
    assert_eq!(gave_up(&a), Some(GiveUpReason::TicketRejected));

    // The daemon never reports: give up after the timeout plus grace.
    let mut h = H::new(cfg, TicketInfo::default());
    h.start(0.0);
    h.fail(1.0, FailClass::PermissionDenied);
    assert_eq!(h.sup.next_deadline(), Some(h.inst(36.0)));
    assert!(gave_up(&h.poll(35.0)).is_none());
    assert_eq!(gave_up(&h.poll(36.0)), Some(GiveUpReason::TicketRejected));
}

#[test]
fn refresh_command_is_bounded_per_window() {
    let cfg = ReconnectConfig {
        refresh_command: vec!["fetch".into()],
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    h.start(0.0);
    let mut runs = 0;
    for i in 0..5 {
        let s = i as f64 * 10.0;
        let a = h.fail(s + 1.0, FailClass::PermissionDenied);
        runs += a
            .iter()
            .filter(|a| **a == Action::RunRefreshCommand)
            .count();
        if gave_up(&a).is_some() {
            break;
        }
        h.reload(s + 2.0, TicketInfo::default());
    }
    assert_eq!(runs, 3);
    assert_eq!(h.sup.state().name(), "gave_up");
}

// ---- takeover ----

/// A healthy session closed cleanly at 10 s, relinked at once (11 s), closed
/// cleanly again at 20 s: the takeover pattern.
fn takeover(on: OnTakeover, wait: f64) -> (H, Vec<Action>) {
    let cfg = ReconnectConfig {
        on_takeover: on,
        wait_for_ticket_secs: wait,
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    h.up(0.0);
    let a = h.down(10.0, true);
    assert!(warns(&a).is_empty());
    assert_eq!(h.pending(), (1, d(1.0), 11.0));
    h.poll(11.0);
    h.connected(11.1);
    let a = h.down(20.0, true);
    (h, a)
}

#[test]
fn takeover_reclaim_waits_the_takeover_delay_and_budget_still_stops() {
    let (mut h, a) = takeover(OnTakeover::Reclaim, 0.0);
    assert!(warns(&a)[0].contains("taken over"));
    assert_eq!(h.pending(), (2, d(60.0), 80.0));
    h.poll(80.0);
    h.connected(80.1);
    let a = h.down(90.0, true);
    assert!(!warns(&a).is_empty());
    assert_eq!(h.pending(), (3, d(60.0), 150.0));
    h.poll(150.0);
    h.connected(150.1);
    let a = h.down(160.0, true);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TakenOver));
    assert_eq!(GiveUpReason::TakenOver.exit_code(), 69);
}

#[test]
fn takeover_yield_gives_up_taken_over() {
    let (h, a) = takeover(OnTakeover::Yield, 0.0);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TakenOver));
    assert_eq!(h.sup.state().describe(), "gave up: taken_over");
}

#[test]
fn takeover_yield_with_wait_resumes_on_reload() {
    let (mut h, a) = takeover(OnTakeover::Yield, 600.0);
    assert_eq!(gave_up(&a), None);
    assert!(!a.contains(&Action::RunRefreshCommand));
    assert_eq!(h.sup.state().name(), "waiting_for_ticket");
    let a = h.reload(100.0, TicketInfo::default());
    assert_eq!(connects(&a), vec![0]);
}

/// A real takeover closes every socket of the session at once; the session ends
/// with whichever EOF it read first (seen against QEMU: inputs, usbredir:1).
#[test]
fn a_secondary_channel_closing_alone_is_not_a_takeover() {
    let cfg = ReconnectConfig {
        on_takeover: OnTakeover::Yield,
        ..Default::default()
    };
    let mut h = H::new(cfg, TicketInfo::default());
    let eof_on = |h: &mut H, s: f64, ch: ChannelId| {
        let i = Input::Disconnected {
            generation: h.generation,
            channel: ch,
            cause: "server_closed: server closed the connection".into(),
            shape: CloseShape {
                clean: true,
                ..CloseShape::default()
            },
        };
        h.handle(i, s)
    };
    h.up(0.0);
    let a = eof_on(&mut h, 10.0, ChannelId::new(ChannelType::Inputs, 0));
    assert!(warns(&a).is_empty());
    assert_eq!(h.pending(), (1, d(1.0), 11.0));
    h.poll(11.0);
    h.connected(11.1);
    let a = eof_on(&mut h, 20.0, ChannelId::new(ChannelType::Usbredir, 1));
    assert_eq!(gave_up(&a), None);
    assert_eq!(h.sup.state().name(), "pending");
    // The same two closes reported on main (the session saw main's EOF too) are one.
    let mut h = H::new(
        ReconnectConfig {
            on_takeover: OnTakeover::Yield,
            ..Default::default()
        },
        TicketInfo::default(),
    );
    h.up(0.0);
    eof_on(&mut h, 10.0, ChannelId::MAIN);
    h.poll(11.0);
    h.connected(11.1);
    let a = eof_on(&mut h, 20.0, ChannelId::MAIN);
    assert_eq!(gave_up(&a), Some(GiveUpReason::TakenOver));
}

#[test]
fn not_a_takeover_when_unhealthy_dirty_or_server_unreachable() {
    // Short-lived sessions: the second clean close is a plain retry.
    let mut h = H::default();
    h.up(0.0);
    h.down(2.0, true);
    h.poll(3.0);
    h.connected(3.0);
    let a = h.down(5.0, true);
    assert!(warns(&a).is_empty());
    assert_eq!(h.pending(), (2, d(4.0), 9.0));

    // Errors, not clean closes.
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    h.poll(11.0);
    h.connected(11.0);
    let a = h.down(20.0, false);
    assert!(warns(&a).is_empty());
    assert_eq!(h.pending().1, d(4.0));

    // The relink after the first close needed a retry: server was not reachable.
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, true);
    h.poll(11.0);
    h.fail(11.0, FailClass::Network);
    h.poll(15.0);
    h.connected(15.0);
    let a = h.down(30.0, true);
    assert!(warns(&a).is_empty());
    assert_eq!(h.pending(), (3, d(16.0), 46.0));
}

#[test]
fn closes_after_a_silence_on_main_need_one_more_close_to_be_a_takeover() {
    // Two closes with main busy up to the end: a takeover at the second.
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, true);
    h.poll(11.0);
    h.connected(11.1);
    assert!(warns(&h.down(20.0, true))[0].contains("taken over"));

    // A close with main busy, then one after a silence on main: the second may
    // be the first cut of a middlebox that just started cutting (chaos seed
    // 18381381220734413630), so not yet; nor after two silences.
    for first_silent in [false, true] {
        let mut h = H::default();
        h.up(0.0);
        if first_silent {
            h.idle(10.0);
        } else {
            h.down(10.0, true);
        }
        h.poll(11.0);
        h.connected(11.1);
        let a = h.idle(20.0);
        assert!(warns(&a).is_empty(), "{first_silent}: {a:?}");
        assert_eq!(h.pending(), (2, d(4.0), 24.0));
        // A third takeover-like close in the window is a takeover whatever its shape.
        h.poll(24.0);
        h.connected(24.1);
        assert!(warns(&h.idle(40.0))[0].contains("taken over"));
    }

    // A cut switched on twice under idle sessions (chaos seed
    // 10626483591465904736): two first cuts, then one after a shorter silence:
    // not yet. The next close at that silence is learnt by the daemon; a busy
    // close, or one after a silence no shorter, is a takeover.
    for last_busy in [false, true] {
        let mut h = after_two_silences();
        let a = h.shorter_idle(40.0);
        assert!(warns(&a).is_empty(), "{a:?}");
        assert_eq!(h.pending(), (3, d(16.0), 56.0));
        h.poll(56.0);
        h.connected(56.1);
        let a = if last_busy {
            h.down(70.0, true)
        } else {
            h.idle(70.0)
        };
        assert!(warns(&a)[0].contains("taken over"), "{last_busy}: {a:?}");
    }

    // Two silences, then a busy close: a takeover.
    assert!(warns(&after_two_silences().down(40.0, true))[0].contains("taken over"));
}

/// Linked, two closes after a silence on main (at 10 s and 20 s), linked again
/// at 24.1 s.
fn after_two_silences() -> H {
    let mut h = H::default();
    h.up(0.0);
    h.idle(10.0);
    h.poll(11.0);
    h.connected(11.1);
    h.idle(20.0);
    h.poll(24.0);
    h.connected(24.1);
    h
}

#[test]
fn a_server_that_went_away_took_no_session_over() {
    // A restart (the port refused a probe right after the close) before or after
    // a clean close is not the takeover pattern: plain retries.
    for order in [[true, false], [false, true], [true, true]] {
        let mut h = H::default();
        h.up(0.0);
        let a = if order[0] {
            h.gone(10.0)
        } else {
            h.down(10.0, true)
        };
        assert!(warns(&a).is_empty());
        h.poll(11.0);
        h.connected(11.1);
        let a = if order[1] {
            h.gone(20.0)
        } else {
            h.down(20.0, true)
        };
        assert!(warns(&a).is_empty(), "{order:?}: {a:?}");
        assert_eq!(h.pending(), (2, d(4.0), 24.0), "{order:?}");
    }
}

#[test]
fn a_close_that_ended_a_stall_took_no_session_over() {
    // The server had not PINGed main for longer than its interval when it closed
    // (it dropped us during a black hole, its FIN came after): not a takeover,
    // however many such closes come, and the log says why.
    let mut h = H::default();
    h.up(0.0);
    h.quiet = SERVER_QUIET_BEFORE_CLOSE;
    let mut t = 10.0;
    for n in 0..3 {
        let a = h.down(t, true);
        assert!(warns(&a).is_empty(), "close {n}: {a:?}");
        let why = transitions(&a)
            .iter()
            .map(|x| x.why.clone())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            why.contains("without a word from the server"),
            "close {n}: {a:?}"
        );
        let at = h.pending().2;
        h.poll(at);
        h.connected(at + 0.1);
        t = at + 10.0;
    }
    // Just under the server's PING gap the same closes are takeover-like again.
    let mut h = H::default();
    h.up(0.0);
    h.quiet = SERVER_QUIET_BEFORE_CLOSE - Duration::from_millis(100);
    assert!(warns(&h.down(10.0, true)).is_empty());
    h.poll(11.0);
    h.connected(11.1);
    assert!(warns(&h.down(20.0, true))[0].contains("taken over"));
}

// ---- stop and describe ----

#[test]
fn shutdown_stops_cleanly_from_any_state() {
    let mut h = H::default();
    h.up(0.0);
    h.down(10.0, false);
    let a = h.handle(Input::Shutdown, 10.5);
    assert_eq!(a.last(), Some(&Action::Stop));
    assert_eq!(h.sup.state(), &State::Stopped);
    assert_eq!(h.sup.next_deadline(), None);
    assert!(h.poll(11.0).is_empty());
    assert!(h.connected(11.0).is_empty());
}

#[test]
fn exit_codes_follow_the_contract() {
    let table = [
        (GiveUpReason::RetriesExhausted, 69),
        (GiveUpReason::ReconnectDisabled, 69),
        (GiveUpReason::TakenOver, 69),
        (GiveUpReason::OneShotConsumed, 77),
        (GiveUpReason::TicketExpired { valid_until: 0 }, 77),
        (GiveUpReason::TicketRejected, 77),
        (GiveUpReason::ProtocolError { code: Some(2) }, 1),
        (GiveUpReason::ProtocolError { code: None }, 1),
        (GiveUpReason::TlsVerification, 78),
        (GiveUpReason::BadConfig, 78),
    ];
    for (r, code) in table {
        assert_eq!(r.exit_code(), code, "{r}");
    }
}

#[test]
fn utc_formatting_is_total() {
    assert_eq!(format_unix_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_unix_utc(-5), "unix time -5");
    assert_eq!(format_unix_utc(i64::MAX), format!("unix time {}", i64::MAX));
    assert_eq!(format_unix_utc(253_402_300_799), "9999-12-31T23:59:59Z");
}

#[test]
fn describe_is_short() {
    let mut h = H::default();
    assert_eq!(h.sup.describe(), "idle");
    h.up(0.0);
    assert_eq!(h.sup.describe(), "connected (session 1)");
    h.down(10.0, false);
    assert_eq!(h.sup.describe(), "pending: attempt 1 after 1s");
    h.poll(11.0);
    assert_eq!(h.sup.describe(), "connecting: attempt 1");
    h.connected(11.0);
    assert_eq!(h.sup.describe(), "connected (session 2); reconnects: 1");
}

// ---- the daemon's loop shape, in paused tokio time ----

#[tokio::test(start_paused = true)]
async fn paused_loop_sleeps_1_4_16_then_gives_up() {
    let origin = Instant::now();
    let now = || Now::new(Instant::now(), T0_UNIX + origin.elapsed().as_secs_f64());
    let mut sup = Supervisor::from_config(&ReconnectConfig::default(), TicketInfo::default());
    let mut inputs = Vec::new();
    let mut actions = sup.start(now());
    let mut attempts = Vec::new();
    let mut outcome = None;
    let mut down_at = None;
    loop {
        for a in actions.drain(..) {
            match a {
                // The first connect works; every retry is refused.
                Action::ConnectNow { attempt: 0 } => {
                    inputs.push(Input::Connected { generation: 1 })
                }
                Action::ConnectNow { attempt } => {
                    attempts.push((attempt, origin.elapsed()));
                    inputs.push(Input::ConnectFailed {
                        class: FailClass::Network,
                        channel: ChannelId::MAIN,
                        message: "connection refused".into(),
                    });
                }
                Action::GiveUp(r) => outcome = Some((r, origin.elapsed())),
                _ => {}
            }
        }
        if outcome.is_some() {
            break;
        }
        if let Some(i) = inputs.pop() {
            actions = sup.handle(i, now());
        } else if down_at.is_none() && sup.state().name() == "connected" {
            tokio::time::sleep(Duration::from_secs(100)).await;
            down_at = Some(origin.elapsed());
            let i = Input::Disconnected {
                generation: 1,
                channel: ChannelId::MAIN,
                cause: "connection reset by peer".into(),
                shape: CloseShape::default(),
            };
            actions = sup.handle(i, now());
        } else if let Some(dl) = sup.next_deadline() {
            tokio::time::sleep_until(dl).await;
            actions = sup.poll(now());
        } else {
            panic!("stuck in {:?}", sup.state());
        }
    }
    let (reason, end) = outcome.expect("gave up");
    assert_eq!(reason, GiveUpReason::RetriesExhausted);
    let down = down_at.expect("disconnected");
    let rel: Vec<(u32, f64)> = attempts
        .iter()
        .map(|(a, t)| (*a, (*t - down).as_secs_f64()))
        .collect();
    // Retries at +1, +5, +21 s after the disconnect (1 + 4 + 16 s of back-off).
    let want = [(1u32, 1.0), (2, 5.0), (3, 21.0)];
    assert_eq!(rel.len(), 3, "{rel:?}");
    for ((a, t), (wa, wt)) in rel.iter().zip(want) {
        assert_eq!(*a, wa);
        assert!((t - wt).abs() < 0.01, "attempt {a} at +{t}s, want +{wt}s");
    }
    let total = (end - down).as_secs_f64();
    assert!(
        (21.0..21.01).contains(&total),
        "gave up {total}s after the disconnect"
    );
}

/// A reconnect request (SIGUSR1, the control socket) while connected relinks
/// now with a fresh budget; while a link is in progress it is answered with a
/// log line, not acted on twice.
#[test]
fn a_reconnect_request_during_a_link_is_said_and_not_doubled() {
    let mut h = H::default();
    h.start(0.0);
    let out = h.handle(Input::ReconnectNow, 0.1);
    assert!(
        matches!(&out[..], [Action::Info(t)] if t.contains("link is in progress")),
        "{out:?}"
    );
    h.connected(0.2);
    let out = h.handle(Input::ReconnectNow, 1.0);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::ConnectNow { attempt: 0 })),
        "{out:?}"
    );
}
