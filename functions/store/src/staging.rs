//! Staged rows (cloud.md §4): one set-based insert per batch, unique per
//! (lineage, epoch, commit_seq, pk) so redelivery never stages twice, with the lineage counters
//! updated in the same statement.

use edge_cloud_core::intake::StagingReason;
use std::borrow::Cow;

use edge_cloud_core::staged_json;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// One row to stage.
#[derive(Debug, Clone)]
pub struct StagedRow {
    pub journal_epoch: Uuid,
    pub seq: i64,
    pub pk_key: String,
    pub stage_time: OffsetDateTime,
    /// `insert` | `update` | `delete` | `telemetry`
    pub op: &'static str,
    pub pk: Option<serde_json::Value>,
    pub row: Option<serde_json::Value>,
    pub event_ts: Option<OffsetDateTime>,
    pub error: Option<String>,
    pub bytes: i32,
}

/// What all rows of one staging call share.
#[derive(Debug, Clone, Copy)]
pub struct StageTarget<'a> {
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub source_table: &'a str,
    pub batch_id: Uuid,
    pub schema_hash: &'a str,
    pub reason: StagingReason,
}

/// Stages rows; returns (rows newly staged, their bytes). Already-staged rows are skipped and
/// not counted again. `materialization_failed` rows also grow the lineage's failure counter.
pub async fn stage_rows<C: GenericClient + Sync>(
    c: &C,
    t: StageTarget<'_>,
    rows: &[StagedRow],
) -> Result<(i64, i64), StoreError> {
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let epochs: Vec<Uuid> = rows.iter().map(|r| r.journal_epoch).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.pk_key.as_str()).collect();
    let times: Vec<OffsetDateTime> = rows.iter().map(|r| r.stage_time).collect();
    let ops: Vec<&str> = rows.iter().map(|r| r.op).collect();
    // jsonb refuses U+0000; such strings are stored under an internal marker (staged_json).
    fn storable(v: &Option<serde_json::Value>) -> Option<Cow<'_, serde_json::Value>> {
        v.as_ref().map(|v| {
            if staged_json::needs_encoding(v) {
                Cow::Owned(staged_json::encode(v))
            } else {
                Cow::Borrowed(v)
            }
        })
    }
    let pks_stored: Vec<_> = rows.iter().map(|r| storable(&r.pk)).collect();
    let rows_stored: Vec<_> = rows.iter().map(|r| storable(&r.row)).collect();
    let pks: Vec<Option<&serde_json::Value>> = pks_stored.iter().map(|v| v.as_deref()).collect();
    let data: Vec<Option<&serde_json::Value>> = rows_stored.iter().map(|v| v.as_deref()).collect();
    let event_ts: Vec<Option<OffsetDateTime>> = rows.iter().map(|r| r.event_ts).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let bytes: Vec<i32> = rows.iter().map(|r| r.bytes).collect();
    let last_error = rows.iter().rev().find_map(|r| r.error.as_deref());
    let reason = t.reason.as_str();
    let failed = t.reason == StagingReason::MaterializationFailed;
    let row = c
        .query_one_unnamed(
            "WITH ins AS ( \
                 INSERT INTO edge_staged_rows (lineage_id, journal_epoch, source_commit_seq, \
                     pk_key, stage_time, device_id, source_table, batch_id, op, pk, \"row\", \
                     event_ts, schema_hash, staging_reason, error, bytes) \
                 SELECT $1, u.e, u.s, u.k, u.t, $2, $3, $4, u.op, u.pk, u.r, u.ts, $5, $6, u.err, u.b \
                 FROM unnest($7::uuid[], $8::bigint[], $9::text[], $10::timestamptz[], \
                     $11::text[], $12::jsonb[], $13::jsonb[], $14::timestamptz[], $15::text[], \
                     $16::integer[]) AS u(e, s, k, t, op, pk, r, ts, err, b) \
                 ON CONFLICT DO NOTHING \
                 RETURNING bytes), \
             counted AS (SELECT count(*) AS n, COALESCE(sum(bytes), 0)::bigint AS b FROM ins), \
             upd AS ( \
                 UPDATE edge_table_lineages l SET \
                     staged_row_count = l.staged_row_count + counted.n, \
                     staged_bytes = l.staged_bytes + counted.b, \
                     materialization_failure_count = l.materialization_failure_count \
                         + CASE WHEN $17 THEN counted.n::integer ELSE 0 END, \
                     materialization_last_error = CASE WHEN $17 AND counted.n > 0 THEN $18 \
                         ELSE l.materialization_last_error END, \
                     updated_at = now() \
                 FROM counted WHERE l.id = $1) \
             SELECT n, b FROM counted",
            &[
                &t.lineage_id,
                &t.device_id,
                &t.source_table,
                &t.batch_id,
                &t.schema_hash,
                &reason,
                &epochs,
                &seqs,
                &keys,
                &times,
                &ops,
                &pks,
                &data,
                &event_ts,
                &errors,
                &bytes,
                &failed,
                &last_error,
            ],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
