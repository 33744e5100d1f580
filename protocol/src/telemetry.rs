//! Telemetry batches — `sync/telemetry/batch` (spec §4).
//!
//! For append-only time-series tables: no triggers, a cursor on `(ts, rowid)` and a persisted,
//! strictly increasing `batch_seq` per `(device, source_table)`. Decode device bytes with
//! [`crate::validate::decode_telemetry_batch`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::limits::{FORMAT_VERSION, MAX_ROW_ID_CHARS};
use crate::value::Row;

/// `capture_strategy` of a telemetry batch.
pub const TELEMETRY_BATCH_STRATEGY: &str = "sqlite_telemetry_batch_v1";

/// One time-series row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryRow {
    /// RFC 3339 timestamp from the table's `ts_column`, as written by the device.
    pub ts: String,
    /// Optional stable row identity (e.g. the SQLite rowid as text); see [`is_valid_row_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_id: Option<String>,
    pub fields: Row,
}

/// A telemetry batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub format_version: u32,
    pub capture_strategy: String,
    pub batch_id: Uuid,
    pub batch_seq: i64,
    pub source_table: String,
    pub schema_hash: String,
    /// Earliest row `ts` (as an instant).
    pub cursor_start_ts: String,
    /// Latest row `ts` (as an instant).
    pub cursor_end_ts: String,
    pub row_count: usize,
    pub rows: Vec<TelemetryRow>,
}

impl TelemetryBatch {
    /// A batch with `format_version`, `capture_strategy`, `row_count` and the cursors derived
    /// from `rows` (cursors are the `ts` strings of the earliest/latest row; unparseable
    /// timestamps are ignored, and an empty `rows` gives empty cursors — both invalid on the wire).
    pub fn new(
        batch_id: Uuid,
        batch_seq: i64,
        source_table: impl Into<String>,
        schema_hash: impl Into<String>,
        rows: Vec<TelemetryRow>,
    ) -> Self {
        let parsed = rows
            .iter()
            .filter_map(|r| crate::timestamp::parse(&r.ts).ok().map(|t| (t, &r.ts)));
        let start = parsed
            .clone()
            .min_by_key(|(t, _)| *t)
            .map(|(_, s)| s.clone());
        let end = parsed.max_by_key(|(t, _)| *t).map(|(_, s)| s.clone());
        TelemetryBatch {
            format_version: FORMAT_VERSION,
            capture_strategy: TELEMETRY_BATCH_STRATEGY.to_owned(),
            batch_id,
            batch_seq,
            source_table: source_table.into(),
            schema_hash: schema_hash.into(),
            cursor_start_ts: start.unwrap_or_default(),
            cursor_end_ts: end.unwrap_or_default(),
            row_count: rows.len(),
            rows,
        }
    }
}

/// A `row_id` is 1..=128 characters of `[A-Za-z0-9._:-]`: enough for a rowid, a UUID or a
/// `table:rowid` composite, and nothing that needs escaping in a ledger key, a log line or a URL.
pub fn is_valid_row_id(row_id: &str) -> bool {
    !row_id.is_empty()
        && row_id.len() <= MAX_ROW_ID_CHARS
        && row_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_uuid_v7;

    #[test]
    fn row_id_rule() {
        assert!(is_valid_row_id("12345"));
        assert!(is_valid_row_id("temps:-5"));
        assert!(is_valid_row_id("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70"));
        assert!(is_valid_row_id(&"a".repeat(128)));
        assert!(!is_valid_row_id(&"a".repeat(129)));
        assert!(!is_valid_row_id(""));
        assert!(!is_valid_row_id("a b"));
        assert!(!is_valid_row_id("a/b"));
        assert!(!is_valid_row_id("é"));
    }

    #[test]
    fn new_derives_cursors_from_instants() {
        let row = |ts: &str| TelemetryRow {
            ts: ts.to_owned(),
            row_id: None,
            fields: Row::new(),
        };
        let b = TelemetryBatch::new(
            new_uuid_v7(1, [0; 10]),
            1,
            "temps",
            "0".repeat(64),
            vec![
                row("2026-04-28T09:00:05Z"),
                row("2026-04-28T10:00:01+02:00"),
                row("2026-04-28T09:00:09Z"),
            ],
        );
        assert_eq!(b.cursor_start_ts, "2026-04-28T10:00:01+02:00");
        assert_eq!(b.cursor_end_ts, "2026-04-28T09:00:09Z");
        assert_eq!(b.row_count, 3);
    }
}
