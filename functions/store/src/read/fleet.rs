//! The fleet's sync health (observability.md §4): the one owner of the lag definition and the
//! worst-first order, shared by `GET …/edge/fleet-health` ([`fleet_health`]) and the metrics
//! collector's lineage cap (the capped per-lineage series are the worst N in this same order).
//!
//! The lag takes the SQL expression of `generated_at` (a parameter such as `$1::timestamptz`),
//! so every row of one answer is measured against the same instant; that instant is a whole
//! second ([`generated_at`]), which makes the order an index can serve ([`SOURCE_SECOND_SQL`]
//! ascending) the lag's order exactly. `l` is `edge_table_lineages` (with its copy of the
//! device's name, `l.device_name`) in the query that uses them.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::read::page::{ordered_page_with_total, OrderedPage};
use crate::scope::{ts, Page, Scope};

/// Rank of a lineage's pause reason in the worst-first order: circuit_breaker,
/// volume_backpressure, schema_review, then active (and any other) lineages. Matches the
/// expression of the `edge_table_lineages_health` index (migration 0012).
pub const PAUSE_RANK_SQL: &str = "(CASE l.pause_reason WHEN 'circuit_breaker' THEN 0 \
     WHEN 'volume_backpressure' THEN 1 WHEN 'schema_review' THEN 2 ELSE 3 END)";

/// The whole second at or after the lineage's source time (newest_materialized_source_at,
/// else created_at), in seconds since the epoch. For a `generated_at` G in whole seconds,
/// `lag_seconds` = ⌊G − s⌋ = G − ⌈s⌉, so ascending here is lag descending, ties included —
/// and unlike the lag it does not depend on G, so the `edge_table_lineages_health` index
/// (migration 0012, the same expression) holds it. `extract` of an interval, not of the
/// timestamptz: only the former is immutable, which an index expression must be.
pub const SOURCE_SECOND_SQL: &str = "(ceil(extract(epoch FROM \
     coalesce(l.newest_materialized_source_at, l.created_at) - to_timestamp(0))))";

/// `lag_seconds` of §4: ⌊generated_at − (newest_materialized_source_at, else created_at)⌋, as
/// bigint. Idle tables lag too: silence is the metrics' `edge_devices_silent`.
pub fn lag_seconds_sql(generated_at: &str) -> String {
    format!(
        "floor(extract(epoch FROM ({generated_at} - \
         coalesce(l.newest_materialized_source_at, l.created_at))))::bigint"
    )
}

/// The instant an answer is measured against: `now` rounded up to the whole second, so that
/// [`worst_first_order_sql`] (source second ascending) is exactly lag descending. Up, not
/// down: a lineage created (or a batch materialized) in the current second then lags 0, not
/// −1.
pub fn generated_at(now: OffsetDateTime) -> OffsetDateTime {
    match now.replace_nanosecond(0) {
        Ok(whole) if whole != now => whole + time::Duration::SECOND,
        _ => now,
    }
}

/// The worst-first `ORDER BY` list of §4: pause rank, lag desc, staged rows desc, device name,
/// source table. The lag is ordered through [`SOURCE_SECOND_SQL`] (the same order for a
/// [`generated_at`] instant); device_name and source_table (unique together) break the
/// remaining ties. `l.device_name` is the lineage's copy of its device's name (migration
/// 0012), so the `edge_table_lineages_health` index holds the whole order and a page reads
/// only the index entries up to its end.
pub fn worst_first_order_sql() -> String {
    format!(
        "{PAUSE_RANK_SQL}, {SOURCE_SECOND_SQL}, l.staged_row_count DESC, l.device_name, \
         l.source_table"
    )
}

/// One lineage's sync health (the `data[]` of §4), exactly its 19 fields.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetHealthView {
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub device_name: String,
    pub fleet_id: Uuid,
    pub source_table: String,
    /// `rows` | `telemetry`
    pub kind: String,
    /// `active` | `paused`
    pub status: String,
    /// `circuit_breaker` | `volume_backpressure` | `schema_review` | null
    pub pause_reason: Option<String>,
    /// Why the device itself was paused by a control (null when it was not).
    pub device_pause_reason: Option<String>,
    /// ⌊generated_at − (newest_materialized_source_at, else the lineage's creation)⌋.
    pub lag_seconds: i64,
    /// The newest source time over the materialized batches (rows: the UUIDv7 time of
    /// `batch_id`; telemetry: `cursor_end_ts`), null before the first.
    pub newest_materialized_source_at: Option<String>,
    pub staged_rows: i64,
    pub staged_bytes: i64,
    pub materialization_failure_count: i32,
    /// The lineage's open schema review (queued or in_review; the oldest if several).
    pub open_review_id: Option<Uuid>,
    /// When intake last accepted a batch of the lineage (not a duplicate, not a rejection).
    pub last_batch_received_at: Option<String>,
    /// The newest `acked_at` of the lineage's controls.
    pub last_ack_at: Option<String>,
    /// The lineage's controls not yet acked (still being sent).
    pub pending_controls: i64,
    /// Rejected ledger rows of (device, source_table) received in the hour before
    /// generated_at.
    pub rejections_last_hour: i64,
}

