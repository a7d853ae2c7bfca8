//! Unit tests of the channel state machine (compiled only under #[cfg(test)]).

use super::*;
use crate::wire::frame::{Decoder, Encoder, HeaderKind};
use crate::wire::msg::client;

const S: fn(u64) -> Duration = Duration::from_secs;

fn cfg(idle: f64, backstop: f64) -> KeepaliveConfig {
    KeepaliveConfig {
        idle_secs: idle,
        main_timeout_secs: backstop,
        ..KeepaliveConfig::default()
    }
}

fn server_msg(t: u16, body: &[u8]) -> Vec<u8> {
    Encoder::new(HeaderKind::Mini).frame(t, body)
}

fn ping(id: u32, ts: u64) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&ts.to_le_bytes());
    server_msg(4, &b)
}

fn set_ack(generation: u32, window: u32) -> Vec<u8> {
    let mut b = generation.to_le_bytes().to_vec();
    b.extend_from_slice(&window.to_le_bytes());
    server_msg(3, &b)
}

/// Everything the channel wants to send, decoded back into (type, body).
fn sent(ch: &mut Channel, now: Duration) -> Vec<(u16, Vec<u8>)> {
    let mut d = Decoder::new(HeaderKind::Mini, 1 << 20);
    while let Some(b) = ch.poll_transmit(now) {
        d.push(&b);
    }
    let mut v = Vec::new();
    while let Some(f) = d.next_frame().unwrap() {
        v.push((f.msg_type, f.body().to_vec()));
    }
    v
}

fn types(v: &[(u16, Vec<u8>)]) -> Vec<u16> {
    v.iter().map(|(t, _)| *t).collect()
}

#[test]
fn both_pings_of_a_pair_are_answered_at_once_with_exact_echo() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    let mut pair = ping(7, 0x1122334455667788);
    pair.extend(ping(7, 0x1122334455667799));
    ch.on_bytes(&pair, S(1)).unwrap();
    let out = sent(&mut ch, S(1));
    assert_eq!(types(&out), vec![client::PONG, client::PONG]);
    assert_eq!(out[0].1[..4], 7u32.to_le_bytes());
    assert_eq!(out[0].1[4..], 0x1122334455667788u64.to_le_bytes());
    assert_eq!(out[1].1[4..], 0x1122334455667799u64.to_le_bytes());
    assert_eq!(ch.counters().ping_recv_count, 2);
    assert_eq!(ch.counters().pong_send_count, 2);
}

#[test]
fn net_test_ping_with_padding_is_answered() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    let mut b = 1u32.to_le_bytes().to_vec();
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend(vec![0u8; 256 * 1024]);
    let wire = server_msg(4, &b);
    for chunk in wire.chunks(1460) {
        ch.on_bytes(chunk, S(0)).unwrap();
    }
    assert_eq!(types(&sent(&mut ch, S(0))), vec![client::PONG]);
}

#[test]
fn main_init_attaches_channels_and_lists_are_reported() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    let mut init = Vec::new();
    for v in [42u32, 1, 3, 2, 0, 10, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    ch.on_bytes(&server_msg(103, &init), S(0)).unwrap();
    assert_eq!(
        types(&sent(&mut ch, S(0))),
        vec![client::MAIN_ATTACH_CHANNELS]
    );
    assert!(matches!(ch.poll_event(), Some(ChannelEvent::MainInit(i)) if i.session_id == 42));
    let list = [2u32.to_le_bytes().to_vec(), vec![2, 0, 9, 1]].concat();
    ch.on_bytes(&server_msg(104, &list), S(0)).unwrap();
    assert_eq!(
        ch.poll_event(),
        Some(ChannelEvent::ChannelsList(vec![
            ChannelId::new(ChannelType::Display, 0),
            ChannelId::new(ChannelType::Usbredir, 1)
        ]))
    );
    assert!(sent(&mut ch, S(0)).is_empty(), "a list is not answered");
}

