//! Issue 13, defects 11 and 12 (reliability.md §6): the triggers run inside the APPLICATION's
//! SQLite library, whatever its version, and every REAL must travel exactly.
//!
//! Real writers: the system libsqlite3 (3.40 on Debian 12 — Python's `sqlite3` module and the
//! `sqlite3` CLI), and the bundled library (rusqlite). Each writes the same hostile values into
//! tables whose triggers the agent installed; the rows the agent reads from the journal (after
//! the wire's JSON round trip) must rebuild the source table bit for bit, and reading must never
//! fail. A snapshot (the agent's own library) must do the same.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use edge_protocol::value::SqlValue;
use rusqlite::types::Value;
use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE v (id INTEGER PRIMARY KEY, r REAL, i INTEGER, a, t TEXT, b BLOB);
CREATE TABLE s (id INTEGER PRIMARY KEY, r REAL, x ANY) STRICT;
CREATE TABLE k (k REAL PRIMARY KEY, n INTEGER) WITHOUT ROWID;
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Other,
}

/// (SQL literal, Python literal, kind). Every value goes into each column of `v`; numbers into
/// the STRICT table `s`; floats also become REAL primary keys of `k` (deletes carry them).
const VALUES: &[(&str, &str, Kind)] = &[
    ("9e999", "float('inf')", Kind::Float),
    ("-9e999", "float('-inf')", Kind::Float),
    ("0.1+0.2", "0.1+0.2", Kind::Float),
    ("1.0/3", "1/3", Kind::Float),
    ("584475.1955282914", "584475.1955282914", Kind::Float),
    ("9007199254740993", "2**53+1", Kind::Int),
    ("9007199254740993.0", "float(2**53+1)", Kind::Float),
    ("1152921504606846976.0", "float(2**60)", Kind::Float),
    ("1152921504606846976", "2**60", Kind::Int),
    ("9223372036854775808.0", "float(2**63)", Kind::Float),
    ("1e308", "1e308", Kind::Float),
    ("-1e308", "-1e308", Kind::Float),
    ("-0.0", "-0.0", Kind::Float),
    ("5e-324", "5e-324", Kind::Float),
    (
        "2.2250738585072014e-308",
        "2.2250738585072014e-308",
        Kind::Float,
    ),
    (
        "1.2345678901234567e-310",
        "1.2345678901234567e-310",
        Kind::Float,
    ),
    ("2.0", "2.0", Kind::Float),
    ("21", "21", Kind::Int),
    ("123456.78901234567", "123456.78901234567", Kind::Float),
    ("NULL", "None", Kind::Other),
    ("x'00ff10'", "b'\\x00\\xff\\x10'", Kind::Other),
    (
        "'ünï 😀 \"q\" \\ tab'||char(9)||'nl'||char(10)",
        "'ünï 😀 \"q\" \\\\ tab\\tnl\\n'",
        Kind::Other,
    ),
];

fn finite_only() -> Vec<(&'static str, &'static str, Kind)> {
    VALUES
        .iter()
        .filter(|(sql, _, _)| !sql.contains("e999"))
        .copied()
        .collect()
}

/// The writes as one SQL script (for the CLI and the bundled library).
fn sql_script(values: &[(&str, &str, Kind)]) -> String {
    let mut s = String::from("BEGIN;\n");
    for (i, (lit, _, kind)) in values.iter().enumerate() {
        let id = i + 1;
        s.push_str(&format!(
            "INSERT INTO v VALUES ({id}, {lit}, {lit}, {lit}, {lit}, {lit});\n"
        ));
        if *kind != Kind::Other {
            s.push_str(&format!("INSERT INTO s VALUES ({id}, {lit}, {lit});\n"));
        }
        if *kind == Kind::Float {
            s.push_str(&format!("INSERT INTO k VALUES ({lit}, {id});\n"));
        }
    }
    s.push_str(
        "UPDATE v SET a = r, t = i WHERE id % 2 = 0;\n\
         UPDATE s SET x = r WHERE id % 3 = 0;\n\
         DELETE FROM k WHERE n % 3 = 0;\n\
         UPDATE k SET n = n + 100 WHERE n % 3 = 1;\n\
         COMMIT;\n",
    );
    s
}

