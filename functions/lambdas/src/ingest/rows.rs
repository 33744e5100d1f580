//! Row batches (cloud.md §2–§4): the ledger row, then the rows into their lineage —
//! classification, materialization into the mirror (or staging), mapped telemetry values and
//! the watermark. The chunks of a spill object take the same path ([`rows_into_lineage`]).

use edge_cloud_core::backpressure::permanent_write_error;
use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::intake::{epoch_time_ms, pk_key, BindingsOf, StagingReason};
use edge_cloud_core::metrics::StagedByReason;
use edge_cloud_core::mirror::plan_upserts;
use edge_cloud_core::telemetry::data_point_value;
use edge_cloud_store::coalesce;
use edge_cloud_store::ledger::insert_segment;
use edge_cloud_store::lineage::{
    advance_watermark, bindings, emit_event, lock_lineage, upsert_lineage, Received,
};
use edge_cloud_store::mirror::{apply_upserts, insert_telemetry_values, TelemetryValue};
use edge_cloud_store::registry::Device;
use edge_cloud_store::snapshot_runs::{self, ChunkStatus, RunEnd, RunKey};
use edge_cloud_store::staging::{stage_rows, StagedRow};
use edge_cloud_store::tokio_postgres::Transaction;
use edge_cloud_store::StoreError;
use edge_protocol::batch::{Op, RowBatch};
use edge_protocol::ids::CommitPosition;
use edge_protocol::value::row_to_json;
use edge_protocol::wire::SnapshotEnd;
use time::OffsetDateTime;
use uuid::Uuid;

use super::ledger::{count, count64, segment, time_from_ms, Carried};
use super::outcome::{accept_processed, Processed};
use super::schema::{classify_batch, stage_target};
use super::Outcome;
use crate::HandlerError;

pub(super) async fn intake_rows(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: &Device,
    b: RowBatch,
) -> Result<Outcome, HandlerError> {
    let segment = segment(a, Some(device), Carried::Rows(&b));
    let batch_time = segment.batch_time;
    if !insert_segment(tx, &segment).await? {
        return Ok(Outcome::Duplicate {
            batch_id: b.batch_id,
        });
    }
    let p = rows_into_lineage(tx, device, &b, batch_time, 0).await?;
    accept_processed(tx, device.device_id, b.batch_id, batch_time, &p).await
}

