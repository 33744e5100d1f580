//! An unregistered or mis-slugged gateway finds out (reliability.md §7, `device_unknown`), whole
//! stack: the real `edge-agent` binary on its own SQLite file → real mosquitto (mTLS + ACL) →
//! the runner (`edge-cloud run`'s library entry point) → PostgreSQL, which rejects the batches
//! `unknown_device` and answers with the unsigned `device_unknown` → `edge-agent status` (text
//! and `--json`) shows it and the agent's log has a warning naming the reason.
//!
//! Three gateways on one stack: the registered device under a foreign topic slug
//! (`topic_slug_mismatch`), a certificate the broker accepts for a name the registry never saw
//! (`identity_not_registered`), and a registered device configured right, which syncs and
//! shows no notice (so the test can fail). The notice is never acked and never changes
//! publishing: after it, a new row of each mis-configured gateway is still published. (The
//! broker's PUBACK is what a gateway counts as delivery, so `last_ack_at` looks healthy: the
//! notice is how it learns otherwise.) Then the fix docs/deploy.md gives: the right
//! `root_topic`, `edge-agent snapshot`, restart — every row reaches the cloud (without the
//! snapshot the rows published while unknown never do: they were PUBACKed and rejected).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{agent_bin, agent_config_as, Stack, CONTROL_KEY, DEADLINE, DEVICE, SLUG};
use edge_e2e::{wait_for, wait_for_some, TestClient, AUDITOR_USER};
use edge_functions::store::registry::{create_device, Device};
use serde_json::Value;
use uuid::Uuid;

const SCHEMA: &str = "CREATE TABLE readings (id INTEGER PRIMARY KEY NOT NULL, value REAL);
                      INSERT INTO readings VALUES (1, 1.5), (2, 2.5);";

