//! The one place that turns config seconds into durations, plus the wall-clock
//! reads the I/O edges need and the one UTC formatter ([`Utc`],
//! [`format_unix_utc`]: report names and timestamps, log lines, ticket and
//! certificate times, `spiced status`); the sans-IO state machines take time as
//! an argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The longest duration spiced ever schedules; guards arithmetic on odd values.
pub const MAX: Duration = Duration::from_secs(86_400 * 366);

/// Seconds from config as a Duration: nonsense (negative, NaN) is 0, huge is capped.
pub fn secs(v: f64) -> Duration {
    if !v.is_finite() || v <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(v).map_or(MAX, |d| d.min(MAX))
}

/// Like [`secs`], but 0 means "off".
pub fn secs_opt(v: f64) -> Option<Duration> {
    Some(secs(v)).filter(|d| !d.is_zero())
}

/// `t + d` without overflow panics.
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX))
        .or_else(|| t.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(t)
}

/// Wall-clock seconds since the epoch (0 before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Unix seconds (as [`unix_now`] gives them) back to a `SystemTime`; nonsense
/// (negative, NaN, beyond `SystemTime`) is the epoch.
pub fn unix_to_system(unix: f64) -> SystemTime {
    if !unix.is_finite() || unix <= 0.0 {
        return SystemTime::UNIX_EPOCH;
    }
    Duration::try_from_secs_f64(unix)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Wall-clock milliseconds since the epoch, for the DISCONNECTING message.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Sleeps until `d`; never returns when there is no deadline.
pub async fn sleep_until_opt(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A duration for humans: `1s`, `4m 30s`, `250ms`.
pub fn fmt_dur(d: Duration) -> String {
    let ms = Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64);
    humantime::format_duration(ms).to_string()
}

/// A broken-down UTC time (second resolution plus milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
}

impl Utc {
    /// Times before 1970 (a badly set clock) are clamped to the epoch.
    pub fn from_system(t: SystemTime) -> Utc {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Utc::from_unix(d.as_secs(), d.subsec_millis() as u16)
    }

    pub fn from_unix(secs: u64, millis: u16) -> Utc {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            millis,
        }
    }

    /// `20240102T030405Z`: sorts chronologically as a string.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339, `2024-01-02T03:04:05Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 with milliseconds, `2024-01-02T03:04:05.678Z` (log lines).
    pub fn rfc3339_millis(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// Unix seconds as RFC 3339 UTC (`2025-01-31T12:00:00Z`); out-of-range values
/// (before 1970, after 9999) as `unix time N`.
pub fn format_unix_utc(secs: i64) -> String {
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match u64::try_from(secs) {
        Ok(s) if secs <= LAST => Utc::from_unix(s, 0).rfc3339(),
        _ => format!("unix time {secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_to_system_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(unix_to_system(1_700_000_000.25), t);
        for odd in [f64::NAN, -1.0, f64::INFINITY, 1e300] {
            assert_eq!(unix_to_system(odd), SystemTime::UNIX_EPOCH);
        }
    }

    #[test]
    fn odd_seconds_never_panic() {
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(1e20), MAX);
        assert_eq!(secs(1.5), Duration::from_millis(1500));
        assert_eq!(secs_opt(0.0), None);
    }

    #[test]
    fn known_dates() {
        assert_eq!(Utc::from_unix(0, 0).rfc3339(), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z (leap day)
        let u = Utc::from_unix(1_709_210_096, 7);
        assert_eq!(u.rfc3339(), "2024-02-29T12:34:56Z");
        assert_eq!(u.compact(), "20240229T123456Z");
        assert_eq!(u.rfc3339_millis(), "2024-02-29T12:34:56.007Z");
        assert_eq!(
            Utc::from_unix(4_102_444_799, 0).rfc3339(),
            "2099-12-31T23:59:59Z"
        );
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Utc::from_system(before).rfc3339(), "1970-01-01T00:00:00Z");
    }

    /// The same text humantime gave (the formatter it replaces), and total.
    #[test]
    fn unix_seconds_format_as_humantime_did_and_never_fail() {
        for secs in [
            0u64,
            1,
            951_782_400,
            1_709_210_096,
            1_800_000_000,
            253_402_300_799,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(
                format_unix_utc(secs as i64),
                humantime::format_rfc3339_seconds(t).to_string(),
                "{secs}"
            );
        }
        assert_eq!(format_unix_utc(-5), "unix time -5");
        assert_eq!(format_unix_utc(253_402_300_800), "unix time 253402300800");
        assert_eq!(format_unix_utc(i64::MAX), format!("unix time {}", i64::MAX));
        assert_eq!(format_unix_utc(i64::MIN), format!("unix time {}", i64::MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn after_saturates() {
        let t = Instant::now();
        assert!(after(t, Duration::MAX) > t);
    }
}
