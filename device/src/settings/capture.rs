//! What the capture layer needs to know about each table, filled from the TOML config by
//! [`read`](super::read) or directly by tests. Validation of *names* against the live schema happens at
//! enrolment (a table or column named in config may not exist yet), so this type only holds data.

use std::collections::BTreeMap;

/// Default bound on the local journal (agent.md §4): 256 MiB.
pub const DEFAULT_LOCAL_RETENTION_BYTES: u64 = 256 * 1024 * 1024;

/// How one table is captured (agent.md §1, §5 `table_strategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Row changes through triggers into `__omega_journal` (the default).
    #[default]
    Rows,
    /// Append-only time series read by cursor on `(ts_column, rowid)`; no triggers.
    Telemetry,
    /// Not captured at all.
    Ignore,
}

impl Strategy {
    /// The config spelling (`rows` | `telemetry` | `ignore`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Rows => "rows",
            Strategy::Telemetry => "telemetry",
            Strategy::Ignore => "ignore",
        }
    }

    /// Parses the config spelling; `None` for anything else so the config layer can name the key.
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "rows" => Some(Strategy::Rows),
            "telemetry" => Some(Strategy::Telemetry),
            "ignore" => Some(Strategy::Ignore),
            _ => None,
        }
    }
}

/// `snapshot_chunk_rows` when not configured (edge-policies §5).
pub const DEFAULT_SNAPSHOT_CHUNK_ROWS: usize = 1000;

/// Per-table settings (`[sqlite-replication.table_strategies.<table>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableConfig {
    pub strategy: Strategy,
    /// Columns to capture. For `rows` the primary-key columns are always captured in addition
    /// (a change without its key is useless). For `telemetry` these become `fields`; `None` means
    /// every column except `ts_column`.
    pub include_columns: Option<Vec<String>>,
    /// Telemetry only: the timestamp column (ISO-8601 text, or unix seconds / milliseconds).
    pub ts_column: Option<String>,
}

/// Everything the capture layer is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Per-table overrides keyed by the exact table name; tables not listed use `rows`.
    pub tables: BTreeMap<String, TableConfig>,
    /// Enqueue existing rows of every enrolled table the first time the agent runs on a database.
    pub snapshot_on_first_run: bool,
    /// Bound on the journal's pending bytes before retention coalesces/drops (agent.md §4).
    pub local_retention_bytes: u64,
    /// Rows per snapshot chunk (`sqlite-replication.snapshot_chunk_rows`, edge-policies §5
    /// default 1000): each chunk is one short `BEGIN IMMEDIATE` on the application's database.
    pub snapshot_chunk_rows: usize,
    /// The operator confirms the application's SQLite, older than 3.38, has JSON1 compiled in
    /// (`sqlite-replication.app_sqlite_has_json1`; reliability.md §6, `capture::compat`).
    pub app_sqlite_has_json1: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            tables: BTreeMap::new(),
            snapshot_on_first_run: true,
            app_sqlite_has_json1: false,
            local_retention_bytes: DEFAULT_LOCAL_RETENTION_BYTES,
            snapshot_chunk_rows: DEFAULT_SNAPSHOT_CHUNK_ROWS,
        }
    }
}

impl CaptureConfig {
    /// The settings for `table` (the default `rows` strategy when not configured).
    pub fn table(&self, table: &str) -> TableConfig {
        self.tables.get(table).cloned().unwrap_or_default()
    }
}
