//! The reconnect back-off policy: the one place that turns `[reconnect]` settings
//! into delays. Built on backon's `ExponentialBuilder`; the supervisor asks a
//! [`Backoff`] (one per disconnect cluster) for the next delay and never computes
//! one itself.

use crate::config::{MaxAttempts, ReconnectConfig};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Longest delay spiced will ever schedule (config validation allows up to a year;
/// this only guards arithmetic on hand-built configs).
use crate::time::{secs, MAX as MAX_DELAY};

/// Back-off timings from `[reconnect]`. Cheap to copy; [`ReconnectPolicy::backoff`]
/// starts a fresh delay sequence (backon's iterator cannot be reset or cloned).
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    builder: ExponentialBuilder,
    enabled: bool,
    /// Attempts per cluster; `None`: unlimited (0 when reconnecting is disabled).
    max_attempts: Option<u32>,
    takeover_delay: Duration,
    cluster_window: Duration,
}

impl ReconnectPolicy {
    pub fn from_config(cfg: &ReconnectConfig) -> Self {
        let max_delay = secs(cfg.max_delay_secs);
        // backon never caps the first delay, so cap it here.
        let first = secs(cfg.initial_delay_secs).min(max_delay);
        let attempts = match (cfg.enabled, cfg.max_attempts) {
            (false, _) => Some(0),
            (true, MaxAttempts::Limited(n)) => Some(n),
            (true, MaxAttempts::Unlimited) => None,
        };
        let factor = if cfg.factor.is_finite() && cfg.factor >= 1.0 {
            cfg.factor as f32
        } else {
            1.0
        };
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max_delay)
            .with_factor(factor);
        // The supervisor counts attempts against `budget`; backon only stops a
        // limited sequence (an unlimited one keeps yielding max_delay).
        builder = match attempts {
            Some(n) => builder.with_max_times(n as usize),
            None => builder.without_max_times(),
        };
        if cfg.jitter {
            builder = builder.with_jitter();
        }
        ReconnectPolicy {
            builder,
            enabled: cfg.enabled,
            max_attempts: attempts,
            takeover_delay: secs(cfg.takeover_delay_secs),
            cluster_window: secs(cfg.cluster_window_secs),
        }
    }

    /// A fresh delay sequence for a new disconnect cluster.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            delays: self.builder.build(),
            used: 0,
        }
    }

    /// false: a disconnect ends spiced (no retries at all).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Attempts per disconnect cluster as configured (`Limited(0)` when
    /// reconnecting is disabled).
    pub fn max_attempts(&self) -> MaxAttempts {
        self.max_attempts
            .map_or(MaxAttempts::Unlimited, MaxAttempts::Limited)
    }

    /// The attempt budget of one cluster; `None`: unlimited. `established`: a
    /// session has come up since start or since fresh settings were loaded. Until
    /// then "unlimited" is the default finite budget (autossh's gate), so a wrong
    /// port or a bad ticket is not retried forever.
    pub fn budget(&self, established: bool) -> Option<u32> {
        match self.max_attempts {
            Some(n) => Some(n),
            None if established => None,
            None => Some(self.finite_budget()),
        }
    }

    /// A finite attempt count: the configured one, or the default for
    /// "unlimited". Bounds what must stay bounded (refresh runs per window).
    pub fn finite_budget(&self) -> u32 {
        match (self.max_attempts, MaxAttempts::DEFAULT) {
            (Some(n), _) => n,
            (None, MaxAttempts::Limited(d)) => d,
            (None, MaxAttempts::Unlimited) => 3,
        }
    }

    /// The least delay before reclaiming a session another client took over.
    pub fn takeover_delay(&self) -> Duration {
        self.takeover_delay
    }

    /// Disconnects this close to a cluster's start share its attempt budget.
    pub fn cluster_window(&self) -> Duration {
        self.cluster_window
    }

    /// The delay schedule of one cluster (with jitter: one random draw); for
    /// "unlimited" its first [`finite_budget`](Self::finite_budget) delays (the
    /// rest repeat max_delay_secs). For logs, `--check` output and docs.
    pub fn schedule(&self) -> Vec<Duration> {
        self.builder
            .build()
            .take(self.finite_budget() as usize)
            .collect()
    }
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy::from_config(&ReconnectConfig::default())
    }
}

/// The delays of one disconnect cluster, in order; `None` once the budget is spent.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    used: u32,
}

impl Backoff {
    /// The delay before the next attempt, or `None` when the cluster's budget is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let d = self.delays.next()?;
        self.used = self.used.saturating_add(1);
        Some(d.min(MAX_DELAY))
    }

    /// Attempts handed out so far (the number of the last attempt).
    pub fn used(&self) -> u32 {
        self.used
    }
}
