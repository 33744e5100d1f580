//! Shared set-up of the cross-component tests: the whole local stack in one test — a fresh
//! PostgreSQL database, a mosquitto broker with mTLS + ACL, the runner (`edge-cloud run`'s
//! library entry point) as `edge-service`, and the real agent on a real SQLite file.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

mod uploads;
pub use uploads::SPILL_SECRET;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edge_agent::daemon::Daemon;
use edge_agent::settings::Settings;
use edge_e2e::governance::approve_all_columns;
use edge_e2e::{Broker, Pki, TestDatabase};
use edge_functions::env::Objects;
use edge_functions::objects::local::{self as spill_http, LocalObjects};
use edge_functions::runner::{run, MqttSettings};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const DEVICE: &str = "gw-e2e";
pub const SLUG: &str = "acme";
pub const CONTROL_KEY: &str = "e2e-control-key";
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Platform columns of a mirror table (cloud.md §6): not part of the source row.
const PLATFORM_COLUMNS: [&str; 6] = [
    "device_id",
    "_edge_epoch",
    "_edge_commit_seq",
    "_edge_deleted",
    "created_at",
    "updated_at",
];

pub fn agent_config(dir: &Path, broker: &Broker, pki: &Pki) -> String {
    agent_config_as(dir, broker, pki, DEVICE, &format!("{SLUG}/{DEVICE}"), "")
}

