-- Idempotency keys belong to their customer (the token's subject): the same key
-- sent by two customers is two keys, and one customer can never replay another's
-- stored response.
ALTER TABLE orders.idempotency_keys ADD COLUMN customer_id text NOT NULL DEFAULT '';

-- Rows stored before this migration: their customer is in the stored response
-- (only a 201 is stored, and its body is the order, which names its customer).
-- Code still running from before writes '' (the default) until it is replaced;
-- such a row answers no authenticated customer and expires within its TTL.
UPDATE orders.idempotency_keys
SET customer_id = coalesce(convert_from(response_body, 'UTF8')::json->>'customer_id', '')
WHERE customer_id = '';

ALTER TABLE orders.idempotency_keys
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD PRIMARY KEY (customer_id, key);
