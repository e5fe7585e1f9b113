//! An event source mapping's settings, with AWS's names and meanings.

use std::time::Duration;

use crate::config::{ConfigError, Env};

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartingPosition {
    /// From the oldest entry still in the stream (`XGROUP CREATE ... 0`).
    #[default]
    TrimHorizon,
    /// From entries added after the group is created (`$`).
    Latest,
}

/// How a consumer reads and retries; see [`SourceSettings::from_env`].
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The consumer group: one per consuming function.
    pub group: String,
    /// The `service` of its metrics: the consuming function's name (the group's
    /// name until the function sets it).
    pub service: String,
    /// This consumer's name within the group; unique per process.
    pub consumer: String,
    /// The streams to read (every partition of the aggregate types consumed).
    pub streams: Vec<String>,
    /// The aggregate types consumed, when the streams follow the namespace's
    /// layout ([`crate::layout`]): the source then reads the streams of the
    /// layout in Redis, finishing a previous generation before the current
    /// one, and `streams` only until a relay has recorded a layout. Empty:
    /// exactly `streams`.
    pub aggregate_types: Vec<String>,
    /// Where the source's own keys live: `{namespace}:dlq:{group}` and so on.
    pub namespace: String,
    /// `BatchSize`: the most records per handler call (100).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: how long to gather records before
    /// calling the handler with fewer than `batch_size` (0).
    pub maximum_batching_window: Duration,
    /// `MaximumRetryAttempts`: retries after the first attempt before a record
    /// goes to the dead-letter stream (3).
    pub maximum_retry_attempts: u32,
    /// `MaximumRecordAgeInSeconds`: older records go to the dead-letter stream
    /// without being handled (`None`: no limit, AWS's -1).
    pub maximum_record_age: Option<Duration>,
    /// `BisectBatchOnFunctionError`: on a handler error, split the batch in two
    /// and call the handler with each half (false).
    pub bisect_batch_on_function_error: bool,
    /// `ParallelizationFactor` (1, 1..=10): up to this many handler calls of one
    /// stream at once, each with the records of its own aggregates (an
    /// aggregate's records go to one call at a time, in order).
    pub parallelization_factor: usize,
    /// `StartingPosition` of a new consumer group.
    pub starting_position: StartingPosition,
    /// How long an entry delivered to another consumer stays untouched before
    /// this one claims it (that consumer is presumed dead): 30 s.
    pub visibility_timeout: Duration,
    /// Backoff before the first retry, doubled for each further one (1 s).
    pub retry_backoff: Duration,
    /// The longest backoff (60 s).
    pub max_retry_backoff: Duration,
    /// How long one blocking read waits for new entries (2 s).
    pub block: Duration,
    /// How long a consumer owns a stream without renewing its lease (10 s).
    pub lease_ttl: Duration,
    /// Other consumers idle this long with nothing pending are removed from the
    /// group (10 min).
    pub consumer_idle_timeout: Duration,
    /// Replicas that must hold a dead letter (Redis `WAIT`) before its record is
    /// acknowledged (`REDIS_MIN_REPLICAS`, 0). On a cluster the dead-letter
    /// stream and the record's stream live on different shards: without it, a
    /// failover of the dead-letter shard could lose a dead letter whose record
    /// was acknowledged on the other.
    pub min_replicas: u32,
    /// How long that `WAIT` waits (`REDIS_REPLICA_TIMEOUT_MS`, 1 s).
    pub replica_timeout: Duration,
}

impl SourceSettings {
    /// Settings with the defaults for `group` reading `streams`.
    pub fn new(group: &str, streams: Vec<String>) -> Self {
        Self {
            group: group.to_owned(),
            service: group.to_owned(),
            consumer: default_consumer_name(),
            streams,
            aggregate_types: Vec::new(),
            namespace: crate::streams::DEFAULT_NAMESPACE.to_owned(),
            batch_size: 100,
            maximum_batching_window: Duration::ZERO,
            maximum_retry_attempts: 3,
            maximum_record_age: None,
            bisect_batch_on_function_error: false,
            parallelization_factor: 1,
            starting_position: StartingPosition::TrimHorizon,
            visibility_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(60),
            block: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            consumer_idle_timeout: Duration::from_secs(600),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
        }
    }

