//! The dead-letter stream of a consumer group, `{namespace}:dlq:{group}`, and the
//! tools to look into it, redrive it and purge it.
//!
//! A dead-letter entry starts with six fields of its own (where the record
//! came from, why it failed, after how many attempts, when) followed by the
//! original entry's fields verbatim, so even an entry that could not be decoded
//! can be redriven exactly as it was.

use redis::aio::ConnectionManager;
use redis::Value;

use super::entry::{self, RawEntry};
use crate::envelope::{format_timestamp, now_utc};

const SOURCE_STREAM: &str = "dlq_source_stream";
const SOURCE_ID: &str = "dlq_source_id";
const GROUP: &str = "dlq_group";
const ERROR: &str = "dlq_error";
const ATTEMPTS: &str = "dlq_attempts";
const FAILED_AT: &str = "dlq_failed_at";
const HEADER: [&str; 6] = [SOURCE_STREAM, SOURCE_ID, GROUP, ERROR, ATTEMPTS, FAILED_AT];

/// The dead-letter stream's key for `group`.
pub fn dead_letter_key(namespace: &str, group: &str) -> String {
    format!("{namespace}:dlq:{group}")
}

/// The `SCAN MATCH` pattern of every dead-letter stream under `namespace`.
/// (The event streams' pattern, `{namespace}:{*}`, does not match them.)
pub fn dead_letter_key_pattern(namespace: &str) -> String {
    format!("{namespace}:dlq:*")
}

/// The keys of every dead-letter stream under `namespace`, sorted.
pub async fn dead_letter_keys(
    redis: &mut ConnectionManager,
    namespace: &str,
) -> Result<Vec<String>, redis::RedisError> {
    crate::streams::scan_streams(redis, &dead_letter_key_pattern(namespace)).await
}

/// One dead-letter stream, as `emulator dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterStream {
    pub key: String,
    /// The consumer group, from the key.
    pub group: String,
    pub length: u64,
    /// How long ago its oldest entry was dead-lettered (from the entry's id);
    /// `None` when it is empty.
    pub oldest_age_ms: Option<u64>,
}

