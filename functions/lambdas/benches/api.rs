//! HTTP API latency (issue 6 benchmark): p50/p99 of the lineage list and mirror-rows pages under
//! 20 concurrent clients, through the same router the `api` Lambda and the local runner serve
//! (driven in-process: request in, response out, real PostgreSQL behind it).
//!
//! Data: one project with 500 lineages and one approved lineage whose mirror holds 20,000 rows.
//! Each client alternates `GET …/edge/lineages?limit=50&page=k` and
//! `GET …/edge/lineages/{id}/mirror-rows?limit=100&page=k` over varying pages.
//!
//! Then the fleet view (issue 15, observability.md §4), on a second project of 10,000 lineages
//! (2,500 devices × 4 tables; 1 % circuit_breaker, 2 % volume_backpressure, 5 % schema_review
//! with an open review; staged backlogs, lags from seconds to a day, pending and acked
//! controls, rejected and materialized ledger rows): each client alternates
//! `GET …/edge/fleet-health?limit=50&page=k` (pages 1–20) and the same with a filter, and the
//! statement's `EXPLAIN (ANALYZE, BUFFERS)` is printed for page 1, page 20 and a filter.
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
use edge_functions::store::read::fleet::{fleet_health_statement, generated_at};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request};
use tokio_postgres::types::Type;
use uuid::Uuid;

const CLIENTS: usize = 20;
const LINEAGES: i64 = 500;
const MIRROR_ROWS: i64 = 20_000;
const FLEET_LINEAGES: i64 = 10_000;

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
    let secret_token = secret.clone();
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
        report(name, v);
    }

    fleet_health(&p, &api, &secret_token, per_client).await;
}

