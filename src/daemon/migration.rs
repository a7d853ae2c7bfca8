//! Following a live migration, without I/O: what the daemon does when the
//! running session announces one, in either of spice-server's two ways.
//!
//! - **Switch-host** (MAIN_MIGRATE_SWITCH_HOST, after the move): build the
//!   target's settings, then relink the whole session there.
//! - **Semi-seamless** (MAIN_MIGRATE_BEGIN, before the move): build the target's
//!   settings, link main and every channel at the target with the session's id
//!   (the target parks those links), tell the source (MIGRATE_CONNECTED or
//!   MIGRATE_CONNECT_ERROR); on the source's MIGRATE_END the session moves onto
//!   the parked links, on MIGRATE_CANCEL they are dropped. A target that cannot
//!   be linked leaves the session on the source, and the server falls back to
//!   switch-host when the move completes.
//!
//! The core turns each [`Order`] into an effect or a supervisor input.

use super::core::Loaded;
use crate::session::MigrationTarget;
use crate::vv::ConnectionSettings;
use crate::wire::ChannelId;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// spice-server waits 10 s (`MIGRATE_TIMEOUT`, reds.cpp) for MIGRATE_CONNECTED
/// or MIGRATE_CONNECT_ERROR after it sent MIGRATE_BEGIN, then falls back to
/// switch-host. Building the target's settings and linking there share this
/// one budget, counted from the announcement's arrival; the other 3 s are the
/// margin for the announcement's and the answer's way and a busy loop.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(7);

/// What the core must do next. Every result a plan waits for names the plan
/// (`plan`): a result of a plan that is gone (cancelled, replaced, timed out)
/// acts on nothing.
#[derive(Debug)]
pub enum Order {
    /// Build the TLS material for the target's settings off the loop, then call
    /// [`Migrations::ready`].
    Prepare {
        plan: u64,
        settings: Box<ConnectionSettings>,
    },
    /// Link main and `channels` at the target with `session_id` by `deadline`
    /// (the shell keeps the links), then call [`Migrations::prelinked`].
    Prelink {
        plan: u64,
        generation: u64,
        target: Box<Loaded>,
        session_id: u32,
        channels: Vec<ChannelId>,
        deadline: Instant,
    },
    /// Answer MIGRATE_BEGIN on the source session's main.
    Reply { generation: u64, linked: bool },
    /// The links made at the target for `plan` are not needed any more.
    DropPrelinked { plan: u64 },
    /// Move session `generation` to the target now, spending no attempt;
    /// `adopt`: over the links made there ahead of the move (for `plan`).
    /// Only while that session is the current one.
    Follow {
        plan: u64,
        generation: u64,
        target: Box<Loaded>,
        adopt: bool,
    },
    /// The source session `generation` ended and its target cannot be used: a
    /// loss. Only while that session is the current one.
    Lost { generation: u64, cause: String },
}

#[derive(Debug)]
enum Stage {
    /// Switch-host: the target's settings are being built.
    SwitchHost,
    /// Semi-seamless: the target's settings are being built; the server must
    /// have its answer by `answer_by`.
    Preparing {
        session_id: u32,
        channels: Vec<ChannelId>,
        answer_by: Instant,
    },
    /// Semi-seamless: linking at the target. `moved`: the server has moved the
    /// VM already (it fell back to SWITCH_HOST): follow as soon as linked.
    Prelinking {
        target: Box<Loaded>,
        moved: bool,
        answer_by: Instant,
    },
    /// Semi-seamless: linked at the target, waiting for the source's word.
    Prelinked(Box<Loaded>),
}

#[derive(Debug)]
struct Migration {
    /// This plan's number: results name it.
    plan: u64,
    /// The session that announced it (on the source).
    generation: u64,
    /// That session has ended since.
    ended: bool,
    stage: Stage,
}

/// The migration in flight, if any (one at a time, as spice-server runs them).
#[derive(Debug, Default)]
pub struct Migrations {
    current: Option<Migration>,
    /// The last plan number handed out.
    plans: u64,
}

