//! What a batch handler receives and answers: the in-process form of a Lambda
//! stream event and its partial batch response.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use tracing::{debug, warn};

use crate::envelope::EventEnvelope;
use crate::error::{Retry, StoreError};
use crate::trace::TraceParent;

/// One stream entry handed to a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    /// The stream key, e.g. `events:{Order:0}`.
    pub stream: String,
    /// The entry id, e.g. `1732435200000-0`; the `itemIdentifier` of a failure.
    pub id: String,
    /// 1 on the first delivery, 2 on the first retry, and so on.
    pub attempt: u32,
    pub event: EventEnvelope,
    /// This delivery's span in the producer's trace: a child of the event's
    /// `traceparent` (a new trace if it had none). Events emitted because of
    /// this record carry it as their `traceparent`, so the trace goes on.
    pub trace: TraceParent,
}

/// Records in stream order. The records of one aggregate appear in the order
/// they were written; a handler processes them in that order and, once one of
/// an aggregate fails, reports the aggregate's later records as failed too
/// (see [`crate::source::outcomes_in_order`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamBatch {
    pub records: Vec<StreamRecord>,
}

/// The partial batch response, in AWS's shape:
/// `{"batchItemFailures":[{"itemIdentifier":"<entry id>"}]}`. An empty list
/// means every record succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One failed record. `reason`, `permanent` and `outage` extend AWS's shape
/// (and are left out of the JSON when unset): a permanent failure goes to the
/// dead-letter stream at once instead of being retried; an outage (the
/// handler's store is away) is waited out without using up an attempt, and
/// wins over `permanent` if a handler sets both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemFailure {
    pub item_identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outage: bool,
}

impl BatchResponse {
    pub fn success() -> Self {
        Self::default()
    }

    /// The response for `outcomes` (one per record of the batch, in order).
    pub fn from_outcomes<'a>(
        outcomes: impl IntoIterator<Item = (&'a StreamRecord, &'a RecordOutcome)>,
    ) -> Self {
        let batch_item_failures = outcomes
            .into_iter()
            .filter_map(|(record, outcome)| match outcome {
                RecordOutcome::Done => None,
                RecordOutcome::Retry(reason) => Some(BatchItemFailure {
                    item_identifier: record.id.clone(),
                    reason: Some(reason.clone()),
                    permanent: false,
                    outage: false,
                }),
                RecordOutcome::Reject(reason) => Some(BatchItemFailure {
                    item_identifier: record.id.clone(),
                    reason: Some(reason.clone()),
                    permanent: true,
                    outage: false,
                }),
                RecordOutcome::Outage(reason) => Some(BatchItemFailure {
                    item_identifier: record.id.clone(),
                    reason: Some(reason.clone()),
                    permanent: false,
                    outage: true,
                }),
            })
            .collect();
        Self {
            batch_item_failures,
        }
    }
}

/// What became of one record in a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Its effect is applied (or was applied before: a redelivery).
    Done,
    /// It failed for now (a database restart, a timeout): retry it.
    Retry(String),
    /// It can never succeed (unknown event type or version, invalid payload):
    /// dead-letter it now.
    Reject(String),
    /// The handler's store is away (see [`crate::error::Failure::Outage`]); the
    /// record itself may be fine. The source waits the outage out: the record
    /// keeps its attempts, and the source pauses before trying again.
    Outage(String),
}

/// The whole batch failed (a function error): every record is retried, or, with
/// bisect on error, the batch is split and the halves retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// A consuming function's batch handler.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle(
        &self,
        batch: StreamBatch,
    ) -> impl Future<Output = Result<BatchResponse, HandlerError>> + Send;
}

/// Marks every record after a failed record of the same aggregate as failed
/// too, so that no later event of an aggregate takes effect before an earlier
/// one. `outcomes` is in batch order, one per record.
pub fn outcomes_in_order(records: &[StreamRecord], outcomes: &mut [RecordOutcome]) {
    let mut failed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (record, outcome) in records.iter().zip(outcomes.iter_mut()) {
        let aggregate = record.event.aggregate_id.as_str();
        if failed.contains(aggregate) {
            if *outcome == RecordOutcome::Done || matches!(outcome, RecordOutcome::Reject(_)) {
                *outcome = RecordOutcome::Retry(WAITING_FOR_EARLIER.to_owned());
            }
        } else if *outcome != RecordOutcome::Done {
            failed.insert(aggregate);
        }
    }
}

/// The usual shape of a handler: decode each record into a job (`Err` is why it
/// never can be handled: a permanent failure), apply the jobs together
/// (`apply` answers one outcome per job, in order), keep each aggregate in
/// order, and answer in AWS's shape.
pub async fn decode_and_apply<T, Fut>(
    records: &[StreamRecord],
    decode: impl Fn(&StreamRecord) -> Result<T, String>,
    apply: impl FnOnce(Vec<T>) -> Fut,
) -> BatchResponse
where
    Fut: Future<Output = Vec<RecordOutcome>>,
{
    let mut outcomes = vec![RecordOutcome::Done; records.len()];
    let mut jobs = Vec::with_capacity(records.len());
    let mut slots = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        match decode(record) {
            Ok(job) => {
                jobs.push(job);
                slots.push(i);
            }
            Err(reason) => outcomes[i] = RecordOutcome::Reject(reason),
        }
    }
    if !jobs.is_empty() {
        for (slot, outcome) in slots.iter().zip(apply(jobs).await) {
            outcomes[*slot] = outcome;
        }
    }
    outcomes_in_order(records, &mut outcomes);
    BatchResponse::from_outcomes(records.iter().zip(&outcomes))
}

