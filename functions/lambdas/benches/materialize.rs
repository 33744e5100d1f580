//! Materialization throughput (issue 5 benchmark): rows/s into a mirror table, insert-only and
//! 50 % updates, against COPY of the same rows into an identical plain table, in the same run
//! on the harness' PostgreSQL (or `DATABASE_URL`).
//!
//! Four figures per workload, all with batches of 500 rows, one transaction per batch:
//! - `materializer`: plan (fitness + newest-per-key) + the version-guarded upsert statement;
//! - `handler`: the whole ingest handler (decode, ledger, lineage lock, classification,
//!   materialization, watermark, lineage health) from envelope bytes, with the metrics
//!   recording as in a Lambda (registry + EMF tally, the most work), and the same with
//!   `CloudMetrics::disabled()` interleaved batch by batch into a twin table: their ratio is
//!   the cost of metrics (issue 15: ≥ 0.97);
//! - `copy`: binary COPY of the same rows into a plain table with the same columns and key.
//!
//! `cargo bench -p edge-functions --bench materialize` (env `EDGE_BENCH_ROWS`, default 200000;
//! 2000 when run as a smoke test by `cargo test --all-targets`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_cloud_core::ingress::envelope;
use edge_cloud_core::mirror::{plan_upserts, MirrorTable};
use edge_e2e::governance::approve_all_columns;
use edge_e2e::TestDatabase;
use edge_functions::ingest::{handle, Outcome};
use edge_functions::metrics::CloudMetrics;
use edge_functions::store::mirror::apply_upserts;
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::batch::{Op, RowBatch, RowChange};
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use edge_protocol::ids::{new_uuid_v7, CommitPosition};
use edge_protocol::value::{Row, SqlValue};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

const BATCH: usize = 500;

fn schema(table: &str) -> SchemaColumns {
    SchemaColumns::new(
        table,
        vec![
            ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
            ColumnFingerprint::from_table_info("mode", "TEXT", 0, 0),
            ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
            ColumnFingerprint::from_table_info("counter", "INTEGER", 0, 0),
            ColumnFingerprint::from_table_info("note", "TEXT", 0, 0),
        ],
    )
}

fn row(id: i64, v: i64) -> Row {
    let mut r = Row::new();
    r.insert("id".into(), SqlValue::Integer(id));
    r.insert("mode".into(), SqlValue::Text(format!("mode-{}", v % 7)));
    r.insert("setpoint".into(), SqlValue::Real(v as f64 / 3.0));
    r.insert("counter".into(), SqlValue::Integer(v));
    r.insert(
        "note".into(),
        SqlValue::Text(format!("note for row {id} version {v}")),
    );
    r
}

