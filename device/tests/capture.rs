//! Capture on real SQLite files: triggers, reader, acks, values, identifiers, drift, identity.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_agent::capture::journal::ReadOptions;
use edge_agent::settings::{CaptureConfig, Strategy, TableConfig};
use edge_agent::state::counter;
use edge_protocol::batch::Op;
use edge_protocol::value::SqlValue;

#[test]
fn captures_insert_update_delete_and_acks_without_reusing_seqs() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE device_state (id INTEGER PRIMARY KEY NOT NULL, mode TEXT, setpoint REAL);",
    )
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    assert!(cap.catalog().rows.contains_key("device_state"));
    app.execute_batch(
        "INSERT INTO device_state VALUES (1, 'heat', 20.5);
         UPDATE device_state SET mode = 'cool', setpoint = 21 WHERE id = 1;
         DELETE FROM device_state WHERE id = 1;",
    )
    .unwrap();
    let read = read_all(&mut cap, &state);
    assert_eq!(read.groups.len(), 1);
    let g = &read.groups[0];
    assert_eq!(
        g.schema_hash,
        "2eca4022338318bb748bc0266ee4c9d9188aa84f3782687f9b585d36a9e79530"
    );
    let ops: Vec<Op> = g.changes.iter().map(|c| c.change().unwrap().op).collect();
    assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete]);
    let json = String::from_utf8(g.changes[1].json.clone()).unwrap();
    assert!(
        json.contains(r#""row":{"id":1,"mode":"cool","setpoint":21.0}"#),
        "{json}"
    );
    assert!(g.changes.iter().all(|c| c.bytes() > 0));
    let seqs: Vec<i64> = g.changes.iter().map(|c| c.commit_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let last = *seqs.last().unwrap();

    cap.ack(&state, "device_state", last, 2).unwrap();
    // The highest row stays as the floor so numbering continues; the reader skips it.
    assert_eq!(journal_rows(&app), 1);
    assert!(read_all(&mut cap, &state).groups.is_empty());
    app.execute_batch("INSERT INTO device_state VALUES (2, 'off', NULL);")
        .unwrap();
    let read = read_all(&mut cap, &state);
    let next = read.groups[0].changes[0].commit_seq;
    assert!(next > last, "commit_seq repeated: {next} <= {last}");
    cap.ack(&state, "device_state", next, 100).unwrap();
    assert_eq!(journal_rows(&app), 1);
    assert_eq!(state.last_acked("device_state").unwrap(), next);
}

#[test]
fn hostile_identifiers_and_composite_keys_capture_exactly() {
    let mut env = Env::new();
    let app = env.app();
    let table = "we\"ird 'tab' SELECT 名前 table with a very long name that goes past sixty chars!";
    assert!(table.chars().count() > 60);
    let cols = ["order", "col \"q\"", "ünï cödé", "a'b", "x y"];
    app.execute_batch(&format!(
        "CREATE TABLE {} ({} TEXT NOT NULL, {} INTEGER NOT NULL, {} REAL, {}, {} TEXT, PRIMARY KEY ({}, {}));",
        q(table),
        q(cols[0]), q(cols[1]), q(cols[2]), q(cols[3]), q(cols[4]),
        q(cols[0]), q(cols[1])
    ))
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    assert!(
        cap.catalog().rows.contains_key(table),
        "{:?}",
        cap.catalog()
    );
    let ins = format!("INSERT INTO {} VALUES (?1, ?2, ?3, ?4, ?5)", q(table));
    for i in 0..5i64 {
        app.execute(
            &ins,
            rusqlite::params![format!("k{i}"), i, i as f64 / 3.0, "v", "w"],
        )
        .unwrap();
    }
    app.execute(
        &format!(
            "UPDATE {} SET {} = 'changed' WHERE {} = 'k1'",
            q(table),
            q(cols[4]),
            q(cols[0])
        ),
        [],
    )
    .unwrap();
    app.execute(
        &format!("DELETE FROM {} WHERE {} = 2", q(table), q(cols[1])),
        [],
    )
    .unwrap();
    let read = read_all(&mut cap, &state);
    let changes = changes_of(&read, table);
    assert_eq!(changes.len(), 7);
    let del = changes.last().unwrap();
    assert_eq!(del.op, Op::Delete);
    assert_eq!(del.pk.len(), 2);
    let target = empty_copy(&app, table);
    replay(&target, table, &changes);
    assert_eq!(dump(&target, table), dump(&app, table));
}

#[test]
fn values_blob_inf_large_integers_nulls_round_trip() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE v (id INTEGER PRIMARY KEY, a, b REAL, c INTEGER, d TEXT, e BLOB);
         CREATE TABLE s (k ANY PRIMARY KEY, n INTEGER, r REAL, t TEXT, b BLOB, x ANY) STRICT, WITHOUT ROWID;",
    )
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let rows: Vec<(i64, rusqlite::types::Value)> = vec![
        (1, rusqlite::types::Value::Blob(vec![0, 1, 2, 255])),
        (2, rusqlite::types::Value::Real(f64::INFINITY)),
        (3, rusqlite::types::Value::Real(f64::NEG_INFINITY)),
        (4, rusqlite::types::Value::Integer(i64::MAX)),
        (5, rusqlite::types::Value::Integer(i64::MIN)),
        (6, rusqlite::types::Value::Null),
        (7, rusqlite::types::Value::Real(0.1 + 0.2)),
        (
            8,
            rusqlite::types::Value::Text("nul\0inside \"quoted\" ü".into()),
        ),
        (9, rusqlite::types::Value::Real(1e300)),
        (10, rusqlite::types::Value::Blob(vec![])),
    ];
    for (id, v) in &rows {
        app.execute(
            "INSERT INTO v VALUES (?1, ?2, ?2, ?2, ?2, ?2)",
            rusqlite::params![id, v],
        )
        .unwrap();
        // A WITHOUT ROWID key cannot be NULL; use the id there.
        let key = match v {
            rusqlite::types::Value::Null => rusqlite::types::Value::Integer(*id),
            other => other.clone(),
        };
        app.execute(
            "INSERT INTO s VALUES (?1, ?2, ?3, ?4, ?5, ?1)",
            rusqlite::params![
                key,
                id,
                *id as f64 * 1.5,
                format!("t{id}"),
                vec![*id as u8; 3]
            ],
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    app.execute("UPDATE v SET a = x'deadbeef' WHERE id = 6", [])
        .unwrap();
    let read = read_all(&mut cap, &state);
    for table in ["v", "s"] {
        let changes = changes_of(&read, table);
        let target = empty_copy(&app, table);
        replay(&target, table, &changes);
        assert_eq!(dump(&target, table), dump(&app, table), "{table}");
    }
    let wire: Vec<String> = read
        .groups
        .iter()
        .flat_map(|g| {
            g.changes
                .iter()
                .map(|c| String::from_utf8(c.json.clone()).unwrap())
        })
        .collect();
    let all = wire.join("\n");
    assert!(all.contains(r#"{"$base64":"AAEC/w=="}"#), "{all}");
    assert!(all.contains(r#"{"$real":"inf"}"#));
    assert!(all.contains(r#"{"$real":"-inf"}"#));
    assert!(all.contains("9223372036854775807"));
    assert!(all.contains("-9223372036854775808"));
    // Keys that are blobs / inf (ANY key of the STRICT table) also travel as markers.
    let s_changes = changes_of(&read, "s");
    assert_eq!(
        s_changes[0].pk.get("k"),
        Some(&SqlValue::Blob(vec![0, 1, 2, 255]))
    );
}

#[test]
fn primary_key_change_is_delete_plus_insert() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE t (a TEXT COLLATE NOCASE, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
         INSERT INTO t VALUES ('x', 1, 'one');",
    )
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch(
        "UPDATE t SET b = 2 WHERE a = 'x';
         UPDATE t SET a = 'X' WHERE b = 2;
         UPDATE t SET v = 'same key' WHERE b = 2;",
    )
    .unwrap();
    let changes = changes_of(&read_all(&mut cap, &state), "t");
    let ops: Vec<Op> = changes.iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [Op::Delete, Op::Insert, Op::Delete, Op::Insert, Op::Update]
    );
    assert_eq!(changes[0].pk.get("b"), Some(&SqlValue::Integer(1)));
    assert_eq!(changes[1].pk.get("b"), Some(&SqlValue::Integer(2)));
    // Case-only change under NOCASE is still a key change for the mirror.
    assert_eq!(changes[2].pk.get("a"), Some(&SqlValue::Text("x".into())));
    assert_eq!(changes[3].pk.get("a"), Some(&SqlValue::Text("X".into())));
}

#[test]
fn discovery_excludes_internal_virtual_and_rowid_only_tables() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE keyed (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
         CREATE TABLE log (msg TEXT);
         CREATE VIRTUAL TABLE docs USING fts5(body);
         CREATE TABLE skipped (id INTEGER PRIMARY KEY);
         CREATE TABLE temps (ts INTEGER, v REAL);",
    )
    .unwrap();
    let mut cfg = no_snapshot();
    cfg.tables.insert(
        "skipped".into(),
        TableConfig {
            strategy: Strategy::Ignore,
            ..TableConfig::default()
        },
    );
    cfg.tables.insert(
        "temps".into(),
        TableConfig {
            strategy: Strategy::Telemetry,
            ts_column: Some("ts".into()),
            include_columns: None,
        },
    );
    let mut state = env.state();
    let cap = env.capture(&mut state, cfg);
    let cat = cap.catalog();
    let rows: Vec<&str> = cat.rows.keys().map(String::as_str).collect();
    assert_eq!(rows, ["auto", "keyed"]);
    assert!(cat.telemetry.contains_key("temps"));
    assert!(cat.ignored.contains("skipped"));
    assert!(cat.not_enrolled["log"].contains("PRIMARY KEY"));
    assert!(!cat.not_enrolled.keys().any(|k| k.starts_with("docs")));
    let log = state.table("log").unwrap().unwrap();
    assert_eq!(log.enrolment, "not_enrolled");
    assert!(log.reason.unwrap().contains("PRIMARY KEY"));
    // No trigger was put on a telemetry, ignored or rowid-only table.
    let n: i64 = app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type='trigger' AND tbl_name IN ('log','temps','skipped','docs')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn add_column_then_immediate_writes_lose_nothing() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let old_hash = cap.catalog().rows["t"].table.schema_hash.clone();
    app.execute_batch(
        "INSERT INTO t VALUES (1, 'before');
         ALTER TABLE t ADD COLUMN b INTEGER;
         INSERT INTO t VALUES (2, 'after', 42);
         UPDATE t SET b = 7 WHERE id = 1;",
    )
    .unwrap();
    // The agent has not polled yet: old triggers captured without `b`.
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert_eq!(report.triggers_changed, ["t"]);
    let new_hash = cap.catalog().rows["t"].table.schema_hash.clone();
    assert_ne!(old_hash, new_hash);
    let read = read_all(&mut cap, &state);
    assert!(read.refreshed >= 3);
    assert!(read.groups.iter().all(|g| g.schema_hash == new_hash));
    let changes = changes_of(&read, "t");
    let two = changes
        .iter()
        .find(|c| c.pk.get("id") == Some(&SqlValue::Integer(2)))
        .unwrap();
    assert_eq!(
        two.row.as_ref().unwrap().get("b"),
        Some(&SqlValue::Integer(42))
    );
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
    assert_eq!(state.counter(counter::SCHEMA_CHANGES, "t").unwrap(), 1);
    // New writes use the new triggers directly.
    app.execute_batch("UPDATE t SET b = 8 WHERE id = 2;")
        .unwrap();
    let read = read_all(&mut cap, &state);
    assert_eq!(read.refreshed, 3);
}

#[test]
fn drop_column_is_refused_to_the_app_with_nothing_lost() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch("INSERT INTO t VALUES (1, 'a', 'b');")
        .unwrap();
    let err = app
        .execute_batch("ALTER TABLE t DROP COLUMN b")
        .unwrap_err();
    assert!(err.to_string().contains("no such column"), "{err}");
    // Table and journal are untouched, capture continues.
    app.execute_batch("INSERT INTO t VALUES (2, 'a2', 'b2');")
        .unwrap();
    cap.poll(&mut state, &mut env.ids).unwrap();
    let changes = changes_of(&read_all(&mut cap, &state), "t");
    assert_eq!(changes.len(), 2);
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
}

#[test]
fn rename_column_is_followed_online() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch(
        "INSERT INTO t VALUES (1, 'x');
         ALTER TABLE t RENAME COLUMN a TO renamed;
         INSERT INTO t VALUES (2, 'y');",
    )
    .unwrap();
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert_eq!(report.triggers_changed, ["t"]);
    app.execute_batch("UPDATE t SET renamed = 'z' WHERE id = 1;")
        .unwrap();
    let read = read_all(&mut cap, &state);
    let hash = &cap.catalog().rows["t"].table.schema_hash;
    assert!(read.groups.iter().all(|g| &g.schema_hash == hash));
    let changes = changes_of(&read, "t");
    assert!(changes
        .iter()
        .all(|c| c.row.as_ref().unwrap().contains_key("renamed")));
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
}

#[test]
fn table_rebuild_is_detected_and_recaptured() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch("INSERT INTO t VALUES (1, 'a1', 'b1'), (2, 'a2', 'b2');")
        .unwrap();
    // SQLite's documented general ALTER procedure (here: dropping column b).
    app.execute_batch(
        "BEGIN;
         CREATE TABLE t_new (id INTEGER PRIMARY KEY, a TEXT);
         INSERT INTO t_new SELECT id, a FROM t;
         DROP TABLE t;
         ALTER TABLE t_new RENAME TO t;
         COMMIT;
         INSERT INTO t VALUES (3, 'written before the agent noticed');
         UPDATE t SET a = 'changed in the gap' WHERE id = 1;",
    )
    .unwrap();
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert_eq!(report.rebuilt, ["t"]);
    assert!(state.table("t").unwrap().unwrap().needs_snapshot);
    assert_eq!(state.counter(counter::TABLE_REBUILDS, "t").unwrap(), 1);
    let triggers: i64 = app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type='trigger' AND tbl_name='t'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 4);
    cap.run_snapshot(&state, "t", 2).unwrap();
    app.execute_batch("INSERT INTO t VALUES (4, 'after');")
        .unwrap();
    let read = read_all(&mut cap, &state);
    let changes = changes_of(&read, "t");
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
}

