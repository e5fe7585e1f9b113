-- The toolkit's own objects, which every service's migrations may use:
--
-- toolkit.install_outbox(schema)  creates `<schema>.outbox`, the one shape every
--     outbox has, with what the relay needs (slots, set-aside rows, the NOTIFY
--     trigger, autovacuum settings of a queue table) and the relay's grants.
-- toolkit.install_inbox(schema)   creates `<schema>.processed_events`.
-- outbox_relay                    the relay's database role: it reads, sets aside
--     and deletes outbox rows, and nothing else.
--
-- A database migrated before the toolkit had its migrations already has these
-- objects (from the shop's first migrations); everything here is idempotent.
CREATE SCHEMA IF NOT EXISTS toolkit;

-- Roles are cluster-wide while databases are not: tests create many databases on
-- one server in parallel. An existing role (duplicate_object) or one created by a
-- concurrent transaction (unique_violation on pg_authid) is fine.
DO $$
BEGIN
    CREATE ROLE outbox_relay LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- Wakes a listening relay when outbox rows commit (NOTIFY is delivered at commit,
-- and only if the transaction commits). One notification per statement; the
-- payload is the schema, i.e. which outbox.
CREATE OR REPLACE FUNCTION public.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

-- relay_slot: which of 16 relay leases a row belongs to, by its aggregate. A relay
--   publishes a slot's rows only while holding that slot's advisory lock, so the
--   rows of one aggregate are published by one relay at a time, in id order.
-- attempts / last_error / failed_at: a row that cannot be published (a malformed
--   envelope, an entry over the size limit) is set aside with its error instead of
--   blocking the rows behind it; an operator sees it and can redrive it.
-- payload is `json`, not `jsonb`: it is relayed exactly as it was written.
CREATE OR REPLACE FUNCTION toolkit.install_outbox(schema_name text, table_name text DEFAULT 'outbox')
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t text := format('%I.%I', schema_name, table_name);
BEGIN
    EXECUTE format(
        'CREATE TABLE %s (
             id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             event_id        uuid        NOT NULL UNIQUE,
             event_type      text        NOT NULL,
             schema_version  integer     NOT NULL CHECK (schema_version >= 1),
             aggregate_type  text        NOT NULL,
             aggregate_id    text        NOT NULL,
             occurred_at     timestamptz NOT NULL,
             traceparent     text,
             payload         json        NOT NULL,
             recorded_at     timestamptz NOT NULL DEFAULT now(),
             relay_slot      smallint    NOT NULL
                 GENERATED ALWAYS AS ((hashtext(aggregate_id) & 2147483647) %% 16) STORED,
             attempts        integer     NOT NULL DEFAULT 0,
             last_error      text,
             failed_at       timestamptz
         )', t);
    EXECUTE format('CREATE INDEX ON %s (id) WHERE failed_at IS NOT NULL', t);
    -- A queue table: rows are inserted, published within milliseconds and
    -- deleted. Vacuum it after every few thousand deletions, without throttling,
    -- so index scans do not wade through dead rows during a long drain.
    EXECUTE format(
        'ALTER TABLE %s SET (
             autovacuum_vacuum_scale_factor = 0,
             autovacuum_vacuum_threshold = 5000,
             autovacuum_vacuum_insert_scale_factor = 0,
             autovacuum_vacuum_insert_threshold = 50000,
             autovacuum_vacuum_cost_delay = 0,
             autovacuum_analyze_scale_factor = 0,
             autovacuum_analyze_threshold = 5000)', t);
    EXECUTE format(
        'CREATE TRIGGER outbox_notify AFTER INSERT ON %s
             FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify()', t);
    -- The relay inserts nothing, so it needs no sequence; its advisory locks and
    -- LISTEN need no grant.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO outbox_relay', schema_name);
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON %s TO outbox_relay', t);
END
$fn$;

-- The ids of the events whose effects a consumer applied, written in the same
-- transaction as the effect, so a redelivered event changes nothing. Retention
-- deletes the oldest rows in bounded batches, from the processed_at index.
CREATE OR REPLACE FUNCTION toolkit.install_inbox(schema_name text, table_name text DEFAULT 'processed_events')
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t text := format('%I.%I', schema_name, table_name);
BEGIN
    EXECUTE format(
        'CREATE TABLE %s (
             consumer      text        NOT NULL,
             event_id      uuid        NOT NULL,
             processed_at  timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (consumer, event_id)
         )', t);
    EXECUTE format('CREATE INDEX ON %s (processed_at)', t);
END
$fn$;
