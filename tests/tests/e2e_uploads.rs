//! Issue 13 defects 2 and 3 (reliability §2): a spill upload ends with the cloud's signed
//! `upload_result`, and only `committed` lets the device delete the spilled rows. The whole
//! local stack — PostgreSQL, mosquitto (mTLS + ACL), the runner, the agent on a real SQLite
//! file — with failpoints (the `fail` crate, compiled in for these tests only) for the crash
//! windows. Every test holds the failpoint scenario lock, so they run one at a time.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::Instant;

use common::{approve, Stack, DEADLINE, SPILL_SECRET};
use edge_e2e::wait_for;
use edge_functions::objects::local::LocalObjects;

/// Small enough that the big row cannot fit one message.
const MAX_PAYLOAD: usize = 16 * 1024;

const SCHEMA: &str = "CREATE TABLE docs (id INTEGER PRIMARY KEY NOT NULL, body TEXT, note TEXT);
     CREATE TABLE events (id INTEGER PRIMARY KEY NOT NULL, kind TEXT);
     INSERT INTO docs VALUES (1, 'small', 'a');
     INSERT INTO events VALUES (1, 'boot');";

/// Poorly compressible text, so the object really is about `n` bytes.
fn noise(n: usize) -> String {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect()
}

fn small_payload(config: String) -> String {
    config.replace(
        "max_payload_bytes = 131072",
        &format!("max_payload_bytes = {MAX_PAYLOAD}"),
    )
}

async fn approved(stack: &Stack) {
    for table in ["docs", "events"] {
        let id = stack.lineage_id(table).await;
        approve(&stack.deps, id).await;
    }
}

