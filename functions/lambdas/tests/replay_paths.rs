//! Replay worker on real PostgreSQL, the parts the throughput work touched: staged `pk`/`row`
//! parsed from text into every kind of value (NULLs, blobs, reals incl. infinities, integers in
//! REAL columns, numerics, text with quotes and unicode), chunks that cross a journal-epoch
//! boundary (the range delete works per epoch run), and rows the worker must leave staged in
//! the middle of a drained range: misfits (→ `materialization_failed`, counted toward the
//! circuit breaker) and rows of a hash nobody approved.
#![allow(clippy::unwrap_used)]

mod approval;
mod common;

use std::collections::BTreeMap;

use approval::approve_with_intent;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use edge_functions::ingest::Outcome;
use edge_functions::replay::{drain, Budget};
use edge_protocol::fingerprint::SchemaColumns;
use serde_json::{json, Value};

/// `readings (id INTEGER PRIMARY KEY, label TEXT, reading REAL, raw BLOB, amount DECIMAL)`
fn readings() -> SchemaColumns {
    SchemaColumns::new(
        "readings",
        vec![
            col("id", "INTEGER", 1, 1),
            col("label", "TEXT", 0, 0),
            col("reading", "REAL", 0, 0),
            col("raw", "BLOB", 0, 0),
            col("amount", "DECIMAL(10,2)", 0, 0),
        ],
    )
}

/// The same table with one more column: a hash that is never approved here.
fn readings_v2() -> SchemaColumns {
    let mut cols = readings().columns;
    cols.push(col("extra", "TEXT", 0, 0));
    SchemaColumns::new("readings", cols)
}

/// Labels that exercise the JSON text path.
const LABELS: [&str; 6] = [
    "plain",
    "it's \"quoted\" \\ and {braces}",
    "ünïcödé ✓ 😀",
    "$text_with_nul",
    "{\"$base64\": \"AA==\"}",
    "",
];

/// A row's value for each column, varied by `n`.
fn row(id: i64, n: i64) -> Value {
    let reading = match n % 5 {
        0 => json!(n as f64 / 8.0),
        1 => json!(n), // an INTEGER in a REAL column
        2 => json!({"$real": "inf"}),
        3 => json!({"$real": "-inf"}),
        _ => Value::Null,
    };
    let raw = match n % 3 {
        0 => json!({"$base64": STANDARD.encode([0u8, 255, (n % 256) as u8])}),
        1 => json!({"$base64": ""}),
        _ => Value::Null,
    };
    let amount = match n % 4 {
        0 => json!(n),
        1 => json!(n as f64 / 4.0),
        2 => json!(0.1),
        _ => Value::Null,
    };
    let label = if n % 7 == 6 {
        Value::Null
    } else {
        json!(format!("{} #{n}", LABELS[(n % 6) as usize]))
    };
    json!({"id": id, "label": label, "reading": reading, "raw": raw, "amount": amount})
}

/// The mirror row a change leaves: (seq, deleted, label, reading, raw, amount) as SQL text.
type MirrorRow = (
    i64,
    bool,
    Option<String>,
    Option<f64>,
    Option<Vec<u8>>,
    Option<String>,
);

fn mirror_value(seq: i64, op: &str, row: &Value) -> MirrorRow {
    if op == "delete" {
        return (seq, true, None, None, None, None);
    }
    let reading = match &row["reading"] {
        Value::Null => None,
        Value::Object(m) if m["$real"] == "inf" => Some(f64::INFINITY),
        Value::Object(_) => Some(f64::NEG_INFINITY),
        v => v.as_f64(),
    };
    let raw = row["raw"]["$base64"]
        .as_str()
        .map(|b| STANDARD.decode(b).unwrap());
    // numeric from an INTEGER is its digits, from a REAL the shortest round-trip decimal.
    let amount = match &row["amount"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .map_or_else(|| format!("{}", v.as_f64().unwrap()), |i| i.to_string()),
        ),
    };
    (
        seq,
        false,
        row["label"].as_str().map(str::to_owned),
        reading,
        raw,
        amount,
    )
}

