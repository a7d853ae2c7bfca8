//! The auto-reconnect supervisor: a sans-IO state machine that decides, from
//! session events and injected time, when to connect, when to wait and when to
//! give up. The daemon feeds it [`Input`]s, runs the [`Action`]s it returns, and
//! calls [`Supervisor::poll`] when [`Supervisor::next_deadline`] is reached
//! (the quinn-proto `handle`/`poll_timeout` shape). It never sleeps, reads a
//! clock or touches a socket.

use super::policy::{Backoff, ReconnectPolicy};
use super::reason::GiveUpReason;
use super::ticket::{format_unix_utc, TicketInfo, TicketState};
use crate::config::{OnTakeover, ReconnectConfig};
use crate::events;
use crate::time::{after, secs};
use crate::wire::{ChannelId, ChannelType};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// A session must have been up this long before its clean close can be a takeover
/// (a server closing a fresh link at once is something else).
pub const TAKEOVER_MIN_HEALTHY: Duration = Duration::from_secs(5);

/// spice-server PINGs main about every 15 s (docs/keepalive.md). A clean close
/// after main heard nothing for longer ends a stall (a black hole, a frozen
/// server dropping us once it woke or timed us out), not a healthy session
/// another client took over.
pub const SERVER_QUIET_BEFORE_CLOSE: Duration = Duration::from_secs(20);

/// What a session's end looked like, as far as the takeover rule cares.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CloseShape {
    /// EOF with no error (the server closed the socket cleanly).
    pub clean: bool,
    /// The server's address refused a connection right after the close (or a
    /// channel's relink before it): it went away, so the close was no takeover.
    pub server_gone: bool,
    /// Whether the close may have been a middlebox's idle cut.
    pub cut_like: CutLike,
    /// How long main had received nothing from the server when it closed.
    pub server_quiet: Duration,
}

/// How much a clean close looks like a middlebox's idle cut
/// (`src/daemon/idle_cut.rs` judges it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CutLike {
    /// Main was busy up to the close, was not closed by the peer, or the server
    /// went away.
    #[default]
    No,
    /// Main, closed by the peer, had been silent both ways for 1 s or more: a
    /// cut cannot be ruled out (nor a takeover of an idle session). The first
    /// cut after a middlebox starts cutting, or changes its timeout, comes after
    /// any silence and with any channel silent longer, so only the silence on
    /// main is weighed.
    Maybe,
    /// A cut's shape, after less silence on main than the last close that may
    /// have been a cut (within 5 minutes): what a middlebox's second cut looks
    /// like, the first having come after whatever silence the session had.
    Shorter,
}

/// Slack after `refresh_timeout_secs` before the supervisor stops waiting for the
/// daemon to report on the refresh command.
const REFRESH_GRACE: Duration = Duration::from_secs(5);

/// The injected time: a monotonic instant for every timer, and the wall clock
/// (unix seconds) for ticket expiry only. `mono` is a tokio `Instant` so paused
/// tokio time drives the supervisor directly (`sleep_until(next_deadline)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Now {
    pub mono: Instant,
    pub unix: f64,
}

impl Now {
    pub fn new(mono: Instant, unix: f64) -> Self {
        Now { mono, unix }
    }

    /// Reads both clocks (for the daemon; tests build `Now` by hand).
    pub fn system() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Now {
            mono: Instant::now(),
            unix,
        }
    }
}

/// How a connect attempt failed, as the daemon classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailClass {
    /// Refused, timeout, reset, DNS, proxy, TLS handshake I/O: transient, retried.
    Network,
    /// Link result 8 BAD_CONNECTION_ID: start again from main (counts as an attempt).
    BadConnectionId,
    /// Link result 7 PERMISSION_DENIED: the ticket is dead for good.
    PermissionDenied,
    /// Link result 2/3/4 (invalid magic, invalid data, version mismatch), or `None`: a
    /// malformed message outside the link (no link result). A bug: stop.
    Protocol { code: Option<u32> },
    /// Certificate verification failed: bad CA, name or host-subject mismatch.
    TlsVerification,
    /// The settings cannot work (e.g. NEED_SECURED without a tls-port).
    Config,
}

