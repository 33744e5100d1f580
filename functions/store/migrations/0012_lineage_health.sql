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

-- The worst-first order of §4 within a project: pause class, then oldest source time (= lag
-- desc), then backlog. device_name and source_table break the remaining ties after the join.
CREATE INDEX IF NOT EXISTS edge_table_lineages_health ON edge_table_lineages (
    project_id,
    (CASE pause_reason WHEN 'circuit_breaker' THEN 0 WHEN 'volume_backpressure' THEN 1
                       WHEN 'schema_review' THEN 2 ELSE 3 END),
    (coalesce(newest_materialized_source_at, created_at)),
    staged_row_count DESC
);
