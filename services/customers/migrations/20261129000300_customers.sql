-- The customer service: a credit limit per customer, and the credit each order
-- holds against it. Its own schema and role; it learns about orders only from
-- events (the `Order` streams) and answers on the `Credit` streams.

CREATE SCHEMA IF NOT EXISTS customers;

-- Its database role (customers-api, customers-consumer). Roles are cluster-wide
-- and tests migrate many databases at once: an existing role, or one a
-- concurrent transaction created, is fine.
DO $$
BEGIN
    CREATE ROLE customer_service LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA customers TO customer_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA customers
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO customer_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA customers
    GRANT USAGE, SELECT ON SEQUENCES TO customer_service;

-- A customer's credit: the limit an operator sets, and what orders hold of it.
-- Available credit is limit - reserved; a limit lowered below what is reserved
-- leaves nothing available until orders release theirs. A customer without a
-- row has the default limit (DEFAULT_CREDIT_LIMIT_CENTS) and nothing reserved;
-- the row appears with the first limit set or the first reservation.
CREATE TABLE customers.credit (
    customer_id     text        PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 64),
    limit_cents     bigint      NOT NULL CHECK (limit_cents BETWEEN 0 AND 100000000000000),
    reserved_cents  bigint      NOT NULL DEFAULT 0 CHECK (reserved_cents >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per order that holds credit. RELEASED rows stay as the record of a
-- compensation.
CREATE TABLE customers.credit_reservations (
    order_id      uuid        PRIMARY KEY,
    customer_id   text        NOT NULL REFERENCES customers.credit (customer_id),
    amount_cents  bigint      NOT NULL CHECK (amount_cents >= 0),
    status        text        NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON customers.credit_reservations (customer_id) WHERE status = 'RESERVED';

-- Orders cancelled or rejected: an `OrderCreated` that arrives after them (e.g.
-- redriven from the dead-letter stream) must not reserve credit that nothing
-- would ever release.
CREATE TABLE customers.released_orders (
    order_id     uuid        PRIMARY KEY,
    released_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON customers.released_orders (released_at);

-- The service's answers, as it first sent them: one per order and request. A
-- repeated request is answered by sending the recorded event again, byte for
-- byte and with its `event_id`, never by deciding again against today's credit.
CREATE TABLE customers.answers (
    order_id        uuid        NOT NULL,
    request         text        NOT NULL CHECK (request IN ('OrderCreated', 'OrderCancelled', 'OrderRejected')),
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
CREATE INDEX ON customers.answers (answered_at);

-- Its consumer's inbox and its outbox.
SELECT toolkit.install_inbox('customers');
SELECT toolkit.install_outbox('customers');