#[test]
fn swapped_source_db_starts_new_epoch_and_resnapshots() {
    let mut env = Env::new();
    {
        let app = env.app();
        app.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); INSERT INTO t VALUES (1,'x');",
        )
        .unwrap();
    }
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let epoch1 = state.journal_epoch().unwrap().unwrap();
    // Another database file (e.g. restored from elsewhere) is moved into place.
    let other = env.dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); INSERT INTO t VALUES (5,'y'),(6,'z');")
            .unwrap();
    }
    // A proper swap moves the file and removes the old WAL/SHM, which belong to the old file.
    std::fs::rename(&other, env.source_path()).unwrap();
    let _ = std::fs::remove_file(env.dir.path().join("source.db-wal"));
    let _ = std::fs::remove_file(env.dir.path().join("source.db-shm"));
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert!(report.reopened);
    assert!(report.new_epoch.unwrap().contains("instance"));
    let epoch2 = state.journal_epoch().unwrap().unwrap();
    assert!(epoch2 > epoch1);
    assert!(state.table("t").unwrap().unwrap().needs_snapshot);
    cap.run_snapshot(&state, "t", 100).unwrap();
    let app = env.app();
    let changes = changes_of(&read_all(&mut cap, &state), "t");
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
}

#[test]
fn lost_state_db_and_reset_journal_start_new_epochs() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);")
        .unwrap();
    let epoch1 = {
        let mut state = env.state();
        let _cap = env.capture(&mut state, no_snapshot());
        state.journal_epoch().unwrap().unwrap()
    };
    app.execute_batch("INSERT INTO t VALUES (1,'x'),(2,'y');")
        .unwrap();
    std::fs::remove_file(env.state_path()).unwrap();
    let _ = std::fs::remove_file(env.dir.path().join("state.db-wal"));
    let _ = std::fs::remove_file(env.dir.path().join("state.db-shm"));
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let epoch2 = state.journal_epoch().unwrap().unwrap();
    assert_ne!(epoch1, epoch2);
    // Everything still in the journal is sent again in the new epoch (duplicates are harmless).
    assert_eq!(changes_of(&read_all(&mut cap, &state), "t").len(), 2);
    let seen = cap.journal_max_seq().unwrap();
    cap.poll(&mut state, &mut env.ids).unwrap();
    // Someone empties the journal: numbering would restart, so a new epoch begins.
    app.execute_batch("DELETE FROM \"__omega_journal\";")
        .unwrap();
    assert!(seen > 0);
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert!(report.new_epoch.is_some());
    assert_ne!(state.journal_epoch().unwrap().unwrap(), epoch2);
    assert!(state.table("t").unwrap().unwrap().needs_snapshot);
}

