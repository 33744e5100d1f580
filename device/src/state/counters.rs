//! The `counters` table of state.db: what the agent counts (the names in [`counter`]), read by
//! `status` and by the metrics (observability.md §3: the agent's counters persist here, so a
//! restart never resets a `_total`).

use rusqlite::{params, OptionalExtension};

use super::{StateDb, StateError};

/// Counter names (`counters.name`), so `status` and tests agree on spelling.
pub mod counter {
    pub const RETENTION_COALESCED: &str = "retention_coalesced_entries";
    pub const RETENTION_DROPPED: &str = "retention_dropped_entries";
    pub const RETENTION_DROPS: &str = "retention_drops";
    pub const EPOCHS_STARTED: &str = "epochs_started";
    pub const TABLE_REBUILDS: &str = "table_rebuilds_detected";
    pub const SCHEMA_CHANGES: &str = "schema_changes";
    pub const SNAPSHOT_ROWS: &str = "snapshot_rows";
    pub const REFRESHED_ENTRIES: &str = "refreshed_entries";
    /// Journal entries naming a schema_id with no schema, skipped by the reader.
    pub const UNKNOWN_SCHEMA_ENTRIES: &str = "journal_unknown_schema_entries";
    pub const TELEMETRY_SKIPPED: &str = "telemetry_rows_skipped";
    /// Row and telemetry batches the broker acknowledged (PUBACK) and spills the cloud
    /// committed, agent-wide (`edge_agent_batches_acked_total`); bumped with the outbox row's
    /// removal (`outbox_store::remove_acked`), in the same transaction.
    pub const BATCHES_ACKED: &str = "batches_acked";
    /// The rows of those batches (`edge_agent_rows_acked_total`).
    pub const ROWS_ACKED: &str = "rows_acked";
    /// Controls by outcome: `controls_applied`, `controls_duplicate`, `controls_bad_signature`,
    /// `controls_stale`, with the control kind in `counters.table_name`
    /// (`edge_agent_controls_total{kind,outcome}`, bumped in `daemon::controls`).
    pub const CONTROLS_PREFIX: &str = "controls_";
}

impl StateDb {
    /// Adds `by` to counter `name` of `table` (`""` for agent-wide counters).
    pub fn bump_counter(&self, name: &str, table: &str, by: i64) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO counters(name, table_name, value) VALUES(?1, ?2, ?3) \
             ON CONFLICT(name, table_name) DO UPDATE SET value = value + excluded.value",
            params![name, table, by],
        )?;
        Ok(())
    }

    pub fn counter(&self, name: &str, table: &str) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = ?1 AND table_name = ?2",
                params![name, table],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// All counters as `(name, table, value)`.
    pub fn counters(&self) -> Result<Vec<(String, String, i64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, table_name, value FROM counters ORDER BY name, table_name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
