//! The customers-consumer function: reads the `Order` streams as consumer group
//! `customers`, reserves each new order's total against its customer's
//! available credit (all of it or nothing) and answers `CreditReserved` or
//! `CreditRejected` (with the shortfall); on `OrderCancelled` (a customer's
//! cancellation, or the order service's compensation of a rejected order) it
//! releases what the order holds and answers `CreditReleased`.
//!
//! A batch is settled in one transaction: inbox rows, credit, reservations,
//! recorded answers and outbox rows commit together or not at all, so a
//! redelivered event changes nothing and a repeated request gets the answer it
//! first got. This crate is built from the toolkit alone (`shared`,
//! `stream-consumer`) and the customer service's own crates.

mod store;

use contracts::events::{OrderRequest, ORDER_CANCELLED, ORDER_CREATED};
use contracts::{CustomerId, OrderId};
use shared::config::{ConfigError, Env};
use shared::source::{
    decode_and_apply, BatchHandler, BatchResponse, ConsumerConfig, HandlerError, StreamBatch,
    StreamRecord,
};
use shared::trace::TraceParent;
use sqlx::PgPool;
use stream_consumer::ConsumerFunction;

pub use store::{apply, Applied};

/// The consumer group, and the consumer's name in the inbox.
pub const GROUP: &str = "customers";

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "customers-consumer";

/// What one record asks the customer service to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Hold the order's total against its customer's credit, or refuse.
    Reserve {
        order_id: OrderId,
        customer: CustomerId,
        total_cents: i64,
    },
    /// Give back what the order holds: it was cancelled or rejected.
    Release { order_id: OrderId },
}

impl Command {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::Reserve { order_id, .. } | Self::Release { order_id } => *order_id,
        }
    }

    /// The event type of the request, under which its answer is recorded.
    pub fn request(&self) -> &'static str {
        match self {
            Self::Reserve { .. } => ORDER_CREATED,
            Self::Release { .. } => ORDER_CANCELLED,
        }
    }
}

/// A command with the event that carried it.
#[derive(Debug, Clone)]
pub struct Job {
    pub event_id: uuid::Uuid,
    /// The trace of the events this job emits: the record's span.
    pub traceparent: Option<TraceParent>,
    pub command: Command,
}

/// What `record` asks for; `Err` is why it never can be handled.
pub fn decode(record: &StreamRecord) -> Result<Job, String> {
    let event = &record.event;
    let command = match OrderRequest::decode(event)? {
        OrderRequest::Created(order) => {
            let customer = CustomerId::parse(&order.customer_id)
                .map_err(|e| format!("invalid {ORDER_CREATED} payload: {e}"))?;
            if order.total_cents < 0 {
                return Err(format!(
                    "invalid {ORDER_CREATED} payload: a negative total ({})",
                    order.total_cents
                ));
            }
            Command::Reserve {
                order_id: OrderId::from(order.order_id),
                customer,
                total_cents: order.total_cents,
            }
        }
        OrderRequest::Cancelled(cancelled) => Command::Release {
            order_id: OrderId::from(cancelled.order_id),
        },
    };
    Ok(Job {
        event_id: event.event_id.as_uuid(),
        traceparent: Some(record.trace),
        command,
    })
}

/// The batch handler.
#[derive(Debug, Clone)]
pub struct Customers {
    pub pool: PgPool,
    /// The limit of a customer without a record (`DEFAULT_CREDIT_LIMIT_CENTS`).
    pub default_limit_cents: i64,
}

impl BatchHandler for Customers {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        Ok(
            decode_and_apply(&batch.records, decode, |jobs: Vec<Job>| async move {
                shared::source::apply_isolating(&jobs, |range| {
                    let jobs = &jobs[range];
                    async move {
                        let applied = apply(&self.pool, jobs, self.default_limit_cents).await?;
                        tracing::debug!(?applied, "batch applied");
                        Ok(())
                    }
                })
                .await
            })
            .await,
        )
    }
}

/// The consumer group `customers` on the `Order` streams.
impl ConsumerFunction for Customers {
    const SERVICE: &'static str = SERVICE;
    const GROUP: &'static str = GROUP;
    const AGGREGATES: &'static [&'static str] = &[contracts::events::ORDER_AGGREGATE];

    fn new(config: &ConsumerConfig, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            pool: shared::db::lazy_pool(&config.database),
            default_limit_cents: customer_service::default_limit(env)?,
        })
    }
}
