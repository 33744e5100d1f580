//! Spill / snapshot uploads (protocol §7): `edge_spill_uploads` and the `url_grant` controls.
//!
//! A grant is an ordinary pending control (`edge_pending_controls`), signed with the device's
//! control key and re-sent until acked, exactly like pause/resume. A newer grant for the same
//! batch supersedes an unacked older one: its URL is the one worth delivering.

use edge_cloud_core::spill::Header;
use edge_protocol::control::{sign_in_place, ControlEnvelope, IngestRequest, SegmentKind};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::controls::IssuedControl;
use crate::registry::Device;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// One upload as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub device_id: Uuid,
    pub batch_id: Uuid,
    pub source_table: String,
    pub segment_kind: SegmentKind,
    pub object_key: String,
    pub journal_epoch: Option<Uuid>,
    pub schema_hash: Option<String>,
    pub status: String,
    pub grants: i32,
    pub outcome_code: Option<String>,
}

const UPLOAD_COLUMNS: &str = "device_id, batch_id, source_table, segment_kind, object_key, \
     journal_epoch, schema_hash, status, grants, outcome_code";

fn upload_from_row(r: &tokio_postgres::Row) -> Result<Upload, StoreError> {
    let kind: String = r.get(3);
    Ok(Upload {
        device_id: r.get(0),
        batch_id: r.get(1),
        source_table: r.get(2),
        segment_kind: SegmentKind::from_wire(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("segment_kind {kind:?}")))?,
        object_key: r.get(4),
        journal_epoch: r.get(5),
        schema_hash: r.get(6),
        status: r.get(7),
        grants: r.get(8),
        outcome_code: r.get(9),
    })
}

/// The upload of (device, batch), row-locked for the caller's transaction.
pub async fn lock_upload<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
) -> Result<Option<Upload>, StoreError> {
    let row = c
        .query_opt_unnamed(
            &format!(
                "SELECT {UPLOAD_COLUMNS} FROM edge_spill_uploads \
                 WHERE device_id = $1 AND batch_id = $2 FOR UPDATE"
            ),
            &[&device_id, &batch_id],
        )
        .await?;
    row.as_ref().map(upload_from_row).transpose()
}

/// What the cloud knows of the device for the header inference: its newest journal epoch
/// (UUIDv7 epochs sort by creation time; the journal is device-wide, so any table's batches
/// tell) and the table's current schema hash (last batch or observation).
pub async fn known_header<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    source_table: &str,
) -> Result<(Option<Uuid>, Option<String>), StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT (SELECT w.journal_epoch FROM edge_lineage_watermarks w \
                     JOIN edge_table_lineages l ON l.id = w.lineage_id \
                     WHERE l.device_id = $1 ORDER BY w.journal_epoch DESC LIMIT 1), \
                    (SELECT current_schema_hash FROM edge_table_lineages \
                     WHERE device_id = $1 AND source_table = $2)",
            &[&device_id, &source_table],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Records a request: creates the upload, or keeps the existing row and its header (fixed at
/// the first request that could resolve one). A failed upload asked for again reopens.
pub async fn record_request<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    req: &IngestRequest,
    object_key: &str,
    header: Option<&Header>,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_spill_uploads (device_id, batch_id, source_table, segment_kind, \
             object_key, journal_epoch, schema_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (device_id, batch_id) DO UPDATE SET \
             journal_epoch = COALESCE(edge_spill_uploads.journal_epoch, EXCLUDED.journal_epoch), \
             schema_hash = COALESCE(edge_spill_uploads.schema_hash, EXCLUDED.schema_hash), \
             status = CASE WHEN edge_spill_uploads.status = 'failed' THEN 'requested' \
                           ELSE edge_spill_uploads.status END, \
             updated_at = now()",
        &[
            &device_id,
            &req.batch_id,
            &req.source_table,
            &req.segment_kind.as_str(),
            &object_key,
            &header.map(|h| h.journal_epoch),
            &header.map(|h| h.schema_hash.as_str()),
        ],
    )
    .await?;
    Ok(())
}

/// What a grant carries.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    pub source_table: &'a str,
    pub batch_id: Uuid,
    pub segment_kind: SegmentKind,
    pub url: &'a str,
    pub expires_at: OffsetDateTime,
}

/// Issues a signed `url_grant` into `edge_pending_controls` (superseding an unacked older
/// grant of the same batch) and notes it on the upload.
pub async fn issue_url_grant<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    grant: &Grant<'_>,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<IssuedControl, StoreError> {
    let fmt = |t: OffsetDateTime| {
        edge_protocol::timestamp::format(t).map_err(|e| StoreError::Corrupt(format!("time: {e}")))
    };
    let mut envelope = ControlEnvelope::url_grant(
        control_id,
        grant.source_table,
        grant.batch_id,
        grant.segment_kind,
        grant.url,
        fmt(grant.expires_at)?,
        fmt(now)?,
    );
    sign_in_place(&mut envelope, &device.control_key);
    let json = serde_json::to_value(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let batch = grant.batch_id.to_string();
    c.execute_unnamed(
        "UPDATE edge_pending_controls SET status = 'superseded' \
         WHERE device_id = $1 AND status = 'pending' AND control_kind = 'url_grant' \
             AND envelope->>'batch_id' = $2",
        &[&device.device_id, &batch],
    )
    .await?;
    c.execute_unnamed(
        "INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, reason, envelope) \
         VALUES ($1, $2, (SELECT id FROM edge_table_lineages \
                          WHERE device_id = $2 AND source_table = $3), \
                 'url_grant', $3, $4, $5)",
        &[
            &control_id,
            &device.device_id,
            &grant.source_table,
            &format!("upload of batch {batch}"),
            &json,
        ],
    )
    .await?;
    c.execute_unnamed(
        "UPDATE edge_spill_uploads SET status = 'granted', grants = grants + 1, \
             last_control_id = $3, url_expires_at = $4, updated_at = now() \
         WHERE device_id = $1 AND batch_id = $2 AND status <> 'finalized'",
        &[
            &device.device_id,
            &grant.batch_id,
            &control_id,
            &grant.expires_at,
        ],
    )
    .await?;
    Ok(IssuedControl {
        control_id,
        envelope,
    })
}

