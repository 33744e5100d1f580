//! The batch ledger as intake writes it (cloud.md §2): one row per (device, batch_id) in
//! `edge_export_segments`, whose insert is the dedup. Every intake path — rejections, row
//! batches, telemetry batches, spill finalizes — builds its row with [`segment`], from the
//! envelope and what its payload carried ([`Carried`]).

use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::intake::{ledger_batch_id, ledger_time_ms};
use edge_cloud_core::metrics::BatchKind;
use edge_cloud_core::spill::Header;
use edge_cloud_store::ledger::{insert_segment, Segment};
use edge_cloud_store::registry::Device;
use edge_cloud_store::tokio_postgres::Transaction;
use edge_protocol::batch::RowBatch;
use edge_protocol::telemetry::TelemetryBatch;
use edge_protocol::topic::TopicKind;
use edge_protocol::validate::Rejection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Outcome;
use crate::HandlerError;

/// What an envelope's payload tells the ledger about its batch.
pub(super) enum Carried<'a> {
    Rows(&'a RowBatch),
    Telemetry(&'a TelemetryBatch),
    /// A finalize of an upload with this header (the object's size is noted once read).
    Spill {
        batch_id: Uuid,
        source_table: &'a str,
        header: &'a Header,
    },
    /// A payload that failed validation: what could still be read from it.
    Rejected {
        batch_id: Uuid,
        /// The payload's `batch_id` when it is not a UUID (kept for the operator).
        raw_batch_id: Option<String>,
        source_table: Option<String>,
        journal_epoch: Option<Uuid>,
        schema_hash: Option<String>,
        rejection: &'a Rejection,
    },
}

/// The ledger row of envelope `a`: who sent it (`device`, when registered; the nil id
/// otherwise), when, how big, and what its payload carried. Status `accepted` unless
/// `carried` is a rejection; the outcome is recorded later ([`super::outcome`]).
pub(super) fn segment(a: &Admitted, device: Option<&Device>, carried: Carried<'_>) -> Segment {
    let (batch_id, kind) = match &carried {
        Carried::Rows(b) => (b.batch_id, "rows"),
        Carried::Telemetry(b) => (b.batch_id, "telemetry"),
        Carried::Spill { batch_id, .. } => (*batch_id, "spill"),
        Carried::Rejected { batch_id, .. } => (*batch_id, ledger_kind(a.topic.kind)),
    };
    let mut s = Segment {
        device_id: device.map_or_else(Uuid::nil, |d| d.device_id),
        batch_id,
        batch_time: batch_time(batch_id),
        raw_batch_id: None,
        received_at: time_from_ms(a.received_at_ms),
        device_name: device
            .map_or(a.device_name(), |d| d.device_name.as_str())
            .to_owned(),
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
    };
    match carried {
        Carried::Rows(b) => {
            s.source_table = Some(b.source_table.clone());
            s.journal_epoch = Some(b.journal_epoch);
            (s.first_seq, s.last_seq) = (Some(b.first_commit_seq), Some(b.last_commit_seq));
            s.schema_hash = Some(b.schema_hash.clone());
            s.row_count = count(b.rows.len());
        }
        Carried::Telemetry(b) => {
            s.source_table = Some(b.source_table.clone());
            (s.first_seq, s.last_seq) = (Some(b.batch_seq), Some(b.batch_seq));
            s.schema_hash = Some(b.schema_hash.clone());
            s.row_count = count(b.rows.len());
        }
        Carried::Spill {
            source_table,
            header,
            ..
        } => {
            s.source_table = Some(source_table.to_owned());
            s.journal_epoch = Some(header.journal_epoch);
            s.schema_hash = Some(header.schema_hash.clone());
            // The envelope is only the finalize; `note_segment` records the object's bytes.
            s.bytes = 0;
        }
        Carried::Rejected {
            raw_batch_id,
            source_table,
            journal_epoch,
            schema_hash,
            rejection,
            ..
        } => {
            s.raw_batch_id = raw_batch_id;
            s.source_table = source_table;
            s.journal_epoch = journal_epoch;
            s.schema_hash = schema_hash;
            s.status = "rejected";
            s.rejection_code = Some(rejection.code.as_str().to_owned());
            s.rejection_detail = Some(rejection.message.clone());
        }
    }
    s
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
            // PostgreSQL text cannot hold NUL (an `invalid_identifier` table name has one):
            // the ledger keeps it visibly escaped.
            .map(|s| s.replace('\0', "\\0"))
    };
    let raw_batch_id = field("batch_id");
    let batch_id = ledger_batch_id(raw_batch_id.as_deref(), &a.payload);
    let carried = Carried::Rejected {
        batch_id,
        raw_batch_id: raw_batch_id.filter(|s| Uuid::try_parse(s).is_err()),
        source_table: field("source_table"),
        journal_epoch: field("journal_epoch").and_then(|s| Uuid::try_parse(&s).ok()),
        schema_hash: field("schema_hash").filter(|s| s.len() <= 64),
        rejection: &rejection,
    };
    let segment = segment(a, device, carried);
    insert_segment(tx, &segment).await?;
    Ok(Outcome::Rejected {
        code: rejection.code,
        message: rejection.message,
    })
}

/// The ledger's kind of a payload that failed validation: the metrics' `kind` label too.
fn ledger_kind(kind: TopicKind) -> &'static str {
    BatchKind::of_topic(kind).as_str()
}

pub(super) fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(super) fn count64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
