//! The batch ledger as intake writes it (cloud.md §2): one row per (device, batch_id) in
//! `edge_export_segments`, whose insert is the dedup. Every intake path — rejections, row
//! batches, telemetry batches, spill finalizes — starts its row from [`segment`] and sets only
//! what its payload carries.

use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::intake::{ledger_batch_id, ledger_time_ms};
use edge_cloud_store::ledger::{insert_segment, Segment};
use edge_cloud_store::registry::Device;
use edge_cloud_store::tokio_postgres::Transaction;
use edge_protocol::topic::TopicKind;
use edge_protocol::validate::Rejection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Outcome;
use crate::HandlerError;

/// The ledger row of envelope `a` for `batch_id`, before its payload's details: who sent it
/// (`device`, when registered; the nil id otherwise), when, how big, and status `accepted`.
/// Callers override the fields their payload carries with struct update syntax.
pub(super) fn segment(
    a: &Admitted,
    device: Option<&Device>,
    batch_id: Uuid,
    kind: &'static str,
) -> Segment {
    Segment {
        device_id: device.map_or_else(Uuid::nil, |d| d.device_id),
        batch_id,
        batch_time: batch_time(batch_id),
        raw_batch_id: None,
        received_at: time_from_ms(a.received_at_ms),
        device_name: device.map_or(a.device_name(), |d| d.device_name.as_str()).to_owned(),
        org_id: device.map(|d| d.org_id),
        project_id: device.map(|d| d.project_id),
        fleet_id: device.map(|d| d.fleet_id),
        lineage_id: None,
        source_table: None,
        kind,
        journal_epoch: None,
        first_seq: None,
        last_seq: None,
        schema_hash: None,
        row_count: 0,
        bytes: count64(a.payload.len()),
        status: "accepted",
        rejection_code: None,
        rejection_detail: None,
        stripped_tenant_fields: count(a.stripped_fields.len()),
    }
}

/// The ledger's partition time of a batch: its UUIDv7 time (cloud.md §2).
pub(super) fn batch_time(batch_id: Uuid) -> OffsetDateTime {
    time_from_ms(ledger_time_ms(&batch_id))
}

pub(super) fn time_from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Records a rejection in the ledger (once per ledger key) and reports it.
pub(super) async fn reject(
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
        raw_batch_id: raw_batch_id.filter(|s| Uuid::try_parse(s).is_err()),
        source_table: field("source_table"),
        journal_epoch: field("journal_epoch").and_then(|s| Uuid::try_parse(&s).ok()),
        schema_hash: field("schema_hash").filter(|s| s.len() <= 64),
        status: "rejected",
        rejection_code: Some(rejection.code.as_str().to_owned()),
        rejection_detail: Some(rejection.message.clone()),
        ..segment(a, device, batch_id, ledger_kind(a.topic.kind))
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

pub(super) fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(super) fn count64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
