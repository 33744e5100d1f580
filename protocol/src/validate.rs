//! Decoding device payloads, with a named rejection code for every bad input (spec §9), and the
//! telemetry sequencing decision (spec §4).
//!
//! The decoders take raw MQTT payload bytes and never panic. The *first* failing check decides
//! the code, so the order below is part of the contract (cloud tests and the segment ledger rely
//! on it).
//!
//! # Check order — every document
//!
//! 1. more than [`PROTOCOL_MAX_PAYLOAD_BYTES`] bytes → `payload_too_large`
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
//! 9. `source_table` missing or empty → `malformed_json`
//! 10. `schema_hash` not 64 lowercase hex → `invalid_schema_hash`; `schema_columns` present but
//!     not a fingerprint, for another table, or hashing to something else → `invalid_schema_hash`
//! 11. `journal_epoch` not a UUIDv7, `first_commit_seq` / `last_commit_seq` not i64 → `malformed_json`
//! 12. each row in order: not an object, `commit_seq` not i64, `op` not insert/update/delete,
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
//! 13. no rows; a row not an object, `ts` not an RFC 3339 string, `fields` not an object → `invalid_row`
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
//! Unknown keys are ignored (forward compatibility), except the forbidden tenant fields.
//!
//! `duplicate_batch_seq` and `stale_batch_seq` need the cloud's ledger: see
//! [`check_telemetry_sequence`]. `unknown_device` needs the registry: see
//! [`Rejection::unknown_device`].

mod number_scan;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::batch::{Op, RowBatch, RowChange, ROW_BATCH_STRATEGY};
use crate::control::{
    ControlEnvelope, ControlKind, IngestAck, IngestRequest, RequestKind, SegmentKind,
};
use crate::fingerprint::{is_schema_hash, Affinity, ColumnFingerprint, SchemaColumns};
use crate::ids::{parse_uuid_hyphenated, parse_uuid_v7};
use crate::limits::{FORMAT_VERSION, MAX_ROWS_PER_BATCH, PROTOCOL_MAX_PAYLOAD_BYTES};
use crate::schema::SchemaObservation;
use crate::telemetry::{is_valid_row_id, TelemetryBatch, TelemetryRow, TELEMETRY_BATCH_STRATEGY};
use crate::tenant::FORBIDDEN_TENANT_FIELDS;
use crate::timestamp;
use crate::topic::TopicKind;
use crate::value::{row_from_json, Row, ValueError};

/// Batch-level rejection codes (spec §9). Serialized as the snake_case code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    EnvelopeUnstrippedTenantFields,
    InvalidFormatVersion,
    UnsupportedFormatVersion,
    InvalidBatchId,
    BatchTooManyRows,
    RowCountMismatch,
    CursorTimestampMismatch,
    InvalidRowId,
    InvalidNumberEncoding,
    DuplicateBatchSeq,
    StaleBatchSeq,
    MalformedJson,
    PayloadTooLarge,
    InvalidSchemaHash,
    InvalidRow,
    UnknownDevice,
}

impl RejectionCode {
    /// Every code, in spec order.
    pub const ALL: [RejectionCode; 16] = [
        RejectionCode::EnvelopeUnstrippedTenantFields,
        RejectionCode::InvalidFormatVersion,
        RejectionCode::UnsupportedFormatVersion,
        RejectionCode::InvalidBatchId,
        RejectionCode::BatchTooManyRows,
        RejectionCode::RowCountMismatch,
        RejectionCode::CursorTimestampMismatch,
        RejectionCode::InvalidRowId,
        RejectionCode::InvalidNumberEncoding,
        RejectionCode::DuplicateBatchSeq,
        RejectionCode::StaleBatchSeq,
        RejectionCode::MalformedJson,
        RejectionCode::PayloadTooLarge,
        RejectionCode::InvalidSchemaHash,
        RejectionCode::InvalidRow,
        RejectionCode::UnknownDevice,
    ];

