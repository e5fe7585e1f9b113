//! Retention: what the system keeps, for how long, and the bounded purges that
//! enforce it.
//!
//! The SQL of each purge lives in the module that owns its table (the toolkit's
//! [`crate::inbox::purge`]; a service's own, e.g. the order service's
//! idempotency keys); this module holds the settings ([`RetentionConfig`]) and
//! the loop that runs a purge in short statements ([`Purge`]).
//!
//! **Why the inboxes outlive the streams and the dead letters:** an event can
//! come back as long as it can be redriven: it stays in its stream for up to
//! `STREAM_RETENTION_HOURS`, and its dead letter for up to `DLQ_RETENTION_HOURS`
//! after that. An inbox row purged earlier would let the redriven copy apply a
//! second time, so `INBOX_RETENTION_HOURS` must be longer than both together,
//! and a configuration that breaks this is refused.
//!
//! A purge never holds a long lock: each statement deletes at most
//! `RETENTION_BATCH_SIZE` rows, found through the table's age index, and a run
//! stops after `RETENTION_MAX_BATCHES` statements per table or when its time is
//! up, whichever comes first; the next run goes on.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::info;

use crate::config::{ConfigError, Env};
use crate::error::StoreError;

/// `STREAM_RETENTION_HOURS`: how long stream entries are kept (the relay trims).
pub const STREAM_RETENTION_HOURS: &str = "STREAM_RETENTION_HOURS";
/// `DLQ_RETENTION_HOURS`: how long dead letters are kept (the relay trims).
pub const DLQ_RETENTION_HOURS: &str = "DLQ_RETENTION_HOURS";
/// `INBOX_RETENTION_HOURS`: how long inbox rows, cancelled orders and the
/// inventory's answers are kept.
pub const INBOX_RETENTION_HOURS: &str = "INBOX_RETENTION_HOURS";
/// `RETENTION_BATCH_SIZE`: rows per delete statement.
pub const BATCH_SIZE: &str = "RETENTION_BATCH_SIZE";
/// `RETENTION_MAX_BATCHES`: delete statements per table per run.
pub const MAX_BATCHES: &str = "RETENTION_MAX_BATCHES";
/// `RETENTION_TIME_BUDGET_MS`: the longest a run keeps starting statements.
pub const TIME_BUDGET_MS: &str = "RETENTION_TIME_BUDGET_MS";

pub const DEFAULT_STREAM_RETENTION_HOURS: u64 = 168;
pub const DEFAULT_DLQ_RETENTION_HOURS: u64 = 336;
/// 23 days: stream retention and dead-letter retention (21 days), and two days more.
pub const DEFAULT_INBOX_RETENTION_HOURS: u64 = 552;

/// The longest any retention may be: ten years.
const MAX_HOURS: i64 = 24 * 365 * 10;

/// `STREAM_RETENTION_HOURS` (168, 1..=87600), as the relay and retention read it.
pub fn stream_retention(env: &Env) -> Result<Duration, ConfigError> {
    hours(env, STREAM_RETENTION_HOURS, DEFAULT_STREAM_RETENTION_HOURS)
}

/// `DLQ_RETENTION_HOURS` (336, 1..=87600), as the relay and retention read it.
pub fn dlq_retention(env: &Env) -> Result<Duration, ConfigError> {
    hours(env, DLQ_RETENTION_HOURS, DEFAULT_DLQ_RETENTION_HOURS)
}

fn hours(env: &Env, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    // The range keeps the value positive and far from overflowing.
    let hours = env.in_range(var, default as i64, 1, MAX_HOURS)?;
    Ok(Duration::from_secs(hours as u64 * 3600))
}

/// What is kept how long, and how much one run may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `STREAM_RETENTION_HOURS` (168).
    pub stream_retention: Duration,
    /// `DLQ_RETENTION_HOURS` (336).
    pub dlq_retention: Duration,
    /// `INBOX_RETENTION_HOURS` (552): inbox rows, cancelled orders, answers.
    /// Always longer than `stream_retention + dlq_retention`.
    pub inbox_retention: Duration,
    /// `RETENTION_BATCH_SIZE` (1000, 1..=10000): rows per delete statement.
    pub batch_size: u32,
    /// `RETENTION_MAX_BATCHES` (100, 1..=100000): statements per table per run.
    pub max_batches: u32,
    /// `RETENTION_TIME_BUDGET_MS` (20000): no statement starts after this.
    pub time_budget: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            stream_retention: Duration::from_secs(DEFAULT_STREAM_RETENTION_HOURS * 3600),
            dlq_retention: Duration::from_secs(DEFAULT_DLQ_RETENTION_HOURS * 3600),
            inbox_retention: Duration::from_secs(DEFAULT_INBOX_RETENTION_HOURS * 3600),
            batch_size: 1000,
            max_batches: 100,
            time_budget: Duration::from_secs(20),
        }
    }
}