fn report(name: &str, v: &[Duration]) {
    println!(
        "  {name:<26} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        percentile(v, 0.5).as_secs_f64() * 1e3,
        percentile(v, 0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// The fleet view's tenant: a project of [`FLEET_LINEAGES`] lineages (see the module docs).
async fn fleet_project(p: &deadpool_postgres::Pool) -> (Uuid, Uuid, [Uuid; 2]) {
    let (org, project) = (Uuid::now_v7(), Uuid::now_v7());
    let fleets = [Uuid::now_v7(), Uuid::now_v7()];
    let c = p.get().await.unwrap();
    let t0 = Instant::now();
    c.execute(
        "INSERT INTO edge_devices (device_id, device_name, org_id, project_id, fleet_id, \
             topic_slug, control_key) \
         SELECT gen_random_uuid(), 'fleet-' || lpad(g::text, 5, '0'), $1::uuid, $2::uuid, \
             CASE WHEN g % 2 = 0 THEN $3::uuid ELSE $4::uuid END, 'bench', '\\x01'::bytea \
         FROM generate_series(1, $5::bigint / 4) g",
        &[&org, &project, &fleets[0], &fleets[1], &FLEET_LINEAGES],
    )
    .await
    .unwrap();
    // h: a deterministic spread per (device, table) in 0..10000.
    c.execute(
        "INSERT INTO edge_table_lineages (id, org_id, project_id, fleet_id, device_id, \
             source_table, kind, status, pause_reason, staged_row_count, staged_bytes, \
             materialization_failure_count, newest_materialized_source_at, \
             last_batch_received_at, created_at) \
         SELECT gen_random_uuid(), d.org_id, d.project_id, d.fleet_id, d.device_id, t.name, \
             CASE WHEN t.i = 4 THEN 'telemetry' ELSE 'rows' END, \
             CASE WHEN h < 800 THEN 'paused' ELSE 'active' END, \
             CASE WHEN h < 100 THEN 'circuit_breaker' WHEN h < 300 THEN 'volume_backpressure' \
                  WHEN h < 800 THEN 'schema_review' END, \
             CASE WHEN h < 800 THEN 1000 + h * 37 % 100000 \
                  WHEN h % 10 = 0 THEN h % 500 ELSE 0 END, \
             CASE WHEN h < 800 THEN (1000 + h * 37 % 100000) * 120 \
                  WHEN h % 10 = 0 THEN h % 500 * 120 ELSE 0 END, \
             CASE WHEN h < 100 THEN 5 ELSE 0 END, \
             CASE WHEN h % 20 = 0 THEN NULL \
                  WHEN h % 100 < 80 THEN now() - make_interval(secs => h % 120 + h % 7 / 10.0) \
                  ELSE now() - make_interval(secs => h * 7 % 86400) END, \
             now() - make_interval(secs => h % 600), now() - interval '30 days' \
         FROM edge_devices d \
         CROSS JOIN (VALUES (1, 'device_state'), (2, 'alarms'), (3, 'orders'), (4, 'temps')) \
             AS t(i, name) \
         CROSS JOIN LATERAL (SELECT abs(hashtext(d.device_name || '/' || t.name)) % 10000 AS h) x \
         WHERE d.project_id = $1",
        &[&project],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE TEMP TABLE fl AS SELECT l.*, abs(hashtext(d.device_name || '/' || l.source_table)) \
             % 10000 AS h \
         FROM edge_table_lineages l JOIN edge_devices d USING (device_id) \
         WHERE l.project_id = '{project}'; \
         INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, classification, state) \
         SELECT gen_random_uuid(), id, 'h' || h, 'breaking', \
             CASE WHEN h % 2 = 0 THEN 'queued' ELSE 'in_review' END \
         FROM fl WHERE pause_reason = 'schema_review'; \
         INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, envelope, status) \
         SELECT gen_random_uuid(), device_id, id, 'pause_lineage', source_table, '{{}}', 'pending' \
         FROM fl WHERE status = 'paused' AND pause_reason <> 'schema_review'; \
         INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, envelope, status, acked_at) \
         SELECT gen_random_uuid(), device_id, id, k, source_table, '{{}}', 'acked', \
             now() - make_interval(secs => h * n % 86400) \
         FROM fl CROSS JOIN (VALUES (1, 'url_grant'), (2, 'upload_result'), (3, 'resume_lineage')) \
             AS c(n, k) WHERE h % 5 = 0; \
         INSERT INTO edge_export_segments (device_id, batch_id, batch_time, received_at, \
             device_name, org_id, project_id, fleet_id, lineage_id, source_table, kind, status, \
             rejection_code) \
         SELECT fl.device_id, gen_random_uuid(), now(), now() - make_interval(secs => g * 431 % 10800), \
             'fleet', org_id, project_id, fleet_id, NULL, source_table, 'rows', 'rejected', \
             'invalid_row' \
         FROM fl CROSS JOIN generate_series(1, 25) g WHERE h % 50 = 0; \
         INSERT INTO edge_export_segments (device_id, batch_id, batch_time, received_at, \
             device_name, org_id, project_id, fleet_id, lineage_id, source_table, kind, status) \
         SELECT fl.device_id, gen_random_uuid(), now(), now() - make_interval(secs => g * 97 % 86400), \
             'fleet', org_id, project_id, fleet_id, id, source_table, 'rows', 'materialized' \
         FROM fl CROSS JOIN generate_series(1, 5) g; \
         DROP TABLE fl; ANALYZE"
    ))
    .await
    .unwrap();
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) FROM edge_table_lineages WHERE project_id = $1",
        "SELECT count(*) FROM edge_schema_reviews v JOIN edge_table_lineages l \
             ON l.id = v.lineage_id WHERE l.project_id = $1 AND v.state IN ('queued', 'in_review')",
        "SELECT count(*) FROM edge_pending_controls k JOIN edge_table_lineages l \
             ON l.id = k.lineage_id WHERE l.project_id = $1",
        "SELECT count(*) FROM edge_export_segments WHERE project_id = $1",
        "SELECT count(*) FROM edge_export_segments WHERE project_id = $1 AND status = 'rejected'",
    ] {
        counts.push(
            c.query_one(sql, &[&project])
                .await
                .unwrap()
                .get::<_, i64>(0),
        );
    }
    println!(
        "fleet data ({:.1}s): {} lineages, {} open reviews, {} controls, {} ledger rows \
         ({} rejected)",
        t0.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
    );
    (org, project, fleets)
}

