-- 0005: event forwarding in commit order (cloud.md §11).
--
-- `id` is assigned when the row is inserted, not when its transaction commits, so a cursor on
-- `id` alone would skip an event whose transaction committed after a later id was forwarded.
-- Each event records its transaction id instead; the forwarder only hands on events whose
-- transaction is older than every transaction still running (`pg_snapshot_xmin`), in
-- `(xid, id)` order, so nothing can later appear behind its cursor.
ALTER TABLE edge_events ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS edge_events_forwarding ON edge_events (xid, id);
ALTER TABLE edge_event_forwarding ADD COLUMN IF NOT EXISTS last_xid xid8 NOT NULL DEFAULT '0';
