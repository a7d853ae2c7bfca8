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
use tracing::{info, warn};

/// What the core must do next.
#[derive(Debug)]
pub enum Order {
    /// Build the TLS material for the target's settings off the loop, then call
    /// [`Migrations::ready`].
    Prepare(Box<ConnectionSettings>),
    /// Link main and `channels` at the target with `session_id` (the shell keeps
    /// the links), then call [`Migrations::prelinked`].
    Prelink {
        generation: u64,
        target: Box<Loaded>,
        session_id: u32,
        channels: Vec<ChannelId>,
    },
    /// Answer MIGRATE_BEGIN on the source session's main.
    Reply { generation: u64, linked: bool },
    /// The links made at the target are not needed any more.
    DropPrelinked,
    /// Move the session to the target now, spending no attempt; `adopt`: over
    /// the links made there ahead of the move.
    Follow {
        generation: u64,
        target: Box<Loaded>,
        adopt: bool,
    },
    /// The source session ended and its target cannot be used: a loss.
    Lost { generation: u64, cause: String },
}

#[derive(Debug)]
enum Stage {
    /// Switch-host: the target's settings are being built.
    SwitchHost,
    /// Semi-seamless: the target's settings are being built.
    Preparing {
        session_id: u32,
        channels: Vec<ChannelId>,
    },
    /// Semi-seamless: linking at the target. `moved`: the server has moved the
    /// VM already (it fell back to SWITCH_HOST): follow as soon as linked.
    Prelinking { target: Box<Loaded>, moved: bool },
    /// Semi-seamless: linked at the target, waiting for the source's word.
    Prelinked(Box<Loaded>),
}

#[derive(Debug)]
struct Migration {
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
    /// Whether the links made at the target (if any) belong to a live plan.
    fn holds_links(&self) -> bool {
        self.current.as_ref().is_some_and(|m| {
            matches!(
                m.stage,
                Stage::Prelinking { .. } | Stage::Prelinked(_) | Stage::Preparing { .. }
            )
        })
    }