/// The target's settings: the current ones with the announced host, ports and
/// certificate subject (the ticket and the CA stay).
pub fn target_settings(current: &ConnectionSettings, t: MigrationTarget) -> ConnectionSettings {
    let mut s = current.clone();
    s.host = t.host;
    s.port = t.port;
    s.tls_port = t.tls_port;
    if t.subject.is_some() {
        s.host_subject = t.subject;
    }
    s
}

fn describe(s: &ConnectionSettings) -> String {
    format!(
        "{} (port {}, tls-port {})",
        s.shown_host(),
        s.port.map_or("none".into(), |p| p.to_string()),
        s.tls_port.map_or("none".into(), |p| p.to_string())
    )
}

impl Migrations {
    fn start(&mut self, generation: u64, stage: Stage) -> u64 {
        self.plans += 1;
        self.current = Some(Migration {
            plan: self.plans,
            generation,
            ended: false,
            stage,
        });
        self.plans
    }

    /// The plan `plan`, if it is the one in flight.
    fn is_current(&self, plan: u64) -> bool {
        self.current.as_ref().is_some_and(|m| m.plan == plan)
    }

    /// Forgets the migration (a new .vv replaces everything; another session
    /// starts).
    pub fn abandon(&mut self) -> Vec<Order> {
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        match m.stage {
            Stage::SwitchHost => Vec::new(),
            _ => vec![Order::DropPrelinked { plan: m.plan }],
        }
    }

    /// The server has moved the VM and session `generation` is on its way to
    /// the target (its settings or its links are being made): relinking
    /// anywhere else would land on the stopped source.
    pub fn following(&self, generation: u64) -> bool {
        self.current.as_ref().is_some_and(|m| {
            m.generation == generation
                && matches!(
                    m.stage,
                    Stage::SwitchHost | Stage::Prelinking { moved: true, .. }
                )
        })
    }

    /// MAIN_MIGRATE_SWITCH_HOST: the move is done; relink at `settings`.
    pub fn switch_host(&mut self, generation: u64, settings: ConnectionSettings) -> Vec<Order> {
        if let Some(m) = self.current.as_mut().filter(|m| m.generation == generation) {
            let same = |t: &Loaded| {
                (&t.settings.host, t.settings.port, t.settings.tls_port)
                    == (&settings.host, settings.port, settings.tls_port)
            };
            match &mut m.stage {
                Stage::SwitchHost => return Vec::new(),
                // The server gave up waiting for our answer (or the move was
                // faster than the links): the target still waits for them. Use
                // them rather than closing links mid-handshake, which can leave
                // the target holding a half-made channel.
                Stage::Prelinking { target, moved, .. } if same(target) => {
                    info!("live migration: the server moved the VM before the links at the target were ready; the session follows once they are");
                    *moved = true;
                    return Vec::new();
                }
                Stage::Prelinked(target) if same(target) => {
                    info!("live migration: the server moved the VM (switch-host); the session moves over the links made at the target");
                    let Some(Migration {
                        plan,
                        stage: Stage::Prelinked(target),
                        ..
                    }) = self.current.take()
                    else {
                        return Vec::new();
                    };
                    return vec![Order::Follow {
                        plan,
                        generation,
                        target,
                        adopt: true,
                    }];
                }
                _ => {}
            }
        }
        // Nothing linked there yet (or somewhere else): relink afresh.
        let mut out = self.abandon();
        info!(
            "live migration: the server moves the session to {}",
            describe(&settings)
        );
        let plan = self.start(generation, Stage::SwitchHost);
        out.push(Order::Prepare {
            plan,
            settings: Box::new(settings),
        });
        out
    }

    /// MAIN_MIGRATE_BEGIN, arrived at `now`: the move is coming; link at
    /// `settings` now, and answer within [`ANSWER_WITHIN`].
    pub fn begin(
        &mut self,
        generation: u64,
        settings: ConnectionSettings,
        session_id: u32,
        channels: Vec<ChannelId>,
        now: Instant,
    ) -> Vec<Order> {
        // spice-server cancels a previous announcement before a new one; a
        // leftover plan goes anyway.
        let mut out = self.abandon();
        info!(
            "live migration ahead: the server will move the session to {}; linking {} channels there now",
            describe(&settings),
            channels.len() + 1
        );
        let plan = self.start(
            generation,
            Stage::Preparing {
                session_id,
                channels,
                answer_by: crate::time::after(now, ANSWER_WITHIN),
            },
        );
        out.push(Order::Prepare {
            plan,
            settings: Box::new(settings),
        });
        out
    }

