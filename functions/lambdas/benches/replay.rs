//! Replay drain rate (issue 6 benchmark): staged rows/s into the mirror for a backlog, through
//! the replay worker exactly as it runs (chunk transactions: intent + lineage lock, keyset read,
//! fitness + newest-per-key plan, version-guarded upsert, delete of the drained rows, cursor),
//! against binary COPY of the same rows into an identical plain table in the same run, with the
//! same rows per transaction.
//!
//! `cargo bench -p edge-functions --bench replay` (env `EDGE_BENCH_REPLAY_ROWS`, default
//! 1,000,000; 2,000 when run as a smoke test by `cargo test --all-targets`; `EDGE_REPLAY_CHUNK`
//! rows per chunk, default the worker's).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

use edge_cloud_core::ingress::envelope;
use edge_e2e::governance::approve_all_columns;
use edge_e2e::TestDatabase;
use edge_functions::ingest::{handle, Outcome};
use edge_functions::replay::{drain, Budget, DEFAULT_CHUNK};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::batch::{Op, RowBatch, RowChange};
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use edge_protocol::ids::new_uuid_v7;
use edge_protocol::value::SqlValue;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

const TABLE: &str = "bench_replay";

fn schema() -> SchemaColumns {
    SchemaColumns::new(
        TABLE,
        vec![
            ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
            ColumnFingerprint::from_table_info("mode", "TEXT", 0, 0),
            ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
            ColumnFingerprint::from_table_info("counter", "INTEGER", 0, 0),
            ColumnFingerprint::from_table_info("note", "TEXT", 0, 0),
        ],
    )
}