impl RetentionConfig {
    /// Reads the variables above. An `INBOX_RETENTION_HOURS` (set or default)
    /// not longer than `STREAM_RETENTION_HOURS + DLQ_RETENTION_HOURS` is an
    /// error naming all three: a redriven event could outlive its inbox row.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let stream_retention = stream_retention(env)?;
        let dlq_retention = dlq_retention(env)?;
        let inbox_retention = hours(env, INBOX_RETENTION_HOURS, DEFAULT_INBOX_RETENTION_HOURS)?;
        let redrivable = stream_retention + dlq_retention;
        if inbox_retention <= redrivable {
            let h = |d: Duration| d.as_secs() / 3600;
            return Err(ConfigError::Malformed {
                var: INBOX_RETENTION_HOURS,
                reason: format!(
                    "{INBOX_RETENTION_HOURS} ({}) must be longer than {STREAM_RETENTION_HOURS} ({}) + \
                     {DLQ_RETENTION_HOURS} ({}) = {}: an event redriven from the dead-letter \
                     stream would no longer be recognised as already applied",
                    h(inbox_retention),
                    h(stream_retention),
                    h(dlq_retention),
                    h(redrivable),
                ),
            });
        }
        let batch_size = env.in_range(BATCH_SIZE, d.batch_size, 1, 10_000)?;
        let max_batches = env.in_range(MAX_BATCHES, d.max_batches, 1, 100_000)?;
        Ok(Self {
            stream_retention,
            dlq_retention,
            inbox_retention,
            batch_size,
            max_batches,
            time_budget: env.millis_or(TIME_BUDGET_MS, d.time_budget)?,
        })
    }
}

/// What a retention run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeSummary {
    /// Rows deleted, per table (`orders.processed_events`, ...).
    pub deleted: BTreeMap<String, u64>,
    /// Tables where the run stopped at its bound (batches or time) with rows
    /// possibly left to purge; the next run goes on.
    pub unfinished: Vec<String>,
    pub duration_ms: u64,
}

impl PurgeSummary {
    /// Rows deleted in every table.
    pub fn total(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// One retention run: purges tables one after the other, each in statements
/// of at most `batch_size` rows, at most `max_batches` of them, none started
/// after `stop`.
#[derive(Debug)]
pub struct Purge<'a> {
    config: &'a RetentionConfig,
    stop: Instant,
    started: Instant,
    summary: PurgeSummary,
}

impl<'a> Purge<'a> {
    /// A run that starts no statement after `stop`, nor after the config's time budget.
    pub fn new(config: &'a RetentionConfig, stop: Instant) -> Self {
        let started = Instant::now();
        Self {
            config,
            stop: stop.min(started + config.time_budget),
            started,
            summary: PurgeSummary::default(),
        }
    }

    /// Purges `table` with `batch(limit)`, one statement that deletes at most
    /// `limit` rows and returns how many it deleted, until one deletes fewer
    /// than `limit` (nothing old is left) or the run's bounds are reached.
    pub async fn table<F, Fut>(
        &mut self,
        table: impl std::fmt::Display,
        mut batch: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let limit = i64::from(self.config.batch_size);
        let table = table.to_string();
        let deleted = self.summary.deleted.entry(table.clone()).or_default();
        for _ in 0..self.config.max_batches {
            if Instant::now() >= self.stop {
                break;
            }
            let n = batch(limit).await?;
            *deleted += n;
            if n < u64::from(self.config.batch_size) {
                return Ok(());
            }
        }
        self.summary.unfinished.push(table);
        Ok(())
    }

    /// The summary of the run, logged.
    pub fn finish(mut self) -> PurgeSummary {
        self.summary.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            deleted = ?self.summary.deleted,
            unfinished = ?self.summary.unfinished,
            duration_ms = self.summary.duration_ms,
            "retention run done"
        );
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_inbox_longer_than_a_redrive_can_come() {
        let config = RetentionConfig::from_env(&Env::default()).expect("the defaults are valid");
        assert_eq!(config, RetentionConfig::default());
        assert_eq!(config.inbox_retention, Duration::from_secs(552 * 3600));
        assert!(config.inbox_retention > config.stream_retention + config.dlq_retention);
        let env = Env::from_pairs([(BATCH_SIZE, "50"), (MAX_BATCHES, "3")]);
        let config = RetentionConfig::from_env(&env).expect("valid");
        assert_eq!((config.batch_size, config.max_batches), (50, 3));
        assert!(RetentionConfig::from_env(&Env::from_pairs([(BATCH_SIZE, "0")])).is_err());
    }
}
