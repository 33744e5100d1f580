//! End to end, issue 13 defect 10 (edge-policies §5, reliability.md §5): re-snapshots the agent
//! runs itself end with a marker and remove the mirror rows the device no longer has — no ghost
//! rows after a restore from backup or a retention drop. An older cloud that never grants
//! `snapshot_markers` sees no snapshot fields and the snapshot converges as before.
//!
//! The real agent (in-process), mosquitto (mTLS + ACL), the runner and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::Path;

use common::{approve, Stack, DEADLINE, DEFAULT_REPLICATION};
use edge_e2e::wait_for;

const SCHEMA: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, v TEXT);";

/// Small chunks (`chunk_rows`) so every run has several.
fn replication(chunk_rows: usize, extra: &str) -> String {
    format!("{DEFAULT_REPLICATION}\nsnapshot_chunk_rows = {chunk_rows}\n{extra}")
}

async fn scalar(stack: &Stack, sql: &str) -> i64 {
    stack.pg.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until the device applied the cloud's `set_wire_options` (its ack reached the cloud).
async fn wait_granted(stack: &Stack) {
    wait_for(DEADLINE, "the device to apply set_wire_options", || async {
        scalar(
            stack,
            "SELECT count(*) FROM edge_pending_controls \
             WHERE control_kind = 'set_wire_options' AND status = 'acked'",
        )
        .await
            > 0
    })
    .await;
}

/// Waits until a marked run of the lineage was swept; returns its ghost_rows_deleted.
async fn wait_swept(stack: &Stack, at_least: i64) -> i64 {
    let pg = &stack.pg;
    edge_e2e::wait_for_some(DEADLINE, "a swept snapshot run", || async move {
        pg.query_opt(
            "SELECT ghost_rows_deleted FROM edge_snapshot_runs WHERE state = 'swept' \
             AND ghost_rows_deleted >= $1 ORDER BY created_at DESC LIMIT 1",
            &[&at_least],
        )
        .await
        .unwrap()
        .map(|r| r.get::<_, i64>(0))
    })
    .await
}

fn insert_items(app: &rusqlite::Connection, ids: std::ops::RangeInclusive<i64>, v: &str) {
    for id in ids {
        app.execute(
            "INSERT INTO items (id, v) VALUES (?1, ?2)",
            rusqlite::params![id, v],
        )
        .unwrap();
    }
}

/// Replaces source.db with `backup` while the agent is stopped (what restoring a gateway's
/// database from a backup does), and reopens the application's connection.
fn restore(stack: &mut Stack, backup: &Path) {
    let source = stack.dir.path().join("source.db");
    stack.app = rusqlite::Connection::open_in_memory().unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", source.display()));
    }
    std::fs::copy(backup, &source).unwrap();
    let app = rusqlite::Connection::open(&source).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    app.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    stack.app = app;
}

