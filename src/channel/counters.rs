//! Per-channel traffic counters, kept by each channel task and snapshotted into
//! disconnect reports. Times are seconds since the session started.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub last_recv_ts_secs: Option<f64>,
    pub last_send_ts_secs: Option<f64>,
    pub last_ping_recv_ts_secs: Option<f64>,
    pub last_client_keepalive_send_ts_secs: Option<f64>,
    pub ping_recv_count: u32,
    pub pong_send_count: u32,
    pub client_keepalive_send_count: u32,
    /// Messages the server sent in answer to a keepalive (spice-server sends none
    /// for ACK_SYNC; a non-zero value here means the keepalive perturbs the server).
    pub keepalive_replies: u32,
    pub ack_send_count: u32,
    pub connected_at_secs: Option<f64>,
    pub closed_at_secs: Option<f64>,
    pub close_reason: Option<String>,
}

/// Live traffic totals per channel for the daemon's life (metrics): every
/// channel task adds what its [`ChannelCounters`] grew by since it last
/// published, so the totals only ever grow, cover the running connections as
/// well as ended ones, and a relinked channel never counts twice. Publishing
/// is three relaxed atomic adds; nothing waits on a reader.
#[derive(Debug, Clone, Default)]
pub struct Traffic(
    std::sync::Arc<
        std::sync::Mutex<
            std::collections::BTreeMap<crate::wire::ChannelId, std::sync::Arc<TrafficSlot>>,
        >,
    >,
);

/// One channel's totals.
#[derive(Debug, Default)]
pub struct TrafficSlot {
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
    keepalives: std::sync::atomic::AtomicU64,
}

/// A snapshot of one channel's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub keepalives: u64,
}

/// A channel task's handle on its slot: remembers what it already added.
#[derive(Debug)]
pub struct TrafficPublisher {
    slot: std::sync::Arc<TrafficSlot>,
    seen: TrafficTotals,
}

impl Traffic {
    /// The publisher for one connection of `ch` (its counters start at 0).
    pub fn publisher(&self, ch: crate::wire::ChannelId) -> TrafficPublisher {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = map.entry(ch).or_default().clone();
        TrafficPublisher {
            slot,
            seen: TrafficTotals::default(),
        }
    }

    /// Every channel seen so far with its totals.
    pub fn snapshot(&self) -> std::collections::BTreeMap<crate::wire::ChannelId, TrafficTotals> {
        use std::sync::atomic::Ordering::Relaxed;
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(ch, s)| {
                (
                    *ch,
                    TrafficTotals {
                        bytes_in: s.bytes_in.load(Relaxed),
                        bytes_out: s.bytes_out.load(Relaxed),
                        keepalives: s.keepalives.load(Relaxed),
                    },
                )
            })
            .collect()
    }
}

impl TrafficPublisher {
    /// Adds what `c` grew by since the last call.
    pub fn publish(&mut self, c: &ChannelCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = TrafficTotals {
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            keepalives: u64::from(c.client_keepalive_send_count),
        };
        let add = |a: &std::sync::atomic::AtomicU64, new: u64, old: u64| {
            if new > old {
                a.fetch_add(new - old, Relaxed);
            }
        };
        add(&self.slot.bytes_in, now.bytes_in, self.seen.bytes_in);
        add(&self.slot.bytes_out, now.bytes_out, self.seen.bytes_out);
        add(&self.slot.keepalives, now.keepalives, self.seen.keepalives);
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChannelId, ChannelType};

    #[test]
    fn traffic_totals_grow_across_connections_and_never_count_twice() {
        let t = Traffic::default();
        let disp = ChannelId::new(ChannelType::Display, 0);
        let mut p = t.publisher(disp);
        let mut c = ChannelCounters {
            bytes_in: 100,
            bytes_out: 10,
            client_keepalive_send_count: 1,
            ..Default::default()
        };
        p.publish(&c);
        p.publish(&c);
        c.bytes_in = 150;
        p.publish(&c);
        // The channel is relinked: a new connection, counters from 0.
        let mut p2 = t.publisher(disp);
        p2.publish(&ChannelCounters {
            bytes_in: 5,
            bytes_out: 1,
            client_keepalive_send_count: 2,
            ..Default::default()
        });
        let s = t.snapshot();
        assert_eq!(
            s[&disp],
            TrafficTotals {
                bytes_in: 155,
                bytes_out: 11,
                keepalives: 3
            }
        );
        assert_eq!(s.len(), 1);
    }
}
