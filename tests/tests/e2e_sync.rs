//! End to end: a real SQLite file captured by the real agent → real mosquitto (mTLS + ACL) →
//! the local runner's ingest handler → PostgreSQL mirror, which must equal the source table
//! after a mixed workload that includes an `ALTER TABLE … ADD COLUMN` mid-run.
//!
//! The agent and the runner run in-process (their library entry points, exactly what the
//! binaries call); the broker and PostgreSQL are real processes started by the harness.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::{approve, current_hash, hash_of, lineage, Stack, DEADLINE};
use edge_e2e::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_to_mirror_equals_source_across_add_column() {
    let mut stack = Stack::start(
        "CREATE TABLE device_state (id INTEGER PRIMARY KEY NOT NULL, mode TEXT, setpoint REAL);
         CREATE TABLE readings (site TEXT NOT NULL, seq INTEGER NOT NULL, value REAL, raw BLOB,
                                PRIMARY KEY (site, seq)) WITHOUT ROWID;
         INSERT INTO device_state VALUES (1, 'heat', 20.5), (2, 'cool', 18.0), (3, 'off', NULL);",
    )
    .await;
    stack.start_agent("");
    let (app, pg, deps) = (&stack.app, &stack.pg, &stack.deps);

    // --- phase 1: mixed workload, then approval of the first schemas ------------------------
    for i in 0..200i64 {
        app.execute(
            "INSERT INTO device_state (id, mode, setpoint) VALUES (?1, ?2, ?3)",
            rusqlite::params![100 + i, format!("m{i}"), i as f64 / 4.0],
        )
        .unwrap();
        app.execute(
            "INSERT INTO readings VALUES ('site-a', ?1, ?2, ?3)",
            rusqlite::params![i, i as f64 * 1.5, vec![i as u8, 0, 255]],
        )
        .unwrap();
    }
    app.execute_batch(
        "UPDATE device_state SET mode = 'eco' WHERE id % 3 = 0;
         DELETE FROM device_state WHERE id % 7 = 0;
         UPDATE device_state SET id = 5000 WHERE id = 101;  -- primary-key change
         DELETE FROM readings WHERE seq % 5 = 0;
         UPDATE readings SET value = -1.25 WHERE seq % 4 = 1;",
    )
    .unwrap();

    for table in ["device_state", "readings"] {
        let id = stack.lineage_id(table).await;
        approve(deps, id).await;
    }

    // --- phase 2: ADD COLUMN followed immediately by writes that use it ---------------------
    app.execute_batch(
        "ALTER TABLE device_state ADD COLUMN note TEXT;
         UPDATE device_state SET note = 'n-' || id WHERE id % 2 = 0;
         INSERT INTO device_state (id, mode, setpoint, note) VALUES (9000, 'new', 1.0, 'fresh');
         DELETE FROM device_state WHERE id = 102;",
    )
    .unwrap();
    let new_hash = hash_of(app, "device_state");
    wait_for(DEADLINE, "the cloud to see device_state's new schema", || {
        let new_hash = new_hash.clone();
        async move { current_hash(pg, "device_state").await.as_deref() == Some(new_hash.as_str()) }
    })
    .await;
    let (id, _, _) = lineage(pg, "device_state").await.unwrap();
    approve(deps, id).await;
    for i in 0..50i64 {
        app.execute(
            "UPDATE device_state SET setpoint = ?1, note = ?2 WHERE id = ?3",
            rusqlite::params![i as f64 + 0.5, format!("late-{i}"), 100 + i * 2],
        )
        .unwrap();
    }

    // --- the mirrors converge to the source -------------------------------------------------
    stack.assert_mirror_converges("device_state", &["id"]).await;
    stack
        .assert_mirror_converges("readings", &["site", "seq"])
        .await;
    // Nothing left waiting in staging once everything is approved.
    let staged: i64 = stack
        .pg
        .query_one("SELECT count(*) FROM edge_staged_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0, "every staged row was replayed");
    stack.stop().await;
}
