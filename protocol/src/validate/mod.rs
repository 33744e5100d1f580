//! Decoding device payloads, with a named rejection code for every bad input (spec §9), and the
//! telemetry sequencing decision (spec §4).
//!
//! The decoders take raw MQTT payload bytes and never panic. The *first* failing check decides
//! the code, so the order below is part of the contract (cloud tests and the segment ledger rely
//! on it).
//!
//! # Check order — every document
//!
//! 1. more than [`PROTOCOL_MAX_PAYLOAD_BYTES`](crate::limits::PROTOCOL_MAX_PAYLOAD_BYTES) bytes
//!    → `payload_too_large`
//! 2. not UTF-8 JSON, or not a JSON object → `malformed_json` (number literals from step 4 are
//!    replaced by `0` for this parse, so they alone do not make a document malformed)
//! 3. a top-level `device_id` / `org_id` / `project_id` / `fleet_id` → `envelope_unstripped_tenant_fields`
//!    (device payloads only; not for control envelopes, which come from the cloud)
//! 4. a number literal that is not representable — integer outside i64, float overflowing f64
//!    (`1e999`), bare `NaN` / `Infinity` / `-Infinity` — anywhere → `invalid_number_encoding`
//! 5. `format_version` missing, not an integer, or 0 → `invalid_format_version`; > 1 →
//!    `unsupported_format_version`
//!
//! Then, per document:
//!
//! **Row batch** ([`decode_row_batch`]):
//! 6. `capture_strategy` ≠ `sqlite_row_batch_v1` → `malformed_json` (wrong document for the topic)
//! 7. `batch_id` missing / not a hyphenated UUIDv7 → `invalid_batch_id`
//! 8. `rows` missing or not an array → `malformed_json`; more than 4096 → `batch_too_many_rows`
//! 9. `source_table` missing or empty → `malformed_json`; containing NUL → `invalid_identifier`
//! 10. `schema_hash` not 64 lowercase hex → `invalid_schema_hash`; `schema_columns` present but
//!     not a fingerprint → `invalid_schema_hash`; its table or a column name containing NUL →
//!     `invalid_identifier`; for another table, or hashing to something else →
//!     `invalid_schema_hash`
//! 11. `journal_epoch` not a UUIDv7, `first_commit_seq` / `last_commit_seq` not i64 → `malformed_json`
//! 12. each row in order: a key of its `pk` or `row` object containing NUL →
//!     `invalid_identifier`; not an object, `commit_seq` not i64, `op` not insert/update/delete,
//!     `pk` not a non-empty object, `row` not null on delete, `row` not an object on
//!     insert/update, a pk column missing from `row` or different there → `invalid_row`; a value
//!     that is a bad `$real` marker or an integer outside i64 → `invalid_number_encoding`; any
//!     other bad value (unknown `$` object, bad base64, array, boolean) → `invalid_row`
//! 13. no rows; `commit_seq` not strictly increasing (which also excludes duplicates);
//!     `first_commit_seq` ≠ first (= min) or `last_commit_seq` ≠ last (= max) → `invalid_row`
//!
//! **Telemetry batch** ([`decode_telemetry_batch`]):
//! 6. `capture_strategy` ≠ `sqlite_telemetry_batch_v1` → `malformed_json`
//! 7. `batch_id` → `invalid_batch_id`
//! 8. `rows` missing / not an array → `malformed_json`; more than 4096 → `batch_too_many_rows`
//! 9. `source_table` missing or empty → `malformed_json`
//! 10. `schema_hash` not 64 lowercase hex → `invalid_schema_hash`
//! 11. `batch_seq` not i64, cursors not strings, `row_count` not a non-negative integer → `malformed_json`
//! 12. `row_count` ≠ number of rows → `row_count_mismatch`
//! 13. no rows; a row not an object, `ts` not an RFC 3339 string, `fields` not an object → `invalid_row`;
//!     a key of `fields` containing NUL → `invalid_identifier`
//! 14. `cursor_start_ts` / `cursor_end_ts` not RFC 3339 or not the same instant as the
//!     earliest / latest row `ts` → `cursor_timestamp_mismatch`
//! 15. a `row_id` present (non-null) that is not a string matching
//!     [`crate::telemetry::is_valid_row_id`] (1–128 chars of `[A-Za-z0-9._:-]`) → `invalid_row_id`
//! 16. field values as in row batch step 12 → `invalid_number_encoding` / `invalid_row`
//!
//! **Schema observation** ([`decode_schema_observation`]): `source_table` missing/empty →
//! `malformed_json`; `schema_hash` / `schema_columns` as row batch step 10 → `invalid_schema_hash`;
//! `observed_at` not RFC 3339 → `malformed_json`.
//!
//! **Ingest ack** ([`decode_ingest_ack`]): `control_id` not a hyphenated UUID → `malformed_json`.
//!
//! **Ingest request** ([`decode_ingest_request`]): `batch_id` → `invalid_batch_id`; then
//! `request_kind`, `source_table`, `segment_kind` missing/unknown → `malformed_json`; the
//! optional `journal_epoch` not a UUIDv7 → `malformed_json`, `schema_hash` not 64 lowercase hex
//! → `invalid_schema_hash`.
//!
//! **Spill object line** ([`decode_spill_line`]): not JSON or not a valid row → `invalid_row`
//! (`invalid_number_encoding` for bad numbers), the message naming the line.
//!
//! **Control envelope** ([`decode_control_envelope`], used by the device): steps 1, 2, 4; then
//! `control_id` / `control_kind` / the kind's required fields (pause & resume: `source_table`,
//! `server_watermark`; url_grant: `presigned_url`, `presigned_url_expires_at`) / optional field
//! types / RFC 3339 times → `malformed_json`; `batch_id` present but not UUIDv7 → `invalid_batch_id`.
//! Signatures are checked separately by [`crate::control::verify`].
//!
//! NUL in an identifier (`source_table`, a column name, a key of a row object) is
//! `invalid_identifier` wherever it appears (reliability.md §7): no PostgreSQL identifier holds
//! it. NUL in a text *value* is fine (it stages; see the cloud's staged-value encoding).
//!
//! Unknown keys are ignored (forward compatibility), except the forbidden tenant fields.
//!
//! `duplicate_batch_seq` and `stale_batch_seq` need the cloud's ledger: see
//! [`check_telemetry_sequence`]. `unknown_device` needs the registry: see
//! [`Rejection::unknown_device`].
//!
//! # Layout
//!
//! - `rejection` — the §9 codes, [`Rejection`] and the constructors every check shares.
//! - `envelope` — steps 1–5 and the envelope fields several documents carry.
//! - `number_scan` — finds unrepresentable number literals before `serde_json` parses (step 4).
//! - `schema` — `schema_hash` / `schema_columns` checks and the schema observation.
//! - `rows` — row batches and spill / snapshot lines.
//! - `telemetry` — telemetry batches.
//! - `control` — acks, upload requests and control envelopes.
//! - `sequence` — the telemetry sequencing decision.

