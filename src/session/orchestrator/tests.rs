//! Test code only: the parent declares this module under #[cfg(test)].
use super::*;
use crate::failure::Failure;
use crate::wire::msg::MainInit;

fn ch(ty: ChannelType) -> ChannelId {
    ChannelId::new(ty, 0)
}

fn init(id: u32) -> ChannelEvent {
    ChannelEvent::MainInit(MainInit {
        session_id: id,
        ..MainInit::default()
    })
}

fn orch(rules: Rules, ticket: TicketInfo) -> Orchestrator {
    let mut o = Orchestrator::new(rules, ReconnectPolicy::default(), ticket, 1_700_000_000.0);
    o.start();
    o
}

fn drain(o: &mut Orchestrator) -> Vec<Command> {
    std::iter::from_fn(|| o.poll_command()).collect()
}

fn spawns(cmds: &[Command]) -> Vec<(ChannelId, u32)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Spawn {
                channel,
                connection_id,
            } => Some((*channel, *connection_id)),
            _ => None,
        })
        .collect()
}

fn events(cmds: Vec<Command>) -> Vec<SessionEvent> {
    cmds.into_iter()
        .filter_map(|c| match c {
            Command::Emit(e) => Some(e),
            _ => None,
        })
        .collect()
}

const LIST: [ChannelType; 4] = [
    ChannelType::Display,
    ChannelType::Inputs,
    ChannelType::Cursor,
    ChannelType::Webdav,
];

/// Main up, MAIN_INIT, CHANNELS_LIST, every listed channel up.
fn linked(rules: Rules, ticket: TicketInfo) -> Orchestrator {
    let mut o = orch(rules, ticket);
    assert_eq!(spawns(&drain(&mut o)), [(ChannelId::MAIN, 0)]);
    o.on_up(ChannelId::MAIN, ChannelLinkInfo::default());
    o.on_event(ChannelId::MAIN, init(7));
    let mut list = vec![ChannelId::MAIN];
    list.extend(LIST.iter().map(|t| ch(*t)));
    o.on_event(ChannelId::MAIN, ChannelEvent::ChannelsList(list));
    let cmds = drain(&mut o);
    for t in LIST {
        o.on_up(ch(t), ChannelLinkInfo::default());
    }
    let s = spawns(&cmds);
    let _ = drain(&mut o);
    let _ = s;
    o
}

fn lost(o: &mut Orchestrator, c: ChannelId, f: Failure, now: Duration) {
    o.on_end(c, ChannelCounters::default(), Some(f), now);
}

fn eof(c: ChannelId) -> Failure {
    Failure::io(c, &std::io::ErrorKind::UnexpectedEof.into(), false)
}

#[test]
fn links_main_then_every_listed_channel_with_the_session_id() {
    let mut o = orch(Rules::default(), TicketInfo::default());
    assert_eq!(spawns(&drain(&mut o)), [(ChannelId::MAIN, 0)]);
    o.on_up(ChannelId::MAIN, ChannelLinkInfo::default());
    o.on_event(ChannelId::MAIN, init(7));
    assert_eq!(
        events(drain(&mut o)),
        [
            SessionEvent::ChannelUp {
                channel: ChannelId::MAIN,
                tls: false
            },
            SessionEvent::Connected { session_id: 7 },
            SessionEvent::Agent { connected: false }
        ]
    );
    let list: Vec<ChannelId> = LIST.iter().map(|t| ch(*t)).collect();
    o.on_event(ChannelId::MAIN, ChannelEvent::ChannelsList(list.clone()));
    let s = spawns(&drain(&mut o));
    assert_eq!(s, list.iter().map(|c| (*c, 7)).collect::<Vec<_>>());
    for c in &list {
        o.on_up(*c, ChannelLinkInfo::default());
    }
    let ev = events(drain(&mut o));
    assert_eq!(
        ev.last(),
        Some(&SessionEvent::Settled {
            up: vec![ChannelId::MAIN, list[0], list[1], list[2], list[3]],
            down: vec![]
        })
    );
    // The list again (after every main probe): nothing new happens.
    o.on_event(ChannelId::MAIN, ChannelEvent::ChannelsList(list));
    assert!(drain(&mut o).is_empty());
}

