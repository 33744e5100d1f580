//! Shared helpers for the capture tests: temp databases, deterministic ids, and a replayer that
//! applies journal changes (as the publisher would hand them to the cloud) to an empty copy.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

use edge_agent::capture::journal::{PendingRead, ReadOptions};
use edge_agent::capture::{Capture, IdSource};
use edge_agent::settings::CaptureConfig;
use edge_agent::state::StateDb;
use edge_protocol::batch::{Op, RowChange};
use edge_protocol::ids::new_uuid_v7;
use edge_protocol::value::SqlValue;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};
use uuid::Uuid;

/// Deterministic ids: a counter in the random bits.
#[derive(Debug, Default)]
pub struct TestIds(pub u64);

impl IdSource for TestIds {
    fn new_v7(&mut self) -> Uuid {
        self.0 += 1;
        let mut r = [0u8; 10];
        r[..8].copy_from_slice(&self.0.to_be_bytes());
        new_uuid_v7(1_700_000_000_000 + self.0, r)
    }
    fn new_random(&mut self) -> Uuid {
        self.new_v7()
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ids: TestIds,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            ids: TestIds::default(),
        }
    }
    pub fn source_path(&self) -> PathBuf {
        self.dir.path().join("source.db")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
    /// The application's connection.
    pub fn app(&self) -> Connection {
        let c = Connection::open(self.source_path()).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        c
    }
    pub fn state(&self) -> StateDb {
        StateDb::open(&self.state_path()).unwrap()
    }
    pub fn capture(&mut self, state: &mut StateDb, config: CaptureConfig) -> Capture {
        let (c, _) = Capture::open(&self.source_path(), config, state, &mut self.ids).unwrap();
        c
    }
}

pub fn no_snapshot() -> CaptureConfig {
    CaptureConfig {
        snapshot_on_first_run: false,
        ..CaptureConfig::default()
    }
}

pub fn to_sql(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(*i),
        SqlValue::Real(f) => Value::Real(*f),
        SqlValue::Text(s) => Value::Text(s.clone()),
        SqlValue::Blob(b) => Value::Blob(b.clone()),
    }
}

pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Everything pending, read through the public reader.
pub fn read_all(capture: &mut Capture, state: &StateDb) -> PendingRead {
    capture
        .read_pending(
            state,
            &ReadOptions {
                after_seq: 0,
                max_entries: 1_000_000,
                skip_tables: Default::default(),
            },
        )
        .unwrap()
}

/// Changes of one table, in commit order, after a JSON round trip (what the cloud would see).
pub fn changes_of(read: &PendingRead, table: &str) -> Vec<RowChange> {
    let mut out: Vec<RowChange> = read
        .groups
        .iter()
        .filter(|g| g.table == table)
        .flat_map(|g| g.changes.iter().map(|c| c.change().unwrap()))
        .collect();
    out.sort_by_key(|c| c.commit_seq);
    out.into_iter()
        .map(|c| serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap())
        .collect()
}

/// Applies changes to `table` in `target` the way a mirror would: insert/update upsert the full
/// row, delete removes the key.
pub fn replay(target: &Connection, table: &str, changes: &[RowChange]) {
    for c in changes {
        match c.op {
            Op::Insert | Op::Update => {
                let row = c.row.as_ref().unwrap();
                let cols: Vec<String> = row.keys().map(|k| q(k)).collect();
                let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
                    q(table),
                    cols.join(", "),
                    marks.join(", ")
                );
                target
                    .execute(&sql, params_from_iter(row.values().map(to_sql)))
                    .unwrap();
            }
            Op::Delete => {
                let cond: Vec<String> =
                    c.pk.keys()
                        .enumerate()
                        .map(|(i, k)| format!("{} IS ?{}", q(k), i + 1))
                        .collect();
                let sql = format!("DELETE FROM {} WHERE {}", q(table), cond.join(" AND "));
                target
                    .execute(&sql, params_from_iter(c.pk.values().map(to_sql)))
                    .unwrap();
            }
        }
    }
}

/// An empty copy of `table` (same CREATE TABLE text) in a fresh in-memory database.
pub fn empty_copy(source: &Connection, table: &str) -> Connection {
    let sql: String = source
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type='table' AND name=?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(&sql).unwrap();
    c
}

/// All rows of `table`, typed, in a canonical order.
pub fn dump(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
    let cols: Vec<String> = {
        let mut s = conn
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .unwrap();
        s.query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let list: Vec<String> = cols.iter().map(|c| q(c)).collect();
    let sql = format!("SELECT {} FROM {}", list.join(", "), q(table));
    let mut s = conn.prepare(&sql).unwrap();
    let mut rows: Vec<Vec<Value>> = s
        .query_map([], |r| {
            (0..cols.len()).map(|i| r.get::<_, Value>(i)).collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

pub fn journal_rows(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM \"__omega_journal\"", [], |r| r.get(0))
        .unwrap()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
