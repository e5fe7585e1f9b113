-- Each service is its own database role (least privilege):
--
-- order_service      (create-order, order-saga, order-reconciler): the `orders` schema.
-- inventory_service  (inventory-api, inventory-consumer, inventory-retention): `inventory`.
-- outbox_relay       (outbox-relay): reads, sets aside and deletes the rows of
--                    orders.outbox and inventory.outbox, nothing else.
--
-- Migrations (the migrate function, the emulator) run as the master user, which
-- owns every table; the functions log in as their service's role (DATABASE_USER).
-- The migrate function sets the roles' passwords from Secrets Manager; locally the
-- server trusts loopback and no password is needed.
--
-- Roles are cluster-wide while databases are not: tests create many databases on
-- one server in parallel, each running this migration. CREATE ROLE is therefore
-- idempotent and race-safe: an existing role (duplicate_object) or one created
-- by a concurrent transaction (unique_violation on pg_authid) is fine.
DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['order_service', 'inventory_service', 'outbox_relay'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN NOINHERIT', role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- The order service: its schema, all of it (the outbox included: it writes events).
GRANT USAGE ON SCHEMA orders TO order_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orders TO order_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA orders TO order_service;

-- The inventory service: likewise.
GRANT USAGE ON SCHEMA inventory TO inventory_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA inventory TO inventory_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA inventory TO inventory_service;

-- The relay: the two outboxes only. It reads pending rows, sets failed rows aside
-- (UPDATE attempts / last_error / failed_at), redrives them and deletes published
-- ones. It inserts nothing, so it needs no sequence. Its advisory locks and
-- LISTEN need no grant.
GRANT USAGE ON SCHEMA orders, inventory TO outbox_relay;
GRANT SELECT, UPDATE, DELETE ON orders.outbox, inventory.outbox TO outbox_relay;

-- Tables and sequences that later migrations create (as the same master user) are
-- the service's too. The rule stays: a migration adding a table in a schema checks
-- this, and grants outbox_relay explicitly if the relay needs it (ARCHITECTURE.md).
ALTER DEFAULT PRIVILEGES IN SCHEMA orders
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO order_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA orders
    GRANT USAGE, SELECT ON SEQUENCES TO order_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO inventory_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory
    GRANT USAGE, SELECT ON SEQUENCES TO inventory_service;
