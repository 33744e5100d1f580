//! A broker restart while the runner is away loses nothing (reliability.md §1; docs/reliability.md
//! "Several runners"): the runner's persistent session keeps its subscriptions on the broker's
//! disk, so a batch a device publishes (and gets PUBACKed) before the runner is back is
//! delivered when it reconnects.
//!
//! With the `$share/…` subscriptions the runner used before, mosquitto 2.0.11 (Debian 12) dropped
//! that batch: it restores a shared subscription only when the client subscribes again. Run this
//! test with `EDGE_TEST_RUNNER_SHARE_GROUP=edge-cloud` to see that (the old behaviour).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edge_e2e::{wait_for, Broker, Pki, TestClient};
use edge_functions::runner::{run, subscriptions, MqttSettings};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn broker_restart_while_the_runner_is_away_loses_no_pubacked_batch() {
    let e = env().await;
    let pki = Pki::generate();
    let mut broker = Broker::start(&pki);
    let service = pki.service();
    let share_group = std::env::var("EDGE_TEST_RUNNER_SHARE_GROUP")
        .ok()
        .filter(|g| !g.is_empty());
    let settings = MqttSettings {
        url: format!("mqtts://{}:{}", broker.host(), broker.port()),
        ca: pki.ca().cert_path().to_path_buf(),
        cert: service.cert_path().to_path_buf(),
        key: service.key_path().to_path_buf(),
        client_id: "edge-service".into(),
        share_group: share_group.clone(),
    };
    let topics = subscriptions(share_group.as_deref()).len();

    // 1. The runner subscribes (persistent session), then stops.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(e.deps.clone(), settings.clone(), async {
        let _ = stopped.await;
    }));
    wait_for(DEADLINE, "the runner's subscriptions", || async {
        broker.subacks_sent_to("edge-service") >= topics
    })
    .await;
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();

    // 2. The broker restarts gracefully: sessions go to its persistence file and come back.
    broker.stop();
    broker.start_again();

    // 3. A device publishes while no runner is connected; the broker PUBACKs it.
    let mut device = TestClient::connect(broker.mqtt_options(DEVICE, &pki.device(DEVICE)))
        .await
        .unwrap();
    let schema = edge_protocol::fingerprint::SchemaColumns::new(
        "after_restart",
        vec![col("id", "INTEGER", 1, 1), col("v", "TEXT", 0, 0)],
    );
    let batch_id = e.id();
    let batch = row_batch(
        batch_id,
        e.id(),
        &schema,
        true,
        &[(1, "insert", json!({"id": 1}), json!({"id": 1, "v": "kept"}))],
    );
    device
        .publish(
            &format!("{SLUG}/{DEVICE}/sync/rows/batch"),
            batch.to_string(),
        )
        .await;

    // 4. The runner comes back: the batch is delivered from its session and recorded.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(e.deps.clone(), settings, async {
        let _ = stopped.await;
    }));
    let recorded = || async {
        e.client
            .query_one(
                "SELECT count(*) FROM edge_export_segments WHERE batch_id = $1",
                &[&batch_id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    };
    wait_for(
        DEADLINE,
        "the batch published after the broker restart (PUBACKed) to be recorded",
        recorded,
    )
    .await;
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
}
