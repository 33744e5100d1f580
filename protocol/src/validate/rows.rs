//! Row batches (spec §3) and the rows they carry, also as the lines of a spill / snapshot
//! object (spec §7).

use serde_json::Value;

use super::envelope::{
    check_batch_id, check_format_version, check_strategy, parse_object, req_i64, rows_array,
    source_table, Origin,
};
use super::rejection::{
    check_identifier, invalid_row, malformed, reject, value_rejection, Rejection, RejectionCode,
};
use super::schema::{check_schema_hash, schema_columns};
use crate::batch::{Op, RowBatch, RowChange, ROW_BATCH_STRATEGY};
use crate::ids::parse_uuid_v7;
use crate::value::{row_from_json, Row};
use crate::wire::{SnapshotEnd, SnapshotFields};
use serde_json::Map;

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

    let snapshot = snapshot_fields(&map)?;
    if let Some(fields) = &snapshot {
        check_snapshot(fields, &rows, first_commit_seq, last_commit_seq)?;
        if fields.is_end() {
            return Ok(RowBatch {
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
                snapshot,
            });
        }
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
        snapshot,
    })
}

const SNAPSHOT_KEYS: [&str; 6] = [
    "snapshot_id",
    "snapshot_start_seq",
    "snapshot_chunk",
    "snapshot_chunk_count",
    "snapshot_row_count",
    "snapshot_end",
];

/// The snapshot fields (edge-policies §5), `None` when the batch carries none of them.
fn snapshot_fields(map: &Map<String, Value>) -> Result<Option<SnapshotFields>, Rejection> {
    let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
    if !SNAPSHOT_KEYS.iter().any(|k| present(k)) {
        return Ok(None);
    }
    let bad = |what: String| reject(RejectionCode::InvalidSnapshot, what);
    let int = |k: &str| -> Result<Option<i64>, Rejection> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n)),
                _ => Err(bad(format!("{k} is not a non-negative integer"))),
            },
        }
    };
    let snapshot_id = map
        .get("snapshot_id")
        .and_then(Value::as_str)
        .and_then(parse_uuid_v7)
        .ok_or_else(|| bad("snapshot_id is missing or not a hyphenated UUIDv7".into()))?;
    let snapshot_start_seq =
        int("snapshot_start_seq")?.ok_or_else(|| bad("snapshot_start_seq is missing".into()))?;
    let snapshot_chunk =
        int("snapshot_chunk")?.ok_or_else(|| bad("snapshot_chunk is missing".into()))?;
    let snapshot_end = match map.get("snapshot_end") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(SnapshotEnd::from_wire)
                .ok_or_else(|| bad("snapshot_end is not complete or aborted".into()))?,
        ),
    };
    Ok(Some(SnapshotFields {
        snapshot_id,
        snapshot_start_seq,
        snapshot_chunk,
        snapshot_chunk_count: int("snapshot_chunk_count")?,
        snapshot_row_count: int("snapshot_row_count")?,
        snapshot_end,
    }))
}

/// A chunk: rows, all `insert`, none below `snapshot_start_seq`, no end-marker fields. An end
/// marker: `rows: []`, first/last_commit_seq = `snapshot_start_seq`, `snapshot_chunk` =
/// `snapshot_chunk_count`, a `snapshot_row_count`. Anything else → `invalid_snapshot`.
fn check_snapshot(
    f: &SnapshotFields,
    rows: &[RowChange],
    first_commit_seq: i64,
    last_commit_seq: i64,
) -> Result<(), Rejection> {
    let bad = |what: &str| Err(reject(RejectionCode::InvalidSnapshot, what));
    if f.is_end() {
        if !rows.is_empty() {
            return bad("a snapshot end marker carries rows: []");
        }
        if first_commit_seq != f.snapshot_start_seq || last_commit_seq != f.snapshot_start_seq {
            return bad("an end marker's first/last_commit_seq must equal snapshot_start_seq");
        }
        if f.snapshot_chunk_count != Some(f.snapshot_chunk) {
            return bad("an end marker's snapshot_chunk_count must equal its snapshot_chunk");
        }
        if f.snapshot_row_count.is_none() {
            return bad("an end marker needs snapshot_row_count");
        }
        return Ok(());
    }
    if f.snapshot_chunk_count.is_some() || f.snapshot_row_count.is_some() {
        return bad("snapshot_chunk_count / snapshot_row_count belong to the end marker");
    }
    if rows.is_empty() {
        return bad("a snapshot chunk carries rows (only the end marker has rows: [])");
    }
    if rows.iter().any(|r| r.op != Op::Insert) {
        return bad("snapshot chunk rows are op insert");
    }
    if rows.iter().any(|r| r.commit_seq < f.snapshot_start_seq) {
        return bad("a snapshot chunk row's commit_seq is below snapshot_start_seq");
    }
    Ok(())
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
    for part in ["pk", "row"] {
        if let Some(Value::Object(m)) = obj.get(part) {
            for key in m.keys() {
                check_identifier(&format!("rows[{i}].{part} key"), key)?;
            }
        }
    }
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