/// Every dead-letter stream under `namespace` with its length and the age of
/// its oldest entry (what retention trims first).
pub async fn dead_letter_streams(
    redis: &mut ConnectionManager,
    namespace: &str,
) -> Result<Vec<DeadLetterStream>, redis::RedisError> {
    let prefix = format!("{namespace}:dlq:");
    let now_ms = u64::try_from(now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut out = Vec::new();
    for key in dead_letter_keys(redis, namespace).await? {
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(redis).await?;
        let first: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(redis)
            .await?;
        let oldest_age_ms = entry::parse_range(first)?
            .first()
            .and_then(|e| e.id.split_once('-'))
            .and_then(|(ms, _)| ms.parse::<u64>().ok())
            .map(|ms| now_ms.saturating_sub(ms));
        out.push(DeadLetterStream {
            group: key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
            key,
            length,
            oldest_age_ms,
        });
    }
    Ok(out)
}

/// The fields of a dead-letter entry for `original`.
pub(crate) fn dead_letter_fields(
    stream: &str,
    group: &str,
    original: &RawEntry,
    error: &str,
    attempts: u32,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let header = [
        stream.to_owned(),
        original.id.clone(),
        group.to_owned(),
        error.to_owned(),
        attempts.to_string(),
        format_timestamp(now_utc()),
    ];
    HEADER
        .iter()
        .zip(header)
        .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
        .chain(original.fields.iter().cloned())
        .collect()
}

/// One dead-lettered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The id of the entry in the dead-letter stream.
    pub id: String,
    pub source_stream: String,
    pub source_id: String,
    pub group: String,
    pub error: String,
    pub attempts: u32,
    pub failed_at: String,
    /// The original entry's fields, verbatim.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetter {
    fn from_entry(raw: RawEntry) -> Option<Self> {
        if raw.fields.len() < HEADER.len()
            || !HEADER
                .iter()
                .zip(&raw.fields)
                .all(|(name, (k, _))| name.as_bytes() == k.as_slice())
        {
            return None;
        }
        let mut fields = raw.fields;
        let original = fields.split_off(HEADER.len());
        let text = |i: usize| String::from_utf8_lossy(&fields[i].1).into_owned();
        Some(Self {
            id: raw.id,
            source_stream: text(0),
            source_id: text(1),
            group: text(2),
            error: text(3),
            attempts: text(4).parse().unwrap_or(0),
            failed_at: text(5),
            fields: original,
        })
    }

    /// The original entry, as it was in its stream.
    pub fn original(&self) -> RawEntry {
        RawEntry {
            id: self.source_id.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// A consumer group's dead-letter stream.
#[derive(Clone)]
pub struct DeadLetters {
    redis: ConnectionManager,
    key: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("key", &self.key)
            .finish()
    }
}

/// Entries redriven or purged per round trip.
const CHUNK: usize = 200;

impl DeadLetters {
    pub fn new(redis: ConnectionManager, namespace: &str, group: &str) -> Self {
        Self {
            redis,
            key: dead_letter_key(namespace, group),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many dead letters there are.
    pub async fn count(&self) -> Result<u64, redis::RedisError> {
        redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Up to `count` dead letters after `after` (exclusive; `None` from the first).
    pub async fn list(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<DeadLetter>, redis::RedisError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entry::parse_range(reply)?
            .into_iter()
            .filter_map(DeadLetter::from_entry)
            .collect())
    }

    /// The dead letter with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, redis::RedisError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(id)
            .arg(id)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entry::parse_range(reply)?
            .into_iter()
            .find_map(DeadLetter::from_entry))
    }

    /// Puts the selected dead letters back at the end of their original
    /// streams as new entries (so their attempts start again from 1), then
    /// removes them from the dead-letter stream. `progress(done, total)` is
    /// called after every chunk. Returns how many were redriven.
    pub async fn redrive(
        &self,
        selection: &Selection,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, redis::RedisError> {
        let mut done = 0;
        match selection {
            Selection::All => {
                // Only what is there now: a record that fails again while this
                // runs is dead-lettered anew and not redriven twice.
                let total = self.count().await?;
                let mut cursor: Option<String> = None;
                while done < total {
                    let want = CHUNK.min(usize::try_from(total - done).unwrap_or(CHUNK));
                    let letters = self.list(cursor.as_deref(), want).await?;
                    let Some(last) = letters.last() else { break };
                    cursor = Some(last.id.clone());
                    self.redrive_letters(&letters).await?;
                    done += letters.len() as u64;
                    progress(done, total);
                }
            }
            Selection::Ids(ids) => {
                let total = ids.len() as u64;
                for chunk in ids.chunks(CHUNK) {
                    let mut letters = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        letters.extend(self.get(id).await?);
                    }
                    self.redrive_letters(&letters).await?;
                    done += letters.len() as u64;
                    progress(done, total);
                }
            }
        }
        Ok(done)
    }

    async fn redrive_letters(&self, letters: &[DeadLetter]) -> Result<(), redis::RedisError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for letter in letters {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&letter.source_stream).arg("*");
            for (k, v) in &letter.fields {
                xadd.arg(k.as_slice()).arg(v.as_slice());
            }
            // The copy goes back before the dead letter is deleted: a crash in
            // between leaves a duplicate, never a loss.
            pipe.add_command(xadd).ignore();
            pipe.cmd("XDEL").arg(&self.key).arg(&letter.id).ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Deletes the selected dead letters; returns how many.
    pub async fn purge(&self, selection: &Selection) -> Result<u64, redis::RedisError> {
        let mut redis = self.redis.clone();
        match selection {
            Selection::All => {
                let n = self.count().await?;
                redis::cmd("DEL")
                    .arg(&self.key)
                    .query_async::<()>(&mut redis)
                    .await?;
                Ok(n)
            }
            Selection::Ids(ids) => {
                let mut n = 0;
                for chunk in ids.chunks(CHUNK) {
                    n += redis::cmd("XDEL")
                        .arg(&self.key)
                        .arg(chunk)
                        .query_async::<u64>(&mut redis)
                        .await?;
                }
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_original_fields_verbatim() {
        let original = RawEntry {
            id: "7-0".into(),
            fields: vec![
                (b"dlq_error".to_vec(), b"collides".to_vec()),
                (b"payload".to_vec(), vec![0xff, 0xfe]),
            ],
        };
        let fields = dead_letter_fields("events:{Order:0}", "inventory", &original, "bad", 4);
        let letter = DeadLetter::from_entry(RawEntry {
            id: "9-0".into(),
            fields,
        })
        .expect("a dead letter");
        assert_eq!(letter.source_stream, "events:{Order:0}");
        assert_eq!(letter.source_id, "7-0");
        assert_eq!(letter.error, "bad");
        assert_eq!(letter.attempts, 4);
        assert_eq!(letter.original(), original);
        assert_eq!(
            dead_letter_key("events", "inventory"),
            "events:dlq:inventory"
        );
        assert_eq!(dead_letter_key_pattern("events"), "events:dlq:*");
    }
}
