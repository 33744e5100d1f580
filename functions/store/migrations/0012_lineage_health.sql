-- 0012: sync health on the lineage (observability.md §4), so the fleet view and the metrics
-- collector are one indexed query instead of a scan of the ledger.
--   last_batch_received_at        — when intake last accepted a batch of this lineage (any
--                                   outcome but rejected: materialized, staged or duplicate)
--   newest_materialized_source_at — the newest source time over the lineage's materialized
--                                   batches (rows: the UUIDv7 time of batch_id; telemetry:
--                                   cursor_end_ts), live or by replay
-- Lag = generated_at − coalesce(newest_materialized_source_at, created_at).
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS last_batch_received_at timestamptz;
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS newest_materialized_source_at timestamptz;

-- The device's name on the lineage row: the last tie-break of the worst-first order (and the
-- `device_name` filter), so the fleet page walks one index in its full order without a lookup
-- of edge_devices per skipped row (a page at offset 1,000 did 1,000 of them). A device's name
-- never changes (UNIQUE, no rename route); every insert path fills it from edge_devices here,
-- so no writer has to remember it.
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS device_name text;
UPDATE edge_table_lineages l SET device_name = d.device_name
    FROM edge_devices d WHERE d.device_id = l.device_id AND l.device_name IS NULL;
CREATE OR REPLACE FUNCTION edge_lineage_device_name() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.device_name INTO NEW.device_name FROM edge_devices d
        WHERE d.device_id = NEW.device_id;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS edge_lineage_device_name ON edge_table_lineages;
CREATE TRIGGER edge_lineage_device_name BEFORE INSERT ON edge_table_lineages
    FOR EACH ROW EXECUTE FUNCTION edge_lineage_device_name();
ALTER TABLE edge_table_lineages ALTER COLUMN device_name SET NOT NULL;

-- The worst-first order of §4 within a project (read::fleet), all of it: pause class, then
-- the whole second at or after the source time (ascending = lag descending, for a
-- generated_at in whole seconds: ⌊G − s⌋ = G − ⌈s⌉), then backlog, device name, source table.
-- An immutable expression so the index holds it (extract() of a timestamptz is only stable;
-- of an interval it is immutable). The fleet page walks this index in order and stops after
-- the page.
CREATE INDEX IF NOT EXISTS edge_table_lineages_health ON edge_table_lineages (
    project_id,
    (CASE pause_reason WHEN 'circuit_breaker' THEN 0 WHEN 'volume_backpressure' THEN 1
                       WHEN 'schema_review' THEN 2 ELSE 3 END),
    (ceil(extract(epoch FROM coalesce(newest_materialized_source_at, created_at) - to_timestamp(0)))),
    staged_row_count DESC,
    device_name,
    source_table
);

-- The fleet row's extras, probed for the page's rows only:
-- `rejections_last_hour` — rejected ledger rows of (device, source_table) received in the last
-- hour (rejections before the lineage exists carry no lineage_id, so not by lineage);
CREATE INDEX IF NOT EXISTS edge_export_segments_rejected_recent
    ON edge_export_segments (device_id, source_table, received_at) WHERE status = 'rejected';
-- `last_ack_at` — the newest acked_at of the lineage's controls (a backward index probe; the
-- unacked count uses edge_pending_controls_lineage of 0003).
CREATE INDEX IF NOT EXISTS edge_pending_controls_lineage_acked
    ON edge_pending_controls (lineage_id, acked_at) WHERE acked_at IS NOT NULL;
