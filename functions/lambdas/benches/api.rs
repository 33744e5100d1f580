//! HTTP API latency (issue 6 benchmark): p50/p99 of the lineage list and mirror-rows pages under
//! 20 concurrent clients, through the same router the `api` Lambda and the local runner serve
//! (driven in-process: request in, response out, real PostgreSQL behind it).
//!
//! Data: one project with 500 lineages and one approved lineage whose mirror holds 20,000 rows.
//! Each client alternates `GET …/edge/lineages?limit=50&page=k` and
//! `GET …/edge/lineages/{id}/mirror-rows?limit=100&page=k` over varying pages.
//!
//! `cargo bench -p edge-functions --bench api` (env `EDGE_BENCH_REQUESTS` per client, default
//! 200; 10 when run as a smoke test by `cargo test --all-targets`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_cloud_core::ingress::envelope;
use edge_e2e::governance::approve_all_columns;
use edge_e2e::TestDatabase;
use edge_functions::api::auth::{mint, AuthConfig, Claims, MANAGE_DEVICES};
use edge_functions::api::{handle, Api};
use edge_functions::ingest::handle as ingest;
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request};
use uuid::Uuid;

const CLIENTS: usize = 20;
const LINEAGES: i64 = 500;
const MIRROR_ROWS: i64 = 20_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let per_client: usize = std::env::var("EDGE_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            200
        } else {
            10
        });
    let db = match std::env::var("DATABASE_URL") {
        Ok(_) => None,
        Err(_) => Some(TestDatabase::create_async().await),
    };
    let url = db
        .as_ref()
        .map_or_else(|| std::env::var("DATABASE_URL").unwrap(), TestDatabase::url);
    let p = pool::connect(&url, CLIENTS).unwrap();
    migrate(&mut p.get().await.unwrap()).await.unwrap();
    let device = Device {
        device_id: Uuid::now_v7(),
        device_name: format!("bench-{}", Uuid::now_v7().simple()),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        fleet_id: Uuid::now_v7(),
        topic_slug: "bench".into(),
        control_key: vec![1; 32],
    };
    let c = p.get().await.unwrap();
    create_device(&**c, &device).await.unwrap();

    // The approved lineage: one real batch through ingest, the dev approval, then the mirror
    // filled in bulk (what many batches would have produced).
    let schema = SchemaColumns::new(
        "device_state",
        vec![
            ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
            ColumnFingerprint::from_table_info("mode", "TEXT", 0, 0),
            ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
            ColumnFingerprint::from_table_info("note", "TEXT", 0, 0),
        ],
    );
    let batch = serde_json::json!({
        "format_version": 1, "capture_strategy": "sqlite_row_batch_v1",
        "batch_id": Uuid::now_v7().to_string(), "journal_epoch": Uuid::now_v7().to_string(),
        "source_table": "device_state", "schema_hash": schema.schema_hash(),
        "schema_columns": schema, "first_commit_seq": 1, "last_commit_seq": 1,
        "rows": [{"commit_seq": 1, "op": "insert", "pk": {"id": 0},
                  "row": {"id": 0, "mode": "m", "setpoint": 1.5, "note": "n"}}],
    });
    let deps = Deps::new(p.clone());
    let topic = format!("bench/{}/sync/rows/batch", device.device_name);
    ingest(
        &deps,
        envelope(
            &topic,
            &device.device_name,
            1_733_000_000_000,
            batch.to_string().as_bytes(),
        ),
    )
    .await
    .unwrap();
    let lineage: Uuid = c
        .query_one("SELECT id FROM edge_table_lineages", &[])
        .await
        .unwrap()
        .get(0);
    let mirror = {
        let mut c = p.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        let r = approve_all_columns(&*tx, lineage, Uuid::now_v7)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        r.mirror_table.unwrap()
    };
    c.execute(
        &format!(
            "INSERT INTO {} (device_id, id, mode, setpoint, note, _edge_epoch, _edge_commit_seq) \
             SELECT $1, g, 'mode-' || (g % 7), g / 3.0, 'note for row ' || g, $2, g \
             FROM generate_series(1, $3::bigint) g",
            edge_cloud_core::naming::quote_ident(&mirror)
        ),
        &[&device.device_id, &Uuid::now_v7(), &MIRROR_ROWS],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO edge_table_lineages (id, org_id, project_id, fleet_id, device_id, \
             source_table, pause_reason, staged_row_count) \
         SELECT gen_random_uuid(), $1, $2, $3, $4, 'table_' || g, 'schema_review', g \
         FROM generate_series(1, $5::bigint) g",
        &[
            &device.org_id,
            &device.project_id,
            &device.fleet_id,
            &device.device_id,
            &(LINEAGES - 1),
        ],
    )
    .await
    .unwrap();
    c.batch_execute("ANALYZE").await.unwrap();
    drop(c);

    let secret = b"bench-secret".to_vec();
    let token = mint(
        &secret,
        &Claims {
            sub: "bench".into(),
            org_id: device.org_id,
            projects: vec![device.project_id],
            permissions: vec![MANAGE_DEVICES.into()],
            exp: 4_000_000_000,
            iat: 0,
        },
    )
    .unwrap();
    let api = Arc::new(Api::new(p.clone(), AuthConfig::hs256(secret)));
    let base = format!("/core/api/v1/projects/{}/edge", device.project_id);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (api, token, base) = (api.clone(), token.clone(), base.clone());
        let org = device.org_id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut list = Vec::new();
            let mut rows = Vec::new();
            // Mirror pages are walked the way a client pages through a large mirror: the first
            // page by number (spread over the table), then `after=<meta.next_cursor>`.
            let mut cursor: Option<String> = None;
            for i in 0..per_client {
                let k = (client * 7 + i) % 10 + 1;
                let (path, is_list) = if i % 2 == 0 {
                    (format!("{base}/lineages?limit=50&page={k}"), true)
                } else {
                    (
                        match &cursor {
                            Some(c) => {
                                format!("{base}/lineages/{lineage}/mirror-rows?limit=100&after={c}")
                            }
                            None => format!(
                                "{base}/lineages/{lineage}/mirror-rows?limit=100&page={}",
                                (client * 13 + i) % 200 + 1
                            ),
                        },
                        false,
                    )
                };
                let req: Request = lambda_http::http::Request::builder()
                    .uri(path)
                    .header("Authorization", format!("Bearer {token}"))
                    .header("ORG-ID", &org)
                    .body(Body::Empty)
                    .unwrap();
                let t0 = Instant::now();
                let resp = handle(&api, req).await;
                let dt = t0.elapsed();
                assert_eq!(resp.status(), StatusCode::OK);
                if is_list {
                    list.push(dt);
                } else {
                    rows.push(dt);
                    let v: serde_json::Value = match resp.body() {
                        Body::Text(t) => serde_json::from_str(t).unwrap(),
                        _ => serde_json::Value::Null,
                    };
                    cursor = v["meta"]["next_cursor"].as_str().map(str::to_owned);
                }
            }
            (list, rows)
        }));
    }
    let mut list = Vec::new();
    let mut rows = Vec::new();
    for t in tasks {
        let (l, r) = t.await.unwrap();
        list.extend(l);
        rows.extend(r);
    }
    let wall = start.elapsed();
    list.sort();
    rows.sort();
    println!(
        "api: {CLIENTS} clients, {} requests in {:.2}s ({:.0} req/s); {LINEAGES} lineages, \
         {MIRROR_ROWS} mirror rows",
        list.len() + rows.len(),
        wall.as_secs_f64(),
        (list.len() + rows.len()) as f64 / wall.as_secs_f64()
    );
    for (name, v) in [
        ("lineage list (limit 50)", &list),
        ("mirror rows (limit 100)", &rows),
    ] {
        println!(
            "  {name:<26} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v.last().unwrap().as_secs_f64() * 1e3,
        );
    }
}
