//! The dead-letter stream of a consumer group, `{namespace}:dlq:{group}`, and the
//! tools to look into it, redrive it and purge it.
//!
//! A dead-letter entry starts with six fields of its own (where the record
//! came from, why it failed, after how many attempts, when) followed by the
//! original entry's fields verbatim, so even an entry that could not be decoded
//! can be redriven exactly as it was.

use std::collections::BTreeMap;

use crate::redis_link::{Redis, Sending, SlotPipeline};
use redis::Value;
use sha2::{Digest as _, Sha256};

use super::entry::{self, RawEntry};
use crate::config::{ConfigError, Env};
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

/// `DLQ_MAX_REDRIVES`: how many times one record may be redriven; a redrive
/// beyond that is refused unless forced (a record that keeps failing needs a
/// fix, not another try).
pub const MAX_REDRIVES: &str = "DLQ_MAX_REDRIVES";
pub const DEFAULT_MAX_REDRIVES: u32 = 3;

/// [`MAX_REDRIVES`] (3, 0..=1000).
pub fn max_redrives(env: &Env) -> Result<u32, ConfigError> {
    env.in_range(MAX_REDRIVES, DEFAULT_MAX_REDRIVES, 0, 1000)
}

/// The hash that counts the redrives of each record of `group`, by the
/// record's [`identity`]. Counts are forgotten [`REDRIVE_MEMORY`] after the
/// group's last redrive.
pub fn redrives_key(namespace: &str, group: &str) -> String {
    format!("{namespace}:dlq-redrives:{group}")
}

/// How long redrive counts are kept after a group's last redrive: 30 days,
/// longer than a record can stay dead-lettered by default.
pub const REDRIVE_MEMORY: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A record's identity across redrives: the digest of its original fields,
/// which a redrive copies verbatim (its stream id changes every time).
/// The `aggregate_id` field of an entry's fields, if it has one in UTF-8.
fn aggregate_id(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<&str> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == b"aggregate_id")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn identity(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut digest = Sha256::new();
    for (k, v) in fields {
        for part in [k, v] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `SCAN MATCH` pattern of every dead-letter stream under `namespace`.
/// (The event streams' pattern, `{namespace}:{*}`, does not match them.)
pub fn dead_letter_key_pattern(namespace: &str) -> String {
    format!("{namespace}:dlq:*")
}

/// The keys of every dead-letter stream under `namespace`, sorted.
pub async fn dead_letter_keys(
    redis: &mut Redis,
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
    redis: &mut Redis,
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
    /// How many times this record was redriven already.
    pub redrives: u32,
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
            redrives: 0,
        })
    }

    /// The original event's type, or `undecodable`.
    pub fn event_type(&self) -> String {
        self.original()
            .decode()
            .map_or_else(|_| "undecodable".to_owned(), |e| e.event_type.to_string())
    }

    /// The hour it failed in, `2026-11-29T01` (UTC).
    pub fn hour(&self) -> &str {
        self.failed_at.get(..13).unwrap_or(&self.failed_at)
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
    /// Those of one kind: an error, an event type, an hour, or all three.
    Where(Filter),
}

/// Dead letters of one kind, as [`summarize`] groups them; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// The error, exactly.
    pub error: Option<String>,
    /// The event type (`undecodable` for an entry that is not an event).
    pub event_type: Option<String>,
    /// The hour it failed in, `2026-11-29T01` (UTC).
    pub hour: Option<String>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.error.as_ref().is_none_or(|e| *e == letter.error)
            && self.hour.as_deref().is_none_or(|h| h == letter.hour())
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == letter.event_type())
    }
}

/// One kind of dead letter: how many, and how often the most redriven was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kind {
    pub error: String,
    pub event_type: String,
    pub hour: String,
    pub count: u64,
    pub max_redrives: u32,
    /// The oldest and newest dead letter's ids.
    pub first_id: String,
    pub last_id: String,
}

