//! End to end: a real SQLite file captured by the real agent → real mosquitto (mTLS + ACL) →
//! the local runner's ingest handler → PostgreSQL mirror, which must equal the source table
//! after a mixed workload that includes an `ALTER TABLE … ADD COLUMN` mid-run.
//!
//! The agent and the runner run in-process (their library entry points, exactly what the
//! binaries call); the broker and PostgreSQL are real processes started by the harness.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edge_agent::daemon::Daemon;
use edge_agent::settings::Settings;
use edge_e2e::{wait_for, Broker, Pki, TestDatabase};
use edge_functions::runner::{run, MqttSettings};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{approve::approve_all_columns, migrate::migrate, pool};
use edge_functions::Deps;
use serde_json::Value;
use uuid::Uuid;

const DEVICE: &str = "gw-e2e";
const SLUG: &str = "acme";
const CONTROL_KEY: &str = "e2e-control-key";
const DEADLINE: Duration = Duration::from_secs(90);

/// Platform columns of a mirror table (cloud.md §6): not part of the source row.
const PLATFORM_COLUMNS: [&str; 6] = [
    "device_id",
    "_edge_epoch",
    "_edge_commit_seq",
    "_edge_deleted",
    "created_at",
    "updated_at",
];

fn agent_config(dir: &Path, broker: &Broker, pki: &Pki) -> String {
    let id = pki.device(DEVICE);
    format!(
        r#"
[connection]
server_url = "mqtts://127.0.0.1:{port}"
device_name = "{DEVICE}"
root_topic = "{SLUG}/{DEVICE}"
keep_alive = "5s"
clean_session = false
ca_cert_path = "{ca}"
client_cert_path = "{cert}"
client_key_path = "{key}"
reconnect_min = "50ms"
reconnect_max = "1s"

[sqlite-replication]
source_db_path = "{source}"
state_db_path = "{state}"
flush_interval = "200ms"
max_payload_bytes = 131072
snapshot_on_first_run = true
low_latency = true

[security]
signed_control = true
"#,
        port = broker.port(),
        ca = pki.ca().cert_path().display(),
        cert = id.cert_path().display(),
        key = id.key_path().display(),
        source = dir.join("source.db").display(),
        state = dir.join("state.db").display(),
    )
}

/// Every live row of a SQLite table as JSON objects keyed by primary key text.
fn source_rows(db: &rusqlite::Connection, table: &str, key: &[&str]) -> BTreeMap<String, Value> {
    let columns: Vec<String> = db
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let pairs: Vec<String> = columns
        .iter()
        // Blobs as PostgreSQL's bytea text form, which is what to_jsonb gives for the mirror.
        .map(|c| {
            format!(
                "'{c}', CASE typeof(\"{c}\") WHEN 'blob' THEN '\\x' || lower(hex(\"{c}\")) \
                 ELSE \"{c}\" END"
            )
        })
        .collect();
    let sql = format!("SELECT json_object({}) FROM \"{table}\"", pairs.join(", "));
    let mut out = BTreeMap::new();
    let mut stmt = db.prepare(&sql).unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    for row in rows {
        let value: Value = serde_json::from_str(&row.unwrap()).unwrap();
        out.insert(key_of(&value, key), normalize(value));
    }
    out
}

/// Every live (not tombstoned) row of a mirror table, platform columns removed.
async fn mirror_rows(
    pg: &tokio_postgres::Client,
    mirror: &str,
    key: &[&str],
) -> BTreeMap<String, Value> {
    let sql = format!(
        "SELECT to_jsonb(m) FROM \"{}\" m WHERE NOT m._edge_deleted",
        mirror.replace('"', "\"\"")
    );
    let mut out = BTreeMap::new();
    for row in pg.query(&sql, &[]).await.unwrap() {
        let mut value: Value = row.get(0);
        let obj = value.as_object_mut().unwrap();
        for platform in PLATFORM_COLUMNS {
            obj.remove(platform);
        }
        out.insert(key_of(&value, key), normalize(value));
    }
    out
}