    /// Reads the settings' variables over the defaults:
    /// `BATCH_SIZE` (1..=10000), `MAXIMUM_BATCHING_WINDOW_IN_SECONDS` (0..=300),
    /// `MAXIMUM_RETRY_ATTEMPTS` (-1 for 10000, 0..=10000),
    /// `MAXIMUM_RECORD_AGE_IN_SECONDS` (-1 for none, 60..=604800),
    /// `BISECT_BATCH_ON_FUNCTION_ERROR` (true/false), `PARALLELIZATION_FACTOR`
    /// (1..=10), `STARTING_POSITION`
    /// (`TRIM_HORIZON`/`LATEST`), `VISIBILITY_TIMEOUT_SECONDS` (1..=43200),
    /// `REDIS_MIN_REPLICAS` (0..=5), `REDIS_REPLICA_TIMEOUT_MS` (1..=60000),
    /// `CONSUMER_GROUP`, `CONSUMER_NAME`.
    pub fn from_env(mut self, env: &Env) -> Result<Self, ConfigError> {
        // Every value below is range-checked before its cast.
        self.batch_size = env.in_range("BATCH_SIZE", self.batch_size, 1, 10_000)?;
        self.maximum_batching_window =
            Duration::from_secs(env.in_range("MAXIMUM_BATCHING_WINDOW_IN_SECONDS", 0, 0, 300)?);
        self.maximum_retry_attempts = match env.in_range(
            "MAXIMUM_RETRY_ATTEMPTS",
            i64::from(self.maximum_retry_attempts),
            -1,
            10_000,
        )? {
            -1 => 10_000,
            n => u32::try_from(n).unwrap_or(10_000),
        };
        self.maximum_record_age =
            match env.in_range("MAXIMUM_RECORD_AGE_IN_SECONDS", -1, -1, 604_800)? {
                -1 => None,
                n if n < 60 => {
                    return Err(ConfigError::Malformed {
                        var: "MAXIMUM_RECORD_AGE_IN_SECONDS",
                        reason: format!("must be -1 or between 60 and 604800 (got {n})"),
                    })
                }
                n => Some(Duration::from_secs(n as u64)),
            };
        self.parallelization_factor =
            env.in_range("PARALLELIZATION_FACTOR", self.parallelization_factor, 1, 10)?;
        self.bisect_batch_on_function_error = env.parse_or(
            "BISECT_BATCH_ON_FUNCTION_ERROR",
            self.bisect_batch_on_function_error,
        )?;
        self.starting_position = match env.get("STARTING_POSITION")? {
            None | Some("TRIM_HORIZON") => StartingPosition::TrimHorizon,
            Some("LATEST") => StartingPosition::Latest,
            Some(other) => {
                return Err(ConfigError::Malformed {
                    var: "STARTING_POSITION",
                    reason: format!("must be TRIM_HORIZON or LATEST (got {other:?})"),
                })
            }
        };
        self.visibility_timeout = Duration::from_secs(env.in_range(
            "VISIBILITY_TIMEOUT_SECONDS",
            self.visibility_timeout.as_secs() as i64,
            1,
            43_200,
        )? as u64);
        self.min_replicas = env.in_range("REDIS_MIN_REPLICAS", self.min_replicas, 0, 5)?;
        self.replica_timeout =
            Duration::from_millis(env.in_range("REDIS_REPLICA_TIMEOUT_MS", 1000, 1, 60_000)?);
        if let Some(group) = env.get("CONSUMER_GROUP")? {
            self.group = checked_name("CONSUMER_GROUP", group)?;
        }
        if let Some(name) = env.get("CONSUMER_NAME")? {
            self.consumer = checked_name("CONSUMER_NAME", name)?;
        }
        Ok(self)
    }

    /// The most records one cycle of a stream takes: a batch per lane.
    pub fn cycle_capacity(&self) -> usize {
        self.batch_size.max(1) * self.parallelization_factor.clamp(1, 10)
    }

    /// Attempts in all: the first plus the retries.
    pub fn maximum_attempts(&self) -> u32 {
        self.maximum_retry_attempts.saturating_add(1)
    }

    /// The wait before retrying a record that has had `attempts` attempts.
    pub fn backoff(&self, attempts: u32) -> Duration {
        if attempts == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (attempts - 1).min(20);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.max_retry_backoff)
    }
}

fn checked_name(var: &'static str, value: &str) -> Result<String, ConfigError> {
    if value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
    {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::Malformed {
            var,
            reason: "must be up to 128 ASCII letters, digits and - _ . : @".into(),
        })
    }
}

/// `{hostname}-{pid}-{random}`: unique per process, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_STREAM_NAME").ok())
        .map(|h| {
            h.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "consumer".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_aws_defaults_and_variables_are_bounded() {
        let s = SourceSettings::new("inventory", vec!["s".into()]);
        assert_eq!(s.batch_size, 100);
        assert_eq!(s.maximum_retry_attempts, 3);
        assert_eq!(s.maximum_attempts(), 4);
        assert_eq!(s.maximum_record_age, None);
        let env = Env::from_pairs([
            ("BATCH_SIZE", "10"),
            ("MAXIMUM_RETRY_ATTEMPTS", "-1"),
            ("MAXIMUM_RECORD_AGE_IN_SECONDS", "60"),
            ("BISECT_BATCH_ON_FUNCTION_ERROR", "true"),
            ("STARTING_POSITION", "LATEST"),
        ]);
        let s = s.from_env(&env).expect("valid");
        assert_eq!(s.batch_size, 10);
        assert_eq!(s.maximum_retry_attempts, 10_000);
        assert_eq!(s.maximum_record_age, Some(Duration::from_secs(60)));
        assert!(s.bisect_batch_on_function_error);
        assert_eq!(s.starting_position, StartingPosition::Latest);
        for (var, value) in [
            ("BATCH_SIZE", "0"),
            ("MAXIMUM_RECORD_AGE_IN_SECONDS", "59"),
            ("MAXIMUM_RETRY_ATTEMPTS", "-2"),
            ("STARTING_POSITION", "AT_TIMESTAMP"),
            ("CONSUMER_NAME", "a b"),
        ] {
            let err = SourceSettings::new("g", vec![])
                .from_env(&Env::from_pairs([(var, value)]))
                .expect_err(var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = SourceSettings::new("g", vec![]);
        assert_eq!(s.backoff(0), Duration::ZERO);
        assert_eq!(s.backoff(1), Duration::from_secs(1));
        assert_eq!(s.backoff(3), Duration::from_secs(4));
        assert_eq!(s.backoff(30), Duration::from_secs(60));
    }
}
