//! `state.db`: the agent's own bookkeeping, in a file separate from the application's database so
//! the application never contends with it and losing it is survivable (a new journal epoch; the
//! cloud deduplicates what is sent again — duplicates are harmless, loss is not).
//!
//! Holds: the journal epoch, the source database's instance id and the journal's high-water mark
//! (to detect a swapped/restored source.db or a recreated journal), per table the enrolment and
//! schema hash, last acknowledged `commit_seq`, `needs_snapshot` + snapshot cursor, pause
//! watermark; telemetry `batch_seq` + cursor; handled control ids; counters shown by `status`.
//!
//! Durability (reliability.md §1): WAL with `synchronous=FULL`, so every commit is fsynced
//! before the publish or ack it decides; only PUBACK bookkeeping commits without an fsync
//! ([`StateDb::set_commit_fsync`]), because losing it only re-sends identical bytes.
//! The outbox's tables in the same file (and its `last_ack_at` fact in `meta`) are
//! `outbox_store`'s; the oldest-pending marker (`pending_marker`) is `metrics::marker`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use edge_protocol::value::SqlValue;
use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;
use uuid::Uuid;

mod counters;
pub use self::counters::counter;

/// Errors of the state store.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("state.db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state.db holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
}

/// Current layout version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tables (
    table_name TEXT PRIMARY KEY,
    strategy TEXT NOT NULL DEFAULT 'rows',
    enrolment TEXT NOT NULL DEFAULT 'enrolled',
    reason TEXT,
    schema_hash TEXT,
    triggers_installed INTEGER NOT NULL DEFAULT 0,
    last_acked_seq INTEGER NOT NULL DEFAULT 0,
    needs_snapshot INTEGER NOT NULL DEFAULT 0,
    snapshot_cursor TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    pause_watermark INTEGER,
    pause_issued_at TEXT
);
CREATE TABLE IF NOT EXISTS telemetry (
    table_name TEXT PRIMARY KEY,
    batch_seq INTEGER NOT NULL DEFAULT 0,
    cursor_ts TEXT,
    cursor_rowid INTEGER,
    cursor_check TEXT
);
CREATE TABLE IF NOT EXISTS handled_controls (control_id TEXT PRIMARY KEY, handled_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, table_name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (name, table_name)
);
";

/// Per-table state as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub table_name: String,
    pub strategy: String,
    /// `enrolled`, `not_enrolled` or `ignored`.
    pub enrolment: String,
    pub reason: Option<String>,
    pub schema_hash: Option<String>,
    pub triggers_installed: bool,
    pub last_acked_seq: i64,
    pub needs_snapshot: bool,
    pub snapshot_cursor: Option<String>,
    pub paused: bool,
    pub pause_watermark: Option<i64>,
    pub pause_issued_at: Option<String>,
}

/// Where the telemetry reader continues (reliability.md §5): a rowid high-water mark — every row
/// with a rowid up to `rowid` was read; the timestamp is payload, not cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TelemetryCursor {
    /// The high-water mark.
    pub rowid: i64,
    /// The row at the mark when it was read, and the table's first row then: one of them
    /// changed (or `max(rowid) < rowid`) means the rowids were reused — `DELETE FROM t`, VACUUM
    /// renumbering — and the reader starts again from the first row.
    pub check: Option<RowCheck>,
    pub first: Option<RowCheck>,
    /// A cursor saved before issue 13 (`(ts, rowid)` order): the reader converts it at its next
    /// read to the largest mark below which every row had been read in that order.
    pub legacy_ts: Option<SqlValue>,
}

/// One row as the telemetry reader saw it: its rowid and a digest of its read columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowCheck {
    pub rowid: i64,
    pub digest: String,
    /// The table's telemetry schema hash (ts column + fields) the digest was taken under: after
    /// a schema or `include_columns` change the digests are not comparable and are not compared.
    #[serde(default)]
    pub schema_hash: Option<String>,
}

