//! Replay worker on real PostgreSQL: approval while live batches stream in, the worker stopped
//! between chunks and aborted mid-flight, restarted; the mirror must equal the source exactly.
#![allow(clippy::unwrap_used)]

mod approval;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use approval::approve_with_intent;
use common::*;
use edge_functions::ingest::Outcome;
use edge_functions::replay::{drain, Budget};
use serde_json::{json, Value};

/// The source's history: one change per commit_seq, over 150 ids, inserts, updates, deletes.
fn history(n: i64) -> Vec<Change> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::new();
    for seq in 1..=n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = i64::try_from((x >> 33) % 150).unwrap();
        let change = if (x >> 20) % 7 == 0 {
            del(seq, id)
        } else {
            let op = if (x >> 12) % 2 == 0 {
                "insert"
            } else {
                "update"
            };
            (
                seq,
                op,
                json!({"id": id}),
                json!({"id": id, "mode": format!("m{seq}"), "setpoint": seq as f64 / 4.0}),
            )
        };
        out.push(change);
    }
    out
}

/// Expected mirror: per id the newest change (seq, deleted, mode, setpoint).
fn expected(changes: &[Change]) -> BTreeMap<i64, (i64, bool, Value, Value)> {
    let mut m = BTreeMap::new();
    for (seq, op, pk, row) in changes {
        let id = pk["id"].as_i64().unwrap();
        let deleted = *op == "delete";
        let entry = m.entry(id).or_insert((0, false, Value::Null, Value::Null));
        if *seq > entry.0 {
            *entry = if deleted {
                (*seq, true, Value::Null, Value::Null)
            } else {
                (*seq, false, row["mode"].clone(), row["setpoint"].clone())
            };
        }
    }
    m
}

async fn mirror_state(e: &Env, table: &str) -> BTreeMap<i64, (i64, bool, Value, Value)> {
    let rows = e
        .client
        .query(
            &format!(
                "SELECT \"id\", \"_edge_commit_seq\", \"_edge_deleted\", \"mode\", \"setpoint\" \
                 FROM \"{table}\""
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let deleted: bool = r.get(2);
            let (mode, sp) = if deleted {
                (Value::Null, Value::Null)
            } else {
                (
                    r.get::<_, Option<String>>(3)
                        .map_or(Value::Null, Value::from),
                    r.get::<_, Option<f64>>(4).map_or(Value::Null, Value::from),
                )
            };
            (r.get::<_, i64>(0), (r.get::<_, i64>(1), deleted, mode, sp))
        })
        .collect()
}

#[tokio::test]
async fn approval_during_live_stream_and_killed_worker_converge_exactly() {
    let e = Arc::new(env().await);
    let epoch = e.id();
    let s = device_state();
    let changes = history(3_000);
    let batches: Vec<Value> = changes
        .chunks(50)
        .map(|c| row_batch(e.id(), epoch, &s, true, c))
        .collect();
    // 20 batches (1,000 rows) arrive before anyone looks at the table: staged for review.
    for b in &batches[..20] {
        assert!(matches!(e.rows(b).await, Outcome::Accepted { .. }));
    }
    // The rest streams in (with redeliveries and some reordering) while the operator approves.
    let mut live: Vec<Value> = batches[20..].to_vec();
    live.swap(3, 9);
    live.swap(12, 20);
    live.insert(15, batches[5].clone());
    live.insert(25, batches[22].clone());
    let streamer = {
        let e = Arc::clone(&e);
        tokio::spawn(async move {
            for b in &live {
                e.rows(b).await;
                tokio::task::yield_now().await;
            }
        })
    };
    edge_e2e::wait_for(
        Duration::from_secs(30),
        "live batches before approval",
        || {
            let e = Arc::clone(&e);
            async move {
                e.scalar_i64("SELECT count(*) FROM edge_export_segments")
                    .await
                    >= 25
            }
        },
    )
    .await;
    let staged_at_approval = approve_with_intent(&e, "device_state").await;
    assert!(staged_at_approval >= 1_000);
    let mirror: String = e.mirror_table().await;

    // Worker 1 stops after two chunks (a Lambda deadline, between chunks).
    let r = drain(
        &e.deps,
        100,
        Budget {
            until: None,
            max_chunks: Some(2),
        },
    )
    .await;
    assert_eq!((r.chunks, r.drained, r.budget_exhausted), (2, 200, true));
    let (status, replayed): (String, i64) = {
        let row = e
            .client
            .query_one("SELECT status, rows_replayed FROM edge_replay_intents", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), replayed), ("running", 200));

    // Worker 2 is aborted mid-flight (a crash: whatever chunk it was in rolls back).
    let worker = {
        let e = Arc::clone(&e);
        tokio::spawn(async move { drain(&e.deps, 50, Budget::UNLIMITED).await })
    };
    edge_e2e::wait_for(Duration::from_secs(30), "worker 2 progress", || {
        let e = Arc::clone(&e);
        async move {
            e.scalar_i64("SELECT rows_replayed FROM edge_replay_intents")
                .await
                >= 400
        }
    })
    .await;
    worker.abort();
    let _ = worker.await;

    streamer.await.unwrap();
    // Worker 3 finishes the job.
    let r = drain(&e.deps, 100, Budget::UNLIMITED).await;
    assert_eq!(r.errors, 0);
    let row = e
        .client
        .query_one(
            "SELECT status, rows_replayed, failure_count FROM edge_replay_intents",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert_eq!(
        row.get::<_, i64>(1),
        staged_at_approval,
        "each staged row replayed exactly once across three workers"
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        0
    );
    assert_eq!(
        e.scalar_i64("SELECT staged_row_count + staged_bytes FROM edge_table_lineages")
            .await,
        0
    );
    assert_eq!(mirror_state(&e, &mirror).await, expected(&changes));
    // An idle worker finds nothing.
    let r = drain(&e.deps, 100, Budget::UNLIMITED).await;
    assert_eq!((r.chunks, r.errors), (0, 0));
}

