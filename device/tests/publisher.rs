//! Publisher proofs against the harness' real mosquitto (mTLS + ACL): the `edge-agent` binary
//! runs as a child process exactly as on a gateway; a service-identity client plays the cloud.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_e2e::rumqttc::MqttOptions;
use edge_e2e::{Broker, Pki, TestClient, SERVICE_USER};
use edge_protocol::batch::Op;
use edge_protocol::control::{
    sign_in_place, ControlEnvelope, IngestRequest, RequestKind, SegmentKind,
};
use edge_protocol::value::SqlValue;
use rusqlite::Connection;

const DEVICE: &str = "gw-07";
const ROOT: &str = "acme/gw-07";
const KEY: &str = "control-key-for-tests";

struct Agent {
    dir: tempfile::TempDir,
    config: PathBuf,
    source: PathBuf,
    child: Option<Child>,
}

fn write_config(dir: &Path, broker: &Broker, pki: &Pki, extra: &str) -> PathBuf {
    let device = pki.device(DEVICE);
    // Copy the identity next to the config so it outlives the ClientIdentity handle.
    std::fs::copy(device.cert_path(), dir.join("device.crt")).unwrap();
    std::fs::copy(device.key_path(), dir.join("device.key")).unwrap();
    std::fs::copy(pki.ca().cert_path(), dir.join("ca.crt")).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connection]
server_url = "mqtts://{host}:{port}"
device_name = "{DEVICE}"
root_topic = "{ROOT}"
keep_alive = "5s"
reconnect_min = "50ms"
reconnect_max = "500ms"
ca_cert_path = "{d}/ca.crt"
client_cert_path = "{d}/device.crt"
client_key_path = "{d}/device.key"

[sqlite-replication]
source_db_path = "{d}/source.db"
state_db_path = "{d}/state/state.db"
flush_interval = "100ms"
rate_limit = false
{extra}

[security]
signed_control = true
"#,
            host = broker.host(),
            port = broker.port(),
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

