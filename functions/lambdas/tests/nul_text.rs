//! SQLite text may contain U+0000; PostgreSQL's `jsonb` and `text` refuse it. Such a value must
//! never cost the batch (or the row): it stages under an internal marker, the operator sees the
//! real value, and the mirror write fails for that row only (`materialization_failed`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_functions::ingest::Outcome;
use serde_json::{json, Value};

#[tokio::test]
async fn text_with_nul_is_staged_kept_and_fails_only_its_own_row() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let nul_row = (
        1,
        "insert",
        json!({"id": 1}),
        json!({"id": 1, "mode": "he\u{0}at", "setpoint": 20.5}),
    );
    // Before approval: the batch stages (schema review), NUL and all.
    let b = row_batch(e.id(), epoch, &s, true, &[nul_row, ins(2, 2, "cool", 19.0)]);
    match e.rows(&b).await {
        Outcome::Accepted { .. } => {}
        other => panic!("the batch must be accepted, got {other:?}"),
    }
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        2
    );
    let stored: Value = e
        .client
        .query_one(
            "SELECT \"row\" FROM edge_staged_rows WHERE source_commit_seq = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["mode"], json!({"$text_with_nul": "aGUAYXQ="}));

    // Approval replays: the clean row materializes, the NUL row stays staged as a failure
    // with its original value intact.
    e.approve("device_state").await;
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_mirror_0000d007_device_state")
            .await,
        1
    );
    let r = e
        .client
        .query_one("SELECT staging_reason, \"row\" FROM edge_staged_rows", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "materialization_failed");
    assert_eq!(
        edge_cloud_core::staged_json::decode(&r.get::<_, Value>(1))["mode"],
        "he\u{0}at"
    );
}
