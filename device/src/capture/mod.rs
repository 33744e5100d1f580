//! Change capture on the application's `source.db` (agent.md §1, §4).
//!
//! [`Capture`] owns one connection to `source.db` and keeps the agent's objects there in sync with
//! the application's schema:
//! - `__omega_journal (commit_seq INTEGER PRIMARY KEY, schema_id, op, pk, row)` — one row per
//!   change, written by triggers inside the application's own transaction;
//! - `__omega_schemas` — `schema_id` → (table, schema_hash, captured column order, key columns);
//! - `__omega_tables` — stable small ids per table name, used to name triggers safely;
//! - `__omega_db_instance` — a random id telling this database file apart from a replacement.
//!
//! ## Why `commit_seq` never repeats without AUTOINCREMENT
//! AUTOINCREMENT costs an extra `sqlite_sequence` write per captured row. A plain rowid alias
//! takes `max(commit_seq) + 1`, which only repeats a number if the row holding the maximum is
//! deleted. So no deletion path ever removes the row with the highest `commit_seq` (it stays as a
//! floor marker, skipped by the reader through the per-table acknowledged cursor), and
//! `state.db` records the high-water mark: a journal whose maximum went *down* (restored from a
//! backup, recreated) starts a new `journal_epoch` and a re-snapshot.
//!
//! ## Schema drift
//! [`Capture::poll`] reads `PRAGMA schema_version` (one integer, no I/O beyond the header page).
//! When it moved, the desired trigger set is recomputed for every table and compared, text for
//! text, with the triggers in `sqlite_schema`; whatever differs is dropped/created in one
//! transaction. That single comparison covers ADD COLUMN (hash changes), RENAME COLUMN (SQLite
//! rewrote our trigger text), new tables, dropped tables and table rebuilds (our triggers vanished
//! with the old table: a gap in capture, so the table is re-snapshotted).

mod codec;
pub mod compat;
pub mod ident;
mod identity;
pub mod journal;
pub mod retention;
pub mod schema;
pub mod snapshot;
mod sync;
pub mod telemetry;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use thiserror::Error;
use tracing::warn;
use uuid::Uuid;

use crate::settings::CaptureConfig;
use crate::state::{StateDb, StateError};

pub use codec::CodecError;
use identity::file_identity;
pub use identity::{decide_identity, next_epoch, IdentityDecision, IdentityFacts};
use schema::{RowsTable, TelemetryTable};
use triggers::{CapturePlan, PlannedColumn};

/// How long the agent's statements wait for the application's write lock before giving up. The
/// agent's own write transactions are kept to milliseconds, so the application (which should set
/// its own busy_timeout) is never made to wait longer than that.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the capture layer.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("source database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("journal entry {commit_seq}: {source}")]
    Codec {
        commit_seq: i64,
        #[source]
        source: CodecError,
    },
    #[error("journal entry {commit_seq}: {what}")]
    BadEntry { commit_seq: i64, what: String },
    #[error("table {table:?} is not enrolled for {strategy} capture")]
    NotEnrolled {
        table: String,
        strategy: &'static str,
    },
    /// The source schema changed after the last [`Capture::poll`]: entries read now could carry
    /// a hash we believe current although the table already has new columns, and would then be
    /// published without those columns' values. The caller polls (re-fingerprints) and reads
    /// again; nothing was consumed.
    #[error("source schema changed since the last poll; poll before reading the journal")]
    SchemaChanged,
    /// The application's SQLite cannot run the triggers (reliability.md §6, [`compat`]).
    #[error("{0}")]
    UnsupportedSqlite(String),
    #[error("cannot inspect source database file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CaptureError {
    /// True when the application held the database lock past the busy timeout: nothing is
    /// wrong, retry on the next cycle.
    pub fn is_busy(&self) -> bool {
        matches!(self, CaptureError::Sqlite(e) if journal::is_busy(e))
    }
}

