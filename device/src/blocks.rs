//! Tables the device blocked itself (reliability.md §2 "Blocked tables", §6): a journal entry it
//! cannot decode, a row too large for the cloud's per-line limit, an upload the cloud refused for
//! good. A blocked table is not published — like a pause, but set by the device — while every
//! other table keeps syncing; its journal rows stay until an operator decides (`unblock_table`):
//! `retry` clears the block and reads the table again from its acknowledged cursor, `skip` drops
//! exactly the blocking entry (the cloud records it as a dead letter `skipped_by_operator` with
//! the entry's bytes, which the block keeps for that purpose).
//!
//! State lives in `state.db`: `blocked_tables` (one row per blocked table: reason, the entry's
//! `commit_seq`, its bytes), `skipped_entries` (entries an operator skipped, per journal
//! epoch: the reader passes over them as if they produced no change, and a later
//! acknowledgement of the table deletes them with the rest) and `skip_acks` (the skipped block
//! by control id, so a redelivered control's ack carries the entry again). Both are created by
//! [`StateDb::open`](crate::state::StateDb::open) through [`init`] (idempotent, so any earlier
//! `state.db` gains them in place).
//!
//! Every function here is one statement (or reads); the caller that must commit an effect with
//! something else (a control's handled id) wraps the calls in its state.db transaction.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension};

use crate::state::{StateDb, StateError};

/// Reason: a row whose line exceeds the cloud's per-line limit (checked before upload).
pub const SPILL_ROW_TOO_LARGE: &str = "spill_row_too_large";
/// Reason: a journal entry the reader cannot decode.
pub const UNDECODABLE_JOURNAL_ENTRY: &str = "undecodable_journal_entry";
/// Prefix of the reason for an upload the cloud refused for good (`upload_failed:<code>`).
pub const UPLOAD_FAILED_PREFIX: &str = "upload_failed:";

/// The reason for a non-retryable `upload_result` with `code`.
pub fn upload_failed(code: &str) -> String {
    format!("{UPLOAD_FAILED_PREFIX}{code}")
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blocked_tables (
    table_name TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    commit_seq INTEGER NOT NULL,
    detail TEXT,
    entry BLOB,
    blocked_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped_entries (
    epoch TEXT NOT NULL,
    table_name TEXT NOT NULL,
    commit_seq INTEGER NOT NULL,
    skipped_at_ms INTEGER NOT NULL,
    PRIMARY KEY (epoch, table_name, commit_seq)
);
CREATE TABLE IF NOT EXISTS skip_acks (
    control_id TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    commit_seq INTEGER NOT NULL,
    detail TEXT,
    entry BLOB,
    blocked_at_ms INTEGER NOT NULL
);
";

/// Creates the tables (idempotent); called when `state.db` is opened.
pub fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// One blocked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: String,
    /// [`SPILL_ROW_TOO_LARGE`], [`UNDECODABLE_JOURNAL_ENTRY`], [`upload_failed`]`(code)`, …
    pub reason: String,
    /// The blocking journal entry's `commit_seq`.
    pub commit_seq: i64,
    /// A human-readable detail (the decode error, the cloud's message), for `status` and logs.
    pub detail: Option<String>,
    /// The entry's bytes, sent to the cloud when an operator skips it.
    pub entry: Option<Vec<u8>>,
    pub blocked_at_ms: i64,
}

/// The operator's decision (`unblock_table.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unblock {
    /// Clear the block and read the table again (the entry is tried once more).
    Retry,
    /// Drop exactly the entry `commit_seq` (it must be the blocking one).
    Skip { commit_seq: i64 },
}

/// What [`unblock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnblockOutcome {
    /// The table was not blocked: nothing changed.
    NotBlocked,
    /// `skip` named another entry than the blocking one: nothing changed.
    SeqMismatch { blocked_seq: i64 },
    /// The block is cleared; the table reads again from its acknowledged cursor.
    Retried(Block),
    /// The block is cleared and its entry recorded as skipped.
    Skipped(Block),
}

fn block_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    Ok(Block {
        table: r.get(0)?,
        reason: r.get(1)?,
        commit_seq: r.get(2)?,
        detail: r.get(3)?,
        entry: r.get(4)?,
        blocked_at_ms: r.get(5)?,
    })
}

const COLUMNS: &str = "table_name, reason, commit_seq, detail, entry, blocked_at_ms";