/// What `telemetry.cursor_check` holds (JSON).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct CursorChecks {
    check: Option<RowCheck>,
    first: Option<RowCheck>,
}

/// Telemetry progress of one table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TelemetryProgress {
    /// Last `batch_seq` used (the next batch uses `batch_seq + 1`).
    pub batch_seq: i64,
    pub cursor: Option<TelemetryCursor>,
}

/// The state store.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
}

fn table_state(r: &rusqlite::Row<'_>) -> rusqlite::Result<TableState> {
    Ok(TableState {
        table_name: r.get(0)?,
        strategy: r.get(1)?,
        enrolment: r.get(2)?,
        reason: r.get(3)?,
        schema_hash: r.get(4)?,
        triggers_installed: r.get::<_, i64>(5)? != 0,
        last_acked_seq: r.get(6)?,
        needs_snapshot: r.get::<_, i64>(7)? != 0,
        snapshot_cursor: r.get(8)?,
        paused: r.get::<_, i64>(9)? != 0,
        pause_watermark: r.get(10)?,
        pause_issued_at: r.get(11)?,
    })
}

const TABLE_COLUMNS: &str = "table_name, strategy, enrolment, reason, schema_hash, \
    triggers_installed, last_acked_seq, needs_snapshot, snapshot_cursor, paused, pause_watermark, \
    pause_issued_at";

