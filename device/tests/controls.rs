//! Control handling against the harness' real mosquitto (mTLS + ACL) and the real `edge-agent`
//! binary (reliability.md §1, §7): a control's effect is durable before its ack, staleness is
//! per table and per control family, `device_unknown` only changes `status`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_e2e::rumqttc::MqttOptions;
use edge_e2e::{Broker, Pki, TestClient, SERVICE_USER};
use edge_protocol::control::{sign_in_place, ControlEnvelope, SegmentKind};
use edge_protocol::value::SqlValue;
use rusqlite::{Connection, OpenFlags};

const DEVICE: &str = "gw-07";
const ROOT: &str = "acme/gw-07";
const KEY: &str = "control-key-for-tests";

struct Agent {
    dir: tempfile::TempDir,
    config: PathBuf,
    source: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn new(broker: &Broker, pki: &Pki) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let device = pki.device(DEVICE);
        std::fs::copy(device.cert_path(), d.join("device.crt")).unwrap();
        std::fs::copy(device.key_path(), d.join("device.key")).unwrap();
        std::fs::copy(pki.ca().cert_path(), d.join("ca.crt")).unwrap();
        let config = d.join("agent.toml");
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
"#,
                host = broker.host(),
                port = broker.port(),
                d = d.display(),
            ),
        )
        .unwrap();
        let source = d.join("source.db");
        Connection::open(&source)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
            )
            .unwrap();
        Agent {
            dir,
            config,
            source,
            child: None,
        }
    }

    fn start_with(&mut self, failpoints: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", KEY)
            .env("EDGE_AGENT_LOG", "info")
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    fn start(&mut self) {
        self.start_with(None);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The process is still running (it did not exit by itself).
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn db(&self) -> Connection {
        let c = Connection::open(&self.source).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    /// One integer from state.db (read-only; the agent may be running).
    fn state_value(&self, sql: &str) -> Option<i64> {
        let path = self.dir.path().join("state/state.db");
        let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(sql, [], |r| r.get(0)).ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn service_options(broker: &Broker, pki: &Pki) -> MqttOptions {
    let mut o = broker.mqtt_options(SERVICE_USER, &pki.service());
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

/// What the "cloud" saw: acks by control id, and rows of `a` by id.
#[derive(Default)]
struct Seen {
    acks: Vec<uuid::Uuid>,
    a: BTreeMap<i64, String>,
}

impl Seen {
    fn take(&mut self, m: &edge_e2e::Message) {
        if m.topic.ends_with("sync/ingest/ack") {
            let ack: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            self.acks
                .push(ack["control_id"].as_str().unwrap().parse().unwrap());
        } else if m.topic.ends_with("sync/rows/batch") {
            let batch = edge_protocol::validate::decode_row_batch(&m.payload).unwrap();
            if batch.source_table != "a" {
                return;
            }
            for r in batch.rows {
                let (Some(SqlValue::Integer(id)), Some(SqlValue::Text(v))) =
                    (r.pk.get("id"), r.row.as_ref().and_then(|row| row.get("v")))
                else {
                    continue;
                };
                self.a.insert(*id, v.clone());
            }
        }
    }

    fn acked(&self, id: uuid::Uuid) -> usize {
        self.acks.iter().filter(|c| **c == id).count()
    }
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

/// The broker, the agent (started with `failpoints`) and the cloud's subscriber, once the
/// agent's first row `a1` has arrived. Fields drop in order: the agent first.
struct Rig {
    agent: Agent,
    svc: TestClient,
    seen: Seen,
    db: Connection,
    _broker: Broker,
    _pki: Pki,
}

async fn rig(failpoints: Option<&str>) -> Rig {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut agent = Agent::new(&broker, &pki);
    let mut svc = service(&broker, &pki).await;
    let mut seen = Seen::default();
    let db = agent.db();
    db.execute("INSERT INTO a VALUES (1, 'a1')", []).unwrap();
    agent.start_with(failpoints);
    drain_until(&mut svc, &mut seen, Duration::from_secs(30), "a1", |s| {
        s.a.len() == 1
    })
    .await;
    Rig {
        agent,
        svc,
        seen,
        db,
        _broker: broker,
        _pki: pki,
    }
}

fn wait_for(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signed(mut envelope: ControlEnvelope) -> (uuid::Uuid, Vec<u8>) {
    sign_in_place(&mut envelope, KEY.as_bytes());
    (envelope.control_id, serde_json::to_vec(&envelope).unwrap())
}

fn now() -> String {
    edge_protocol::timestamp::format(time::OffsetDateTime::now_utc()).unwrap()
}

fn control_topic() -> String {
    format!("{ROOT}/sync/ingest/control")
}

/// Defect 15 (reliability.md §1): a control's effect and its handled id are committed before
/// the ack. The agent is killed (-9) at the failpoint right after the `resume_lineage` ack went
/// out; the cloud saw the ack, so it never re-sends. After the restart the table must be
/// resumed (the old code acked first and lost the resume: paused for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_acked_before_their_effect_is_saved_lose_a_resume() {
    let Rig {
        mut agent,
        mut svc,
        mut seen,
        db,
        _broker,
        _pki,
    } = rig(None).await;

    // Pause a; wait until the pause is saved (whatever the order of ack and save).
    let (pause, bytes) = signed(ControlEnvelope::pause_lineage(
        uuid::Uuid::now_v7(),
        "a",
        1,
        "backpressure",
        now(),
    ));
    svc.publish(&control_topic(), bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "pause ack",
        |s| s.acked(pause) == 1,
    )
    .await;
    wait_for(Duration::from_secs(10), "the pause saved", || {
        agent.state_value("SELECT paused FROM tables WHERE table_name = 'a'") == Some(1)
    });
    db.execute("INSERT INTO a VALUES (2, 'a2')", []).unwrap();

    // Restart with the crash window armed: the daemon stops at the failpoint after the ack.
    agent.kill9();
    agent.start_with(Some("agent-control-after-ack=pause"));
    let (resume, bytes) = signed(ControlEnvelope::resume_lineage(
        uuid::Uuid::now_v7(),
        "a",
        1,
        now(),
    ));
    svc.publish(&control_topic(), bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "resume ack",
        |s| s.acked(resume) == 1,
    )
    .await;
    // The cloud has its ack: it will not re-send. Crash now.
    agent.kill9();
    agent.start();
    db.execute("INSERT INTO a VALUES (3, 'a3')", []).unwrap();
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(20),
        "a to be resumed after the crash (the acked resume_lineage was lost)",
        |s| s.a.len() == 3,
    )
    .await;
    assert_eq!(
        agent.state_value("SELECT paused FROM tables WHERE table_name = 'a'"),
        Some(0),
        "{}",
        agent.log()
    );
}

/// Found by the soak (docs/reliability.md §6): state.db full at the commit of a PUBACK turn
/// ended the agent (`edge-agent: error: state.db: database or disk is full`), leaving it to a
/// supervisor to bring it back. A storage failure now starts
/// the daemon over from state.db in the same process; nothing is lost, and the PUBACKed batch
/// whose ack could not be recorded is sent again (same id: a duplicate the cloud ignores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_db_full_at_an_ack_commit_does_not_end_the_agent() {
    let Rig {
        mut agent,
        mut svc,
        mut seen,
        db,
        _broker,
        _pki,
    } = rig(Some("agent-commit-acks-disk-full=1*return")).await;
    wait_for(
        Duration::from_secs(20),
        "the start-over after the failure",
        || {
            agent
                .log()
                .contains("starting over after a storage failure")
                || !agent.running()
        },
    );
    assert!(agent.running(), "the agent exited: {}", agent.log());
    db.execute("INSERT INTO a VALUES (2, 'a2')", []).unwrap();
    drain_until(&mut svc, &mut seen, Duration::from_secs(30), "a2", |s| {
        s.a.len() == 2
    })
    .await;
    wait_for(Duration::from_secs(20), "a1 and a2 acknowledged", || {
        agent.state_value("SELECT last_acked_seq FROM tables WHERE table_name = 'a'") == Some(2)
    });
    assert!(agent.running(), "{}", agent.log());
    assert!(
        agent.log().contains("database or disk is full"),
        "the failure is logged: {}",
        agent.log()
    );
}

fn at(offset_secs: i64) -> String {
    edge_protocol::timestamp::format(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs),
    )
    .unwrap()
}

/// Defect 14 (reliability.md §1): staleness is per table **and per control family**. A
/// `pause_lineage` issued before a `url_grant` for the same table, but delivered after it (a
/// re-send), must still pause the table (the old code kept one `issued_at` per table and
/// discarded the pause as stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_url_grant_makes_a_resent_pause_lineage_stale() {
    let Rig {
        agent,
        mut svc,
        mut seen,
        db: _,
        _broker,
        _pki,
    } = rig(None).await;
    let pause_issued = at(-10);
    let (grant, bytes) = signed(ControlEnvelope::url_grant(
        uuid::Uuid::now_v7(),
        "a",
        uuid::Uuid::now_v7(),
        SegmentKind::PayloadSpill,
        "https://example.invalid/put",
        at(600),
        at(0),
    ));
    svc.publish(&control_topic(), bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "grant ack",
        |s| s.acked(grant) == 1,
    )
    .await;
    let (pause, bytes) = signed(ControlEnvelope::pause_lineage(
        uuid::Uuid::now_v7(),
        "a",
        1,
        "backpressure",
        pause_issued,
    ));
    svc.publish(&control_topic(), bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "pause ack",
        |s| s.acked(pause) == 1,
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the re-sent pause_lineage to pause the table (discarded as stale after a later url_grant?)",
        || agent.state_value("SELECT paused FROM tables WHERE table_name = 'a'") == Some(1),
    );
    assert!(!agent.log().contains("stale"), "{}", agent.log());
}

/// Defect 16, device side of `device_unknown` (reliability.md §7): the one unsigned control
/// reaches `status` and the log (a warning naming the reason), is never acked, and changes
/// nothing else — the table keeps publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_unknown_only_reaches_status_and_the_log() {
    let Rig {
        agent,
        mut svc,
        mut seen,
        db,
        _broker,
        _pki,
    } = rig(None).await;
    let notice = edge_protocol::control::DeviceUnknown::new("identity_not_registered", now());
    svc.publish(&control_topic(), serde_json::to_vec(&notice).unwrap())
        .await;
    // A signed control after it: once its ack is in, the notice was handled (in order).
    let (pause, bytes) = signed(ControlEnvelope::pause_lineage(
        uuid::Uuid::now_v7(),
        "other",
        1,
        "x",
        now(),
    ));
    svc.publish(&control_topic(), bytes).await;
    drain_until(
        &mut svc,
        &mut seen,
        Duration::from_secs(30),
        "pause ack",
        |s| s.acked(pause) == 1,
    )
    .await;
    assert_eq!(seen.acks, vec![pause], "device_unknown must not be acked");
    db.execute("INSERT INTO a VALUES (2, 'a2')", []).unwrap();
    drain_until(&mut svc, &mut seen, Duration::from_secs(30), "a2", |s| {
        s.a.len() == 2
    })
    .await;
    let log = agent.log();
    assert!(
        log.contains("device_unknown") && log.contains("identity_not_registered"),
        "{log}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["status", "--json", "--config"])
        .arg(&agent.config)
        .env("OMEGA_AUTH_TOKEN", KEY)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "status --json: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        doc["device_unknown"]["reason"], "identity_not_registered",
        "{doc}"
    );
}