#[tokio::test]
async fn rows_staged_while_paused_after_a_finished_replay_are_not_stranded() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let changes = history(400);
    let batches: Vec<Value> = changes
        .chunks(50)
        .map(|c| row_batch(e.id(), epoch, &s, true, c))
        .collect();
    for b in &batches[..4] {
        e.rows(b).await;
    }
    approve_with_intent(&e, "device_state").await;
    assert_eq!(drain(&e.deps, 64, Budget::UNLIMITED).await.drained, 200);
    // A volume pause: rows arrive out of order while paused (behind the old cursor too).
    e.client
        .execute(
            "UPDATE edge_table_lineages SET status = 'paused', \
                 pause_reason = 'volume_backpressure', device_pause_reason = 'volume_backpressure'",
            &[],
        )
        .await
        .unwrap();
    for b in batches[4..].iter().rev() {
        e.rows(b).await;
    }
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        200
    );
    // The worker holds off while paused.
    assert_eq!(drain(&e.deps, 64, Budget::UNLIMITED).await.chunks, 0);
    // The sweep resumes (backlog 200 < 80 % of 100,000) and opens an intent.
    let r = edge_functions::sweep::sweep_once(
        &e.deps,
        &edge_functions::control_publisher::NoPublisher,
        time::OffsetDateTime::now_utc(),
    )
    .await;
    assert_eq!(r.resumed, 1);
    assert_eq!(drain(&e.deps, 64, Budget::UNLIMITED).await.drained, 200);
    // Both replays counted on the replay path, each chunk timed (observability.md §2).
    let text = e.deps.metrics.encode();
    assert!(
        text.contains("edge_rows_materialized_total{kind=\"rows\",path=\"replay\"} 400"),
        "{text}"
    );
    assert!(
        text.contains("edge_handler_duration_seconds_count{handler=\"replay\"}"),
        "{text}"
    );
    let mirror: String = e.mirror_table().await;
    assert_eq!(mirror_state(&e, &mirror).await, expected(&changes));
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_replay_intents WHERE status = 'done'")
            .await,
        2
    );
}

/// A 1,000-row chunk is read, planned and written in slices that stream through one pipeline:
/// an id updated in several slices must end at its newest version, and a misfit in any slice
/// must stay staged (the range delete excludes it whatever order the statements land in).
#[tokio::test]
async fn a_chunk_written_in_pipelined_slices_keeps_the_newest_version_and_every_misfit() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let mut changes = history(1200);
    let poison = [260_i64, 777];
    // Poison rows of ids nothing else touches: a misfit superseded by a newer change of its id
    // in the same slice is drained like any superseded row (the live path does the same).
    for seq in poison {
        let id = 10_000 + seq;
        changes[usize::try_from(seq - 1).unwrap()] = (
            seq,
            "insert",
            json!({"id": id}),
            json!({"id": id, "mode": "poison", "setpoint": "not a number"}),
        );
    }
    for b in changes.chunks(100) {
        let o = e.rows(&row_batch(e.id(), epoch, &s, true, b)).await;
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    }
    approve_with_intent(&e, "device_state").await;
    let r = drain(&e.deps, 1000, Budget::UNLIMITED).await;
    assert_eq!((r.drained, r.failed, r.errors), (1198, 2, 0), "{r:?}");
    let left = e
        .client
        .query(
            "SELECT source_commit_seq, staging_reason FROM edge_staged_rows \
             ORDER BY source_commit_seq",
            &[],
        )
        .await
        .unwrap();
    let left: Vec<(i64, String)> = left.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        left,
        poison
            .iter()
            .map(|s| (*s, "materialization_failed".to_owned()))
            .collect::<Vec<_>>()
    );
    let mirror: String = e.mirror_table().await;
    let fitting: Vec<Change> = changes
        .into_iter()
        .filter(|c| !poison.contains(&c.0))
        .collect();
    assert_eq!(mirror_state(&e, &mirror).await, expected(&fitting));
}
