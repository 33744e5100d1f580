//! The fleet's sync health (observability.md §4): the one owner of the lag definition and the
//! worst-first order, shared by `GET …/edge/fleet-health` and the metrics collector's lineage
//! cap (the capped per-lineage series are the worst N in this same order).
//!
//! Both take the SQL expression of `generated_at` (a parameter such as `$1::timestamptz`), so
//! every row of one answer is measured against the same instant. `l` is `edge_table_lineages`
//! and `d` is `edge_devices` in the query that uses them.

/// Rank of a lineage's pause reason in the worst-first order: circuit_breaker,
/// volume_backpressure, schema_review, then active (and any other) lineages. Matches the
/// expression of the `edge_table_lineages_health` index (migration 0012).
pub const PAUSE_RANK_SQL: &str = "(CASE l.pause_reason WHEN 'circuit_breaker' THEN 0 \
     WHEN 'volume_backpressure' THEN 1 WHEN 'schema_review' THEN 2 ELSE 3 END)";

/// `lag_seconds` of §4: ⌊generated_at − (newest_materialized_source_at, else created_at)⌋, as
/// bigint. Idle tables lag too: silence is the metrics' `edge_devices_silent`.
pub fn lag_seconds_sql(generated_at: &str) -> String {
    format!(
        "floor(extract(epoch FROM ({generated_at} - \
         coalesce(l.newest_materialized_source_at, l.created_at))))::bigint"
    )
}

/// The worst-first `ORDER BY` list of §4: pause rank, lag desc, staged rows desc, device name,
/// source table.
pub fn worst_first_order_sql(generated_at: &str) -> String {
    format!(
        "{PAUSE_RANK_SQL}, {} DESC, l.staged_row_count DESC, d.device_name, l.source_table",
        lag_seconds_sql(generated_at)
    )
}
