//! Negotiation (edge-policies §0): the device's `hello` on `sync/ingest/request` and what the
//! cloud grants in `set_wire_options`, plus the snapshot fields a row batch carries once
//! `snapshot_markers` is granted (edge-policies §5).
//!
//! Only what is built is announced or granted: the device announces no capability of the list
//! `table_policy lanes bandwidth zstd resnapshot state_capture` yet (none of them is built), and
//! the cloud grants the one feature both sides implement, `snapshot_markers`. Sending a `hello`
//! at all says the agent understands `set_wire_options` and snapshot markers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::limits::FORMAT_VERSION;

/// `request_kind` of the negotiation message.
pub const HELLO_REQUEST_KIND: &str = "hello";

/// The feature this version implements (edge-policies §5).
pub const FEATURE_SNAPSHOT_MARKERS: &str = "snapshot_markers";

/// Capabilities a device may announce (edge-policies §0).
pub const KNOWN_CAPABILITIES: [&str; 6] = [
    "table_policy",
    "lanes",
    "bandwidth",
    "zstd",
    "resnapshot",
    "state_capture",
];

/// What a `set_wire_options` grants; also the `granted` of a `hello` (the last one applied).
/// `content_encodings` and `max_decompressed_bytes` are omitted while nothing but
/// `snapshot_markers` is implemented (edge-policies header: new fields are omitted when unused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_encodings: Vec<String>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decompressed_bytes: Option<i64>,
}

impl WireOptions {
    /// True when `feature` is granted.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Order-insensitive comparison of two grants (sets, not lists).
    pub fn same_as(&self, other: &WireOptions) -> bool {
        let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
        set(&self.features) == set(&other.features)
            && set(&self.content_encodings) == set(&other.content_encodings)
            && self.max_decompressed_bytes == other.max_decompressed_bytes
    }
}

/// The cloud's grant for a device that said `hello` with `capabilities` (pure decision): the
/// features this cloud implements; `zstd` would need the `zstd` capability and is not built.
pub fn grant_for(_capabilities: &[String]) -> WireOptions {
    WireOptions {
        content_encodings: Vec::new(),
        features: vec![FEATURE_SNAPSHOT_MARKERS.to_owned()],
        max_decompressed_bytes: None,
    }
}

/// `{"format_version":1,"request_kind":"hello",…}` on `sync/ingest/request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub format_version: u32,
    pub request_kind: String,
    pub agent_version: String,
    pub capabilities: Vec<String>,
    pub granted: WireOptions,
}

impl Hello {
    pub fn new(agent_version: impl Into<String>, granted: WireOptions) -> Self {
        Hello {
            format_version: FORMAT_VERSION,
            request_kind: HELLO_REQUEST_KIND.to_owned(),
            agent_version: agent_version.into(),
            capabilities: Vec::new(),
            granted,
        }
    }
}

/// How a snapshot ended (`snapshot_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotEnd {
    Complete,
    Aborted,
}

impl SnapshotEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            SnapshotEnd::Complete => "complete",
            SnapshotEnd::Aborted => "aborted",
        }
    }

    pub fn from_wire(s: &str) -> Option<SnapshotEnd> {
        match s {
            "complete" => Some(SnapshotEnd::Complete),
            "aborted" => Some(SnapshotEnd::Aborted),
            _ => None,
        }
    }
}

/// The snapshot fields of a row batch (edge-policies §5): a chunk carries the first three, the
/// end marker all six (`rows: []`, first/last_commit_seq = `snapshot_start_seq`,
/// `snapshot_chunk` = `snapshot_chunk_count` = N).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFields {
    pub snapshot_id: Uuid,
    pub snapshot_start_seq: i64,
    pub snapshot_chunk: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_chunk_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_row_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_end: Option<SnapshotEnd>,
}

impl SnapshotFields {
    /// The fields of chunk `chunk`.
    pub fn chunk(snapshot_id: Uuid, snapshot_start_seq: i64, chunk: i64) -> Self {
        SnapshotFields {
            snapshot_id,
            snapshot_start_seq,
            snapshot_chunk: chunk,
            snapshot_chunk_count: None,
            snapshot_row_count: None,
            snapshot_end: None,
        }
    }

    /// The fields of the end marker after `chunks` chunks holding `rows` rows.
    pub fn end(
        snapshot_id: Uuid,
        snapshot_start_seq: i64,
        chunks: i64,
        rows: i64,
        end: SnapshotEnd,
    ) -> Self {
        SnapshotFields {
            snapshot_id,
            snapshot_start_seq,
            snapshot_chunk: chunks,
            snapshot_chunk_count: Some(chunks),
            snapshot_row_count: Some(rows),
            snapshot_end: Some(end),
        }
    }