/// Applies `jobs` with `apply` in one go (one transaction); on a permanent
/// error with more than one job, applies them one at a time instead, so one
/// bad event does not fail the others. One outcome per job, in order:
/// - the database away ([`StoreError::is_outage`]) says nothing about the
///   events: [`RecordOutcome::Outage`], neither retried against their attempts
///   nor applied one by one (the event source waits the outage out);
/// - a retryable error: [`RecordOutcome::Retry`];
/// - a single job the database refuses for good: [`RecordOutcome::Reject`].
///
/// `apply` is given the range of `jobs` to apply (a range rather than a slice,
/// so that its future may borrow what the caller's closure borrows).
pub async fn apply_isolating<J, Fut>(
    jobs: &[J],
    apply: impl Fn(std::ops::Range<usize>) -> Fut,
) -> Vec<RecordOutcome>
where
    Fut: Future<Output = Result<(), StoreError>>,
{
    if jobs.is_empty() {
        return Vec::new();
    }
    match apply(0..jobs.len()).await {
        Ok(()) => vec![RecordOutcome::Done; jobs.len()],
        Err(e) if e.is_outage() => {
            debug!(error = %e, jobs = jobs.len(), "the database is unavailable");
            vec![RecordOutcome::Outage(e.to_string()); jobs.len()]
        }
        Err(e) if e.retry() == Retry::Retryable || jobs.len() == 1 => {
            warn!(error = %e, jobs = jobs.len(), "applying the batch failed");
            let reason = e.to_string();
            let outcome = match e.retry() {
                Retry::Retryable => RecordOutcome::Retry(reason),
                Retry::Permanent => RecordOutcome::Reject(reason),
            };
            vec![outcome; jobs.len()]
        }
        Err(e) => {
            warn!(error = %e, "a permanent error in a batch; applying its events one by one");
            let mut outcomes = Vec::with_capacity(jobs.len());
            // Once the database is away, the rest wait for it untried.
            let mut away: Option<String> = None;
            for i in 0..jobs.len() {
                if let Some(reason) = &away {
                    outcomes.push(RecordOutcome::Outage(reason.clone()));
                    continue;
                }
                outcomes.push(match apply(i..i + 1).await {
                    Ok(()) => RecordOutcome::Done,
                    Err(e) if e.is_outage() => {
                        let reason = e.to_string();
                        away = Some(reason.clone());
                        RecordOutcome::Outage(reason)
                    }
                    Err(e) if e.retry() == Retry::Retryable => RecordOutcome::Retry(e.to_string()),
                    Err(e) => RecordOutcome::Reject(e.to_string()),
                });
            }
            outcomes
        }
    }
}

/// The reason of a record that waits behind a failed record of its aggregate.
pub const WAITING_FOR_EARLIER: &str = "an earlier event of the same aggregate failed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_has_aws_shape() {
        let ok = serde_json::to_string(&BatchResponse::success()).expect("json");
        assert_eq!(ok, r#"{"batchItemFailures":[]}"#);
        let one = BatchResponse {
            batch_item_failures: vec![BatchItemFailure {
                item_identifier: "1-0".into(),
                reason: None,
                permanent: false,
                outage: false,
            }],
        };
        assert_eq!(
            serde_json::to_string(&one).expect("json"),
            r#"{"batchItemFailures":[{"itemIdentifier":"1-0"}]}"#
        );
        let parsed: BatchResponse =
            serde_json::from_str(r#"{"batchItemFailures":[{"itemIdentifier":"2-0"}]}"#)
                .expect("parse");
        assert_eq!(parsed.batch_item_failures[0].item_identifier, "2-0");
        assert!(!parsed.batch_item_failures[0].permanent);
        assert!(!parsed.batch_item_failures[0].outage);
    }

    #[test]
    fn an_outage_is_marked_in_the_response() {
        let record = StreamRecord {
            stream: "s".into(),
            id: "3-0".into(),
            attempt: 1,
            event: crate::envelope::EventEnvelope::new(
                crate::envelope::EventType::parse("TestHappened").expect("valid"),
                1,
                crate::envelope::AggregateType::parse("Test").expect("valid"),
                crate::envelope::AggregateId::parse("a").expect("valid"),
                None,
                crate::envelope::Payload::from_json("{}").expect("json"),
            ),
            trace: TraceParent::new_root(),
        };
        let outage = RecordOutcome::Outage("database away".into());
        let response = BatchResponse::from_outcomes([(&record, &outage)]);
        assert_eq!(
            serde_json::to_string(&response).expect("json"),
            r#"{"batchItemFailures":[{"itemIdentifier":"3-0","reason":"database away","outage":true}]}"#
        );
    }
}
