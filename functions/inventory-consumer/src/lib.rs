//! The inventory-consumer function: reads the `Order` streams as consumer group
//! `inventory`, reserves stock for `OrderCreated` (every line or none) and
//! releases it for `OrderCancelled` (the saga's compensation), and answers
//! with `InventoryReserved` or `InventoryRejected` through the inventory outbox.
//!
//! A batch is settled in one transaction: the inbox rows of its events, the
//! stock changes and the outbox rows commit together or not at all, so a
//! redelivered event changes nothing and an answer exists only for a committed
//! reservation. [`Inventory`] is the batch handler; [`handle`] runs the event
//! source inside a scheduled invocation; the emulator runs it long-lived.

pub mod retention;
mod store;

use contracts::events::{OrderRequest, ORDER_CANCELLED, ORDER_CREATED};
use contracts::{OrderId, Quantity, Sku};
use shared::config::{ConfigError, Env};
use shared::source::{
    decode_and_apply, BatchHandler, BatchResponse, Consumer, ConsumerConfig, HandlerError,
    StreamBatch, StreamRecord,
};
use shared::trace::TraceParent;
use sqlx::PgPool;
use stream_consumer::ConsumerFunction;

pub use store::{apply, Applied};

/// The consumer group, and the consumer's name in the inbox.
pub const GROUP: &str = "inventory";

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "inventory-consumer";

/// What one record asks the inventory to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Reserve every line of a new order, or none.
    Reserve { order_id: OrderId, lines: Vec<Line> },
    /// Give back what an order holds: it was cancelled.
    Release { order_id: OrderId },
}

/// One line of an order to reserve: the SKU, how many, and the unit price the
/// customer saw (which must be the catalog's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price_cents: i64,
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

impl shared::answers::Request for Job {
    fn event_id(&self) -> uuid::Uuid {
        self.event_id
    }
    fn order_id(&self) -> uuid::Uuid {
        self.command.order_id().as_uuid()
    }
    fn request(&self) -> &'static str {
        self.command.request()
    }
}

/// What `record` asks for; `Err` is why it never can be handled.
pub fn decode(record: &StreamRecord) -> Result<Job, String> {
    let event = &record.event;
    let command = match OrderRequest::decode(event)? {
        OrderRequest::Created(order) => {
            let mut lines = Vec::with_capacity(order.items.len());
            for item in &order.items {
                let sku = Sku::parse(&item.sku).map_err(|e| format!("invalid item: {e}"))?;
                let quantity = Quantity::try_from(i64::from(item.quantity))
                    .map_err(|e| format!("invalid item: {e}"))?;
                lines.push(Line {
                    sku,
                    quantity,
                    unit_price_cents: item.unit_price_cents,
                });
            }
            if lines.is_empty() {
                return Err(format!("invalid {ORDER_CREATED} payload: no items"));
            }
            Command::Reserve {
                order_id: OrderId::from(order.order_id),
                lines,
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
pub struct Inventory {
    pub pool: PgPool,
}

impl BatchHandler for Inventory {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        Ok(
            decode_and_apply(&batch.records, decode, |jobs: Vec<Job>| async move {
                store::apply_isolating(&self.pool, &jobs, &store::Recorded).await
            })
            .await,
        )
    }
}

/// What an invocation borrows: the event source and the handler, built once.
pub type Deps = Consumer<Inventory>;

/// The consumer group `inventory` on the `Order` streams.
impl ConsumerFunction for Inventory {
    const SERVICE: &'static str = SERVICE;
    const GROUP: &'static str = GROUP;
    const AGGREGATES: &'static [&'static str] = &[contracts::events::ORDER_AGGREGATE];

    fn new(config: &ConsumerConfig, _env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            pool: shared::db::lazy_pool(&config.database),
        })
    }
}

/// A guarantee a test can break on purpose, to show that it notices.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Forget what was applied before: the inbox is neither read nor written
    /// and earlier reservations are ignored, so a redelivered `OrderCreated`
    /// reserves its order's stock again.
    ApplyRedeliveries,
}

/// [`Inventory`] with a [`Fault`] injected (tests only). The fault is a
/// [`store::Memory`] put in the place of the real one: the store's decision has
/// no test branch.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Faulty {
    pub inventory: Inventory,
    pub fault: Fault,
}

impl BatchHandler for Faulty {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        let pool = &self.inventory.pool;
        Ok(
            decode_and_apply(&batch.records, decode, |jobs: Vec<Job>| async move {
                match self.fault {
                    Fault::None => store::apply_isolating(pool, &jobs, &store::Recorded).await,
                    Fault::ApplyRedeliveries => {
                        store::apply_isolating(pool, &jobs, &Forgetful).await
                    }
                }
            })
            .await,
        )
    }
}

/// A memory that forgets ([`Fault::ApplyRedeliveries`]): every event is new
/// (the inbox is neither read nor written), no answer was recorded, and no
/// order was reserved by an earlier batch.
#[derive(Debug, Clone, Copy)]
struct Forgetful;

impl store::Memory for Forgetful {
    fn record_events(
        &self,
        _: &mut sqlx::PgConnection,
        event_ids: &[uuid::Uuid],
    ) -> impl std::future::Future<
        Output = Result<std::collections::HashSet<uuid::Uuid>, shared::StoreError>,
    > + Send {
        std::future::ready(Ok(event_ids.iter().copied().collect()))
    }

    fn answers(
        &self,
        _: &mut sqlx::PgConnection,
        _: &[uuid::Uuid],
    ) -> impl std::future::Future<Output = Result<store::Answers, shared::StoreError>> + Send {
        std::future::ready(Ok(store::Answers::new()))
    }

    fn reserved_before(
        &self,
        _: std::collections::HashSet<uuid::Uuid>,
    ) -> std::collections::HashSet<uuid::Uuid> {
        std::collections::HashSet::new()
    }
}