    /// The exact code string of spec §9.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectionCode::EnvelopeUnstrippedTenantFields => "envelope_unstripped_tenant_fields",
            RejectionCode::InvalidFormatVersion => "invalid_format_version",
            RejectionCode::UnsupportedFormatVersion => "unsupported_format_version",
            RejectionCode::InvalidBatchId => "invalid_batch_id",
            RejectionCode::BatchTooManyRows => "batch_too_many_rows",
            RejectionCode::RowCountMismatch => "row_count_mismatch",
            RejectionCode::CursorTimestampMismatch => "cursor_timestamp_mismatch",
            RejectionCode::InvalidRowId => "invalid_row_id",
            RejectionCode::InvalidNumberEncoding => "invalid_number_encoding",
            RejectionCode::DuplicateBatchSeq => "duplicate_batch_seq",
            RejectionCode::StaleBatchSeq => "stale_batch_seq",
            RejectionCode::MalformedJson => "malformed_json",
            RejectionCode::PayloadTooLarge => "payload_too_large",
            RejectionCode::InvalidSchemaHash => "invalid_schema_hash",
            RejectionCode::InvalidRow => "invalid_row",
            RejectionCode::UnknownDevice => "unknown_device",
        }
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the §9 codes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown rejection code {0:?}")]
pub struct UnknownRejectionCode(pub String);

impl FromStr for RejectionCode {
    type Err = UnknownRejectionCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectionCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownRejectionCode(s.to_owned()))
    }
}

/// Why a payload was rejected: the code goes to the segment ledger, the message to logs.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: RejectionCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// The session identity has no device-registry entry (decided by the cloud, not by payload).
    pub fn unknown_device(device_name: &str) -> Self {
        Rejection::new(
            RejectionCode::UnknownDevice,
            format!("no registry entry for device {device_name:?}"),
        )
    }
}

fn reject(code: RejectionCode, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

fn malformed(message: impl Into<String>) -> Rejection {
    reject(RejectionCode::MalformedJson, message)
}

// ---------------------------------------------------------------------------------------------
// Steps 1–5, shared by every document.

/// Whether the tenant-field check (step 3) applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Device,
    Cloud,
}

fn parse_object(bytes: &[u8], origin: Origin) -> Result<Map<String, Value>, Rejection> {
    if bytes.len() > PROTOCOL_MAX_PAYLOAD_BYTES {
        return Err(reject(
            RejectionCode::PayloadTooLarge,
            format!(
                "{} bytes exceeds the {PROTOCOL_MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            ),
        ));
    }
    let bad_numbers = number_scan::find_bad_numbers(bytes);
    let parsed = if bad_numbers.is_empty() {
        serde_json::from_slice::<Value>(bytes)
    } else {
        serde_json::from_slice::<Value>(&number_scan::replace_with_zero(bytes, &bad_numbers))
    };
    let map = match parsed {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(malformed("payload is not a JSON object")),
        Err(e) => return Err(malformed(format!("not JSON: {e}"))),
    };
    if origin == Origin::Device {
        let present: Vec<&str> = FORBIDDEN_TENANT_FIELDS
            .into_iter()
            .filter(|key| map.contains_key(*key))
            .collect();
        if !present.is_empty() {
            return Err(reject(
                RejectionCode::EnvelopeUnstrippedTenantFields,
                format!("tenant fields reached the worker: {}", present.join(", ")),
            ));
        }
    }
    if let Some(first) = bad_numbers.first() {
        return Err(reject(
            RejectionCode::InvalidNumberEncoding,
            format!(
                "number literal {} is not representable (integers must fit i64, floats must be finite)",
                first.text
            ),
        ));
    }
    Ok(map)
}

fn check_format_version(map: &Map<String, Value>) -> Result<u32, Rejection> {
    let invalid = |what: String| reject(RejectionCode::InvalidFormatVersion, what);
    let n = match map.get("format_version") {
        None => return Err(invalid("format_version is missing".into())),
        Some(Value::Number(n)) => n,
        Some(other) => return Err(invalid(format!("format_version {other} is not an integer"))),
    };
    match n.as_u64() {
        Some(0) => Err(invalid("format_version is 0".into())),
        Some(v) if v == u64::from(FORMAT_VERSION) => Ok(FORMAT_VERSION),
        Some(v) => Err(reject(
            RejectionCode::UnsupportedFormatVersion,
            format!("format_version {v} is newer than {FORMAT_VERSION}"),
        )),
        None => Err(invalid(format!(
            "format_version {n} is not a positive integer"
        ))),
    }
}

fn check_strategy(map: &Map<String, Value>, expected: &str) -> Result<String, Rejection> {
    match map.get("capture_strategy").and_then(Value::as_str) {
        Some(s) if s == expected => Ok(s.to_owned()),
        Some(s) => Err(malformed(format!(
            "capture_strategy {s:?} is not {expected:?}"
        ))),
        None => Err(malformed("capture_strategy is missing or not a string")),
    }
}

fn check_batch_id(map: &Map<String, Value>) -> Result<Uuid, Rejection> {
    match map.get("batch_id") {
        Some(Value::String(s)) => parse_uuid_v7(s).ok_or_else(|| {
            reject(
                RejectionCode::InvalidBatchId,
                format!("batch_id {s:?} is not a hyphenated UUIDv7"),
            )
        }),
        Some(other) => Err(reject(
            RejectionCode::InvalidBatchId,
            format!("batch_id {other} is not a string"),
        )),
        None => Err(reject(RejectionCode::InvalidBatchId, "batch_id is missing")),
    }
}

fn rows_array(map: &Map<String, Value>) -> Result<&Vec<Value>, Rejection> {
    let rows = map
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("rows is missing or not an array"))?;
    if rows.len() > MAX_ROWS_PER_BATCH {
        return Err(reject(
            RejectionCode::BatchTooManyRows,
            format!(
                "{} rows exceeds the {MAX_ROWS_PER_BATCH}-row limit",
                rows.len()
            ),
        ));
    }
    Ok(rows)
}