#[test]
fn skipped_channels_are_not_linked_and_the_channel_count_is_bounded() {
    let rules = Rules {
        disabled: vec![ChannelType::Webdav],
        skipped: vec![ChannelType::Cursor],
        required: vec![],
    };
    let mut o = orch(rules, TicketInfo::default());
    o.on_event(ChannelId::MAIN, init(1));
    let mut list: Vec<ChannelId> = LIST.iter().map(|t| ch(*t)).collect();
    list.extend((0..100).map(|i| ChannelId::new(ChannelType::Usbredir, i)));
    o.on_event(ChannelId::MAIN, ChannelEvent::ChannelsList(list));
    let s = spawns(&drain(&mut o));
    assert!(!s
        .iter()
        .any(|(c, _)| c.ty == ChannelType::Webdav || c.ty == ChannelType::Cursor));
    assert_eq!(s.len(), MAX_CHANNELS, "main and the first others, no more");
    let out = o.outcome();
    assert_eq!(out.info.not_linked["webdav"], "disable-channels in the .vv");
    assert_eq!(out.info.not_linked["cursor"], "channels.skip in the config");
}

#[test]
fn an_optional_channel_lost_is_relinked_after_the_backoff() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    let cursor = ch(ChannelType::Cursor);
    let t = Duration::from_secs(10);
    lost(&mut o, cursor, eof(cursor), t);
    // Not judged at once: main may follow within the close window.
    assert!(drain(&mut o).is_empty());
    assert_eq!(o.poll_timeout(), Some(t + CLOSE_WINDOW));
    o.handle_timeout(t + CLOSE_WINDOW);
    let ev = events(drain(&mut o));
    assert!(
        matches!(&ev[..], [SessionEvent::ChannelLost { channel, relink_in: Some(d), .. }] if *channel == cursor && *d == Duration::from_secs(1)),
        "{ev:?}"
    );
    let relink = t + CLOSE_WINDOW + Duration::from_secs(1);
    assert_eq!(o.poll_timeout(), Some(relink));
    o.handle_timeout(relink);
    assert_eq!(spawns(&drain(&mut o)), [(cursor, 7)]);
    o.on_up(cursor, ChannelLinkInfo::default());
    let ev = events(drain(&mut o));
    assert!(
        matches!(ev.last(), Some(SessionEvent::Settled { down, .. }) if down.is_empty()),
        "{ev:?}"
    );
    assert!(!o.is_finished());
}

#[test]
fn when_main_follows_a_secondary_eof_the_whole_session_ended() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    let t = Duration::from_secs(10);
    let inputs = ch(ChannelType::Inputs);
    lost(&mut o, inputs, eof(inputs), t);
    lost(
        &mut o,
        ChannelId::MAIN,
        eof(ChannelId::MAIN),
        t + Duration::from_millis(2),
    );
    let cmds = drain(&mut o);
    assert!(
        events(cmds).is_empty(),
        "no ChannelLost for a session that ended"
    );
    // The rest get the close window to report their own EOF.
    for c in [
        ChannelType::Display,
        ChannelType::Cursor,
        ChannelType::Webdav,
    ] {
        lost(&mut o, ch(c), eof(ch(c)), t + Duration::from_millis(3));
    }
    assert_eq!(drain(&mut o), [Command::Finish]);
    let out = o.outcome();
    assert!(out.server_closed_session);
    assert_eq!(out.failure.map(|f| f.channel), Some(ChannelId::MAIN));
    assert_eq!(out.counters.len(), 5);
}

/// Chaos seed 10626483591465904736: the server killed after a black hole; the
/// secondary channels saw their EOF at once and their relinks were refused,
/// main's EOF came 4 s later, after the server was back.
#[test]
fn a_relink_refused_before_main_closed_says_the_server_went_away() {
    let cursor = ch(ChannelType::Cursor);
    let refused = |kind| {
        Failure::transport(
            cursor,
            &crate::link::TransportError::Connect {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5900)),
                kind,
                tried: 1,
            },
        )
    };
    for (kind, gone) in [
        (std::io::ErrorKind::ConnectionRefused, true),
        (std::io::ErrorKind::TimedOut, false),
    ] {
        let mut o = linked(Rules::default(), TicketInfo::default());
        let t = Duration::from_secs(10);
        lost(&mut o, cursor, eof(cursor), t);
        o.handle_timeout(t + CLOSE_WINDOW);
        let relink = t + CLOSE_WINDOW + Duration::from_secs(1);
        o.handle_timeout(relink);
        assert_eq!(spawns(&drain(&mut o)), [(cursor, 7)]);
        lost(&mut o, cursor, refused(kind), relink);
        lost(
            &mut o,
            ChannelId::MAIN,
            eof(ChannelId::MAIN),
            t + Duration::from_secs(4),
        );
        o.handle_timeout(t + Duration::from_secs(5));
        assert!(o.is_finished());
        let out = o.outcome();
        assert!(out.server_closed_session);
        assert_eq!(out.server_refused, gone, "{kind:?}");
    }
}

#[test]
fn the_close_window_is_bounded() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    let t = Duration::from_secs(3);
    lost(&mut o, ChannelId::MAIN, eof(ChannelId::MAIN), t);
    assert!(drain(&mut o).is_empty());
    o.handle_timeout(t + CLOSE_WINDOW);
    assert_eq!(drain(&mut o), [Command::Finish]);
}

