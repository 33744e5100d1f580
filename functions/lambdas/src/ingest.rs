//! The ingest handler (cloud.md §1–§4, §6): one envelope in, one [`Outcome`] out.
//!
//! Every batch is one transaction: ledger insert (the dedup), lineage upsert (a row lock that
//! serializes the lineage), classification, then materialization or staging, the watermark and
//! the ledger outcome. A crash or a retry anywhere leaves either all of it or none of it, and
//! the redelivery then finds the ledger row and succeeds as a no-op.

use edge_cloud_core::classify::{classify, ClassifyPolicy, SchemaClass};
use edge_cloud_core::coalesce::RegistryScope;
use edge_cloud_core::ingress::{admit, Admitted, IngressEnvelope};
use edge_cloud_core::intake::{
    epoch_time_ms, ledger_batch_id, ledger_time_ms, pk_key, plan_intake, telemetry_stage_seq,
    BindingsOf, StagingReason,
};
use edge_cloud_core::mirror::plan_upserts;
use edge_cloud_core::telemetry::data_point_value;
use edge_cloud_store::backpressure::{check_after_intake, note_clean_batch};
use edge_cloud_store::coalesce::{self, open_registry_review};
use edge_cloud_store::ledger::{
    finish_segment, insert_segment, telemetry_seq_accepted, Segment, SegmentOutcome,
};
use edge_cloud_store::lineage::{
    advance_batch_seq, advance_watermark, bindings, emit_event, lock_lineage, open_review,
    pause_lineage, record_schema_version, schema_columns, upsert_lineage, Lineage,
};
use edge_cloud_store::mirror::{
    ack_control, apply_upserts, insert_telemetry_values, TelemetryValue,
};
use edge_cloud_store::policy::policy;
use edge_cloud_store::registry::{device_by_name, Device};
use edge_cloud_store::staging::{stage_rows, StageTarget, StagedRow};
use edge_cloud_store::tokio_postgres::Transaction;
use edge_cloud_store::StoreError;
use edge_protocol::batch::{Op, RowBatch};
use edge_protocol::ids::CommitPosition;
use edge_protocol::schema::SchemaObservation;
use edge_protocol::telemetry::TelemetryBatch;
use edge_protocol::topic::TopicKind;
use edge_protocol::validate::{
    check_telemetry_sequence, decode_device_payload, DevicePayload, Rejection, RejectionCode,
};
use edge_protocol::value::row_to_json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Deps, HandlerError};

/// What happened to an envelope. Every variant is a success for the transport: only
/// [`HandlerError`]s that [`HandlerError::is_retryable`] are redelivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A batch was accepted and is now durably materialized and/or staged.
    Accepted {
        lineage_id: Uuid,
        batch_id: Uuid,
        class: SchemaClass,
        materialized: i64,
        staged: i64,
        /// Rows staged as `materialization_failed`.
        failed: i64,
    },
    /// The (device, batch_id) was already in the ledger: nothing done.
    Duplicate { batch_id: Uuid },
    /// Recorded in the ledger with its code; never retried.
    Rejected {
        code: RejectionCode,
        message: String,
    },
    /// A control ack (`known` = it matched a pending control).
    ControlAcked { control_id: Uuid, known: bool },
    /// A schema observation was recorded.
    SchemaObserved { lineage_id: Uuid },
    /// Accepted but not acted on.
    Ignored { reason: String },
    /// A `url_request` was answered with a signed `url_grant` control (pending until acked).
    UploadGranted { batch_id: Uuid, control_id: Uuid },
    /// A `url_request` got no grant now (the code says why); the device asks again.
    UploadNotGranted {
        batch_id: Uuid,
        code: edge_cloud_core::spill::SpillCode,
    },
    /// A `finalize` whose object could not be processed; nothing of it was kept, the outcome
    /// is recorded on the upload, and a new `url_request` for the batch may try again.
    SpillFailed {
        batch_id: Uuid,
        code: edge_cloud_core::spill::SpillCode,
        message: String,
    },
    /// Failed ingress (bad topic, identity mismatch, bad base64): logged and dropped; there
    /// is no registered device to attribute it to.
    Dropped { reason: String },
}