/// The dead letters grouped by error, event type and hour, the largest group first.
pub fn summarize(letters: &[DeadLetter]) -> Vec<Kind> {
    let mut kinds: BTreeMap<(String, String, String), Kind> = BTreeMap::new();
    for letter in letters {
        let key = (
            letter.error.clone(),
            letter.event_type(),
            letter.hour().to_owned(),
        );
        let kind = kinds.entry(key.clone()).or_insert_with(|| Kind {
            error: key.0,
            event_type: key.1,
            hour: key.2,
            count: 0,
            max_redrives: 0,
            first_id: letter.id.clone(),
            last_id: letter.id.clone(),
        });
        kind.count += 1;
        kind.max_redrives = kind.max_redrives.max(letter.redrives);
        kind.last_id.clone_from(&letter.id);
    }
    let mut kinds: Vec<Kind> = kinds.into_values().collect();
    // Ties: the oldest first (stream ids compare as numbers, not text).
    let order = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    kinds.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| order(&a.first_id).cmp(&order(&b.first_id)))
    });
    kinds
}

/// How a redrive treats records redriven often already, and whether it only says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedrivePolicy {
    /// Records redriven this many times are refused...
    pub max_redrives: u32,
    /// ...unless forced.
    pub force: bool,
    /// Change nothing; report what would happen.
    pub dry_run: bool,
}

impl RedrivePolicy {
    /// [`DEFAULT_MAX_REDRIVES`], not forced, for real.
    pub fn new(max_redrives: u32) -> Self {
        Self {
            max_redrives,
            force: false,
            dry_run: false,
        }
    }

    /// Whether a record redriven `redrives` times may go again.
    pub fn admits(&self, redrives: u32) -> bool {
        self.force || redrives < self.max_redrives
    }
}

impl Default for RedrivePolicy {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_REDRIVES)
    }
}

/// What a redrive did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedriveReport {
    pub dry_run: bool,
    /// Records put back (or that would be), per original stream.
    pub redriven: BTreeMap<String, u64>,
    /// Records left dead-lettered: redriven `max_redrives` times already.
    pub refused: Vec<Refused>,
    /// Ids asked for that are not in the dead-letter stream.
    pub not_found: Vec<String>,
}

impl RedriveReport {
    /// How many records were (or would be) redriven.
    pub fn total(&self) -> u64 {
        self.redriven.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    pub id: String,
    pub redrives: u32,
}

/// Which of `letters` `policy` lets go again, and the refusals.
fn admit<'a>(
    letters: &'a [DeadLetter],
    policy: &RedrivePolicy,
) -> (Vec<&'a DeadLetter>, Vec<Refused>) {
    let mut refused = Vec::new();
    let admitted = letters
        .iter()
        .filter(|l| {
            let ok = policy.admits(l.redrives);
            if !ok {
                refused.push(Refused {
                    id: l.id.clone(),
                    redrives: l.redrives,
                });
            }
            ok
        })
        .collect();
    (admitted, refused)
}

/// A consumer group's dead-letter stream.
#[derive(Clone)]
pub struct DeadLetters {
    redis: Redis,
    namespace: String,
    key: String,
    redrives_key: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("key", &self.key)
            .finish()
    }
}

/// Where a walk over a dead-letter stream is.
struct Walk {
    /// Entries still to visit, of those there were when it began.
    left: u64,
    /// The last id visited.
    cursor: Option<String>,
}

/// Entries redriven or purged per round trip.
const CHUNK: usize = 200;

