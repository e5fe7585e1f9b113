-- The order saga has more than one participant (inventory, customers). It
-- keeps, per order, which participants reserved for it and which confirmed
-- the release a compensation (`OrderCancelled`) asks for: an order is
-- CONFIRMED once every participant reserved, and its compensation is settled
-- (`awaiting_release_since` cleared) once every participant released.
ALTER TABLE orders.orders
    ADD COLUMN reserved_by text[] NOT NULL DEFAULT '{}',
    ADD COLUMN released_by text[] NOT NULL DEFAULT '{}';
