//! Acknowledging: the table's cursor moves in `state.db` first, then the acknowledged journal
//! rows are deleted in small `BEGIN IMMEDIATE` transactions, so the application's writer only
//! ever queues briefly behind the agent.

use rusqlite::{params, TransactionBehavior};
use tracing::debug;

use crate::capture::{Capture, CaptureError};
use crate::state::StateDb;

/// `PRAGMA synchronous=NORMAL` on the agent's source connection while it deletes acknowledged
/// journal rows, restored afterwards. Losing such a delete to a power cut is harmless (the rows
/// are at or below the acknowledged cursor: the reader skips them and the next ack deletes
/// them), while an fsync per 256-row transaction was most of a backlog drain's wall-clock time.
/// Everything else the agent writes to the source keeps the connection's normal setting
/// ([`restore_sync`] afterwards, on every path).
fn relax_sync(conn: &rusqlite::Connection) -> Option<i64> {
    let previous = conn
        .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
        .ok()
        .filter(|p| *p > 1);
    if previous.is_some() {
        let _ = conn.execute_batch("PRAGMA synchronous=NORMAL");
    }
    previous
}

fn restore_sync(conn: &rusqlite::Connection, previous: Option<i64>) {
    if let Some(p) = previous {
        let _ = conn.pragma_update(None, "synchronous", p);
    }
}

/// True for SQLITE_BUSY / SQLITE_LOCKED: another connection held the lock past busy_timeout.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Capture {
    /// Records `table` as acknowledged through `up_to_seq` and deletes its journal rows up to
    /// there, in transactions of at most `chunk_rows` rows. Returns the number deleted. If the
    /// application keeps the write lock past the busy timeout, deletion stops early (the
    /// application wins) and the remainder goes with a later `ack` / [`Capture::delete_acked`].
    pub fn ack(
        &mut self,
        state: &StateDb,
        table: &str,
        up_to_seq: i64,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        // Cursor first: if we crash before the delete, the rows are skipped by the reader and
        // removed by the next ack; the opposite order could re-send nothing but lose the cursor.
        state.set_last_acked(table, up_to_seq)?;
        self.delete_acked(state, table, chunk_rows)
    }

    /// [`Capture::ack`] for a batch fixed in journal epoch `epoch`: when that is no longer the
    /// current epoch, neither the cursor moves nor anything is deleted (`None`) — the batch's
    /// commit_seqs belong to a journal that was reset, and the new epoch's seqs restart.
    pub fn ack_in_epoch(
        &mut self,
        state: &StateDb,
        epoch: uuid::Uuid,
        table: &str,
        up_to_seq: i64,
        chunk_rows: usize,
    ) -> Result<Option<usize>, CaptureError> {
        if !state.set_last_acked_in_epoch(table, up_to_seq, epoch)? {
            return Ok(None);
        }
        self.delete_acked(state, table, chunk_rows).map(Some)
    }

    /// Deletes rows of `table` at or below its acknowledged cursor, in small transactions.
    pub fn delete_acked(
        &mut self,
        state: &StateDb,
        table: &str,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let up_to = state.last_acked(table)?;
        let ids = self.schema_ids_of(table);
        self.delete_where(&ids, 0, up_to, chunk_rows)
    }

    /// Deletes journal rows of the given schema ids with `lo < commit_seq <= hi`, never the row
    /// holding the journal's maximum (the floor that keeps commit_seq from repeating).
    pub(crate) fn delete_where(
        &mut self,
        schema_ids: &[i64],
        lo: i64,
        hi: i64,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        if schema_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = schema_ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "DELETE FROM \"__omega_journal\" WHERE commit_seq IN (SELECT commit_seq FROM \
             \"__omega_journal\" WHERE commit_seq > ?1 AND commit_seq <= ?2 AND schema_id IN ({}) \
             AND commit_seq < (SELECT max(commit_seq) FROM \"__omega_journal\") \
             ORDER BY commit_seq LIMIT ?3)",
            ids.join(",")
        );
        let chunk = i64::try_from(chunk_rows.max(1)).unwrap_or(i64::MAX);
        let previous = relax_sync(&self.conn);
        let result = self.delete_where_chunks(&sql, lo, hi, chunk);
        restore_sync(&self.conn, previous);
        result
    }

    fn delete_where_chunks(
        &mut self,
        sql: &str,
        lo: i64,
        hi: i64,
        chunk: i64,
    ) -> Result<usize, CaptureError> {
        let mut total = 0;
        loop {
            let step = (|| -> rusqlite::Result<usize> {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(sql, params![lo, hi, chunk])?;
                tx.commit()?;
                Ok(n)
            })();
            match step {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if is_busy(&e) => {
                    // The application held the write lock for the whole busy_timeout. The
                    // acknowledged cursor is already recorded, so the rest of the range is
                    // deleted on a later call; the application's writes take precedence.
                    debug!(deleted = total, "journal deletion deferred: database busy");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    /// Deletes the given commit_seqs (never the journal maximum), in small transactions.
    pub(crate) fn delete_seqs(
        &mut self,
        seqs: &[i64],
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let previous = relax_sync(&self.conn);
        let result = self.delete_seq_chunks(seqs, chunk_rows);
        restore_sync(&self.conn, previous);
        result
    }

    fn delete_seq_chunks(
        &mut self,
        seqs: &[i64],
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let mut total = 0;
        for chunk in seqs.chunks(chunk_rows.max(1)) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let sql = format!(
                "DELETE FROM \"__omega_journal\" WHERE commit_seq IN ({}) AND commit_seq < \
                 (SELECT max(commit_seq) FROM \"__omega_journal\")",
                list.join(",")
            );
            let step = (|| -> rusqlite::Result<usize> {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(&sql, [])?;
                tx.commit()?;
                Ok(n)
            })();
            match step {
                Ok(n) => total += n,
                // Same as in `delete_where`: redundant entries can be removed next time.
                Err(e) if is_busy(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }
}