/// How a finalize ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizeOutcome<'a> {
    /// `finalized` or `failed`.
    pub status: &'static str,
    pub code: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub object_bytes: Option<i64>,
    pub row_count: Option<i64>,
}

/// Records the outcome of a finalize on the upload (no-op when the upload is unknown).
pub async fn record_finalize<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    o: &FinalizeOutcome<'_>,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_spill_uploads SET status = $3, outcome_code = $4, outcome_detail = $5, \
             object_bytes = COALESCE($6, object_bytes), row_count = COALESCE($7, row_count), \
             updated_at = now() \
         WHERE device_id = $1 AND batch_id = $2",
        &[
            &device_id,
            &batch_id,
            &o.status,
            &o.code,
            &o.detail,
            &o.object_bytes,
            &o.row_count,
        ],
    )
    .await?;
    Ok(())
}

/// Completes a spill's ledger row with what only the whole object tells: the seq range, the
/// row count and the object's size (the row was inserted first, for the dedup).
pub async fn note_segment<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
    (first_seq, last_seq): (Option<i64>, Option<i64>),
    rows: i64,
    bytes: i64,
) -> Result<(), StoreError> {
    let rows = i32::try_from(rows).unwrap_or(i32::MAX);
    c.execute_unnamed(
        "UPDATE edge_export_segments SET first_seq = $4, last_seq = $5, row_count = $6, \
             bytes = $7 \
         WHERE device_id = $1 AND batch_id = $2 AND batch_time = $3",
        &[
            &device_id,
            &batch_id,
            &batch_time,
            &first_seq,
            &last_seq,
            &rows,
            &bytes,
        ],
    )
    .await?;
    Ok(())
}

/// An unacked grant of the same batch whose URL is still valid at `valid_until`: the device
/// has not received it yet (it acks what it receives), so re-sending it now answers a repeated
/// `url_request` better than a new URL would — no churn of grants superseding each other while
/// the control transport (the sweep's schedule in AWS) is slower than the device's 30 s retry.
/// Made due immediately; returns its id.
pub async fn reuse_pending_grant<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    valid_until: OffsetDateTime,
) -> Result<Option<Uuid>, StoreError> {
    let row = c
        .query_opt_unnamed(
            "UPDATE edge_pending_controls SET next_attempt_at = now() \
             WHERE control_id = (SELECT control_id FROM edge_pending_controls \
                 WHERE device_id = $1 AND status = 'pending' AND control_kind = 'url_grant' \
                     AND envelope->>'batch_id' = $2 \
                     AND (envelope->>'presigned_url_expires_at')::timestamptz > $3 \
                 ORDER BY created_at DESC LIMIT 1) \
             RETURNING control_id",
            &[&device_id, &batch_id.to_string(), &valid_until],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Issues a signed `upload_result` for `batch_id` into `edge_pending_controls` (reliability §2),
/// superseding an unacked older result of the same batch: the device deletes its spilled rows
/// only on `committed`, uploads again on `failed` + retryable, and blocks the table on
/// `failed` + not retryable. `failure` is `(code, retryable)`; `None` means committed.
pub async fn issue_upload_result<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    source_table: &str,
    batch_id: Uuid,
    failure: Option<(&str, bool)>,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<IssuedControl, StoreError> {
    let issued_at = edge_protocol::timestamp::format(now)
        .map_err(|e| StoreError::Corrupt(format!("time: {e}")))?;
    let mut envelope =
        ControlEnvelope::upload_result(control_id, source_table, batch_id, failure, issued_at);
    sign_in_place(&mut envelope, &device.control_key);
    let json = serde_json::to_value(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let batch = batch_id.to_string();
    c.execute_unnamed(
        "UPDATE edge_pending_controls SET status = 'superseded' \
         WHERE device_id = $1 AND status = 'pending' AND control_kind = 'upload_result' \
             AND envelope->>'batch_id' = $2",
        &[&device.device_id, &batch],
    )
    .await?;
    let reason = match failure {
        None => format!("upload of batch {batch} committed"),
        Some((code, _)) => format!("upload of batch {batch} failed: {code}"),
    };
    c.execute_unnamed(
        "INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, reason, envelope) \
         VALUES ($1, $2, (SELECT id FROM edge_table_lineages \
                          WHERE device_id = $2 AND source_table = $3), \
                 'upload_result', $3, $4, $5)",
        &[
            &control_id,
            &device.device_id,
            &source_table,
            &reason,
            &json,
        ],
    )
    .await?;
    Ok(IssuedControl {
        control_id,
        envelope,
    })
}

/// Uploads of the device still open (requested or granted, not finalized or failed), other
/// than `batch_id`: what the per-device cap on open grants counts (reliability §7).
pub async fn open_uploads<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
) -> Result<i64, StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT count(*) FROM edge_spill_uploads \
             WHERE device_id = $1 AND batch_id <> $2 AND status IN ('requested', 'granted')",
            &[&device_id, &batch_id],
        )
        .await?;
    Ok(row.get(0))
}