    /// The target's settings of `plan` are built (or cannot be).
    pub fn ready(&mut self, plan: u64, result: Result<Box<Loaded>, String>) -> Vec<Order> {
        if !self.is_current(plan) {
            return Vec::new(); // a plan given up since
        }
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        let generation = m.generation;
        match (m.stage, result) {
            (Stage::SwitchHost, Ok(target)) => vec![Order::Follow {
                plan,
                generation,
                target,
                adopt: false,
            }],
            (Stage::SwitchHost, Err(e)) => {
                warn!(
                    "cannot follow the live migration: {}",
                    crate::text::printable(&e)
                );
                if m.ended {
                    vec![Order::Lost {
                        generation,
                        cause: format!("live migration not followed: {e}"),
                    }]
                } else {
                    Vec::new()
                }
            }
            (
                Stage::Preparing {
                    session_id,
                    channels,
                    answer_by,
                },
                Ok(target),
            ) => {
                self.current = Some(Migration {
                    stage: Stage::Prelinking {
                        target: target.clone(),
                        moved: false,
                        answer_by,
                    },
                    ..m
                });
                vec![Order::Prelink {
                    plan,
                    generation,
                    target,
                    session_id,
                    channels,
                    deadline: answer_by,
                }]
            }
            (Stage::Preparing { .. }, Err(e)) => {
                warn!(
                    "cannot prepare the live migration: {}; the session stays here and the server is told",
                    crate::text::printable(&e)
                );
                vec![Order::Reply {
                    generation,
                    linked: false,
                }]
            }
            (stage, _) => {
                self.current = Some(Migration { stage, ..m });
                Vec::new()
            }
        }
    }

    /// Linking at the target for `plan` finished: `Ok(n)` links are parked
    /// there. The links of a plan that is gone were dropped by the shell.
    pub fn prelinked(&mut self, plan: u64, result: Result<usize, String>) -> Vec<Order> {
        if !self.is_current(plan) {
            return Vec::new();
        }
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        let generation = m.generation;
        let Stage::Prelinking { target, moved, .. } = m.stage else {
            self.current = Some(m);
            return vec![Order::DropPrelinked { plan }];
        };
        match result {
            Ok(n) if moved => {
                info!(
                    "live migration: {n} channels linked at {}; the session moves over them",
                    target.settings.shown_host()
                );
                vec![Order::Follow {
                    plan,
                    generation,
                    target,
                    adopt: true,
                }]
            }
            Err(e) if moved => {
                warn!(
                    "live migration: cannot link at {} ahead ({}); relinking there",
                    target.settings.shown_host(),
                    crate::text::printable(&e)
                );
                vec![
                    Order::DropPrelinked { plan },
                    Order::Follow {
                        plan,
                        generation,
                        target,
                        adopt: false,
                    },
                ]
            }
            Ok(n) => {
                info!(
                    "live migration ahead: {n} channels linked at {}; waiting for the server to move the VM",
                    target.settings.shown_host()
                );
                self.current = Some(Migration {
                    stage: Stage::Prelinked(target),
                    ..m
                });
                vec![Order::Reply {
                    generation,
                    linked: true,
                }]
            }
            Err(e) => {
                warn!(
                    "live migration ahead: cannot link at {}: {}; the session stays here and the server is told",
                    target.settings.shown_host(),
                    crate::text::printable(&e)
                );
                vec![
                    Order::DropPrelinked { plan },
                    Order::Reply {
                        generation,
                        linked: false,
                    },
                ]
            }
        }
    }

