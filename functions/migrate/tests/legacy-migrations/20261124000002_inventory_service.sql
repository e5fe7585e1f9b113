-- The inventory service's tables, in its own schema. It never reads the order
-- service's tables: it learns about orders only from events.
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE inventory.stock (
    sku         text        PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    available   integer     NOT NULL CHECK (available >= 0),
    reserved    integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order line that holds stock. RELEASED rows stay as the record of a
-- compensation.
CREATE TABLE inventory.reservations (
    order_id    uuid        NOT NULL,
    sku         text        NOT NULL REFERENCES inventory.stock (sku),
    quantity    integer     NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    status      text        NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, sku)
);

-- The inbox: the ids of the events whose effects are applied, written in the same
-- transaction as the effect, so a redelivered event changes nothing.
CREATE TABLE inventory.processed_events (
    consumer      text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Same shape as orders.outbox.
CREATE TABLE inventory.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    traceparent     text,
    payload         json        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
