//! Results that come back after what they were for has moved on: a migration
//! target built or linked for a session that was replaced, a refresh command's
//! .vv after a newer one was loaded. Each belongs to its own session or plan
//! and must never act on a newer one.

use super::*;
use crate::secret::Secret;

/// SIGUSR1 (or the control socket's `reconnect`) while a switch-host move is
/// being prepared and the source has closed the session, then the target
/// cannot be used: whatever session runs next must be heard. Before the fix the
/// failed target's loss cleared the new session, leaving the daemon in
/// `connecting` with no session and no deadline.
#[tokio::test(start_paused = true)]
async fn a_reconnect_request_during_a_move_never_strands_the_daemon() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.event(SessionEvent::SwitchHost(migration_target()));
    h.end(lost(eof(ChannelId::MAIN), 40.0));
    h.input(Input::Signal(Signal::Reconnect));
    h.input(Input::MigrationPrepared {
        plan: h.plan,
        result: Err("bad CA".into()),
    });
    h.at(30.0);
    h.connected();
    assert_eq!(h.core.state().name(), "connected", "{:?}", h.log);
}

/// SIGUSR1 while the server has moved the VM and the links at the target are
/// still being made: the session follows the move (the request is not acted
/// on), and the host the daemon shows is the host its session runs on.
#[tokio::test(start_paused = true)]
async fn a_reconnect_request_after_the_server_moved_the_vm_follows_the_move() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.event(SessionEvent::MigrateBegin {
        target: migration_target(),
        session_id: 7,
        channels: vec![ChannelId::new(ChannelType::Display, 0)],
    });
    h.migration_target_ready();
    h.event(SessionEvent::SwitchHost(migration_target()));
    h.input(Input::Signal(Signal::Reconnect));
    h.input(Input::Prelinked {
        plan: h.plan,
        result: Ok(2),
    });
    h.connected();
    assert_eq!(h.core.state().name(), "connected", "{:?}", h.log);
    assert_eq!(
        Some(&h.core.status().host),
        h.hosts.last(),
        "the status names where the session runs: {:?}",
        h.log
    );
    assert_eq!(h.hosts.last().map(String::as_str), Some("10.0.0.2"));
}

/// SIGUSR1 before the VM moved: the session relinks where it is, and the
/// announcement's plan goes with the session that received it: its target,
/// built afterwards, links nothing.
#[tokio::test(start_paused = true)]
async fn a_reconnect_request_before_the_move_drops_the_plan() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.event(SessionEvent::MigrateBegin {
        target: migration_target(),
        session_id: 7,
        channels: vec![],
    });
    h.take();
    h.input(Input::Signal(Signal::Reconnect));
    let log = h.take();
    assert!(log.contains(&"start 2".to_string()), "{log:?}");
    h.migration_target_ready();
    assert_eq!(h.count("prelink"), 0, "{:?}", h.log);
    h.connected();
    assert_eq!(h.core.state().name(), "connected");
    assert_eq!(h.hosts.last().map(String::as_str), Some("vm.example"));
    assert_eq!(h.core.status().host, "vm.example");
}