/// Ingress then intake: the whole per-envelope pipeline.
pub async fn handle(deps: &Deps, envelope: IngressEnvelope) -> Result<Outcome, HandlerError> {
    match admit(&envelope) {
        Ok(admitted) => intake(deps, admitted).await,
        Err(e) => {
            tracing::warn!(topic = %envelope.topic, client_id = %envelope.client_id, error = %e,
                "envelope dropped at ingress");
            Ok(Outcome::Dropped {
                reason: e.to_string(),
            })
        }
    }
}

/// The worker: an admitted payload, in one transaction.
pub async fn intake(deps: &Deps, admitted: Admitted) -> Result<Outcome, HandlerError> {
    if admitted.topic.kind == TopicKind::IngestRequest {
        // Upload requests need the object store and (finalize) their own transactions.
        return crate::spill::intake_request(deps, &admitted).await;
    }
    let mut client = deps.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let outcome = intake_in(&tx, &admitted).await?;
    tx.commit().await.map_err(StoreError::from)?;
    log_outcome(&admitted, &outcome);
    Ok(outcome)
}

fn log_outcome(admitted: &Admitted, outcome: &Outcome) {
    let device = admitted.device_name();
    let topic = admitted.topic.kind.suffix();
    match outcome {
        Outcome::Rejected { code, message } => {
            tracing::warn!(device, topic, code = %code, message, "batch rejected");
        }
        other => tracing::info!(device, topic, outcome = ?other, "envelope handled"),
    }
}

pub(crate) fn time_from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

async fn intake_in(tx: &Transaction<'_>, a: &Admitted) -> Result<Outcome, HandlerError> {
    let Some(device) = device_by_name(tx, a.device_name()).await? else {
        return reject(tx, a, None, Rejection::unknown_device(a.device_name())).await;
    };
    match decode_device_payload(a.topic.kind, &a.payload) {
        Err(rejection) => reject(tx, a, Some(&device), rejection).await,
        Ok(DevicePayload::Rows(batch)) => intake_rows(tx, a, &device, batch).await,
        Ok(DevicePayload::Telemetry(batch)) => intake_telemetry(tx, a, &device, batch).await,
        Ok(DevicePayload::Schema(obs)) => observe_schema(tx, &device, obs).await,
        Ok(DevicePayload::Ack(ack)) => {
            let known = ack_control(tx, device.device_id, ack.control_id).await?;
            Ok(Outcome::ControlAcked {
                control_id: ack.control_id,
                known,
            })
        }
        // `intake` hands these to `spill::intake_request` before opening this transaction.
        Ok(DevicePayload::Request(req)) => Ok(Outcome::Ignored {
            reason: format!(
                "{} for {:?} outside the upload handler",
                req.request_kind.as_str(),
                req.source_table
            ),
        }),
    }
}

/// Records a rejection in the ledger (once per ledger key) and reports it.
pub(crate) async fn reject(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: Option<&Device>,
    rejection: Rejection,
) -> Result<Outcome, HandlerError> {
    // What can still be read from a payload that failed validation, for the ledger.
    let loose: Option<serde_json::Value> = serde_json::from_slice(&a.payload).ok();
    let field = |k: &str| {
        loose
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let raw_batch_id = field("batch_id");
    let batch_id = ledger_batch_id(raw_batch_id.as_deref(), &a.payload);
    let segment = Segment {
        device_id: device.map_or_else(Uuid::nil, |d| d.device_id),
        batch_id,
        batch_time: time_from_ms(ledger_time_ms(&batch_id)),
        raw_batch_id: raw_batch_id.filter(|s| Uuid::try_parse(s).is_err()),
        received_at: time_from_ms(a.received_at_ms),
        device_name: a.device_name().to_owned(),
        org_id: device.map(|d| d.org_id),
        project_id: device.map(|d| d.project_id),
        fleet_id: device.map(|d| d.fleet_id),
        lineage_id: None,
        source_table: field("source_table"),
        kind: ledger_kind(a.topic.kind),
        journal_epoch: field("journal_epoch").and_then(|s| Uuid::try_parse(&s).ok()),
        first_seq: None,
        last_seq: None,
        schema_hash: field("schema_hash").filter(|s| s.len() <= 64),
        row_count: 0,
        bytes: i64::try_from(a.payload.len()).unwrap_or(i64::MAX),
        status: "rejected",
        rejection_code: Some(rejection.code.as_str().to_owned()),
        rejection_detail: Some(rejection.message.clone()),
        stripped_tenant_fields: count(a.stripped_fields.len()),
    };
    insert_segment(tx, &segment).await?;
    Ok(Outcome::Rejected {
        code: rejection.code,
        message: rejection.message,
    })
}

fn ledger_kind(kind: TopicKind) -> &'static str {
    match kind {
        TopicKind::TelemetryBatch => "telemetry",
        TopicKind::IngestRequest => "spill",
        _ => "rows",
    }
}