#[test]
fn late_ack_of_an_old_epoch_batch_leaves_the_new_epoch_alone() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    let old = state.journal_epoch().unwrap().unwrap();
    for i in 0..50 {
        app.execute("INSERT INTO t VALUES (?1, 'x')", [i]).unwrap();
    }
    cap.poll(&mut state, &mut env.ids).unwrap();
    // A batch of the old epoch covering all 50 entries is in flight (fixed, not yet acked)
    // when the journal is reset and numbering restarts under a new epoch.
    let old_last = cap.journal_max_seq().unwrap();
    app.execute_batch("DELETE FROM \"__omega_journal\";")
        .unwrap();
    assert!(cap
        .poll(&mut state, &mut env.ids)
        .unwrap()
        .new_epoch
        .is_some());
    let new = state.journal_epoch().unwrap().unwrap();
    assert_ne!(new, old);
    for i in 100..110 {
        app.execute("INSERT INTO t VALUES (?1, 'y')", [i]).unwrap();
    }
    let new_max = cap.journal_max_seq().unwrap();
    assert!(
        new_max <= old_last,
        "seqs restarted: {new_max} vs {old_last}"
    );
    // The old batch's PUBACK arrives now.
    let acked = cap.ack_in_epoch(&state, old, "t", old_last, 256).unwrap();
    assert_eq!(acked, None, "an old-epoch ack must not touch the new epoch");
    assert_eq!(state.last_acked("t").unwrap(), 0);
    let pending = changes_of(&read_all(&mut cap, &state), "t");
    assert_eq!(
        pending.len(),
        10,
        "no new-epoch entry is skipped or deleted"
    );
    // A new-epoch batch is acknowledged normally.
    let last = pending.last().unwrap().commit_seq;
    assert!(cap
        .ack_in_epoch(&state, new, "t", last, 256)
        .unwrap()
        .is_some());
    assert_eq!(state.last_acked("t").unwrap(), last);
}