impl std::fmt::Display for FailClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailClass::Network => f.write_str("network"),
            FailClass::BadConnectionId => f.write_str("link result BAD_CONNECTION_ID (8)"),
            FailClass::PermissionDenied => f.write_str("link result PERMISSION_DENIED (7)"),
            FailClass::Protocol { code: Some(code) } => {
                write!(f, "link result {code} (protocol error)")
            }
            FailClass::Protocol { code: None } => f.write_str("protocol error"),
            FailClass::TlsVerification => f.write_str("TLS verification"),
            FailClass::Config => f.write_str("configuration"),
        }
    }
}

/// What the daemon tells the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The session `generation` is up (main linked, MAIN_INIT seen).
    Connected { generation: u64 },
    /// A channel of session `generation` went down and the session with it. Any
    /// number of these per generation; only the first counts.
    Disconnected {
        generation: u64,
        channel: ChannelId,
        /// One line, no secrets.
        cause: String,
        shape: CloseShape,
    },
    /// Session `generation` ended because a middlebox cuts idle flows (every
    /// channel closed after the same silence, seen twice). Not a takeover: the
    /// daemon lowers the keepalive interval and the session relinks at once.
    IdleCut { generation: u64, idle: Duration },
    /// The connect attempt started by `ConnectNow` failed before `Connected`.
    ConnectFailed {
        class: FailClass,
        channel: ChannelId,
        message: String,
    },
    /// Fresh settings: SIGHUP, a new .vv, or the refresh command's output.
    Reload { ticket: TicketInfo },
    /// The refresh command failed or timed out (the daemon killed it).
    RefreshFailed { message: String },
    /// The server moved session `generation` to another host (a live
    /// migration): relink there at once, spending nothing of the budget.
    Migrated { generation: u64, to: String },
    /// SIGTERM/SIGINT.
    Shutdown,
    /// An operator asks for a fresh link now (SIGUSR1): a fresh budget, the same
    /// ticket rules.
    ReconnectNow,
    /// A readiness check (a TCP connect, never a link) found the server
    /// accepting connections again: a retry that is waiting out a back-off
    /// delay starts now. The attempt counts as usual.
    ServerReady,
}

/// What the supervisor asks of the daemon, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a connect attempt now (main link, connection id 0). `attempt` 0 is a
    /// first connect (start or fresh ticket); 1.. are retries of the cluster.
    ConnectNow {
        attempt: u32,
    },
    /// A state change; log it at info level.
    Transition(Transition),
    Info(String),
    Warn(Warning),
    /// Run `refresh_command`; answer with `Input::Reload` or `Input::RefreshFailed`.
    RunRefreshCommand,
    /// Final: disconnect and exit with `reason.exit_code()`.
    GiveUp(GiveUpReason),
    /// Final: disconnect cleanly and exit 0.
    Stop,
}

/// A warning for the log; `event` is the [`crate::events`] id an operator
/// searches for, when it is one of those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub text: String,
    pub event: Option<&'static str>,
}

impl Warning {
    fn plain(text: String) -> Action {
        Action::Warn(Warning { text, event: None })
    }

    fn event(id: &'static str, text: String) -> Action {
        Action::Warn(Warning {
            text,
            event: Some(id),
        })
    }
}

/// One state change, for the log: `connected -> pending: attempt 1 after 1s (main: EOF)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: String,
    /// The new state's [`State::name`] (`to` describes it for people).
    pub to_state: &'static str,
    pub why: String,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} ({})", self.from, self.to, self.why)
    }
}

/// Where the supervisor is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Built, `start` not called yet.
    Idle,
    /// A connect attempt is running.
    Connecting { attempt: u32 },
    /// Session `generation` is up since `since`.
    Connected { generation: u64, since: Instant },
    /// Waiting to start retry `attempt` at `next_at`.
    Pending {
        attempt: u32,
        next_at: Instant,
        delay: Duration,
    },
    /// The ticket rules (or a yield) forbid a retry; waiting for a fresh ticket
    /// until `until`, or longer while the refresh command runs (`refresh_until`).
    WaitingForTicket {
        reason: GiveUpReason,
        until: Instant,
        refresh_until: Option<Instant>,
    },
    /// Final.
    GaveUp { reason: GiveUpReason },
    /// Final: clean stop.
    Stopped,
}

