//! The handlers behind pgbouncer in transaction mode (issue 14): many more clients than server
//! connections, so consecutive statements of one client land on different server connections.
//!
//! Migrations (two migrators at once), ingest (concurrent envelopes of several tables → ledger, staging), the API (reads, claim,
//! approve → mirror DDL and a replay intent), replay workers racing live batches and a sweep,
//! and the API's mirror reads, all through an 8-connection pool on a pgbouncer with 2 server connections.
//! With named statements (tokio-postgres `query`/`execute`: Parse/Describe/Sync, then
//! Bind/Execute/Sync) the Bind can reach a server that never saw the Parse: SQLSTATE 26000
//! "prepared statement "s3" does not exist". With the store's unnamed statements every
//! statement is one Parse/Bind/Execute/Sync group and any server can take it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use edge_cloud_core::ingress::envelope;
use edge_e2e::{Pgbouncer, PoolSettings, TestDatabase};
use edge_functions::api::auth::{mint, AuthConfig, Claims, MANAGE_DEVICES};
use edge_functions::api::{handle as api_handle, Api};
use edge_functions::ingest::{handle as ingest_handle, Outcome};
use edge_functions::replay::{drain, Budget, DrainReport};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::fingerprint::SchemaColumns;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &[u8] = b"pooler-secret";
/// Client connections of the handlers' pool (`EDGE_DB_POOL_SIZE`).
const CLIENTS: usize = 8;
/// Server connections pgbouncer keeps to PostgreSQL (`default_pool_size`).
const SERVERS: u32 = 2;
const TABLES: usize = 4;
/// Batches per table before approval (staged), and after it (racing the replay).
const STAGED_BATCHES: i64 = 8;
const LIVE_BATCHES: i64 = 4;
const ROWS_PER_BATCH: i64 = 25;

fn schema(table: usize) -> SchemaColumns {
    SchemaColumns::new(
        format!("state_{table}"),
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 0, 0),
            col("setpoint", "REAL", 0, 0),
        ],
    )
}

/// Batch `n` of a table: rows with commit_seq n*R+1 ..= (n+1)*R, ids cycling over 60.
fn batch(table: usize, epoch: Uuid, batch_id: Uuid, n: i64) -> Value {
    let changes: Vec<Change> = (n * ROWS_PER_BATCH + 1..=(n + 1) * ROWS_PER_BATCH)
        .map(|seq| ins(seq, seq % 60, &format!("m{seq}"), seq as f64 / 2.0))
        .collect();
    row_batch(batch_id, epoch, &schema(table), true, &changes)
}

struct Rig {
    db: TestDatabase,
    pooler: Pgbouncer,
    deps: Deps,
    api: Api,
    token: String,
    device: Device,
    /// Straight to PostgreSQL, for the test's own checks.
    direct: tokio_postgres::Client,
    epochs: Vec<Uuid>,
    /// Per table, per batch number: one id, so a redelivery is a duplicate.
    batch_ids: Vec<Vec<Uuid>>,
}

async fn rig() -> Rig {
    // A 500 from the API logs its cause: shown with the test's output when it fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = TestDatabase::create_async().await;
    let pooler = Pgbouncer::start(
        &db,
        PoolSettings {
            server_connections: SERVERS,
            max_clients: 100,
        },
    );
    let pool = pool::connect(&pooler.url(&db), CLIENTS).unwrap();
    // Migrations too: two migrators at once, through the pooler (their lock is per transaction).
    let (first, second) = {
        let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        let (first, second) = tokio::join!(migrate(&mut a), migrate(&mut b));
        (first.unwrap(), second.unwrap())
    };
    assert_eq!(
        first.len() + second.len(),
        edge_functions::store::migrate::MIGRATIONS.len(),
        "each migration applied once: {first:?} {second:?}"
    );
    let device = Device {
        device_id: Uuid::now_v7(),
        device_name: DEVICE.into(),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        fleet_id: Uuid::now_v7(),
        topic_slug: SLUG.into(),
        control_key: vec![7; 32],
    };
    {
        let c = pool.get().await.unwrap();
        assert!(create_device(&**c, &device).await.unwrap());
    }
    let token = mint(
        SECRET,
        &Claims {
            sub: "operator@test".into(),
            org_id: device.org_id,
            projects: vec![device.project_id],
            permissions: vec![MANAGE_DEVICES.into()],
            exp: 4_000_000_000,
            iat: 0,
        },
    )
    .unwrap();
    let api = Api::new(pool.clone(), AuthConfig::hs256(SECRET.to_vec()));
    let direct = db.connect().await;
    Rig {
        pooler,
        deps: Deps::new(pool),
        api,
        token,
        device,
        direct,
        epochs: (0..TABLES).map(|_| Uuid::now_v7()).collect(),
        batch_ids: (0..TABLES)
            .map(|_| {
                (0..STAGED_BATCHES + LIVE_BATCHES)
                    .map(|_| Uuid::now_v7())
                    .collect()
            })
            .collect(),
        db,
    }
}