impl Agent {
    fn new(broker: &Broker, pki: &Pki, extra: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), broker, pki, extra);
        let source = dir.path().join("source.db");
        let db = Connection::open(&source).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
        Agent {
            dir,
            config,
            source,
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", KEY)
            .env("EDGE_AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn db(&self) -> Connection {
        let c = Connection::open(&self.source).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn service_options(broker: &Broker, pki: &Pki) -> MqttOptions {
    let mut o = broker.mqtt_options(SERVICE_USER, &pki.service());
    // Persistent, so messages published while we reconnect after a broker restart are queued.
    o.set_clean_session(false)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    o
}

async fn service(broker: &Broker, pki: &Pki) -> TestClient {
    let mut c = TestClient::connect(service_options(broker, pki))
        .await
        .unwrap();
    c.subscribe(&format!("{ROOT}/sync/#")).await;
    c
}

/// What the "cloud" saw: every batch by id (bytes must be identical on redelivery) and the
/// latest value per (table, id) replayed in commit order.
#[derive(Default)]
struct Seen {
    batches: HashMap<uuid::Uuid, Vec<u8>>,
    duplicates: usize,
    changes: BTreeMap<(String, i64), (Op, Option<String>)>,
    acks: Vec<uuid::Uuid>,
    /// Telemetry batches by batch_seq: (batch_id, rows), in first-arrival order of seq.
    telemetry: BTreeMap<i64, (uuid::Uuid, usize)>,
    telemetry_arrivals: Vec<i64>,
    /// Anything at all, by topic (for the ACL test).
    topics: Vec<String>,
}

impl Seen {
    fn take(&mut self, m: &edge_e2e::Message) {
        self.topics.push(m.topic.clone());
        if m.topic.ends_with("sync/telemetry/batch") {
            let t: edge_protocol::telemetry::TelemetryBatch =
                serde_json::from_slice(&m.payload).unwrap();
            if let Some(prev) = self.batches.get(&t.batch_id) {
                assert_eq!(
                    prev, &m.payload,
                    "a re-sent batch must carry identical bytes"
                );
                self.duplicates += 1;
                return;
            }
            self.batches.insert(t.batch_id, m.payload.clone());
            let old = self
                .telemetry
                .insert(t.batch_seq, (t.batch_id, t.rows.len()));
            assert!(
                old.is_none(),
                "batch_seq {} reused by another batch_id",
                t.batch_seq
            );
            self.telemetry_arrivals.push(t.batch_seq);
            return;
        }
        if m.topic.ends_with("sync/ingest/ack") {
            let ack: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            self.acks
                .push(ack["control_id"].as_str().unwrap().parse().unwrap());
            return;
        }
        if !m.topic.ends_with("sync/rows/batch") {
            return;
        }
        let batch = edge_protocol::validate::decode_row_batch(&m.payload).unwrap();
        assert!(m.payload.len() <= 131_072);
        if let Some(prev) = self.batches.get(&batch.batch_id) {
            assert_eq!(
                prev, &m.payload,
                "a re-sent batch must carry identical bytes"
            );
            self.duplicates += 1;
            return;
        }
        self.batches.insert(batch.batch_id, m.payload.clone());
        for r in batch.rows {
            let id = match r.pk.get("id") {
                Some(SqlValue::Integer(i)) => *i,
                other => panic!("bad pk {other:?}"),
            };
            let v = r.row.as_ref().and_then(|row| match row.get("v") {
                Some(SqlValue::Text(t)) => Some(t.clone()),
                _ => None,
            });
            // Keep the change with the highest commit_seq per key (what the mirror converges to).
            let key = (batch.source_table.clone(), id);
            let entry = self.changes.entry(key).or_insert((r.op, v.clone()));
            *entry = (r.op, v);
        }
    }
}

fn source_rows(db: &Connection, table: &str) -> BTreeMap<i64, String> {
    let mut stmt = db
        .prepare(&format!("SELECT id, v FROM {table} ORDER BY id"))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn mirror(seen: &Seen, table: &str) -> BTreeMap<i64, String> {
    seen.changes
        .iter()
        .filter(|((t, _), (op, _))| t == table && *op != Op::Delete)
        .filter_map(|((_, id), (_, v))| v.clone().map(|v| (*id, v)))
        .collect()
}

async fn drain_until(
    client: &mut TestClient,
    seen: &mut Seen,
    deadline: Duration,
    what: &str,
    mut done: impl FnMut(&Seen) -> bool,
) {
    let started = tokio::time::Instant::now();
    while !done(seen) {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        if let Some(m) = client
            .recv_within(left.min(Duration::from_millis(500)))
            .await
        {
            seen.take(&m);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_as_captured_across_kills_and_broker_restart() {
    let pki = Pki::generate();
    let mut broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki, "");
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let mut rng = fastrand::Rng::with_seed(7);
    let db = agent.db();
    let mut next_id = 1i64;
    let mut write = |db: &Connection, n: usize, rng: &mut fastrand::Rng| {
        let tx = db.unchecked_transaction().unwrap();
        for _ in 0..n {
            tx.execute(
                "INSERT INTO a(id, v) VALUES(?1, ?2)",
                rusqlite::params![next_id, format!("v{next_id}")],
            )
            .unwrap();
            if next_id % 3 == 0 {
                tx.execute("UPDATE a SET v = v || '-u' WHERE id = ?1", [next_id - 1])
                    .unwrap();
            }
            if next_id % 7 == 0 {
                tx.execute("DELETE FROM a WHERE id = ?1", [next_id - 2])
                    .unwrap();
            }
            next_id += 1;
        }
        tx.commit().unwrap();
        let _ = rng;
    };
    agent.start();
    // kill -9 at random points, 20 times, with writes in between (the app never waits).
    for round in 0..20 {
        write(&db, rng.usize(1..400), &mut rng);
        let wait = Duration::from_millis(rng.u64(0..400));
        let started = tokio::time::Instant::now();
        while started.elapsed() < wait {
            if let Some(m) = svc.recv_within(wait - started.elapsed()).await {
                seen.take(&m);
            }
        }
        agent.kill9();
        if round == 10 {
            // Broker restart mid-stream (graceful: sessions survive, like IoT Core).
            drop(svc);
            broker.restart();
            svc = TestClient::connect(service_options(&broker, &pki))
                .await
                .unwrap();
        }
        agent.start();
    }
    write(&db, 500, &mut rng);
    let expected = source_rows(&db, "a");
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(120),
        "the mirror to match the source",
        |s| mirror(s, "a") == expected,
    )
    .await;
    assert_eq!(mirror(&seen, "a"), expected, "agent log:\n{}", agent.log());
    // Journal drained: acknowledged rows are deleted (only the floor marker may stay).
    edge_e2e::wait_until(Duration::from_secs(30), "journal to drain", || {
        let n: i64 = db
            .query_row("SELECT count(*) FROM __omega_journal", [], |r| r.get(0))
            .unwrap();
        n <= 1
    });
}

fn control(envelope: &mut ControlEnvelope) -> Vec<u8> {
    sign_in_place(envelope, KEY.as_bytes());
    serde_json::to_vec(envelope).unwrap()
}

fn now() -> String {
    edge_protocol::timestamp::format(time::OffsetDateTime::now_utc()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_redelivery_and_forged_controls() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki, "");
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let db = agent.db();
    db.execute("INSERT INTO a VALUES (1, 'a1')", []).unwrap();
    db.execute("INSERT INTO b VALUES (1, 'b1')", []).unwrap();
    agent.start();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "initial rows",
        |s| mirror(s, "a").len() == 1 && mirror(s, "b").len() == 1,
    )
    .await;
    let control_topic = format!("{ROOT}/sync/ingest/control");

    // Forged (wrong key) pause: rejected, not acked.
    let mut forged = ControlEnvelope::pause_lineage(uuid::Uuid::now_v7(), "a", 1, "x", now());
    sign_in_place(&mut forged, b"wrong key");
    svc.publish(&control_topic, serde_json::to_vec(&forged).unwrap())
        .await;
    // Real pause of a.
    let mut pause =
        ControlEnvelope::pause_lineage(uuid::Uuid::now_v7(), "a", 1, "backpressure", now());
    let pause_bytes = control(&mut pause);
    svc.publish(&control_topic, pause_bytes.clone()).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "pause ack",
        |s| s.acks.contains(&pause.control_id),
    )
    .await;
    assert!(
        !seen.acks.contains(&forged.control_id),
        "forged control must not be acked"
    );
    assert!(agent.log().contains("control rejected"), "{}", agent.log());

    // Paused table keeps journaling; the other keeps flowing.
    db.execute("INSERT INTO a VALUES (2, 'a2')", []).unwrap();
    db.execute("INSERT INTO a VALUES (3, 'a3')", []).unwrap();
    db.execute("INSERT INTO b VALUES (2, 'b2')", []).unwrap();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "b to keep flowing",
        |s| mirror(s, "b").len() == 2,
    )
    .await;
    // Give a's rows the same chance: two more flushes' worth of b traffic.
    db.execute("INSERT INTO b VALUES (3, 'b3')", []).unwrap();
    drain_until(&mut svc, &mut seen, Duration::from_secs(30), "b3", |s| {
        mirror(s, "b").len() == 3
    })
    .await;
    assert_eq!(mirror(&seen, "a").len(), 1, "paused table must not publish");

    // Resume: a drains in order from its cursor.
    let mut resume = ControlEnvelope::resume_lineage(uuid::Uuid::now_v7(), "a", 1, now());
    svc.publish(&control_topic, control(&mut resume)).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "a to resume",
        |s| mirror(s, "a").len() == 3 && s.acks.contains(&resume.control_id),
    )
    .await;

    // The old pause redelivered: acked again, not re-executed (a keeps flowing).
    svc.publish(&control_topic, pause_bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "second pause ack",
        |s| s.acks.iter().filter(|c| **c == pause.control_id).count() == 2,
    )
    .await;
    db.execute("INSERT INTO a VALUES (4, 'a4')", []).unwrap();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "a4 after redelivered pause",
        |s| mirror(s, "a").len() == 4,
    )
    .await;
    assert_eq!(mirror(&seen, "a"), source_rows(&db, "a"));
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_missing_and_expired_certs_fail_with_one_clear_line() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let agent = Agent::new(&broker, &pki, "");
    let cfg = agent.config.to_str().unwrap();
    let one_line = |stderr: &str, needle: &str| {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(needle), "{stderr}");
    };
    let auth = [("OMEGA_AUTH_TOKEN", KEY)];
    let (code, _) = run_cli(&["check", "--config", cfg], &auth);
    assert_eq!(code, 0);

    let (code, err) = run_cli(&["check", "--config", cfg], &[]);
    assert_ne!(code, 0);
    one_line(&err, "OMEGA_AUTH_TOKEN");

    let (code, err) = run_cli(&["run", "--config", "/nonexistent/agent.toml"], &auth);
    assert_ne!(code, 0);
    one_line(&err, "cannot read config file");

    let (code, err) = run_cli(
        &["run", "--config", cfg],
        &[
            ("OMEGA_AUTH_TOKEN", KEY),
            ("OMEGA_TLS_CERT_PATH", "/nonexistent/device.crt"),
        ],
    );
    assert_ne!(code, 0);
    one_line(&err, "connection.client_cert_path");

    let (code, err) = run_cli(
        &["run", "--config", cfg],
        &[
            ("OMEGA_AUTH_TOKEN", KEY),
            ("OMEGA_SQLITE_REPLICATION_MAX_INFLIGHT", "lots"),
        ],
    );
    assert_ne!(code, 0);
    one_line(&err, "sqlite-replication.max_inflight");

    // Expired device certificate.
    let mut params = rcgen::CertificateParams::new(vec![DEVICE.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = agent.dir.path();
    std::fs::write(dir.join("expired.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("expired.key"), key.serialize_pem()).unwrap();
    let (code, err) = run_cli(
        &["check", "--config", cfg],
        &[
            ("OMEGA_AUTH_TOKEN", KEY),
            (
                "OMEGA_TLS_CERT_PATH",
                dir.join("expired.crt").to_str().unwrap(),
            ),
            (
                "OMEGA_TLS_KEY_PATH",
                dir.join("expired.key").to_str().unwrap(),
            ),
        ],
    );
    assert_ne!(code, 0);
    one_line(&err, "expired");
}

/// The test's S3 stand-in: a tiny HTTP/1.1 server that records every request (method, path,
/// body) and answers 403 for paths starting with `/refuse`, 200 otherwise.
struct ObjectStore {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
}

/// Method, path, body.
type HttpRequest = (String, String, Vec<u8>);

impl ObjectStore {
    fn start() -> ObjectStore {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let status = if path.starts_with("/refuse") {
                    "403 Forbidden"
                } else {
                    "200 OK"
                };
                seen.lock().unwrap().push((method, path, body));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        ObjectStore { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Receives until a request of `kind` arrives; everything else goes into `seen`.
async fn next_request(
    svc: &mut TestClient,
    seen: &mut Seen,
    kind: RequestKind,
    order: &mut Vec<String>,
) -> IngestRequest {
    let started = tokio::time::Instant::now();
    loop {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "timed out waiting for {kind:?}");
        let Some(m) = svc.recv_within(left).await else {
            continue;
        };
        if m.topic.ends_with("sync/ingest/request") {
            // The agent's `hello` (edge-policies §0) shares the topic; this cloud ignores it.
            if edge_protocol::validate::request_kind_of(&m.payload).as_deref() == Some("hello") {
                continue;
            }
            let r: IngestRequest = serde_json::from_slice(&m.payload).unwrap();
            order.push(format!("{:?}", r.request_kind));
            if r.request_kind == kind {
                return r;
            }
            continue;
        }
        if m.topic.ends_with("sync/rows/batch") {
            let b = edge_protocol::validate::decode_row_batch(&m.payload).unwrap();
            order.push(format!("batch {} {}", b.source_table, b.last_commit_seq));
        }
        seen.take(&m);
    }
}

fn grant(req: &IngestRequest, url: &str, expires_at: &str) -> Vec<u8> {
    let mut g = ControlEnvelope::url_grant(
        uuid::Uuid::now_v7(),
        req.source_table.clone(),
        req.batch_id,
        SegmentKind::PayloadSpill,
        url,
        expires_at,
        now(),
    );
    control(&mut g)
}

fn in_minutes(m: i64) -> String {
    edge_protocol::timestamp::format(time::OffsetDateTime::now_utc() + time::Duration::minutes(m))
        .unwrap()
}

fn state_value(agent: &Agent, sql: &str) -> i64 {
    let c = Connection::open_with_flags(
        agent.dir.path().join("state/state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_row_goes_through_the_spill_flow_across_a_restart() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let store = ObjectStore::start();
    let mut agent = Agent::new(&broker, &pki, "");
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let mut order = Vec::new();
    let db = agent.db();
    // Poorly compressible, so the row really is ~300 KB on the wire.
    let mut rng = fastrand::Rng::with_seed(11);
    let big: String = (0..300_000).map(|_| rng.alphanumeric()).collect();
    db.execute("INSERT INTO a VALUES (1, 'a1')", []).unwrap();
    db.execute("INSERT INTO a VALUES (2, ?1)", [&big]).unwrap();
    db.execute("INSERT INTO a VALUES (3, 'a3')", []).unwrap();
    db.execute("INSERT INTO b VALUES (1, 'b1')", []).unwrap();
    agent.start();
    let first = next_request(&mut svc, &mut seen, RequestKind::UrlRequest, &mut order).await;
    // The agent snapshots the pre-existing rows into its journal on first run.
    let spilled_seq: i64 = db
        .query_row(
            "SELECT commit_seq FROM __omega_journal WHERE length(row) > 100000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(first.source_table, "a");
    assert_eq!(first.segment_kind, SegmentKind::PayloadSpill);
    // The batch header travels with the request, so the cloud need not guess it.
    let epoch: String = {
        let c = Connection::open_with_flags(
            agent.dir.path().join("state/state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.query_row(
            "SELECT value FROM meta WHERE key = 'journal_epoch'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(first.journal_epoch.map(|e| e.to_string()), Some(epoch));
    assert_eq!(first.schema_hash.as_ref().map(String::len), Some(64));
    assert!(edge_protocol::ids::is_uuid_v7(&first.batch_id));
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "a1 and b1",
        |s| mirror(s, "a").len() == 1 && mirror(s, "b").len() == 1,
    )
    .await;

    // kill -9 while the spill waits for its grant; more writes meanwhile; restart.
    agent.kill9();
    db.execute("INSERT INTO a VALUES (4, 'a4')", []).unwrap();
    db.execute("INSERT INTO b VALUES (2, 'b2')", []).unwrap();
    agent.start();
    let again = next_request(&mut svc, &mut seen, RequestKind::UrlRequest, &mut order).await;
    assert_eq!(
        again.batch_id, first.batch_id,
        "the spill id is fixed before its first request"
    );
    assert_eq!(
        again.journal_epoch, first.journal_epoch,
        "the epoch is restored from state.db"
    );
    assert_eq!(
        again.content_length, first.content_length,
        "the object's size is restored with it"
    );

    // An expired grant: the agent asks again.
    let control_topic = format!("{ROOT}/sync/ingest/control");
    svc.publish(
        &control_topic,
        grant(&again, &store.url("/stale"), &in_minutes(-1)),
    )
    .await;
    let r = next_request(&mut svc, &mut seen, RequestKind::UrlRequest, &mut order).await;
    assert_eq!(r.batch_id, first.batch_id);
    // A URL the store refuses (403): the agent asks again after a backoff.
    svc.publish(
        &control_topic,
        grant(&r, &store.url("/refuse/1"), &in_minutes(15)),
    )
    .await;
    let r = next_request(&mut svc, &mut seen, RequestKind::UrlRequest, &mut order).await;
    assert_eq!(r.batch_id, first.batch_id);
    assert!(store.requests().iter().all(|(_, p, _)| p != "/stale"));

    // Nothing of `a` after the spilled row went out, and the cursor has not passed it.
    assert_eq!(mirror(&seen, "a").len(), 1, "{order:?}");
    let acked = state_value(
        &agent,
        "SELECT last_acked_seq FROM tables WHERE table_name = 'a'",
    );
    assert!(
        acked < spilled_seq,
        "cursor {acked} passed the spilled row {spilled_seq}"
    );
    let still: i64 = db
        .query_row(
            "SELECT count(*) FROM __omega_journal WHERE commit_seq = ?1",
            [spilled_seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        still, 1,
        "the spilled change stays journaled until finalize"
    );
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "b keeps flowing",
        |s| mirror(s, "b").len() == 2,
    )
    .await;

    svc.publish(
        &control_topic,
        grant(&r, &store.url("/ok/spill"), &in_minutes(15)),
    )
    .await;
    let fin = next_request(&mut svc, &mut seen, RequestKind::Finalize, &mut order).await;
    assert_eq!(fin.batch_id, first.batch_id);
    assert_eq!(fin.source_table, "a");
    // Only the cloud's upload_result lets the rows go (reliability §2).
    let mut result = ControlEnvelope::upload_result(
        uuid::Uuid::now_v7(),
        fin.source_table.clone(),
        fin.batch_id,
        None,
        now(),
    );
    svc.publish(&control_topic, control(&mut result)).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "a3, a4 after the spill",
        |s| mirror(s, "a").len() == 3,
    )
    .await;
    let finalize_at = order.iter().position(|o| o == "Finalize").unwrap();
    assert!(
        order[..finalize_at]
            .iter()
            .all(|o| !o.starts_with("batch a") || o == &format!("batch a {}", spilled_seq - 1)),
        "rows after the spill were published before its finalize: {order:?}"
    );

    // The object: the same bytes on every PUT, exactly the captured row as one JSON line.
    let puts: Vec<_> = store
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "one refused PUT and one accepted");
    assert_eq!(puts[0].2, puts[1].2);
    // Every request names the object's exact size (reliability §7: the URL is signed for it).
    assert_eq!(first.content_length, Some(puts[1].2.len() as u64));
    let rows = edge_agent::spill::decode(&puts[1].2).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].commit_seq, spilled_seq);
    assert_eq!(rows[0].op, Op::Insert);
    assert_eq!(rows[0].pk.get("id"), Some(&SqlValue::Integer(2)));
    assert_eq!(
        rows[0].row.as_ref().and_then(|r| r.get("v")),
        Some(&SqlValue::Text(big.clone()))
    );
    // Mirror (batches + spilled object) equals the source.
    let mut expected = source_rows(&db, "a");
    expected.remove(&2);
    assert_eq!(mirror(&seen, "a"), expected);
    edge_e2e::wait_until(Duration::from_secs(30), "journal to drain", || {
        let n: i64 = db
            .query_row("SELECT count(*) FROM __omega_journal", [], |r| r.get(0))
            .unwrap();
        n <= 1
    });
    assert_eq!(
        state_value(&agent, "SELECT count(*) FROM outbox"),
        0,
        "{}",
        agent.log()
    );
}

/// The harness' mosquitto process id (found by its config path), for SIGSTOP/SIGCONT.
fn broker_pid(broker: &Broker) -> String {
    let conf = broker.conf_path().to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // The harness' lifeline wrapper carries the same arguments: pick mosquitto itself.
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&conf)
            && String::from_utf8_lossy(argv0).ends_with("mosquitto")
        {
            return name;
        }
    }
    panic!("mosquitto process not found");
}

struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Bytes the broker's kernel received but the (stopped) broker has not read yet.
fn broker_unread_bytes(broker: &Broker) -> usize {
    let out = Command::new("ss")
        .args(["-tnH", "state", "established"])
        .arg(format!("( sport = :{} )", broker.port()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_pubacks_then_released_give_identical_duplicates() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki, "");
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let db = agent.db();
    db.execute("INSERT INTO a VALUES (0, 'first')", []).unwrap();
    agent.start();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "first row",
        |s| mirror(s, "a").len() == 1,
    )
    .await;
    let before = seen.batches.len();

    // Freeze the broker: it receives bytes (its kernel does) but sends no PUBACK.
    let pid = broker_pid(&broker);
    signal(&pid, "-STOP");
    // A panicking test must not leave the broker frozen (it could not be stopped then).
    let frozen = Frozen(pid.clone());
    let tx = db.unchecked_transaction().unwrap();
    // Small enough to fit the frozen broker's socket receive buffer.
    for i in 1..=300 {
        tx.execute(
            "INSERT INTO a VALUES (?1, ?2)",
            rusqlite::params![i, format!("row {i} {}", "x".repeat(40))],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    // Wait until every fixed batch's bytes sit in the broker's socket: published, unacked.
    let reached = edge_e2e::wait::try_wait_until(
        Duration::from_secs(30),
        "batches to reach the frozen broker",
        || {
            let fixed = state_value(
                &agent,
                "SELECT coalesce(sum(length(payload)), 0) FROM outbox",
            );
            fixed > 0 && broker_unread_bytes(&broker) >= usize::try_from(fixed).unwrap()
        },
    );
    assert!(
        reached.is_ok(),
        "outbox bytes {}, unread {}, agent log:\n{}",
        state_value(
            &agent,
            "SELECT coalesce(sum(length(payload)), 0) FROM outbox"
        ),
        broker_unread_bytes(&broker),
        agent.log()
    );
    let withheld = state_value(&agent, "SELECT count(*) FROM outbox");
    // The agent dies without a PUBACK; then the broker reads and delivers what it got.
    agent.kill9();
    drop(frozen);
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "the first copies",
        |s| s.batches.len() >= before + usize::try_from(withheld).unwrap(),
    )
    .await;
    assert_eq!(seen.duplicates, 0);
    // Restarted, the agent re-sends every unacknowledged batch: same ids, identical bytes
    // (`Seen::take` asserts the bytes).
    agent.start();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "the duplicates",
        |s| s.duplicates >= usize::try_from(withheld).unwrap(),
    )
    .await;
    assert_eq!(
        seen.batches.len(),
        before + usize::try_from(withheld).unwrap()
    );
    assert_eq!(mirror(&seen, "a"), source_rows(&db, "a"));
}

fn status_json(agent: &Agent) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["status", "--json", "--config"])
        .arg(&agent.config)
        .env("OMEGA_AUTH_TOKEN", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn table_status<'a>(doc: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap()
}

const TELEMETRY: &str = r#"
[sqlite-replication.table_strategies.temps]
strategy = "telemetry"
ts_column = "ts"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_long_app_never_blocks_then_all_arrives_with_telemetry_order() {
    let pki = Pki::generate();
    let mut broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki, TELEMETRY);
    let db = agent.db();
    db.execute_batch("CREATE TABLE temps (ts INTEGER NOT NULL, value REAL NOT NULL)")
        .unwrap();
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let mut ts = 1_767_225_600i64; // 2026-01-01T00:00:00Z, unix seconds
    let mut temps = |db: &Connection, n: usize| {
        let tx = db.unchecked_transaction().unwrap();
        for _ in 0..n {
            ts += 1;
            tx.execute(
                "INSERT INTO temps VALUES (?1, ?2)",
                rusqlite::params![ts, 20.5],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    db.execute("INSERT INTO a VALUES (0, 'a0')", []).unwrap();
    temps(&db, 10);
    agent.start();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "first rows",
        |s| mirror(s, "a").len() == 1 && s.telemetry.values().map(|t| t.1).sum::<usize>() == 10,
    )
    .await;
    // The subscriber can see the batches before the agent has committed their PUBACKs.
    let started = Instant::now();
    let mut status = status_json(&agent);
    while !status["last_ack_at"].is_string() {
        assert!(started.elapsed() < Duration::from_secs(20), "{status}");
        std::thread::sleep(Duration::from_millis(50));
        status = status_json(&agent);
    }

    // The network is gone (broker stopped) while the application writes a large backlog.
    broker.stop();
    drop(svc);
    let mut slowest = Duration::ZERO;
    let mut next = 1i64;
    for round in 0..60 {
        let started = std::time::Instant::now();
        let tx = db.unchecked_transaction().unwrap();
        for _ in 0..500 {
            tx.execute(
                "INSERT INTO a VALUES (?1, ?2)",
                rusqlite::params![next, format!("offline {next}")],
            )
            .unwrap();
            next += 1;
        }
        tx.commit().unwrap();
        temps(&db, 100);
        slowest = slowest.max(started.elapsed());
        if round % 20 == 0 {
            // One telemetry batch per table is fixed (in flight) at a time, however long the
            // outage: batch_seq order can never be broken by a reordered pair.
            let t = state_value(
                &agent,
                "SELECT count(*) FROM outbox WHERE kind = 'telemetry'",
            );
            assert!(t <= 1, "{t} telemetry batches fixed at once");
        }
    }
    assert!(
        slowest < Duration::from_secs(1),
        "an application transaction took {slowest:?} while the broker was down"
    );
    let doc = status_json(&agent);
    let a = table_status(&doc, "a");
    assert!(a["journal_entries"].as_i64().unwrap() >= 30_000, "{doc}");
    assert!(a["journal_bytes"].as_i64().unwrap() > 0, "{doc}");
    // Offline, the agent keeps fixing batches into its outbox (bounded), ready to go.
    edge_e2e::wait_until(
        Duration::from_secs(30),
        "batches fixed while offline",
        || status_json(&agent)["unacked_batches"].as_u64().unwrap() >= 1,
    );
    assert_eq!(
        table_status(&doc, "temps")["strategy"],
        "telemetry",
        "{doc}"
    );

    broker.start_again();
    let mut svc = TestClient::connect(service_options(&broker, &pki))
        .await
        .unwrap();
    svc.subscribe(&format!("{ROOT}/sync/#")).await;
    let expected = source_rows(&db, "a");
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(120),
        "the backlog",
        |s| mirror(s, "a") == expected && s.telemetry.values().map(|t| t.1).sum::<usize>() == 6010,
    )
    .await;

    // batch_seq persists across a kill -9: the next batches continue the sequence.
    let before_kill = *seen.telemetry.keys().last().unwrap();
    agent.kill9();
    temps(&db, 5);
    agent.start();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "telemetry after restart",
        |s| s.telemetry.values().map(|t| t.1).sum::<usize>() == 6015,
    )
    .await;
    let seqs: Vec<i64> = seen.telemetry.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless batch_seq"
    );
    assert!(*seqs.last().unwrap() > before_kill);
    let mut sorted = seen.telemetry_arrivals.clone();
    sorted.sort_unstable();
    assert_eq!(
        seen.telemetry_arrivals, sorted,
        "telemetry batches arrive in batch_seq order"
    );
    let doc = status_json(&agent);
    edge_e2e::wait_until(Duration::from_secs(30), "journal to drain", || {
        let n: i64 = db
            .query_row("SELECT count(*) FROM __omega_journal", [], |r| r.get(0))
            .unwrap();
        n <= 1
    });
    assert!(doc["last_ack_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_publish_outside_its_root_nor_to_control_topics() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    // The agent authenticates with gw-07's certificate but is configured as another device
    // (client id and root of gw-99): the broker knows it as gw-07 from the certificate.
    let mut agent = Agent::new(&broker, &pki, "");
    let cfg = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace(
            &format!("root_topic = \"{ROOT}\""),
            "root_topic = \"acme/gw-99\"",
        )
        .replace(
            &format!("device_name = \"{DEVICE}\""),
            "device_name = \"gw-99\"",
        );
    std::fs::write(&agent.config, cfg).unwrap();
    let mut auditor =
        TestClient::connect(broker.mqtt_options(edge_e2e::AUDITOR_USER, &pki.auditor()))
            .await
            .unwrap();
    auditor.subscribe("#").await;
    let db = agent.db();
    for i in 0..50 {
        db.execute("INSERT INTO a VALUES (?1, 'x')", [i]).unwrap();
    }
    agent.start();
    // mosquitto PUBACKs a denied QoS 1 publish (MQTT 3.1.1 has no way to refuse it), so the
    // agent drains its journal — and nothing may have reached any subscriber.
    let drained = edge_e2e::wait::try_wait_until(
        Duration::from_secs(30),
        "the agent to have published",
        || {
            let n: i64 = db
                .query_row("SELECT count(*) FROM __omega_journal", [], |r| r.get(0))
                .unwrap_or(i64::MAX);
            n <= 1
        },
    );
    assert!(
        drained.is_ok(),
        "agent log:\n{}\nbroker log:\n{}",
        agent.log(),
        broker.log()
    );
    // The device's own identity publishing a control (to itself and to another device).
    let mut device =
        TestClient::connect(broker.mqtt_options("gw-07-impostor", &pki.device(DEVICE)))
            .await
            .unwrap();
    for t in [
        format!("{ROOT}/sync/ingest/control"),
        "acme/gw-99/sync/ingest/control".into(),
    ] {
        let _ = device
            .try_publish(&t, b"{\"control_kind\":\"pause_lineage\"}".to_vec())
            .await;
    }
    // A marker from the service, published after all of the above: once the auditor has it,
    // the broker has routed everything published before it.
    let mut svc = service(&broker, &pki).await;
    let marker = "acme/gw-00/sync/ingest/control";
    svc.publish(marker, b"marker".to_vec()).await;
    let mut got = Vec::new();
    let started = tokio::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "marker never arrived"
        );
        if let Some(m) = auditor.recv_within(Duration::from_secs(1)).await {
            if m.topic == marker {
                break;
            }
            got.push(m.topic);
        }
    }
    assert!(got.is_empty(), "denied publishes were delivered: {got:?}");
    let log = broker.log();
    assert!(log.contains("Denied PUBLISH"), "{log}");
}
