//! Recorded answers (`<schema>.answers`): the event a participant of a saga
//! first sent in answer to a request about one aggregate (an order), kept so
//! that a repeated request is answered with that same event, byte for byte
//! and with its `event_id`, never by deciding again against today's state.
//!
//! A service declares its table as a value (`Answers::in_schema("inventory")`)
//! and creates it in its own migrations with these columns:
//! `order_id uuid, request text, event_id uuid UNIQUE, event_type text,
//! schema_version integer, aggregate_type text, aggregate_id text,
//! occurred_at timestamptz, traceparent text, payload json, answered_at
//! timestamptz DEFAULT now(), PRIMARY KEY (order_id, request)`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::envelope::{EventEnvelope, OutboxColumnArrays, OutboxColumns};
use crate::error::StoreError;
use crate::table::TableName;
use crate::value::InvalidValue;

/// A service's table of recorded answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Answers(TableName);

impl Answers {
    /// `<schema>.answers`.
    pub const fn in_schema(schema: &'static str) -> Self {
        Self(TableName::new(schema, "answers"))
    }
}

impl fmt::Display for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A recorded answer: the aggregate (order) it is about, the request it
/// answers (the request's event type, or a name the service gives a kind of
/// request), and the event sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub order_id: Uuid,
    pub request: String,
    pub event: EventEnvelope,
}

/// The answers recorded in `table` for `order_ids`, by (order, request).
pub async fn load(
    conn: &mut PgConnection,
    table: &Answers,
    order_ids: &[Uuid],
) -> Result<Recorded, StoreError> {
    const CONTEXT: &str = "reading earlier answers";
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT order_id, request, event_id, event_type, schema_version, aggregate_type,
                aggregate_id, occurred_at, traceparent, payload::text
         FROM {table} WHERE order_id = ANY($1)"
    );
    type Row = (
        Uuid,
        String,
        Uuid,
        String,
        i32,
        String,
        String,
        time::OffsetDateTime,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(order_ids)
        .fetch_all(conn)
        .await
        .map_err(|e| StoreError::database(CONTEXT, e))?;
    let mut answered = HashMap::with_capacity(rows.len());
    for r in rows {
        let event = EventEnvelope::try_from(OutboxColumns {
            event_id: r.2,
            event_type: r.3,
            schema_version: r.4,
            aggregate_type: r.5,
            aggregate_id: r.6,
            occurred_at: r.7,
            traceparent: r.8,
            payload: r.9,
        })
        .map_err(|e| StoreError::corrupt(CONTEXT, e))?;
        answered.insert((r.0, r.1), event);
    }
    Ok(answered)
}

/// Records `answers` in `table`, on the transaction that sends them; an
/// (order, request) recorded before keeps its first answer.
pub async fn record(
    conn: &mut PgConnection,
    table: &Answers,
    answers: &[Answer],
) -> Result<(), StoreError> {
    if answers.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = answers.iter().map(|a| a.order_id).collect();
    let requests: Vec<&str> = answers.iter().map(|a| a.request.as_str()).collect();
    let a: OutboxColumnArrays = answers.iter().map(|a| &a.event).collect();
    let sql = format!(
        "INSERT INTO {table}
           (order_id, request, event_id, event_type, schema_version, aggregate_type, aggregate_id,
            occurred_at, traceparent, payload)
         SELECT a.order_id, a.request, a.event_id, a.event_type, a.schema_version, a.aggregate_type,
                a.aggregate_id, a.occurred_at, NULLIF(a.traceparent, ''), a.payload::json
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::integer[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::text[], $10::text[])
              AS a(order_id, request, event_id, event_type, schema_version, aggregate_type,
                   aggregate_id, occurred_at, traceparent, payload)
         ON CONFLICT (order_id, request) DO NOTHING"
    );
    a.bind_to(sqlx::query(&sql).bind(&orders).bind(&requests))
        .execute(conn)
        .await
        .map_err(|e| StoreError::database("recording answers", e))?;
    Ok(())
}

/// The answers recorded before, by (order, request).
pub type Recorded = HashMap<(Uuid, String), EventEnvelope>;

/// A request a participant answers: the event that carried it, and the
/// (order, request) its answer is recorded under.
pub trait Request {
    fn event_id(&self) -> Uuid;
    fn order_id(&self) -> Uuid;
    /// The kind of request (e.g. the event type asking).
    fn request(&self) -> &'static str;
}

