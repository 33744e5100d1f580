//! Flow-control drills with the real agent (issue 6 proof): the cloud protects itself by pausing
//! one lineage on one device, the device buffers that table in its journal while other tables
//! keep syncing, and after the cause is gone the device resumes and nothing is lost.
//!
//! - backpressure: the staged-row cap is exceeded → `pause_lineage` → the device buffers; the
//!   backlog is approved and drains below the threshold → the sweep sends `resume_lineage` → the
//!   device drains from its watermark; the mirror equals the source.
//! - circuit breaker: five poison rows in a row → pause → the operator fixes the binding →
//!   reset-materialization → resume; the mirror equals the source on the projected columns.
#![allow(clippy::unwrap_used)]

mod common;

use common::{approve, Stack, DEADLINE};
use edge_e2e::wait_for;
use edge_functions::store::backpressure::reset_materialization;

async fn set_policy(stack: &Stack, sql_set: &str) {
    stack
        .pg
        .execute(
            "INSERT INTO edge_replication_policy (project_id, org_id) VALUES ($1, $2) \
             ON CONFLICT (project_id) DO NOTHING",
            &[&stack.device.project_id, &stack.device.org_id],
        )
        .await
        .unwrap();
    stack
        .pg
        .execute(
            &format!("UPDATE edge_replication_policy SET {sql_set} WHERE project_id = $1"),
            &[&stack.device.project_id],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backpressure_pauses_the_device_which_buffers_then_resumes_without_loss() {
    let mut stack = Stack::start(
        "CREATE TABLE hot (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
         CREATE TABLE cool (id INTEGER PRIMARY KEY NOT NULL, v TEXT);",
    )
    .await;
    set_policy(&stack, "max_pending_rows_per_lineage = 50").await;
    stack.start_agent("");

    // `cool` is approved and flows; `hot` waits for its schema review, so its rows stage.
    stack
        .app
        .execute("INSERT INTO cool VALUES (1, 'a')", [])
        .unwrap();
    let cool = stack.lineage_id("cool").await;
    approve(&stack.deps, cool).await;
    for i in 0..120i64 {
        stack
            .app
            .execute(
                "INSERT INTO hot VALUES (?1, ?2)",
                rusqlite::params![i, format!("h{i}")],
            )
            .unwrap();
    }

    // Over the cap: the lineage pauses and the device acknowledges `pause_lineage`.
    stack.wait_control_acked("hot", "pause_lineage").await;
    let (status, _, device_pause, staged_at_pause) = stack.lineage_state("hot").await;
    assert_eq!(status, "paused");
    assert_eq!(device_pause.as_deref(), Some("volume_backpressure"));
    assert!(
        staged_at_pause > 50,
        "paused because {staged_at_pause} > 50 rows staged"
    );

    // The device keeps journaling `hot` durably and keeps syncing `cool`.
    for i in 120..200i64 {
        stack
            .app
            .execute(
                "INSERT INTO hot VALUES (?1, ?2)",
                rusqlite::params![i, format!("h{i}")],
            )
            .unwrap();
    }
    for i in 2..40i64 {
        stack
            .app
            .execute(
                "INSERT INTO cool VALUES (?1, ?2)",
                rusqlite::params![i, format!("c{i}")],
            )
            .unwrap();
    }
    stack.assert_mirror_converges("cool", &["id"]).await;
    let (_, _, _, staged_now) = stack.lineage_state("hot").await;
    assert_eq!(
        staged_now, staged_at_pause,
        "nothing of the paused table was published"
    );
    assert!(
        stack.journal_entries("hot") >= 80,
        "the paused table's changes wait in the device journal"
    );

    // The operator approves `hot`: the staged backlog replays, drops below 80 % of the cap,
    // the sweep sends `resume_lineage`, and the device drains what it buffered.
    let hot = stack.lineage_id("hot").await;
    approve(&stack.deps, hot).await;
    stack.wait_control_acked("hot", "resume_lineage").await;
    stack.assert_mirror_converges("hot", &["id"]).await;
    let pg = &stack.pg;
    wait_for(DEADLINE, "the hot lineage to be active", || async move {
        pg.query_one(
            "SELECT status = 'active' AND device_pause_reason IS NULL \
             FROM edge_table_lineages WHERE source_table = 'hot'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circuit_breaker_pauses_on_poison_rows_and_reset_resumes_after_the_fix() {
    let mut stack = Stack::start(
        "CREATE TABLE meter (id INTEGER PRIMARY KEY NOT NULL, reading INTEGER, label TEXT);
         INSERT INTO meter VALUES (1, 10, 'first');",
    )
    .await;
    stack.start_agent("");
    let meter = stack.lineage_id("meter").await;
    approve(&stack.deps, meter).await;
    stack.assert_mirror_converges("meter", &["id"]).await;

    // SQLite stores text in an INTEGER column without complaint; the mirror's bigint cannot
    // hold it. Five such rows in a row trip the breaker.
    for i in 2..7i64 {
        stack
            .app
            .execute(
                "INSERT INTO meter VALUES (?1, 'not a number', ?2)",
                rusqlite::params![i, format!("poison {i}")],
            )
            .unwrap();
    }
    stack.wait_control_acked("meter", "pause_lineage").await;
    let (status, reason, device_pause, _) = stack.lineage_state("meter").await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), device_pause.as_deref()),
        ("paused", Some("circuit_breaker"), Some("circuit_breaker"))
    );

    // While paused, good rows wait on the device.
    for i in 7..30i64 {
        stack
            .app
            .execute(
                "INSERT INTO meter VALUES (?1, ?2, ?3)",
                rusqlite::params![i, i * 10, format!("good {i}")],
            )
            .unwrap();
    }

    // The fix: the operator stops projecting the poisoned column, then resets.
    stack
        .pg
        .execute(
            "UPDATE edge_column_bindings SET action = 'ignore' WHERE source_column_name = 'reading'",
            &[],
        )
        .await
        .unwrap();
    let report = {
        let mut c = stack.deps.pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        let r = reset_materialization(&*tx, meter, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        r
    };
    assert!(
        report.resumed,
        "the device had been paused by a control: {report:?}"
    );
    assert_eq!(report.status, "active");
    stack.wait_control_acked("meter", "resume_lineage").await;
    // Every row — the poisoned ones included — is in the mirror on the projected columns.
    stack
        .assert_mirror_converges_on("meter", &["id"], Some(&["id", "label"]))
        .await;
    stack.stop().await;
}
