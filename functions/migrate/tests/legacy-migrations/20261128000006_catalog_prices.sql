-- Prices come from the catalog: each SKU has the unit price orders must carry.
-- An order line still says the price the customer saw; the inventory rejects an
-- order whose price is not the catalog's, so no order is confirmed at a price the
-- catalog does not hold. Integer cents, as everywhere (the bound is the order
-- line's: 10,000,000,000).
--
-- NULL for the SKUs stocked before prices existed: such a SKU takes no order until
-- `PUT /inventory/{sku}` gives it a price (code still running from before ignores
-- the column and keeps working).
ALTER TABLE inventory.stock
    ADD COLUMN price_cents bigint CHECK (price_cents BETWEEN 0 AND 10000000000);
