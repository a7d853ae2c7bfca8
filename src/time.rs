//! The one place that turns config seconds into durations, plus the wall-clock
//! reads the I/O edges need; the sans-IO state machines take time as an argument.

use std::time::{Duration, SystemTime};
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

    #[tokio::test(start_paused = true)]
    async fn after_saturates() {
        let t = Instant::now();
        assert!(after(t, Duration::MAX) > t);
    }
}