impl DeadLetters {
    pub fn new(redis: Redis, namespace: &str, group: &str) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
            key: dead_letter_key(namespace, group),
            redrives_key: redrives_key(namespace, group),
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
        let letters = entry::parse_range(reply)?
            .into_iter()
            .filter_map(DeadLetter::from_entry)
            .collect();
        self.counted(letters).await
    }

    /// `letters` with their redrive counts.
    async fn counted(
        &self,
        mut letters: Vec<DeadLetter>,
    ) -> Result<Vec<DeadLetter>, redis::RedisError> {
        if letters.is_empty() {
            return Ok(letters);
        }
        let ids: Vec<String> = letters.iter().map(|l| identity(&l.fields)).collect();
        let counts: Vec<Option<u32>> = redis::cmd("HMGET")
            .arg(&self.redrives_key)
            .arg(&ids)
            .query_async(&mut self.redis.clone())
            .await?;
        for (letter, count) in letters.iter_mut().zip(counts) {
            letter.redrives = count.unwrap_or(0);
        }
        Ok(letters)
    }

    /// A walk over every dead letter there is now, in chunks, oldest first.
    async fn walk(&self) -> Result<Walk, redis::RedisError> {
        Ok(Walk {
            left: self.count().await?,
            cursor: None,
        })
    }

    /// The walk's next chunk; `None` at its end. A record dead-lettered after
    /// the walk began comes after and is not reached.
    async fn next_chunk(
        &self,
        walk: &mut Walk,
    ) -> Result<Option<Vec<DeadLetter>>, redis::RedisError> {
        if walk.left == 0 {
            return Ok(None);
        }
        let want = CHUNK.min(usize::try_from(walk.left).unwrap_or(CHUNK));
        let letters = self.list(walk.cursor.as_deref(), want).await?;
        let Some(last) = letters.last() else {
            return Ok(None);
        };
        walk.cursor = Some(last.id.clone());
        walk.left = walk.left.saturating_sub(letters.len() as u64);
        Ok(Some(letters))
    }

    /// How many dead letters `selection` names (that exist).
    pub async fn matching(&self, selection: &Selection) -> Result<u64, redis::RedisError> {
        match selection {
            Selection::All => self.count().await,
            Selection::Ids(ids) => {
                let mut n = 0;
                for id in ids {
                    n += u64::from(self.get(id).await?.is_some());
                }
                Ok(n)
            }
            Selection::Where(filter) => {
                let mut n = 0;
                let mut walk = self.walk().await?;
                while let Some(letters) = self.next_chunk(&mut walk).await? {
                    n += letters.iter().filter(|l| filter.matches(l)).count() as u64;
                }
                Ok(n)
            }
        }
    }

    /// The oldest `limit` dead letters (all: `usize::MAX`) grouped by error,
    /// event type and hour ([`summarize`]).
    pub async fn summary(&self, limit: usize) -> Result<Vec<Kind>, redis::RedisError> {
        let mut all = Vec::new();
        let mut walk = self.walk().await?;
        while all.len() < limit {
            let Some(letters) = self.next_chunk(&mut walk).await? else {
                break;
            };
            all.extend(letters);
        }
        all.truncate(limit);
        Ok(summarize(&all))
    }

    /// The dead letter with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, redis::RedisError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(id)
            .arg(id)
            .query_async(&mut self.redis.clone())
            .await?;
        let letter = entry::parse_range(reply)?
            .into_iter()
            .find_map(DeadLetter::from_entry);
        Ok(self.counted(letter.into_iter().collect()).await?.pop())
    }

    /// Puts the selected dead letters back at the end of their original
    /// streams as new entries (so their attempts start again from 1), counts
    /// the redrive, then removes them from the dead-letter stream; records
    /// redriven `policy.max_redrives` times already stay, unless forced.
    /// `progress(done, total)` is called after every chunk.
    pub async fn redrive(
        &self,
        selection: &Selection,
        policy: &RedrivePolicy,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<RedriveReport, redis::RedisError> {
        let mut report = RedriveReport {
            dry_run: policy.dry_run,
            ..RedriveReport::default()
        };
        match selection {
            Selection::All | Selection::Where(_) => {
                let filter = match selection {
                    Selection::Where(f) => f.clone(),
                    _ => Filter::default(),
                };
                let mut walk = self.walk().await?;
                let (total, mut done) = (walk.left, 0);
                while let Some(letters) = self.next_chunk(&mut walk).await? {
                    done += letters.len() as u64;
                    let chosen: Vec<DeadLetter> =
                        letters.into_iter().filter(|l| filter.matches(l)).collect();
                    self.redrive_chunk(&chosen, policy, &mut report).await?;
                    progress(done, total);
                }
            }
            Selection::Ids(ids) => {
                let total = ids.len() as u64;
                let mut done = 0;
                for chunk in ids.chunks(CHUNK) {
                    let mut letters = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        match self.get(id).await? {
                            Some(letter) => letters.push(letter),
                            None => report.not_found.push(id.clone()),
                        }
                    }
                    self.redrive_chunk(&letters, policy, &mut report).await?;
                    done += chunk.len() as u64;
                    progress(done, total);
                }
            }
        }
        Ok(report)
    }

    async fn redrive_chunk(
        &self,
        letters: &[DeadLetter],
        policy: &RedrivePolicy,
        report: &mut RedriveReport,
    ) -> Result<(), redis::RedisError> {
        let (admitted, refused) = admit(letters, policy);
        report.refused.extend(refused);
        if !policy.dry_run {
            self.redrive_letters(&admitted).await?;
        }
        for letter in admitted {
            *report
                .redriven
                .entry(letter.source_stream.clone())
                .or_default() += 1;
        }
        Ok(())
    }

    async fn redrive_letters(&self, letters: &[&DeadLetter]) -> Result<(), redis::RedisError> {
        if letters.is_empty() {
            return Ok(());
        }
        // The copies go back before the dead letters are deleted: a crash in
        // between leaves a duplicate, never a loss. (On a cluster the source
        // streams, the counts and the dead letters may be on three slots: each
        // slot's commands go in the order of its first one, so the copies
        // still come first.)
        // A record of a stream generation since finished goes to its
        // aggregate's stream of the current one, which the consumers read.
        let layout = crate::layout::read(&mut self.redis.clone(), &self.namespace).await?;
        let mut pipe = SlotPipeline::new();
        for letter in letters {
            let target = layout.as_ref().map_or_else(
                || letter.source_stream.clone(),
                |l| {
                    l.route(
                        &self.namespace,
                        &letter.source_stream,
                        aggregate_id(&letter.fields),
                    )
                },
            );
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&target).arg("*");
            for (k, v) in &letter.fields {
                xadd.arg(k.as_slice()).arg(v.as_slice());
            }
            pipe.add(&target, xadd);
        }
        for letter in letters {
            let mut count = redis::cmd("HINCRBY");
            count
                .arg(&self.redrives_key)
                .arg(identity(&letter.fields))
                .arg(1);
            pipe.add(&self.redrives_key, count);
        }
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(&self.redrives_key).arg(REDRIVE_MEMORY.as_secs());
        pipe.add(&self.redrives_key, expire);
        let mut delete = redis::cmd("XDEL");
        delete
            .arg(&self.key)
            .arg(letters.iter().map(|l| l.id.as_str()).collect::<Vec<_>>());
        pipe.add(&self.key, delete);
        pipe.run(&mut self.redis.clone(), Sending::InOrder, None)
            .await
            .map(drop)
    }

    /// Deletes the selected dead letters and their redrive counts; returns how many.
    pub async fn purge(&self, selection: &Selection) -> Result<u64, redis::RedisError> {
        match selection {
            Selection::All => {
                let n = self.count().await?;
                let mut pipe = SlotPipeline::new();
                pipe.add(&self.key, redis::cmd("DEL").arg(&self.key).clone());
                pipe.add(
                    &self.redrives_key,
                    redis::cmd("DEL").arg(&self.redrives_key).clone(),
                );
                pipe.run(&mut self.redis.clone(), Sending::InOrder, None)
                    .await?;
                Ok(n)
            }
            Selection::Where(filter) => {
                let mut n = 0;
                let mut walk = self.walk().await?;
                while let Some(letters) = self.next_chunk(&mut walk).await? {
                    let chosen: Vec<DeadLetter> =
                        letters.into_iter().filter(|l| filter.matches(l)).collect();
                    n += chosen.len() as u64;
                    self.delete(&chosen).await?;
                }
                Ok(n)
            }
            Selection::Ids(ids) => {
                let mut n = 0;
                for chunk in ids.chunks(CHUNK) {
                    let mut letters = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        letters.extend(self.get(id).await?);
                    }
                    n += letters.len() as u64;
                    self.delete(&letters).await?;
                }
                Ok(n)
            }
        }
    }

    async fn delete(&self, letters: &[DeadLetter]) -> Result<(), redis::RedisError> {
        if letters.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
        let identities: Vec<String> = letters.iter().map(|l| identity(&l.fields)).collect();
        let mut pipe = SlotPipeline::new();
        pipe.add(
            &self.key,
            redis::cmd("XDEL").arg(&self.key).arg(&ids).clone(),
        );
        pipe.add(
            &self.redrives_key,
            redis::cmd("HDEL")
                .arg(&self.redrives_key)
                .arg(&identities)
                .clone(),
        );
        pipe.run(&mut self.redis.clone(), Sending::InOrder, None)
            .await
            .map(drop)
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

    fn letter(id: &str, error: &str, failed_at: &str, redrives: u32) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            source_stream: "events:{Order:0}".into(),
            source_id: "1-0".into(),
            group: "inventory".into(),
            error: error.into(),
            attempts: 3,
            failed_at: failed_at.into(),
            fields: vec![(b"payload".to_vec(), id.as_bytes().to_vec())],
            redrives,
        }
    }

    #[test]
    fn dead_letters_group_by_error_type_and_hour_largest_first() {
        let letters = [
            letter("1-0", "disk", "2026-11-29T01:10:00Z", 0),
            letter("2-0", "price", "2026-11-29T01:20:00Z", 2),
            letter("3-0", "disk", "2026-11-29T01:30:00Z", 1),
            letter("10-0", "disk", "2026-11-29T02:00:00Z", 0),
        ];
        let kinds = summarize(&letters);
        let brief: Vec<(&str, &str, u64, u32, &str, &str)> = kinds
            .iter()
            .map(|k| {
                (
                    k.error.as_str(),
                    k.hour.as_str(),
                    k.count,
                    k.max_redrives,
                    k.first_id.as_str(),
                    k.last_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                ("disk", "2026-11-29T01", 2, 1, "1-0", "3-0"),
                ("price", "2026-11-29T01", 1, 2, "2-0", "2-0"),
                ("disk", "2026-11-29T02", 1, 0, "10-0", "10-0"),
            ]
        );
        assert!(kinds.iter().all(|k| k.event_type == "undecodable"));
        let disk_at_one = Filter {
            error: Some("disk".into()),
            hour: Some("2026-11-29T01".into()),
            event_type: Some("undecodable".into()),
        };
        let chosen: Vec<&str> = letters
            .iter()
            .filter(|l| disk_at_one.matches(l))
            .map(|l| l.id.as_str())
            .collect();
        assert_eq!(chosen, ["1-0", "3-0"]);
        assert!(letters.iter().all(|l| Filter::default().matches(l)));
    }

    #[test]
    fn a_record_redriven_max_times_is_refused_unless_forced() {
        let letters = [
            letter("1-0", "e", "t", 0),
            letter("2-0", "e", "t", 2),
            letter("3-0", "e", "t", 3),
            letter("4-0", "e", "t", 7),
        ];
        let ids = |chosen: Vec<&DeadLetter>| -> Vec<String> {
            chosen.into_iter().map(|l| l.id.clone()).collect()
        };
        let (admitted, refused) = admit(&letters, &RedrivePolicy::new(3));
        assert_eq!(ids(admitted), ["1-0", "2-0"]);
        assert_eq!(
            refused,
            [
                Refused {
                    id: "3-0".into(),
                    redrives: 3
                },
                Refused {
                    id: "4-0".into(),
                    redrives: 7
                },
            ]
        );
        let forced = RedrivePolicy {
            force: true,
            ..RedrivePolicy::new(3)
        };
        let (admitted, refused) = admit(&letters, &forced);
        assert_eq!(admitted.len(), 4);
        assert!(refused.is_empty());
        // 0 allows none.
        assert!(!RedrivePolicy::new(0).admits(0));
    }

    #[test]
    fn a_record_is_the_same_across_redrives_and_differs_by_any_byte() {
        let a = vec![(b"ab".to_vec(), b"c".to_vec())];
        let b = vec![(b"a".to_vec(), b"bc".to_vec())];
        assert_eq!(identity(&a), identity(&a.clone()));
        assert_ne!(identity(&a), identity(&b), "field boundaries count");
        assert_eq!(identity(&a).len(), 32);
    }
}
