//! systemd integration: sd-notify (READY, STATUS, WATCHDOG, STOPPING) behind a small
//! trait so tests can capture what would be sent, and journald detection for the
//! log format. Without NOTIFY_SOCKET every call is a no-op.

use std::time::Duration;

/// One notification, in spiced's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    Status(String),
    Watchdog,
    Stopping,
}

pub trait Notifier: Send + Sync {
    fn notify(&self, n: Notice);
}

/// The real one: sd_notify over $NOTIFY_SOCKET.
pub struct SdNotify;

impl Notifier for SdNotify {
    fn notify(&self, n: Notice) {
        use sd_notify::NotifyState as S;
        let r = match &n {
            Notice::Ready => sd_notify::notify(&[S::Ready]),
            Notice::Status(s) => sd_notify::notify(&[S::Status(s)]),
            Notice::Watchdog => sd_notify::notify(&[S::Watchdog]),
            Notice::Stopping => sd_notify::notify(&[S::Stopping]),
        };
        if let Err(e) = r {
            tracing::debug!("sd_notify {n:?} failed: {e}");
        }
    }
}

/// How often to ping the watchdog: half of WatchdogSec, if systemd asked for it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// stderr goes to the journal (JOURNAL_STREAM names it, not merely is set).
pub fn logging_to_journal() -> bool {
    crate::stderr::is_journal_stream()
}
