-- Every statement in this database is planned for its own parameters
-- (`plan_cache_mode = force_custom_plan`), never from a plan cached for other ones.
--
-- Why: the toolkit's and the services' statements take batches as arrays
-- (`id = ANY($1)`, `FROM UNNEST($1, ...)`). A generic plan, which PostgreSQL may
-- cache per connection after five executions, estimates every array at 100
-- elements and is costed with the tables' sizes of that moment. Measured under
-- the emulator benchmark (a fresh database, 500 orders/s, `auto_explain`), the
-- saga's `SELECT ... FOR UPDATE` and `UPDATE ... FROM UNNEST` on `orders.orders`
-- ran as sequential scans on every batch: 26.8 million rows read in 30 s; with
-- this setting 0.9 million (BENCHMARKS.md, "Issue 14, part three"). Planning
-- each statement costs tens of microseconds per batch.
--
-- A server setting, not a `SET` from the client: a session parameter set by the
-- client pins its connection behind RDS Proxy. It applies to sessions opened
-- after this migration.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_custom_plan',
                   current_database());
END
$$;
