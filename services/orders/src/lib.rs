//! The order service's store: its tables' SQL ([`orders`] for orders and their
//! lines, [`idempotency`] for stored responses), its outbox and inbox, and its
//! retention purges. Its schema is `services/orders/migrations`.

pub mod idempotency;
pub mod orders;
pub mod retention;

/// The order service's outbox, `orders.outbox`.
pub const OUTBOX: shared::outbox::Outbox = shared::outbox::Outbox::in_schema("orders");

/// The order service's inbox, `orders.processed_events`.
pub const INBOX: shared::inbox::Inbox = shared::inbox::Inbox::in_schema("orders");