/// `edge-agent run --config CONFIG`, logging to `log` (appended).
fn spawn_agent(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(config)
        .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
        .env("EDGE_AGENT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// One gateway: the agent as a child process on its own source.db and configuration.
struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    root_topic: String,
    app: rusqlite::Connection,
    child: Child,
}

impl Gateway {
    /// Starts `edge-agent run` as `device_name` (its certificate from the stack's CA) under
    /// `root_topic`.
    fn start(stack: &Stack, device_name: &str, root_topic: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let app = rusqlite::Connection::open(d.join("source.db")).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        app.execute_batch(SCHEMA).unwrap();
        app.busy_timeout(Duration::from_secs(5)).unwrap();
        let config = d.join("agent.toml");
        std::fs::write(
            &config,
            agent_config_as(
                d,
                &stack.broker,
                &stack.pki,
                device_name,
                root_topic,
                common::DEFAULT_REPLICATION,
            ),
        )
        .unwrap();
        let child = spawn_agent(&config, &d.join("agent.log"));
        Gateway {
            dir,
            config,
            root_topic: root_topic.to_owned(),
            app,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `edge-agent status [--json]`'s standard output; `None` until state.db exists.
    fn status_output(&self, json: bool) -> Option<String> {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .arg("--config")
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self) -> Option<Value> {
        self.status_output(true)
            .map(|s| serde_json::from_str(&s).unwrap())
    }

    /// Waits until `status --json` shows a `device_unknown` notice; returns its reason.
    async fn wait_device_unknown(&self) -> String {
        wait_for_some(DEADLINE, "status to show device_unknown", || async {
            self.status()
                .and_then(|s| s["device_unknown"]["reason"].as_str().map(str::to_owned))
        })
        .await
    }

    /// The operator's fix as docs/deploy.md "5. First sync" gives it: stop the agent, correct
    /// `root_topic`, `edge-agent snapshot` (what was published while unknown was rejected, yet
    /// PUBACKed), start it again.
    fn fix_root_topic(&mut self, root_topic: &str) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "agent stop: {status}; log:\n{}",
            self.log()
        );
        let text = std::fs::read_to_string(&self.config).unwrap().replace(
            &format!("root_topic = \"{}\"", self.root_topic),
            &format!("root_topic = \"{root_topic}\""),
        );
        std::fs::write(&self.config, text).unwrap();
        self.root_topic = root_topic.to_owned();
        let out = Command::new(agent_bin())
            .args(["snapshot", "--config"])
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.child = spawn_agent(&self.config, &self.dir.path().join("agent.log"));
    }

    /// Panics (with the agent's log) unless the process is still running.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status}); its log:\n{}", self.log());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the auditor (which reads every topic) saw, in order.
struct Seen {
    auditor: TestClient,
    messages: Vec<(String, String)>,
}

impl Seen {
    /// Waits until a message on `topic` whose payload contains `marker` arrives (or arrived).
    async fn wait_for(&mut self, topic: &str, marker: &str) {
        let found = |m: &(String, String)| m.0 == topic && m.1.contains(marker);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !self.messages.iter().any(found) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .auditor
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("nothing with {marker} on {topic}"));
            self.messages
                .push((m.topic, String::from_utf8_lossy(&m.payload).into_owned()));
        }
    }

    fn count(&self, topic: &str) -> usize {
        self.messages.iter().filter(|m| m.0 == topic).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unregistered_and_mis_slugged_gateways_see_device_unknown_in_status() {
    let stack = Stack::start(SCHEMA).await;
    // A second registered device, configured right: the control case.
    let good = Device {
        device_id: Uuid::now_v7(),
        device_name: "gw-good".into(),
        topic_slug: SLUG.into(),
        control_key: CONTROL_KEY.as_bytes().to_vec(),
        ..stack.device.clone()
    };
    assert!(
        create_device(&**stack.deps.pool.get().await.unwrap(), &good)
            .await
            .unwrap()
    );
    let mut auditor = TestClient::connect(
        stack
            .broker
            .mqtt_options(AUDITOR_USER, &stack.pki.auditor()),
    )
    .await
    .unwrap();
    auditor.subscribe("+/+/sync/#").await;
    let mut seen = Seen {
        auditor,
        messages: Vec::new(),
    };

    // The registered `gw-e2e` under another slug than its registration's `acme`.
    let mut mis_slugged = Gateway::start(&stack, DEVICE, &format!("acme-old/{DEVICE}"));
    // A certificate of the right CA for a name nobody registered.
    let mut unregistered = Gateway::start(&stack, "gw-ghost", &format!("{SLUG}/gw-ghost"));
    let mut right = Gateway::start(&stack, "gw-good", &format!("{SLUG}/gw-good"));

    assert_eq!(
        mis_slugged.wait_device_unknown().await,
        "topic_slug_mismatch"
    );
    assert_eq!(
        unregistered.wait_device_unknown().await,
        "identity_not_registered"
    );
    for (gw, reason) in [
        (&mut mis_slugged, "topic_slug_mismatch"),
        (&mut unregistered, "identity_not_registered"),
    ] {
        gw.assert_running();
        // The text status says it in words.
        let text = gw.status_output(false).unwrap();
        assert!(
            text.contains(&format!("does NOT know this device ({reason}")),
            "{text}"
        );
        // A warning naming the reason.
        let log = gw.log();
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("device_unknown") && l.contains(reason)),
            "{log}"
        );
        // The notice went out on the gateway's own control topic, unsigned.
        let control = format!("{}/sync/ingest/control", gw.root_topic);
        seen.wait_for(&control, "device_unknown").await;
        // It never alters publishing: the table is still enrolled and not paused, and a row
        // written after the notice is published like any other.
        let status = gw.status().unwrap();
        let table = &status["tables"][0];
        assert_eq!(table["table"], "readings", "{status}");
        assert_eq!(table["enrolment"], "enrolled", "{status}");
        assert_eq!(table["paused"], false, "{status}");
        gw.app
            .execute("INSERT INTO readings VALUES (77, 77.25)", [])
            .unwrap();
        let batches = format!("{}/sync/rows/batch", gw.root_topic);
        seen.wait_for(&batches, "77.25").await;
        // And it is never acked: the gateway handled it (status shows it) before publishing
        // that row, and no ack came from it.
        let acks = format!("{}/sync/ingest/ack", gw.root_topic);
        assert_eq!(seen.count(&acks), 0, "{:?}", seen.messages);
    }

    // The gateway configured right syncs (its table reaches the cloud) and sees no notice.
    let pg = &stack.pg;
    wait_for(DEADLINE, "gw-good's lineage", || async move {
        pg.query_one(
            "SELECT count(*) FROM edge_table_lineages l JOIN edge_devices d \
             ON d.device_id = l.device_id WHERE d.device_name = 'gw-good'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    right.assert_running();
    let status = right.status().unwrap();
    assert!(status["device_unknown"].is_null(), "{status}");
    // Only the device configured right reached the cloud.
    let lineages: i64 = pg
        .query_one("SELECT count(*) FROM edge_table_lineages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lineages, 1);

    // The fix: the mis-slugged gateway under its registered slug, re-sending its table by a
    // snapshot; every row (also those rejected while it was unknown) reaches the cloud.
    mis_slugged.fix_root_topic(&format!("{SLUG}/{DEVICE}"));
    wait_for(
        DEADLINE,
        "gw-e2e's rows staged after the fix",
        || async move {
            pg.query_one(
            "SELECT count(DISTINCT s.pk_key) FROM edge_staged_rows s JOIN edge_table_lineages l \
             ON l.id = s.lineage_id JOIN edge_devices d ON d.device_id = l.device_id \
             WHERE d.device_name = $1",
            &[&DEVICE],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 3
        },
    )
    .await;
    mis_slugged.assert_running();
    drop((mis_slugged, unregistered, right));
    stack.stop().await;
}
