//! The agent's metrics (observability.md §3) against the harness' real mosquitto (mTLS + ACL):
//! the `edge-agent` binary runs as a child process with `[observability] metrics_listen`, a
//! service-identity client plays the cloud, and the endpoint is scraped over TCP. Every wait is
//! on a condition (a scrape, a status, a log line), never a fixed sleep.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_e2e::{free_port, wait_until, Broker, Pki, TestClient, SERVICE_USER};
use edge_protocol::control::{sign_in_place, ControlEnvelope};
use rusqlite::Connection;

const DEVICE: &str = "gw-07";
const ROOT: &str = "acme/gw-07";
const KEY: &str = "control-key-for-tests";
const WAIT: Duration = Duration::from_secs(30);

/// Every family of §3, exactly as the spec names them, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("edge_agent_journal_rows", "gauge"),
    ("edge_agent_journal_bytes", "gauge"),
    ("edge_agent_oldest_pending_age_seconds", "gauge"),
    ("edge_agent_last_acked_commit_seq", "gauge"),
    ("edge_agent_unacked_batches", "gauge"),
    ("edge_agent_table_paused", "gauge"),
    ("edge_agent_table_needs_snapshot", "gauge"),
    ("edge_agent_table_blocked", "gauge"),
    ("edge_agent_last_ack_timestamp_seconds", "gauge"),
    ("edge_agent_mqtt_connected", "gauge"),
    ("edge_agent_info", "gauge"),
    ("edge_agent_batches_acked_total", "counter"),
    ("edge_agent_rows_acked_total", "counter"),
    ("edge_agent_retention_dropped_entries_total", "counter"),
    ("edge_agent_controls_total", "counter"),
];