    /// When the server must have its answer, while it has not got one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.current.as_ref()?.stage {
            Stage::Preparing { answer_by, .. } | Stage::Prelinking { answer_by, .. } => {
                Some(answer_by)
            }
            _ => None,
        }
    }

    /// The answer is due: whatever is not ready by now is given up on.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Order> {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return Vec::new();
        }
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        let (plan, generation) = (m.plan, m.generation);
        let secs = ANSWER_WITHIN.as_secs();
        match m.stage {
            Stage::Prelinking {
                target,
                moved: true,
                ..
            } => {
                warn!(
                    "live migration: the links at {} were not made within {secs} s; relinking there",
                    target.settings.shown_host()
                );
                vec![
                    Order::DropPrelinked { plan },
                    Order::Follow {
                        plan,
                        generation,
                        target,
                        adopt: false,
                    },
                ]
            }
            Stage::Prelinking { target, .. } => {
                warn!(
                    "live migration ahead: not linked at {} within {secs} s of the announcement; the session stays here and the server is told",
                    target.settings.shown_host()
                );
                vec![
                    Order::DropPrelinked { plan },
                    Order::Reply {
                        generation,
                        linked: false,
                    },
                ]
            }
            _ => {
                warn!(
                    "live migration ahead: the target's settings were not ready within {secs} s of the announcement; the session stays here and the server is told"
                );
                vec![Order::Reply {
                    generation,
                    linked: false,
                }]
            }
        }
    }

    /// MAIN_MIGRATE_CANCEL: the move failed; the session stays on the source.
    pub fn cancel(&mut self, generation: u64) -> Vec<Order> {
        let semi = self
            .current
            .as_ref()
            .is_some_and(|m| m.generation == generation && !matches!(m.stage, Stage::SwitchHost));
        if !semi {
            return Vec::new();
        }
        info!("the server cancelled the live migration; the session stays here");
        self.abandon()
    }

    /// MAIN_MIGRATE_END: the move is done; the session moves to the links made
    /// at the target.
    pub fn end(&mut self, generation: u64) -> Vec<Order> {
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        match m.stage {
            Stage::Prelinked(target) if m.generation == generation => {
                info!(
                    "live migration complete: the session moves to {} over the links made there",
                    target.settings.shown_host()
                );
                vec![Order::Follow {
                    plan: m.plan,
                    generation,
                    target,
                    adopt: true,
                }]
            }
            stage => {
                // Not linked there (yet): the source drops us and the server
                // counts us out; the session relinks where it can.
                warn!("the server moved the VM before spiced had linked at the target");
                let drop = !matches!(stage, Stage::SwitchHost);
                self.current = Some(Migration { stage, ..m });
                if drop {
                    self.abandon()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The session `generation` ended. True: the end is part of a switch-host
    /// move whose target is on its way (the core waits for it instead).
    pub fn session_ended(&mut self, generation: u64) -> (bool, Vec<Order>) {
        let Some(m) = self.current.as_mut().filter(|m| m.generation == generation) else {
            return (false, Vec::new());
        };
        if matches!(
            m.stage,
            Stage::SwitchHost | Stage::Prelinking { moved: true, .. }
        ) {
            m.ended = true;
            info!("the migration source closed the session; relinking at the target");
            return (true, Vec::new());
        }
        // The source ended before the move completed: the VM did not move, and
        // the links made at the target lead nowhere.
        (false, self.abandon())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(host: &str) -> Box<Loaded> {
        let settings = ConnectionSettings {
            host: host.into(),
            port: Some(5901),
            ..Default::default()
        };
        Box::new(Loaded {
            settings,
            warnings: Vec::new(),
            tls: None,
        })
    }

    fn settings(host: &str) -> ConnectionSettings {
        loaded(host).settings
    }

    fn names(orders: &[Order]) -> Vec<&'static str> {
        orders
            .iter()
            .map(|o| match o {
                Order::Prepare { .. } => "prepare",
                Order::Prelink { .. } => "prelink",
                Order::Reply { linked: true, .. } => "connected",
                Order::Reply { linked: false, .. } => "connect-error",
                Order::DropPrelinked { .. } => "drop",
                Order::Follow { adopt: true, .. } => "follow-adopting",
                Order::Follow { adopt: false, .. } => "follow",
                Order::Lost { .. } => "lost",
            })
            .collect()
    }

    fn t0() -> Instant {
        Instant::now()
    }

    fn channels() -> Vec<ChannelId> {
        vec![ChannelId::new(crate::wire::ChannelType::Display, 0)]
    }

    #[test]
    fn semi_seamless_links_ahead_then_moves_onto_the_links() {
        let mut m = Migrations::default();
        assert_eq!(
            names(&m.begin(3, settings("dst"), 77, channels(), t0())),
            ["prepare"]
        );
        let o = m.ready(m.plans, Ok(loaded("dst")));
        match &o[..] {
            [Order::Prelink {
                generation: 3,
                session_id: 77,
                channels: c,
                ..
            }] => assert_eq!(c, &channels()),
            o => panic!("{o:?}"),
        }
        assert_eq!(names(&m.prelinked(m.plans, Ok(2))), ["connected"]);
        // The source's session keeps running meanwhile; its end is a loss.
        assert_eq!(names(&m.end(3)), ["follow-adopting"]);
        assert!(m.current.is_none());
    }

    #[test]
    fn a_target_that_cannot_be_linked_leaves_the_session_on_the_source() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        assert_eq!(
            names(&m.prelinked(m.plans, Err("refused".into()))),
            ["drop", "connect-error"]
        );
        assert!(m.current.is_none());
        // The server falls back to switch-host when the move completes.
        assert_eq!(names(&m.switch_host(3, settings("dst"))), ["prepare"]);
        assert_eq!(names(&m.ready(m.plans, Ok(loaded("dst")))), ["follow"]);
        // Bad TLS material for the target: told at once as well.
        m.begin(4, settings("dst"), 77, channels(), t0());
        assert_eq!(
            names(&m.ready(m.plans, Err("no CA".into()))),
            ["connect-error"]
        );
    }

    #[test]
    fn a_cancel_or_a_source_that_ends_drops_the_links() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        m.prelinked(m.plans, Ok(2));
        assert!(m.cancel(2).is_empty(), "another session's word");
        assert_eq!(names(&m.cancel(3)), ["drop"]);
        assert!(m.end(3).is_empty(), "nothing left to follow");

        m.begin(5, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        let (waits, o) = m.session_ended(5);
        assert!(!waits);
        assert_eq!(names(&o), ["drop"]);
        // Links that arrive after that act on nothing (the shell drops the
        // links of a plan it no longer holds).
        assert!(m.prelinked(m.plans, Ok(2)).is_empty());
    }

    /// The server moved the VM before our answer (SWITCH_HOST after
    /// MIGRATE_BEGIN): the links being made at the target are used once ready,
    /// never closed mid-handshake; if they fail, the session relinks there.
    #[test]
    fn a_switch_host_during_the_links_follows_over_them() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        assert!(m.switch_host(3, settings("dst")).is_empty());
        // The source closes meanwhile: that end is part of the move.
        let (waits, o) = m.session_ended(3);
        assert!(waits && o.is_empty());
        assert_eq!(names(&m.prelinked(m.plans, Ok(2))), ["follow-adopting"]);

        m.begin(4, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        m.switch_host(4, settings("dst"));
        assert_eq!(
            names(&m.prelinked(m.plans, Err("refused".into()))),
            ["drop", "follow"]
        );

        // Linked already: follow over the links at once.
        m.begin(5, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        m.prelinked(m.plans, Ok(2));
        assert_eq!(
            names(&m.switch_host(5, settings("dst"))),
            ["follow-adopting"]
        );

        // Announced elsewhere than the links, or before the settings were
        // built: a fresh relink.
        m.begin(6, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        assert_eq!(
            names(&m.switch_host(6, settings("other"))),
            ["drop", "prepare"]
        );
        m.begin(7, settings("dst"), 77, channels(), t0());
        assert_eq!(
            names(&m.switch_host(7, settings("dst"))),
            ["drop", "prepare"]
        );
        assert_eq!(names(&m.ready(m.plans, Ok(loaded("dst")))), ["follow"]);
    }

    #[test]
    fn switch_host_target_failing_after_the_source_ended_is_a_loss() {
        let mut m = Migrations::default();
        m.switch_host(3, settings("dst"));
        assert!(m.switch_host(3, settings("dst")).is_empty(), "said twice");
        assert!(m.session_ended(3).0);
        assert_eq!(names(&m.ready(m.plans, Err("bad CA".into()))), ["lost"]);
        m.switch_host(4, settings("dst"));
        assert!(
            m.ready(m.plans, Err("bad CA".into())).is_empty(),
            "still on the source"
        );
    }

    #[test]
    fn an_end_before_the_links_are_ready_drops_them() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels(), t0());
        m.ready(m.plans, Ok(loaded("dst")));
        assert_eq!(names(&m.end(3)), ["drop"]);
        assert!(m.prelinked(m.plans, Ok(2)).is_empty());
    }

    /// Every result names its plan: the target built or linked for a plan that
    /// was cancelled is never taken for the next announcement's.
    #[test]
    fn a_superseded_result_is_never_taken_for_the_current_plan() {
        let mut m = Migrations::default();
        m.begin(3, settings("old"), 77, channels(), t0());
        let first = m.plans;
        m.ready(first, Ok(loaded("old")));
        m.cancel(3);
        m.begin(3, settings("dst"), 78, channels(), t0());
        let second = m.plans;
        assert_ne!(first, second);
        assert!(m.ready(first, Ok(loaded("old"))).is_empty());
        assert!(m.prelinked(first, Ok(2)).is_empty());
        match &m.ready(second, Ok(loaded("dst")))[..] {
            [Order::Prelink {
                plan,
                target,
                session_id: 78,
                ..
            }] => assert_eq!((*plan, target.settings.host.as_str()), (second, "dst")),
            o => panic!("{o:?}"),
        }
        assert!(m.prelinked(first, Err("late".into())).is_empty());
        assert_eq!(names(&m.prelinked(second, Ok(2))), ["connected"]);
    }

    /// The server waits 10 s for its answer: building the target's settings
    /// and linking there share one deadline, 7 s after the announcement.
    #[test]
    fn the_answer_is_due_within_the_servers_wait_whatever_takes_the_time() {
        let t = t0();
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels(), t);
        assert_eq!(m.poll_timeout(), Some(t + ANSWER_WITHIN));
        assert!(m.handle_timeout(t + Duration::from_millis(6999)).is_empty());
        // Slow TLS roots: the links get what is left, not a budget of their own.
        match &m.ready(m.plans, Ok(loaded("dst")))[..] {
            [Order::Prelink { deadline, .. }] => assert_eq!(*deadline, t + ANSWER_WITHIN),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            names(&m.handle_timeout(t + ANSWER_WITHIN)),
            ["drop", "connect-error"]
        );
        assert_eq!(m.poll_timeout(), None);
        assert!(m.prelinked(m.plans, Ok(2)).is_empty(), "answered already");
        // Never built: told all the same.
        m.begin(4, settings("dst"), 77, channels(), t);
        assert_eq!(
            names(&m.handle_timeout(t + ANSWER_WITHIN)),
            ["connect-error"]
        );
        // The server moved the VM meanwhile: relink there afresh.
        m.begin(5, settings("dst"), 77, channels(), t);
        m.ready(m.plans, Ok(loaded("dst")));
        m.switch_host(5, settings("dst"));
        assert_eq!(
            names(&m.handle_timeout(t + ANSWER_WITHIN)),
            ["drop", "follow"]
        );
        // Linked in time: no deadline while the VM moves (minutes, for a big one).
        m.begin(6, settings("dst"), 77, channels(), t);
        m.ready(m.plans, Ok(loaded("dst")));
        m.prelinked(m.plans, Ok(2));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn the_target_keeps_the_ticket_and_takes_the_announced_subject() {
        let mut cur = settings("src");
        cur.host_subject = Some("CN=src".into());
        let t = target_settings(
            &cur,
            MigrationTarget {
                host: "dst".into(),
                port: None,
                tls_port: Some(5902),
                subject: Some("CN=dst".into()),
            },
        );
        assert_eq!(
            (t.host.as_str(), t.port, t.tls_port),
            ("dst", None, Some(5902))
        );
        assert_eq!(t.host_subject.as_deref(), Some("CN=dst"));
        let t = target_settings(
            &cur,
            MigrationTarget {
                host: "dst".into(),
                port: Some(1),
                tls_port: None,
                subject: None,
            },
        );
        assert_eq!(t.host_subject.as_deref(), Some("CN=src"));
    }
}
