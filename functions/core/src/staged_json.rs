//! Staged rows keep the device's values as `jsonb`, but PostgreSQL cannot store U+0000 in
//! `jsonb` (nor in `text`), while SQLite text happily holds it. Rejecting such a row would lose
//! it, so strings containing NUL are stored under a cloud-internal marker and restored when the
//! row is read back (replay, the staged-rows API). The marker never leaves the cloud: the wire
//! protocol has no such value, and a mirror `text` column still refuses NUL — such a value stays
//! staged as `materialization_failed` until the operator decides (ignore the column, …).

use base64::Engine as _;
use serde_json::{Map, Value};

/// Key of the internal marker object: `{"$text_with_nul": "<standard base64 of the UTF-8>"}`.
pub const NUL_TEXT_MARKER: &str = "$text_with_nul";

/// True when `value` holds a string PostgreSQL would refuse.
pub fn needs_encoding(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(needs_encoding),
        Value::Object(map) => map.values().any(needs_encoding),
        _ => false,
    }
}

/// `value` with every string containing NUL replaced by the marker.
pub fn encode(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => {
            let mut marker = Map::new();
            marker.insert(
                NUL_TEXT_MARKER.to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(s.as_bytes())),
            );
            Value::Object(marker)
        }
        Value::Array(items) => Value::Array(items.iter().map(encode).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), encode(v))).collect())
        }
        other => other.clone(),
    }
}

/// Undoes [`encode`]. A marker whose payload is not valid base64 of UTF-8 is left as it is (it
/// then fails decoding as a wire value and the row is reported unreadable, never dropped).
pub fn decode(value: &Value) -> Value {
    match value {
        Value::Object(map) if map.len() == 1 => match map.get(NUL_TEXT_MARKER) {
            Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .map_or_else(|| value.clone(), Value::String),
            _ => Value::Object(map.iter().map(|(k, v)| (k.clone(), decode(v))).collect()),
        },
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), decode(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(decode).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_strings_round_trip_and_others_are_untouched() {
        let row = json!({"id": 1, "note": "a\u{0}b", "blob": {"$base64": "AA=="}, "x": null});
        assert!(needs_encoding(&row));
        let stored = encode(&row);
        assert!(!needs_encoding(&stored));
        assert_eq!(stored["note"], json!({"$text_with_nul": "YQBi"}));
        assert_eq!(stored["blob"], row["blob"]);
        assert_eq!(decode(&stored), row);
        let plain = json!({"id": 2, "note": "plain"});
        assert!(!needs_encoding(&plain));
        assert_eq!(decode(&encode(&plain)), plain);
    }

    #[test]
    fn a_damaged_marker_is_kept_not_dropped() {
        let bad = json!({"note": {"$text_with_nul": "***"}});
        assert_eq!(decode(&bad), bad);
    }
}
