//! The local runner answers a batch from an identity the registry does not know with the
//! unsigned `device_unknown` (reliability.md §7), as the Lambda does: before, `edge-cloud run`
//! had no publisher for what ingest publishes itself, so the notice never left it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edge_e2e::{wait_for, Broker, Pki, TestClient, AUDITOR_USER};
use edge_functions::runner::{run, subscriptions, MqttSettings};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_publishes_device_unknown_to_an_unregistered_identity() {
    let e = env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let service = pki.service();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(
        e.deps.clone(),
        MqttSettings {
            url: format!("mqtts://{}:{}", broker.host(), broker.port()),
            ca: pki.ca().cert_path().to_path_buf(),
            cert: service.cert_path().to_path_buf(),
            key: service.key_path().to_path_buf(),
            client_id: "edge-service".into(),
            share_group: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    wait_for(DEADLINE, "the runner's subscriptions", || async {
        broker.subacks_sent_to("edge-service") >= subscriptions(None).len()
    })
    .await;
    let mut watch = TestClient::connect(broker.mqtt_options(AUDITOR_USER, &pki.auditor()))
        .await
        .unwrap();
    watch.subscribe("+/+/sync/ingest/control").await;

    // A certificate the broker accepts, for a name the registry has never seen.
    let mut ghost = TestClient::connect(broker.mqtt_options("ghost", &pki.device("ghost")))
        .await
        .unwrap();
    ghost.publish("acme/ghost/sync/rows/batch", "{}").await;

    let m = watch
        .recv_within(DEADLINE)
        .await
        .expect("a device_unknown notice from the runner");
    assert_eq!(m.topic, "acme/ghost/sync/ingest/control");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["control_kind"], "device_unknown");
    assert_eq!(v["reason"], "identity_not_registered");
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
}