/// Where new ids come from: the real clock + randomness in the daemon, fixed values in tests.
pub trait IdSource {
    /// A fresh UUIDv7 (journal epochs).
    fn new_v7(&mut self) -> Uuid;
    /// A fresh random id (the database instance id).
    fn new_random(&mut self) -> Uuid;
}

/// [`IdSource`] backed by the system clock and the OS random generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemIds;

impl IdSource for SystemIds {
    fn new_v7(&mut self) -> Uuid {
        Uuid::now_v7()
    }
    fn new_random(&mut self) -> Uuid {
        // A v7 carries 74 random bits: plenty to tell database files apart.
        Uuid::now_v7()
    }
}

/// An enrolled `rows` table with the ids its triggers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsEntry {
    pub table: RowsTable,
    pub table_id: i64,
    pub schema_id: i64,
}

impl RowsEntry {
    /// The trigger-generation input for this table.
    pub fn plan(&self) -> CapturePlan {
        let strict = self.table.info.strict;
        CapturePlan {
            table: self.table.info.name.clone(),
            table_id: self.table_id,
            schema_id: self.schema_id,
            columns: self
                .table
                .captured
                .iter()
                .map(|c| PlannedColumn {
                    name: c.name.clone(),
                    may_hold_blob: may_hold_blob(strict, &c.decl_type),
                    may_hold_real: may_hold_real(strict, &c.decl_type),
                })
                .collect(),
            pk: self.table.pk.clone(),
        }
    }
}

/// Only typed STRICT columns are guaranteed blob-free; any column of an ordinary table can hold a
/// blob whatever its declared type (affinity never converts blobs).
pub fn may_hold_blob(strict: bool, decl_type: &str) -> bool {
    if !strict {
        return true;
    }
    matches!(
        decl_type.trim().to_ascii_uppercase().as_str(),
        "ANY" | "BLOB"
    )
}

/// Only STRICT columns of a non-REAL, non-ANY type are guaranteed REAL-free (a STRICT INTEGER
/// column converts a lossless REAL to an integer and refuses others); any column of an ordinary
/// table can hold a REAL whatever its declared type.
pub fn may_hold_real(strict: bool, decl_type: &str) -> bool {
    if !strict {
        return true;
    }
    matches!(
        decl_type.trim().to_ascii_uppercase().as_str(),
        "ANY" | "REAL"
    )
}

/// The current enrolment of every discovered table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub rows: BTreeMap<String, RowsEntry>,
    pub telemetry: BTreeMap<String, TelemetryTable>,
    /// Table → why it is not captured.
    pub not_enrolled: BTreeMap<String, String>,
    pub ignored: BTreeSet<String>,
}

/// One stored layout of a row image (`__omega_schemas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    pub schema_id: i64,
    pub table: String,
    pub schema_hash: String,
    /// Column names in row-image order.
    pub columns: Vec<String>,
    /// Key column names in key order.
    pub pk: Vec<String>,
    pub schema_columns: edge_protocol::fingerprint::SchemaColumns,
}

/// What one [`Capture::poll`] did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// The source file was replaced and reopened.
    pub reopened: bool,
    /// A new epoch was started, with the reason.
    pub new_epoch: Option<String>,
    /// The schema was re-synchronised.
    pub schema_synced: bool,
    /// Tables whose triggers were (re)created.
    pub triggers_changed: Vec<String>,
    /// Tables whose triggers had vanished (rebuild / drop + create): re-snapshot scheduled.
    pub rebuilt: Vec<String>,
    /// Tables that just got enrolled.
    pub enrolled: Vec<String>,
}

const BOOKKEEPING: &str = "
CREATE TABLE IF NOT EXISTS \"__omega_db_instance\" (id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS \"__omega_tables\" (
    table_id INTEGER PRIMARY KEY, table_name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS \"__omega_schemas\" (
    schema_id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    schema_hash TEXT NOT NULL,
    columns TEXT NOT NULL,
    pk_columns TEXT NOT NULL,
    schema_columns TEXT NOT NULL,
    UNIQUE (table_name, schema_hash, columns));