#[test]
fn display_sends_init_once_then_acks_every_window() {
    let mut ch = Channel::new(
        ChannelId::new(ChannelType::Display, 0),
        HeaderKind::Mini,
        &cfg(15.0, 0.0),
        S(0),
    );
    assert_eq!(types(&sent(&mut ch, S(0))), vec![client::DISPLAY_INIT]);
    ch.on_bytes(&set_ack(3, 4), S(0)).unwrap();
    let out = sent(&mut ch, S(0));
    assert_eq!(out, vec![(client::ACK_SYNC, 3u32.to_le_bytes().to_vec())]);
    // 12 messages (drawing and a PING) => 3 ACKs and 1 PONG.
    let mut msgs = Vec::new();
    for i in 0..12 {
        msgs.extend(if i == 5 {
            ping(1, 1)
        } else {
            server_msg(302, &[0; 40])
        });
    }
    ch.on_bytes(&msgs, S(1)).unwrap();
    let out = types(&sent(&mut ch, S(1)));
    assert_eq!(out.iter().filter(|&&t| t == client::ACK).count(), 3);
    assert_eq!(out.iter().filter(|&&t| t == client::PONG).count(), 1);
    assert!(!out.contains(&client::DISPLAY_INIT));
    assert_eq!(ch.counters().ack_send_count, 3);
}

#[test]
fn keepalive_is_ack_sync_with_current_generation_after_two_way_silence() {
    let id = ChannelId::new(ChannelType::Cursor, 0);
    let mut ch = Channel::new(id, HeaderKind::Mini, &cfg(15.0, 0.0), S(0));
    ch.on_bytes(&set_ack(9, 20), S(0)).unwrap();
    sent(&mut ch, S(0));
    assert_eq!(ch.poll_timeout(), Some(S(15)));
    ch.handle_timeout(S(14)).unwrap();
    assert!(sent(&mut ch, S(14)).is_empty());
    ch.handle_timeout(S(15)).unwrap();
    assert_eq!(
        sent(&mut ch, S(15)),
        vec![(client::ACK_SYNC, 9u32.to_le_bytes().to_vec())]
    );
    assert_eq!(ch.counters().client_keepalive_send_count, 1);
    assert_eq!(ch.counters().last_client_keepalive_send_ts_secs, Some(15.0));
    // Reset by the send: next one 15 s later, not before.
    assert_eq!(ch.poll_timeout(), Some(S(30)));
    // Inbound traffic postpones it.
    ch.on_bytes(&server_msg(101, &[]), S(25)).unwrap();
    ch.handle_timeout(S(30)).unwrap();
    assert!(sent(&mut ch, S(30)).is_empty());
    // Due 15 s after the last byte.
    assert_eq!(ch.poll_timeout(), Some(S(40)));
    // The ACK window was not touched by the keepalive: 19 more messages, no ACK yet.
    let many: Vec<u8> = (0..18).flat_map(|_| server_msg(101, &[])).collect();
    ch.on_bytes(&many, S(31)).unwrap();
    assert!(!types(&sent(&mut ch, S(31))).contains(&client::ACK));
    ch.on_bytes(&server_msg(101, &[]), S(31)).unwrap();
    assert_eq!(types(&sent(&mut ch, S(31))), vec![client::ACK]);
}

#[test]
fn keepalive_without_set_ack_echoes_generation_zero() {
    let mut ch = Channel::new(
        ChannelId::new(ChannelType::Inputs, 0),
        HeaderKind::Mini,
        &cfg(2.0, 0.0),
        S(0),
    );
    ch.handle_timeout(S(2)).unwrap();
    assert_eq!(
        sent(&mut ch, S(2)),
        vec![(client::ACK_SYNC, 0u32.to_le_bytes().to_vec())]
    );
}

#[test]
fn outbound_traffic_postpones_the_keepalive() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 0.0), S(0));
    ch.on_bytes(&ping(1, 1), S(1)).unwrap();
    sent(&mut ch, S(10)); // PONG written at 10 s
    ch.handle_timeout(S(22)).unwrap();
    assert!(sent(&mut ch, S(22)).is_empty());
    // Due 15 s after the PONG.
    assert_eq!(ch.poll_timeout(), Some(S(25)));
}