pub(crate) fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) fn count64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Everything intake derives from the lineage before routing.
struct Classified {
    lineage: Lineage,
    class: SchemaClass,
    route: Result<BindingsOf, StagingReason>,
}

async fn classify_batch(
    tx: &Transaction<'_>,
    device: &Device,
    lineage: Lineage,
    schema_hash: &str,
    carried: Option<&edge_protocol::fingerprint::SchemaColumns>,
    bound: bool,
    registry: Option<RegistryScope>,
) -> Result<Classified, HandlerError> {
    let policy = policy(tx, device.project_id).await?;
    let approved = match &lineage.approved_schema_hash {
        Some(h) => schema_columns(tx, lineage.id, h).await?,
        None => None,
    };
    let new = match carried {
        Some(c) => Some(c.clone()),
        None => schema_columns(tx, lineage.id, schema_hash).await?,
    };
    let c = classify(
        approved.as_ref(),
        bound,
        new.as_ref(),
        ClassifyPolicy {
            allow_additive_continue: policy.allow_additive_continue,
        },
    );
    record_schema_version(tx, lineage.id, schema_hash, new.as_ref(), c.class, &c.diff).await?;
    let plan = plan_intake(c.disposition, lineage.is_active());
    if let (true, Some(scope)) = (plan.open_review, registry) {
        // Coalescing mode: one registry review per (scope, table, hash) instead of one per
        // device (cloud.md §9).
        open_registry_review(
            tx,
            (Uuid::now_v7(), Uuid::now_v7()),
            device,
            scope,
            lineage.id,
            &lineage.source_table,
            schema_hash,
            c.class,
            &c.diff,
        )
        .await?;
    } else if plan.open_review {
        open_review(
            tx,
            Uuid::now_v7(),
            device,
            lineage.id,
            schema_hash,
            c.class,
            &c.diff,
        )
        .await?;
    }
    if plan.pause_for_review {
        pause_lineage(tx, lineage.id, "schema_review").await?;
    }
    Ok(Classified {
        lineage,
        class: c.class,
        route: plan.route,
    })
}

async fn intake_rows(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: &Device,
    b: RowBatch,
) -> Result<Outcome, HandlerError> {
    let batch_time = time_from_ms(ledger_time_ms(&b.batch_id));
    let segment = Segment {
        device_id: device.device_id,
        batch_id: b.batch_id,
        batch_time,
        raw_batch_id: None,
        received_at: time_from_ms(a.received_at_ms),
        device_name: device.device_name.clone(),
        org_id: Some(device.org_id),
        project_id: Some(device.project_id),
        fleet_id: Some(device.fleet_id),
        lineage_id: None,
        source_table: Some(b.source_table.clone()),
        kind: "rows",
        journal_epoch: Some(b.journal_epoch),
        first_seq: Some(b.first_commit_seq),
        last_seq: Some(b.last_commit_seq),
        schema_hash: Some(b.schema_hash.clone()),
        row_count: count(b.rows.len()),
        bytes: count64(a.payload.len()),
        status: "accepted",
        rejection_code: None,
        rejection_detail: None,
        stripped_tenant_fields: count(a.stripped_fields.len()),
    };
    if !insert_segment(tx, &segment).await? {
        return Ok(Outcome::Duplicate {
            batch_id: b.batch_id,
        });
    }
    let p = rows_into_lineage(tx, device, &b, batch_time, 0).await?;
    accept_processed(tx, device.device_id, b.batch_id, batch_time, &p).await
}

