//! Telemetry batches (cloud.md §6): the ledger's dedup first, then the lineage's batch
//! sequence (gaps and replays are rejected), classification, then data-point values or
//! staging, and last the lineage's newest batch with its sync health.

use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::intake::{telemetry_stage_seq, StagingReason};
use edge_cloud_core::telemetry::data_point_value;
use edge_cloud_store::ledger::{insert_segment, segment_recorded, telemetry_seq_accepted};
use edge_cloud_store::lineage::{advance_batch_seq, bindings, upsert_lineage, Received};
use edge_cloud_store::mirror::{insert_telemetry_values, TelemetryValue};
use edge_cloud_store::registry::Device;
use edge_cloud_store::staging::{stage_rows, StagedRow};
use edge_cloud_store::tokio_postgres::Transaction;
use edge_protocol::telemetry::TelemetryBatch;
use edge_protocol::validate::check_telemetry_sequence;
use edge_protocol::value::row_to_json;
use uuid::Uuid;

use super::ledger::{count, count64, segment, Carried};
use super::outcome::{accept, Accepted};
use super::schema::{classify_batch, stage_target};
use super::Outcome;
use crate::HandlerError;

pub(super) async fn intake_telemetry(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: &Device,
    b: TelemetryBatch,
) -> Result<Outcome, HandlerError> {
    let mut segment = segment(a, Some(device), Carried::Telemetry(&b));
    let batch_time = segment.batch_time;
    // The ledger's batch_id dedup comes first: a redelivery never reaches sequencing.
    let exists = segment_recorded(tx, device.device_id, b.batch_id, batch_time).await?;
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
    let mut staged_by = edge_cloud_core::metrics::StagedByReason::default();
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
            let target = stage_target(lineage.id, device, &b, reason);
            let (n, _) = stage_rows(tx, target, &rows).await?;
            staged_by.add(reason, n);
            ("staged", 0, n)
        }
    };
    // The batch's sequence and the lineage's health in one statement, now that it is known
    // whether its rows materialized: the source time of a telemetry batch is its cursor end.
    let received = Received {
        materialized_source_at: (status == "materialized")
            .then(|| edge_protocol::timestamp::parse(&b.cursor_end_ts).ok())
            .flatten(),
    };
    advance_batch_seq(tx, lineage.id, b.batch_seq, b.batch_id, received).await?;
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
            staged_by,
            stale_epoch: false,
        },
    )
    .await
}