/// The parts of a new block.
#[derive(Debug, Clone, Copy)]
pub struct NewBlock<'a> {
    pub table: &'a str,
    pub reason: &'a str,
    pub commit_seq: i64,
    pub detail: Option<&'a str>,
    pub entry: Option<&'a [u8]>,
    pub at_ms: i64,
}

/// Blocks a table. A table already blocked keeps its first block (the operator decides about
/// that entry first; a later one is found again after the decision). Returns whether the block
/// is new.
pub fn block(state: &StateDb, b: &NewBlock<'_>) -> Result<bool, StateError> {
    let n = state.conn().execute(
        "INSERT INTO blocked_tables(table_name, reason, commit_seq, detail, entry, blocked_at_ms) \
         VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(table_name) DO NOTHING",
        params![b.table, b.reason, b.commit_seq, b.detail, b.entry, b.at_ms],
    )?;
    Ok(n > 0)
}

/// The block of `table`, if any.
pub fn get(state: &StateDb, table: &str) -> Result<Option<Block>, StateError> {
    Ok(state
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM blocked_tables WHERE table_name = ?1"),
            [table],
            block_row,
        )
        .optional()?)
}

/// Every block, by table name.
pub fn list(state: &StateDb) -> Result<Vec<Block>, StateError> {
    let mut stmt = state.conn().prepare(&format!(
        "SELECT {COLUMNS} FROM blocked_tables ORDER BY table_name"
    ))?;
    let rows = stmt.query_map([], block_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The names of the blocked tables (the publisher skips them).
pub fn tables(state: &StateDb) -> Result<BTreeSet<String>, StateError> {
    let mut stmt = state
        .conn()
        .prepare_cached("SELECT table_name FROM blocked_tables")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<BTreeSet<_>, _>>()?)
}

/// Applies an operator's decision to `table`. `epoch` is the current journal epoch (a skipped
/// `commit_seq` means something only within it). Not a transaction of its own: a control
/// handler commits it together with the control's handled id.
pub fn unblock(
    state: &StateDb,
    table: &str,
    decision: Unblock,
    epoch: &str,
    at_ms: i64,
) -> Result<UnblockOutcome, StateError> {
    let Some(current) = get(state, table)? else {
        return Ok(UnblockOutcome::NotBlocked);
    };
    if let Unblock::Skip { commit_seq } = decision {
        if commit_seq != current.commit_seq {
            return Ok(UnblockOutcome::SeqMismatch {
                blocked_seq: current.commit_seq,
            });
        }
        state.conn().execute(
            "INSERT OR IGNORE INTO skipped_entries(epoch, table_name, commit_seq, skipped_at_ms) \
             VALUES(?1, ?2, ?3, ?4)",
            params![epoch, table, commit_seq, at_ms],
        )?;
    }
    state
        .conn()
        .execute("DELETE FROM blocked_tables WHERE table_name = ?1", [table])?;
    Ok(match decision {
        Unblock::Retry => UnblockOutcome::Retried(current),
        Unblock::Skip { .. } => UnblockOutcome::Skipped(current),
    })
}

/// Keeps the skipped block under the `unblock_table` control's id: every ack of that control
/// (a redelivery is acked again) carries the entry, until the cloud has one.
pub fn remember_skip_ack(state: &StateDb, control_id: &str, b: &Block) -> Result<(), StateError> {
    state.conn().execute(
        "INSERT OR IGNORE INTO skip_acks(control_id, table_name, reason, commit_seq, detail, \
         entry, blocked_at_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            control_id,
            b.table,
            b.reason,
            b.commit_seq,
            b.detail,
            b.entry,
            b.blocked_at_ms
        ],
    )?;
    Ok(())
}

/// The block an `unblock_table` skip with `control_id` dropped, if it was one.
pub fn skip_ack(state: &StateDb, control_id: &str) -> Result<Option<Block>, StateError> {
    Ok(state
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM skip_acks WHERE control_id = ?1"),
            [control_id],
            block_row,
        )
        .optional()?)
}

