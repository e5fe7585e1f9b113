//! The toolkit: what an event-driven service on Lambda, PostgreSQL and Redis
//! Streams needs, whatever its domain. It knows no service: a service declares
//! its outbox and inbox as values, its events as payloads in the envelope, its
//! schema in a migrations folder of its own.
//!
//! - [`value`]: checked values ([`value::InvalidValue`], [`value::EventId`],
//!   [`uuid_id!`] for a service's own ids).
//! - [`envelope`]: the one event envelope, and how it is written to a Redis Stream
//!   entry and an outbox row.
//! - [`outbox`]: appending an event to a service's transactional outbox.
//! - [`redis_link`]: one Redis node or a Redis Cluster behind one connection type.
//! - [`relay`]: moving outbox rows to Redis Streams, in order, never losing one.
//! - [`source`]: reading Redis Streams with the semantics of a Lambda event source mapping.
//! - [`streams`]: stream names and partitions.
//! - [`layout`]: the partition count and its changes without reordering.
//! - [`inbox`]: the ids of the events a consumer has applied.
//! - [`answers`]: a saga participant's recorded answers, sent again as they were.
//! - [`table`]: the names of a service's outbox and inbox, checked.
//! - [`retention`]: how long things are kept, and the bounded purges.
//! - [`db`]: connection pool, and migration folders applied in order.
//! - [`config`]: typed configuration from the environment; secrets stay secret.
//! - [`telemetry`]: logs (JSON lines in Lambda, readable locally) and invocations.
//! - [`metrics`]: counters and timings, as CloudWatch EMF in Lambda and Prometheus text locally.
//! - [`error`]: errors that say whether retrying can help.
//!
//! This crate knows no AWS event shape: those belong to `functions/*` and the
//! emulator, which translate them into calls on this crate.

pub mod answers;
pub mod config;
pub mod db;
pub mod envelope;
pub mod error;
pub mod inbox;
pub mod layout;
pub mod logbook;
pub mod metrics;
pub mod outbox;
pub mod redis_link;
pub mod relay;
pub mod retention;
pub mod source;
pub mod streams;
pub mod table;
pub mod telemetry;
pub mod trace;
pub mod value;

/// For [`uuid_id!`]: the macro names `$crate::uuid`.
#[doc(hidden)]
pub use uuid;

pub use error::{Retry, StoreError};
