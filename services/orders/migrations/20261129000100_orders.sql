-- toolkit:replaces 20261124000001 20261124000002 20261124000003 20261124000004 20261128000005 20261128000006 20261128000007 20261128000008
--
-- The order service's schema, as the shop's first eight migrations left it (the
-- line above: a database that applied those is recorded as having this one, and
-- it is not run there; see the migrate function). Its own schema, as a separate
-- service would own it; it learns about stock only from events.

CREATE SCHEMA IF NOT EXISTS orders;

-- Its database role (create-order, order-saga, order-reconciler). Roles are
-- cluster-wide and tests migrate many databases at once: an existing role, or one
-- a concurrent transaction created, is fine.
DO $$
BEGIN
    CREATE ROLE order_service LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The service role gets everything in its schema, tables to come included. The
-- migrations run as the master user, which owns every table.
GRANT USAGE ON SCHEMA orders TO order_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA orders
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO order_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA orders
    GRANT USAGE, SELECT ON SEQUENCES TO order_service;

CREATE TABLE orders.orders (
    id           uuid        PRIMARY KEY,
    customer_id  text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    status       text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    -- Integer minor units; computed by the server from the lines, never sent by a client.
    total_cents  bigint      NOT NULL CHECK (total_cents >= 0),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    -- Set when the saga rejects an order (e.g. which SKU was short); shown by the API.
    status_reason text CHECK (length(status_reason) <= 2000),
    -- The events the service sent for the order, so that the reconciler can send
    -- them again with the same `event_id` (participants deduplicate by it):
    -- `created_event_id` for `OrderCreated` (its payload is rebuilt from the
    -- order, which never changes after creation), `cancel_event_id` for
    -- `OrderCancelled`, and `traceparent`, the request's trace both carried.
    created_event_id uuid,
    cancel_event_id  uuid,
    traceparent      text,
    -- Set when `OrderCancelled` is written, cleared when the release is confirmed.
    awaiting_release_since timestamptz,
    -- When the reconciler last sent one of the order's events again: it waits a
    -- whole timeout between two sends, so a slow pipeline is not flooded.
    resent_at        timestamptz
);
CREATE INDEX orders_customer_idx ON orders.orders (customer_id, created_at);
-- The reconciler's two questions, answered from an index whatever the table size.
CREATE INDEX orders_pending_idx ON orders.orders (created_at) WHERE status = 'PENDING';
CREATE INDEX orders_awaiting_release_idx ON orders.orders (awaiting_release_since)
    WHERE awaiting_release_since IS NOT NULL;

CREATE TABLE orders.order_lines (
    order_id          uuid     NOT NULL REFERENCES orders.orders (id) ON DELETE CASCADE,
    line_no           smallint NOT NULL CHECK (line_no >= 1),
    sku               text     NOT NULL CHECK (length(sku) BETWEEN 1 AND 64),
    quantity          integer  NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_cents  bigint   NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, sku)
);

-- Responses stored under an Idempotency-Key (IETF draft "The Idempotency-Key HTTP
-- Header Field"). A row exists only once its request committed: the row, the order
-- and the outbox event are written in one transaction, so there is no "in flight"
-- state to clean up after a crash (concurrency is settled by an advisory lock).
--
-- Keys belong to their customer (the token's subject): `key` is the primary key
-- and holds the key scoped to its customer, `customer_id U+001F client key`
-- (shared::idempotency::scoped_key), so code that inserts with `ON CONFLICT
-- (key)` keeps working. customer_id '' marks rows of code from before customers
-- were scoped.
CREATE TABLE orders.idempotency_keys (
    key              text        PRIMARY KEY,
    fingerprint      bytea       NOT NULL,
    response_status  smallint    NOT NULL,
    response_headers jsonb       NOT NULL,
    response_body    bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    customer_id      text        NOT NULL DEFAULT '',
    CONSTRAINT idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 320),
    CONSTRAINT idempotency_keys_customer_scope CHECK (
        customer_id = '' OR starts_with(key, customer_id || chr(31))
    )
);
CREATE INDEX idempotency_keys_expiry_idx ON orders.idempotency_keys (expires_at);

-- Its transactional outbox and its saga consumer's inbox.
SELECT toolkit.install_outbox('orders');
SELECT toolkit.install_inbox('orders');
