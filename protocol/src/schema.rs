//! Schema observations — `sync/schema/observe` (spec §5).
//!
//! Advisory: warms the cloud's schema registry; only a data batch with an unseen hash triggers
//! classification. Decode device bytes with [`crate::validate::decode_schema_observation`].

use serde::{Deserialize, Serialize};

use crate::fingerprint::SchemaColumns;
use crate::limits::FORMAT_VERSION;

/// A schema observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaObservation {
    pub format_version: u32,
    pub source_table: String,
    pub schema_hash: String,
    /// RFC 3339 (nanosecond precision allowed).
    pub observed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_columns: Option<SchemaColumns>,
    /// Set while the device has blocked the table itself (reliability.md §2 "Blocked tables"):
    /// `undecodable_journal_entry`, `spill_row_too_large`, `upload_failed:<code>`, …; omitted
    /// when the table is not blocked (an observation without it clears a block in the cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    /// The blocking journal entry's `commit_seq` (with `blocked_reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_commit_seq: Option<i64>,
}

impl SchemaObservation {
    /// An observation carrying the full fingerprint; `schema_hash` is computed from it.
    pub fn new(schema_columns: SchemaColumns, observed_at: impl Into<String>) -> Self {
        SchemaObservation {
            format_version: FORMAT_VERSION,
            source_table: schema_columns.table_name.clone(),
            schema_hash: schema_columns.schema_hash(),
            observed_at: observed_at.into(),
            schema_columns: Some(schema_columns),
            blocked_reason: None,
            blocked_commit_seq: None,
        }
    }

    /// The same observation reporting the table blocked by the device at `commit_seq`.
    pub fn blocked(mut self, reason: impl Into<String>, commit_seq: i64) -> Self {
        self.blocked_reason = Some(reason.into());
        self.blocked_commit_seq = Some(commit_seq);
        self
    }
}
