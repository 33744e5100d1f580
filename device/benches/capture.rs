//! Capture overhead (scripts/bench.sh `capture`, reported in docs/benchmarks.md).
//!
//! agent.md §1: a 5-column table (integer PK, text, real, integer, text), WAL mode, the same
//! SQLite, with and without the agent's triggers, alternating in one run, median of rounds:
//! - bulk: 1,000-row transactions of inserts, and of updates of one numeric column;
//! - single-row transactions, `synchronous=NORMAL` and `synchronous=FULL`.
//!
//! Variants, each on a fresh database file per sample:
//! - `none`: no capture (the baseline every ratio divides by);
//! - `agent`: the triggers `Capture::open` installs (what ships);
//! - `naive`: `json_object` of every column into an AUTOINCREMENT journal with text
//!   table/op/pk/hash (the reference design; for comparison);
//! - `floor`: a trigger that appends only two integers to a rowid journal — no row image. It is
//!   the cost of *any* trigger-based journal on this SQLite and shows how much of `agent`'s cost
//!   is the second B-tree insert rather than the row image.
//!
//! Env: `EDGE_BENCH_CAPTURE_ROUNDS` (default 7), `EDGE_BENCH_DIR` (default: the system temp dir;
//! put it on the gateway's real storage for `FULL` figures that mean something).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_agent::capture::{Capture, SystemIds};
use edge_agent::settings::CaptureConfig;
use edge_agent::state::StateDb;
use rusqlite::{params, Connection};

const TABLE: &str =
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL, count INTEGER, note TEXT)";
const BULK_TXNS: usize = 20;
const BULK_ROWS: usize = 1000;
const SINGLE_NORMAL: usize = 3000;
const SINGLE_FULL: usize = 300;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    None,
    Agent,
    Naive,
    Floor,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Agent => "agent",
            Variant::Naive => "naive",
            Variant::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    BulkInsert,
    BulkUpdate,
    SingleInsert,
    SingleUpdate,
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A fresh source.db with the table, capture installed per `variant`, pre-filled for updates.
fn setup(dir: &Path, variant: Variant, sync: &str, prefill: bool) -> Connection {
    let path = dir.join("bench.db");
    let state_path = dir.join("state.db");
    remove_db(&path);
    remove_db(&state_path);
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("PRAGMA journal_mode=WAL; {TABLE};"))
            .unwrap();
        if prefill {
            c.execute_batch("BEGIN").unwrap();
            let mut s = c
                .prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for id in 0..(BULK_TXNS * BULK_ROWS) as i64 {
                s.execute(params![
                    id,
                    format!("name-{id}"),
                    id as f64 * 0.5,
                    id,
                    "a note"
                ])
                .unwrap();
            }
            drop(s);
            c.execute_batch("COMMIT").unwrap();
        }
        match variant {
            Variant::None => {}
            Variant::Agent => {
                let mut state = StateDb::open(&state_path).unwrap();
                let config = CaptureConfig {
                    snapshot_on_first_run: false,
                    ..CaptureConfig::default()
                };
                Capture::open(&path, config, &mut state, &mut SystemIds).unwrap();
            }
            Variant::Naive => c
                .execute_batch(
                    "CREATE TABLE j (commit_seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT, op TEXT,
                       pk TEXT, row TEXT, hash TEXT);
                     CREATE TRIGGER ti AFTER INSERT ON t BEGIN INSERT INTO j(tbl, op, pk, row, hash)
                       VALUES ('t', 'insert', json_object('id', NEW.id), json_object('id', NEW.id,
                       'name', NEW.name, 'value', NEW.value, 'count', NEW.count, 'note', NEW.note),
                       '2eca4022338318bb748bc0266ee4c9d9188aa84f3782687f9b585d36a9e79530'); END;
                     CREATE TRIGGER tu AFTER UPDATE ON t BEGIN INSERT INTO j(tbl, op, pk, row, hash)
                       VALUES ('t', 'update', json_object('id', NEW.id), json_object('id', NEW.id,
                       'name', NEW.name, 'value', NEW.value, 'count', NEW.count, 'note', NEW.note),
                       '2eca4022338318bb748bc0266ee4c9d9188aa84f3782687f9b585d36a9e79530'); END;",
                )
                .unwrap(),
            Variant::Floor => c
                .execute_batch(
                    "CREATE TABLE j (commit_seq INTEGER PRIMARY KEY, schema_id INTEGER, op INTEGER);
                     CREATE TRIGGER ti AFTER INSERT ON t BEGIN INSERT INTO j(schema_id, op)
                       VALUES (1, 1); END;
                     CREATE TRIGGER tu AFTER UPDATE ON t BEGIN INSERT INTO j(schema_id, op)
                       VALUES (1, 2); END;",
                )
                .unwrap(),
        }
    }
    let c = Connection::open(&path).unwrap();
    c.execute_batch(&format!("PRAGMA synchronous={sync};"))
        .unwrap();
    c
}