fn key_of(row: &Value, key: &[&str]) -> String {
    key.iter()
        .map(|k| row[*k].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

/// Numbers compare as f64: SQLite and PostgreSQL print the same double differently.
fn normalize(value: Value) -> Value {
    match value {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

async fn lineage(pg: &tokio_postgres::Client, table: &str) -> Option<(Uuid, String, Option<String>)> {
    pg.query_opt(
        "SELECT id, status, mirror_table_name FROM edge_table_lineages WHERE source_table = $1",
        &[&table],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

async fn current_hash(pg: &tokio_postgres::Client, table: &str) -> Option<String> {
    pg.query_opt(
        "SELECT current_schema_hash FROM edge_table_lineages WHERE source_table = $1",
        &[&table],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

/// The dev approval path (every column mirrored) until the review API drives it.
async fn approve(deps: &Deps, lineage_id: Uuid) {
    let mut c = deps.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    approve_all_columns(&*tx, lineage_id, Uuid::now_v7)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn hash_of(db: &rusqlite::Connection, table: &str) -> String {
    use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
    let mut stmt = db
        .prepare(&format!("SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')"))
        .unwrap();
    let columns = stmt
        .query_map([], |r| {
            Ok(ColumnFingerprint::from_table_info(
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    SchemaColumns::new(table, columns).schema_hash()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_to_mirror_equals_source_across_add_column() {
    let db = TestDatabase::create_async().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let pg = db.connect().await;

    // --- cloud: migrations, the device in the registry, the runner as `edge-service` -------
    let pool = pool::connect(&db.url(), 8).unwrap();
    migrate(&mut pool.get().await.unwrap()).await.unwrap();
    let device = Device {
        device_id: Uuid::now_v7(),
        device_name: DEVICE.into(),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        fleet_id: Uuid::now_v7(),
        topic_slug: SLUG.into(),
        control_key: CONTROL_KEY.as_bytes().to_vec(),
    };
    assert!(create_device(&**pool.get().await.unwrap(), &device)
        .await
        .unwrap());
    let deps = Deps::new(pool);
    let service = pki.service();
    let (stop_runner, runner_stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(
        deps.clone(),
        MqttSettings {
            url: format!("mqtts://127.0.0.1:{}", broker.port()),
            ca: pki.ca().cert_path().to_path_buf(),
            cert: service.cert_path().to_path_buf(),
            key: service.key_path().to_path_buf(),
            client_id: "edge-service-e2e".into(),
        },
        async move {
            let _ = runner_stopped.await;
        },
    ));

    // --- device: an application database with rows before the agent starts ----------------
    let dir = tempfile::tempdir().unwrap();
    let app = rusqlite::Connection::open(dir.path().join("source.db")).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE device_state (id INTEGER PRIMARY KEY NOT NULL, mode TEXT, setpoint REAL);
         CREATE TABLE readings (site TEXT NOT NULL, seq INTEGER NOT NULL, value REAL, raw BLOB,
                                PRIMARY KEY (site, seq)) WITHOUT ROWID;
         INSERT INTO device_state VALUES (1, 'heat', 20.5), (2, 'cool', 18.0), (3, 'off', NULL);",
    )
    .unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();

    let config = agent_config(dir.path(), &broker, &pki);
    let env = BTreeMap::from([("OMEGA_AUTH_TOKEN".to_string(), CONTROL_KEY.to_string())]);
    let settings = Settings::from_parts(&config, &dir.path().join("agent.toml"), &env).unwrap();
    let daemon = Daemon::open(settings).unwrap();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(daemon.run(async move {
        let _ = agent_stopped.await;
    }));

    // --- phase 1: mixed workload, then approval of the first schemas ------------------------
    for i in 0..200i64 {
        app.execute(
            "INSERT INTO device_state (id, mode, setpoint) VALUES (?1, ?2, ?3)",
            rusqlite::params![100 + i, format!("m{i}"), i as f64 / 4.0],
        )
        .unwrap();
        app.execute(
            "INSERT INTO readings VALUES ('site-a', ?1, ?2, ?3)",
            rusqlite::params![i, i as f64 * 1.5, vec![i as u8, 0, 255]],
        )
        .unwrap();
    }
    app.execute_batch(
        "UPDATE device_state SET mode = 'eco' WHERE id % 3 = 0;
         DELETE FROM device_state WHERE id % 7 = 0;
         UPDATE device_state SET id = 5000 WHERE id = 101;  -- primary-key change
         DELETE FROM readings WHERE seq % 5 = 0;
         UPDATE readings SET value = -1.25 WHERE seq % 4 = 1;",
    )
    .unwrap();

    for table in ["device_state", "readings"] {
        let id = wait_for_lineage(&pg, table).await;
        approve(&deps, id).await;
    }

    // --- phase 2: ADD COLUMN followed immediately by writes that use it ---------------------
    app.execute_batch(
        "ALTER TABLE device_state ADD COLUMN note TEXT;
         UPDATE device_state SET note = 'n-' || id WHERE id % 2 = 0;
         INSERT INTO device_state (id, mode, setpoint, note) VALUES (9000, 'new', 1.0, 'fresh');
         DELETE FROM device_state WHERE id = 102;",
    )
    .unwrap();
    let new_hash = hash_of(&app, "device_state");
    wait_for(DEADLINE, "the cloud to see device_state's new schema", || {
        let pg = &pg;
        let new_hash = new_hash.clone();
        async move { current_hash(pg, "device_state").await.as_deref() == Some(new_hash.as_str()) }
    })
    .await;
    let (id, _, _) = lineage(&pg, "device_state").await.unwrap();
    approve(&deps, id).await;
    for i in 0..50i64 {
        app.execute(
            "UPDATE device_state SET setpoint = ?1, note = ?2 WHERE id = ?3",
            rusqlite::params![i as f64 + 0.5, format!("late-{i}"), 100 + i * 2],
        )
        .unwrap();
    }

    // --- the mirrors converge to the source -------------------------------------------------
    for (table, key) in [
        ("device_state", &["id"][..]),
        ("readings", &["site", "seq"][..]),
    ] {
        let (_, _, mirror) = lineage(&pg, table).await.unwrap();
        let mirror = mirror.expect("an approved lineage has a mirror table");
        let expected = source_rows(&app, table, key);
        let last = std::sync::Mutex::new(BTreeMap::new());
        let converged = edge_e2e::wait::try_wait_for_some(DEADLINE, "mirror = source", || {
            let (pg, mirror, expected, last) = (&pg, mirror.clone(), &expected, &last);
            async move {
                let rows = mirror_rows(pg, &mirror, key).await;
                let same = rows == *expected;
                *last.lock().unwrap() = rows;
                same.then_some(())
            }
        })
        .await;
        let last = last.into_inner().unwrap();
        if converged.is_err() {
            let missing: Vec<_> = expected.keys().filter(|k| !last.contains_key(*k)).take(5).collect();
            let extra: Vec<_> = last.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
            let differing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| last.get(*k).is_some_and(|m| m != *v))
                .take(3)
                .map(|(k, v)| format!("{k}: source {v} mirror {}", last[k]))
                .collect();
            panic!(
                "{table}: mirror never equalled the source ({} vs {} rows); missing {missing:?}, \
                 extra {extra:?}, differing {differing:?}",
                last.len(),
                expected.len()
            );
        }
    }
    // Nothing left waiting in staging once everything is approved.
    let staged: i64 = pg
        .query_one("SELECT count(*) FROM edge_staged_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0, "every staged row was replayed");

    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    stop_runner.send(()).unwrap();
    runner.await.unwrap().unwrap();
}

async fn wait_for_lineage(pg: &tokio_postgres::Client, table: &str) -> Uuid {
    edge_e2e::wait_for_some(DEADLINE, "the table's lineage to appear", || async move {
        lineage(pg, table).await.map(|(id, _, _)| id)
    })
    .await
}