CREATE TABLE IF NOT EXISTS \"__omega_journal\" (
    commit_seq INTEGER PRIMARY KEY,
    schema_id INTEGER NOT NULL,
    op INTEGER NOT NULL,
    pk TEXT,
    row TEXT);
CREATE INDEX IF NOT EXISTS \"__omega_journal_markers\" ON \"__omega_journal\"(commit_seq)
    WHERE op = 4;
";

/// Opens a connection to the source database configured the way the agent needs it.
pub fn open_source(path: &Path) -> Result<Connection, CaptureError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets the application keep reading while the agent writes, and turns the agent's
    // journal deletions into short appends the application's writer merely queues behind.
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    Ok(conn)
}

/// Capture on one source database.
#[derive(Debug)]
pub struct Capture {
    conn: Connection,
    path: PathBuf,
    file_id: Option<(u64, u64)>,
    config: CaptureConfig,
    catalog: Catalog,
    schemas: BTreeMap<i64, StoredSchema>,
    schema_version: Option<i64>,
    /// The file header's last-writer SQLite version, read before our connection opened it
    /// ([`compat`]).
    header_version: Option<u32>,
}

/// [`compat::header_writer_version`] of `path`, as a capture error.
fn header_version_of(path: &Path) -> Result<Option<u32>, CaptureError> {
    compat::header_writer_version(path).map_err(|source| CaptureError::File {
        path: path.to_path_buf(),
        source,
    })
}

impl Capture {
    /// Attaches to `source.db`: creates the bookkeeping objects, checks the database's identity
    /// against `state.db` (new epoch when needed) and installs triggers.
    pub fn open(
        path: &Path,
        config: CaptureConfig,
        state: &mut StateDb,
        ids: &mut dyn IdSource,
    ) -> Result<(Capture, PollReport), CaptureError> {
        // Before our connection writes anything (`journal_mode=WAL` may rewrite page 1).
        let header_version = header_version_of(path)?;
        let conn = open_source(path)?;
        let mut capture = Capture {
            conn,
            path: path.to_path_buf(),
            file_id: file_identity(path)?,
            config,
            catalog: Catalog::default(),
            schemas: BTreeMap::new(),
            schema_version: None,
            header_version,
        };
        let mut report = PollReport::default();
        capture.attach(state, ids, &mut report)?;
        Ok((capture, report))
    }