/// First sync of 30 items, approved, mirror = source; then a backup taken, and after it rows
/// the backup does not have (ghosts once it is restored), a delete and an update.
async fn synced_then_diverged_from_backup(stack: &mut Stack, extra: &str) -> std::path::PathBuf {
    insert_items(&stack.app, 1..=30, "orig");
    stack.start_agent(&replication(7, extra));
    let id = stack.lineage_id("items").await;
    approve(&stack.deps, id).await;
    stack.assert_mirror_converges("items", &["id"]).await;
    let backup = stack.dir.path().join("backup.db");
    stack
        .app
        .execute("VACUUM INTO ?1", [backup.display().to_string()])
        .unwrap();
    insert_items(&stack.app, 31..=35, "after-backup");
    stack
        .app
        .execute_batch("DELETE FROM items WHERE id <= 3; UPDATE items SET v = 'new' WHERE id = 10;")
        .unwrap();
    stack.assert_mirror_converges("items", &["id"]).await;
    backup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defect_10_restore_from_backup_leaves_no_ghost_rows() {
    let mut stack = Stack::start(SCHEMA).await;
    let backup = synced_then_diverged_from_backup(&mut stack, "").await;
    wait_granted(&stack).await;
    stack.stop_agent().await;
    restore(&mut stack, &backup);
    stack.start_agent(&replication(7, ""));
    // Rows 31..35 exist only in the mirror now: the marked re-snapshot of the new epoch sweeps
    // them; 1..3 come back, 10 is 'orig' again.
    stack.assert_mirror_converges("items", &["id"]).await;
    let swept = wait_swept(&stack, 5).await;
    assert_eq!(swept, 5, "exactly the rows the restored database lacks");
    let runs = scalar(
        &stack,
        "SELECT count(*) FROM edge_snapshot_runs WHERE state = 'swept' AND chunk_count = 5 \
         AND row_count = 30",
    )
    .await;
    assert_eq!(runs, 1, "30 rows in chunks of 7: 5 chunks");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defect_10_retention_drop_resnapshot_sweeps_the_dropped_delete() {
    let mut stack = Stack::start(SCHEMA).await;
    insert_items(&stack.app, 1..=10, "orig");
    stack.start_agent(&replication(7, ""));
    let id = stack.lineage_id("items").await;
    approve(&stack.deps, id).await;
    stack.assert_mirror_converges("items", &["id"]).await;
    wait_granted(&stack).await;
    stack.stop_agent().await;
    // While the agent is down: a delete of a synced row, then more than the journal cap of
    // new rows, so the first retention check drops the table's pending entries — the delete
    // with them — and schedules a re-snapshot.
    stack
        .app
        .execute_batch("DELETE FROM items WHERE id = 4;")
        .unwrap();
    let big = "x".repeat(4000);
    insert_items(&stack.app, 100..=399, &big);
    stack.start_agent(&replication(50, "local_retention_bytes = 1048576"));
    stack.assert_mirror_converges("items", &["id"]).await;
    let swept = wait_swept(&stack, 1).await;
    assert_eq!(swept, 1, "the row whose delete was dropped");
    let dropped: i64 = scalar(
        &stack,
        "SELECT count(*) FROM edge_snapshot_runs WHERE state = 'swept' AND row_count = 309",
    )
    .await;
    assert_eq!(dropped, 1, "the re-snapshot carried every live row");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defect_10_an_older_cloud_gets_no_snapshot_fields_and_still_converges() {
    let mut stack = Stack::start(SCHEMA).await;
    // An older cloud: it never grants anything (the hello is answered by nobody).
    stack
        .pg
        .batch_execute(
            "CREATE FUNCTION no_grant() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NULL; END $$; \
             CREATE TRIGGER older_cloud BEFORE INSERT ON edge_pending_controls FOR EACH ROW \
             WHEN (NEW.control_kind = 'set_wire_options') EXECUTE FUNCTION no_grant();",
        )
        .await
        .unwrap();
    let backup = synced_then_diverged_from_backup(&mut stack, "").await;
    stack.stop_agent().await;
    restore(&mut stack, &backup);
    stack.start_agent(&replication(7, ""));
    // The unmarked re-snapshot re-sends every row of the restored database; without markers
    // nothing tells the cloud which rows are gone, so the ghosts stay (the behaviour before).
    let expected = common::source_rows(&stack.app, "items", &["id"]);
    let (_, _, mirror) = common::lineage(&stack.pg, "items").await.unwrap();
    let mirror = mirror.unwrap();
    wait_for(DEADLINE, "every restored row in the mirror", || async {
        let rows = common::mirror_rows(&stack.pg, &mirror, &["id"]).await;
        expected.iter().all(|(k, v)| rows.get(k) == Some(v))
    })
    .await;
    let rows = common::mirror_rows(&stack.pg, &mirror, &["id"]).await;
    assert_eq!(
        rows.len(),
        35,
        "30 restored rows and 5 ghosts: no sweep without markers"
    );
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM edge_snapshot_runs").await,
        0,
        "no batch carried snapshot fields"
    );
    assert_eq!(
        scalar(
            &stack,
            "SELECT count(*) FROM edge_pending_controls WHERE control_kind = 'set_wire_options'"
        )
        .await,
        0
    );
    stack.stop().await;
}