impl StateDb {
    /// Opens (creating if needed) `state.db` at `path`.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        Self::init(Connection::open(path)?)
    }

    /// Opens an existing `state.db` read-only, as is (no layout change): the metrics endpoint's
    /// own connection beside the daemon's (WAL: readers never block the writer).
    pub fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(1))?;
        // A reader beside the daemon: a small page cache (KiB) keeps it light.
        conn.pragma_update(None, "cache_size", -128)?;
        Ok(StateDb { conn })
    }

    /// A throwaway state store (tests, `check`).
    pub fn open_in_memory() -> Result<StateDb, StateError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<StateDb, StateError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL + FULL (reliability.md §1): every commit fsyncs the WAL before it returns, so
        // what decides the next publish (outbox rows, telemetry batch_seq and cursor, a
        // control's effect and handled id) is on disk before the batch or the ack goes out. A
        // power loss can then only lose a transaction whose result nobody has seen. The one
        // frequent commit that needs no fsync (a loop turn's PUBACKs: losing it only re-sends
        // identical bytes) opts out with [`StateDb::set_commit_fsync`].
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        conn.execute_batch(SCHEMA)?;
        // Issue 13 (telemetry rowid cursor): `cursor_check` on a state.db made before it.
        let has_check: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('telemetry') WHERE name = 'cursor_check'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_check {
            conn.execute_batch("ALTER TABLE telemetry ADD COLUMN cursor_check TEXT;")?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        crate::blocks::init(&conn)?;
        Ok(StateDb { conn })
    }

    /// `PRAGMA synchronous` in effect on the connection (2 = FULL, 1 = NORMAL).
    pub fn synchronous(&self) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    /// `true`: commits fsync the WAL (`synchronous=FULL`, the default); `false`: NORMAL. Off
    /// only around commits whose loss at a power cut re-sends identical bytes (PUBACK
    /// bookkeeping); the next FULL commit fsyncs the WAL, and those frames with it.
    pub fn set_commit_fsync(&self, on: bool) -> Result<(), StateError> {
        self.conn.execute_batch(if on {
            "PRAGMA synchronous=FULL;"
        } else {
            "PRAGMA synchronous=NORMAL;"
        })?;
        Ok(())
    }

    /// The underlying connection, for the outbox's tables (`outbox_store`).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A fact of the one `meta` table (`journal_epoch`, `db_instance_id`, `journal_high_water`,
    /// the outbox's `last_ack_at`).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        // Cached: `last_ack_at` is written once per loop turn that saw a PUBACK.
        self.conn
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES(?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// The current journal epoch, if one was started.
    pub fn journal_epoch(&self) -> Result<Option<Uuid>, StateError> {
        match self.meta("journal_epoch")? {
            None => Ok(None),
            Some(text) => Uuid::parse_str(&text)
                .map(Some)
                .map_err(|_| StateError::Corrupt {
                    what: "journal_epoch",
                    value: text,
                }),
        }
    }

    /// Starts a new journal epoch: every acknowledged cursor goes back to 0 because commit_seq
    /// values of the old epoch mean nothing in the new one. Counted in `epochs_started`.
    pub fn start_new_epoch(&mut self, epoch: Uuid) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES('journal_epoch', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [epoch.to_string()],
        )?;
        tx.execute("UPDATE tables SET last_acked_seq = 0", [])?;
        tx.execute(
            "INSERT INTO counters(name, table_name, value) VALUES(?1, '', 1) \
             ON CONFLICT(name, table_name) DO UPDATE SET value = value + 1",
            [counter::EPOCHS_STARTED],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The `__omega_db_instance` id of the source database this state belongs to.
    pub fn db_instance_id(&self) -> Result<Option<String>, StateError> {
        self.meta("db_instance_id")
    }

    pub fn set_db_instance_id(&self, id: &str) -> Result<(), StateError> {
        self.set_meta("db_instance_id", id)
    }

    /// Highest commit_seq ever seen in the journal of this epoch (journal reset detection).
    pub fn journal_high_water(&self) -> Result<i64, StateError> {
        match self.meta("journal_high_water")? {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| StateError::Corrupt {
                what: "journal_high_water",
                value: v,
            }),
        }
    }

    pub fn set_journal_high_water(&self, seq: i64) -> Result<(), StateError> {
        self.set_meta("journal_high_water", &seq.to_string())
    }

    /// The state of one table, if the agent has seen it.
    pub fn table(&self, table: &str) -> Result<Option<TableState>, StateError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TABLE_COLUMNS} FROM tables WHERE table_name = ?1"),
                [table],
                table_state,
            )
            .optional()?)
    }

    /// Every table the agent has seen, by name.
    pub fn tables(&self) -> Result<Vec<TableState>, StateError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {TABLE_COLUMNS} FROM tables ORDER BY table_name"
        ))?;
        let rows = stmt.query_map([], table_state)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The tables paused by `pause_lineage`.
    pub fn paused_tables(&self) -> Result<BTreeSet<String>, StateError> {
        Ok(self
            .tables()?
            .into_iter()
            .filter(|t| t.paused)
            .map(|t| t.table_name)
            .collect())
    }

    /// Records the enrolment decision for a table (inserting it on first sight).
    pub fn record_enrolment(
        &self,
        table: &str,
        strategy: &str,
        enrolment: &str,
        reason: Option<&str>,
        schema_hash: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO tables(table_name, strategy, enrolment, reason, schema_hash) \
             VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(table_name) DO UPDATE SET \
             strategy = excluded.strategy, enrolment = excluded.enrolment, \
             reason = excluded.reason, schema_hash = excluded.schema_hash",
            params![table, strategy, enrolment, reason, schema_hash],
        )?;
        Ok(())
    }

    /// Forgets a table that no longer exists in the source database.
    pub fn remove_table(&self, table: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM tables WHERE table_name = ?1", [table])?;
        Ok(())
    }

    pub fn set_triggers_installed(&self, table: &str, installed: bool) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE tables SET triggers_installed = ?2 WHERE table_name = ?1",
            params![table, installed],
        )?;
        Ok(())
    }

    /// Last acknowledged commit_seq of `table` (0 when none).
    pub fn last_acked(&self, table: &str) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_acked_seq FROM tables WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Every table's acknowledged cursor.
    pub fn acked_cursors(&self) -> Result<BTreeMap<String, i64>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT table_name, last_acked_seq FROM tables")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
    }

    /// Moves the acknowledged cursor like [`StateDb::set_last_acked`], but only while `epoch`
    /// is still the journal epoch (checked in the same statement). Returns whether it moved.
    /// A batch fixed in an earlier epoch may be acknowledged after a new epoch started; its
    /// commit_seqs mean nothing in the new epoch (they restart), so it must not move the new
    /// epoch's cursor — that would skip, and let `delete_acked` delete, new entries.
    pub fn set_last_acked_in_epoch(
        &self,
        table: &str,
        seq: i64,
        epoch: Uuid,
    ) -> Result<bool, StateError> {
        // Cached statements: these two run once per PUBACK.
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO tables(table_name, last_acked_seq) \
                 SELECT ?1, ?2 WHERE (SELECT value FROM meta WHERE key = 'journal_epoch') = ?3 \
                 ON CONFLICT(table_name) DO UPDATE SET \
                 last_acked_seq = max(last_acked_seq, excluded.last_acked_seq)",
            )?
            .execute(params![table, seq, epoch.to_string()])?;
        Ok(n > 0)
    }

    /// Moves the acknowledged cursor forward (never backwards: acks may arrive out of order).
    pub fn set_last_acked(&self, table: &str, seq: i64) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO tables(table_name, last_acked_seq) VALUES(?1, ?2) \
             ON CONFLICT(table_name) DO UPDATE SET \
             last_acked_seq = max(last_acked_seq, excluded.last_acked_seq)",
            params![table, seq],
        )?;
        Ok(())
    }

    /// Marks (or clears) `table`'s pending snapshot; the cursor restarts. A marked run in
    /// progress (edge-policies §5: its cursor holds `run`) is replaced by the new one: its cursor
    /// keeps only `{"abort": run}`, so the next snapshot step sends its `aborted` end marker
    /// before starting afresh (`capture::snapshot`). Clearing drops the cursor.
    pub fn set_needs_snapshot(&self, table: &str, needs: bool) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO tables(table_name, needs_snapshot) VALUES(?1, ?2) \
             ON CONFLICT(table_name) DO UPDATE SET needs_snapshot = excluded.needs_snapshot, \
             snapshot_cursor = CASE \
               WHEN NOT excluded.needs_snapshot OR NOT json_valid(snapshot_cursor) THEN NULL \
               WHEN json_type(snapshot_cursor, '$.run') = 'object' \
                 THEN json_object('abort', json_extract(snapshot_cursor, '$.run')) \
               WHEN json_type(snapshot_cursor, '$.abort') = 'object' \
                 THEN json_object('abort', json_extract(snapshot_cursor, '$.abort')) \
               ELSE NULL END",
            params![table, needs],
        )?;
        Ok(())
    }

    pub fn set_snapshot_cursor(&self, table: &str, cursor: Option<&str>) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE tables SET snapshot_cursor = ?2 WHERE table_name = ?1",
            params![table, cursor],
        )?;
        Ok(())
    }

    /// Remembers a `pause_lineage` (protocol §6).
    pub fn set_paused(
        &self,
        table: &str,
        watermark: i64,
        issued_at: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO tables(table_name, paused, pause_watermark, pause_issued_at) \
             VALUES(?1, 1, ?2, ?3) ON CONFLICT(table_name) DO UPDATE SET paused = 1, \
             pause_watermark = excluded.pause_watermark, pause_issued_at = excluded.pause_issued_at",
            params![table, watermark, issued_at],
        )?;
        Ok(())
    }

    /// Clears a pause (`resume_lineage`), keeping the watermark for `status`.
    pub fn clear_paused(&self, table: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE tables SET paused = 0 WHERE table_name = ?1",
            [table],
        )?;
        Ok(())
    }

    pub fn is_control_handled(&self, control_id: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM handled_controls WHERE control_id = ?1",
                [control_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn mark_control_handled(&self, control_id: &str, at_ms: i64) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO handled_controls(control_id, handled_at_ms) VALUES(?1, ?2)",
            params![control_id, at_ms],
        )?;
        Ok(())
    }

    pub fn telemetry_progress(&self, table: &str) -> Result<TelemetryProgress, StateError> {
        type Saved = (i64, Option<String>, Option<i64>, Option<String>);
        let row: Option<Saved> = self
            .conn
            .query_row(
                "SELECT batch_seq, cursor_ts, cursor_rowid, cursor_check FROM telemetry \
                 WHERE table_name = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((batch_seq, ts, rowid, checks)) = row else {
            return Ok(TelemetryProgress::default());
        };
        let corrupt = |value: &str| StateError::Corrupt {
            what: "telemetry cursor",
            value: value.to_owned(),
        };
        let cursor = match (rowid, checks, ts) {
            (None, _, _) => None,
            (Some(rowid), Some(checks), _) => {
                let c: CursorChecks =
                    serde_json::from_str(&checks).map_err(|_| corrupt(&checks))?;
                Some(TelemetryCursor {
                    rowid,
                    check: c.check,
                    first: c.first,
                    legacy_ts: None,
                })
            }
            // Saved by an agent before issue 13: `(ts, rowid)`.
            (Some(rowid), None, Some(ts)) => {
                let ts: SqlValue = serde_json::from_str(&ts).map_err(|_| corrupt(&ts))?;
                Some(TelemetryCursor {
                    rowid,
                    legacy_ts: Some(ts),
                    ..TelemetryCursor::default()
                })
            }
            (Some(rowid), None, None) => Some(TelemetryCursor {
                rowid,
                ..TelemetryCursor::default()
            }),
        };
        Ok(TelemetryProgress { batch_seq, cursor })
    }

    /// Persists telemetry progress (after the batch with `batch_seq` was acknowledged, or when it
    /// was fixed in the outbox — the publisher decides).
    pub fn set_telemetry_progress(
        &self,
        table: &str,
        progress: &TelemetryProgress,
    ) -> Result<(), StateError> {
        let (ts, rowid, checks) = match &progress.cursor {
            Some(c) => {
                let corrupt = |value: String| StateError::Corrupt {
                    what: "telemetry cursor",
                    value,
                };
                let ts = match &c.legacy_ts {
                    Some(ts) => {
                        Some(serde_json::to_string(ts).map_err(|_| corrupt(ts.to_string()))?)
                    }
                    None => None,
                };
                let checks = match c.legacy_ts {
                    Some(_) => None,
                    None => Some(
                        serde_json::to_string(&CursorChecks {
                            check: c.check.clone(),
                            first: c.first.clone(),
                        })
                        .map_err(|e| corrupt(e.to_string()))?,
                    ),
                };
                (ts, Some(c.rowid), checks)
            }
            None => (None, None, None),
        };
        self.conn.execute(
            "INSERT INTO telemetry(table_name, batch_seq, cursor_ts, cursor_rowid, cursor_check) \
             VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(table_name) DO UPDATE SET \
             batch_seq = excluded.batch_seq, cursor_ts = excluded.cursor_ts, \
             cursor_rowid = excluded.cursor_rowid, cursor_check = excluded.cursor_check",
            params![table, progress.batch_seq, ts, rowid, checks],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox_store::{self, OutboxEntry};

    /// Defect 8 (reliability.md §1): with `synchronous=NORMAL` a WAL commit is not fsynced, so
    /// a power cut after a telemetry batch went out could lose its outbox row and `batch_seq`
    /// together, and the rebuilt batch reused the `batch_seq` under a new id. Every state.db
    /// commit that decides a publish is FULL (fsynced before the publish).
    #[test]
    fn telemetry_batch_seq_reused_after_power_loss_state_db_commits_are_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDb::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(
            s.synchronous().unwrap(),
            2,
            "state.db must commit with synchronous=FULL"
        );
        s.set_commit_fsync(false).unwrap();
        assert_eq!(s.synchronous().unwrap(), 1);
        s.set_commit_fsync(true).unwrap();
        assert_eq!(s.synchronous().unwrap(), 2);
    }

    #[test]
    fn cursors_only_move_forward_and_reset_on_new_epoch() {
        let mut s = StateDb::open_in_memory().unwrap();
        s.set_last_acked("t", 10).unwrap();
        s.set_last_acked("t", 5).unwrap();
        assert_eq!(s.last_acked("t").unwrap(), 10);
        let epoch = edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [1; 10]);
        s.start_new_epoch(epoch).unwrap();
        assert_eq!(s.journal_epoch().unwrap(), Some(epoch));
        assert_eq!(s.last_acked("t").unwrap(), 0);
        assert_eq!(s.counter(counter::EPOCHS_STARTED, "").unwrap(), 1);
    }

    #[test]
    fn an_ack_from_an_old_epoch_does_not_move_the_new_epochs_cursor() {
        let mut s = StateDb::open_in_memory().unwrap();
        let old = edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [1; 10]);
        let new = edge_protocol::ids::new_uuid_v7(1_700_000_000_001, [2; 10]);
        s.start_new_epoch(old).unwrap();
        assert!(s.set_last_acked_in_epoch("t", 500, old).unwrap());
        assert_eq!(s.last_acked("t").unwrap(), 500);
        s.start_new_epoch(new).unwrap();
        // A batch of the old epoch (seqs up to 900) is acknowledged late.
        assert!(!s.set_last_acked_in_epoch("t", 900, old).unwrap());
        assert!(!s.set_last_acked_in_epoch("u", 900, old).unwrap());
        assert_eq!(s.last_acked("t").unwrap(), 0);
        assert_eq!(s.last_acked("u").unwrap(), 0);
        assert!(s.set_last_acked_in_epoch("t", 3, new).unwrap());
        assert_eq!(s.last_acked("t").unwrap(), 3);
    }

    #[test]
    fn persists_everything_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let id = edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [2; 10]);
        {
            let s = StateDb::open(&path).unwrap();
            outbox_store::init(&s).unwrap();
            s.set_paused("t", 42, Some("2026-01-01T00:00:00Z")).unwrap();
            s.mark_control_handled("c1", 1).unwrap();
            s.set_telemetry_progress(
                "temps",
                &TelemetryProgress {
                    batch_seq: 7,
                    cursor: Some(TelemetryCursor {
                        rowid: 3,
                        check: Some(RowCheck {
                            rowid: 3,
                            digest: "ab".into(),
                            schema_hash: None,
                        }),
                        first: None,
                        legacy_ts: None,
                    }),
                },
            )
            .unwrap();
            outbox_store::put(
                &s,
                &OutboxEntry {
                    batch_id: id,
                    kind: "rows".into(),
                    table_name: "t".into(),
                    first_seq: 1,
                    last_seq: 2,
                    payload: b"{}".to_vec(),
                    created_at_ms: 5,
                    epoch: Some(id),
                    rows: Some(2),
                },
            )
            .unwrap();
        }
        let s = StateDb::open(&path).unwrap();
        let t = s.table("t").unwrap().unwrap();
        assert!(t.paused);
        assert_eq!(t.pause_watermark, Some(42));
        assert!(s.is_control_handled("c1").unwrap());
        assert!(!s.is_control_handled("c2").unwrap());
        let p = s.telemetry_progress("temps").unwrap();
        assert_eq!(p.batch_seq, 7);
        let c = p.cursor.unwrap();
        assert_eq!(c.rowid, 3);
        assert_eq!(c.check.unwrap().digest, "ab");
        assert!(c.legacy_ts.is_none());
        let out = outbox_store::list(&s).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].batch_id, id);
        assert_eq!(out[0].epoch, Some(id));
        assert_eq!(outbox_store::epoch(&s, id).unwrap(), Some(id));
        outbox_store::remove(&s, id).unwrap();
        assert!(outbox_store::list(&s).unwrap().is_empty());
    }
}