    /// The connection to `source.db` (read-only use by callers, please).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The current enrolment.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The configuration in effect.
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// One agent cycle's worth of checks: a replaced file, a changed schema, a reset journal.
    pub fn poll(
        &mut self,
        state: &mut StateDb,
        ids: &mut dyn IdSource,
    ) -> Result<PollReport, CaptureError> {
        let mut report = PollReport::default();
        let now_id = file_identity(&self.path)?;
        if now_id.is_some() && now_id != self.file_id {
            warn!(path = %self.path.display(), "source database file was replaced; reopening");
            // Closing normally would checkpoint and then unlink `source.db-wal` *by path* —
            // which by now may be the new database's live WAL. Close the old file without
            // touching anything at the path, and only then open the new one.
            let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
            old.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )?;
            drop(old);
            self.header_version = header_version_of(&self.path)?;
            self.conn = open_source(&self.path)?;
            self.file_id = now_id;
            self.schema_version = None;
            self.schemas.clear();
            report.reopened = true;
            self.attach(state, ids, &mut report)?;
            return Ok(report);
        }
        let version = self.current_schema_version()?;
        if Some(version) != self.schema_version {
            // Bookkeeping tables may have been dropped by someone; re-check identity too.
            self.attach(state, ids, &mut report)?;
            return Ok(report);
        }
        let max = self.journal_max_seq()?;
        let high = state.journal_high_water()?;
        if max < high {
            let epoch = next_epoch(state.journal_epoch()?, ids.new_v7());
            let reason =
                format!("journal went backwards (max commit_seq {max} < high-water {high})");
            warn!(%epoch, %reason, "starting a new journal epoch");
            state.start_new_epoch(epoch)?;
            state.set_journal_high_water(max)?;
            self.resnapshot_all(state)?;
            report.new_epoch = Some(reason);
        } else if max > high {
            state.set_journal_high_water(max)?;
        }
        Ok(report)
    }

    fn current_schema_version(&self) -> Result<i64, CaptureError> {
        Ok(self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))?)
    }

    /// Highest commit_seq in the journal (0 when empty).
    pub fn journal_max_seq(&self) -> Result<i64, CaptureError> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(commit_seq), 0) FROM \"__omega_journal\"",
            [],
            |r| r.get(0),
        )?)
    }

    fn attach(
        &mut self,
        state: &mut StateDb,
        ids: &mut dyn IdSource,
        report: &mut PollReport,
    ) -> Result<(), CaptureError> {
        let journal_existed = self.table_exists("__omega_journal")?;
        if !journal_existed {
            let why =
                compat::refuse_app_sqlite(self.header_version, self.config.app_sqlite_has_json1);
            if let Some(why) = why {
                return Err(CaptureError::UnsupportedSqlite(why));
            }
        }
        self.with_immediate(|tx| tx.execute_batch(BOOKKEEPING))?;
        let instance = match self
            .conn
            .query_row("SELECT id FROM \"__omega_db_instance\" LIMIT 1", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            Some(id) => id,
            None => {
                let id = ids.new_random().to_string();
                self.conn
                    .execute("INSERT INTO \"__omega_db_instance\"(id) VALUES(?1)", [&id])?;
                id
            }
        };
        let state_instance = state.db_instance_id()?;
        let journal_max_seq = self.journal_max_seq()?;
        let facts = IdentityFacts {
            state_has_epoch: state.journal_epoch()?.is_some(),
            state_instance: state_instance.as_deref(),
            source_instance: &instance,
            journal_created: !journal_existed,
            journal_max_seq,
            state_high_water: state.journal_high_water()?,
        };
        let decision = decide_identity(&facts);
        let mut first_run = false;
        let mut resnapshot = false;
        if let IdentityDecision::NewEpoch {
            resnapshot: r,
            reason,
        } = decision
        {
            let epoch = next_epoch(state.journal_epoch()?, ids.new_v7());
            warn!(%epoch, %reason, "starting a new journal epoch");
            state.start_new_epoch(epoch)?;
            first_run = !facts.state_has_epoch;
            resnapshot = r;
            report.new_epoch = Some(reason);
        }
        state.set_db_instance_id(&instance)?;
        state.set_journal_high_water(journal_max_seq)?;
        self.sync_schema(state, first_run, report)?;
        if resnapshot {
            self.resnapshot_all(state)?;
        }
        Ok(())
    }

    fn resnapshot_all(&self, state: &StateDb) -> Result<(), CaptureError> {
        for table in self.catalog.rows.keys() {
            state.set_needs_snapshot(table, true)?;
        }
        Ok(())
    }

    fn table_exists(&self, name: &str) -> Result<bool, CaptureError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction: the write lock is taken up front (waiting
    /// under busy_timeout) instead of upgrading a read transaction, which SQLite may refuse
    /// with SQLITE_BUSY without waiting.
    fn with_immediate<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, CaptureError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_guard_only_skipped_for_typed_strict_columns() {
        assert!(may_hold_blob(false, "INTEGER"));
        assert!(may_hold_blob(true, "ANY"));
        assert!(may_hold_blob(true, "blob"));
        assert!(!may_hold_blob(true, "INTEGER"));
        assert!(!may_hold_blob(true, "TEXT"));
        assert!(may_hold_real(false, "INTEGER"));
        assert!(may_hold_real(true, "real"));
        assert!(may_hold_real(true, "ANY"));
        assert!(!may_hold_real(true, "INT"));
        assert!(!may_hold_real(true, "TEXT"));
    }
}
