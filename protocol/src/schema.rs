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
        }
    }
}