/// What the rows of one batch (or one chunk of a spill object) came to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Processed {
    pub(crate) lineage_id: Option<Uuid>,
    pub(crate) class: Option<SchemaClass>,
    /// Some rows were staged (the batch's ledger status is then `staged`).
    pub(crate) staged_any: bool,
    /// (materialized, staged, failed) rows.
    pub(crate) counts: (i64, i64, i64),
}

impl Processed {
    /// Adds a later chunk of the same spill object.
    pub(crate) fn merge(&mut self, other: Processed) {
        self.lineage_id = other.lineage_id.or(self.lineage_id);
        self.class = other.class.or(self.class);
        self.staged_any |= other.staged_any;
        self.counts.0 += other.counts.0;
        self.counts.1 += other.counts.1;
        self.counts.2 += other.counts.2;
    }
}

/// The common end of a processed row batch or spill: [`accept`] with its totals.
pub(crate) async fn accept_processed(
    tx: &Transaction<'_>,
    device_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
    p: &Processed,
) -> Result<Outcome, HandlerError> {
    let (Some(lineage_id), Some(class)) = (p.lineage_id, p.class) else {
        return Err(StoreError::Corrupt(format!("batch {batch_id} accepted without rows")).into());
    };
    accept(
        tx,
        &Accepted {
            device_id,
            lineage_id,
            batch_id,
            batch_time,
            class,
            status: if p.staged_any {
                "staged"
            } else {
                "materialized"
            },
            counts: p.counts,
        },
    )
    .await
}

/// Row intake after the ledger (cloud.md §2 steps 3–5): lineage, classification, then
/// materialization or staging, and the watermark. Shared by row batches and the chunks of a
/// spill object (protocol §7), which are processed exactly like batches. `row_offset` is the
/// index of the chunk's first row in the whole object: mapped telemetry values are keyed by
/// (batch, row index), and every chunk of a spill shares the batch id.
pub(crate) async fn rows_into_lineage(
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
    let target = |reason| StageTarget {
        lineage_id: lineage.id,
        device_id: device.device_id,
        source_table: &b.source_table,
        batch_id: b.batch_id,
        schema_hash: &b.schema_hash,
        reason,
    };
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
                let plan = plan_upserts(
                    table,
                    b.rows
                        .iter()
                        .map(|r| (CommitPosition::new(b.journal_epoch, r.commit_seq), r)),
                );
                apply_upserts(tx, table, device.device_id, &plan).await?;
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
            "staged"
        }
    };
    advance_watermark(tx, lineage.id, b.journal_epoch, b.last_commit_seq).await?;
    Ok(Processed {
        lineage_id: Some(lineage.id),
        class: Some(c.class),
        staged_any: status == "staged",
        counts: (materialized, staged, failed),
    })
}

/// What an accepted row or telemetry batch came to.
struct Accepted {
    device_id: Uuid,
    lineage_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
    class: SchemaClass,
    status: &'static str,
    /// (materialized, staged, failed) rows.
    counts: (i64, i64, i64),
}

/// The common end of intake, in the batch's transaction: flow control (§7), the ledger row's
/// outcome, and the handler's answer.
async fn accept(tx: &Transaction<'_>, a: &Accepted) -> Result<Outcome, HandlerError> {
    let (materialized, staged, failed) = a.counts;
    flow_control(tx, a.lineage_id, staged, failed, a.status == "materialized").await?;
    finish_segment(
        tx,
        a.device_id,
        a.batch_id,
        a.batch_time,
        &SegmentOutcome {
            lineage_id: a.lineage_id,
            status: a.status,
            classification: a.class.as_str(),
            materialized_rows: count(usize::try_from(materialized).unwrap_or(0)),
            staged_rows: count(usize::try_from(staged).unwrap_or(0)),
        },
    )
    .await?;
    Ok(Outcome::Accepted {
        lineage_id: a.lineage_id,
        batch_id: a.batch_id,
        class: a.class,
        materialized,
        staged,
        failed,
    })
}