/// The agent's configuration as `device_name` (its certificate from `pki`) under `root_topic`,
/// with `replication` lines added to `[sqlite-replication]`.
pub fn agent_config_as(
    dir: &Path,
    broker: &Broker,
    pki: &Pki,
    device_name: &str,
    root_topic: &str,
    replication: &str,
) -> String {
    let id = pki.device(device_name);
    format!(
        r#"
[connection]
server_url = "mqtts://127.0.0.1:{port}"
device_name = "{device_name}"
root_topic = "{root_topic}"
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
max_payload_bytes = 131072
snapshot_on_first_run = true
{replication}

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

/// The `edge-agent` binary: `EDGE_AGENT_BIN`, else the one cargo built next to this test.
pub fn agent_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("EDGE_AGENT_BIN") {
        return std::path::PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test>-… → target/debug/edge-agent
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("edge-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p edge-agent --bin edge-agent)",
        bin.display()
    );
    bin
}

/// Every live row of a SQLite table as JSON objects keyed by primary key text.
pub fn source_rows(
    db: &rusqlite::Connection,
    table: &str,
    key: &[&str],
) -> BTreeMap<String, Value> {
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
pub async fn mirror_rows(
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
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

pub async fn lineage(
    pg: &tokio_postgres::Client,
    table: &str,
) -> Option<(Uuid, String, Option<String>)> {
    pg.query_opt(
        "SELECT id, status, mirror_table_name FROM edge_table_lineages WHERE source_table = $1",
        &[&table],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

pub async fn current_hash(pg: &tokio_postgres::Client, table: &str) -> Option<String> {
    pg.query_opt(
        "SELECT current_schema_hash FROM edge_table_lineages WHERE source_table = $1",
        &[&table],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

/// The dev approval path (every column mirrored) until the review API drives it.
pub async fn approve(deps: &Deps, lineage_id: Uuid) {
    let mut c = deps.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    approve_all_columns(&*tx, lineage_id, Uuid::now_v7)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

pub fn hash_of(db: &rusqlite::Connection, table: &str) -> String {
    use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
    let mut stmt = db
        .prepare(&format!(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')"
        ))
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

/// Flush settings of the tests: low-latency mode keeps them fast.
pub const DEFAULT_REPLICATION: &str = "flush_interval = \"200ms\"\nlow_latency = true";

/// A task running until its stop signal, and how to stop it.
type Running<E> = (oneshot::Sender<()>, JoinHandle<Result<(), E>>);

/// Everything one end-to-end test runs. Dropping it stops the broker and the processes.
pub struct Stack {
    pub db: TestDatabase,
    pub pki: Pki,
    pub broker: Broker,
    pub pg: tokio_postgres::Client,
    pub deps: Deps,
    pub device: Device,
    pub dir: TempDir,
    /// The application's own connection to source.db.
    pub app: rusqlite::Connection,
    runner: Option<Running<edge_functions::runner::RunnerError>>,
    agent: Option<Running<edge_agent::daemon::DaemonError>>,
    /// The runner's upload endpoint (protocol §7) when started with [`Stack::start_with_spill`].
    spill: Option<(tempfile::TempDir, JoinHandle<std::io::Result<()>>)>,
}

impl Stack {
    /// Starts PostgreSQL (migrated, one device registered), mosquitto and the runner, and
    /// creates source.db with `schema_sql`; the agent is started by [`Stack::start_agent`] so a
    /// test can prepare rows first.
    pub async fn start(schema_sql: &str) -> Stack {
        Self::start_inner(schema_sql, false).await
    }

    /// [`Stack::start`] plus what `edge-cloud run --http` adds for spill uploads: the local
    /// object store in a temporary directory and its HTTP PUT endpoint on a free port.
    pub async fn start_with_spill(schema_sql: &str) -> Stack {
        Self::start_inner(schema_sql, true).await
    }

    async fn start_inner(schema_sql: &str, with_spill: bool) -> Stack {
        let db = TestDatabase::create_async().await;
        let pki = Pki::generate();
        let broker = Broker::start(&pki);
        let pg = db.connect().await;
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
        let mut deps = Deps::new(pool);
        let mut spill = None;
        if with_spill {
            let dir = tempfile::tempdir().unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let objects = LocalObjects::new(dir.path(), &base, b"e2e-spill-secret".to_vec());
            deps = deps.with_objects(Objects::Local(objects.clone()));
            let server = tokio::spawn(spill_http::serve(
                std::sync::Arc::new(objects),
                None,
                listener,
                std::future::pending(),
            ));
            spill = Some((dir, server));
        }
        let service = pki.service();
        let (stop_runner, runner_stopped) = oneshot::channel::<()>();
        let runner = tokio::spawn(run(
            deps.clone(),
            MqttSettings {
                url: format!("mqtts://127.0.0.1:{}", broker.port()),
                ca: pki.ca().cert_path().to_path_buf(),
                cert: service.cert_path().to_path_buf(),
                key: service.key_path().to_path_buf(),
                client_id: "edge-service-e2e".into(),
                share_group: None,
            },
            async move {
                let _ = runner_stopped.await;
            },
        ));
        // The agent must not publish before the runner has subscribed (see
        // `Broker::subacks_sent_to`).
        let topics = edge_functions::runner::subscriptions(None).len();
        edge_e2e::wait_for(
            Duration::from_secs(30),
            "the runner's subscriptions",
            || async { broker.subacks_sent_to("edge-service-e2e") >= topics },
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let app = rusqlite::Connection::open(dir.path().join("source.db")).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        app.execute_batch(schema_sql).unwrap();
        app.busy_timeout(Duration::from_secs(5)).unwrap();
        Stack {
            db,
            pki,
            broker,
            pg,
            deps,
            device,
            dir,
            app,
            runner: Some((stop_runner, runner)),
            agent: None,
            spill,
        }
    }

    /// Starts the agent in-process with [`agent_config`] plus `extra_replication` TOML lines in
    /// the `[sqlite-replication]` section; empty means [`DEFAULT_REPLICATION`].
    pub fn start_agent(&mut self, extra_replication: &str) {
        self.start_agent_edited(extra_replication, |config| config);
    }

    /// [`Stack::start_agent`] with the generated configuration passed through `edit` first
    /// (e.g. a smaller `max_payload_bytes`).
    pub fn start_agent_edited(&mut self, extra_replication: &str, edit: impl Fn(String) -> String) {
        let extra_replication = if extra_replication.is_empty() {
            DEFAULT_REPLICATION
        } else {
            extra_replication
        };
        let config = edit(
            agent_config(self.dir.path(), &self.broker, &self.pki)
                .replace("[security]", &format!("{extra_replication}\n[security]")),
        );
        let env = BTreeMap::from([("OMEGA_AUTH_TOKEN".to_string(), CONTROL_KEY.to_string())]);
        let settings =
            Settings::from_parts(&config, &self.dir.path().join("agent.toml"), &env).unwrap();
        let daemon = Daemon::open(settings).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(daemon.run(async move {
            let _ = stopped.await;
        }));
        self.agent = Some((stop, handle));
    }

    /// Stops the agent cleanly (checking it did not fail); [`Stack::start_agent`] starts it
    /// again on the same state.db and source.db.
    pub async fn stop_agent(&mut self) {
        if let Some((stop, handle)) = self.agent.take() {
            stop.send(()).unwrap();
            handle.await.unwrap().unwrap();
        }
    }

    /// Waits until the lineage of `table` exists and returns its id.
    pub async fn lineage_id(&self, table: &str) -> Uuid {
        let pg = &self.pg;
        edge_e2e::wait_for_some(DEADLINE, "the table's lineage to appear", || async move {
            lineage(pg, table).await.map(|(id, _, _)| id)
        })
        .await
    }

    /// Waits until the mirror of `table` equals the source table, or panics with the difference.
    pub async fn assert_mirror_converges(&self, table: &str, key: &[&str]) {
        self.assert_mirror_converges_on(table, key, None).await;
    }

    /// [`Stack::assert_mirror_converges`] on the columns `only` (all when `None`), for
    /// projections that leave a column out.
    pub async fn assert_mirror_converges_on(
        &self,
        table: &str,
        key: &[&str],
        only: Option<&[&str]>,
    ) {
        let project = |rows: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
            match only {
                None => rows,
                Some(cols) => rows
                    .into_iter()
                    .map(|(k, mut v)| {
                        if let Some(obj) = v.as_object_mut() {
                            obj.retain(|name, _| cols.contains(&name.as_str()));
                        }
                        (k, v)
                    })
                    .collect(),
            }
        };
        let (_, _, mirror) = lineage(&self.pg, table).await.unwrap();
        let mirror = mirror.expect("an approved lineage has a mirror table");
        let expected = project(source_rows(&self.app, table, key));
        let last = std::sync::Mutex::new(BTreeMap::new());
        let converged = edge_e2e::wait::try_wait_for_some(DEADLINE, "mirror = source", || {
            let (pg, mirror, expected, last) = (&self.pg, mirror.clone(), &expected, &last);
            let project = &project;
            async move {
                let rows = project(mirror_rows(pg, &mirror, key).await);
                let same = rows == *expected;
                *last.lock().unwrap() = rows;
                same.then_some(())
            }
        })
        .await;
        let last = last.into_inner().unwrap();
        if converged.is_err() {
            let missing: Vec<_> = expected
                .keys()
                .filter(|k| !last.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = last
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(5)
                .collect();
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

    /// Journal entries of `table` the agent holds on the device (not yet acknowledged).
    pub fn journal_entries(&self, table: &str) -> i64 {
        self.app
            .query_row(
                "SELECT count(*) FROM __omega_journal j JOIN __omega_schemas s USING (schema_id) \
                 WHERE s.table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// (status, pause_reason, device_pause_reason, staged_row_count) of `table`'s lineage.
    pub async fn lineage_state(
        &self,
        table: &str,
    ) -> (String, Option<String>, Option<String>, i64) {
        let r = self
            .pg
            .query_one(
                "SELECT status, pause_reason, device_pause_reason, staged_row_count \
                 FROM edge_table_lineages WHERE source_table = $1",
                &[&table],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    }

    /// Waits until a `kind` control for `table` was acknowledged by the device.
    pub async fn wait_control_acked(&self, table: &str, kind: &str) {
        let pg = &self.pg;
        edge_e2e::wait_for(
            DEADLINE,
            "the device to acknowledge the control",
            || async move {
                pg.query_one(
                    "SELECT count(*) FROM edge_pending_controls \
                 WHERE source_table = $1 AND control_kind = $2 AND status = 'acked'",
                    &[&table, &kind],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                    > 0
            },
        )
        .await;
    }

    /// Stops the agent and the runner cleanly and checks neither failed.
    pub async fn stop(mut self) {
        if let Some((stop, handle)) = self.agent.take() {
            stop.send(()).unwrap();
            handle.await.unwrap().unwrap();
        }
        if let Some((stop, handle)) = self.runner.take() {
            stop.send(()).unwrap();
            handle.await.unwrap().unwrap();
        }
        if let Some((_, server)) = self.spill.take() {
            server.abort();
        }
    }
}