fn source_table(map: &Map<String, Value>) -> Result<String, Rejection> {
    match map.get("source_table").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(malformed("source_table is missing, empty or not a string")),
    }
}

fn check_schema_hash(map: &Map<String, Value>) -> Result<String, Rejection> {
    match map.get("schema_hash").and_then(Value::as_str) {
        Some(s) if is_schema_hash(s) => Ok(s.to_owned()),
        Some(s) => Err(reject(
            RejectionCode::InvalidSchemaHash,
            format!("schema_hash {s:?} is not 64 lowercase hex digits"),
        )),
        None => Err(reject(
            RejectionCode::InvalidSchemaHash,
            "schema_hash is missing or not a string",
        )),
    }
}

fn schema_columns(
    map: &Map<String, Value>,
    source_table: &str,
    schema_hash: &str,
) -> Result<Option<SchemaColumns>, Rejection> {
    let raw = match map.get("schema_columns") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let invalid = |msg: String| reject(RejectionCode::InvalidSchemaHash, msg);
    let fp = fingerprint_from_json(raw).map_err(|e| invalid(format!("schema_columns: {e}")))?;
    if fp.table_name != source_table {
        return Err(invalid(format!(
            "schema_columns describes {:?}, not {source_table:?}",
            fp.table_name
        )));
    }
    let computed = fp.schema_hash();
    if computed != schema_hash {
        return Err(invalid(format!(
            "schema_columns hashes to {computed}, not {schema_hash}"
        )));
    }
    Ok(Some(fp))
}

fn fingerprint_from_json(v: &Value) -> Result<SchemaColumns, String> {
    let obj = v.as_object().ok_or("not an object")?;
    let table_name = obj
        .get("table_name")
        .and_then(Value::as_str)
        .ok_or("table_name missing or not a string")?;
    let raw_columns = obj
        .get("columns")
        .and_then(Value::as_array)
        .ok_or("columns missing or not an array")?;
    let mut columns = Vec::with_capacity(raw_columns.len());
    for (i, c) in raw_columns.iter().enumerate() {
        let c = c
            .as_object()
            .ok_or_else(|| format!("columns[{i}] is not an object"))?;
        let field = |key: &str| {
            c.get(key)
                .ok_or_else(|| format!("columns[{i}].{key} missing"))
        };
        let name = field("name")?
            .as_str()
            .ok_or_else(|| format!("columns[{i}].name is not a string"))?;
        let affinity = field("decl_type_affinity")?
            .as_str()
            .and_then(Affinity::from_wire)
            .ok_or_else(|| format!("columns[{i}].decl_type_affinity is not an affinity"))?;
        let pk_ordinal = field("pk_ordinal")?
            .as_i64()
            .ok_or_else(|| format!("columns[{i}].pk_ordinal is not an integer"))?;
        let not_null = field("not_null")?
            .as_bool()
            .ok_or_else(|| format!("columns[{i}].not_null is not a boolean"))?;
        columns.push(ColumnFingerprint {
            name: name.to_owned(),
            decl_type_affinity: affinity,
            pk_ordinal,
            not_null,
        });
    }
    Ok(SchemaColumns::new(table_name, columns))
}