impl State {
    /// One word for metrics and reports.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting { .. } => "connecting",
            State::Connected { .. } => "connected",
            State::Pending { .. } => "pending",
            State::WaitingForTicket { .. } => "waiting_for_ticket",
            State::GaveUp { .. } => "gave_up",
            State::Stopped => "stopped",
        }
    }

    /// A short line for logs and systemd STATUS.
    pub fn describe(&self) -> String {
        match self {
            State::Idle | State::Stopped => self.name().into(),
            State::Connecting { attempt: 0 } => "connecting".into(),
            State::Connecting { attempt } => format!("connecting: attempt {attempt}"),
            State::Connected { generation, .. } => format!("connected (session {generation})"),
            State::Pending { attempt, delay, .. } => {
                format!("pending: attempt {attempt} after {}", fmt_dur(*delay))
            }
            State::WaitingForTicket {
                reason,
                refresh_until,
                ..
            } => {
                let refresh = if refresh_until.is_some() {
                    ", refresh command running"
                } else {
                    ""
                };
                format!("waiting for a fresh ticket ({}{refresh})", reason.name())
            }
            State::GaveUp { reason } => format!("gave up: {reason}"),
        }
    }

    /// GaveUp or Stopped: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, State::GaveUp { .. } | State::Stopped)
    }
}

/// One disconnect cluster: shares one attempt budget.
#[derive(Debug)]
struct Cluster {
    start: Instant,
    backoff: Backoff,
}

/// The reconnect decisions. See the module docs and docs/reconnect.md.
#[derive(Debug)]
pub struct Supervisor {
    policy: ReconnectPolicy,
    wait_for_ticket: Duration,
    has_refresh: bool,
    refresh_timeout: Duration,
    on_takeover: OnTakeover,
    state: State,
    ticket: TicketState,
    cluster: Option<Cluster>,
    /// Clean closes of healthy sessions that were followed by an immediately
    /// successful link (confirmed takeover-like closes), newest last.
    takeover_closes: VecDeque<Instant>,
    /// The last disconnect was a clean close of a healthy session; confirmed if
    /// the next attempt links at once.
    suspect_close: Option<Instant>,
    /// The pending retry may be brought forward by [`Input::ServerReady`].
    advance_ok: bool,
    /// Refresh command starts, newest last (bounded per cluster window).
    refresh_runs: VecDeque<Instant>,
    /// A Reload arrived during a connect attempt: its failure gets a fresh try.
    reload_pending: bool,
    /// A session came up with the current settings (since start or the last
    /// Reload): opens the gate of max_attempts = "unlimited".
    established: bool,
    connects: u32,
    /// The last time seen, to map wall-clock deadlines onto the monotonic clock.
    clock: Option<Now>,
}

impl Supervisor {
    pub fn new(policy: ReconnectPolicy, cfg: &ReconnectConfig, ticket: TicketInfo) -> Self {
        Supervisor {
            policy,
            wait_for_ticket: secs(cfg.wait_for_ticket_secs),
            has_refresh: !cfg.refresh_command.is_empty(),
            refresh_timeout: secs(cfg.refresh_timeout_secs),
            on_takeover: cfg.on_takeover,
            state: State::Idle,
            ticket: TicketState {
                info: ticket,
                used: false,
                enforce_expiry: true,
                past_at_load: false,
                warned: false,
            },
            cluster: None,
            takeover_closes: VecDeque::new(),
            suspect_close: None,
            advance_ok: false,
            refresh_runs: VecDeque::new(),
            reload_pending: false,
            established: false,
            connects: 0,
            clock: None,
        }
    }

    /// `new` with the policy built from the same config.
    pub fn from_config(cfg: &ReconnectConfig, ticket: TicketInfo) -> Self {
        Supervisor::new(ReconnectPolicy::from_config(cfg), cfg, ticket)
    }