/// Entries skipped by an operator in journal epoch `epoch`, per table.
pub fn skipped(
    state: &StateDb,
    epoch: &str,
) -> Result<BTreeMap<String, BTreeSet<i64>>, StateError> {
    let mut stmt = state
        .conn()
        .prepare_cached("SELECT table_name, commit_seq FROM skipped_entries WHERE epoch = ?1")?;
    let rows = stmt.query_map([epoch], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
    let mut out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for row in rows {
        let (table, seq) = row?;
        out.entry(table).or_default().insert(seq);
    }
    Ok(out)
}

/// Forgets skipped entries the table's acknowledged cursor has passed (their journal rows are
/// deleted with the acknowledged ones) and those of other epochs.
pub fn forget_skipped(state: &StateDb, epoch: &str) -> Result<usize, StateError> {
    Ok(state.conn().execute(
        "DELETE FROM skipped_entries WHERE epoch <> ?1 OR commit_seq <= coalesce(\
         (SELECT last_acked_seq FROM tables t WHERE t.table_name = skipped_entries.table_name), 0)",
        [epoch],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(table: &'a str, reason: &'a str, seq: i64) -> NewBlock<'a> {
        NewBlock {
            table,
            reason,
            commit_seq: seq,
            detail: Some("bad value"),
            entry: Some(b"[1,Inf]"),
            at_ms: 7,
        }
    }

    #[test]
    fn a_table_keeps_its_first_block_until_an_operator_decides() {
        let s = StateDb::open_in_memory().unwrap();
        assert!(block(&s, &new("t", UNDECODABLE_JOURNAL_ENTRY, 5)).unwrap());
        assert!(!block(&s, &new("t", SPILL_ROW_TOO_LARGE, 9)).unwrap());
        assert!(block(&s, &new("u", &upload_failed("line_too_large"), 3)).unwrap());
        let b = get(&s, "t").unwrap().unwrap();
        assert_eq!(
            (b.reason.as_str(), b.commit_seq),
            (UNDECODABLE_JOURNAL_ENTRY, 5)
        );
        assert_eq!(b.entry.as_deref(), Some(&b"[1,Inf]"[..]));
        assert_eq!(
            tables(&s).unwrap(),
            BTreeSet::from(["t".into(), "u".into()])
        );
        assert_eq!(list(&s).unwrap()[1].reason, "upload_failed:line_too_large");
        assert_eq!(get(&s, "v").unwrap(), None);
    }

    #[test]
    fn retry_clears_the_block_and_skip_records_exactly_the_blocking_entry() {
        let s = StateDb::open_in_memory().unwrap();
        assert_eq!(
            unblock(&s, "t", Unblock::Retry, "e1", 1).unwrap(),
            UnblockOutcome::NotBlocked
        );
        block(&s, &new("t", UNDECODABLE_JOURNAL_ENTRY, 5)).unwrap();
        assert!(matches!(
            unblock(&s, "t", Unblock::Retry, "e1", 1).unwrap(),
            UnblockOutcome::Retried(b) if b.commit_seq == 5
        ));
        assert!(tables(&s).unwrap().is_empty());
        assert!(skipped(&s, "e1").unwrap().is_empty());
        block(&s, &new("t", UNDECODABLE_JOURNAL_ENTRY, 5)).unwrap();
        assert_eq!(
            unblock(&s, "t", Unblock::Skip { commit_seq: 6 }, "e1", 1).unwrap(),
            UnblockOutcome::SeqMismatch { blocked_seq: 5 }
        );
        assert!(get(&s, "t").unwrap().is_some());
        assert!(matches!(
            unblock(&s, "t", Unblock::Skip { commit_seq: 5 }, "e1", 1).unwrap(),
            UnblockOutcome::Skipped(b) if b.entry.is_some()
        ));
        assert!(get(&s, "t").unwrap().is_none());
        assert_eq!(
            skipped(&s, "e1").unwrap(),
            BTreeMap::from([("t".to_owned(), BTreeSet::from([5]))])
        );
        assert!(skipped(&s, "e2").unwrap().is_empty());
        // Forgotten once acknowledged past, or in another epoch.
        s.set_last_acked("t", 4).unwrap();
        assert_eq!(forget_skipped(&s, "e1").unwrap(), 0);
        s.set_last_acked("t", 5).unwrap();
        assert_eq!(forget_skipped(&s, "e1").unwrap(), 1);
    }

    #[test]
    fn blocks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = StateDb::open(&path).unwrap();
            block(&s, &new("t", SPILL_ROW_TOO_LARGE, 11)).unwrap();
        }
        let s = StateDb::open(&path).unwrap();
        assert_eq!(get(&s, "t").unwrap().unwrap().commit_seq, 11);
    }
}
