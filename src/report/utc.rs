//! UTC calendar formatting for report file names, zip entry times and JSON
//! timestamps, without a date-time dependency (civil-from-days arithmetic).

use std::time::{SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
