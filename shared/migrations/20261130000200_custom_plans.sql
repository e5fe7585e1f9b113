-- Every statement in this database is planned for its own parameters
-- (`plan_cache_mode = force_custom_plan`), never from a plan cached for other ones.
--
-- Why: the toolkit's and the services' statements take batches as arrays
-- (`id = ANY($1)`, `FROM UNNEST($1, ...)`). A generic plan, which PostgreSQL
-- caches per connection after five executions, estimates every array at 100
-- elements, and is costed with the table's size at that moment. A connection
-- that starts while the tables are small (a new deployment, the emulator, every
-- test) caches sequential scans and keeps them as the tables grow, until an
-- ANALYZE happens to invalidate them: measured under the emulator benchmark,
-- the saga's `SELECT ... FOR UPDATE` on `orders.orders` and its `UPDATE ...
-- FROM UNNEST` scanned the whole table on every batch (BENCHMARKS.md, "Issue 14,
-- part three"). Planning each statement costs tens of microseconds per batch.
--
-- A server setting, not a `SET` from the client: a session parameter set by the
-- client pins its connection behind RDS Proxy. It applies to connections opened
-- after this migration.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_custom_plan',
                   current_database());
END
$$;