fn req_i64(map: &Map<String, Value>, key: &str) -> Result<i64, Rejection> {
    map.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed(format!("{key} is missing or not an integer")))
}

fn req_string(map: &Map<String, Value>, key: &str) -> Result<String, Rejection> {
    map.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed(format!("{key} is missing or not a string")))
}

fn value_rejection(at: String, e: ValueError) -> Rejection {
    let code = if e.is_number_encoding() {
        RejectionCode::InvalidNumberEncoding
    } else {
        RejectionCode::InvalidRow
    };
    reject(code, format!("{at}: {e}"))
}

fn invalid_row(message: impl Into<String>) -> Rejection {
    reject(RejectionCode::InvalidRow, message)
}

// ---------------------------------------------------------------------------------------------
// Row batch.

/// Decodes and validates a row batch (spec §3); see the module docs for the check order.
pub fn decode_row_batch(bytes: &[u8]) -> Result<RowBatch, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let capture_strategy = check_strategy(&map, ROW_BATCH_STRATEGY)?;
    let batch_id = check_batch_id(&map)?;
    let raw_rows = rows_array(&map)?;
    let source_table = source_table(&map)?;
    let schema_hash = check_schema_hash(&map)?;
    let schema_columns = schema_columns(&map, &source_table, &schema_hash)?;
    let journal_epoch = map
        .get("journal_epoch")
        .and_then(Value::as_str)
        .and_then(parse_uuid_v7)
        .ok_or_else(|| malformed("journal_epoch is missing or not a hyphenated UUIDv7"))?;
    let first_commit_seq = req_i64(&map, "first_commit_seq")?;
    let last_commit_seq = req_i64(&map, "last_commit_seq")?;

    let mut rows = Vec::with_capacity(raw_rows.len());
    for (i, raw) in raw_rows.iter().enumerate() {
        rows.push(row_change(i, raw)?);
    }

    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(invalid_row("a row batch carries at least one row"));
    };
    if let Some(i) = (1..rows.len()).find(|&i| rows[i].commit_seq <= rows[i - 1].commit_seq) {
        return Err(invalid_row(format!(
            "rows[{i}].commit_seq {} does not follow {} (must strictly increase)",
            rows[i].commit_seq,
            rows[i - 1].commit_seq
        )));
    }
    if first.commit_seq != first_commit_seq || last.commit_seq != last_commit_seq {
        return Err(invalid_row(format!(
            "first/last_commit_seq {first_commit_seq}/{last_commit_seq} are not the rows' min/max {}/{}",
            first.commit_seq, last.commit_seq
        )));
    }

    Ok(RowBatch {
        format_version,
        capture_strategy,
        batch_id,
        journal_epoch,
        source_table,
        schema_hash,
        schema_columns,
        first_commit_seq,
        last_commit_seq,
        rows,
    })
}

fn row_change(i: usize, raw: &Value) -> Result<RowChange, Rejection> {
    let obj = raw
        .as_object()
        .ok_or_else(|| invalid_row(format!("rows[{i}] is not an object")))?;
    let commit_seq = obj
        .get("commit_seq")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid_row(format!("rows[{i}].commit_seq is missing or not an integer")))?;
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .and_then(Op::from_wire)
        .ok_or_else(|| invalid_row(format!("rows[{i}].op is not insert, update or delete")))?;
    let pk = match obj.get("pk") {
        Some(v @ Value::Object(m)) if !m.is_empty() => {
            row_from_json(v).map_err(|e| value_rejection(format!("rows[{i}].pk"), e))?
        }
        _ => {
            return Err(invalid_row(format!(
                "rows[{i}].pk is missing or not a non-empty object"
            )))
        }
    };
    let row = match (op, obj.get("row")) {
        (Op::Delete, None | Some(Value::Null)) => None,
        (Op::Delete, Some(_)) => {
            return Err(invalid_row(format!("rows[{i}]: delete carries a row")))
        }
        (_, Some(v @ Value::Object(_))) => {
            Some(row_from_json(v).map_err(|e| value_rejection(format!("rows[{i}].row"), e))?)
        }
        (_, _) => {
            return Err(invalid_row(format!(
                "rows[{i}]: {op} needs the full row as an object"
            )))
        }
    };
    if let Some(row) = &row {
        check_pk_in_row(i, &pk, row)?;
    }
    Ok(RowChange {
        commit_seq,
        op,
        pk,
        row,
    })
}

