//! Ticket rules: what `delete-this-file` and `ticket-valid-until` allow, judged
//! against the injected wall clock. The supervisor asks; this module never acts.

use crate::vv::ConnectionSettings;

/// The expiry warning comes this long before `ticket-valid-until`.
pub const EXPIRY_WARNING_SECS: f64 = 30.0;

/// Wall-clock comparisons tolerate this much float rounding (seconds), so a timer
/// set for an instant never wakes a hair early and spins.
const WALL_EPSILON: f64 = 0.001;

/// What the supervisor needs to know about a ticket (never the ticket itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TicketInfo {
    /// `delete-this-file=1`: the ticket is single-use.
    pub single_use: bool,
    /// `ticket-valid-until`, unix seconds.
    pub valid_until: Option<i64>,
}

impl TicketInfo {
    pub fn from_settings(s: &ConnectionSettings) -> Self {
        TicketInfo {
            single_use: s.delete_this_file,
            valid_until: s.ticket_valid_until,
        }
    }
}

/// How long a Proxmox VE SPICE ticket lives after it is minted: the password
/// about 30 s, its proxy ticket about 40 s (measured by the Kerbside project).
pub const PROXMOX_TICKET_SECS: i64 = 30;

/// The expiry to assume for a ticket that states none: a Proxmox-shaped .vv
/// (`host=pvespiceproxy:...`) read at `unix`, when a refresh command can mint a
/// new one. A later reconnect then goes through the refresh command instead of
/// spending an attempt on a ticket that is known to be dead.
pub fn implied_valid_until(s: &ConnectionSettings, can_refresh: bool, unix: f64) -> Option<i64> {
    let proxmox = s.host.starts_with("pvespiceproxy:");
    (can_refresh && proxmox && s.ticket_valid_until.is_none())
        .then(|| unix.floor() as i64 + PROXMOX_TICKET_SECS)
}

/// The one UTC formatter, where the ticket rules have always found it.
pub use crate::time::format_unix_utc;

/// The current ticket and what has happened to it.
#[derive(Debug, Clone)]
pub(crate) struct TicketState {
    pub info: TicketInfo,
    /// A session (or a link answer) has used it: a single-use ticket is gone.
    pub used: bool,
    /// Judge expiry by our clock. Off while a ticket that looked expired at load
    /// gets its one try, and for good if the server then accepted it (the server
    /// is the authority; our clock is the suspect).
    pub enforce_expiry: bool,
    /// Already past when loaded (spiced start or reload).
    pub past_at_load: bool,
    /// The T-30 s warning was given (or is moot).
    pub warned: bool,
}

impl TicketState {
    /// Adopts a ticket at wall time `unix`; returns a warning if it already expired.
    /// `previous` keeps the warning from repeating when a reload brings the same expiry.
    pub fn load(
        info: TicketInfo,
        unix: f64,
        previous: Option<&TicketState>,
    ) -> (TicketState, Option<String>) {
        let past = info.valid_until.is_some_and(|v| v as f64 <= unix);
        let same_expiry = previous.is_some_and(|p| p.info.valid_until == info.valid_until);
        let st = TicketState {
            info,
            used: false,
            enforce_expiry: !past,
            past_at_load: past,
            warned: past || (same_expiry && previous.is_some_and(|p| p.warned)),
        };
        let warn = match info.valid_until {
            Some(v) if past => Some(format!(
                "ticket-valid-until {} is already past (local clock {}); trying once: the server decides",
                format_unix_utc(v),
                format_unix_utc(unix.floor() as i64)
            )),
            _ => None,
        };
        (st, warn)
    }

    /// Expired by our clock, and our clock is trusted for this ticket.
    pub fn expired(&self, unix: f64) -> Option<i64> {
        let v = self.info.valid_until?;
        (self.enforce_expiry && v as f64 <= unix + WALL_EPSILON).then_some(v)
    }

    /// The wall time at which [`expired`](Self::expired) becomes true, if it can.
    pub fn expiry_unix(&self) -> Option<f64> {
        let v = self.info.valid_until?;
        self.enforce_expiry.then_some(v as f64)
    }

    /// `ticket-valid-until` exists and lies ahead of `unix`.
    pub fn still_valid(&self, unix: f64) -> Option<i64> {
        self.info.valid_until.filter(|&v| v as f64 > unix)
    }

    /// Wall time of the pending T-30 s warning.
    pub fn warning_unix(&self) -> Option<f64> {
        let v = self.info.valid_until?;
        (!self.warned && self.enforce_expiry).then_some(v as f64 - EXPIRY_WARNING_SECS)
    }

    /// The T-30 s warning, once per ticket, if it is due at `unix`.
    pub fn poll_warning(&mut self, unix: f64) -> Option<String> {
        let at = self.warning_unix()?;
        if unix + WALL_EPSILON < at {
            return None;
        }
        self.warned = true;
        let v = self.info.valid_until?;
        if v as f64 <= unix {
            // Slept through the warning window: the expiry rule speaks instead.
            return None;
        }
        Some(format!(
            "ticket expires at {} (in {:.0} s): reconnecting after that needs a fresh .vv",
            format_unix_utc(v),
            (v as f64 - unix).max(0.0)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxmox_ticket_is_taken_to_die_30_s_after_reading_when_it_can_be_refreshed() {
        let pve = ConnectionSettings {
            host: "pvespiceproxy:6643a1b2:101:node1::8fa3".into(),
            ..Default::default()
        };
        assert_eq!(implied_valid_until(&pve, true, 1000.7), Some(1030));
        // No refresh command: nothing to gain, the server decides.
        assert_eq!(implied_valid_until(&pve, false, 1000.0), None);
        // An explicit ticket-valid-until wins.
        let stated = ConnectionSettings {
            ticket_valid_until: Some(5000),
            ..pve.clone()
        };
        assert_eq!(implied_valid_until(&stated, true, 1000.0), None);
        let plain = ConnectionSettings {
            host: "vm.example".into(),
            ..Default::default()
        };
        assert_eq!(implied_valid_until(&plain, true, 1000.0), None);
    }
}
