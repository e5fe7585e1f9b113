-- Which row a layout comes from: made with the row, kept by its changes. The copy
-- in Redis carries it, so a copy that survived a database made afresh (a later
-- generation of a row that no longer exists) is replaced, not followed.
ALTER TABLE toolkit.stream_layout
    ADD COLUMN IF NOT EXISTS origin uuid NOT NULL DEFAULT gen_random_uuid();