    /// The first connect. Warns (and still tries once) if the ticket already expired.
    pub fn start(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::Idle {
            return out;
        }
        self.clock = Some(now);
        let (t, warn) = TicketState::load(self.ticket.info, now.unix, None);
        self.ticket = t;
        out.extend(warn.map(|w| Warning::event(events::TICKET_EXPIRED, w)));
        self.connect_now(0, "start".into(), &mut out);
        out
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Sessions re-established after the first one.
    pub fn reconnect_count(&self) -> u32 {
        self.connects.saturating_sub(1)
    }

    /// Attempts one disconnect cluster may use now; `None`: unlimited (status
    /// and metrics: "reconnecting 2/3").
    pub fn attempt_budget(&self) -> Option<u32> {
        self.policy.budget(self.established)
    }

    /// The current ticket's `ticket-valid-until` (unix seconds), if any.
    pub fn ticket_valid_until(&self) -> Option<i64> {
        self.ticket.info.valid_until
    }

    /// `state().describe()` plus counters: for systemd STATUS.
    pub fn describe(&self) -> String {
        match self.reconnect_count() {
            0 => self.state.describe(),
            n => format!("{}; reconnects: {n}", self.state.describe()),
        }
    }

    /// When `poll` must next be called; `None`: only an input can change anything.
    /// May lie in the past (then poll at once).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.state.is_final() || self.state == State::Idle {
            return None;
        }
        let mut dl = self
            .ticket
            .warning_unix()
            .and_then(|u| self.wall_to_mono(u));
        let mut add = |t: Option<Instant>| {
            if let Some(t) = t {
                dl = Some(dl.map_or(t, |d: Instant| d.min(t)));
            }
        };
        match &self.state {
            State::Pending { next_at, .. } => {
                add(Some(*next_at));
                add(self.ticket.expiry_unix().and_then(|u| self.wall_to_mono(u)));
            }
            State::WaitingForTicket {
                until,
                refresh_until,
                ..
            } => add(Some(wait_deadline(*until, *refresh_until))),
            _ => {}
        }
        dl
    }

    /// Timers: the expiry warning, retry time, expiry while pending, end of a wait.
    pub fn poll(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state.is_final() || self.state == State::Idle {
            return out;
        }
        self.clock = Some(now);
        out.extend(
            self.ticket
                .poll_warning(now.unix)
                .map(|w| Warning::event(events::TICKET_EXPIRING, w)),
        );
        match self.state.clone() {
            State::Pending {
                attempt, next_at, ..
            } => {
                if let Some(v) = self.ticket.expired(now.unix) {
                    let why = format!(
                        "ticket-valid-until {} reached while waiting to reconnect",
                        format_unix_utc(v)
                    );
                    self.ticket_give_up(
                        GiveUpReason::TicketExpired { valid_until: v },
                        why,
                        now,
                        &mut out,
                    );
                } else if now.mono >= next_at {
                    self.connect_now(attempt, "retry time reached".into(), &mut out);
                }
            }
            State::WaitingForTicket {
                reason,
                until,
                refresh_until,
            } if now.mono >= wait_deadline(until, refresh_until) => {
                let why = if refresh_until.is_some() {
                    "no fresh ticket: the refresh command did not report back".to_string()
                } else {
                    format!("no fresh ticket within {}", fmt_dur(self.wait_for_ticket))
                };
                self.give_up(reason, why, &mut out);
            }
            _ => {}
        }
        out
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state.is_final() {
            return out;
        }
        self.clock = Some(now);
        match input {
            Input::Shutdown => {
                self.set_state(State::Stopped, "shutdown requested".into(), &mut out);
                out.push(Action::Stop);
            }
            Input::Connected { generation } => self.on_connected(generation, now, &mut out),
            Input::Disconnected {
                generation,
                channel,
                cause,
                shape,
            } => self.on_disconnected(generation, channel, &cause, shape, now, &mut out),
            Input::IdleCut { generation, idle } => {
                self.on_idle_cut(generation, idle, now, &mut out)
            }
            Input::ConnectFailed {
                class,
                channel,
                message,
            } => self.on_connect_failed(class, channel, &message, now, &mut out),
            Input::Reload { ticket } => self.on_reload(ticket, now, &mut out),
            Input::ReconnectNow => self.on_reconnect_now(now, &mut out),
            Input::ServerReady => {
                if let State::Pending {
                    attempt, next_at, ..
                } = self.state
                {
                    if self.advance_ok && now.mono < next_at {
                        self.connect_now(
                            attempt,
                            "the server accepts connections again".into(),
                            &mut out,
                        );
                    }
                }
            }
            Input::Migrated { generation, to } => {
                if matches!(self.state, State::Connected { generation: g, .. } if g == generation) {
                    self.suspect_close = None;
                    self.connect_now(0, format!("following the live migration to {to}"), &mut out);
                }
            }
            Input::RefreshFailed { message } => self.on_refresh_failed(&message, now, &mut out),
        }
        out
    }

    fn on_connected(&mut self, generation: u64, now: Now, out: &mut Vec<Action>) {
        let State::Connecting { attempt } = self.state else {
            return; // stale: no attempt is running
        };
        self.reload_pending = false;
        self.established = true;
        self.ticket.used = true;
        if self.ticket.past_at_load && !self.ticket.enforce_expiry {
            out.push(Warning::event(
                events::CLOCK_SKEW,
                "the server accepted a ticket our clock calls expired: check the clock; \
                 ticket-valid-until is ignored for this ticket"
                    .into(),
            ));
            // Stop repeating this on later reconnects with the same ticket.
            self.ticket.past_at_load = false;
        }
        if let Some(t) = self.suspect_close.take() {
            // The server was reachable at once after a clean close: takeover-like.
            self.takeover_closes.push_back(t);
        }
        self.connects = self.connects.saturating_add(1);
        let why = match attempt {
            0 => "linked".to_string(),
            n => format!("linked on attempt {n}"),
        };
        self.set_state(
            State::Connected {
                generation,
                since: now.mono,
            },
            why,
            out,
        );
    }

    fn on_disconnected(
        &mut self,
        generation: u64,
        channel: ChannelId,
        cause: &str,
        shape: CloseShape,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let State::Connected {
            generation: current,
            since,
        } = self.state
        else {
            return; // a later event of a session already counted (a storm) or stale
        };
        if generation != current {
            return;
        }
        let healthy = now.mono.saturating_duration_since(since);
        let stalled = shape.server_quiet >= SERVER_QUIET_BEFORE_CLOSE;
        let clean = match (shape.clean, shape.server_gone, stalled) {
            (true, true, _) => ", clean close; the server's address refused connections".into(),
            (true, false, true) => format!(
                ", clean close after {} without a word from the server",
                fmt_dur(shape.server_quiet)
            ),
            (true, false, false) => ", clean close".into(),
            _ => String::new(),
        };
        let why = format!("{channel}: {cause}{clean}, after {} up", fmt_dur(healthy));

        if self.no_retry(&why, now, out) {
            return;
        }

        // A takeover closes every socket of the session at once and any channel's
        // EOF may be read first (measured: inputs, usbredir:1...). The session
        // waits for main's own EOF and the daemon then reports the close on main,
        // so "main closed cleanly" means "the server ended the whole session";
        // one secondary channel closing alone is not a takeover. Nor is a close
        // after which the server stopped listening (it went away), or one that
        // ended a stall: a session taken over was healthy up to its close.
        let takeover_like = shape.clean
            && !shape.server_gone
            && !stalled
            && channel.ty == ChannelType::Main
            && healthy >= TAKEOVER_MIN_HEALTHY;
        self.suspect_close = takeover_like.then_some(now.mono);
        if takeover_like {
            let window = self.policy.cluster_window();
            while self
                .takeover_closes
                .front()
                .is_some_and(|&t| now.mono.saturating_duration_since(t) >= window)
            {
                self.takeover_closes.pop_front();
            }
            // A close after a silence on main may be one of a middlebox's idle
            // cuts: two of them after the same silence are learnt as such before
            // they get here, but the first cut after the middlebox starts (or
            // changes its timeout) comes after any silence, so two closes are
            // needed after it. It confirms a takeover only after two earlier
            // takeover-like closes; a takeover of an idle session then costs the
            // other client one more kick (chaos seed 18381381220734413630: a cut
            // switched on under a session took it for a takeover). A cut's shape
            // after a shorter silence than the close before it never confirms
            // one: a cut switched on twice in the window leaves two such first
            // cuts before the one that repeats (chaos seed
            // 10626483591465904736). A takeover's silences have no order, so
            // this holds a takeover back only while they keep getting shorter,
            // within the cluster's budget.
            let earlier = self.takeover_closes.len();
            let confirmed = match shape.cut_like {
                CutLike::No => earlier >= 1,
                CutLike::Maybe => earlier >= 2,
                CutLike::Shorter => false,
            };
            if confirmed {
                self.on_takeover(why, now, out);
                return;
            }
        }
        self.schedule_retry(
            Duration::ZERO,
            GiveUpReason::RetriesExhausted,
            why,
            now,
            out,
        );
    }

    fn on_reconnect_now(&mut self, now: Now, out: &mut Vec<Action>) {
        match self.state {
            State::Idle => return,
            State::Connecting { .. } => {
                // Said so: the operator's request is not silently lost.
                out.push(Action::Info(
                    "reconnect requested while a link is in progress: that link carries on".into(),
                ));
                return;
            }
            _ => {}
        }
        if let Some(reason) = self.ticket_forbids_retry(now) {
            out.push(Warning::plain(format!(
                "reconnect requested, but the ticket forbids it ({}): a fresh .vv is needed",
                reason.name()
            )));
            return;
        }
        self.cluster = None;
        self.takeover_closes.clear();
        self.suspect_close = None;
        self.connect_now(0, "reconnect requested".into(), out);
    }

    fn on_idle_cut(&mut self, generation: u64, idle: Duration, now: Now, out: &mut Vec<Action>) {
        match self.state {
            State::Connected {
                generation: current,
                ..
            } if current == generation => {}
            _ => return,
        }
        let why = format!(
            "every channel closed after {} of silence, twice: a middlebox cuts idle flows",
            fmt_dur(idle)
        );
        // Those closes were no takeover.
        self.takeover_closes.clear();
        self.suspect_close = None;
        if self.no_retry(&why, now, out) {
            return;
        }
        self.connect_now(0, format!("{why}; relinking at once"), out);
    }

    /// The second clean close of a healthy session within the window: another
    /// client keeps taking the session. Back off hard or yield.
    fn on_takeover(&mut self, why: String, now: Now, out: &mut Vec<Action>) {
        let why = format!("{why}; another client appears to have taken the session over");
        match self.on_takeover {
            OnTakeover::Yield => {
                out.push(Warning::plain(
                    "session taken over by another client; yielding (on_takeover = \"yield\")"
                        .into(),
                ));
                self.suspect_close = None;
                self.ticket_give_up(GiveUpReason::TakenOver, why, now, out);
            }
            OnTakeover::Reclaim => {
                out.push(Warning::plain(format!(
                    "session taken over by another client; reclaiming it after {} \
                     (on_takeover = \"reclaim\")",
                    fmt_dur(self.policy.takeover_delay())
                )));
                let delay = self.policy.takeover_delay();
                self.schedule_retry(delay, GiveUpReason::TakenOver, why, now, out);
            }
        }
    }

    fn on_connect_failed(
        &mut self,
        class: FailClass,
        channel: ChannelId,
        message: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let State::Connecting { .. } = self.state else {
            return; // stale
        };
        let why = format!("{channel}: {class}: {message}");
        self.suspect_close = None;
        if self.ticket.past_at_load {
            // A ticket past at load got its one try and failed: our clock judges it now.
            self.ticket.enforce_expiry = true;
        }
        if std::mem::take(&mut self.reload_pending) {
            self.cluster = None;
            self.connect_now(
                0,
                format!("{why}; retrying at once with the reloaded settings"),
                out,
            );
            return;
        }
        match class {
            FailClass::Protocol { code } => {
                self.give_up(GiveUpReason::ProtocolError { code }, why, out);
            }
            FailClass::TlsVerification => self.give_up(GiveUpReason::TlsVerification, why, out),
            FailClass::Config => self.give_up(GiveUpReason::BadConfig, why, out),
            FailClass::PermissionDenied => {
                self.ticket.used = true;
                if let Some(v) = self.ticket.still_valid(now.unix) {
                    out.push(Warning::event(events::CLOCK_SKEW, skew_warning(v)));
                }
                self.ticket_give_up(GiveUpReason::TicketRejected, why, now, out);
            }
            FailClass::Network | FailClass::BadConnectionId => {
                if class == FailClass::BadConnectionId {
                    // The main link got past authentication: the ticket was used.
                    self.ticket.used = true;
                }
                if let Some(reason) = self.ticket_forbids_retry(now) {
                    self.ticket_give_up(reason, why, now, out);
                } else if !self.policy.enabled() {
                    self.give_up(GiveUpReason::ReconnectDisabled, why, out);
                } else {
                    self.schedule_retry(
                        Duration::ZERO,
                        GiveUpReason::RetriesExhausted,
                        why,
                        now,
                        out,
                    );
                }
            }
        }
    }

    fn on_reload(&mut self, info: TicketInfo, now: Now, out: &mut Vec<Action>) {
        let (t, warn) = TicketState::load(info, now.unix, Some(&self.ticket));
        self.ticket = t;
        out.extend(warn.map(|w| Warning::event(events::TICKET_EXPIRED, w)));
        // Fresh settings are an operator's (or broker's) word: a fresh budget,
        // and the gate closes again until they have brought a session up.
        self.cluster = None;
        self.established = false;
        self.takeover_closes.clear();
        self.suspect_close = None;
        match self.state {
            State::Idle => {}
            // The operator (or broker) says "use this now": the running session is
            // replaced by one made with the new settings.
            State::Connected { .. } => {
                self.connect_now(
                    0,
                    "fresh settings loaded: reconnecting with them".into(),
                    out,
                );
            }
            State::Connecting { .. } => {
                self.reload_pending = true;
                out.push(Action::Info(
                    "new settings loaded during a connect attempt; if it fails they get a fresh try"
                        .into(),
                ));
            }
            State::Pending { .. } | State::WaitingForTicket { .. } => {
                self.connect_now(0, "fresh settings loaded".into(), out);
            }
            State::GaveUp { .. } | State::Stopped => {}
        }
    }

    fn on_refresh_failed(&mut self, message: &str, now: Now, out: &mut Vec<Action>) {
        let State::WaitingForTicket {
            reason,
            until,
            refresh_until: Some(_),
        } = self.state
        else {
            return;
        };
        let why = format!("refresh command failed: {message}");
        out.push(Warning::plain(why.clone()));
        if now.mono >= until {
            self.give_up(reason, why, out);
        } else {
            self.set_state(
                State::WaitingForTicket {
                    reason,
                    until,
                    refresh_until: None,
                },
                why,
                out,
            );
        }
    }

    /// Gives up (or waits for a ticket) when the ticket rules or a disabled
    /// policy forbid a retry; true when it did.
    fn no_retry(&mut self, why: &str, now: Now, out: &mut Vec<Action>) -> bool {
        if let Some(reason) = self.ticket_forbids_retry(now) {
            self.ticket_give_up(reason, why.to_string(), now, out);
            return true;
        }
        if !self.policy.enabled() {
            self.give_up(GiveUpReason::ReconnectDisabled, why.to_string(), out);
            return true;
        }
        false
    }

    /// The ticket reason that forbids any retry now, if one does.
    fn ticket_forbids_retry(&self, now: Now) -> Option<GiveUpReason> {
        if self.ticket.info.single_use && self.ticket.used {
            return Some(GiveUpReason::OneShotConsumed);
        }
        self.ticket
            .expired(now.unix)
            .map(|v| GiveUpReason::TicketExpired { valid_until: v })
    }

    /// Next attempt of the current cluster (or of a new one when the last began a
    /// window ago), at least `min_delay` from now; `exhausted` when none is left.
    fn schedule_retry(
        &mut self,
        min_delay: Duration,
        exhausted: GiveUpReason,
        why: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let window = self.policy.cluster_window();
        let fresh = self
            .cluster
            .as_ref()
            .is_none_or(|c| now.mono.saturating_duration_since(c.start) >= window);
        if fresh {
            self.cluster = Some(Cluster {
                start: now.mono,
                backoff: self.policy.backoff(),
            });
        }
        let budget = self.policy.budget(self.established);
        let next = self.cluster.as_mut().and_then(|c| {
            if budget.is_some_and(|b| c.backoff.used() >= b) {
                return None;
            }
            let d = c.backoff.next_delay()?;
            Some((c.backoff.used(), d))
        });
        match next {
            Some((attempt, delay)) => {
                self.advance_ok = min_delay.is_zero();
                let delay = delay.max(min_delay);
                let next_at = after(now.mono, delay);
                self.set_state(
                    State::Pending {
                        attempt,
                        next_at,
                        delay,
                    },
                    why,
                    out,
                );
            }
            None => {
                if let Some(v) = self.ticket.still_valid(now.unix) {
                    out.push(Warning::event(events::CLOCK_SKEW, skew_warning(v)));
                }
                let used = self.cluster.as_ref().map_or(0, |c| c.backoff.used());
                let gate = if budget.is_some() && self.policy.budget(true).is_none() {
                    " (max_attempts = \"unlimited\" applies once a session has come up \
                     with these settings)"
                } else {
                    ""
                };
                let why =
                    format!("{why}; all {used} attempts of this disconnect cluster used{gate}");
                self.give_up(exhausted, why, out);
            }
        }
    }

    /// The ticket rules (or a yield) forbid a retry: refresh and/or wait for a
    /// fresh ticket if configured, else give up now.
    fn ticket_give_up(
        &mut self,
        reason: GiveUpReason,
        why: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let GiveUpReason::TicketExpired { valid_until } = reason {
            out.push(Warning::event(
                events::TICKET_EXPIRED,
                format!(
                    "the ticket expired at {} by our clock: no retry with it; a fresh .vv is needed",
                    format_unix_utc(valid_until)
                ),
            ));
        }
        if !self.policy.enabled() {
            self.give_up(reason, why, out);
            return;
        }
        let refresh = self.has_refresh && reason.is_ticket() && self.refresh_allowed(now);
        if !refresh && self.wait_for_ticket.is_zero() {
            self.give_up(reason, why, out);
            return;
        }
        let until = after(now.mono, self.wait_for_ticket);
        let refresh_until = refresh.then(|| after(now.mono, self.refresh_timeout + REFRESH_GRACE));
        self.set_state(
            State::WaitingForTicket {
                reason,
                until,
                refresh_until,
            },
            why,
            out,
        );
        if refresh {
            self.refresh_runs.push_back(now.mono);
            out.push(Action::RunRefreshCommand);
        }
    }

    /// At most `max_attempts` (at least 1; the default 3 for "unlimited") refresh
    /// runs per cluster window, so a
    /// broker handing out bad tickets cannot drive a fast loop.
    fn refresh_allowed(&mut self, now: Now) -> bool {
        let window = self.policy.cluster_window();
        while self
            .refresh_runs
            .front()
            .is_some_and(|&t| now.mono.saturating_duration_since(t) >= window)
        {
            self.refresh_runs.pop_front();
        }
        self.refresh_runs.len() < self.policy.finite_budget().max(1) as usize
    }

    fn give_up(&mut self, reason: GiveUpReason, why: String, out: &mut Vec<Action>) {
        self.set_state(State::GaveUp { reason }, why, out);
        out.push(Action::GiveUp(reason));
    }

    /// Whether a readiness check may bring the pending retry forward: a retry
    /// on the back-off, not one held back on purpose (a takeover's delay).
    pub fn wants_probe(&self) -> bool {
        self.advance_ok && matches!(self.state, State::Pending { .. })
    }

    fn connect_now(&mut self, attempt: u32, why: String, out: &mut Vec<Action>) {
        self.set_state(State::Connecting { attempt }, why, out);
        out.push(Action::ConnectNow { attempt });
    }

    fn set_state(&mut self, to: State, why: String, out: &mut Vec<Action>) {
        out.push(Action::Transition(Transition {
            from: self.state.name(),
            to: to.describe(),
            to_state: to.name(),
            why,
        }));
        self.state = to;
    }

    /// The monotonic instant at which the wall clock reads `unix`, by the last
    /// `Now` seen. Re-derived at every poll, so a wall-clock step is caught there.
    fn wall_to_mono(&self, unix: f64) -> Option<Instant> {
        let c = self.clock?;
        let ahead = unix - c.unix;
        if ahead.is_nan() {
            return None;
        }
        if ahead <= 0.0 {
            return Some(c.mono);
        }
        Some(after(c.mono, secs(ahead)))
    }
}

fn wait_deadline(until: Instant, refresh_until: Option<Instant>) -> Instant {
    refresh_until.map_or(until, |r| r.max(until))
}

fn skew_warning(valid_until: i64) -> String {
    format!(
        "the ticket should still be valid until {} by our clock: \
         the clocks may be skewed, or the server revoked the ticket",
        format_unix_utc(valid_until)
    )
}

use crate::time::fmt_dur;