#[test]
fn new_table_created_online_is_enrolled_and_snapshotted() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY);")
        .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch(
        "CREATE TABLE later (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO later VALUES (1, 'before triggers');",
    )
    .unwrap();
    let report = cap.poll(&mut state, &mut env.ids).unwrap();
    assert_eq!(report.enrolled, ["later"]);
    assert!(state.table("later").unwrap().unwrap().needs_snapshot);
    app.execute_batch("INSERT INTO later VALUES (2, 'after');")
        .unwrap();
    cap.run_snapshot(&state, "later", 10).unwrap();
    let changes = changes_of(&read_all(&mut cap, &state), "later");
    let target = empty_copy(&app, "later");
    replay(&target, "later", &changes);
    assert_eq!(dump(&target, "later"), dump(&app, "later"));
    // Dropping a table drops its triggers; the agent marks it and keeps going.
    app.execute_batch("DROP TABLE later;").unwrap();
    cap.poll(&mut state, &mut env.ids).unwrap();
    assert_eq!(state.table("later").unwrap().unwrap().enrolment, "dropped");
}

#[test]
fn snapshot_on_first_run_is_chunked_and_consistent_with_concurrent_writes() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE r (id INTEGER PRIMARY KEY, v INTEGER);
         CREATE TABLE w (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;",
    )
    .unwrap();
    for i in 0..25 {
        app.execute("INSERT INTO r VALUES (?1, ?1)", [i]).unwrap();
        app.execute(
            "INSERT INTO w VALUES (?1, ?2, 'v')",
            rusqlite::params![format!("k{}", i % 4), i],
        )
        .unwrap();
    }
    let mut state = env.state();
    let mut cap = env.capture(&mut state, CaptureConfig::default());
    assert!(state.table("r").unwrap().unwrap().needs_snapshot);
    let mut step = 0;
    for table in ["r", "w"] {
        loop {
            let s = cap.snapshot_step(&state, table, 4).unwrap();
            assert!(s.rows <= 4);
            assert!(
                step < 200,
                "snapshot of {table} chases the writes and never ends"
            );
            // The application keeps writing between chunks, before and after the cursor.
            step += 1;
            app.execute("UPDATE r SET v = v + 100 WHERE id = ?1", [step % 25])
                .unwrap();
            app.execute("DELETE FROM r WHERE id = ?1", [(step * 7) % 25])
                .unwrap();
            app.execute("INSERT OR REPLACE INTO r VALUES (?1, -1)", [100 + step])
                .unwrap();
            app.execute("UPDATE w SET v = 'u' || ?1 WHERE b = ?1", [step % 25])
                .unwrap();
            app.execute("DELETE FROM w WHERE b = ?1", [(step * 3) % 25])
                .unwrap();
            if s.done {
                break;
            }
        }
        assert!(!state.table(table).unwrap().unwrap().needs_snapshot);
    }
    let read = read_all(&mut cap, &state);
    for table in ["r", "w"] {
        let changes = changes_of(&read, table);
        let target = empty_copy(&app, table);
        replay(&target, table, &changes);
        assert_eq!(dump(&target, table), dump(&app, table), "{table}");
    }
    // Rows deleted ahead of the cursor are not enqueued; the rest are.
    assert!(state.counter(counter::SNAPSHOT_ROWS, "r").unwrap() >= 10);
}