/// Waiting for a fresh single-use ticket with the refresh command running: the
/// producer's .vv arrives first and its session links. The refresh command's
/// .vv, arriving after, must not replace that session (and spend its ticket).
/// A refresh asked for while the stale one runs replaces it.
#[tokio::test(start_paused = true)]
async fn a_refresh_result_after_a_newer_vv_does_not_replace_its_session() {
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
    let from_file = ConnectionSettings {
        password: Some(Secret::new("from-file")),
        ..single.clone()
    };
    h.input(Input::VvChanged);
    h.input(Input::Loaded {
        origin: Origin::NewFile,
        result: Ok(Box::new(loaded(from_file))),
    });
    h.connected();
    h.settled(10, &[]);
    h.take();
    let from_refresh = ConnectionSettings {
        password: Some(Secret::new("from-refresh")),
        ..single
    };
    h.input(Input::Refreshed {
        run: h.run,
        result: Ok(Box::new(loaded(from_refresh.clone()))),
    });
    let log = h.take();
    assert!(
        log.iter()
            .all(|l| !l.starts_with("stop") && !l.starts_with("start")),
        "{log:?}"
    );
    assert_eq!(h.core.state().name(), "connected");

    // Again, but the file's session is lost (its ticket was single-use) while
    // the stale refresh still runs: that one is stopped for a run for the
    // current settings, whose answer is used; the stopped run's, if it still
    // comes, is not.
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
    let stale = h.run;
    h.input(Input::VvChanged);
    h.input(Input::Loaded {
        origin: Origin::NewFile,
        result: Ok(Box::new(loaded(ConnectionSettings {
            password: Some(Secret::new("from-file")),
            ..single.clone()
        }))),
    });
    h.connected();
    h.take();
    h.end(lost(eof(ChannelId::MAIN), 5.0));
    assert_eq!(h.core.state().name(), "waiting_for_ticket");
    assert_eq!(
        h.count("refresh"),
        1,
        "a run for these settings: {:?}",
        h.log
    );
    assert_ne!(h.run, stale);
    h.input(Input::Refreshed {
        run: stale,
        result: Ok(Box::new(loaded(from_refresh.clone()))),
    });
    assert_eq!(h.count("start"), 0, "{:?}", h.log);
    h.input(Input::Refreshed {
        run: h.run,
        result: Ok(Box::new(loaded(from_refresh))),
    });
    assert_eq!(h.count("start"), 1, "{:?}", h.log);
    assert_eq!(h.core.state().name(), "connecting");
}

/// The links made for an announcement the server cancelled come back after
/// the next announcement's links were asked for: they are not taken for the
/// next plan (the server is told only what the current plan found).
#[tokio::test(start_paused = true)]
async fn a_superseded_prelink_result_is_not_taken_for_the_current_plan() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    let begin = |h: &mut H| {
        h.event(SessionEvent::MigrateBegin {
            target: migration_target(),
            session_id: 7,
            channels: vec![],
        })
    };
    begin(&mut h);
    h.migration_target_ready();
    let first = h.plan;
    h.event(SessionEvent::MigrateCancel);
    begin(&mut h);
    h.migration_target_ready();
    let second = h.plan;
    assert_ne!(first, second);
    h.take();
    h.input(Input::Prelinked {
        plan: first,
        result: Ok(3),
    });
    assert_eq!(
        h.take(),
        Vec::<String>::new(),
        "a result of a plan given up on"
    );
    h.input(Input::MigrationPrepared {
        plan: first,
        result: Ok(Box::new(loaded(settings()))),
    });
    assert_eq!(h.take(), Vec::<String>::new());
    h.input(Input::Prelinked {
        plan: second,
        result: Ok(1),
    });
    assert_eq!(h.take(), ["reply 1 true"]);
    h.event(SessionEvent::MigrateEnd);
    assert!(h.take().contains(&"start 2 adopting".to_string()));
}

/// spice-server waits 10 s for the answer to MIGRATE_BEGIN. Slow TLS roots
/// (up to the 5 s read bound) and a slow target share one 7 s budget: the
/// server is told by then, whatever is still running.
#[tokio::test(start_paused = true)]
async fn the_server_has_its_answer_within_7_s_of_the_announcement() {
    let mut h = H::new();
    h.connected();
    h.settled(10, &[]);
    h.at(10.0);
    h.event(SessionEvent::MigrateBegin {
        target: migration_target(),
        session_id: 7,
        channels: vec![],
    });
    h.at(14.9);
    h.migration_target_ready();
    h.take();
    h.at(16.9);
    assert!(h.take().iter().all(|l| !l.starts_with("reply")));
    h.at(17.0);
    let log = h.take();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("reply") || l.starts_with("drop"))
            .collect::<Vec<_>>(),
        ["drop prelinks", "reply 1 false"],
        "{log:?}"
    );
    // The links, done after all, are too late.
    h.input(Input::Prelinked {
        plan: h.plan,
        result: Ok(1),
    });
    assert!(h.take().is_empty());
    assert_eq!(h.core.state().name(), "connected");
    // Never built at all: told all the same.
    h.event(SessionEvent::MigrateBegin {
        target: migration_target(),
        session_id: 7,
        channels: vec![],
    });
    h.at(23.9);
    assert_eq!(h.count("reply"), 0);
    h.at(24.0);
    assert_eq!(h.count("reply 1 false"), 1, "{:?}", h.log);
}
