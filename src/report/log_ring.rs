//! `log.txt`: a `tracing_subscriber` layer that keeps the last N log lines of
//! the process in memory, so a report can carry what led up to the disconnect.
//!
//! Formatting happens before the lock is taken; the lock only guards a
//! `VecDeque` push/pop, so a logging thread never waits for long. A poisoned
//! lock is recovered, never propagated: logging must not panic.

use crate::time::Utc;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// One line is cut at this many bytes (a runaway debug dump stays bounded).
pub const MAX_LINE_BYTES: usize = 4096;

/// The layer and its handle (clone it: clones share the ring).
#[derive(Debug, Clone)]
pub struct LogRing {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<String>,
    cap: usize,
}

/// Span fields, formatted once when the span is created or recorded.
struct SpanFields(String);

impl LogRing {
    /// Keeps the last `cap` lines (`report.log_lines`).
    pub fn new(cap: usize) -> LogRing {
        LogRing {
            inner: Arc::new(Mutex::new(Ring {
                lines: VecDeque::with_capacity(cap.min(4096)),
                cap,
            })),
        }
    }

    /// The lines currently held, oldest first.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Appends a preformatted line (also used by tests and by code that wants a
    /// line in the report without a tracing event).
    pub fn push(&self, line: String) {
        let line = truncate(line, MAX_LINE_BYTES);
        let mut g = self.lock();
        if g.cap == 0 {
            return;
        }
        while g.lines.len() >= g.cap {
            g.lines.pop_front();
        }
        g.lines.push_back(line);
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S> Layer<S> for LogRing
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut v = FieldWriter::default();
        attrs.record(&mut v);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(v.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut v = FieldWriter::default();
        values.record(&mut v);
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<SpanFields>() {
                Some(f) => {
                    if !f.0.is_empty() && !v.fields.is_empty() {
                        f.0.push(' ');
                    }
                    f.0.push_str(&v.fields);
                    let cut = truncate(std::mem::take(&mut f.0), MAX_LINE_BYTES);
                    f.0 = cut;
                }
                None => ext.insert(SpanFields(v.fields)),
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = String::with_capacity(128);
        let _ = write!(
            line,
            "{} {:>5} ",
            Utc::from_system(SystemTime::now()).rfc3339_millis(),
            meta.level()
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                line.push_str(span.name());
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    if !f.0.is_empty() {
                        let _ = write!(line, "{{{}}}", f.0);
                    }
                }
                line.push(':');
            }
            line.push(' ');
        }
        let _ = write!(line, "{}: ", meta.target());
        let mut v = FieldWriter::default();
        event.record(&mut v);
        line.push_str(&v.message);
        if !v.fields.is_empty() {
            if !v.message.is_empty() {
                line.push(' ');
            }
            line.push_str(&v.fields);
        }
        self.push(line);
    }
}

/// `message` first, then `key=value` pairs, as the fmt layer prints them.
#[derive(Default)]
struct FieldWriter {
    message: String,
    fields: String,
}

impl FieldWriter {
    fn sep(&mut self) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
    }
}

impl Visit for FieldWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.sep();
            let _ = write!(self.fields, "{}={:?}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.sep();
            let _ = write!(self.fields, "{}={:?}", field.name(), value);
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    // One report line per event: embedded newlines would break "last N lines".
    if s.contains('\n') {
        s = s.replace('\n', "\\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_last_n_formatted_lines() {
        let ring = LogRing::new(3);
        let sub = tracing_subscriber::registry().with(ring.clone());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("channel", name = "display");
            let _g = span.enter();
            for i in 0..5 {
                tracing::warn!(n = i, "line {i}");
            }
        });
        let lines = ring.snapshot();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains(" WARN channel{name=\"display\"}: "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("line 2 n=2"), "{}", lines[0]);
        assert!(lines[2].contains("line 4 n=4"));
        assert!(lines[2].contains("spiced::report::log_ring::tests"));
    }

    #[test]
    fn long_and_multiline_lines_are_bounded() {
        let ring = LogRing::new(2);
        ring.push("é".repeat(5000));
        ring.push("a\nb".into());
        let l = ring.snapshot();
        assert!(l[0].len() <= MAX_LINE_BYTES && l[0].ends_with("..."));
        assert_eq!(l[1], "a\\nb");
        let zero = LogRing::new(0);
        zero.push("x".into());
        assert!(zero.snapshot().is_empty());
    }
}