/// An approved lineage (mirror + bindings) with `rows` staged rows of its bound hash and an
/// open replay intent — the state right after an approval of a large backlog.
async fn setup(deps: &Deps, device: &Device, epoch: Uuid, rows: i64) -> Uuid {
    let s = schema();
    let first = RowBatch {
        format_version: 1,
        capture_strategy: "sqlite_row_batch_v1".into(),
        batch_id: Uuid::now_v7(),
        journal_epoch: epoch,
        source_table: TABLE.into(),
        schema_hash: s.schema_hash(),
        schema_columns: Some(s.clone()),
        first_commit_seq: 0,
        last_commit_seq: 0,
        rows: vec![RowChange {
            commit_seq: 0,
            op: Op::Insert,
            pk: [("id".to_owned(), SqlValue::Integer(-1))]
                .into_iter()
                .collect(),
            row: Some(
                [
                    ("id".to_owned(), SqlValue::Integer(-1)),
                    ("mode".to_owned(), SqlValue::Text("seed".into())),
                ]
                .into_iter()
                .collect(),
            ),
        }],
        snapshot: None,
    };
    let topic = format!("bench/{}/sync/rows/batch", device.device_name);
    let bytes = serde_json::to_vec(&first).unwrap();
    let o = handle(deps, envelope(&topic, &device.device_name, 0, &bytes))
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    let mut c = deps.pool.get().await.unwrap();
    let lineage: Uuid = c
        .query_one(
            "SELECT id FROM edge_table_lineages WHERE source_table = $1",
            &[&TABLE],
        )
        .await
        .unwrap()
        .get(0);
    let tx = c.transaction().await.unwrap();
    approve_all_columns(&*tx, lineage, Uuid::now_v7)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The backlog, staged in one statement (what the ingest path would have staged row by row).
    let stage_time = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    c.execute(
        "INSERT INTO edge_staged_rows (lineage_id, journal_epoch, source_commit_seq, pk_key, \
             stage_time, device_id, source_table, batch_id, op, pk, \"row\", schema_hash, \
             staging_reason, bytes) \
         SELECT $1, $2, g, g::text, $3, $4, $5, $6, 'insert', jsonb_build_object('id', g), \
             jsonb_build_object('id', g, 'mode', 'mode-' || (g % 7), \
                 'setpoint', g::float8 / 3, 'counter', g, \
                 'note', 'note for row ' || g || ' version ' || g), \
             $7, 'schema_review', 120 \
         FROM generate_series(1::bigint, $8::bigint) AS g",
        &[
            &lineage,
            &epoch,
            &stage_time,
            &device.device_id,
            &TABLE,
            &Uuid::now_v7(),
            &s.schema_hash(),
            &rows,
        ],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE edge_table_lineages SET staged_row_count = $2::bigint, staged_bytes = $2::bigint * 120 \
         WHERE id = $1",
        &[&lineage, &rows],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO edge_replay_intents (id, lineage_id, action_kind) VALUES ($1, $2, 'bench')",
        &[&Uuid::now_v7(), &lineage],
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE edge_staged_rows")
        .await
        .unwrap();
    lineage
}

async fn bench_copy(deps: &Deps, rows: i64, chunk: i64) -> f64 {
    let mut c = deps.pool.get().await.unwrap();
    c.batch_execute(
        "CREATE TABLE bench_replay_copy (device_id uuid NOT NULL, id bigint NOT NULL, mode text, \
         setpoint double precision, counter bigint, note text, _edge_epoch uuid NOT NULL, \
         _edge_commit_seq bigint NOT NULL, _edge_deleted boolean NOT NULL DEFAULT false, \
         created_at timestamptz NOT NULL DEFAULT now(), \
         updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (device_id, id))",
    )
    .await
    .unwrap();
    let types = [
        Type::UUID,
        Type::INT8,
        Type::TEXT,
        Type::FLOAT8,
        Type::INT8,
        Type::TEXT,
        Type::UUID,
        Type::INT8,
        Type::BOOL,
    ];
    let device = Uuid::now_v7();
    let epoch = Uuid::now_v7();
    let start = Instant::now();
    let mut g = 1i64;
    while g <= rows {
        let tx = c.transaction().await.unwrap();
        let sink = tx
            .copy_in(
                "COPY bench_replay_copy (device_id, id, mode, setpoint, counter, note, \
                 _edge_epoch, _edge_commit_seq, _edge_deleted) FROM STDIN (FORMAT binary)",
            )
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &types);
        tokio::pin!(writer);
        let end = (g + chunk - 1).min(rows);
        for i in g..=end {
            writer
                .as_mut()
                .write(&[
                    &device,
                    &i,
                    &format!("mode-{}", i % 7),
                    &(i as f64 / 3.0),
                    &i,
                    &format!("note for row {i} version {i}"),
                    &epoch,
                    &i,
                    &false,
                ])
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
        tx.commit().await.unwrap();
        g = end + 1;
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::var("EDGE_BENCH_REPLAY_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        // `cargo bench` passes --bench; under `cargo test --all-targets` this is a smoke test.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            1_000_000
        } else {
            2_000
        });
    let chunk: i64 = std::env::var("EDGE_REPLAY_CHUNK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CHUNK);
    let db = match std::env::var("DATABASE_URL") {
        Ok(_) => None,
        Err(_) => Some(TestDatabase::create_async().await),
    };
    let url = db
        .as_ref()
        .map_or_else(|| std::env::var("DATABASE_URL").unwrap(), TestDatabase::url);
    let p = pool::connect(&url, 2).unwrap();
    migrate(&mut p.get().await.unwrap()).await.unwrap();
    let deps = Deps::new(p);
    let device = Device {
        device_id: Uuid::now_v7(),
        device_name: format!("bench-{}", Uuid::now_v7().simple()),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        fleet_id: Uuid::now_v7(),
        topic_slug: "bench".into(),
        control_key: vec![0; 32],
    };
    create_device(&**deps.pool.get().await.unwrap(), &device)
        .await
        .unwrap();
    let epoch = new_uuid_v7(1_700_000_000_000, [0; 10]);

    let copy = bench_copy(&deps, rows, chunk).await;
    let lineage = setup(&deps, &device, epoch, rows).await;
    let start = Instant::now();
    let r = drain(&deps, chunk, Budget::UNLIMITED).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!((r.drained, r.errors, r.intents_done), (rows, 0, 1), "{r:?}");
    let c = deps.pool.get().await.unwrap();
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM edge_staged_rows WHERE lineage_id = $1",
            &[&lineage],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let replay = rows as f64 / secs;
    println!("# replay drain benchmark: {rows} staged rows, {chunk} rows per chunk transaction");
    println!("| path | rows/s | x COPY |");
    println!("|---|---:|---:|");
    println!("| copy (same rows, same rows per transaction) | {copy:.0} | 1.00 |");
    println!(
        "| replay worker ({} chunks) | {replay:.0} | {:.2} |",
        r.chunks,
        replay / copy
    );
}
