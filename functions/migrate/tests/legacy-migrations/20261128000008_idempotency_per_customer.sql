-- Idempotency keys belong to their customer (the token's subject): the same key
-- sent by two customers is two keys, and one customer can never replay another's
-- stored response.
--
-- The previous code keeps running against this schema for a while: between this
-- migration and the functions' update, and again for good if the deployment rolls
-- back (migrations are not undone). It inserts with `ON CONFLICT (key)`, which
-- needs a unique index on `key` alone; a primary key on (customer_id, key) would
-- make every one of its requests with an Idempotency-Key fail. So `key` stays the
-- primary key, and the code from this version on stores in it the key scoped to
-- its customer: customer_id, the unit separator chr(31), the client's key
-- (shared::idempotency::scoped_key). Customer ids contain no chr(31), so
-- (customer_id, client key) pairs map to distinct keys: the key is unique per
-- customer. A client's key is printable ASCII, so the previous code's rows (its
-- raw keys, customer_id '' from the default below) never meet the new code's.
ALTER TABLE orders.idempotency_keys ADD COLUMN customer_id text NOT NULL DEFAULT '';

-- A scoped key: up to 64 + 1 + 255 characters, and it starts with its customer.
ALTER TABLE orders.idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check,
    ADD CONSTRAINT idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 320),
    ADD CONSTRAINT idempotency_keys_customer_scope CHECK (
        customer_id = '' OR starts_with(key, customer_id || chr(31))
    );

-- Rows stored before this migration keep customer_id '' and their raw key: only
-- the previous code reads them, and retention purges them within their 24 h. They
-- would be of no use to the new code anyway: a request they answered carried
-- `customer_id` in its body, which the new code refuses (422) before it looks a
-- key up.
