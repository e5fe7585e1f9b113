-- toolkit:replaces 20261124000001 20261124000002 20261124000003 20261124000004 20261128000005 20261128000006 20261128000007 20261128000008
--
-- The inventory service's schema, as the shop's first eight migrations left it
-- (the line above: a database that applied those is recorded as having this one,
-- and it is not run there; see the migrate function). It never reads the order
-- service's tables: it learns about orders only from events.

CREATE SCHEMA IF NOT EXISTS inventory;

-- Its database role (inventory-api, inventory-consumer, inventory-retention).
DO $$
BEGIN
    CREATE ROLE inventory_service LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA inventory TO inventory_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO inventory_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory
    GRANT USAGE, SELECT ON SEQUENCES TO inventory_service;

-- The catalog. An order line says the price the customer saw; the inventory
-- rejects an order whose price is not the catalog's. NULL for SKUs stocked before
-- prices existed: such a SKU takes no order until `PUT /inventory/{sku}` prices it.
CREATE TABLE inventory.stock (
    sku         text        PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    available   integer     NOT NULL CHECK (available >= 0),
    reserved    integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    price_cents bigint      CHECK (price_cents BETWEEN 0 AND 10000000000)
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

-- Orders the inventory service saw cancelled. An `OrderCreated` that arrives after
-- its order's `OrderCancelled` (e.g. redriven from the dead-letter stream) must not
-- reserve stock that nothing would ever release.
CREATE TABLE inventory.cancelled_orders (
    order_id      uuid        PRIMARY KEY,
    cancelled_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON inventory.cancelled_orders (cancelled_at);

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
CREATE INDEX ON inventory.answers (answered_at);

-- Its consumer's inbox and its outbox.
SELECT toolkit.install_inbox('inventory');
SELECT toolkit.install_outbox('inventory');
