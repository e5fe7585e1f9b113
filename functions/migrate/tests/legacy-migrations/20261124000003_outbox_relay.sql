-- What the outbox relay needs, on every outbox table alike.
--
-- relay_slot: which of 16 relay leases a row belongs to, by its aggregate. A relay
--   publishes a slot's rows only while holding that slot's advisory lock, so the
--   rows of one aggregate are published by one relay at a time, in id order.
-- attempts / last_error / failed_at: a row that cannot be published (a malformed
--   envelope, an entry over the size limit) is set aside with its error instead of
--   blocking the rows behind it; an operator sees it and can redrive it.
DO $$
DECLARE
    outbox text;
BEGIN
    FOREACH outbox IN ARRAY ARRAY['orders.outbox', 'inventory.outbox'] LOOP
        EXECUTE format(
            'ALTER TABLE %s
                 ADD COLUMN relay_slot smallint NOT NULL
                     GENERATED ALWAYS AS ((hashtext(aggregate_id) & 2147483647) %% 16) STORED,
                 ADD COLUMN attempts integer NOT NULL DEFAULT 0,
                 ADD COLUMN last_error text,
                 ADD COLUMN failed_at timestamptz', outbox);
        EXECUTE format(
            'CREATE INDEX ON %s (id) WHERE failed_at IS NOT NULL', outbox);
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
                 autovacuum_analyze_threshold = 5000)', outbox);
    END LOOP;
END
$$;

-- Wakes a listening relay when outbox rows commit (NOTIFY is delivered at commit,
-- and only if the transaction commits). One notification per statement; the
-- payload is the schema, i.e. which outbox.
CREATE FUNCTION public.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON orders.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();
CREATE TRIGGER outbox_notify AFTER INSERT ON inventory.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();