/// Seconds per row for one sample.
fn run(c: &Connection, w: Workload, singles: usize) -> f64 {
    let base = (BULK_TXNS * BULK_ROWS) as i64;
    let start = Instant::now();
    let rows = match w {
        Workload::BulkInsert => {
            let mut s = c
                .prepare_cached("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for b in 0..BULK_TXNS {
                c.execute_batch("BEGIN").unwrap();
                for i in 0..BULK_ROWS {
                    let id = base + (b * BULK_ROWS + i) as i64;
                    s.execute(params![
                        id,
                        format!("name-{id}"),
                        id as f64 * 0.5,
                        id,
                        "a note"
                    ])
                    .unwrap();
                }
                c.execute_batch("COMMIT").unwrap();
            }
            BULK_TXNS * BULK_ROWS
        }
        Workload::BulkUpdate => {
            let mut s = c
                .prepare_cached("UPDATE t SET count = count + 1 WHERE id = ?1")
                .unwrap();
            for b in 0..BULK_TXNS {
                c.execute_batch("BEGIN").unwrap();
                for i in 0..BULK_ROWS {
                    s.execute([(b * BULK_ROWS + i) as i64]).unwrap();
                }
                c.execute_batch("COMMIT").unwrap();
            }
            BULK_TXNS * BULK_ROWS
        }
        Workload::SingleInsert => {
            let mut s = c
                .prepare_cached("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for i in 0..singles {
                let id = base + i as i64;
                s.execute(params![
                    id,
                    format!("name-{id}"),
                    id as f64 * 0.5,
                    id,
                    "a note"
                ])
                .unwrap();
            }
            singles
        }
        Workload::SingleUpdate => {
            let mut s = c
                .prepare_cached("UPDATE t SET count = count + 1 WHERE id = ?1")
                .unwrap();
            for i in 0..singles {
                s.execute([(i * 7 % (BULK_TXNS * BULK_ROWS)) as i64])
                    .unwrap();
            }
            singles
        }
    };
    start.elapsed().as_secs_f64() / rows as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` (CI) one round is a
    // smoke test of the same code, not a measurement.
    let rounds: usize = std::env::var("EDGE_BENCH_CAPTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            7
        } else {
            1
        });
    let tmp = tempfile::Builder::new()
        .prefix("edge-capture-bench")
        .tempdir_in(
            std::env::var_os("EDGE_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .unwrap();
    let dir = tmp.path();
    let version: String = Connection::open_in_memory()
        .unwrap()
        .query_row("SELECT sqlite_version()", [], |r| r.get(0))
        .unwrap();
    println!(
        "capture overhead: SQLite {version}, WAL, {rounds} rounds (median), files in {}",
        dir.display()
    );
    let cases = [
        (
            "bulk insert (1000-row txns)",
            Workload::BulkInsert,
            "NORMAL",
            0,
        ),
        (
            "bulk update (1000-row txns)",
            Workload::BulkUpdate,
            "NORMAL",
            0,
        ),
        (
            "single-row insert",
            Workload::SingleInsert,
            "NORMAL",
            SINGLE_NORMAL,
        ),
        (
            "single-row update",
            Workload::SingleUpdate,
            "NORMAL",
            SINGLE_NORMAL,
        ),
        (
            "single-row insert",
            Workload::SingleInsert,
            "FULL",
            SINGLE_FULL,
        ),
        (
            "single-row update",
            Workload::SingleUpdate,
            "FULL",
            SINGLE_FULL,
        ),
    ];
    let variants = [
        Variant::None,
        Variant::Agent,
        Variant::Naive,
        Variant::Floor,
    ];
    let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
    println!(
        "| workload | sync | {} µs/row | {} µs/row | **{} ×** | {} × | {} × |",
        names[0], names[1], names[1], names[2], names[3]
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (label, w, sync, singles) in cases {
        let prefill = matches!(w, Workload::BulkUpdate | Workload::SingleUpdate);
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            // Alternate variants inside each round so drift in machine load hits all alike.
            for (i, v) in variants.iter().enumerate() {
                let c = setup(dir, *v, sync, prefill);
                samples[i].push(run(&c, w, singles));
            }
        }
        let med: Vec<f64> = samples.into_iter().map(median).collect();
        println!(
            "| {label} | {sync} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} |",
            med[0] * 1e6,
            med[1] * 1e6,
            med[1] / med[0],
            med[2] / med[0],
            med[3] / med[0]
        );
    }
}
