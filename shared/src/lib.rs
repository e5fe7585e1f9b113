//! The core of the order system, shared by every function and by the emulator.
//!
//! - [`domain`]: values that cannot be invalid: ids, SKUs, quantities, money, orders.
//! - [`envelope`]: the one event envelope, and how it is written to a Redis Stream
//!   entry and an outbox row.
//! - [`events`]: the payloads of the events the services exchange.
//! - [`outbox`]: appending an event to a service's transactional outbox.
//! - [`relay`]: moving outbox rows to Redis Streams, in order, never losing one.
//! - [`source`]: reading Redis Streams with the semantics of a Lambda event source mapping.
//! - [`streams`]: stream names and partitions.
//! - [`orders`]: the order service's tables (orders, order lines).
//! - [`inbox`]: the ids of the events a consumer has applied.
//! - [`table`]: the names of a service's outbox and inbox, checked.
//! - [`idempotency`]: stored responses for `Idempotency-Key` requests.
//! - [`retention`]: how long things are kept, and the bounded purges.
//! - [`db`]: connection pool and the embedded migrations.
//! - [`config`]: typed configuration from the environment; secrets stay secret.
//! - [`telemetry`]: logs (JSON lines in Lambda, readable locally) and invocations.
//! - [`metrics`]: counters and timings, as CloudWatch EMF in Lambda and Prometheus text locally.
//! - [`error`]: errors that say whether retrying can help.
//!
//! This crate knows no AWS event shape: those belong to `functions/*` and the
//! emulator, which translate them into calls on this crate.

pub mod config;
pub mod db;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod inbox;
pub mod inventory;
pub mod metrics;
pub mod orders;
pub mod outbox;
pub mod relay;
pub mod retention;
pub mod source;
pub mod streams;
pub mod table;
pub mod telemetry;
pub mod trace;

pub use error::{Retry, StoreError};