#[test]
fn local_retention_coalesces_then_drops_and_counts() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE hot (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    for round in 0..20 {
        for id in 0..10 {
            app.execute(
                "INSERT OR REPLACE INTO hot VALUES (?1, ?2)",
                rusqlite::params![id, format!("value {round} padded to be a bit longer")],
            )
            .unwrap();
        }
    }
    app.execute_batch("INSERT INTO other VALUES (1, 'x');")
        .unwrap();
    state.set_paused("hot", 0, None).unwrap();
    let stats = cap.journal_stats().unwrap();
    let total: u64 = stats.iter().map(|s| s.bytes).sum();
    // The cheap bound that lets retention skip the scan really bounds the scan's figure, and
    // a limit at the bound leaves everything alone.
    let bound = cap.journal_bytes_upper_bound().unwrap();
    assert!(bound >= total, "{bound} < {total}");
    let report = cap.enforce_retention(&state, bound, 50).unwrap();
    assert!(report.coalesced.is_empty() && report.dropped.is_empty());
    assert_eq!(cap.journal_stats().unwrap(), stats);
    // Coalescing alone suffices: only the latest entry per key remains.
    let report = cap.enforce_retention(&state, total / 3, 50).unwrap();
    assert!(report.coalesced["hot"] > 0);
    assert!(report.dropped.is_empty());
    assert!(report.bytes_after <= total / 3);
    assert_eq!(
        state.counter(counter::RETENTION_COALESCED, "hot").unwrap() as usize,
        report.coalesced["hot"]
    );
    let changes = changes_of(&read_all(&mut cap, &state), "hot");
    let target = empty_copy(&app, "hot");
    replay(&target, "hot", &changes);
    assert_eq!(dump(&target, "hot"), dump(&app, "hot"));
    // A bound too small for even that: the paused table's entries go, needs_snapshot is set.
    let report = cap.enforce_retention(&state, 10, 50).unwrap();
    assert!(report.dropped["hot"] > 0);
    let hot = state.table("hot").unwrap().unwrap();
    assert!(hot.needs_snapshot);
    assert_eq!(state.counter(counter::RETENTION_DROPS, "hot").unwrap(), 1);
    // Re-snapshot on resume restores the mirror.
    state.clear_paused("hot").unwrap();
    cap.run_snapshot(&state, "hot", 3).unwrap();
    let changes = changes_of(&read_all(&mut cap, &state), "hot");
    let target = empty_copy(&app, "hot");
    replay(&target, "hot", &changes);
    assert_eq!(dump(&target, "hot"), dump(&app, "hot"));
}