/// Larger than any lag (≈ 317 years; source times are after 1970) and small enough that
/// `generated_at − min_lag_seconds` is a timestamp PostgreSQL can hold (4713 BC onwards).
pub const MAX_LAG_SECONDS: i64 = 10_000_000_000;

/// Filters of the fleet view (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct FleetFilter {
    /// `active` | `paused`
    pub status: Option<String>,
    /// A pause reason, or `none` for lineages without one.
    pub pause_reason: Option<String>,
    pub min_lag_seconds: Option<i64>,
    pub device_id: Option<Uuid>,
    pub device_name: Option<String>,
    pub fleet_id: Option<Uuid>,
    pub source_table: Option<String>,
}

/// A page of the scope's lineages worst first, measured at `generated_at` ([`generated_at`]),
/// and the total matching the filters. One statement: filter, order and page over the lineage
/// table (walking `edge_table_lineages_health`), then the per-row extras — open review,
/// controls, rejections — as LATERAL probes of the page's rows only.
pub async fn fleet_health<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    f: &FleetFilter,
    generated_at: OffsetDateTime,
    page: Page,
) -> Result<(Vec<FleetHealthView>, i64), OpError> {
    let sql = FleetSql::new();
    // G − m must stay a timestamp: a larger m than any lag can be (see MAX_LAG_SECONDS) selects
    // the same (no) lineages.
    let min_lag_seconds = f.min_lag_seconds.map(|m| m.min(MAX_LAG_SECONDS));
    ordered_page_with_total(
        c,
        &sql.page(),
        &[
            (&generated_at, Type::TIMESTAMPTZ),
            (&scope.org_id, Type::UUID),
            (&scope.project_id, Type::UUID),
            (&f.status, Type::TEXT),
            (&f.pause_reason, Type::TEXT),
            (&min_lag_seconds, Type::INT8),
            (&f.device_id, Type::UUID),
            (&f.device_name, Type::TEXT),
            (&f.fleet_id, Type::UUID),
            (&f.source_table, Type::TEXT),
        ],
        page,
        fleet_health_view,
    )
    .await
}

/// The statement of [`fleet_health`], for `EXPLAIN`: `$1` generated_at, `$2` org, `$3`
/// project, `$4`…`$10` the filters of [`FleetFilter`] in its order (NULL = off), `$11` limit,
/// `$12` offset.
pub fn fleet_health_statement() -> String {
    FleetSql::new().page().statement(10)
}

/// The parts of the fleet statement that are built from the lag and order expressions.
struct FleetSql {
    select: String,
    filter: String,
    order: String,
}

impl FleetSql {
    fn new() -> FleetSql {
        let lag = lag_seconds_sql("$1::timestamptz");
        FleetSql {
            select: format!(
                "l.id AS lineage_id, l.device_id, l.device_name, l.fleet_id, l.source_table, \
                 l.kind, l.status, l.pause_reason, l.device_pause_reason, {lag} AS lag_seconds, \
                 l.newest_materialized_source_at, l.staged_row_count AS staged_rows, \
                 l.staged_bytes, l.materialization_failure_count, l.last_batch_received_at, \
                 {PAUSE_RANK_SQL} AS pause_rank, {SOURCE_SECOND_SQL} AS source_second"
            ),
            // min_lag_seconds: lag ≥ m ⇔ ⌊G − s⌋ ≥ m ⇔ s ≤ G − m (m whole seconds): the same
            // rows as comparing each row's lag, by one timestamp comparison (the total's scan
            // evaluates it on every lineage of the project).
            // pause_reason: compared as its rank (the CHECK of 0001 allows only the three
            // reasons or NULL, so rank 3 is exactly "none"), which the index holds as its
            // second key: an Index Cond instead of a filter the planner misestimates.
            filter: format!(
                "{FLEET_WHERE} \
                 AND ($5::text IS NULL OR {PAUSE_RANK_SQL} = (CASE $5 \
                     WHEN 'circuit_breaker' THEN 0 WHEN 'volume_backpressure' THEN 1 \
                     WHEN 'schema_review' THEN 2 WHEN 'none' THEN 3 END)) \
                 AND ($6::bigint IS NULL OR coalesce(l.newest_materialized_source_at, \
                     l.created_at) <= $1::timestamptz - make_interval(secs => $6))"
            ),
            order: worst_first_order_sql(),
        }
    }

