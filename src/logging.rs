//! Log setup. RUST_LOG wins over the config's `log.filter`. A bounded ring of
//! recent lines feeds `log.txt` in disconnect reports, whatever the target.
//!
//! `log.target` picks the sink (see [`Sink`]): journald's native protocol
//! ([`crate::journal`]), or one line per event on stderr, readable in a terminal
//! and, without colours and timestamps of our own, in a journal stream. stderr
//! is written through [`crate::stderr`]'s queue, never on the caller's thread.

use crate::config::{LogConfig, LogTarget};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Where lines go, as decided from `log.target` and the process's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The native protocol; refused lines go to stderr as `<N>text`.
    Journal,
    /// stderr, with timestamps (and colours on a terminal).
    Stderr,
    /// stderr that is a journal stream: no timestamps or colours (journald adds
    /// the time). Only with `target = "stderr"`.
    StderrToJournal,
}

/// The sink for `target` when stderr is (`stderr_is_journal`) or is not the journal.
pub fn choose_sink(target: LogTarget, stderr_is_journal: bool) -> Sink {
    match (target, stderr_is_journal) {
        (LogTarget::Journald, _) | (LogTarget::Auto, true) => Sink::Journal,
        (LogTarget::Stderr, true) => Sink::StderrToJournal,
        (LogTarget::Auto | LogTarget::Stderr, false) => Sink::Stderr,
    }
}

/// Installs the global subscriber. `ring` (if any) receives a copy of every line
/// that passes the filter. Safe to call twice (the second call does nothing).
pub fn init<L>(log: &LogConfig, ring: Option<L>)
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(filter_string(rust_log.as_deref(), &log.filter))
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let sink = choose_sink(log.target, crate::stderr::is_journal_stream());
    let ansi = sink == Sink::Stderr && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Through the queue: a write to stderr can block, lines come from the loop.
    let base = fmt::layer()
        .with_writer(crate::stderr::Stderr)
        .with_ansi(ansi)
        .with_target(false);
    let out = match sink {
        Sink::Journal => crate::journal::JournalLayer::stderr().boxed(),
        Sink::StderrToJournal => base.without_time().boxed(),
        Sink::Stderr => base.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(ring)
        .with(out)
        .with(filter)
        .try_init();
}

/// Logs `message` at syslog `priority` (2 crit, 3 err, 4 warning) outside
/// `tracing`: before logging is set up (the config that says how failed to
/// load) or from the panic hook. On a journal stream (under systemd) it is an
/// entry of that priority: natively, else `<N>` on the stream; elsewhere a
/// plain `spiced: ...` line on stderr. Waits at most
/// [`crate::journal::SEND_TIMEOUT`], never for stderr (see [`crate::stderr`]):
/// call [`crate::stderr::flush`] before exiting.
pub fn direct(priority: u8, message: &str) {
    if crate::stderr::is_journal_stream() {
        crate::journal::JournalLayer::stderr().emit(priority, message);
    } else {
        crate::stderr::write_line(format!("spiced: {message}\n").into_bytes());
    }
}

/// The filter to use: `RUST_LOG` when it says something, else `fallback`. A set
/// but empty (or blank) `RUST_LOG`, as `Environment=RUST_LOG=` in a unit file
/// leaves it, counts as unset: as a filter it would silence every line.
pub fn filter_string(rust_log: Option<&str>, fallback: &str) -> String {
    match rust_log {
        Some(v) if !v.trim().is_empty() => v.to_string(),
        _ => fallback.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_journal_stream_pick_the_sink() {
        use LogTarget::*;
        assert_eq!(choose_sink(Auto, true), Sink::Journal);
        assert_eq!(choose_sink(Auto, false), Sink::Stderr);
        assert_eq!(choose_sink(Journald, false), Sink::Journal);
        assert_eq!(choose_sink(Journald, true), Sink::Journal);
        assert_eq!(choose_sink(Stderr, true), Sink::StderrToJournal);
        assert_eq!(choose_sink(Stderr, false), Sink::Stderr);
    }

    #[test]
    fn empty_rust_log_is_unset() {
        assert_eq!(filter_string(None, "info"), "info");
        assert_eq!(filter_string(Some(""), "info"), "info");
        assert_eq!(filter_string(Some("  "), "warn"), "warn");
        assert_eq!(filter_string(Some("debug"), "info"), "debug");
    }
}