/// Backpressure and circuit breaker (cloud.md §7) after an accepted batch, in its transaction:
/// a clean materialized batch ends a failure streak; anything staged may cross a cap or trip
/// the breaker, which pauses the lineage and stores a signed `pause_lineage` control.
async fn flow_control(
    tx: &Transaction<'_>,
    lineage_id: Uuid,
    staged: i64,
    failed: i64,
    materialized: bool,
) -> Result<(), HandlerError> {
    if materialized && failed == 0 {
        note_clean_batch(tx, lineage_id).await?;
    }
    if staged > 0 || failed > 0 {
        let now = OffsetDateTime::now_utc();
        if let Some(reason) = check_after_intake(tx, lineage_id, now, Uuid::now_v7()).await? {
            tracing::warn!(%lineage_id, reason = reason.as_str(), "lineage paused; pause_lineage control issued");
        }
    }
    Ok(())
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

async fn intake_telemetry(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: &Device,
    b: TelemetryBatch,
) -> Result<Outcome, HandlerError> {
    let batch_time = time_from_ms(ledger_time_ms(&b.batch_id));
    let mut segment = Segment {
        device_id: device.device_id,
        batch_id: b.batch_id,
        batch_time,
        raw_batch_id: None,
        received_at: time_from_ms(a.received_at_ms),
        device_name: device.device_name.clone(),
        org_id: Some(device.org_id),
        project_id: Some(device.project_id),
        fleet_id: Some(device.fleet_id),
        lineage_id: None,
        source_table: Some(b.source_table.clone()),
        kind: "telemetry",
        journal_epoch: None,
        first_seq: Some(b.batch_seq),
        last_seq: Some(b.batch_seq),
        schema_hash: Some(b.schema_hash.clone()),
        row_count: count(b.rows.len()),
        bytes: count64(a.payload.len()),
        status: "accepted",
        rejection_code: None,
        rejection_detail: None,
        stripped_tenant_fields: count(a.stripped_fields.len()),
    };
    // The ledger's batch_id dedup comes first: a redelivery never reaches sequencing.
    let exists = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM edge_export_segments \
             WHERE device_id = $1 AND batch_id = $2 AND batch_time = $3)",
            &[&device.device_id, &b.batch_id, &batch_time],
        )
        .await
        .map_err(StoreError::from)?
        .get::<_, bool>(0);
    if exists {
        return Ok(Outcome::Duplicate {
            batch_id: b.batch_id,
        });
    }
    let lineage = upsert_lineage(
        tx,
        Uuid::now_v7(),
        device,
        &b.source_table,
        "telemetry",
        &b.schema_hash,
    )
    .await?;
    let seen = telemetry_seq_accepted(tx, lineage.id, b.batch_seq).await?;
    if let Err(rejection) = check_telemetry_sequence(
        lineage.last_batch_seq,
        lineage.last_batch_id,
        b.batch_seq,
        b.batch_id,
        seen,
    ) {
        segment.status = "rejected";
        segment.lineage_id = Some(lineage.id);
        segment.rejection_code = Some(rejection.code.as_str().to_owned());
        segment.rejection_detail = Some(rejection.message.clone());
        insert_segment(tx, &segment).await?;
        return Ok(Outcome::Rejected {
            code: rejection.code,
            message: rejection.message,
        });
    }
    segment.lineage_id = Some(lineage.id);
    if !insert_segment(tx, &segment).await? {
        return Ok(Outcome::Duplicate {
            batch_id: b.batch_id,
        });
    }
    advance_batch_seq(tx, lineage.id, b.batch_seq, b.batch_id).await?;
    let own = bindings(tx, lineage.id, &b.schema_hash).await?;
    let c = classify_batch(
        tx,
        device,
        lineage,
        &b.schema_hash,
        None,
        own.is_some(),
        None,
    )
    .await?;
    let lineage = &c.lineage;
    let mut times = Vec::with_capacity(b.rows.len());
    for r in &b.rows {
        // The decoder checked every ts is RFC 3339.
        times.push(edge_protocol::timestamp::parse(&r.ts).unwrap_or(batch_time));
    }
    let (status, materialized, staged) = match (c.route, own) {
        (Ok(_), Some(binds)) => {
            let mapped: std::collections::HashMap<&str, Uuid> =
                binds.mapped.iter().map(|(s, d)| (s.as_str(), *d)).collect();
            let mut values = Vec::new();
            for (i, (r, ts)) in b.rows.iter().zip(&times).enumerate() {
                for (name, v) in &r.fields {
                    if let (Some(dp), Some(val)) = (mapped.get(name.as_str()), data_point_value(v))
                    {
                        values.push(TelemetryValue {
                            data_point_id: *dp,
                            ts: *ts,
                            row_index: count(i),
                            numeric: val.numeric,
                            text: val.text,
                            json: val.json,
                            row_id: r.row_id.clone(),
                        });
                    }
                }
            }
            insert_telemetry_values(tx, device.device_id, b.batch_id, &values).await?;
            ("materialized", count64(b.rows.len()), 0)
        }
        (route, _) => {
            let reason = route.err().unwrap_or(StagingReason::LineagePaused);
            let rows: Vec<StagedRow> = b
                .rows
                .iter()
                .zip(&times)
                .enumerate()
                .map(|(i, (r, ts))| {
                    let fields = row_to_json(&r.fields);
                    let bytes = fields.to_string().len();
                    StagedRow {
                        journal_epoch: Uuid::nil(),
                        seq: telemetry_stage_seq(b.batch_seq, i),
                        pk_key: String::new(),
                        stage_time: *ts,
                        op: "telemetry",
                        pk: r
                            .row_id
                            .as_ref()
                            .map(|id| serde_json::json!({ "row_id": id })),
                        row: Some(fields),
                        event_ts: Some(*ts),
                        error: None,
                        bytes: count(bytes),
                    }
                })
                .collect();
            let target = StageTarget {
                lineage_id: lineage.id,
                device_id: device.device_id,
                source_table: &b.source_table,
                batch_id: b.batch_id,
                schema_hash: &b.schema_hash,
                reason,
            };
            let (n, _) = stage_rows(tx, target, &rows).await?;
            ("staged", 0, n)
        }
    };
    accept(
        tx,
        &Accepted {
            device_id: device.device_id,
            lineage_id: lineage.id,
            batch_id: b.batch_id,
            batch_time,
            class: c.class,
            status,
            counts: (materialized, staged, 0),
        },
    )
    .await
}

/// Schema observations (protocol §5) are advisory: record the hash (and its columns) for the
/// lineage, so a later batch without `schema_columns` can still be classified.
async fn observe_schema(
    tx: &Transaction<'_>,
    device: &Device,
    obs: SchemaObservation,
) -> Result<Outcome, HandlerError> {
    let lineage = upsert_lineage(
        tx,
        Uuid::now_v7(),
        device,
        &obs.source_table,
        "rows",
        &obs.schema_hash,
    )
    .await?;
    if let Some(cols) = &obs.schema_columns {
        let approved = match &lineage.approved_schema_hash {
            Some(h) => schema_columns(tx, lineage.id, h).await?,
            None => None,
        };
        let bound = bindings(tx, lineage.id, &obs.schema_hash).await?.is_some();
        let c = classify(
            approved.as_ref(),
            bound,
            Some(cols),
            ClassifyPolicy::default(),
        );
        record_schema_version(
            tx,
            lineage.id,
            &obs.schema_hash,
            Some(cols),
            c.class,
            &c.diff,
        )
        .await?;
    }
    Ok(Outcome::SchemaObserved {
        lineage_id: lineage.id,
    })
}