fn check_pk_in_row(i: usize, pk: &Row, row: &Row) -> Result<(), Rejection> {
    for (column, value) in pk {
        match row.get(column) {
            Some(v) if v == value => {}
            Some(v) => {
                return Err(invalid_row(format!(
                    "rows[{i}]: pk column {column:?} is {value} but row has {v}"
                )))
            }
            None => {
                return Err(invalid_row(format!(
                    "rows[{i}]: pk column {column:?} is not in row"
                )))
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Telemetry batch.

/// Decodes and validates a telemetry batch (spec §4); see the module docs for the check order.
/// Sequencing against earlier batches is [`check_telemetry_sequence`].
pub fn decode_telemetry_batch(bytes: &[u8]) -> Result<TelemetryBatch, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let capture_strategy = check_strategy(&map, TELEMETRY_BATCH_STRATEGY)?;
    let batch_id = check_batch_id(&map)?;
    let raw_rows = rows_array(&map)?;
    let source_table = source_table(&map)?;
    let schema_hash = check_schema_hash(&map)?;
    let batch_seq = req_i64(&map, "batch_seq")?;
    let cursor_start_ts = req_string(&map, "cursor_start_ts")?;
    let cursor_end_ts = req_string(&map, "cursor_end_ts")?;
    let row_count = map
        .get("row_count")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| malformed("row_count is missing or not a non-negative integer"))?;
    if row_count != raw_rows.len() {
        return Err(reject(
            RejectionCode::RowCountMismatch,
            format!("row_count {row_count} but {} rows", raw_rows.len()),
        ));
    }
    if raw_rows.is_empty() {
        return Err(invalid_row("a telemetry batch carries at least one row"));
    }

    // Structure and timestamps first: the cursors are checked against them.
    let mut shaped = Vec::with_capacity(raw_rows.len());
    for (i, raw) in raw_rows.iter().enumerate() {
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid_row(format!("rows[{i}] is not an object")))?;
        let ts = obj
            .get("ts")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_row(format!("rows[{i}].ts is missing or not a string")))?;
        let instant =
            timestamp::parse(ts).map_err(|e| invalid_row(format!("rows[{i}].ts: {e}")))?;
        let fields = obj
            .get("fields")
            .filter(|f| f.is_object())
            .ok_or_else(|| invalid_row(format!("rows[{i}].fields is missing or not an object")))?;
        shaped.push((obj, ts, instant, fields));
    }

    let earliest = shaped.iter().map(|r| r.2).min();
    let latest = shaped.iter().map(|r| r.2).max();
    for (name, text, expected) in [
        ("cursor_start_ts", &cursor_start_ts, earliest),
        ("cursor_end_ts", &cursor_end_ts, latest),
    ] {
        let cursor = timestamp::parse(text).map_err(|e| {
            reject(
                RejectionCode::CursorTimestampMismatch,
                format!("{name}: {e}"),
            )
        })?;
        if Some(cursor) != expected {
            return Err(reject(
                RejectionCode::CursorTimestampMismatch,
                format!(
                    "{name} {text} is not the {} row ts",
                    if name == "cursor_start_ts" {
                        "earliest"
                    } else {
                        "latest"
                    }
                ),
            ));
        }
    }

    let mut row_ids = Vec::with_capacity(shaped.len());
    for (i, (obj, ..)) in shaped.iter().enumerate() {
        let row_id = match obj.get("row_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if is_valid_row_id(s) => Some(s.clone()),
            Some(other) => {
                return Err(reject(
                    RejectionCode::InvalidRowId,
                    format!("rows[{i}].row_id {other} is not 1-128 chars of [A-Za-z0-9._:-]"),
                ))
            }
        };
        row_ids.push(row_id);
    }

    let mut rows = Vec::with_capacity(shaped.len());
    for (i, ((_, ts, _, fields), row_id)) in shaped.into_iter().zip(row_ids).enumerate() {
        let fields =
            row_from_json(fields).map_err(|e| value_rejection(format!("rows[{i}].fields"), e))?;
        rows.push(TelemetryRow {
            ts: ts.to_owned(),
            row_id,
            fields,
        });
    }

    Ok(TelemetryBatch {
        format_version,
        capture_strategy,
        batch_id,
        batch_seq,
        source_table,
        schema_hash,
        cursor_start_ts,
        cursor_end_ts,
        row_count,
        rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Smaller documents.

/// Decodes a schema observation (spec §5).
pub fn decode_schema_observation(bytes: &[u8]) -> Result<SchemaObservation, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let source_table = source_table(&map)?;
    let schema_hash = check_schema_hash(&map)?;
    let schema_columns = schema_columns(&map, &source_table, &schema_hash)?;
    let observed_at = req_string(&map, "observed_at")?;
    timestamp::parse(&observed_at).map_err(|e| malformed(format!("observed_at: {e}")))?;
    Ok(SchemaObservation {
        format_version,
        source_table,
        schema_hash,
        observed_at,
        schema_columns,
    })
}

/// Decodes an ack of a control (spec §6).
pub fn decode_ingest_ack(bytes: &[u8]) -> Result<IngestAck, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let control_id = map
        .get("control_id")
        .and_then(Value::as_str)
        .and_then(parse_uuid_hyphenated)
        .ok_or_else(|| malformed("control_id is missing or not a hyphenated UUID"))?;
    Ok(IngestAck {
        format_version,
        control_id,
    })
}

/// Decodes a `url_request` / `finalize` (spec §7).
pub fn decode_ingest_request(bytes: &[u8]) -> Result<IngestRequest, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let batch_id = check_batch_id(&map)?;
    let request_kind = map
        .get("request_kind")
        .and_then(Value::as_str)
        .and_then(RequestKind::from_wire)
        .ok_or_else(|| malformed("request_kind is not url_request or finalize"))?;
    let source_table = source_table(&map)?;
    let segment_kind = segment_kind(map.get("segment_kind"))?
        .ok_or_else(|| malformed("segment_kind is missing"))?;
    let journal_epoch = match map.get("journal_epoch") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(parse_uuid_v7)
                .ok_or_else(|| malformed("journal_epoch is not a hyphenated UUIDv7"))?,
        ),
    };
    let schema_hash = match map.get("schema_hash") {
        None | Some(Value::Null) => None,
        Some(_) => Some(check_schema_hash(&map)?),
    };
    Ok(IngestRequest {
        format_version,
        request_kind,
        source_table,
        segment_kind,
        batch_id,
        journal_epoch,
        schema_hash,
    })
}

