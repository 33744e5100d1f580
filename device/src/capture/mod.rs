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
pub mod ident;
pub mod journal;
pub mod retention;
pub mod schema;
pub mod snapshot;
pub mod telemetry;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use thiserror::Error;
use tracing::{info, warn};
use uuid::Uuid;

use crate::settings::CaptureConfig;
use crate::state::{counter, StateDb, StateError};

pub use codec::CodecError;
use schema::{Enrolment, RowsTable, TelemetryTable};
use triggers::{CapturePlan, PlannedColumn, TriggerSql, TRIGGER_PREFIX};

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
    #[error("journal entry {commit_seq} references unknown schema_id {schema_id}")]
    UnknownSchema { commit_seq: i64, schema_id: i64 },
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

/// Why a new journal epoch is needed, decided by [`decide_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityDecision {
    /// Same database, same journal.
    Continue,
    /// Start a new epoch; `resnapshot` when the mirror may now miss rows.
    NewEpoch { resnapshot: bool, reason: String },
}

/// What the agent knows when it (re)attaches to a source database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFacts<'a> {
    pub state_has_epoch: bool,
    pub state_instance: Option<&'a str>,
    pub source_instance: &'a str,
    /// The journal table did not exist and was just created.
    pub journal_created: bool,
    pub journal_max_seq: i64,
    pub state_high_water: i64,
}

