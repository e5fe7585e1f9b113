-- The order service's tables, in its own schema, as a separate service would own them.
CREATE SCHEMA IF NOT EXISTS orders;

CREATE TABLE orders.orders (
    id           uuid        PRIMARY KEY,
    customer_id  text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    status       text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    -- Integer minor units; computed by the server from the lines, never sent by a client.
    total_cents  bigint      NOT NULL CHECK (total_cents >= 0),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON orders.orders (customer_id, created_at);

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
CREATE TABLE orders.idempotency_keys (
    key              text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint      bytea       NOT NULL,
    response_status  smallint    NOT NULL,
    response_headers jsonb       NOT NULL,
    response_body    bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expiry_idx ON orders.idempotency_keys (expires_at);

-- The transactional outbox. Every service's outbox has exactly this shape, so one
-- relay drains them all (see shared/src/outbox.rs).
CREATE TABLE orders.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    traceparent     text,
    -- `json`, not `jsonb`: the payload is relayed exactly as it was written.
    payload         json        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