/// Decodes one line of a spill / snapshot object (spec §7): a row-batch row object, checked
/// exactly like a row of a batch (`invalid_row`, `invalid_number_encoding`). `line` is 1-based
/// and names the line in the message. The payload size limit does not apply: a line is in an
/// object precisely because it is too large for a message.
pub fn decode_spill_line(line: usize, bytes: &[u8]) -> Result<RowChange, Rejection> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid_row(format!("line {line}: not a JSON row object: {e}")))?;
    row_change(line.saturating_sub(1), &value)
        .map_err(|r| Rejection::new(r.code, format!("line {line}: {}", r.message)))
}

fn segment_kind(v: Option<&Value>) -> Result<Option<SegmentKind>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(SegmentKind::from_wire)
            .map(Some)
            .ok_or_else(|| malformed("segment_kind is not payload_spill or bootstrap_snapshot")),
    }
}

/// Decodes a control envelope received by the device (spec §6). Does not verify the signature.
pub fn decode_control_envelope(bytes: &[u8]) -> Result<ControlEnvelope, Rejection> {
    let map = parse_object(bytes, Origin::Cloud)?;
    let control_id = map
        .get("control_id")
        .and_then(Value::as_str)
        .and_then(parse_uuid_hyphenated)
        .ok_or_else(|| malformed("control_id is missing or not a hyphenated UUID"))?;
    let control_kind = map
        .get("control_kind")
        .and_then(Value::as_str)
        .and_then(ControlKind::from_wire)
        .ok_or_else(|| malformed("control_kind is not a known control"))?;

    let opt_string = |key: &str| -> Result<Option<String>, Rejection> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(format!("{key} is not a string"))),
        }
    };
    let opt_time = |key: &str| -> Result<Option<String>, Rejection> {
        let value = opt_string(key)?;
        if let Some(text) = &value {
            timestamp::parse(text).map_err(|e| malformed(format!("{key}: {e}")))?;
        }
        Ok(value)
    };
    let source_table = opt_string("source_table")?;
    let server_watermark = match map.get("server_watermark") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| malformed("server_watermark is not an integer"))?,
        ),
    };
    let reason = opt_string("reason")?;
    let issued_at = opt_time("issued_at")?;
    let presigned_url = opt_string("presigned_url")?;
    let presigned_url_expires_at = opt_time("presigned_url_expires_at")?;
    let batch_id = match map.get("batch_id") {
        None | Some(Value::Null) => None,
        Some(_) => Some(check_batch_id(&map)?),
    };
    let segment_kind = segment_kind(map.get("segment_kind"))?;
    let signature = opt_string("signature")?;

    let missing = |what: &str| malformed(format!("{} needs {what}", control_kind.as_str()));
    match control_kind {
        ControlKind::PauseLineage | ControlKind::ResumeLineage => {
            if source_table.as_deref().is_none_or(str::is_empty) {
                return Err(missing("source_table"));
            }
            if server_watermark.is_none() {
                return Err(missing("server_watermark"));
            }
        }
        ControlKind::UrlGrant => {
            if presigned_url.is_none() {
                return Err(missing("presigned_url"));
            }
            if presigned_url_expires_at.is_none() {
                return Err(missing("presigned_url_expires_at"));
            }
        }
    }
    Ok(ControlEnvelope {
        control_id,
        control_kind,
        source_table,
        server_watermark,
        reason,
        issued_at,
        presigned_url,
        presigned_url_expires_at,
        batch_id,
        segment_kind,
        signature,
    })
}

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