#[test]
fn paused_tables_are_skipped_by_the_reader() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE a (id INTEGER PRIMARY KEY); CREATE TABLE b (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());
    app.execute_batch(
        "INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO a VALUES (2);",
    )
    .unwrap();
    let read = cap
        .read_pending(
            &state,
            &ReadOptions {
                after_seq: 0,
                max_entries: 100,
                skip_tables: ["a".to_string()].into(),
            },
        )
        .unwrap();
    assert_eq!(read.groups.len(), 1);
    assert_eq!(read.groups[0].table, "b");
    let b_seq = read.covered["b"];
    cap.ack(&state, "b", b_seq, 10).unwrap();
    let read = read_all(&mut cap, &state);
    assert_eq!(changes_of(&read, "a").len(), 2);
    assert!(changes_of(&read, "b").is_empty());
}

#[test]
fn telemetry_reader_follows_rowid_mark_with_include_columns() {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE temps (recorded_at, value REAL, unit TEXT, secret TEXT);
         INSERT INTO temps VALUES ('2026-04-28T09:00:02Z', 2.0, 'C', 's');
         INSERT INTO temps VALUES ('2026-04-28T09:00:01Z', 1.0, 'C', 's');
         INSERT INTO temps VALUES ('2026-04-28T09:00:02Z', 2.5, 'C', 's');
         INSERT INTO temps VALUES ('not a time', 9.9, 'C', 's');",
    )
    .unwrap();
    let mut cfg = no_snapshot();
    cfg.tables.insert(
        "temps".into(),
        TableConfig {
            strategy: Strategy::Telemetry,
            ts_column: Some("recorded_at".into()),
            include_columns: Some(vec!["value".into(), "unit".into()]),
        },
    );
    let mut state = env.state();
    let cap = env.capture(&mut state, cfg);
    // In append (rowid) order: the timestamp is payload, not cursor (reliability §5).
    let first = cap.read_telemetry("temps", None, 2).unwrap();
    let ts: Vec<&str> = first.records.iter().map(|r| r.ts.as_str()).collect();
    assert_eq!(ts, ["2026-04-28T09:00:02Z", "2026-04-28T09:00:01Z"]);
    assert_eq!(first.records[1].rowid, 2);
    let fields: Vec<&String> = first.records[0].fields.keys().collect();
    assert_eq!(fields, ["unit", "value"]);
    let cursor = first.next_cursor.unwrap();
    state
        .set_telemetry_progress(
            "temps",
            &edge_agent::state::TelemetryProgress {
                batch_seq: 1,
                cursor: Some(cursor),
            },
        )
        .unwrap();
    let progress = state.telemetry_progress("temps").unwrap();
    app.execute_batch("INSERT INTO temps VALUES ('2026-04-28T09:00:03Z', 3.0, 'C', 's');")
        .unwrap();
    let rest = cap
        .read_telemetry("temps", progress.cursor.as_ref(), 100)
        .unwrap();
    let ts: Vec<&str> = rest.records.iter().map(|r| r.ts.as_str()).collect();
    assert_eq!(ts, ["2026-04-28T09:00:02Z", "2026-04-28T09:00:03Z"]);
    assert_eq!(rest.skipped.len(), 1);
    assert_eq!(rest.skipped[0].rowid, 4);
    // Nothing more after the cursor, skipped row included.
    let none = cap
        .read_telemetry("temps", rest.next_cursor.as_ref(), 100)
        .unwrap();
    assert!(none.records.is_empty() && none.skipped.is_empty());
    assert!(cap.read_telemetry("missing", None, 1).is_err());
}

