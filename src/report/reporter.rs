//! The report policy: whether this disconnect gets a report (a cooldown so a
//! reconnect storm writes one, counting the rest), and how write failures are
//! logged (one warning while the spool stays broken, not one per disconnect).
//! Time is passed in, so the policy is tested with a fake clock.

use crate::config::ReportConfig;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct Reporter {
    dir: PathBuf,
    cfg: ReportConfig,
    last_written: Option<Duration>,
    skipped: u32,
    failing: bool,
    /// The last file name handed out, and its collision number.
    last_name: Option<(String, u32)>,
}

impl Reporter {
    /// `dir` comes from [`super::resolve_spool_dir`].
    pub fn new(dir: PathBuf, cfg: &ReportConfig) -> Reporter {
        Reporter {
            dir,
            cfg: cfg.clone(),
            last_written: None,
            skipped: 0,
            failing: false,
            last_name: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Call once per disconnect with a monotonic `now`. `Some(skipped)`: write a
    /// report now and put `skipped` in `reports_skipped_since_last`. `None`:
    /// within the cooldown (or reports disabled); the disconnect is counted.
    pub fn should_write(&mut self, now: Duration) -> Option<u32> {
        if !self.cfg.enabled {
            return None;
        }
        let cooldown = if self.cfg.cooldown_secs.is_finite() && self.cfg.cooldown_secs > 0.0 {
            Duration::from_secs_f64(self.cfg.cooldown_secs.min(1e9))
        } else {
            Duration::ZERO
        };
        match self.last_written {
            Some(last) if now.saturating_sub(last) < cooldown => {
                self.skipped = self.skipped.saturating_add(1);
                tracing::debug!(
                    skipped = self.skipped,
                    "disconnect report skipped (cooldown)"
                );
                None
            }
            _ => {
                self.last_written = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }

    /// The file name for a report of `channel` made at `wall`: numbered when
    /// this process already named one so (a second report within a second), so
    /// the name logged at the disconnect is the one the file gets.
    pub fn next_file_name(&mut self, channel: &str, wall: SystemTime) -> String {
        let base = super::writer::report_file_name(channel, wall);
        let n = match &self.last_name {
            Some((last, n)) if *last == base => n.saturating_add(1),
            _ => 1,
        };
        let name = super::writer::numbered_file_name(&base, n);
        self.last_name = Some((base, n));
        name
    }

    /// Logs the outcome of [`super::write_report`]. Returns true when a warning
    /// was logged: only for the first failure after a success (or start).
    pub fn record_result(&mut self, res: &io::Result<PathBuf>) -> bool {
        match res {
            Ok(path) => {
                if self.failing {
                    tracing::info!(dir = %self.dir.display(), "report spool writable again");
                }
                self.failing = false;
                tracing::info!(
                    report = %path.display(),
                    message_id = crate::events::REPORT_WRITTEN,
                    "disconnect report written: {}",
                    path.display()
                );
                false
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    "cannot write disconnect reports; the session carries on without them \
                     (further failures are logged at debug level)"
                );
                true
            }
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "disconnect report not written");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn cooldown_counts_skipped() {
        let mut r = Reporter::new("/nowhere".into(), &ReportConfig::default());
        assert_eq!(r.should_write(s(100)), Some(0));
        assert_eq!(r.should_write(s(110)), None);
        assert_eq!(r.should_write(s(159)), None);
        assert_eq!(r.should_write(s(160)), Some(2));
        assert_eq!(r.should_write(s(170)), None);
        assert_eq!(r.should_write(s(230)), Some(1));
        assert_eq!(r.should_write(s(300)), Some(0));
    }

    #[test]
    fn disabled_writes_nothing_and_zero_cooldown_writes_all() {
        let off = ReportConfig {
            enabled: false,
            ..ReportConfig::default()
        };
        assert_eq!(Reporter::new("/x".into(), &off).should_write(s(0)), None);
        let zero = ReportConfig {
            cooldown_secs: 0.0,
            ..ReportConfig::default()
        };
        let mut r = Reporter::new("/x".into(), &zero);
        assert_eq!(r.should_write(s(1)), Some(0));
        assert_eq!(r.should_write(s(1)), Some(0));
    }

    #[test]
    fn file_names_within_one_second_are_numbered() {
        let mut r = Reporter::new("/x".into(), &ReportConfig::default());
        let t = SystemTime::UNIX_EPOCH + s(1_709_210_096);
        let main = "spiced-disconnect-main-20240229T123456Z";
        assert_eq!(r.next_file_name("main", t), format!("{main}.zip"));
        assert_eq!(r.next_file_name("main", t), format!("{main}-2.zip"));
        assert_eq!(r.next_file_name("main", t), format!("{main}-3.zip"));
        assert_eq!(
            r.next_file_name("display", t),
            "spiced-disconnect-display-20240229T123456Z.zip"
        );
        assert_eq!(
            r.next_file_name("main", t + s(1)),
            "spiced-disconnect-main-20240229T123457Z.zip"
        );
    }

    #[test]
    fn one_warning_per_failure_streak() {
        let mut r = Reporter::new("/x".into(), &ReportConfig::default());
        let err = || Err(io::Error::other("disk full"));
        assert!(r.record_result(&err()));
        assert!(!r.record_result(&err()));
        assert!(!r.record_result(&err()));
        assert!(!r.record_result(&Ok("/x/a.zip".into())));
        assert!(r.record_result(&err()));
    }
}
