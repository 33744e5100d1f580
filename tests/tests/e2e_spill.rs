//! End to end, protocol §7: a row larger than the agent's `max_payload_bytes` travels as a
//! spill upload — `url_request` over real mosquitto (mTLS + ACL), a signed `url_grant` from the
//! runner, an HTTP PUT of the zstd JSON Lines object to the runner's upload endpoint,
//! `finalize` — and arrives in the PostgreSQL mirror exactly, while the other rows (of the same
//! table before and after it, and of another table meanwhile) keep flowing.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::{approve, Stack, DEADLINE};
use edge_e2e::wait_for;

/// Small enough that a 200 KB row cannot fit one message, large enough for ordinary batches.
const MAX_PAYLOAD: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_row_arrives_through_a_spill_upload_while_others_flow() {
    let mut stack = Stack::start_with_spill(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY NOT NULL, body TEXT, note TEXT);
         CREATE TABLE events (id INTEGER PRIMARY KEY NOT NULL, kind TEXT);
         INSERT INTO docs VALUES (1, 'small', 'a');
         INSERT INTO events VALUES (1, 'boot');",
    )
    .await;
    stack.start_agent_edited("", |config| {
        config.replace(
            "max_payload_bytes = 131072",
            &format!("max_payload_bytes = {MAX_PAYLOAD}"),
        )
    });
    for table in ["docs", "events"] {
        let id = stack.lineage_id(table).await;
        approve(&stack.deps, id).await;
    }

    // Poorly compressible text, so the object is really ~200 KB and the row really does not
    // fit a message.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let big: String = (0..200_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect();
    let app = &stack.app;
    for i in 2..20i64 {
        app.execute(
            "INSERT INTO docs VALUES (?1, ?2, 'before')",
            rusqlite::params![i, format!("doc {i}")],
        )
        .unwrap();
    }
    app.execute(
        "INSERT INTO docs VALUES (100, ?1, 'big')",
        rusqlite::params![big],
    )
    .unwrap();
    for i in 20..40i64 {
        app.execute(
            "INSERT INTO docs VALUES (?1, ?2, 'after')",
            rusqlite::params![i, format!("doc {i}")],
        )
        .unwrap();
        app.execute(
            "INSERT INTO events VALUES (?1, ?2)",
            rusqlite::params![i, format!("e{i}")],
        )
        .unwrap();
    }
    app.execute("UPDATE docs SET note = 'updated' WHERE id = 3", [])
        .unwrap();

    stack.assert_mirror_converges("docs", &["id"]).await;
    stack.assert_mirror_converges("events", &["id"]).await;

    // It went through the upload path: a finalized upload, a spill ledger row with the
    // big row, and the grant acknowledged by the device.
    let pg = &stack.pg;
    let r = pg
        .query_one(
            "SELECT u.status, u.grants, s.status, s.row_count, u.object_bytes \
             FROM edge_spill_uploads u JOIN edge_export_segments s \
               ON s.device_id = u.device_id AND s.batch_id = u.batch_id \
             WHERE u.source_table = 'docs' AND s.kind = 'spill'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "finalized");
    assert!(r.get::<_, i32>(1) >= 1);
    assert_eq!(r.get::<_, String>(2), "materialized");
    assert_eq!(r.get::<_, i32>(3), 1);
    let object_bytes: i64 = r.get::<_, Option<i64>>(4).unwrap();
    assert!(
        object_bytes > MAX_PAYLOAD as i64,
        "object {object_bytes} bytes"
    );
    stack.wait_control_acked("docs", "url_grant").await;
    // Every change acknowledged by the cloud left the journal (the spilled one included).
    wait_for(DEADLINE, "the docs journal to drain", || async {
        stack.journal_entries("docs") <= 1
    })
    .await;
    stack.stop().await;
}
