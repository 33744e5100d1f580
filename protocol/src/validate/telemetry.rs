//! Telemetry batches (spec §4): structure, row count, cursors, row ids and field values.
//! Sequencing against earlier batches is `super::sequence`.

use serde_json::Value;

use super::envelope::{
    check_batch_id, check_format_version, check_strategy, parse_object, req_i64, req_string,
    rows_array, source_table, Origin,
};
use super::rejection::{
    check_identifier, invalid_row, malformed, reject, value_rejection, Rejection, RejectionCode,
};
use super::schema::check_schema_hash;
use crate::telemetry::{is_valid_row_id, TelemetryBatch, TelemetryRow, TELEMETRY_BATCH_STRATEGY};
use crate::timestamp;
use crate::value::row_from_json;

/// Decodes and validates a telemetry batch (spec §4); see the module docs for the check order.
/// Sequencing against earlier batches is
/// [`check_telemetry_sequence`](super::check_telemetry_sequence).
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
        if let Some(m) = fields.as_object() {
            for key in m.keys() {
                check_identifier(&format!("rows[{i}].fields key"), key)?;
            }
        }
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