/// (status, outcome_code) of the `docs` upload, if one was recorded.
async fn upload(stack: &Stack) -> Option<(String, Option<String>)> {
    stack
        .pg
        .query_opt(
            "SELECT status, outcome_code FROM edge_spill_uploads WHERE source_table = 'docs'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Spill ledger rows of `docs` (a committed spill has exactly one, however often it was sent).
async fn spill_segments(stack: &Stack) -> i64 {
    stack
        .pg
        .query_one(
            "SELECT count(*) FROM edge_export_segments WHERE kind = 'spill'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Whether the journal still holds the big row's entry (the only one over 100 kB).
fn journal_holds_big_row(stack: &Stack) -> bool {
    stack
        .app
        .query_row(
            "SELECT count(*) FROM __omega_journal j JOIN __omega_schemas s USING (schema_id) \
             WHERE s.table_name = 'docs' AND length(j.\"row\") > 100000",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

/// Two runners whose spill directories differ: the object is PUT where one serves uploads, the
/// finalize is processed by one that cannot see it (`spill_object_missing`). The device must
/// keep the row, upload again (same batch) and the row must land once a runner can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spill_finalize_failed_on_another_runner_is_retried_not_lost() {
    let _scenario = fail::FailScenario::setup();
    let started = Instant::now();
    let mut stack = Stack::start_with_spill(SCHEMA).await;
    // The upload endpoint writes to dir A; the runner that grants and finalizes reads dir B.
    let dir_b = tempfile::tempdir().unwrap();
    let served = stack.spill_objects("http://unused.invalid");
    let base = Stack::serve_objects(&served).await;
    stack.stop_runner().await;
    stack
        .start_runner_with(LocalObjects::new(
            dir_b.path(),
            &base,
            SPILL_SECRET.to_vec(),
        ))
        .await;
    stack.start_agent_edited("", small_payload);
    approved(&stack).await;

    stack
        .app
        .execute(
            "INSERT INTO docs VALUES (100, ?1, 'big')",
            rusqlite::params![noise(200_000)],
        )
        .unwrap();
    edge_e2e::wait_for(DEADLINE, "a finalize that finds no object", || async {
        upload(&stack)
            .await
            .is_some_and(|(_, code)| code.as_deref() == Some("spill_object_missing"))
    })
    .await;
    // The cloud kept nothing of it; the device must still hold the row.
    assert_eq!(spill_segments(&stack).await, 0);
    assert!(
        journal_holds_big_row(&stack),
        "the spilled row left the journal although the cloud never committed it"
    );

    // A runner that sees the upload endpoint's directory takes over: the retry lands.
    stack.stop_runner().await;
    stack
        .start_runner_with(LocalObjects::new(
            served.dir(),
            &base,
            SPILL_SECRET.to_vec(),
        ))
        .await;
    stack
        .app
        .execute("INSERT INTO docs VALUES (2, 'after', 'b')", [])
        .unwrap();
    stack.assert_mirror_converges("docs", &["id"]).await;
    assert_eq!(spill_segments(&stack).await, 1);
    wait_for(DEADLINE, "the docs journal to drain", || async {
        !journal_holds_big_row(&stack)
    })
    .await;
    stack.stop().await;
    println!(
        "spill_finalize_failed_on_another_runner_is_retried_not_lost: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A row whose line is over the cloud's per-line limit is never uploaded to be refused and
/// never deleted: its table is blocked with its rows in the journal, the other tables flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spill_row_over_the_line_limit_blocks_the_table_and_keeps_its_rows() {
    let _scenario = fail::FailScenario::setup();
    let started = Instant::now();
    let mut stack = Stack::start_with_spill(SCHEMA).await;
    stack.start_agent_edited("", small_payload);
    approved(&stack).await;

    let limit = edge_protocol::limits::SPILL_MAX_LINE_BYTES;
    // 'x' compresses to nothing: a huge line, a tiny object.
    let huge = "x".repeat(limit + 1024);
    stack
        .app
        .execute(
            "INSERT INTO docs VALUES (100, ?1, 'huge')",
            rusqlite::params![huge],
        )
        .unwrap();
    drop(huge);
    stack
        .app
        .execute("INSERT INTO docs VALUES (2, 'after', 'b')", [])
        .unwrap();
    stack
        .app
        .execute("INSERT INTO events VALUES (2, 'later')", [])
        .unwrap();
    // The other table flows: the agent has read past the huge row.
    let (_, _, events) = common::lineage(&stack.pg, "events").await.unwrap();
    let events = events.unwrap();
    let pg = &stack.pg;
    wait_for(DEADLINE, "events row 2 in the mirror", || async {
        pg.query_one(
            &format!("SELECT count(*) FROM \"{events}\" WHERE id = 2"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    // Give a wrongly-uploading agent every chance: a finalize would be recorded by now if it
    // had been sent with the events batch. Wait for a later events row to be sure.
    stack
        .app
        .execute("INSERT INTO events VALUES (3, 'later still')", [])
        .unwrap();
    wait_for(DEADLINE, "events row 3 in the mirror", || async {
        pg.query_one(
            &format!("SELECT count(*) FROM \"{events}\" WHERE id = 3"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    let (_, _, docs) = common::lineage(&stack.pg, "docs").await.unwrap();
    let docs = docs.unwrap();
    let in_mirror = |id: i64| {
        let sql = format!("SELECT count(*) FROM \"{docs}\" WHERE id = {id}");
        async move { pg.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert!(
        journal_holds_big_row(&stack),
        "the oversized row was deleted from the journal: lost"
    );
    assert_eq!(
        in_mirror(100).await,
        0,
        "the oversized row cannot be in the mirror"
    );
    assert_eq!(
        in_mirror(2).await,
        0,
        "rows after the blocked row must wait behind it (the table is blocked)"
    );
    assert!(
        upload(&stack).await.is_none(),
        "the oversized row was uploaded: {:?}",
        upload(&stack).await
    );
    stack.stop().await;
    println!(
        "spill_row_over_the_line_limit_blocks_the_table_and_keeps_its_rows: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Spill up to the finalize, crash the agent at the finalize's PUBACK (before any result is
/// handled), wait until the cloud has committed the upload, restart: the table must not stall
/// and the row must land exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_after_the_cloud_finalized_a_spill_does_not_stall_the_table() {
    let _scenario = fail::FailScenario::setup();
    let started = Instant::now();
    let mut stack = Stack::start_with_spill(SCHEMA).await;
    stack.start_agent_edited("", small_payload);
    approved(&stack).await;
    fail::cfg("agent-finalize-acked", "panic").unwrap();
    stack
        .app
        .execute(
            "INSERT INTO docs VALUES (100, ?1, 'big')",
            rusqlite::params![noise(200_000)],
        )
        .unwrap();
    stack.wait_agent_crashed().await;
    fail::cfg("agent-finalize-acked", "off").unwrap();
    wait_for(DEADLINE, "the cloud to finalize the upload", || async {
        upload(&stack).await.is_some_and(|(s, _)| s == "finalized")
    })
    .await;
    stack
        .app
        .execute("INSERT INTO docs VALUES (2, 'after', 'b')", [])
        .unwrap();
    stack.start_agent_edited("", small_payload);
    stack.assert_mirror_converges("docs", &["id"]).await;
    assert_eq!(spill_segments(&stack).await, 1, "the spill landed once");
    wait_for(DEADLINE, "the docs journal to drain", || async {
        !journal_holds_big_row(&stack)
    })
    .await;
    stack.stop().await;
    println!(
        "restart_after_the_cloud_finalized_a_spill_does_not_stall_the_table: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A crash between the cursor move of a finished spill and the removal of its outbox entry:
/// after the restart the table must not stall (later rows land) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_spill_ack_and_outbox_remove_neither_stalls_nor_loses() {
    let _scenario = fail::FailScenario::setup();
    let started = Instant::now();
    let mut stack = Stack::start_with_spill(SCHEMA).await;
    stack.start_agent_edited("", small_payload);
    approved(&stack).await;
    fail::cfg("agent-spill-acked-before-outbox-remove", "panic").unwrap();
    stack
        .app
        .execute(
            "INSERT INTO docs VALUES (100, ?1, 'big')",
            rusqlite::params![noise(200_000)],
        )
        .unwrap();
    stack.wait_agent_crashed().await;
    fail::cfg("agent-spill-acked-before-outbox-remove", "off").unwrap();
    stack
        .app
        .execute("INSERT INTO docs VALUES (2, 'after', 'b')", [])
        .unwrap();
    stack.start_agent_edited("", small_payload);
    stack.assert_mirror_converges("docs", &["id"]).await;
    assert_eq!(spill_segments(&stack).await, 1, "the spill landed once");
    let state = rusqlite::Connection::open(stack.dir.path().join("state.db")).unwrap();
    wait_for(DEADLINE, "the spill's outbox entry to go", || async {
        state
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap()
            == 0
    })
    .await;
    stack.stop().await;
    println!(
        "crash_between_spill_ack_and_outbox_remove_neither_stalls_nor_loses: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