/// The same writes through Python's `sqlite3` module, with bound parameters.
fn python_script(values: &[(&str, &str, Kind)]) -> String {
    let list: Vec<String> = values
        .iter()
        .map(|(_, py, kind)| {
            let k = match kind {
                Kind::Float => "'f'",
                Kind::Int => "'i'",
                Kind::Other => "'o'",
            };
            format!("({py}, {k})")
        })
        .collect();
    format!(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
         vals = [{}]\n\
         c.execute('BEGIN')\n\
         for i, (v, k) in enumerate(vals, 1):\n\
         \x20   c.execute('INSERT INTO v VALUES (?,?,?,?,?,?)', (i, v, v, v, v, v))\n\
         \x20   if k != 'o': c.execute('INSERT INTO s VALUES (?,?,?)', (i, v, v))\n\
         \x20   if k == 'f': c.execute('INSERT INTO k VALUES (?,?)', (v, i))\n\
         c.execute('UPDATE v SET a = r, t = i WHERE id % 2 = 0')\n\
         c.execute('UPDATE s SET x = r WHERE id % 3 = 0')\n\
         c.execute('DELETE FROM k WHERE n % 3 = 0')\n\
         c.execute('UPDATE k SET n = n + 100 WHERE n % 3 = 1')\n\
         c.execute('COMMIT')\n\
         print(sqlite3.sqlite_version)\n",
        list.join(", ")
    )
}

#[derive(Clone, Copy)]
enum Writer {
    Python,
    Cli,
    Bundled,
}

/// Runs the writes with `writer`; returns the writer's SQLite version.
fn write(env: &Env, writer: Writer, values: &[(&str, &str, Kind)]) -> String {
    let path = path_str(&env.source_path());
    match writer {
        Writer::Python => {
            let out = Command::new("python3")
                .arg("-c")
                .arg(python_script(values))
                .arg(&path)
                .output()
                .expect("python3 is needed for this test (the system libsqlite3 writer)");
            assert!(
                out.status.success(),
                "python writer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        Writer::Cli => {
            let script = format!(".timeout 10000\n.bail on\n{}", sql_script(values));
            let mut child = Command::new("sqlite3")
                .arg(&path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the sqlite3 CLI is needed for this test (the system libsqlite3 writer)");
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "sqlite3 CLI writer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v = Command::new("sqlite3").arg("--version").output().unwrap();
            String::from_utf8_lossy(&v.stdout).trim().to_owned()
        }
        Writer::Bundled => {
            let app = env.app();
            app.execute_batch(&sql_script(values)).unwrap();
            rusqlite::version().to_owned()
        }
    }
}

fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

/// Bit-exact table contents (`SqlValue` compares REALs by their bits) — but for the sign of a
/// zero: no SQL function of any version reveals it, so `-0.0` (kept by SQLite only in a column
/// without affinity) is captured as `0.0` (documented in `capture::triggers`).
fn exact(conn: &Connection, table: &str) -> Vec<Vec<SqlValue>> {
    let mut rows: Vec<Vec<SqlValue>> = dump(conn, table)
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match sql_value(v) {
                    // A float pattern compares with `==`: matches -0.0 too.
                    SqlValue::Real(0.0) => SqlValue::Real(0.0),
                    other => other,
                })
                .collect()
        })
        .collect();
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

/// Replays what the agent read (after the wire's JSON round trip) into empty copies and
/// compares them with the source, bit for bit.
fn assert_mirrors_equal_source(app: &Connection, read: &edge_agent::capture::journal::PendingRead) {
    for table in ["v", "s", "k"] {
        let changes = changes_of(read, table);
        assert!(!changes.is_empty(), "{table}: nothing captured");
        let target = empty_copy(app, table);
        replay(&target, table, &changes);
        let (got, want) = (exact(&target, table), exact(app, table));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{table}: row differs (mirror left, source right)");
        }
        assert_eq!(got.len(), want.len(), "{table}: row count");
    }
}