#[test]
fn a_keepalive_rides_a_wakeup_that_happens_anyway() {
    use crate::wake::Wake;
    let ms = Duration::from_millis;
    let mut ch = Channel::new(
        ChannelId::new(ChannelType::Inputs, 0),
        HeaderKind::Mini,
        &cfg(15.0, 0.0),
        S(0),
    );
    // Awake at 8 s, next wakeup expected within 5 s: not due before it.
    let wake = |at: Duration, horizon: Duration| Wake {
        start: at,
        now: at,
        horizon,
    };
    ch.handle_wake(&wake(S(8), S(5))).unwrap();
    assert!(sent(&mut ch, S(8)).is_empty());
    // Awake at 11 s, the next wakeup maybe 18 s away: it goes now, not at 15 s.
    ch.handle_wake(&wake(S(11), S(18))).unwrap();
    assert_eq!(types(&sent(&mut ch, S(11))), vec![client::ACK_SYNC]);
    assert_eq!(ch.poll_timeout(), Some(S(26)));
    // Traffic on this very wakeup: nothing rides on the wakeup that carried it.
    ch.on_bytes(&server_msg(101, &[]), S(20)).unwrap();
    let same = Wake {
        start: ms(19_999),
        now: S(20),
        horizon: S(18),
    };
    ch.handle_wake(&same).unwrap();
    assert!(sent(&mut ch, S(20)).is_empty());
    // The window says the same to the planner.
    let w = ch.wake_window().unwrap();
    assert_eq!(w.due, S(35));
    assert!(!w.ready(&same));
    assert!(w.ready(&wake(ms(20_030), S(18))));
}

#[test]
fn a_fresh_link_lets_the_server_open_before_any_keepalive_rides() {
    use crate::wake::Wake;
    let ms = Duration::from_millis;
    let cursor = ChannelId::new(ChannelType::Cursor, 0);
    let mut ch = Channel::new(cursor, HeaderKind::Mini, &cfg(15.0, 0.0), S(0));
    let wake = |at: Duration| Wake {
        start: at,
        now: at,
        horizon: S(18),
    };
    // Other channels wake the process right after the link: nothing rides yet.
    ch.handle_wake(&wake(ms(20))).unwrap();
    assert!(sent(&mut ch, ms(20)).is_empty());
    // The server's opening messages, late (a loaded server): the SET_ACK is
    // answered with its own generation, and nothing counts as a reply.
    let mut opening = set_ack(1, 20);
    opening.extend(server_msg(101, &[0; 12]));
    ch.on_bytes(&opening, ms(900)).unwrap();
    assert_eq!(
        sent(&mut ch, ms(900)),
        vec![(client::ACK_SYNC, 1u32.to_le_bytes().to_vec())]
    );
    ch.handle_wake(&wake(S(2))).unwrap();
    assert!(sent(&mut ch, S(2)).is_empty());
    assert_eq!(ch.counters().keepalive_replies, 0);
    // From idle / 2 after the link a wakeup carries one.
    ch.handle_wake(&wake(ms(7_600))).unwrap();
    assert_eq!(types(&sent(&mut ch, ms(7_600))), vec![client::ACK_SYNC]);
}

#[test]
fn main_backstop_fires_on_inbound_silence_only() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    ch.on_bytes(&ping(1, 1), S(10)).unwrap();
    // Our own keepalives do not count as life from the server.
    for t in [25, 40, 55, 70, 85] {
        ch.handle_timeout(S(t)).unwrap();
        sent(&mut ch, S(t));
    }
    assert_eq!(
        ch.handle_timeout(S(100)),
        Err(ChannelError::KeepaliveTimeout { silent: S(90) })
    );
    let other = Channel::new(
        ChannelId::new(ChannelType::Inputs, 0),
        HeaderKind::Mini,
        &cfg(0.0, 90.0),
        S(0),
    );
    assert_eq!(other.poll_timeout(), None, "backstop is main's only");
}

