-- The order saga: why an order was rejected, the order service's inbox, and the
-- inventory service's record of cancelled orders.

-- Set when the saga rejects an order (e.g. which SKU was short); shown by the API.
ALTER TABLE orders.orders
    ADD COLUMN status_reason text CHECK (length(status_reason) <= 2000);

-- The order service's inbox (see inventory.processed_events): the ids of the
-- events whose effects the saga consumer has applied.
CREATE TABLE orders.processed_events (
    consumer      text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Orders the inventory service saw cancelled. An `OrderCreated` that arrives after
-- its order's `OrderCancelled` (e.g. redriven from the dead-letter stream) must not
-- reserve stock that nothing would ever release.
CREATE TABLE inventory.cancelled_orders (
    order_id      uuid        PRIMARY KEY,
    cancelled_at  timestamptz NOT NULL DEFAULT now()
);
