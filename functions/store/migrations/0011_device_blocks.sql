-- 0008: tables the device blocked itself (reliability.md §2 "Blocked tables", §6). A schema
-- observation with `blocked_reason` / `blocked_commit_seq` records the block on the lineage
-- (`device_block` of the API); one without them clears it. The operator's decision goes out as
-- the signed control `unblock_table` (edge_pending_controls); a skip's ack carries the dropped
-- entry, kept as a dead letter `skipped_by_operator` (edge_dead_letters, message_id = the
-- control id, so a re-sent ack records it once).
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS device_block_reason text;
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS device_block_commit_seq bigint;
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS device_block_at timestamptz;