impl Rig {
    async fn ingest(&self, table: usize, n: i64) -> Outcome {
        let topic = format!("{SLUG}/{DEVICE}/sync/rows/batch");
        let batch_id = self.batch_ids[table][usize::try_from(n).unwrap()];
        let payload = batch(table, self.epochs[table], batch_id, n).to_string();
        ingest_handle(
            &self.deps,
            envelope(&topic, DEVICE, 1_733_000_000_000, payload.as_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("ingest of state_{table} batch {n}: {e}"))
    }

    async fn call(&self, method: Method, rel: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut b = lambda_http::http::Request::builder()
            .method(method)
            .uri(format!(
                "/core/api/v1/projects/{}{rel}",
                self.device.project_id
            ))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("ORG-ID", self.device.org_id.to_string());
        if body.is_some() {
            b = b.header("Idempotency-Key", Uuid::now_v7().to_string());
        }
        let req: Request = b
            .body(body.map_or(Body::Empty, |v| Body::Text(v.to_string())))
            .unwrap();
        let resp = api_handle(&self.api, req).await;
        let status = resp.status();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("unexpected body {other:?}"),
        };
        (status, body)
    }

    async fn get(&self, rel: &str) -> Value {
        let (status, v) = self.call(Method::GET, rel, None).await;
        assert_eq!(status, StatusCode::OK, "GET {rel}: {v}");
        v
    }

    async fn post(&self, rel: &str, body: Value) -> Value {
        let (status, v) = self.call(Method::POST, rel, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {rel}: {v}");
        v
    }

    /// Reads the review of the table's lineage, claims and approves it (every column mirrored).
    async fn approve(&self, table: usize) -> Uuid {
        let lineages = self.get("/edge/lineages?limit=50").await;
        let lineage = lineages["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source_table"] == format!("state_{table}"))
            .unwrap_or_else(|| panic!("lineage of state_{table} in {lineages}"))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let detail = self.get(&format!("/edge/lineages/{lineage}")).await;
        assert_eq!(detail["data"]["lineage"]["status"], "paused", "{detail}");
        let staged = self
            .get(&format!("/edge/lineages/{lineage}/staged-rows?limit=5"))
            .await;
        assert_eq!(
            staged["meta"]["total"],
            STAGED_BATCHES * ROWS_PER_BATCH,
            "{staged}"
        );
        let reviews = self
            .get(&format!("/edge/schema-reviews?lineage_id={lineage}"))
            .await;
        let review = reviews["data"][0]["id"].as_str().unwrap().to_owned();
        let claimed = self
            .post(&format!("/edge/schema-reviews/{review}/claim"), json!({}))
            .await;
        let version = claimed["data"]["action_version"].as_i64().unwrap();
        let approved = self
            .post(
                &format!("/edge/schema-reviews/{review}/approve"),
                json!({"action_version": version, "column_actions": [
                    {"source_column_name": "id", "action": "mirror"},
                    {"source_column_name": "mode", "action": "mirror"},
                    {"source_column_name": "setpoint", "action": "mirror"},
                ]}),
            )
            .await;
        assert_eq!(approved["data"]["status"], "approved", "{approved}");
        Uuid::parse_str(&lineage).unwrap()
    }