fn main_init() -> Vec<u8> {
    let mut init = Vec::new();
    for v in [42u32, 1, 3, 2, 0, 10, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    server_msg(103, &init)
}

#[test]
fn main_probes_halfway_and_an_answer_keeps_the_session() {
    // A backstop shorter than the server's 15 s PING interval: the probe
    // (ATTACH_CHANNELS, answered by CHANNELS_LIST) keeps a live server from
    // looking frozen.
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 10.0), S(0));
    ch.on_bytes(&main_init(), S(0)).unwrap();
    assert_eq!(
        types(&sent(&mut ch, S(0))),
        vec![client::MAIN_ATTACH_CHANNELS]
    );
    assert_eq!(ch.poll_timeout(), Some(S(5)));
    ch.handle_timeout(S(5)).unwrap();
    assert_eq!(
        types(&sent(&mut ch, S(5))),
        vec![client::MAIN_ATTACH_CHANNELS]
    );
    // One probe per silence: nothing more until the server speaks.
    assert_eq!(ch.poll_timeout(), Some(S(10)));
    let list = [1u32.to_le_bytes().to_vec(), vec![2, 0]].concat();
    ch.on_bytes(&server_msg(104, &list), Duration::from_millis(5010))
        .unwrap();
    assert!(ch.handle_timeout(S(10)).is_ok(), "answered: no timeout");
    assert_eq!(ch.counters().keepalive_replies, 1);
    // A frozen server never answers: the probe goes out, then the timeout.
    ch.handle_timeout(Duration::from_millis(10_010)).unwrap();
    assert_eq!(
        types(&sent(&mut ch, Duration::from_millis(10_010))),
        vec![client::MAIN_ATTACH_CHANNELS]
    );
    assert_eq!(
        ch.handle_timeout(Duration::from_millis(15_010)),
        Err(ChannelError::KeepaliveTimeout { silent: S(10) })
    );
}

#[test]
fn no_probe_before_main_init() {
    let ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(0.0, 10.0), S(0));
    assert_eq!(ch.poll_timeout(), Some(S(10)), "only the backstop itself");
}

#[test]
fn oversized_or_malformed_input_is_a_typed_error() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    let mut h = 4u16.to_le_bytes().to_vec();
    h.extend_from_slice(&(1u32 << 31).to_le_bytes());
    assert!(matches!(
        ch.on_bytes(&h, S(0)),
        Err(ChannelError::Wire(WireError::TooLarge { .. }))
    ));
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    assert!(matches!(
        ch.on_bytes(&server_msg(4, &[1, 2, 3]), S(0)),
        Err(ChannelError::Wire(WireError::BadBody { .. }))
    ));
}

#[test]
fn counters_track_both_directions() {
    let mut ch = Channel::new(ChannelId::MAIN, HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
    let p = ping(1, 2);
    ch.on_bytes(&p, S(3)).unwrap();
    sent(&mut ch, S(3));
    let c = ch.counters();
    assert_eq!(c.bytes_in, p.len() as u64);
    assert_eq!(c.bytes_out, 18);
    assert_eq!((c.messages_in, c.messages_out), (1, 1));
    assert_eq!(c.last_recv_ts_secs, Some(3.0));
    assert_eq!(c.last_ping_recv_ts_secs, Some(3.0));
    assert_eq!(c.connected_at_secs, Some(0.0));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_bytes(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..12)) {
        for ty in [ChannelType::Main, ChannelType::Display, ChannelType::Inputs] {
            let mut ch = Channel::new(ChannelId::new(ty, 0), HeaderKind::Mini, &cfg(15.0, 90.0), S(0));
            for c in &chunks {
                if ch.on_bytes(c, S(1)).is_err() { break; }
                while ch.poll_transmit(S(1)).is_some() {}
                while ch.poll_event().is_some() {}
            }
        }
    }
}