/// Batches of changes: `updates` = fraction of changes that update an id inserted earlier.
fn workload(rows: usize, update_every: usize, first_seq: i64) -> Vec<Vec<RowChange>> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut next_id = 0i64;
    let mut cur = Vec::with_capacity(BATCH);
    for i in 0..rows {
        seq += 1;
        let is_update = update_every > 0 && i % update_every == 1 && next_id > 0;
        let (id, op) = if is_update {
            // An id from an earlier batch (ids < next_id - BATCH are never in this batch).
            ((seq * 7919) % next_id.max(1), Op::Update)
        } else {
            next_id += 1;
            (next_id - 1 + 10_000_000, Op::Insert)
        };
        let mut pk = Row::new();
        pk.insert("id".into(), SqlValue::Integer(id));
        cur.push(RowChange {
            commit_seq: seq,
            op,
            pk,
            row: Some(row(id, seq)),
        });
        if cur.len() == BATCH {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn setup(deps: &Deps, device: &Device, table: &str, epoch: Uuid) -> MirrorTable {
    let s = schema(table);
    let first = RowBatch {
        format_version: 1,
        capture_strategy: "sqlite_row_batch_v1".into(),
        batch_id: Uuid::now_v7(),
        journal_epoch: epoch,
        source_table: table.into(),
        schema_hash: s.schema_hash(),
        schema_columns: Some(s.clone()),
        first_commit_seq: 1,
        last_commit_seq: 1,
        rows: vec![RowChange {
            commit_seq: 1,
            op: Op::Insert,
            pk: [("id".to_owned(), SqlValue::Integer(-1))]
                .into_iter()
                .collect(),
            row: Some(row(-1, 0)),
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
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let tx = c.transaction().await.unwrap();
    approve_all_columns(&*tx, lineage, Uuid::now_v7)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    MirrorTable::for_schema(&device.device_id, &s)
}

async fn bench_materializer(
    deps: &Deps,
    table: &MirrorTable,
    device: Uuid,
    epoch: Uuid,
    batches: &[Vec<RowChange>],
) -> f64 {
    let mut c = deps.pool.get().await.unwrap();
    let start = Instant::now();
    let mut n = 0usize;
    for b in batches {
        let tx = c.transaction().await.unwrap();
        let plan = plan_upserts(
            table,
            b.iter()
                .map(|r| (CommitPosition::new(epoch, r.commit_seq), r)),
        );
        apply_upserts(&*tx, table, device, &plan).await.unwrap();
        tx.commit().await.unwrap();
        n += b.len();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The whole ingest handler over `batches`, twice at once: into `tables[0]` with `deps_on`
/// (metrics recorded) and into `tables[1]` with `deps_off` (`CloudMetrics::disabled`), batch by
/// batch alternately, so both see the same database state, cache and machine load (issue 15:
/// metrics on vs off). Returns rows/s of each.
async fn bench_handler_pair(
    deps_on: &Deps,
    deps_off: &Deps,
    device: &Device,
    tables: [&str; 2],
    epoch: Uuid,
    batches: &[Vec<RowChange>],
    ms: u64,
) -> (f64, f64) {
    let topic = format!("bench/{}/sync/rows/batch", device.device_name);
    let payloads = |table: &str, ms: u64| -> Vec<Vec<u8>> {
        let s = schema(table);
        batches
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                let b = RowBatch {
                    format_version: 1,
                    capture_strategy: "sqlite_row_batch_v1".into(),
                    batch_id: new_uuid_v7(ms + i as u64, [2; 10]),
                    journal_epoch: epoch,
                    source_table: table.into(),
                    schema_hash: s.schema_hash(),
                    schema_columns: None,
                    first_commit_seq: rows[0].commit_seq,
                    last_commit_seq: rows[rows.len() - 1].commit_seq,
                    rows: rows.clone(),
                    snapshot: None,
                };
                serde_json::to_vec(&b).unwrap()
            })
            .collect()
    };
    let on = payloads(tables[0], ms);
    let off = payloads(tables[1], ms + 50_000_000);
    let (mut t_on, mut t_off) = (Duration::ZERO, Duration::ZERO);
    let mut n = 0usize;
    for (i, rows) in batches.iter().enumerate() {
        // Alternate which goes first, so neither always meets the other's leftovers.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (deps, p, t) = if which == 0 {
                (deps_on, &on[i], &mut t_on)
            } else {
                (deps_off, &off[i], &mut t_off)
            };
            let start = Instant::now();
            let o = handle(deps, envelope(&topic, &device.device_name, 0, p))
                .await
                .unwrap();
            *t += start.elapsed();
            assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
        }
        n += rows.len();
    }
    (
        n as f64 / t_on.as_secs_f64(),
        n as f64 / t_off.as_secs_f64(),
    )
}

async fn bench_copy(deps: &Deps, name: &str, batches: &[Vec<RowChange>]) -> f64 {
    let mut c = deps.pool.get().await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE \"{name}\" (device_id uuid NOT NULL, id bigint NOT NULL, mode text, \
         setpoint double precision, counter bigint, note text, _edge_epoch uuid NOT NULL, \
         _edge_commit_seq bigint NOT NULL, _edge_deleted boolean NOT NULL DEFAULT false, \
         created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (device_id, id))"
    ))
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
    let mut n = 0usize;
    for b in batches {
        let tx = c.transaction().await.unwrap();
        let sink = tx
            .copy_in(&format!(
                "COPY \"{name}\" (device_id, id, mode, setpoint, counter, note, _edge_epoch, \
                 _edge_commit_seq, _edge_deleted) FROM STDIN (FORMAT binary)"
            ))
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &types);
        tokio::pin!(writer);
        for r in b {
            let row = r.row.as_ref().unwrap();
            let id = match row["id"] {
                SqlValue::Integer(i) => i,
                _ => unreachable!(),
            };
            let text = |k: &str| match &row[k] {
                SqlValue::Text(s) => s.clone(),
                _ => unreachable!(),
            };
            let setpoint = match row["setpoint"] {
                SqlValue::Real(f) => f,
                _ => unreachable!(),
            };
            let counter = match row["counter"] {
                SqlValue::Integer(i) => i,
                _ => unreachable!(),
            };
            writer
                .as_mut()
                .write(&[
                    &device,
                    &id,
                    &text("mode"),
                    &setpoint,
                    &counter,
                    &text("note"),
                    &epoch,
                    &r.commit_seq,
                    &false,
                ])
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
        tx.commit().await.unwrap();
        n += b.len();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("EDGE_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        // `cargo bench` passes --bench; under `cargo test --all-targets` this runs as a quick
        // smoke test instead.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            200_000
        } else {
            2_000
        });
    let db = match std::env::var("DATABASE_URL") {
        Ok(_) => None,
        Err(_) => Some(TestDatabase::create_async().await),
    };
    let url = db
        .as_ref()
        .map_or_else(|| std::env::var("DATABASE_URL").unwrap(), TestDatabase::url);
    let p = pool::connect(&url, 2).unwrap();
    migrate(&mut p.get().await.unwrap()).await.unwrap();
    let mut deps = Deps::new(p);
    // The Lambdas' metrics (registry + the per-invocation EMF tally): the most work per batch.
    deps.metrics = Arc::new(CloudMetrics::with_emf());
    let mut deps_off = deps.clone();
    deps_off.metrics = Arc::new(CloudMetrics::disabled());
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

    println!("# materialization benchmark: {rows} rows per run, batches of {BATCH}");
    println!("| workload | path | rows/s | x COPY |");
    println!("|---|---|---:|---:|");
    for (label, update_every) in [("insert-only", 0usize), ("50% updates", 2)] {
        let key = if update_every == 0 { "ins" } else { "upd" };
        let batches = workload(rows, update_every, 10);
        let copy = bench_copy(&deps, &format!("bench_copy_{key}"), &workload(rows, 0, 10)).await;
        let t1 = format!("bench_mat_{key}");
        let m1 = setup(&deps, &device, &t1, epoch).await;
        let mat = bench_materializer(&deps, &m1, device.device_id, epoch, &batches).await;
        let t2 = format!("bench_handler_{key}");
        setup(&deps, &device, &t2, epoch).await;
        let t3 = format!("bench_handler_off_{key}");
        setup(&deps, &device, &t3, epoch).await;
        let ms = if update_every == 0 {
            1_733_100_000_000
        } else {
            1_733_200_000_000
        };
        let (hnd, hnd_off) =
            bench_handler_pair(&deps, &deps_off, &device, [&t2, &t3], epoch, &batches, ms).await;
        println!("| {label} | copy (same rows, insert) | {copy:.0} | 1.00 |");
        println!("| {label} | materializer | {mat:.0} | {:.2} |", mat / copy);
        println!(
            "| {label} | ingest handler | {hnd:.0} | {:.2} |",
            hnd / copy
        );
        println!(
            "| {label} | ingest handler, metrics off | {hnd_off:.0} | {:.2} |",
            hnd_off / copy
        );
        println!("| {label} | metrics on / off | | {:.3} |", hnd / hnd_off);
    }
}