/// Decides whether the journal continues or a new epoch starts. Pure.
pub fn decide_identity(f: &IdentityFacts<'_>) -> IdentityDecision {
    if !f.state_has_epoch {
        return IdentityDecision::NewEpoch {
            resnapshot: false,
            reason: "no journal epoch in state.db (first run, or state.db was lost)".into(),
        };
    }
    match f.state_instance {
        Some(known) if known != f.source_instance => {
            return IdentityDecision::NewEpoch {
                resnapshot: true,
                reason: format!(
                    "source database instance changed ({known} -> {}): file replaced or restored",
                    f.source_instance
                ),
            }
        }
        None => {
            return IdentityDecision::NewEpoch {
                resnapshot: true,
                reason: "state.db does not know this source database".into(),
            }
        }
        Some(_) => {}
    }
    if f.journal_created {
        return IdentityDecision::NewEpoch {
            resnapshot: true,
            reason: "journal table was missing and has been recreated".into(),
        };
    }
    if f.journal_max_seq < f.state_high_water {
        return IdentityDecision::NewEpoch {
            resnapshot: true,
            reason: format!(
                "journal went backwards (max commit_seq {} < high-water {}): restored or reset",
                f.journal_max_seq, f.state_high_water
            ),
        };
    }
    IdentityDecision::Continue
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
";

#[cfg(unix)]
fn file_identity(path: &Path) -> Result<Option<(u64, u64)>, CaptureError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaptureError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Result<Option<(u64, u64)>, CaptureError> {
    Ok(None)
}

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
        let conn = open_source(path)?;
        let mut capture = Capture {
            conn,
            path: path.to_path_buf(),
            file_id: file_identity(path)?,
            config,
            catalog: Catalog::default(),
            schemas: BTreeMap::new(),
            schema_version: None,
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
            let epoch = ids.new_v7();
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
            let epoch = ids.new_v7();
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

    /// Re-reads the schema and makes the installed triggers match it (one transaction).
    pub fn sync_schema(
        &mut self,
        state: &mut StateDb,
        first_run: bool,
        report: &mut PollReport,
    ) -> Result<(), CaptureError> {
        report.schema_synced = true;
        let config = self.config.clone();
        let known: BTreeMap<String, crate::state::TableState> = state
            .tables()?
            .into_iter()
            .map(|t| (t.table_name.clone(), t))
            .collect();
        let mut catalog = Catalog::default();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let tables = schema::list_user_tables(&tx)?;
        let existing = installed_triggers(&tx)?;
        let mut desired: BTreeMap<String, (String, TriggerSql)> = BTreeMap::new();
        for info in &tables {
            match schema::enrol(info, &config.table(&info.name)) {
                Enrolment::Rows(rows) => {
                    let table_id = ensure_table_id(&tx, &info.name)?;
                    let schema_id = ensure_schema_id(&tx, &rows)?;
                    let entry = RowsEntry {
                        table: rows,
                        table_id,
                        schema_id,
                    };
                    for t in triggers::trigger_set(&entry.plan()) {
                        desired.insert(t.name.clone(), (info.name.clone(), t));
                    }
                    catalog.rows.insert(info.name.clone(), entry);
                }
                Enrolment::Telemetry(t) => {
                    catalog.telemetry.insert(info.name.clone(), t);
                }
                Enrolment::Ignored => {
                    catalog.ignored.insert(info.name.clone());
                }
                Enrolment::NotEnrolled { reason } => {
                    catalog.not_enrolled.insert(info.name.clone(), reason);
                }
            }
        }
        // A table whose triggers were installed before but none are on it now lost them with a
        // DROP TABLE (rebuild migration, or drop + create): writes in between were not captured.
        let mut rebuilt = Vec::new();
        for name in catalog.rows.keys() {
            let had = known.get(name).is_some_and(|t| t.triggers_installed);
            let has_any = existing.values().any(|(tbl, _)| tbl == name);
            if had && !has_any {
                rebuilt.push(name.clone());
            }
        }
        let mut changed_tables = BTreeSet::new();
        for (name, (tbl, sql)) in &existing {
            let keep = desired
                .get(name)
                .is_some_and(|(t, want)| t == tbl && &want.sql == sql);
            if !keep {
                tx.execute_batch(&format!(
                    "DROP TRIGGER IF EXISTS {}",
                    ident::quote_ident(name)
                ))?;
                changed_tables.insert(tbl.clone());
            }
        }
        for (name, (tbl, want)) in &desired {
            let present = existing
                .get(name)
                .is_some_and(|(t, sql)| t == tbl && sql == &want.sql);
            if !present {
                tx.execute_batch(&want.sql)?;
                changed_tables.insert(tbl.clone());
            }
        }
        tx.commit()?;
        self.schema_version = Some(self.current_schema_version()?);

        for (name, entry) in &catalog.rows {
            let prev = known.get(name);
            let hash = &entry.table.schema_hash;
            if prev.is_some_and(|p| p.schema_hash.as_deref() != Some(hash.as_str())) {
                info!(table = %name, schema_hash = %hash, "schema changed; triggers re-created");
                state.bump_counter(counter::SCHEMA_CHANGES, name, 1)?;
            }
            let newly = prev.is_none_or(|p| p.enrolment != "enrolled");
            state.record_enrolment(name, "rows", "enrolled", None, Some(hash))?;
            state.set_triggers_installed(name, true)?;
            if newly {
                info!(table = %name, "table enrolled for row capture");
                report.enrolled.push(name.clone());
                // Rows written before the triggers existed are only reachable by a snapshot; on
                // the very first run the operator decides (snapshot_on_first_run).
                let snap = if first_run {
                    config.snapshot_on_first_run
                } else {
                    true
                };
                if snap {
                    state.set_needs_snapshot(name, true)?;
                }
            }
        }
        for name in &rebuilt {
            warn!(table = %name, "capture triggers vanished (table rebuilt or dropped and \
                re-created); re-installed them and scheduled a re-snapshot");
            state.bump_counter(counter::TABLE_REBUILDS, name, 1)?;
            state.set_needs_snapshot(name, true)?;
        }
        for (name, t) in &catalog.telemetry {
            state.record_enrolment(name, "telemetry", "enrolled", None, Some(&t.schema_hash))?;
        }
        for name in &catalog.ignored {
            state.record_enrolment(name, "ignore", "ignored", None, None)?;
        }
        for (name, reason) in &catalog.not_enrolled {
            if known.get(name).and_then(|t| t.reason.as_deref()) != Some(reason.as_str()) {
                warn!(table = %name, %reason, "table not enrolled");
            }
            state.record_enrolment(name, "rows", "not_enrolled", Some(reason), None)?;
        }
        for (name, prev) in &known {
            let present = tables.iter().any(|t| &t.name == name);
            if !present && prev.enrolment != "dropped" {
                info!(table = %name, "table no longer exists; pending entries still publish");
                state.record_enrolment(name, &prev.strategy, "dropped", None, None)?;
                state.set_triggers_installed(name, false)?;
            }
        }
        report.triggers_changed = changed_tables
            .into_iter()
            .filter(|t| catalog.rows.contains_key(t))
            .collect();
        report.rebuilt = rebuilt;
        self.catalog = catalog;
        self.load_schemas()?;
        Ok(())
    }

    /// Reloads `__omega_schemas` into the cache used to decode journal entries.
    fn load_schemas(&mut self) -> Result<(), CaptureError> {
        let mut stmt = self.conn.prepare(
            "SELECT schema_id, table_name, schema_hash, columns, pk_columns, schema_columns \
             FROM \"__omega_schemas\"",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut schemas = BTreeMap::new();
        for (schema_id, table, schema_hash, columns, pk, schema_columns) in rows {
            let bad = |what: &str| CaptureError::BadEntry {
                commit_seq: 0,
                what: format!("__omega_schemas row {schema_id}: bad {what}"),
            };
            schemas.insert(
                schema_id,
                StoredSchema {
                    schema_id,
                    table,
                    schema_hash,
                    columns: serde_json::from_str(&columns).map_err(|_| bad("columns"))?,
                    pk: serde_json::from_str(&pk).map_err(|_| bad("pk_columns"))?,
                    schema_columns: serde_json::from_str(&schema_columns)
                        .map_err(|_| bad("schema_columns"))?,
                },
            );
        }
        drop(stmt);
        self.schemas = schemas;
        Ok(())
    }

    /// The stored schema `schema_id` (reloading the cache once on a miss).
    pub fn stored_schema(&mut self, schema_id: i64) -> Result<Option<&StoredSchema>, CaptureError> {
        if !self.schemas.contains_key(&schema_id) {
            self.load_schemas()?;
        }
        Ok(self.schemas.get(&schema_id))
    }

    /// All schema ids recorded for `table`.
    fn schema_ids_of(&self, table: &str) -> Vec<i64> {
        self.schemas
            .values()
            .filter(|s| s.table == table)
            .map(|s| s.schema_id)
            .collect()
    }
}

/// Triggers the agent owns: name → (table, sql).
fn installed_triggers(
    conn: &Connection,
) -> Result<BTreeMap<String, (String, String)>, CaptureError> {
    let mut stmt = conn.prepare(
        "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' \
         AND substr(name, 1, ?1) = ?2",
    )?;
    let rows = stmt
        .query_map(params![TRIGGER_PREFIX.len() as i64, TRIGGER_PREFIX], |r| {
            Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))
        })?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(rows)
}

