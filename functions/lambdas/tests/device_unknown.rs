//! `device_unknown` (reliability.md §7) against real PostgreSQL and the harness' mosquitto: a
//! batch from an identity the registry does not know, or under a topic slug that is not the
//! device's, is rejected `unknown_device` and answered — once per interval, however many
//! batches — with the unsigned `{control_kind:"device_unknown", reason, issued_at}` on that
//! identity's control topic.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edge_cloud_core::ingress::envelope;
use edge_e2e::{Broker, Pki, TestClient, AUDITOR_USER, SERVICE_USER};
use edge_functions::control_publisher::MqttPublisher;
use edge_functions::env::ConfiguredPublisher;
use edge_functions::ingest::{handle, Outcome};
use edge_protocol::validate::RejectionCode;

async fn send(e: &Env, topic: &str, client_id: &str) -> Outcome {
    handle(
        &e.deps,
        envelope(topic, client_id, 1_733_000_000_000, b"{}"),
    )
    .await
    .unwrap()
}

fn assert_unknown(o: &Outcome) {
    match o {
        Outcome::Rejected { code, .. } => assert_eq!(*code, RejectionCode::UnknownDevice),
        other => panic!("expected unknown_device, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_identity_or_foreign_slug_gets_one_throttled_device_unknown() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut e = env().await;
    let (publisher, _task) =
        MqttPublisher::spawn(broker.mqtt_options(SERVICE_USER, &pki.service()));
    e.deps.publisher = ConfiguredPublisher::Mqtt(publisher);
    let mut watch = TestClient::connect(broker.mqtt_options(AUDITOR_USER, &pki.auditor()))
        .await
        .unwrap();
    watch.subscribe("+/+/sync/ingest/control").await;

    // A flood from an identity the registry does not know: every batch rejected, one notice.
    for _ in 0..20 {
        assert_unknown(&send(&e, "acme/ghost/sync/rows/batch", "ghost").await);
    }
    // The registered gw-07 publishing under another tenant's slug.
    assert_unknown(&send(&e, &format!("other/{DEVICE}/sync/rows/batch"), DEVICE).await);
    // Its own slug still works as before (not rejected as unknown).
    if let Outcome::Rejected { code, .. } =
        send(&e, &format!("{SLUG}/{DEVICE}/sync/rows/batch"), DEVICE).await
    {
        assert_ne!(code, RejectionCode::UnknownDevice);
    }

    let mut notices = Vec::new();
    while notices.len() < 2 {
        let m = watch
            .recv_within(Duration::from_secs(20))
            .await
            .expect("a device_unknown notice");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        notices.push((m.topic, v));
    }
    // The publisher's connection is FIFO: the second notice came after every ghost batch.
    assert_eq!(notices[0].0, "acme/ghost/sync/ingest/control");
    assert_eq!(notices[0].1["control_kind"], "device_unknown");
    assert_eq!(notices[0].1["reason"], "identity_not_registered");
    assert!(notices[0].1["issued_at"].is_string());
    assert!(notices[0].1.get("signature").is_none());
    assert_eq!(notices[1].0, format!("other/{DEVICE}/sync/ingest/control"));
    assert_eq!(notices[1].1["reason"], "topic_slug_mismatch");
    // Nothing else: a marker notice to a fresh identity arrives next, not a second ghost one.
    assert_unknown(&send(&e, "acme/ghost-2/sync/rows/batch", "ghost-2").await);
    let m = watch
        .recv_within(Duration::from_secs(20))
        .await
        .expect("the marker notice");
    assert_eq!(m.topic, "acme/ghost-2/sync/ingest/control");
}
