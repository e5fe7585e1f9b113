-- The layout of each namespace's event streams (shared/src/layout.rs): how many
-- partitions, in which generation of stream keys, and the previous generation's
-- stream ends while consumers finish it. Relays read the row under their locks
-- and change it when their STREAM_PARTITIONS differs; consumers read its copy in
-- Redis. `started_before` in a relay's query keeps a relay of the previous
-- deployment from changing it back.
CREATE TABLE IF NOT EXISTS toolkit.stream_layout (
    namespace   text        PRIMARY KEY,
    generation  integer     NOT NULL CHECK (generation >= 0),
    partitions  integer     NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    previous    json,
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

GRANT USAGE ON SCHEMA toolkit TO outbox_relay;
GRANT SELECT, INSERT, UPDATE ON toolkit.stream_layout TO outbox_relay;
