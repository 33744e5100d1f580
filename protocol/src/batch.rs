//! Row batches — `sync/rows/batch` (spec §3).
//!
//! Changes of one `source_table`, in journal order. Decode device bytes with
//! [`crate::validate::decode_row_batch`]; the serde impls here are the plain encoding and do not
//! enforce the batch invariants.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fingerprint::SchemaColumns;
use crate::ids::CommitPosition;
use crate::limits::FORMAT_VERSION;
use crate::value::Row;
use crate::wire::SnapshotFields;

/// `capture_strategy` of a row batch.
pub const ROW_BATCH_STRATEGY: &str = "sqlite_row_batch_v1";

/// Kind of change. An UPDATE that changes the primary key travels as `delete` + `insert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// Parses the wire spelling (exact, lower case).
    pub fn from_wire(s: &str) -> Option<Op> {
        match s {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    pub commit_seq: i64,
    pub op: Op,
    /// The primary-key columns (after the change; equal to the matching `row` columns).
    pub pk: Row,
    /// Full row after insert/update; `None` (encoded `null`) for delete.
    #[serde(default)]
    pub row: Option<Row>,
}

/// A row batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowBatch {
    pub format_version: u32,
    pub capture_strategy: String,
    pub batch_id: Uuid,
    pub journal_epoch: Uuid,
    pub source_table: String,
    pub schema_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_columns: Option<SchemaColumns>,
    pub first_commit_seq: i64,
    pub last_commit_seq: i64,
    pub rows: Vec<RowChange>,
    /// Snapshot chunk / end marker fields (edge-policies §5); absent unless `snapshot_markers`
    /// was granted.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotFields>,
}

impl RowBatch {
    /// A batch with `format_version` / `capture_strategy` filled in and `first/last_commit_seq`
    /// computed from `rows` (0/0 when empty — an empty batch is invalid on the wire anyway).
    pub fn new(
        batch_id: Uuid,
        journal_epoch: Uuid,
        source_table: impl Into<String>,
        schema_hash: impl Into<String>,
        schema_columns: Option<SchemaColumns>,
        rows: Vec<RowChange>,
    ) -> Self {
        let first = rows.iter().map(|r| r.commit_seq).min().unwrap_or(0);
        let last = rows.iter().map(|r| r.commit_seq).max().unwrap_or(0);
        RowBatch {
            format_version: FORMAT_VERSION,
            capture_strategy: ROW_BATCH_STRATEGY.to_owned(),
            batch_id,
            journal_epoch,
            source_table: source_table.into(),
            schema_hash: schema_hash.into(),
            schema_columns,
            first_commit_seq: first,
            last_commit_seq: last,
            rows,
            snapshot: None,
        }
    }

    /// Position of the last change in the batch.
    pub fn last_position(&self) -> CommitPosition {
        CommitPosition::new(self.journal_epoch, self.last_commit_seq)
    }
}