/// The fleet-health phase: 20 clients, unfiltered pages and filtered ones, then EXPLAIN.
async fn fleet_health(
    p: &deadpool_postgres::Pool,
    api: &Arc<Api>,
    secret: &[u8],
    per_client: usize,
) {
    let (org, project, fleets) = fleet_project(p).await;
    let token = mint(
        secret,
        &Claims {
            sub: "bench".into(),
            org_id: org,
            projects: vec![project],
            permissions: vec![],
            exp: 4_000_000_000,
            iat: 0,
        },
    )
    .unwrap();
    let base = format!("/core/api/v1/projects/{project}/edge/fleet-health");
    let filters = [
        "status=paused".to_owned(),
        "min_lag_seconds=3600".to_owned(),
        "pause_reason=none&min_lag_seconds=60".to_owned(),
        format!("fleet_id={}", fleets[0]),
        "device_name=fleet-00042".to_owned(),
        "source_table=temps".to_owned(),
    ];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (api, token, base, filters) =
            (api.clone(), token.clone(), base.clone(), filters.clone());
        let org = org.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut plain, mut filtered) = (Vec::new(), Vec::new());
            for i in 0..per_client {
                let k = (client * 7 + i) % 20 + 1;
                let path = if i % 2 == 0 {
                    format!("{base}?limit=50&page={k}")
                } else {
                    let f = &filters[(client + i / 2) % filters.len()];
                    format!("{base}?limit=50&page={}&{f}", k % 3 + 1)
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
                if i % 2 == 0 {
                    plain.push(dt);
                } else {
                    filtered.push(dt);
                }
            }
            (plain, filtered)
        }));
    }
    let (mut plain, mut filtered) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, b) = t.await.unwrap();
        plain.extend(a);
        filtered.extend(b);
    }
    let wall = start.elapsed();
    plain.sort();
    filtered.sort();
    println!(
        "fleet-health: {CLIENTS} clients, {} requests in {:.2}s ({:.0} req/s); {FLEET_LINEAGES} lineages",
        plain.len() + filtered.len(),
        wall.as_secs_f64(),
        (plain.len() + filtered.len()) as f64 / wall.as_secs_f64()
    );
    report("fleet-health (limit 50)", &plain);
    report("fleet-health filtered", &filtered);

    // The plan at 10,000 lineages, as the route sends it (an unnamed, typed statement).
    let c = p.get().await.unwrap();
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", fleet_health_statement());
    let at = generated_at(time::OffsetDateTime::now_utc());
    let none_text: Option<String> = None;
    let none_uuid: Option<Uuid> = None;
    let none_int: Option<i64> = None;
    let t = |v: &str| Some(v.to_owned());
    // (what, status, pause_reason, min_lag_seconds, device_name, fleet_id, source_table, offset)
    type Case = (
        &'static str,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<Uuid>,
        Option<String>,
        i64,
    );
    let cases: Vec<Case> = vec![
        ("page 1", None, None, None, None, None, None, 0),
        ("page 20", None, None, None, None, None, None, 950),
        (
            "status=paused&min_lag_seconds=60, page 1",
            t("paused"),
            None,
            Some(60),
            None,
            None,
            None,
            0,
        ),
        (
            "pause_reason=none&min_lag_seconds=60, page 3",
            None,
            t("none"),
            Some(60),
            None,
            None,
            None,
            100,
        ),
        (
            "fleet_id, page 3",
            None,
            None,
            None,
            None,
            Some(fleets[0]),
            None,
            100,
        ),
        (
            "device_name, page 1",
            None,
            None,
            None,
            t("fleet-00042"),
            None,
            None,
            0,
        ),
        (
            "source_table=temps, page 3",
            None,
            None,
            None,
            None,
            None,
            t("temps"),
            100,
        ),
    ];
    let _ = none_text;
    for (what, status, pause_reason, min_lag, device_name, fleet_id, source_table, offset) in cases
    {
        let limit = 50i64;
        let rows = c
            .query_typed(
                &sql,
                &[
                    (&at, Type::TIMESTAMPTZ),
                    (&org, Type::UUID),
                    (&project, Type::UUID),
                    (&status, Type::TEXT),
                    (&pause_reason, Type::TEXT),
                    (&min_lag.or(none_int), Type::INT8),
                    (&none_uuid, Type::UUID),
                    (&device_name, Type::TEXT),
                    (&fleet_id, Type::UUID),
                    (&source_table, Type::TEXT),
                    (&limit, Type::INT8),
                    (&offset, Type::INT8),
                ],
            )
            .await
            .unwrap();
        println!("EXPLAIN fleet-health {what}:");
        for r in rows {
            println!("  {}", r.get::<_, &str>(0));
        }
    }
}