    async fn scalar(&self, sql: &str) -> i64 {
        self.direct.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// Expected mirror of a table after batches 0..n: per id the newest (commit_seq, mode).
fn expected_mirror(n: i64) -> BTreeMap<i64, (i64, String)> {
    (1..=n * ROWS_PER_BATCH)
        .map(|seq| (seq % 60, (seq, format!("m{seq}"))))
        .collect()
}

fn numbers(rows: &[BTreeMap<String, String>], column: &str) -> i64 {
    rows.iter()
        .filter_map(|r| r.get(column))
        .filter_map(|v| v.parse::<i64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_api_and_replay_through_pgbouncer_transaction_mode() {
    let rig = Arc::new(rig().await);

    // Ingest: every table's batches from 8 concurrent senders (new tables: staged for review).
    let senders: Vec<_> = (0..CLIENTS)
        .map(|sender| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in (sender..TABLES * STAGED_BATCHES as usize).step_by(CLIENTS) {
                    let (table, n) = (i % TABLES, (i / TABLES) as i64);
                    outcomes.push(rig.ingest(table, n).await);
                }
                outcomes
            })
        })
        .collect();
    for sender in senders {
        for outcome in sender.await.unwrap() {
            assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
        }
    }
    assert_eq!(
        rig.scalar("SELECT count(*) FROM edge_staged_rows").await,
        TABLES as i64 * STAGED_BATCHES * ROWS_PER_BATCH
    );

    // The API: each table's lineage read, reviewed, claimed and approved, concurrently.
    let approvals: Vec<_> = (0..TABLES)
        .map(|table| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move { rig.approve(table).await })
        })
        .collect();
    let mut lineages = Vec::new();
    for approval in approvals {
        lineages.push(approval.await.unwrap());
    }

    // Replay: three workers drain the approvals' intents while live batches keep arriving.
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move { drain(&rig.deps, 40, Budget::UNLIMITED).await })
        })
        .collect();
    let live: Vec<_> = (0..TABLES)
        .map(|table| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move {
                for n in STAGED_BATCHES..STAGED_BATCHES + LIVE_BATCHES {
                    let outcome = rig.ingest(table, n).await;
                    assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
                }
                // A redelivery is a duplicate.
                rig.ingest(table, 0).await
            })
        })
        .collect();
    // The sweep (resume, pending controls, event forwarding) runs alongside.
    let sweep = {
        let rig = Arc::clone(&rig);
        tokio::spawn(async move {
            edge_functions::sweep::sweep_once(
                &rig.deps,
                &edge_functions::control_publisher::NoPublisher,
                time::OffsetDateTime::now_utc(),
            )
            .await
        })
    };
    let mut reports: Vec<DrainReport> = Vec::new();
    for worker in workers {
        reports.push(worker.await.unwrap());
    }
    for l in live {
        let redelivered = l.await.unwrap();
        assert!(
            matches!(redelivered, Outcome::Duplicate { .. }),
            "{redelivered:?}"
        );
    }
    let swept = sweep.await.unwrap();
    assert_eq!(swept.errors, 0, "sweep through the pooler: {swept:?}");
    assert!(
        swept.forwarded > 0,
        "the approvals' events forwarded: {swept:?}"
    );
    // Rows staged behind an intent while the workers finished are drained by a last worker.
    reports.push(drain(&rig.deps, 40, Budget::UNLIMITED).await);
    for r in &reports {
        assert_eq!(r.errors, 0, "replay through the pooler: {reports:?}");
    }
    assert_eq!(
        rig.scalar("SELECT count(*) FROM edge_staged_rows").await,
        0,
        "{reports:?}"
    );

    // Every mirror holds the newest version of each id, read through the API too.
    let want = expected_mirror(STAGED_BATCHES + LIVE_BATCHES);
    for (table, lineage) in lineages.iter().enumerate() {
        let mirror: String = rig
            .direct
            .query_one(
                "SELECT mirror_table_name FROM edge_table_lineages WHERE id = $1",
                &[lineage],
            )
            .await
            .unwrap()
            .get(0);
        let rows = rig
            .direct
            .query(
                &format!("SELECT \"id\", \"_edge_commit_seq\", \"mode\" FROM \"{mirror}\""),
                &[],
            )
            .await
            .unwrap();
        let got: BTreeMap<i64, (i64, String)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        assert_eq!(got, want, "mirror of state_{table}");
        let page = rig
            .get(&format!("/edge/lineages/{lineage}/mirror-rows?limit=10"))
            .await;
        assert_eq!(page["meta"]["total"], want.len(), "{page}");
    }

    // The pooler multiplexed 8 clients over at most 2 server connections.
    let pools = rig.pooler.show("SHOW POOLS").await.unwrap();
    let pools: Vec<_> = pools
        .into_iter()
        .filter(|p| p.get("database").map(String::as_str) == Some(rig.db.name()))
        .collect();
    let servers: i64 = ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|c| numbers(&pools, c))
        .sum();
    let stats = rig.pooler.show("SHOW STATS").await.unwrap();
    let stats: Vec<_> = stats
        .into_iter()
        .filter(|s| s.get("database").map(String::as_str) == Some(rig.db.name()))
        .collect();
    eprintln!(
        "pgbouncer: {servers} server connections for {} pooled clients; SHOW POOLS {pools:?}; \
         SHOW STATS {stats:?}",
        rig.deps.pool.status().size
    );
    assert!(
        (1..=i64::from(SERVERS)).contains(&servers),
        "{servers} servers"
    );
    assert!(rig.deps.pool.status().size > SERVERS as usize);
    assert!(numbers(&stats, "total_xact_count") > 0);
    assert!(numbers(&stats, "total_query_count") >= numbers(&stats, "total_xact_count"));
    let log = rig.pooler.log();
    assert!(
        !log.contains("prepared statement"),
        "pgbouncer saw prepared-statement errors:\n{log}"
    );
}