// ---------------------------------------------------------------------------------------------
// Telemetry sequencing (spec §4).

/// Outcome of sequencing a telemetry batch against what the cloud already accepted for its
/// `(device, source_table)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TelemetrySequence {
    /// New batch in order: stage it and advance the watermark.
    Accept,
    /// Redelivery of an accepted batch (same `batch_id`): succeed without doing anything.
    AlreadyAccepted,
    /// A different `batch_id` reuses an accepted `batch_seq` → `duplicate_batch_seq`.
    Duplicate,
    /// `batch_seq` below the last accepted one and not accepted before → `stale_batch_seq`.
    Stale,
}

impl TelemetrySequence {
    /// The rejection for `Duplicate` / `Stale`; `None` for the two success outcomes.
    pub fn rejection(&self, batch_seq: i64, last_accepted_seq: Option<i64>) -> Option<Rejection> {
        let last = last_accepted_seq.map_or_else(|| "none".to_owned(), |s| s.to_string());
        match self {
            TelemetrySequence::Accept | TelemetrySequence::AlreadyAccepted => None,
            TelemetrySequence::Duplicate => Some(reject(
                RejectionCode::DuplicateBatchSeq,
                format!("batch_seq {batch_seq} was already accepted under another batch_id"),
            )),
            TelemetrySequence::Stale => Some(reject(
                RejectionCode::StaleBatchSeq,
                format!("batch_seq {batch_seq} is below the last accepted {last}"),
            )),
        }
    }
}

/// The pure sequencing decision of spec §4.
///
/// Inputs, all for this batch's `(device, source_table)`:
/// - `last_accepted_seq` / `last_batch_id`: the highest accepted `batch_seq` and its `batch_id`
///   (`None` before the first batch);
/// - `seq_already_accepted`: the ledger holds an accepted batch with this `batch_seq`.
///
/// Callers that dedupe on `batch_id` first (the batch ledger) never get here for an older
/// redelivery; for them `last_batch_id` only matters for the newest batch. Decision, in order:
/// 1. `batch_id == last_batch_id` → `AlreadyAccepted` (whatever `seq_already_accepted` says);
/// 2. `seq_already_accepted`, or `batch_seq == last_accepted_seq` → `Duplicate`;
/// 3. `batch_seq < last_accepted_seq` → `Stale`;
/// 4. otherwise → `Accept` (gaps above the watermark are accepted: the device may have been
///    re-provisioned or pruned; ordering, not contiguity, is what the spec asks for).
pub fn classify_telemetry_sequence(
    last_accepted_seq: Option<i64>,
    last_batch_id: Option<Uuid>,
    batch_seq: i64,
    batch_id: Uuid,
    seq_already_accepted: bool,
) -> TelemetrySequence {
    if last_batch_id == Some(batch_id) {
        return TelemetrySequence::AlreadyAccepted;
    }
    if seq_already_accepted || last_accepted_seq == Some(batch_seq) {
        return TelemetrySequence::Duplicate;
    }
    match last_accepted_seq {
        Some(last) if batch_seq < last => TelemetrySequence::Stale,
        _ => TelemetrySequence::Accept,
    }
}