    /// True for the end marker.
    pub fn is_end(&self) -> bool {
        self.snapshot_end.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_encodes_as_the_spec_writes_it() {
        let h = Hello::new("0.1.0", WireOptions::default());
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"format_version":1,"request_kind":"hello","agent_version":"0.1.0",
                "capabilities":[],"granted":{"features":[]}})
        );
    }

    #[test]
    fn grant_is_snapshot_markers_only_and_compares_as_a_set() {
        let g = grant_for(&[]);
        assert!(g.has(FEATURE_SNAPSHOT_MARKERS));
        assert!(!g.same_as(&WireOptions::default()));
        assert!(g.same_as(&g.clone()));
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            serde_json::json!({"features":["snapshot_markers"]})
        );
    }

    fn batch(extra: serde_json::Value, rows: serde_json::Value, first: i64, last: i64) -> Vec<u8> {
        let mut v = serde_json::json!({
            "format_version": 1, "capture_strategy": "sqlite_row_batch_v1",
            "batch_id": "0193a000-0000-7000-8000-000000000001",
            "journal_epoch": "0193a000-0000-7000-8000-000000000002",
            "source_table": "t", "schema_hash": "0".repeat(64),
            "first_commit_seq": first, "last_commit_seq": last, "rows": rows,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    const SNAP: &str = "0193a000-0000-7000-8000-0000000000aa";

    fn ins(seq: i64) -> serde_json::Value {
        serde_json::json!({"commit_seq": seq, "op": "insert", "pk": {"id": seq}, "row": {"id": seq}})
    }

    #[test]
    fn snapshot_markers_decode_and_bad_combinations_are_invalid_snapshot() {
        use crate::validate::{decode_row_batch, RejectionCode};
        let chunk =
            serde_json::json!({"snapshot_id": SNAP, "snapshot_start_seq": 10, "snapshot_chunk": 0});
        let b = decode_row_batch(&batch(
            chunk.clone(),
            serde_json::json!([ins(10), ins(11)]),
            10,
            11,
        ))
        .unwrap();
        let f = b.snapshot.clone().unwrap();
        assert_eq!(
            (f.snapshot_start_seq, f.snapshot_chunk, f.is_end()),
            (10, 0, false)
        );
        // re-encoding gives the same fields back (serde flatten)
        let again = decode_row_batch(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(again, b);
        let end = serde_json::json!({"snapshot_id": SNAP, "snapshot_start_seq": 10, "snapshot_chunk": 2,
            "snapshot_chunk_count": 2, "snapshot_row_count": 1500, "snapshot_end": "complete"});
        let e = decode_row_batch(&batch(end.clone(), serde_json::json!([]), 10, 10)).unwrap();
        assert_eq!(
            e.snapshot.unwrap().snapshot_end,
            Some(SnapshotEnd::Complete)
        );

        let invalid = |extra: serde_json::Value, rows: serde_json::Value, first, last| {
            decode_row_batch(&batch(extra, rows, first, last))
                .unwrap_err()
                .code
        };
        let with = |base: &serde_json::Value, k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (what, code) in [
            (
                "end with rows",
                invalid(end.clone(), serde_json::json!([ins(10)]), 10, 10),
            ),
            (
                "end seq not start",
                invalid(end.clone(), serde_json::json!([]), 11, 11),
            ),
            (
                "count != chunk",
                invalid(
                    with(&end, "snapshot_chunk_count", 3.into()),
                    serde_json::json!([]),
                    10,
                    10,
                ),
            ),
            (
                "no row count",
                invalid(
                    with(&end, "snapshot_row_count", serde_json::Value::Null),
                    serde_json::json!([]),
                    10,
                    10,
                ),
            ),
            (
                "bad end",
                invalid(
                    with(&end, "snapshot_end", "done".into()),
                    serde_json::json!([]),
                    10,
                    10,
                ),
            ),
            (
                "chunk with count",
                invalid(
                    with(&chunk, "snapshot_chunk_count", 1.into()),
                    serde_json::json!([ins(10)]),
                    10,
                    10,
                ),
            ),
            (
                "chunk without rows",
                invalid(chunk.clone(), serde_json::json!([]), 10, 10),
            ),
            (
                "chunk below start",
                invalid(chunk.clone(), serde_json::json!([ins(9)]), 9, 9),
            ),
            (
                "no id",
                invalid(
                    serde_json::json!({"snapshot_start_seq": 10, "snapshot_chunk": 0}),
                    serde_json::json!([ins(10)]),
                    10,
                    10,
                ),
            ),
            (
                "negative chunk",
                invalid(
                    with(&chunk, "snapshot_chunk", (-1).into()),
                    serde_json::json!([ins(10)]),
                    10,
                    10,
                ),
            ),
        ] {
            assert_eq!(code, RejectionCode::InvalidSnapshot, "{what}");
        }
        let mut delete = ins(10);
        delete["op"] = "delete".into();
        delete["row"] = serde_json::Value::Null;
        assert_eq!(
            invalid(chunk, serde_json::json!([delete]), 10, 10),
            RejectionCode::InvalidSnapshot
        );
        // Without snapshot fields an empty batch stays invalid_row.
        assert_eq!(
            invalid(serde_json::json!({}), serde_json::json!([]), 0, 0),
            RejectionCode::InvalidRow
        );
    }
}