#[tokio::test]
async fn replay_across_an_epoch_boundary_leaves_misfits_and_unbound_rows_staged() {
    let e = env().await;
    let s = readings();
    let epochs = [e.id(), e.id()];
    // Per epoch 90 changes over ids 0..30 (inserts, updates, deletes); ids 1000+ are misfits
    // (a TEXT value in the REAL column) with no other change, ids 2000+ come under the
    // unapproved hash. Both sit in the middle of the ranges the worker deletes.
    let mut batches = Vec::new();
    let mut expected: BTreeMap<i64, (Vec<u8>, MirrorRow)> = BTreeMap::new();
    let (mut misfits, mut unbound) = (0, 0);
    for (ei, epoch) in epochs.iter().enumerate() {
        let mut changes: Vec<Change> = Vec::new();
        for k in 1..=90i64 {
            // Every tenth seq: room for the kept rows in between.
            let seq = 10 * k;
            let n = k + 90 * i64::try_from(ei).unwrap();
            let id = (n * 7) % 30;
            let change = if n % 11 == 0 {
                del(seq, id)
            } else {
                let op = if n % 2 == 0 { "insert" } else { "update" };
                (seq, op, json!({"id": id}), row(id, n))
            };
            // Epoch ids are increasing UUIDv7s: the later epoch's version always wins.
            let version = (epoch.as_bytes().to_vec(), seq);
            let value = mirror_value(seq, change.1, &change.3);
            match expected.get(&id) {
                Some((v, old)) if (v.clone(), old.0) > version => {}
                _ => {
                    expected.insert(id, (version.0, value));
                }
            }
            changes.push(change);
        }
        // Two per epoch: under the circuit breaker's 5, so the drain is not paused by them.
        for k in [17i64, 55] {
            let id = 1000 + k + 100 * i64::try_from(ei).unwrap();
            let mut r = row(id, k);
            r["reading"] = json!("not a number");
            changes.push((10 * k + 1, "insert", json!({"id": id}), r));
            misfits += 1;
        }
        changes.sort_by_key(|c| c.0);
        for c in changes.chunks(20) {
            batches.push(row_batch(e.id(), *epoch, &s, true, c));
        }
        // Unapproved hash, its seqs between the approved hash's.
        let v2 = readings_v2();
        let extra: Vec<Change> = [40i64, 41, 77]
            .iter()
            .map(|k| {
                let id = 2000 + k + 1000 * i64::try_from(ei).unwrap();
                let mut r = row(id, *k);
                r["extra"] = json!("x");
                (10 * k + 2, "insert", json!({"id": id}), r)
            })
            .collect();
        unbound += extra.len();
        batches.insert(
            batches.len() - 1,
            row_batch(e.id(), *epoch, &v2, true, &extra),
        );
    }
    for b in &batches {
        assert!(matches!(e.rows(b).await, Outcome::Accepted { .. }), "{b}");
    }
    // The last batch was of the approved hash, so that is the hash the approval binds.
    let staged = approve_with_intent(&e, "readings").await;
    assert_eq!(
        staged,
        2 * 90 + i64::from(misfits) + i64::try_from(unbound).unwrap()
    );

    // 25 rows per chunk: chunks straddle the epoch boundary and the kept rows.
    let r = drain(&e.deps, 25, Budget::UNLIMITED).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.failed, i64::from(misfits));
    assert_eq!(r.drained, 2 * 90);
    assert_eq!(r.intents_done, 1);

    let mirror: String = e.mirror_table().await;
    let rows = e
        .client
        .query(
            &format!(
                "SELECT \"id\", \"_edge_epoch\", \"_edge_commit_seq\", \"_edge_deleted\", \
                     \"label\", \"reading\", \"raw\", \"amount\"::text FROM \"{mirror}\""
            ),
            &[],
        )
        .await
        .unwrap();
    let got: BTreeMap<i64, (Vec<u8>, MirrorRow)> = rows
        .iter()
        .map(|r| {
            let deleted: bool = r.get(3);
            let value = if deleted {
                (r.get(2), true, None, None, None, None)
            } else {
                (r.get(2), false, r.get(4), r.get(5), r.get(6), r.get(7))
            };
            (
                r.get::<_, i64>(0),
                (r.get::<_, uuid::Uuid>(1).as_bytes().to_vec(), value),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // What stays: the misfits (failed, with the error, counted) and the unbound hash's rows.
    let kept = e
        .client
        .query(
            "SELECT staging_reason, count(*), bool_and(error IS NOT NULL) \
             FROM edge_staged_rows GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let kept: Vec<(String, i64, Option<bool>)> = kept
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        kept,
        vec![
            (
                "materialization_failed".to_owned(),
                i64::from(misfits),
                Some(true)
            ),
            (
                "schema_review".to_owned(),
                i64::try_from(unbound).unwrap(),
                Some(false)
            ),
        ]
    );
    assert_eq!(
        e.scalar_i64("SELECT staged_row_count FROM edge_table_lineages")
            .await,
        i64::from(misfits) + i64::try_from(unbound).unwrap()
    );
    // The misfits are staged `materialization_failed`; the chunks also materialized rows, which
    // ends the breaker's streak (reliability.md §6: one unfit row never pauses healthy traffic).
    assert_eq!(
        e.scalar_i64("SELECT materialization_failure_count::bigint FROM edge_table_lineages")
            .await,
        0
    );
    assert_eq!(
        e.scalar_i64("SELECT rows_replayed FROM edge_replay_intents")
            .await,
        2 * 90
    );
}