    /// Filter, order and page over the lineage table (walking `edge_table_lineages_health`),
    /// then the per-row extras — open review, controls, rejections — probed for the page's
    /// rows only.
    fn page(&self) -> OrderedPage<'_> {
        OrderedPage {
            select: &self.select,
            from: "edge_table_lineages l",
            join: "",
            filter: &self.filter,
            order: &self.order,
            outer_select: "p.lineage_id, p.device_id, p.device_name, p.fleet_id, \
                 p.source_table, p.kind, p.status, p.pause_reason, p.device_pause_reason, \
                 p.lag_seconds, p.newest_materialized_source_at, p.staged_rows, p.staged_bytes, \
                 p.materialization_failure_count, r.id, p.last_batch_received_at, \
                 (SELECT max(k.acked_at) FROM edge_pending_controls k \
                     WHERE k.lineage_id = p.lineage_id AND k.acked_at IS NOT NULL), \
                 (SELECT count(*) FROM edge_pending_controls k \
                     WHERE k.lineage_id = p.lineage_id AND k.status = 'pending'), \
                 (SELECT count(*) FROM edge_export_segments s \
                     WHERE s.device_id = p.device_id AND s.source_table = p.source_table \
                         AND s.status = 'rejected' \
                         AND s.received_at > $1::timestamptz - interval '1 hour')",
            outer_from: "LEFT JOIN LATERAL (SELECT v.id FROM edge_schema_reviews v \
                 WHERE v.lineage_id = p.lineage_id AND v.state IN ('queued', 'in_review') \
                 ORDER BY v.created_at, v.id LIMIT 1) r ON true",
            // The same order on the page's columns (a subquery's order is not kept by joins).
            outer_order: "p.pause_rank, p.source_second, p.staged_rows DESC, p.device_name, \
                 p.source_table",
        }
    }
}

/// The fleet filters over `l` alone (the total counts lineages without the device join; the
/// device name goes through its unique index). NULL parameters switch a filter off: unnamed
/// statements are planned with their values, so a filter that is off costs nothing.
const FLEET_WHERE: &str = "l.org_id = $2 AND l.project_id = $3 \
     AND ($4::text IS NULL OR l.status = $4) \
     AND ($7::uuid IS NULL OR l.device_id = $7) \
     AND ($8::text IS NULL \
         OR l.device_id = (SELECT dn.device_id FROM edge_devices dn WHERE dn.device_name = $8)) \
     AND ($9::uuid IS NULL OR l.fleet_id = $9) \
     AND ($10::text IS NULL OR l.source_table = $10)";

fn fleet_health_view(r: &tokio_postgres::Row) -> FleetHealthView {
    let at = |i: usize| r.get::<_, Option<OffsetDateTime>>(i).map(ts);
    FleetHealthView {
        lineage_id: r.get(0),
        device_id: r.get(1),
        device_name: r.get(2),
        fleet_id: r.get(3),
        source_table: r.get(4),
        kind: r.get(5),
        status: r.get(6),
        pause_reason: r.get(7),
        device_pause_reason: r.get(8),
        lag_seconds: r.get(9),
        newest_materialized_source_at: at(10),
        staged_rows: r.get(11),
        staged_bytes: r.get(12),
        materialization_failure_count: r.get(13),
        open_review_id: r.get(14),
        last_batch_received_at: at(15),
        last_ack_at: at(16),
        pending_controls: r.get(17),
        rejections_last_hour: r.get(18),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_at_rounds_up_to_the_whole_second() {
        let at = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        assert_eq!(
            generated_at(at("2026-12-04T01:02:03.000001Z")),
            at("2026-12-04T01:02:04Z")
        );
        assert_eq!(
            generated_at(at("2026-12-04T01:02:03.999Z")),
            at("2026-12-04T01:02:04Z")
        );
        assert_eq!(
            generated_at(at("2026-12-04T01:02:03Z")),
            at("2026-12-04T01:02:03Z")
        );
    }
}
