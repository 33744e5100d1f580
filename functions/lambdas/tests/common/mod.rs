//! Shared set-up for the ingest integration tests: a fresh database per test (edge-e2e
//! harness), migrations, one registered device, and payload builders.
#![allow(dead_code, clippy::unwrap_used)]

pub mod api;

use edge_cloud_core::ingress::envelope;
use edge_e2e::TestDatabase;
use edge_functions::ingest::{handle, Outcome};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use edge_protocol::ids::new_uuid_v7;
use serde_json::{json, Value};
use uuid::Uuid;

pub const DEVICE: &str = "gw-07";
pub const SLUG: &str = "acme";

pub struct Env {
    pub db: TestDatabase,
    pub deps: Deps,
    pub device: Device,
    pub client: tokio_postgres::Client,
    next_ms: std::sync::atomic::AtomicU64,
}

pub async fn env() -> Env {
    let db = TestDatabase::create_async().await;
    let pool = pool::connect(&db.url(), 8).unwrap();
    {
        let mut c = pool.get().await.unwrap();
        migrate(&mut c).await.unwrap();
    }
    let device = Device {
        device_id: Uuid::parse_str("0193a000-0000-7000-8000-00000000d007").unwrap(),
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
    let client = db.connect().await;
    Env {
        db,
        deps: Deps::new(pool),
        device,
        client,
        next_ms: std::sync::atomic::AtomicU64::new(1_733_000_000_000),
    }
}

impl Env {
    /// A fresh UUIDv7 (increasing).
    pub fn id(&self) -> Uuid {
        let ms = self
            .next_ms
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        new_uuid_v7(ms, *Uuid::now_v7().as_bytes().first_chunk::<10>().unwrap())
    }

    pub async fn send(&self, suffix: &str, payload: &[u8]) -> Outcome {
        self.send_as(DEVICE, suffix, payload).await
    }

    pub async fn send_as(&self, device: &str, suffix: &str, payload: &[u8]) -> Outcome {
        let topic = format!("{SLUG}/{device}/{suffix}");
        handle(
            &self.deps,
            envelope(&topic, device, 1_733_000_000_000, payload),
        )
        .await
        .unwrap()
    }

    pub async fn rows(&self, batch: &Value) -> Outcome {
        self.send("sync/rows/batch", batch.to_string().as_bytes())
            .await
    }

    pub async fn lineage_id(&self, table: &str) -> Uuid {
        self.client
            .query_one(
                "SELECT id FROM edge_table_lineages WHERE source_table = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn approve(&self, table: &str) -> edge_e2e::governance::ApproveReport {
        let lineage = self.lineage_id(table).await;
        let mut c = self.deps.pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        let report = edge_e2e::governance::approve_all_columns(&*tx, lineage, Uuid::now_v7)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        report
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// The mirror table of the (only) lineage.
    pub async fn mirror_table(&self) -> String {
        self.client
            .query_one("SELECT mirror_table_name FROM edge_table_lineages", &[])
            .await
            .unwrap()
            .get(0)
    }
}

pub fn col(name: &str, ty: &str, notnull: i64, pk: i64) -> ColumnFingerprint {
    ColumnFingerprint::from_table_info(name, ty, notnull, pk)
}

/// `CREATE TABLE device_state (id INTEGER PRIMARY KEY NOT NULL, mode TEXT, setpoint REAL)`
pub fn device_state() -> SchemaColumns {
    SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 0, 0),
            col("setpoint", "REAL", 0, 0),
        ],
    )
}

/// One change: (commit_seq, op, pk, row).
pub type Change = (i64, &'static str, Value, Value);

/// A row batch document (valid unless the caller edits it).
pub fn row_batch(
    batch_id: Uuid,
    epoch: Uuid,
    schema: &SchemaColumns,
    with_columns: bool,
    rows: &[Change],
) -> Value {
    let first = rows.iter().map(|r| r.0).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.0).max().unwrap_or(0);
    let mut v = json!({
        "format_version": 1,
        "capture_strategy": "sqlite_row_batch_v1",
        "batch_id": batch_id.to_string(),
        "journal_epoch": epoch.to_string(),
        "source_table": schema.table_name,
        "schema_hash": schema.schema_hash(),
        "first_commit_seq": first,
        "last_commit_seq": last,
        "rows": rows.iter().map(|(seq, op, pk, row)| json!({
            "commit_seq": seq, "op": op, "pk": pk, "row": row
        })).collect::<Vec<_>>(),
    });
    if with_columns {
        v["schema_columns"] = serde_json::to_value(schema).unwrap();
    }
    v
}

pub fn ins(seq: i64, id: i64, mode: &str, setpoint: f64) -> Change {
    (
        seq,
        "insert",
        json!({"id": id}),
        json!({"id": id, "mode": mode, "setpoint": setpoint}),
    )
}

pub fn del(seq: i64, id: i64) -> Change {
    (seq, "delete", json!({"id": id}), Value::Null)
}

/// A telemetry batch document.
pub fn telemetry_batch(batch_id: Uuid, seq: i64, values: &[f64]) -> Value {
    let rows: Vec<Value> = values
        .iter()
        .enumerate()
        .map(
            |(i, v)| json!({"ts": format!("2026-04-28T09:00:{:02}Z", i), "fields": {"value_c": v}}),
        )
        .collect();
    json!({
        "format_version": 1,
        "capture_strategy": "sqlite_telemetry_batch_v1",
        "batch_id": batch_id.to_string(),
        "batch_seq": seq,
        "source_table": "temps",
        "schema_hash": "a".repeat(64),
        "cursor_start_ts": "2026-04-28T09:00:00Z",
        "cursor_end_ts": format!("2026-04-28T09:00:{:02}Z", values.len().saturating_sub(1)),
        "row_count": values.len(),
        "rows": rows,
    })
}