/// Telemetry progress saved with the cursor a read returned (what the publisher does).
fn save_cursor(
    state: &edge_agent::state::StateDb,
    table: &str,
    read: &edge_agent::capture::telemetry::TelemetryRead,
) {
    let mut p = state.telemetry_progress(table).unwrap();
    p.batch_seq += 1;
    p.cursor = read.next_cursor.clone();
    state.set_telemetry_progress(table, &p).unwrap();
}

fn telemetry_env(
    ddl: &str,
) -> (
    Env,
    rusqlite::Connection,
    edge_agent::state::StateDb,
    edge_agent::capture::Capture,
) {
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch(ddl).unwrap();
    let mut cfg = no_snapshot();
    cfg.tables.insert(
        "m".into(),
        TableConfig {
            strategy: Strategy::Telemetry,
            ts_column: Some("ts".into()),
            include_columns: None,
        },
    );
    let mut state = env.state();
    let cap = env.capture(&mut state, cfg);
    (env, app, state, cap)
}

fn read_values(
    cap: &edge_agent::capture::Capture,
    state: &edge_agent::state::StateDb,
) -> (Vec<f64>, edge_agent::capture::telemetry::TelemetryRead) {
    let cursor = state.telemetry_progress("m").unwrap().cursor;
    let read = cap.read_telemetry("m", cursor.as_ref(), 1000).unwrap();
    let values = read
        .records
        .iter()
        .map(|r| match r.fields.get("v") {
            Some(SqlValue::Real(f)) => *f,
            other => panic!("{other:?}"),
        })
        .collect();
    save_cursor(state, "m", &read);
    (values, read)
}

/// Defect 9 (issue 13, reliability §5): the timestamp is payload, not cursor — a late or
/// backfilled reading (older timestamp, inserted after the cursor moved) is still sent.
#[test]
fn defect_9_telemetry_rows_with_older_timestamp_after_the_cursor_are_sent() {
    let (_env, app, state, cap) = telemetry_env(
        "CREATE TABLE m (ts TEXT, v REAL);
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 1.0), ('2026-04-28T10:01:00Z', 2.0);",
    );
    assert_eq!(read_values(&cap, &state).0, [1.0, 2.0]);
    // Backfilled from a buffer / clock corrected: older timestamps, appended now.
    app.execute_batch(
        "INSERT INTO m VALUES ('2026-04-28T09:00:00Z', 3.0), ('2026-04-28T10:01:00Z', 4.0);",
    )
    .unwrap();
    assert_eq!(
        read_values(&cap, &state).0,
        [3.0, 4.0],
        "late rows never read"
    );
    assert!(read_values(&cap, &state).0.is_empty());
}

/// Defect 9: `DELETE FROM t` restarts rowids; the reader sees `max(rowid) < mark` or a changed
/// row at its mark and re-reads from the start (new rows sharing the last timestamp included).
#[test]
fn defect_9_telemetry_delete_all_then_new_rows_are_sent() {
    let (_env, app, state, cap) = telemetry_env(
        "CREATE TABLE m (ts TEXT, v REAL);
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 1.0), ('2026-04-28T10:00:00Z', 2.0),
                              ('2026-04-28T10:00:00Z', 3.0);",
    );
    assert_eq!(read_values(&cap, &state).0, [1.0, 2.0, 3.0]);
    app.execute_batch(
        "DELETE FROM m;
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 4.0), ('2026-04-28T10:00:00Z', 5.0);",
    )
    .unwrap();
    assert_eq!(
        read_values(&cap, &state).0,
        [4.0, 5.0],
        "rows after DELETE FROM lost"
    );
    // More rows than before the delete: the row at the old mark changed → reset too.
    app.execute_batch(
        "DELETE FROM m;
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 6.0), ('2026-04-28T10:00:00Z', 7.0),
           ('2026-04-28T10:00:00Z', 8.0), ('2026-04-28T10:00:00Z', 9.0);",
    )
    .unwrap();
    assert_eq!(read_values(&cap, &state).0, [6.0, 7.0, 8.0, 9.0]);
    assert!(read_values(&cap, &state).0.is_empty());
}