/// A batch of requests sorted before any decision.
#[derive(Debug)]
pub struct Triage<'a, J> {
    /// Events of the batch not seen for the first time (in the inbox already,
    /// or twice in the batch).
    pub duplicates: usize,
    /// The recorded answers to send again, each once, in order.
    pub out: Outgoing,
    /// New requests never answered: to decide, in order.
    pub to_decide: Vec<&'a J>,
}

/// Sorts a batch: a request answered before gets that answer again, whether it
/// is a redelivery or a new event asking the same (never decided again); a
/// redelivery never answered takes no effect; the rest is to decide. `fresh`
/// holds the events seen for the first time (the inbox's answer).
pub fn triage<'a, J: Request>(
    jobs: &'a [J],
    fresh: &HashSet<Uuid>,
    answered: &Recorded,
) -> Triage<'a, J> {
    let mut seen_in_batch = HashSet::new();
    let (mut new_jobs, mut repeated): (Vec<&J>, Vec<&J>) = (Vec::new(), Vec::new());
    for job in jobs {
        if !seen_in_batch.insert(job.event_id()) {
            continue;
        }
        if fresh.contains(&job.event_id()) {
            new_jobs.push(job);
        } else {
            repeated.push(job);
        }
    }
    let duplicates = jobs.len() - new_jobs.len();
    let mut out = Outgoing::default();
    for job in &repeated {
        out.again(answered, *job);
    }
    let to_decide = new_jobs
        .into_iter()
        .filter(|job| !out.again(answered, *job))
        .collect();
    Triage {
        duplicates,
        out,
        to_decide,
    }
}

/// The events a batch sends, in order, and the new answers among them to record.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub events: Vec<EventEnvelope>,
    pub recorded: Vec<Answer>,
    sent: HashSet<Uuid>,
}

impl Outgoing {
    /// Queues the recorded answer to `job`'s request, if there is one (once
    /// per batch); true if there is.
    pub fn again(&mut self, answered: &Recorded, job: &impl Request) -> bool {
        let key = (job.order_id(), job.request().to_owned());
        match answered.get(&key) {
            Some(event) => {
                if self.sent.insert(event.event_id.as_uuid()) {
                    self.events.push(event.clone());
                }
                true
            }
            None => false,
        }
    }

    /// Queues a new answer to `job`'s request and records it.
    pub fn answer(
        &mut self,
        job: &impl Request,
        event: Result<EventEnvelope, InvalidValue>,
    ) -> Result<(), StoreError> {
        let event = event.map_err(|e| StoreError::corrupt("building an answer event", e))?;
        self.sent.insert(event.event_id.as_uuid());
        self.recorded.push(Answer {
            order_id: job.order_id(),
            request: job.request().to_owned(),
            event: event.clone(),
        });
        self.events.push(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{AggregateId, AggregateType, EventType, Payload};

    struct Job(u128, u128);

    impl Request for Job {
        fn event_id(&self) -> Uuid {
            Uuid::from_u128(self.0)
        }
        fn order_id(&self) -> Uuid {
            Uuid::from_u128(self.1)
        }
        fn request(&self) -> &'static str {
            "Asked"
        }
    }

    fn answer() -> EventEnvelope {
        EventEnvelope::new(
            EventType::parse("Answered").expect("a type"),
            1,
            AggregateType::parse("Order").expect("a type"),
            AggregateId::parse("1").expect("an id"),
            None,
            Payload::of(&serde_json::json!({})).expect("a payload"),
        )
    }

    #[test]
    fn a_request_answered_before_is_answered_again_never_decided() {
        let recorded = answer();
        let answered: Recorded =
            [((Uuid::from_u128(7), "Asked".to_owned()), recorded.clone())].into();
        // Event 1 is new; 2 is a redelivery of an answered request; 3 is a new
        // event asking what was answered; 4 a redelivery never answered; 1 twice.
        let jobs = [Job(1, 5), Job(2, 7), Job(3, 7), Job(4, 6), Job(1, 5)];
        let fresh: HashSet<Uuid> = [1, 3].into_iter().map(Uuid::from_u128).collect();
        let t = triage(&jobs, &fresh, &answered);
        assert_eq!(t.duplicates, 3, "2, 4 and the second 1");
        assert_eq!(t.out.events, [recorded], "the recorded answer, once");
        let to_decide: Vec<u128> = t.to_decide.iter().map(|j| j.0).collect();
        assert_eq!(to_decide, [1]);
        assert!(t.out.recorded.is_empty());
    }
}
