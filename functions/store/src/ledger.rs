//! Segment ledger `edge_export_segments` (cloud.md §2): one row per (device, batch_id); the
//! insert is the dedup.

use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A ledger row as intake first writes it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub device_id: Uuid,
    pub batch_id: Uuid,
    pub batch_time: OffsetDateTime,
    pub raw_batch_id: Option<String>,
    pub received_at: OffsetDateTime,
    pub device_name: String,
    pub org_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub fleet_id: Option<Uuid>,
    pub lineage_id: Option<Uuid>,
    pub source_table: Option<String>,
    /// `rows` | `telemetry` | `spill`
    pub kind: &'static str,
    pub journal_epoch: Option<Uuid>,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub schema_hash: Option<String>,
    pub row_count: i32,
    pub bytes: i64,
    /// `accepted` | `rejected`
    pub status: &'static str,
    pub rejection_code: Option<String>,
    pub rejection_detail: Option<String>,
    pub stripped_tenant_fields: i32,
}

/// Inserts the row unless (device, batch) is already recorded. `false` = duplicate.
pub async fn insert_segment<C: GenericClient + Sync>(
    c: &C,
    s: &Segment,
) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_export_segments (device_id, batch_id, batch_time, raw_batch_id, \
                 received_at, device_name, org_id, project_id, fleet_id, lineage_id, source_table, \
                 kind, journal_epoch, first_seq, last_seq, schema_hash, row_count, bytes, status, \
                 rejection_code, rejection_detail, stripped_tenant_fields) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                 $18, $19, $20, $21, $22) \
             ON CONFLICT DO NOTHING",
            &[
                &s.device_id,
                &s.batch_id,
                &s.batch_time,
                &s.raw_batch_id,
                &s.received_at,
                &s.device_name,
                &s.org_id,
                &s.project_id,
                &s.fleet_id,
                &s.lineage_id,
                &s.source_table,
                &s.kind,
                &s.journal_epoch,
                &s.first_seq,
                &s.last_seq,
                &s.schema_hash,
                &s.row_count,
                &s.bytes,
                &s.status,
                &s.rejection_code,
                &s.rejection_detail,
                &s.stripped_tenant_fields,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// How an accepted batch ended.
#[derive(Debug, Clone)]
pub struct SegmentOutcome<'a> {
    pub lineage_id: Uuid,
    /// `staged` | `materialized`
    pub status: &'static str,
    pub classification: &'a str,
    pub materialized_rows: i32,
    pub staged_rows: i32,
}

/// Records the outcome of an accepted batch (same transaction as the work).
pub async fn finish_segment<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
    o: &SegmentOutcome<'_>,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_export_segments SET lineage_id = $4, status = $5, classification = $6, \
             materialized_rows = $7, staged_rows = $8 \
         WHERE device_id = $1 AND batch_id = $2 AND batch_time = $3",
        &[
            &device_id,
            &batch_id,
            &batch_time,
            &o.lineage_id,
            &o.status,
            &o.classification,
            &o.materialized_rows,
            &o.staged_rows,
        ],
    )
    .await?;
    Ok(())
}

/// Whether an accepted (non-rejected) telemetry batch of the lineage has this `batch_seq`.
pub async fn telemetry_seq_accepted<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    batch_seq: i64,
) -> Result<bool, StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT EXISTS (SELECT 1 FROM edge_export_segments WHERE lineage_id = $1 \
                 AND first_seq = $2 AND kind = 'telemetry' AND status <> 'rejected')",
            &[&lineage_id, &batch_seq],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether (device, batch) is already in the ledger, whatever its status: the telemetry
/// intake's dedup, which must come before sequencing (a redelivery never reaches it).
pub async fn segment_recorded<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
) -> Result<bool, StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT EXISTS (SELECT 1 FROM edge_export_segments \
             WHERE device_id = $1 AND batch_id = $2 AND batch_time = $3)",
            &[&device_id, &batch_id, &batch_time],
        )
        .await?;
    Ok(row.get(0))
}
