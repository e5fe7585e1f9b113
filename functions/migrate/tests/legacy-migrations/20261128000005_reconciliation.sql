-- What a stuck saga needs to be settled, and what retention needs to purge in
-- bounded steps without scanning.

-- The order service remembers the events it sent for an order, so that the
-- reconciler can send them again with the same `event_id` (participants
-- deduplicate by it): `created_event_id` for `OrderCreated` (its payload is
-- rebuilt from the order, which never changes after creation), `cancel_event_id`
-- for `OrderCancelled`, and `traceparent`, the request's trace both carried.
-- `awaiting_release_since` is set when `OrderCancelled` is written and cleared
-- when the inventory confirms the release (`InventoryReleased`).
ALTER TABLE orders.orders
    ADD COLUMN created_event_id uuid,
    ADD COLUMN cancel_event_id uuid,
    ADD COLUMN traceparent text,
    ADD COLUMN awaiting_release_since timestamptz,
    -- When the reconciler last sent one of the order's events again: it waits a
    -- whole timeout between two sends, so a slow pipeline is not flooded.
    ADD COLUMN resent_at timestamptz;

-- Orders created before this migration: their events' ids are unknown. A PENDING
-- one gets an id on its first reconciliation; cancelled ones are taken as released.
-- (Nothing to do here: created_event_id stays NULL, awaiting_release_since NULL.)

-- The reconciler's two questions, answered from an index whatever the table size:
-- the oldest PENDING orders, and the cancellations not yet confirmed.
CREATE INDEX orders_pending_idx ON orders.orders (created_at) WHERE status = 'PENDING';
CREATE INDEX orders_awaiting_release_idx ON orders.orders (awaiting_release_since)
    WHERE awaiting_release_since IS NOT NULL;

-- The inventory's answers, as it first sent them: one per order and request
-- (`OrderCreated` → `InventoryReserved`/`InventoryRejected`, `OrderCancelled` →
-- `InventoryReleased`). A repeated request is answered by sending the recorded
-- event again, byte for byte and with its `event_id`, never by deciding again
-- against today's stock.
CREATE TABLE inventory.answers (
    order_id        uuid        NOT NULL,
    request         text        NOT NULL CHECK (request IN ('OrderCreated', 'OrderCancelled')),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    traceparent     text,
    payload         json        NOT NULL,
    answered_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, request)
);

-- Retention deletes the oldest rows in bounded batches: by age, from an index.
CREATE INDEX ON orders.processed_events (processed_at);
CREATE INDEX ON inventory.processed_events (processed_at);
CREATE INDEX ON inventory.cancelled_orders (cancelled_at);
CREATE INDEX ON inventory.answers (answered_at);