#[test]
fn a_required_channel_ends_the_session() {
    let rules = Rules {
        required: vec![ChannelType::Display],
        ..Rules::default()
    };
    let mut o = linked(rules, TicketInfo::default());
    let display = ch(ChannelType::Display);
    lost(&mut o, display, eof(display), Duration::from_secs(1));
    o.handle_timeout(Duration::from_secs(2));
    assert_eq!(drain(&mut o), [Command::Finish]);
    let out = o.outcome();
    assert_eq!(out.failure.map(|f| f.channel), Some(display));
    assert!(!out.server_closed_session);
}

#[test]
fn a_channel_on_a_dead_path_ends_the_session() {
    // The server still holds a black-holed channel; a relink of it alone would
    // be refused as a duplicate, so the whole session is relinked.
    let mut o = linked(Rules::default(), TicketInfo::default());
    let display = ch(ChannelType::Display);
    let dead = Failure::io(display, &std::io::ErrorKind::TimedOut.into(), false);
    assert_eq!(dead.cause, Cause::DeadPeer);
    lost(&mut o, display, dead, Duration::from_secs(1));
    o.handle_timeout(Duration::from_secs(2));
    let cmds = drain(&mut o);
    assert_eq!(cmds.last(), Some(&Command::Finish), "{cmds:?}");
    assert!(
        !events(cmds)
            .iter()
            .any(|e| matches!(e, SessionEvent::ChannelLost { .. })),
        "not a channel loss the session survives"
    );
    let out = o.outcome();
    let f = out.failure.expect("a failure");
    assert_eq!((f.channel, f.cause), (display, Cause::DeadPeer));
}

#[test]
fn refused_channels_stay_down_and_are_not_asked_for_again() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    let webdav = ch(ChannelType::Webdav);
    let t = Duration::from_secs(5);
    let cna = Failure::link(
        webdav,
        crate::link::handshake::LinkError::Refused(LinkErrorCode::ChannelNotAvailable),
    );
    lost(&mut o, webdav, cna, t);
    o.handle_timeout(t + CLOSE_WINDOW);
    let ev = events(drain(&mut o));
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::ChannelDown { channel, reason } if *channel == webdav && reason.contains("refused"))), "{ev:?}");
    assert_eq!(o.poll_timeout(), None, "no relink scheduled");
    let list: Vec<ChannelId> = LIST.iter().map(|t| ch(*t)).collect();
    o.on_event(ChannelId::MAIN, ChannelEvent::ChannelsList(list));
    assert!(
        spawns(&drain(&mut o)).is_empty(),
        "remembered for the session"
    );

    let inputs = ch(ChannelType::Inputs);
    lost(&mut o, inputs, Failure::no_port(inputs, true, true), t);
    o.handle_timeout(t + CLOSE_WINDOW);
    let ev = events(drain(&mut o));
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::ChannelDown { reason, .. } if reason.contains("no tls-port"))), "{ev:?}");
}

#[test]
fn ticket_rules_leave_a_lost_channel_down_and_panics_are_retried() {
    let single = TicketInfo {
        single_use: true,
        valid_until: None,
    };
    let mut o = linked(Rules::default(), single);
    let cursor = ch(ChannelType::Cursor);
    lost(&mut o, cursor, eof(cursor), Duration::from_secs(1));
    o.handle_timeout(Duration::from_secs(2));
    let ev = events(drain(&mut o));
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::ChannelDown { reason, .. } if reason.contains("single-use"))), "{ev:?}");

    let expired = TicketInfo {
        single_use: false,
        valid_until: Some(1_700_000_001),
    };
    let mut o = linked(Rules::default(), expired);
    lost(&mut o, cursor, eof(cursor), Duration::from_secs(5));
    o.handle_timeout(Duration::from_secs(6));
    let ev = events(drain(&mut o));
    assert!(
        ev.iter().any(
            |e| matches!(e, SessionEvent::ChannelDown { reason, .. } if reason.contains("expired"))
        ),
        "{ev:?}"
    );

    // A panicked task is a bug, not the server's word: retried like any loss.
    let mut o = linked(Rules::default(), TicketInfo::default());
    lost(
        &mut o,
        cursor,
        Failure::panicked(cursor),
        Duration::from_secs(1),
    );
    o.handle_timeout(Duration::from_secs(2));
    let ev = events(drain(&mut o));
    assert!(
        ev.iter().any(|e| matches!(
            e,
            SessionEvent::ChannelLost {
                relink_in: Some(_),
                ..
            }
        )),
        "{ev:?}"
    );
}