struct Agent {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn write_config(dir: &Path, broker: &Broker, pki: &Pki, listen: &str) -> PathBuf {
    let device = pki.device(DEVICE);
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

[security]
signed_control = true

[observability]
metrics_listen = "{listen}"
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
    fn new(broker: &Broker, pki: &Pki) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let config = write_config(dir.path(), broker, pki, &format!("127.0.0.1:{port}"));
        let db = Connection::open(dir.path().join("source.db")).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE b (id INTEGER PRIMARY KEY, v REAL);",
        )
        .unwrap();
        Agent {
            dir,
            config,
            port,
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
        let c = Connection::open(self.dir.path().join("source.db")).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn status_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
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

    /// `GET path`: (status code, body), `None` while nothing listens.
    fn get(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    }

    fn scrape(&self) -> Option<String> {
        match self.get("GET", "/metrics")? {
            (200, body) => Some(body),
            (code, body) => panic!("GET /metrics answered {code}: {body}"),
        }
    }

    /// The samples of one scrape (waits for the endpoint to be up).
    fn samples(&self) -> Samples {
        let mut text = None;
        wait_until(WAIT, "the metrics endpoint", || {
            text = self.scrape();
            text.is_some()
        });
        parse(&text.unwrap())
    }

    /// Waits until the scraped samples satisfy `ok`; returns them.
    fn wait_samples(&self, what: &str, mut ok: impl FnMut(&Samples) -> bool) -> Samples {
        let mut last = Samples::new();
        let found = edge_e2e::wait::try_wait_until(WAIT, what, || {
            last = self.scrape().map(|t| parse(&t)).unwrap_or_default();
            ok(&last)
        });
        assert!(
            found.is_ok(),
            "timed out waiting for {what}: {last:#?}\nagent log:\n{}",
            self.log()
        );
        last
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// (name, labels in name order) → value: label order is not part of a series' identity
/// (`status --json` shows labels as a JSON object).
type Samples = BTreeMap<(String, Vec<(String, String)>), i64>;

fn key(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    s.get(&key(name, labels)).copied()
}

/// The sample lines of a text-format scrape (label values here carry no quotes or commas).
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, v) = line.rsplit_once(' ').unwrap();
        let (name, mut labels): (String, Vec<(String, String)>) = match series.split_once('{') {
            Some((n, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        labels.sort();
        out.insert((name, labels), v.parse().unwrap());
    }
    out
}

/// `status --json`'s `metrics` as the same map.
fn status_samples(doc: &serde_json::Value) -> Samples {
    doc["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let labels = m["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (
                (m["name"].as_str().unwrap().to_owned(), labels),
                m["value"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn service(broker: &Broker, pki: &Pki) -> TestClient {
    let mut o = broker.mqtt_options(SERVICE_USER, &pki.service());
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let mut c = TestClient::connect(o).await.unwrap();
    c.subscribe(&format!("{ROOT}/sync/#")).await;
    c
}

fn signed(mut envelope: ControlEnvelope, key: &[u8]) -> Vec<u8> {
    sign_in_place(&mut envelope, key);
    serde_json::to_vec(&envelope).unwrap()
}

fn now() -> String {
    edge_protocol::timestamp::format(time::OffsetDateTime::now_utc()).unwrap()
}

fn insert(db: &Connection, from: i64, n: i64) {
    let tx = db.unchecked_transaction().unwrap();
    for id in from..from + n {
        tx.execute(
            "INSERT INTO a(id, v) VALUES(?1, ?2)",
            rusqlite::params![id, format!("v{id}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_from_start_values_move_controls_count_and_counters_survive_a_restart() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki);
    let mut svc = service(&broker, &pki).await;
    agent.start();

    // From start-up: every family with HELP and TYPE, before anything was sent.
    let mut text = None;
    wait_until(WAIT, "the metrics endpoint", || {
        text = agent.scrape();
        text.is_some()
    });
    let text = text.unwrap();
    for (name, kind) in FAMILIES {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{text}"
        );
    }
    let s = agent.wait_samples("the broker connection", |s| {
        value(s, "edge_agent_mqtt_connected", &[]) == Some(1)
    });
    let epoch = agent.status_json()["journal_epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &s,
            "edge_agent_info",
            &[
                ("device", DEVICE),
                ("version", version),
                ("journal_epoch", &epoch)
            ]
        ),
        Some(1),
        "{s:#?}"
    );
    assert_eq!(
        value(
            &s,
            "edge_agent_table_blocked",
            &[("table", "a"), ("reason", "none")]
        ),
        Some(0)
    );
    assert_eq!(
        value(
            &s,
            "edge_agent_retention_dropped_entries_total",
            &[("table", "a")]
        ),
        Some(0)
    );

    // Other routes and methods.
    assert_eq!(agent.get("GET", "/").unwrap().0, 404);
    assert_eq!(agent.get("POST", "/metrics").unwrap().0, 405);

    // The application writes; the broker acknowledges; the gauges fall and the counters rise.
    let db = agent.db();
    insert(&db, 1, 50);
    let s = agent.wait_samples("the 50 rows acknowledged", |s| {
        value(s, "edge_agent_rows_acked_total", &[]) >= Some(50)
            && value(s, "edge_agent_journal_rows", &[("table", "a")]) == Some(0)
    });
    assert!(value(&s, "edge_agent_batches_acked_total", &[]).unwrap() >= 1);
    assert_eq!(
        value(&s, "edge_agent_journal_bytes", &[("table", "a")]),
        Some(0)
    );
    assert_eq!(
        value(&s, "edge_agent_unacked_batches", &[("table", "a")]),
        Some(0)
    );
    assert_eq!(
        value(
            &s,
            "edge_agent_oldest_pending_age_seconds",
            &[("table", "a")]
        ),
        Some(0)
    );
    assert!(value(&s, "edge_agent_last_acked_commit_seq", &[("table", "a")]).unwrap() >= 50);
    let ack_ts = value(&s, "edge_agent_last_ack_timestamp_seconds", &[]).unwrap();
    let unix_now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (unix_now - 120..=unix_now + 1).contains(&ack_ts),
        "{ack_ts} vs {unix_now}"
    );

    // Controls: a forged pause (bad_signature), a real one (applied), the real one again
    // (duplicate), and one issued before it (stale).
    let control = format!("{ROOT}/sync/ingest/control");
    let early = now();
    let forged = ControlEnvelope::pause_lineage(uuid::Uuid::now_v7(), "b", 1, "x", now());
    svc.publish(&control, signed(forged, b"wrong key")).await;
    let pause = ControlEnvelope::pause_lineage(uuid::Uuid::now_v7(), "b", 1, "backpressure", now());
    let pause_bytes = signed(pause, KEY.as_bytes());
    svc.publish(&control, pause_bytes.clone()).await;
    let paused = [("table", "b")];
    agent.wait_samples("table b paused", |s| {
        value(s, "edge_agent_table_paused", &paused) == Some(1)
    });
    svc.publish(&control, pause_bytes).await;
    let stale = ControlEnvelope::resume_lineage(uuid::Uuid::now_v7(), "b", 1, early);
    svc.publish(&control, signed(stale, KEY.as_bytes())).await;
    let controls = |outcome: &'static str| {
        move |s: &Samples| {
            value(
                s,
                "edge_agent_controls_total",
                &[("kind", "pause_lineage"), ("outcome", outcome)],
            )
        }
    };
    let s = agent.wait_samples("every control outcome counted", |s| {
        controls("duplicate")(s) == Some(1)
            && value(
                s,
                "edge_agent_controls_total",
                &[("kind", "resume_lineage"), ("outcome", "stale")],
            ) == Some(1)
    });
    assert_eq!(controls("applied")(&s), Some(1), "{s:#?}");
    assert_eq!(controls("bad_signature")(&s), Some(1), "{s:#?}");
    assert_eq!(value(&s, "edge_agent_table_paused", &paused), Some(1));

    // A paused table's rows wait: its backlog and the oldest entry's age show it.
    db.execute("INSERT INTO b VALUES (1, 0.5)", []).unwrap();
    agent.wait_samples("b's pending entry", |s| {
        value(s, "edge_agent_journal_rows", &paused) == Some(1)
            && value(s, "edge_agent_oldest_pending_age_seconds", &paused) >= Some(1)
    });

    // The endpoint and `status --json` agree at a quiet moment (nothing moves: a's rows are
    // acked, b is paused; the age of b's entry is read in whole seconds, so compare a pair of
    // reads taken within the same second or retry).
    let mut agreed = false;
    for _ in 0..20 {
        let mut endpoint = agent.samples();
        let status = status_samples(&agent.status_json());
        let again = agent.samples();
        if endpoint != again {
            continue;
        }
        endpoint.remove(&key("edge_agent_mqtt_connected", &[]));
        assert!(
            !status.contains_key(&key("edge_agent_mqtt_connected", &[])),
            "status has no connection flag"
        );
        if endpoint == status {
            agreed = true;
            break;
        }
    }
    if !agreed {
        let mut endpoint = agent.samples();
        endpoint.remove(&key("edge_agent_mqtt_connected", &[]));
        let status = status_samples(&agent.status_json());
        let differ: Vec<_> = endpoint
            .iter()
            .filter(|(k, v)| status.get(*k) != Some(*v))
            .chain(status.iter().filter(|(k, _)| !endpoint.contains_key(*k)))
            .collect();
        panic!("endpoint and status --json never agreed: {differ:?}");
    }

    // Counters live in state.db: a kill -9 and a restart keep them.
    let before = agent.samples();
    agent.kill9();
    agent.start();
    let after = agent.wait_samples("the restarted agent connected", |s| {
        value(s, "edge_agent_mqtt_connected", &[]) == Some(1)
    });
    for name in [
        "edge_agent_batches_acked_total",
        "edge_agent_rows_acked_total",
    ] {
        assert_eq!(
            value(&after, name, &[]),
            value(&before, name, &[]),
            "{name}"
        );
    }
    for outcome in ["applied", "duplicate", "bad_signature"] {
        assert_eq!(
            controls(outcome)(&after),
            controls(outcome)(&before),
            "{outcome}"
        );
    }
    // And go on counting.
    insert(&db, 51, 10);
    agent.wait_samples("10 more rows acknowledged", |s| {
        value(s, "edge_agent_rows_acked_total", &[])
            >= value(&before, "edge_agent_rows_acked_total", &[]).map(|v| v + 10)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_pending_age_grows_while_the_broker_is_down_and_returns_to_zero() {
    let pki = Pki::generate();
    let mut broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki);
    agent.start();
    let db = agent.db();
    insert(&db, 1, 5);
    let a = [("table", "a")];
    agent.wait_samples("the first rows acknowledged", |s| {
        value(s, "edge_agent_rows_acked_total", &[]) >= Some(5)
            && value(s, "edge_agent_journal_rows", &a) == Some(0)
    });

    broker.stop();
    agent.wait_samples("the disconnect", |s| {
        value(s, "edge_agent_mqtt_connected", &[]) == Some(0)
    });
    insert(&db, 6, 20);
    let s = agent.wait_samples("a pending age of 2 s", |s| {
        value(s, "edge_agent_oldest_pending_age_seconds", &a) >= Some(2)
    });
    assert_eq!(value(&s, "edge_agent_journal_rows", &a), Some(20), "{s:#?}");
    assert!(value(&s, "edge_agent_journal_bytes", &a).unwrap() > 20 * 16);
    // It keeps growing while nothing is delivered.
    let first = value(&s, "edge_agent_oldest_pending_age_seconds", &a).unwrap();
    agent.wait_samples("the age to grow", |s| {
        value(s, "edge_agent_oldest_pending_age_seconds", &a) > Some(first)
    });

    broker.start_again();
    let s = agent.wait_samples("the backlog delivered", |s| {
        value(s, "edge_agent_journal_rows", &a) == Some(0)
            && value(s, "edge_agent_mqtt_connected", &[]) == Some(1)
    });
    assert_eq!(
        value(&s, "edge_agent_oldest_pending_age_seconds", &a),
        Some(0)
    );
    assert!(value(&s, "edge_agent_rows_acked_total", &[]).unwrap() >= 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_shows_in_the_blocked_gauge_with_its_reason() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki);
    agent.start();
    let db = agent.db();
    // Enrolled (triggers installed) before the broken write.
    agent.wait_samples("b enrolled", |s| {
        value(
            s,
            "edge_agent_table_blocked",
            &[("table", "b"), ("reason", "none")],
        ) == Some(0)
    });
    db.execute_batch(
        "BEGIN; INSERT INTO b VALUES (1, 1.5);
         UPDATE __omega_journal SET row = '[1,' WHERE commit_seq =
             (SELECT max(commit_seq) FROM __omega_journal); COMMIT;",
    )
    .unwrap();
    insert(&db, 1, 3);
    let s = agent.wait_samples("b blocked", |s| {
        value(
            s,
            "edge_agent_table_blocked",
            &[("table", "b"), ("reason", "undecodable_journal_entry")],
        ) == Some(1)
    });
    assert!(
        !s.contains_key(&key(
            "edge_agent_table_blocked",
            &[("table", "b"), ("reason", "none")]
        )),
        "one series per table: {s:#?}"
    );
    // The other table goes on.
    agent.wait_samples("a delivered", |s| {
        value(s, "edge_agent_journal_rows", &[("table", "a")]) == Some(0)
            && value(s, "edge_agent_rows_acked_total", &[]) >= Some(3)
    });
}

#[test]
fn a_bad_metrics_listen_fails_check_and_run_naming_the_key() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let agent = Agent::new(&broker, &pki);
    let bad = tempfile::tempdir().unwrap();
    let config = write_config(bad.path(), &broker, &pki, "localhost:metrics");
    for command in ["check", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args([command, "--config"])
            .arg(&config)
            .env("OMEGA_AUTH_TOKEN", KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("edge-agent: error: config key `observability.metrics_listen`"),
            "{command}: {stderr}"
        );
    }
    // A good one: `check` reports it.
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["check", "--config"])
        .arg(&agent.config)
        .env("OMEGA_AUTH_TOKEN", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "metrics       http://127.0.0.1:{}/metrics",
            agent.port
        )),
        "{stdout}"
    );
}

#[test]
fn a_taken_port_is_logged_naming_the_key_syncing_goes_on_and_the_endpoint_binds_later() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki);
    let squatter = TcpListener::bind(("127.0.0.1", agent.port)).unwrap();
    agent.start();
    wait_until(WAIT, "the bind failure in the log", || {
        agent
            .log()
            .contains("config key `observability.metrics_listen`: cannot listen on")
    });
    // The agent keeps running and syncing.
    let db = agent.db();
    insert(&db, 1, 5);
    wait_until(WAIT, "the rows acknowledged (status)", || {
        let doc = agent.status_json();
        let s = status_samples(&doc);
        value(&s, "edge_agent_rows_acked_total", &[]) >= Some(5)
    });
    assert!(
        agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "agent exited:\n{}",
        agent.log()
    );
    // The port frees: the endpoint comes up by itself.
    drop(squatter);
    let s = agent.wait_samples("the endpoint after the port freed", |s| {
        value(s, "edge_agent_rows_acked_total", &[]) >= Some(5)
    });
    assert_eq!(value(&s, "edge_agent_mqtt_connected", &[]), Some(1));
}