/// Defect 9: VACUUM renumbers implicit rowids (after the application's retention deleted old
/// rows); rows appended after it are still sent (earlier ones may be sent again: the cloud
/// dedups, nothing is lost).
#[test]
fn defect_9_telemetry_vacuum_renumbering_loses_nothing() {
    let (_env, app, state, cap) = telemetry_env(
        "CREATE TABLE m (ts TEXT, v REAL);
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 1.0), ('2026-04-28T10:00:00Z', 2.0),
           ('2026-04-28T10:00:00Z', 3.0), ('2026-04-28T10:00:00Z', 4.0),
           ('2026-04-28T10:00:00Z', 5.0), ('2026-04-28T10:00:00Z', 6.0);",
    );
    assert_eq!(read_values(&cap, &state).0.len(), 6);
    app.execute_batch("DELETE FROM m WHERE v < 4.0;").unwrap();
    app.execute_batch("VACUUM;").unwrap();
    let max: i64 = app
        .query_row("SELECT max(rowid) FROM m", [], |r| r.get(0))
        .unwrap();
    assert_eq!(max, 3, "VACUUM did not renumber");
    app.execute_batch(
        "INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 7.0), ('2026-04-28T10:00:00Z', 8.0);",
    )
    .unwrap();
    let got = read_values(&cap, &state).0;
    assert!(
        got.contains(&7.0) && got.contains(&8.0),
        "rows appended after VACUUM lost: {got:?}"
    );
}

/// Defect 9: a cursor saved by an earlier agent (`(ts, rowid)` order) is converted without
/// losing a row: the mark becomes the last rowid below which that order had read everything.
#[test]
fn defect_9_telemetry_legacy_ts_rowid_cursor_migrates_without_loss() {
    let (_env, _app, state, cap) = telemetry_env(
        "CREATE TABLE m (ts TEXT, v REAL);
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 1.0), ('2026-04-28T10:05:00Z', 2.0),
                              ('2026-04-28T10:01:00Z', 3.0);",
    );
    // The old reader had sent rows 1 and 3 ((ts, rowid) order) and saved (10:01, 3).
    state
        .conn()
        .execute(
            "INSERT INTO telemetry(table_name, batch_seq, cursor_ts, cursor_rowid) \
             VALUES('m', 2, '\"2026-04-28T10:01:00Z\"', 3)",
            [],
        )
        .unwrap();
    let (values, _) = read_values(&cap, &state);
    assert!(values.contains(&2.0), "row 2 (10:05) lost: {values:?}");
    assert_eq!(state.telemetry_progress("m").unwrap().batch_seq, 3);
    assert!(read_values(&cap, &state).0.is_empty());
}

/// A table without a usable rowid is refused for telemetry with a clear reason.
#[test]
fn defect_9_telemetry_without_rowid_table_is_refused_clearly() {
    let (_env, _app, state, cap) =
        telemetry_env("CREATE TABLE m (ts TEXT PRIMARY KEY, v REAL) WITHOUT ROWID;");
    assert!(!cap.catalog().telemetry.contains_key("m"));
    let reason = cap.catalog().not_enrolled.get("m").cloned().unwrap();
    assert!(reason.contains("WITHOUT ROWID"), "{reason}");
    assert!(state.telemetry_progress("m").unwrap().cursor.is_none());
}

/// A schema change of a telemetry table (ADD COLUMN: new fields, new digests) is not a reset:
/// only the new row is read.
#[test]
fn defect_9_telemetry_add_column_is_not_a_reset() {
    let (mut env, app, mut state, mut cap) = telemetry_env(
        "CREATE TABLE m (ts TEXT, v REAL);
         INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 1.0), ('2026-04-28T10:00:00Z', 2.0);",
    );
    assert_eq!(read_values(&cap, &state).0, [1.0, 2.0]);
    app.execute_batch("ALTER TABLE m ADD COLUMN unit TEXT DEFAULT 'C';")
        .unwrap();
    cap.poll(&mut state, &mut env.ids).unwrap();
    app.execute_batch("INSERT INTO m VALUES ('2026-04-28T10:00:00Z', 3.0, 'K');")
        .unwrap();
    let (values, read) = read_values(&cap, &state);
    assert_eq!(values, [3.0]);
    assert!(!read.reset);
}