#[test]
fn a_panicked_main_ends_the_session_as_an_internal_error() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    lost(
        &mut o,
        ChannelId::MAIN,
        Failure::panicked(ChannelId::MAIN),
        Duration::from_secs(1),
    );
    o.handle_timeout(Duration::from_secs(2));
    assert_eq!(drain(&mut o), [Command::Finish]);
    let f = o.outcome().failure.unwrap();
    assert_eq!(f.cause, Cause::InternalError);
}

#[test]
fn main_failing_to_link_ends_at_once() {
    let mut o = orch(Rules::default(), TicketInfo::default());
    let _ = drain(&mut o);
    let f = Failure::link_timeout(ChannelId::MAIN, 15.0);
    lost(&mut o, ChannelId::MAIN, f, Duration::from_secs(15));
    assert_eq!(drain(&mut o), [Command::Finish]);
    let out = o.outcome();
    assert!(!out.connected);
}

#[test]
fn a_switch_host_is_checked_then_passed_up() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    let ev = |host: &str, port, sport| ChannelEvent::MigrateSwitchHost(dst(host, port, sport));
    o.on_event(ChannelId::MAIN, ev("10.0.0.2", 5901, 65535));
    assert_eq!(
        events(drain(&mut o)),
        [SessionEvent::SwitchHost(crate::session::MigrationTarget {
            host: "10.0.0.2".into(),
            port: Some(5901),
            tls_port: None,
            subject: None
        })]
    );
    for bad in [ev("", 1, 0), ev("a\r\nb", 1, 0), ev("h", 0, 65535)] {
        o.on_event(ChannelId::MAIN, bad);
        assert!(drain(&mut o).is_empty());
    }
}

fn dst(host: &str, port: u16, sport: u16) -> crate::wire::msg::MigrateDst {
    crate::wire::msg::MigrateDst {
        host: host.into(),
        port,
        sport,
        subject: String::new(),
    }
}

/// MIGRATE_BEGIN goes up with what the daemon needs to link at the target
/// ahead of the move: the session id (the target's connection id) and the
/// channels that are up (a channel that stays down is not linked there); a
/// target spiced cannot use is answered on main at once.
#[test]
fn a_migration_begin_names_the_session_and_its_channels() {
    let mut o = linked(Rules::default(), TicketInfo::default());
    lost(
        &mut o,
        ch(ChannelType::Webdav),
        Failure::link(
            ch(ChannelType::Webdav),
            crate::link::handshake::LinkError::Refused(LinkErrorCode::ChannelNotAvailable),
        ),
        Duration::from_secs(1),
    );
    o.handle_timeout(Duration::from_secs(2));
    let _ = drain(&mut o);
    o.on_event(
        ChannelId::MAIN,
        ChannelEvent::MigrateBegin(dst("10.0.0.2", 0, 5902)),
    );
    assert_eq!(
        events(drain(&mut o)),
        [SessionEvent::MigrateBegin {
            target: crate::session::MigrationTarget {
                host: "10.0.0.2".into(),
                port: None,
                tls_port: Some(5902),
                subject: None
            },
            session_id: 7,
            channels: vec![
                ch(ChannelType::Display),
                ch(ChannelType::Inputs),
                ch(ChannelType::Cursor)
            ],
        }]
    );
    o.on_event(ChannelId::MAIN, ChannelEvent::MigrateBegin(dst("h", 0, 0)));
    assert_eq!(drain(&mut o), [Command::ReplyMigration { linked: false }]);
    o.on_event(ChannelId::MAIN, ChannelEvent::MigrateEnd);
    o.on_event(ChannelId::MAIN, ChannelEvent::MigrateCancel);
    assert_eq!(
        events(drain(&mut o)),
        [SessionEvent::MigrateEnd, SessionEvent::MigrateCancel]
    );
}

#[test]
fn the_guest_agent_is_told_on_a_change_only() {
    let mut o = orch(Rules::default(), TicketInfo::default());
    let _ = drain(&mut o);
    // Before MAIN_INIT: not a session yet.
    o.on_event(ChannelId::MAIN, ChannelEvent::AgentConnected(true));
    assert!(events(drain(&mut o)).is_empty());
    o.on_up(ChannelId::MAIN, ChannelLinkInfo::default());
    let mut i = init(7);
    if let ChannelEvent::MainInit(m) = &mut i {
        m.agent_connected = 1;
    }
    o.on_event(ChannelId::MAIN, i);
    assert!(events(drain(&mut o)).contains(&SessionEvent::Agent { connected: true }));
    o.on_event(ChannelId::MAIN, ChannelEvent::AgentConnected(true));
    assert!(events(drain(&mut o)).is_empty(), "no change");
    o.on_event(ChannelId::MAIN, ChannelEvent::AgentConnected(false));
    assert_eq!(
        events(drain(&mut o)),
        [SessionEvent::Agent { connected: false }]
    );
}