/// Row intake after the ledger (cloud.md §2 steps 3–5): lineage, classification, then
/// materialization or staging, and the watermark. Shared by row batches and the chunks of a
/// spill object (protocol §7), which are processed exactly like batches. `row_offset` is the
/// index of the chunk's first row in the whole object: mapped telemetry values are keyed by
/// (batch, row index), and every chunk of a spill shares the batch id.
pub(super) async fn rows_into_lineage(
    tx: &Transaction<'_>,
    device: &Device,
    b: &RowBatch,
    batch_time: OffsetDateTime,
    row_offset: usize,
) -> Result<Processed, HandlerError> {
    let mut lineage = upsert_lineage(
        tx,
        Uuid::now_v7(),
        device,
        &b.source_table,
        "rows",
        &b.schema_hash,
    )
    .await?;
    let mut own = bindings(tx, lineage.id, &b.schema_hash).await?;
    let mut registry = None;
    if own.is_none() {
        match coalesce::intake(tx, device, lineage.id, &b.source_table, &b.schema_hash).await? {
            coalesce::Intake::Adopted => {
                own = bindings(tx, lineage.id, &b.schema_hash).await?;
                lineage = lock_lineage(tx, lineage.id).await?;
            }
            coalesce::Intake::Await(scope) => registry = Some(scope),
            coalesce::Intake::PerDevice => {}
        }
    }
    let c = classify_batch(
        tx,
        device,
        lineage,
        &b.schema_hash,
        b.schema_columns.as_ref(),
        own.is_some(),
        registry,
    )
    .await?;
    let lineage = &c.lineage;
    let (mut materialized, mut staged, mut failed) = (0i64, 0i64, 0i64);
    let mut staged_by = StagedByReason::default();
    let target = |reason| stage_target(lineage.id, device, b, reason);
    let status = match c.route {
        Ok(which) => {
            let binds = match (which, &lineage.approved_schema_hash) {
                (BindingsOf::OwnHash, _) => own,
                (BindingsOf::ApprovedHash, Some(h)) => bindings(tx, lineage.id, h).await?,
                (BindingsOf::ApprovedHash, None) => None,
            };
            let binds = binds.ok_or_else(|| {
                StoreError::Corrupt(format!("lineage {} routed without bindings", lineage.id))
            })?;
            if let Some(table) = &binds.mirror {
                let mut plan = plan_upserts(
                    table,
                    b.rows
                        .iter()
                        .map(|r| (CommitPosition::new(b.journal_epoch, r.commit_seq), r)),
                );
                if let Some(error) = write_mirror(tx, table, device.device_id, &plan).await? {
                    // A permanent error of the statement fails every row it carried
                    // (reliability.md §4): staged as misfits with the error text, counted
                    // toward the breaker, never a dead letter.
                    plan.failures
                        .extend(plan.applied_indexes.iter().map(|&index| {
                            edge_cloud_core::mirror::RowFailure {
                                index,
                                error: error.clone(),
                            }
                        }));
                    plan.epochs.clear();
                    plan.superseded = 0;
                }
                materialized = count64(plan.len() + plan.superseded);
                if !plan.failures.is_empty() {
                    let rows: Vec<StagedRow> = plan
                        .failures
                        .iter()
                        .filter_map(|f| {
                            b.rows
                                .get(f.index)
                                .map(|r| staged_row(b, r, Some(f.error.clone())))
                        })
                        .collect();
                    let (n, _) =
                        stage_rows(tx, target(StagingReason::MaterializationFailed), &rows).await?;
                    failed = count64(plan.failures.len());
                    staged += n;
                    staged_by.add(StagingReason::MaterializationFailed, n);
                    emit_event(
                        tx,
                        "integration.edge_export_segment.materialization_failed.v1",
                        device,
                        Some(lineage.id),
                        serde_json::json!({"batch_id": b.batch_id, "failed_rows": failed,
                            "error": plan.failures[0].error}),
                    )
                    .await?;
                }
            }
            if which == BindingsOf::ApprovedHash {
                // allow_additive_continue (reliability.md §4): the old columns materialized
                // above; the full row images wait under the batch's own hash for its review,
                // whose approval replays them into the new columns.
                let rows: Vec<StagedRow> = b.rows.iter().map(|r| staged_row(b, r, None)).collect();
                let (n, _) = stage_rows(tx, target(StagingReason::SchemaReview), &rows).await?;
                staged += n;
                staged_by.add(StagingReason::SchemaReview, n);
            }
            if !binds.mapped.is_empty() {
                // Row tables without a ts_column use the batch's UUIDv7 time: the device's
                // send time, and deterministic under redelivery (the ingest time is not).
                let values = mapped_values(b, &binds.mapped, batch_time, row_offset);
                insert_telemetry_values(tx, device.device_id, b.batch_id, &values).await?;
            }
            "materialized"
        }
        Err(reason) => {
            let rows: Vec<StagedRow> = b.rows.iter().map(|r| staged_row(b, r, None)).collect();
            let (n, _) = stage_rows(tx, target(reason), &rows).await?;
            staged = n;
            staged_by.add(reason, n);
            "staged"
        }
    };
    let chunk_status = if failed > 0 {
        ChunkStatus::Failed
    } else if status == "staged" {
        ChunkStatus::Staged
    } else {
        ChunkStatus::Materialized
    };
    snapshot_bookkeeping(tx, device, lineage.id, b, chunk_status).await?;
    let stale_epoch = stale_epoch_check(tx, device, lineage.id, b).await?;
    // Rows of the batch materialized unless it was staged or every row failed (an empty batch
    // on a materializing route counts: nothing of it is waiting).
    let rows_materialized =
        status == "materialized" && (b.rows.is_empty() || failed < count64(b.rows.len()));
    let received = Received {
        materialized_source_at: rows_materialized.then_some(batch_time),
    };
    advance_watermark(tx, lineage.id, b.journal_epoch, b.last_commit_seq, received).await?;
    Ok(Processed {
        lineage_id: Some(lineage.id),
        class: Some(c.class),
        staged_any: status == "staged",
        counts: (materialized, staged, failed),
        staged_by,
        stale_epoch,
    })
}

/// A snapshot chunk is recorded with what became of it; the end marker closes the run and
/// sweeps ghost rows when it is whole (edge-policies §5, `edge_cloud_store::snapshot_runs`).
async fn snapshot_bookkeeping(
    tx: &Transaction<'_>,
    device: &Device,
    lineage_id: Uuid,
    b: &RowBatch,
    chunk_status: ChunkStatus,
) -> Result<(), HandlerError> {
    let Some(f) = &b.snapshot else {
        return Ok(());
    };
    let key = RunKey {
        snapshot_id: f.snapshot_id,
        lineage_id,
        device_id: device.device_id,
        journal_epoch: b.journal_epoch,
        snapshot_start_seq: f.snapshot_start_seq,
    };
    let Some(end) = f.snapshot_end else {
        snapshot_runs::record_chunk(
            tx,
            &key,
            f.snapshot_chunk,
            b.batch_id,
            b.first_commit_seq,
            b.last_commit_seq,
            chunk_status,
        )
        .await?;
        return Ok(());
    };
    let outcome = snapshot_runs::finish(
        tx,
        &key,
        f.snapshot_chunk_count.unwrap_or(f.snapshot_chunk),
        f.snapshot_row_count.unwrap_or(0),
        end == SnapshotEnd::Complete,
    )
    .await?;
    tracing::info!(device = %device.device_name, table = %b.source_table,
        snapshot_id = %f.snapshot_id, outcome = ?outcome, "snapshot end marker");
    if let RunEnd::Swept { ghost_rows_deleted } = outcome {
        emit_event(
            tx,
            "integration.edge_table_lineage.snapshot_swept.v1",
            device,
            Some(lineage_id),
            serde_json::json!({"snapshot_id": f.snapshot_id, "ghost_rows_deleted": ghost_rows_deleted}),
        )
        .await?;
    }
    Ok(())
}

