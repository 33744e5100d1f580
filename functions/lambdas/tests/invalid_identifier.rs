//! Issue 13 defect 16 (reliability.md §7): NUL in `source_table`, in a column name or in a key
//! of a row object is the batch rejection `invalid_identifier` — named and in the ledger, never
//! a dead letter (PostgreSQL can hold NUL in no identifier).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_functions::ingest::Outcome;
use serde_json::json;

#[tokio::test]
async fn nul_in_identifiers_is_rejected_as_invalid_identifier_and_ledgered() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let mut cases = Vec::new();
    // source_table
    let mut v = row_batch(e.id(), epoch, &s, true, &[ins(1, 1, "heat", 20.5)]);
    v["source_table"] = json!("device\u{0}state");
    cases.push(("source_table", v));
    // a column name of the fingerprint
    let mut v = row_batch(e.id(), epoch, &s, true, &[ins(1, 1, "heat", 20.5)]);
    v["schema_columns"]["columns"][1]["name"] = json!("mo\u{0}de");
    cases.push(("schema_columns", v));
    // a key of the row
    let mut v = row_batch(e.id(), epoch, &s, false, &[ins(1, 1, "heat", 20.5)]);
    v["rows"][0]["row"] = json!({"id": 1, "mo\u{0}de": "heat", "setpoint": 20.5});
    cases.push(("row key", v));
    // a key of the primary key
    let mut v = row_batch(e.id(), epoch, &s, false, &[ins(1, 1, "heat", 20.5)]);
    v["rows"][0]["pk"] = json!({"i\u{0}d": 1});
    v["rows"][0]["row"] = json!({"i\u{0}d": 1, "mode": "heat", "setpoint": 20.5});
    cases.push(("pk key", v));
    for (what, batch) in &cases {
        match e.rows(batch).await {
            Outcome::Rejected { code, message } => {
                assert_eq!(code.as_str(), "invalid_identifier", "{what}: {message}")
            }
            other => panic!("{what}: expected invalid_identifier, got {other:?}"),
        }
    }
    let ledgered = e
        .scalar_i64(
            "SELECT count(*) FROM edge_export_segments \
             WHERE status = 'rejected' AND rejection_code = 'invalid_identifier'",
        )
        .await;
    assert_eq!(ledgered, cases.len() as i64, "each one is in the ledger");
    let dead = e.scalar_i64("SELECT count(*) FROM edge_dead_letters").await;
    assert_eq!(dead, 0, "none is a dead letter");
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_table_lineages")
            .await,
        0
    );
}