mod control;
mod envelope;
mod number_scan;
mod rejection;
mod rows;
mod schema;
mod sequence;
mod telemetry;

pub use control::{
    decode_control_envelope, decode_device_unknown, decode_hello, decode_ingest_ack,
    decode_ingest_request, request_kind_of,
};
pub use rejection::{Rejection, RejectionCode, UnknownRejectionCode};
pub use rows::{decode_row_batch, decode_spill_line};
pub use schema::decode_schema_observation;
pub use sequence::{check_telemetry_sequence, classify_telemetry_sequence, TelemetrySequence};
pub use telemetry::decode_telemetry_batch;

use rejection::malformed;

use crate::batch::RowBatch;
use crate::control::{IngestAck, IngestRequest};
use crate::schema::SchemaObservation;
use crate::telemetry::TelemetryBatch;
use crate::topic::TopicKind;

/// Any device → cloud payload, decoded according to the topic it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePayload {
    Rows(RowBatch),
    Telemetry(TelemetryBatch),
    Schema(SchemaObservation),
    Ack(IngestAck),
    Request(IngestRequest),
}

/// Decodes `bytes` as the document `kind` carries. `sync/ingest/control` is not a device topic:
/// a payload on it is `malformed_json` here (the broker ACL should have refused it).
pub fn decode_device_payload(kind: TopicKind, bytes: &[u8]) -> Result<DevicePayload, Rejection> {
    match kind {
        TopicKind::RowsBatch => decode_row_batch(bytes).map(DevicePayload::Rows),
        TopicKind::TelemetryBatch => decode_telemetry_batch(bytes).map(DevicePayload::Telemetry),
        TopicKind::SchemaObserve => decode_schema_observation(bytes).map(DevicePayload::Schema),
        TopicKind::IngestAck => decode_ingest_ack(bytes).map(DevicePayload::Ack),
        TopicKind::IngestRequest => decode_ingest_request(bytes).map(DevicePayload::Request),
        TopicKind::IngestControl => Err(malformed(
            "sync/ingest/control carries cloud → device controls, not device payloads",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_uuid_v7;

    #[test]
    fn ingest_request_optional_header_and_spill_lines() {
        let batch = new_uuid_v7(1_777_366_800_000, [4; 10]);
        let epoch = new_uuid_v7(1_777_366_000_000, [5; 10]);
        let base = format!(
            r#""format_version":1,"request_kind":"finalize","source_table":"t","segment_kind":"payload_spill","batch_id":"{batch}""#
        );
        let plain = decode_ingest_request(format!("{{{base}}}").as_bytes()).unwrap();
        assert_eq!((plain.journal_epoch, plain.schema_hash), (None, None));
        let hash = "a".repeat(64);
        let full = decode_ingest_request(
            format!(r#"{{{base},"journal_epoch":"{epoch}","schema_hash":"{hash}"}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(full.journal_epoch, Some(epoch));
        assert_eq!(full.schema_hash.as_deref(), Some(hash.as_str()));
        let bad_epoch =
            decode_ingest_request(format!(r#"{{{base},"journal_epoch":"x"}}"#).as_bytes());
        assert_eq!(bad_epoch.unwrap_err().code, RejectionCode::MalformedJson);
        let bad_hash =
            decode_ingest_request(format!(r#"{{{base},"schema_hash":"ABC"}}"#).as_bytes());
        assert_eq!(bad_hash.unwrap_err().code, RejectionCode::InvalidSchemaHash);

        let row = decode_spill_line(
            1,
            br#"{"commit_seq":7,"op":"insert","pk":{"id":1},"row":{"id":1,"v":"x"}}"#,
        )
        .unwrap();
        assert_eq!(row.commit_seq, 7);
        let not_json = decode_spill_line(3, b"{\"commit_seq\":").unwrap_err();
        assert_eq!(not_json.code, RejectionCode::InvalidRow);
        assert!(
            not_json.message.starts_with("line 3:"),
            "{}",
            not_json.message
        );
        let delete_with_row = decode_spill_line(
            2,
            br#"{"commit_seq":7,"op":"delete","pk":{"id":1},"row":{"id":1}}"#,
        )
        .unwrap_err();
        assert_eq!(delete_with_row.code, RejectionCode::InvalidRow);
        assert!(delete_with_row.message.starts_with("line 2:"));
    }
}
