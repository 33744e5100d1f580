//! Steps 1–5 of the check order, shared by every document (size, JSON object, tenant fields,
//! number literals, `format_version`), and the envelope fields several documents carry
//! (`capture_strategy`, `batch_id`, `rows`, `source_table`, required integers and strings).

use serde_json::{Map, Value};
use uuid::Uuid;

use super::number_scan;
use super::rejection::{malformed, reject, Rejection, RejectionCode};
use crate::ids::parse_uuid_v7;
use crate::limits::{FORMAT_VERSION, MAX_ROWS_PER_BATCH, PROTOCOL_MAX_PAYLOAD_BYTES};
use crate::tenant::FORBIDDEN_TENANT_FIELDS;

/// Whether the tenant-field check (step 3) applies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Device,
    Cloud,
}

pub(super) fn parse_object(bytes: &[u8], origin: Origin) -> Result<Map<String, Value>, Rejection> {
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

pub(super) fn check_format_version(map: &Map<String, Value>) -> Result<u32, Rejection> {
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

pub(super) fn check_strategy(
    map: &Map<String, Value>,
    expected: &str,
) -> Result<String, Rejection> {
    match map.get("capture_strategy").and_then(Value::as_str) {
        Some(s) if s == expected => Ok(s.to_owned()),
        Some(s) => Err(malformed(format!(
            "capture_strategy {s:?} is not {expected:?}"
        ))),
        None => Err(malformed("capture_strategy is missing or not a string")),
    }
}

pub(super) fn check_batch_id(map: &Map<String, Value>) -> Result<Uuid, Rejection> {
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

pub(super) fn rows_array(map: &Map<String, Value>) -> Result<&Vec<Value>, Rejection> {
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

pub(super) fn source_table(map: &Map<String, Value>) -> Result<String, Rejection> {
    match map.get("source_table").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => {
            super::rejection::check_identifier("source_table", s)?;
            Ok(s.to_owned())
        }
        _ => Err(malformed("source_table is missing, empty or not a string")),
    }
}

pub(super) fn req_i64(map: &Map<String, Value>, key: &str) -> Result<i64, Rejection> {
    map.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed(format!("{key} is missing or not an integer")))
}

pub(super) fn req_string(map: &Map<String, Value>, key: &str) -> Result<String, Rejection> {
    map.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed(format!("{key} is missing or not a string")))
}