/// With the display mirror, DISPLAY_INIT carries its sizes, LZ is asked for
/// when the server takes a preference, and every display message reaches the
/// mirror; without it, the bytes are today's.
#[test]
fn display_channel_feeds_the_mirror() {
    use crate::display::screen::Screen;
    let id = ChannelId::new(ChannelType::Display, 0);
    let mut plain = Channel::new(id, HeaderKind::Mini, &cfg(15.0, 0.0), S(0));
    let init = plain.poll_transmit(S(0)).unwrap();
    assert_eq!(init.len(), 20);
    assert!(plain.poll_transmit(S(0)).is_none());

    let screen = Screen::on(crate::display::Limits::default(), None);
    let feed = std::sync::Arc::new(screen.attach(tokio::time::Instant::now()).unwrap());
    let mut ch = Channel::with_mirror(
        id,
        HeaderKind::Mini,
        &cfg(15.0, 0.0),
        S(0),
        super::MirrorLink {
            sink: feed,
            pixmap_cache: 1000,
            glz_window: 500,
            prefer_lz: true,
        },
    );
    let init = ch.poll_transmit(S(0)).unwrap();
    assert_eq!(&init[..7], &[101, 0, 14, 0, 0, 0, 1]);
    assert_eq!(&init[7..15], &1000i64.to_le_bytes());
    assert_eq!(&init[16..20], &500i32.to_le_bytes());
    assert_eq!(ch.poll_transmit(S(0)).unwrap(), vec![103, 0, 1, 0, 0, 0, 6]);
    let body = crate::display::tests::surface_create(0, 4, 4, true);
    let mut msg = 314u16.to_le_bytes().to_vec();
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&body);
    ch.on_bytes(&msg, S(1)).unwrap();
    assert_eq!(screen.shot().unwrap().frame.width, 4);
}

/// With `display.stale_after`, the display channel's one extra deadline is
/// the stale check (none before a frame, none without the option), and its
/// timer runs it.
#[test]
fn the_stale_check_is_the_display_channels_deadline() {
    use crate::display::screen::Screen;
    let id = ChannelId::new(ChannelType::Display, 0);
    let msg = |ty: u16, body: Vec<u8>| {
        let mut m = ty.to_le_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(&body);
        m
    };
    for stale_after in [None, Some(S(5))] {
        let screen = Screen::on(crate::display::Limits::default(), stale_after);
        let start = tokio::time::Instant::now();
        let feed = std::sync::Arc::new(screen.attach(start).unwrap());
        let mut ch = Channel::with_mirror(
            id,
            HeaderKind::Mini,
            &cfg(15.0, 0.0),
            S(0),
            super::MirrorLink {
                sink: feed,
                pixmap_cache: 1000,
                glz_window: 500,
                prefer_lz: false,
            },
        );
        while ch.poll_transmit(S(0)).is_some() {}
        assert_eq!(ch.poll_timeout(), Some(S(15)), "keepalive only");
        let create = crate::display::tests::surface_create(0, 4, 4, true);
        ch.on_bytes(&msg(314, create), S(1)).unwrap();
        let fill = crate::display::tests::fill(0, 0, 0, 2, 2, 0xff);
        ch.on_bytes(&msg(302, fill), S(2)).unwrap();
        match stale_after {
            // The keepalive: 15 s after the last byte.
            None => assert_eq!(ch.poll_timeout(), Some(S(17))),
            Some(_) => {
                // The new surface's repaint time (2 s) ends at 3 s: the
                // drawing is looked at then, and the stale check is 5 s
                // after the fill.
                assert_eq!(ch.poll_timeout(), Some(S(3)));
                ch.handle_timeout(S(3)).unwrap();
                assert_eq!(ch.poll_timeout(), Some(S(7)));
                ch.handle_timeout(S(7)).unwrap();
                let v = screen.view_at(start + S(7), 0.0).unwrap();
                assert_eq!(v.stale, Some(true));
                assert_eq!(ch.poll_timeout(), Some(S(17)), "stale: keepalive only");
            }
        }
    }
}