/// [`classify_telemetry_sequence`] as a `Result`: `Ok(Accept | AlreadyAccepted)`, or the
/// `duplicate_batch_seq` / `stale_batch_seq` rejection.
pub fn check_telemetry_sequence(
    last_accepted_seq: Option<i64>,
    last_batch_id: Option<Uuid>,
    batch_seq: i64,
    batch_id: Uuid,
    seq_already_accepted: bool,
) -> Result<TelemetrySequence, Rejection> {
    let outcome = classify_telemetry_sequence(
        last_accepted_seq,
        last_batch_id,
        batch_seq,
        batch_id,
        seq_already_accepted,
    );
    match outcome.rejection(batch_seq, last_accepted_seq) {
        Some(rejection) => Err(rejection),
        None => Ok(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_uuid_v7;

    #[test]
    fn codes_round_trip_through_str_serde_and_display() {
        for code in RejectionCode::ALL {
            let s = code.as_str();
            assert_eq!(s.parse::<RejectionCode>().unwrap(), code);
            assert_eq!(code.to_string(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), Value::from(s));
            assert_eq!(
                serde_json::from_value::<RejectionCode>(Value::from(s)).unwrap(),
                code
            );
        }
        let spec =
            "envelope_unstripped_tenant_fields invalid_format_version unsupported_format_version \
            invalid_batch_id batch_too_many_rows row_count_mismatch cursor_timestamp_mismatch \
            invalid_row_id invalid_number_encoding duplicate_batch_seq stale_batch_seq \
            malformed_json payload_too_large invalid_schema_hash invalid_row unknown_device";
        let listed: Vec<&str> = RejectionCode::ALL
            .iter()
            .map(RejectionCode::as_str)
            .collect();
        assert_eq!(listed, spec.split_whitespace().collect::<Vec<_>>());
        assert!("nope".parse::<RejectionCode>().is_err());
    }

    #[test]
    fn unknown_device_constructor() {
        let r = Rejection::unknown_device("gw-99");
        assert_eq!(r.code, RejectionCode::UnknownDevice);
        assert_eq!(r.code.as_str(), "unknown_device");
        assert!(r.to_string().starts_with("unknown_device: "));
    }

    fn id(n: u64) -> Uuid {
        new_uuid_v7(n, [n as u8; 10])
    }

    #[test]
    fn sequencing_first_and_next_batches_are_accepted() {
        assert_eq!(
            check_telemetry_sequence(None, None, 1, id(1), false),
            Ok(TelemetrySequence::Accept)
        );
        assert_eq!(
            check_telemetry_sequence(Some(41), Some(id(41)), 42, id(42), false),
            Ok(TelemetrySequence::Accept)
        );
        assert_eq!(
            check_telemetry_sequence(Some(41), Some(id(41)), 50, id(50), false),
            Ok(TelemetrySequence::Accept)
        );
    }

    #[test]
    fn sequencing_same_batch_id_is_a_no_op() {
        assert_eq!(
            check_telemetry_sequence(Some(42), Some(id(42)), 42, id(42), true),
            Ok(TelemetrySequence::AlreadyAccepted)
        );
    }

    #[test]
    fn sequencing_duplicate_batch_seq() {
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 42, id(99), true).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
        // Even without the ledger flag, reusing the last seq is a duplicate.
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 42, id(99), false).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
        // An older seq taken by another batch is a duplicate, not stale.
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 40, id(99), true).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
    }

    #[test]
    fn sequencing_stale_batch_seq() {
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 41, id(99), false).unwrap_err();
        assert_eq!(err.code, RejectionCode::StaleBatchSeq);
        assert_eq!(
            classify_telemetry_sequence(Some(42), Some(id(42)), 41, id(99), false),
            TelemetrySequence::Stale
        );
    }
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