fn run(writer: Writer, values: &[(&str, &str, Kind)]) {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(SCHEMA).unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let version = write(&env, writer, values);
    eprintln!("writer SQLite {version}");
    // The agent must read every entry whatever the writer's version wrote (old code: `Inf` →
    // "malformed row image" → the reader fails on every cycle, the agent exits).
    let read = cap
        .read_pending(
            &state,
            &edge_agent::capture::journal::ReadOptions {
                after_seq: 0,
                max_entries: 1_000_000,
                skip_tables: Default::default(),
            },
        )
        .unwrap_or_else(|e| panic!("reading the journal written by SQLite {version}: {e}"));
    assert_mirrors_equal_source(&app, &read);
    // 2^60 in a REAL column is the double 2^60 on the wire (defect 12), not an integer.
    let two60 = SqlValue::Real(2f64.powi(60));
    let reals: Vec<SqlValue> = changes_of(&read, "v")
        .iter()
        .filter_map(|c| c.row.as_ref().and_then(|r| r.get("r").cloned()))
        .collect();
    assert!(reals.contains(&two60), "{reals:?}");
    let ack_to = read.covered.clone();
    for (table, seq) in ack_to {
        cap.ack(&state, &table, seq, 1000).unwrap();
    }

    // The snapshot path (the agent's own library) spells every REAL exactly too.
    for table in ["v", "s", "k"] {
        cap.run_snapshot(&state, table, 7).unwrap();
    }
    let snap = read_all(&mut cap, &state);
    assert_mirrors_equal_source(&app, &snap);
    // And every snapshot REAL reads back as the same double from the wire's JSON text.
    for g in &snap.groups {
        for c in &g.changes {
            let text = String::from_utf8(c.json.clone()).unwrap();
            let back: edge_protocol::batch::RowChange = serde_json::from_str(&text).unwrap();
            assert_eq!(back, c.change().unwrap(), "{text}");
        }
    }
}

#[test]
fn defect_11_python_sqlite_3_40_writer_inf_reals_are_read_not_fatal() {
    run(Writer::Python, VALUES);
}

#[test]
fn defect_11_python_sqlite_3_40_writer_reals_keep_full_precision() {
    run(Writer::Python, &finite_only());
}

#[test]
fn defect_11_sqlite3_cli_3_40_writer_every_value_travels_exactly() {
    run(Writer::Cli, VALUES);
}

#[test]
fn defect_11_bundled_sqlite_writer_every_value_travels_exactly() {
    run(Writer::Bundled, VALUES);
}

#[test]
fn defect_12_real_two_pow_60_is_a_double_in_trigger_and_snapshot_images() {
    let vals = [
        ("1152921504606846976.0", "float(2**60)", Kind::Float),
        ("1152921504606846976", "2**60", Kind::Int),
        ("9223372036854775808.0", "float(2**63)", Kind::Float),
        ("0.5", "0.5", Kind::Float),
    ];
    run(Writer::Python, &vals);
    run(Writer::Bundled, &vals);
}

/// Sets the "last writer" SQLite version in a database file's header (bytes 96..100).
fn set_header_writer_version(path: &std::path::Path, version: u32) {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(96)).unwrap();
    f.write_all(&version.to_be_bytes()).unwrap();
}

/// §6: an application SQLite older than 3.38 (JSON1 not guaranteed) is refused at enrolment with
/// a clear message — before any trigger that could fail the application's writes is installed —
/// unless the operator confirms JSON1; 3.40 (Python's module here) is accepted.
#[test]
fn defect_11_app_sqlite_older_than_3_38_is_refused_at_enrolment() {
    let mut env = Env::new();
    {
        let app = Connection::open(env.source_path()).unwrap();
        app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL);")
            .unwrap();
    }
    set_header_writer_version(&env.source_path(), 3_037_002);
    let mut state = env.state();
    let err = edge_agent::capture::Capture::open(
        &env.source_path(),
        no_snapshot(),
        &mut state,
        &mut env.ids,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("3.37.2") && err.contains("app_sqlite_has_json1"),
        "not refused clearly: {err:?}"
    );
    let app = Connection::open(env.source_path()).unwrap();
    let ours: i64 = app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '__omega%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ours, 0, "objects installed despite the refusal");
    drop(app);
    // The operator confirms JSON1: enrolled.
    let mut cfg = no_snapshot();
    cfg.app_sqlite_has_json1 = true;
    let (cap, _) =
        edge_agent::capture::Capture::open(&env.source_path(), cfg, &mut state, &mut env.ids)
            .unwrap();
    assert!(cap.catalog().rows.contains_key("t"));

    // A database created by the system library (3.40 here) is accepted as it is.
    let env2 = Env::new();
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL)'); c.commit()")
        .arg(path_str(&env2.source_path()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut state2 = env2.state();
    let mut ids = TestIds::default();
    edge_agent::capture::Capture::open(&env2.source_path(), no_snapshot(), &mut state2, &mut ids)
        .unwrap();
}