/// A batch of an epoch older than one already recorded for the lineage is accepted (the
/// version guard decides row by row) but never silently: recorded, and an event
/// (reliability.md §5). Whether it was recorded now (`edge_stale_journal_epochs_total`).
async fn stale_epoch_check(
    tx: &Transaction<'_>,
    device: &Device,
    lineage_id: Uuid,
    b: &RowBatch,
) -> Result<bool, HandlerError> {
    let Some(newest) = snapshot_runs::newer_epoch(tx, lineage_id, b.journal_epoch).await? else {
        return Ok(false);
    };
    if snapshot_runs::record_stale_epoch(tx, b.batch_id, lineage_id, b.journal_epoch, newest)
        .await?
    {
        tracing::warn!(device = %device.device_name, table = %b.source_table,
            journal_epoch = %b.journal_epoch, newest_epoch = %newest,
            "batch of a journal epoch older than the lineage's newest");
        emit_event(
            tx,
            "integration.edge_table_lineage.stale_epoch.v1",
            device,
            Some(lineage_id),
            serde_json::json!({"batch_id": b.batch_id, "source_table": b.source_table,
                "journal_epoch": b.journal_epoch, "newest_epoch": newest}),
        )
        .await?;
        return Ok(true);
    }
    Ok(false)
}

/// Writes the plan inside a savepoint. `Some(error text)` when PostgreSQL refused the statement
/// with a permanent error ([`permanent_write_error`]): the savepoint is rolled back and the
/// batch's transaction goes on. Transient errors are returned (the batch is redelivered).
async fn write_mirror(
    tx: &Transaction<'_>,
    table: &edge_cloud_core::mirror::MirrorTable,
    device_id: Uuid,
    plan: &edge_cloud_core::mirror::UpsertPlan,
) -> Result<Option<String>, StoreError> {
    if plan.is_empty() {
        return Ok(None);
    }
    tx.batch_execute("SAVEPOINT edge_mirror_write").await?;
    match apply_upserts(tx, table, device_id, plan).await {
        Ok(_) => Ok(None),
        Err(StoreError::Db(e)) if e.code().is_some_and(|c| permanent_write_error(c.code())) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT edge_mirror_write")
                .await?;
            let text = e.as_db_error().map_or_else(
                || e.to_string(),
                |d| format!("{}: {}", d.code().code(), d.message()),
            );
            Ok(Some(format!("mirror write refused: {text}")))
        }
        Err(other) => Err(other),
    }
}

fn staged_row(
    b: &RowBatch,
    r: &edge_protocol::batch::RowChange,
    error: Option<String>,
) -> StagedRow {
    let pk = row_to_json(&r.pk);
    let row = r.row.as_ref().map(row_to_json);
    let bytes = pk.to_string().len() + row.as_ref().map_or(0, |v| v.to_string().len());
    StagedRow {
        journal_epoch: b.journal_epoch,
        seq: r.commit_seq,
        pk_key: pk_key(&r.pk),
        stage_time: time_from_ms(epoch_time_ms(&b.journal_epoch)),
        op: match r.op {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        },
        pk: Some(pk),
        row,
        event_ts: None,
        error,
        bytes: count(bytes),
    }
}

fn mapped_values(
    b: &RowBatch,
    mapped: &[(String, Uuid)],
    ts: OffsetDateTime,
    row_offset: usize,
) -> Vec<TelemetryValue> {
    let mut out = Vec::new();
    for (i, r) in b.rows.iter().enumerate() {
        let i = row_offset + i;
        let Some(row) = &r.row else { continue };
        for (source, dp) in mapped {
            if let Some(v) = row.get(source).and_then(data_point_value) {
                out.push(TelemetryValue {
                    data_point_id: *dp,
                    ts,
                    row_index: count(i),
                    numeric: v.numeric,
                    text: v.text,
                    json: v.json,
                    row_id: None,
                });
            }
        }
    }
    out
}
