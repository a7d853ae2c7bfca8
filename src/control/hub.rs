//! The fan-out of subscribe lines: a bounded `broadcast` ring that the shell
//! (status changes) and [`EventLayer`] (the journal's key events) publish into
//! without waiting. A subscriber that falls behind the ring is dropped by the
//! server.

use super::protocol::VERSION;
use std::sync::Arc;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines a subscriber may be behind before it is dropped.
pub const SUBSCRIBER_BACKLOG: usize = 256;

/// The fan-out of subscribe lines. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(SUBSCRIBER_BACKLOG)
    }
}

impl Hub {
    pub fn new(backlog: usize) -> Hub {
        Hub {
            tx: broadcast::channel(backlog.max(1)).0,
        }
    }

    /// Hands `line` (one JSON object, no newline) to every subscriber. Never
    /// waits: the ring overwrites what a slow subscriber has not read.
    pub fn publish(&self, line: String) {
        // Err: nobody subscribed.
        let _ = self.tx.send(Arc::from(line));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// A `tracing` layer that forwards every event carrying a `message_id` field
/// (exactly the journal's key events, see `events`) to the [`Hub`] as
/// `{"version":1,"type":"event",...}`. It formats the event and hands it to
/// the broadcast ring; it never waits, and never logs (that would recurse).
pub struct EventLayer {
    hub: Hub,
}

impl EventLayer {
    pub fn new(hub: Hub) -> EventLayer {
        EventLayer { hub }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    message_id: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, serde_json::Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f, serde_json::Value::from(format!("{v:?}")));
    }
}

impl Fields {
    fn put(&mut self, f: &Field, v: serde_json::Value) {
        match f.name() {
            "message" => {
                self.message = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            "message_id" => {
                self.message_id = Some(match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            name => {
                self.fields.insert(name.to_string(), v);
            }
        }
    }
}

/// The event line for an event with `message_id` (None without one).
fn event_line(event: &Event<'_>, now: f64) -> Option<String> {
    let mut v = Fields::default();
    event.record(&mut v);
    let id = v.message_id?;
    let name = crate::events::ALL
        .iter()
        .find(|(_, i)| *i == id)
        .map(|(n, _)| *n);
    let line = serde_json::json!({
        "version": VERSION,
        "type": "event",
        "time": now,
        "level": event.metadata().level().as_str(),
        "message_id": id,
        "name": name,
        "message": v.message,
        "fields": v.fields,
    });
    Some(line.to_string())
}

impl<S: Subscriber> Layer<S> for EventLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if self.hub.subscribers() == 0 {
            return;
        }
        if let Some(line) = event_line(event, crate::time::unix_now()) {
            self.hub.publish(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn key_events_are_forwarded_and_other_lines_are_not() {
        use tracing_subscriber::layer::SubscriberExt;
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        let sub = tracing_subscriber::registry().with(EventLayer::new(hub.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!("an ordinary line");
            tracing::warn!(
                message_id = crate::events::SESSION_LOST,
                channel = "main",
                attempt = 2u64,
                "session lost after 3.0 s: main failed first: \x1b[31mreset"
            );
        });
        let line = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "one event only");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["type"], "event");
        assert_eq!(v["name"], "session_lost");
        assert_eq!(v["message_id"], crate::events::SESSION_LOST);
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["channel"], "main");
        assert_eq!(v["fields"]["attempt"], 2);
        assert!(v["message"].as_str().unwrap().ends_with("\x1b[31mreset"));
        assert!(!line.contains('\x1b'), "JSON escapes control characters");
    }

    /// Publishing never waits for a subscriber: 100 000 events into a hub whose
    /// only subscriber never reads take no time, and the subscriber is then
    /// behind (it will be dropped), the ring bounded.
    #[test]
    fn a_subscriber_that_never_reads_never_slows_the_publisher() {
        let hub = Hub::new(SUBSCRIBER_BACKLOG);
        let mut stuck = hub.subscribe();
        let start = std::time::Instant::now();
        for i in 0..100_000 {
            hub.publish(format!("{{\"n\":{i}}}"));
        }
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(matches!(
            stuck.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(n)) if n == 100_000 - SUBSCRIBER_BACKLOG as u64
        ));
    }
}