fn ensure_table_id(conn: &Connection, table: &str) -> Result<i64, CaptureError> {
    conn.execute(
        "INSERT OR IGNORE INTO \"__omega_tables\"(table_name) VALUES(?1)",
        [table],
    )?;
    Ok(conn.query_row(
        "SELECT table_id FROM \"__omega_tables\" WHERE table_name = ?1",
        [table],
        |r| r.get(0),
    )?)
}

fn ensure_schema_id(conn: &Connection, rows: &RowsTable) -> Result<i64, CaptureError> {
    let columns: Vec<&str> = rows.captured.iter().map(|c| c.name.as_str()).collect();
    let columns = serde_json::Value::from(columns).to_string();
    let pk = serde_json::Value::from(rows.pk.clone()).to_string();
    conn.execute(
        "INSERT OR IGNORE INTO \"__omega_schemas\"(table_name, schema_hash, columns, pk_columns, \
         schema_columns) VALUES(?1, ?2, ?3, ?4, ?5)",
        params![
            rows.info.name,
            rows.schema_hash,
            columns,
            pk,
            rows.schema.canonical_json()
        ],
    )?;
    Ok(conn.query_row(
        "SELECT schema_id FROM \"__omega_schemas\" WHERE table_name = ?1 AND schema_hash = ?2 \
         AND columns = ?3",
        params![rows.info.name, rows.schema_hash, columns],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> IdentityFacts<'static> {
        IdentityFacts {
            state_has_epoch: true,
            state_instance: Some("a"),
            source_instance: "a",
            journal_created: false,
            journal_max_seq: 10,
            state_high_water: 10,
        }
    }

    #[test]
    fn identity_decisions() {
        assert_eq!(decide_identity(&facts()), IdentityDecision::Continue);
        let lost = IdentityFacts {
            state_has_epoch: false,
            state_instance: None,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&lost),
            IdentityDecision::NewEpoch {
                resnapshot: false,
                ..
            }
        ));
        let swapped = IdentityFacts {
            source_instance: "b",
            ..facts()
        };
        assert!(matches!(
            decide_identity(&swapped),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
        let recreated = IdentityFacts {
            journal_created: true,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&recreated),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
        let backwards = IdentityFacts {
            journal_max_seq: 3,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&backwards),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
    }

    #[test]
    fn blob_guard_only_skipped_for_typed_strict_columns() {
        assert!(may_hold_blob(false, "INTEGER"));
        assert!(may_hold_blob(true, "ANY"));
        assert!(may_hold_blob(true, "blob"));
        assert!(!may_hold_blob(true, "INTEGER"));
        assert!(!may_hold_blob(true, "TEXT"));
    }
}
