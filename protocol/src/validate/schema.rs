//! Schema checks: `schema_hash` and the optional `schema_columns` fingerprint (row batch step 10),
//! and the schema observation document (spec §5) that carries them.

use serde_json::{Map, Value};

use super::envelope::{check_format_version, parse_object, req_string, source_table, Origin};
use super::rejection::{check_identifier, malformed, reject, Rejection, RejectionCode};
use crate::fingerprint::{is_schema_hash, Affinity, ColumnFingerprint, SchemaColumns};
use crate::schema::SchemaObservation;
use crate::timestamp;

/// Longest `blocked_reason` accepted (a reason code, `upload_failed:<code>` at most).
pub const MAX_BLOCKED_REASON_BYTES: usize = 256;

pub(super) fn check_schema_hash(map: &Map<String, Value>) -> Result<String, Rejection> {
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

pub(super) fn schema_columns(
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
    check_identifier("schema_columns.table_name", &fp.table_name)?;
    for (i, c) in fp.columns.iter().enumerate() {
        check_identifier(&format!("schema_columns.columns[{i}].name"), &c.name)?;
    }
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

/// Decodes a schema observation (spec §5).
pub fn decode_schema_observation(bytes: &[u8]) -> Result<SchemaObservation, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let source_table = source_table(&map)?;
    let schema_hash = check_schema_hash(&map)?;
    let schema_columns = schema_columns(&map, &source_table, &schema_hash)?;
    let observed_at = req_string(&map, "observed_at")?;
    timestamp::parse(&observed_at).map_err(|e| malformed(format!("observed_at: {e}")))?;
    let blocked_reason = match map.get("blocked_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_BLOCKED_REASON_BYTES => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(malformed(format!(
                "blocked_reason is not a string of 1 to {MAX_BLOCKED_REASON_BYTES} bytes"
            )))
        }
    };
    let blocked_commit_seq = match map.get("blocked_commit_seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|n| *n > 0)
                .ok_or_else(|| malformed("blocked_commit_seq is not a positive integer"))?,
        ),
    };
    if blocked_reason.is_some() != blocked_commit_seq.is_some() {
        return Err(malformed(
            "blocked_reason and blocked_commit_seq come together or not at all",
        ));
    }
    Ok(SchemaObservation {
        format_version,
        source_table,
        schema_hash,
        observed_at,
        schema_columns,
        blocked_reason,
        blocked_commit_seq,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fingerprint::{Affinity, ColumnFingerprint};

    fn observation() -> SchemaObservation {
        SchemaObservation::new(
            SchemaColumns::new(
                "t",
                vec![ColumnFingerprint {
                    name: "id".into(),
                    decl_type_affinity: Affinity::Integer,
                    pk_ordinal: 1,
                    not_null: true,
                }],
            ),
            "2026-04-28T09:00:00Z",
        )
    }

    #[test]
    fn an_observation_carries_the_devices_block_or_omits_it() {
        let plain = observation();
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("blocked"), "{text}");
        assert_eq!(decode_schema_observation(text.as_bytes()).unwrap(), plain);
        let blocked = observation().blocked("undecodable_journal_entry", 12);
        let bytes = serde_json::to_vec(&blocked).unwrap();
        let back = decode_schema_observation(&bytes).unwrap();
        assert_eq!(
            back.blocked_reason.as_deref(),
            Some("undecodable_journal_entry")
        );
        assert_eq!(back.blocked_commit_seq, Some(12));
        // Half a block, or a non-positive entry, is malformed.
        let mut half: Value = serde_json::to_value(&blocked).unwrap();
        half.as_object_mut().unwrap().remove("blocked_commit_seq");
        assert!(decode_schema_observation(half.to_string().as_bytes()).is_err());
        let mut zero: Value = serde_json::to_value(&blocked).unwrap();
        zero["blocked_commit_seq"] = 0.into();
        assert!(decode_schema_observation(zero.to_string().as_bytes()).is_err());
    }
}