    /// Forgets the migration (a new .vv replaces everything).
    pub fn abandon(&mut self) -> Vec<Order> {
        let drop = self.holds_links();
        self.current = None;
        drop.then_some(Order::DropPrelinked).into_iter().collect()
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
                Stage::Prelinking { target, moved } if same(target) => {
                    info!("live migration: the server moved the VM before the links at the target were ready; the session follows once they are");
                    *moved = true;
                    return Vec::new();
                }
                Stage::Prelinked(target) if same(target) => {
                    info!("live migration: the server moved the VM (switch-host); the session moves over the links made at the target");
                    let Some(Migration {
                        stage: Stage::Prelinked(target),
                        ..
                    }) = self.current.take()
                    else {
                        return Vec::new();
                    };
                    return vec![Order::Follow {
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
        self.current = Some(Migration {
            generation,
            ended: false,
            stage: Stage::SwitchHost,
        });
        out.push(Order::Prepare(Box::new(settings)));
        out
    }

    /// MAIN_MIGRATE_BEGIN: the move is coming; link at `settings` now.
    pub fn begin(
        &mut self,
        generation: u64,
        settings: ConnectionSettings,
        session_id: u32,
        channels: Vec<ChannelId>,
    ) -> Vec<Order> {
        // spice-server cancels a previous announcement before a new one; a
        // leftover plan goes anyway.
        let mut out = self.abandon();
        info!(
            "live migration ahead: the server will move the session to {}; linking {} channels there now",
            describe(&settings),
            channels.len() + 1
        );
        self.current = Some(Migration {
            generation,
            ended: false,
            stage: Stage::Preparing {
                session_id,
                channels,
            },
        });
        out.push(Order::Prepare(Box::new(settings)));
        out
    }

    /// The target's settings are built (or cannot be).
    pub fn ready(&mut self, result: Result<Box<Loaded>, String>) -> Vec<Order> {
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        let generation = m.generation;
        match (m.stage, result) {
            (Stage::SwitchHost, Ok(target)) => vec![Order::Follow {
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
                },
                Ok(target),
            ) => {
                self.current = Some(Migration {
                    stage: Stage::Prelinking {
                        target: target.clone(),
                        moved: false,
                    },
                    ..m
                });
                vec![Order::Prelink {
                    generation,
                    target,
                    session_id,
                    channels,
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

    /// Linking at the target finished: `Ok(n)` links are parked there.
    pub fn prelinked(&mut self, generation: u64, result: Result<usize, String>) -> Vec<Order> {
        let wanted = self.current.as_ref().is_some_and(|m| {
            m.generation == generation && matches!(m.stage, Stage::Prelinking { .. })
        });
        if !wanted {
            return vec![Order::DropPrelinked];
        }
        let Some(m) = self.current.take() else {
            return Vec::new();
        };
        let Stage::Prelinking { target, moved } = m.stage else {
            return Vec::new();
        };
        match result {
            Ok(n) if moved => {
                info!(
                    "live migration: {n} channels linked at {}; the session moves over them",
                    target.settings.shown_host()
                );
                vec![Order::Follow {
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
                    Order::DropPrelinked,
                    Order::Follow {
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
                    Order::DropPrelinked,
                    Order::Reply {
                        generation,
                        linked: false,
                    },
                ]
            }
        }
    }

    /// MAIN_MIGRATE_CANCEL: the move failed; the session stays on the source.
    pub fn cancel(&mut self, generation: u64) -> Vec<Order> {
        if !self.holds_links() || self.current.as_ref().map(|m| m.generation) != Some(generation) {
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
                Order::Prepare(_) => "prepare",
                Order::Prelink { .. } => "prelink",
                Order::Reply { linked: true, .. } => "connected",
                Order::Reply { linked: false, .. } => "connect-error",
                Order::DropPrelinked => "drop",
                Order::Follow { adopt: true, .. } => "follow-adopting",
                Order::Follow { adopt: false, .. } => "follow",
                Order::Lost { .. } => "lost",
            })
            .collect()
    }

    fn channels() -> Vec<ChannelId> {
        vec![ChannelId::new(crate::wire::ChannelType::Display, 0)]
    }

    #[test]
    fn semi_seamless_links_ahead_then_moves_onto_the_links() {
        let mut m = Migrations::default();
        assert_eq!(
            names(&m.begin(3, settings("dst"), 77, channels())),
            ["prepare"]
        );
        let o = m.ready(Ok(loaded("dst")));
        match &o[..] {
            [Order::Prelink {
                generation: 3,
                session_id: 77,
                channels: c,
                ..
            }] => assert_eq!(c, &channels()),
            o => panic!("{o:?}"),
        }
        assert_eq!(names(&m.prelinked(3, Ok(2))), ["connected"]);
        // The source's session keeps running meanwhile; its end is a loss.
        assert_eq!(names(&m.end(3)), ["follow-adopting"]);
        assert!(m.current.is_none());
    }

    #[test]
    fn a_target_that_cannot_be_linked_leaves_the_session_on_the_source() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        assert_eq!(
            names(&m.prelinked(3, Err("refused".into()))),
            ["drop", "connect-error"]
        );
        assert!(m.current.is_none());
        // The server falls back to switch-host when the move completes.
        assert_eq!(names(&m.switch_host(3, settings("dst"))), ["prepare"]);
        assert_eq!(names(&m.ready(Ok(loaded("dst")))), ["follow"]);
        // Bad TLS material for the target: told at once as well.
        m.begin(4, settings("dst"), 77, channels());
        assert_eq!(names(&m.ready(Err("no CA".into()))), ["connect-error"]);
    }

    #[test]
    fn a_cancel_or_a_source_that_ends_drops_the_links() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        m.prelinked(3, Ok(2));
        assert!(m.cancel(2).is_empty(), "another session's word");
        assert_eq!(names(&m.cancel(3)), ["drop"]);
        assert!(m.end(3).is_empty(), "nothing left to follow");

        m.begin(5, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        let (waits, o) = m.session_ended(5);
        assert!(!waits);
        assert_eq!(names(&o), ["drop"]);
        // Links that arrive after that are dropped too.
        assert_eq!(names(&m.prelinked(5, Ok(2))), ["drop"]);
    }

    /// The server moved the VM before our answer (SWITCH_HOST after
    /// MIGRATE_BEGIN): the links being made at the target are used once ready,
    /// never closed mid-handshake; if they fail, the session relinks there.
    #[test]
    fn a_switch_host_during_the_links_follows_over_them() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        assert!(m.switch_host(3, settings("dst")).is_empty());
        // The source closes meanwhile: that end is part of the move.
        let (waits, o) = m.session_ended(3);
        assert!(waits && o.is_empty());
        assert_eq!(names(&m.prelinked(3, Ok(2))), ["follow-adopting"]);

        m.begin(4, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        m.switch_host(4, settings("dst"));
        assert_eq!(
            names(&m.prelinked(4, Err("refused".into()))),
            ["drop", "follow"]
        );

        // Linked already: follow over the links at once.
        m.begin(5, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        m.prelinked(5, Ok(2));
        assert_eq!(
            names(&m.switch_host(5, settings("dst"))),
            ["follow-adopting"]
        );

        // Announced elsewhere than the links, or before the settings were
        // built: a fresh relink.
        m.begin(6, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        assert_eq!(
            names(&m.switch_host(6, settings("other"))),
            ["drop", "prepare"]
        );
        m.begin(7, settings("dst"), 77, channels());
        assert_eq!(
            names(&m.switch_host(7, settings("dst"))),
            ["drop", "prepare"]
        );
        assert_eq!(names(&m.ready(Ok(loaded("dst")))), ["follow"]);
    }

    #[test]
    fn switch_host_target_failing_after_the_source_ended_is_a_loss() {
        let mut m = Migrations::default();
        m.switch_host(3, settings("dst"));
        assert!(m.switch_host(3, settings("dst")).is_empty(), "said twice");
        assert!(m.session_ended(3).0);
        assert_eq!(names(&m.ready(Err("bad CA".into()))), ["lost"]);
        m.switch_host(4, settings("dst"));
        assert!(
            m.ready(Err("bad CA".into())).is_empty(),
            "still on the source"
        );
    }

    #[test]
    fn an_end_before_the_links_are_ready_drops_them() {
        let mut m = Migrations::default();
        m.begin(3, settings("dst"), 77, channels());
        m.ready(Ok(loaded("dst")));
        assert_eq!(names(&m.end(3)), ["drop"]);
        assert_eq!(names(&m.prelinked(3, Ok(2))), ["drop"]);
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
