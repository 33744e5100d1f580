//! What is still pending in the journal of one table: entries after its acknowledged cursor,
//! their bytes (measured as [`journal_stats`](super::journal_stats) and `status` do) and the
//! oldest one's `commit_seq`. For the metrics (`crate::metrics`), on any connection to the
//! source database (the daemon's, or a read-only one): both only read, by `commit_seq` range
//! (the journal's primary key), so their cost follows the pending backlog, not the journal.

use rusqlite::{params, Connection, OptionalExtension};

use super::ENTRY_OVERHEAD_BYTES;

/// The pending part of one table's journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Entries with `commit_seq` above the acknowledged cursor.
    pub entries: u64,
    /// Their bytes: JSON text + [`ENTRY_OVERHEAD_BYTES`] each.
    pub bytes: u64,
    /// The oldest of them.
    pub oldest_seq: Option<i64>,
}

/// Entries of `table` with `commit_seq > acked` (none when the journal is not there yet).
pub fn pending_stats(conn: &Connection, table: &str, acked: i64) -> rusqlite::Result<PendingStats> {
    if !has_journal(conn)? {
        return Ok(PendingStats::default());
    }
    conn.prepare_cached(&format!(
        "SELECT count(*), \
         coalesce(sum(coalesce(length(j.row), 0) + coalesce(length(j.pk), 0) + {ENTRY_OVERHEAD_BYTES}), 0), \
         min(j.commit_seq) FROM \"__omega_journal\" j \
         WHERE j.commit_seq > ?2 AND j.schema_id IN \
         (SELECT schema_id FROM \"__omega_schemas\" WHERE table_name = ?1)"
    ))?
    .query_row(params![table, acked], |r| {
        Ok(PendingStats {
            entries: r.get::<_, i64>(0)?.max(0) as u64,
            bytes: r.get::<_, i64>(1)?.max(0) as u64,
            oldest_seq: r.get(2)?,
        })
    })
}

/// The oldest entry of `table` with `commit_seq > acked`: stops at the first one found (the
/// daemon asks every poll, [`pending_stats`] counts them all).
pub fn oldest_pending_seq(
    conn: &Connection,
    table: &str,
    acked: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT j.commit_seq FROM \"__omega_journal\" j WHERE j.commit_seq > ?2 AND j.schema_id IN \
         (SELECT schema_id FROM \"__omega_schemas\" WHERE table_name = ?1) \
         ORDER BY j.commit_seq LIMIT 1",
    )?
    .query_row(params![table, acked], |r| r.get(0))
    .optional()
}

fn has_journal(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE name = '__omega_journal'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}
