//! Tests of the harness itself: the broker enforces mTLS and the protocol §1 ACL, and the
//! ephemeral PostgreSQL gives each test an isolated database.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use edge_e2e::{
    wait_for, Broker, CertificateAuthority, HarnessError, Pki, TestClient, TestDatabase,
    SERVICE_USER,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// A broker plus a connected service client subscribed to everything devices send.
async fn broker_with_service() -> (Pki, Broker, TestClient) {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut service = TestClient::connect(broker.mqtt_options("service", &pki.service()))
        .await
        .unwrap();
    service.subscribe("+/+/sync/#").await;
    (pki, broker, service)
}

async fn device(broker: &Broker, pki: &Pki, name: &str) -> TestClient {
    TestClient::connect(broker.mqtt_options(name, &pki.device(name)))
        .await
        .unwrap()
}

#[tokio::test]
async fn device_publishes_to_its_own_topics_and_the_service_receives_them() {
    let (pki, broker, mut service) = broker_with_service().await;
    let mut gw1 = device(&broker, &pki, "gw-1").await;

    for topic in [
        "acme/gw-1/sync/rows/batch",
        "acme/gw-1/sync/telemetry/batch",
        "acme/gw-1/sync/schema/observe",
        "acme/gw-1/sync/ingest/ack",
        "acme/gw-1/sync/ingest/request",
        // Slugless root: `+` matches the empty first level.
        "/gw-1/sync/rows/batch",
    ] {
        gw1.publish(topic, format!("hello {topic}")).await;
        let message = service.expect_message(DEADLINE, topic).await;
        assert_eq!(message.topic, topic);
        assert_eq!(message.text(), format!("hello {topic}"));
    }
}

#[tokio::test]
async fn service_receives_through_a_shared_subscription() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut service = TestClient::connect(broker.mqtt_options("service-1", &pki.service()))
        .await
        .unwrap();
    service.subscribe("$share/ingest/+/+/sync/#").await;
    let mut gw1 = device(&broker, &pki, "gw-1").await;

    gw1.publish("acme/gw-1/sync/rows/batch", "shared").await;

    let message = service
        .expect_message(DEADLINE, "the shared delivery")
        .await;
    assert_eq!(message.topic, "acme/gw-1/sync/rows/batch");
    assert_eq!(message.text(), "shared");
}

fn assert_refused(result: Result<TestClient, HarnessError>, case: &str) {
    match result {
        Ok(client) => panic!("{case}: client {} was accepted", client.id()),
        Err(error) => {
            let text = error.to_string();
            // The TLS layer, not a timeout, must be what refused it.
            assert!(
                !matches!(error, HarnessError::Timeout { .. }),
                "{case}: {text}"
            );
            let lower = text.to_lowercase();
            assert!(
                ["tls", "alert", "certificate", "i/o", "io:"]
                    .iter()
                    .any(|needle| lower.contains(needle)),
                "{case}: unexpected error {text}"
            );
            eprintln!("{case}: refused as expected: {text}");
        }
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let result = tokio::time::timeout(
        DEADLINE,
        TestClient::connect(broker.mqtt_options_without_cert("anonymous")),
    )
    .await
    .expect("the broker answers a certificate-less client within the deadline");
    assert_refused(result, "no client certificate");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let rogue_ca = CertificateAuthority::new("rogue CA").unwrap();
    let impostor = rogue_ca.issue_client("gw-1").unwrap();
    let result = tokio::time::timeout(
        DEADLINE,
        TestClient::connect(broker.mqtt_options("gw-1", &impostor)),
    )
    .await
    .expect("the broker answers a foreign certificate within the deadline");
    assert_refused(result, "certificate from another CA");
}

#[tokio::test]
async fn a_device_cannot_publish_on_another_devices_topics_or_any_control_topic() {
    let (pki, broker, mut service) = broker_with_service().await;
    // The auditor reads `#`, so "not delivered" means "reached no one", not just "not the
    // service" (whose `+/+/sync/#` would not match some of the topics below anyway).
    let mut auditor = TestClient::connect(broker.mqtt_options("auditor", &pki.auditor()))
        .await
        .unwrap();
    auditor.subscribe("#").await;
    let mut gw_a = device(&broker, &pki, "gw-a").await;
    let _gw_b = device(&broker, &pki, "gw-b").await;

    let forbidden = [
        "acme/gw-b/sync/rows/batch",
        "/gw-b/sync/telemetry/batch",
        "acme/gw-a/sync/ingest/control",
        "acme/gw-b/sync/ingest/control",
        "/gw-a/sync/ingest/control",
        // Deeper or shallower paths that merely contain the device name.
        "acme/x/gw-a/sync/rows/batch",
        "gw-a/sync/rows/batch",
        "acme/gw-a/sync/rows/batch/extra",
        "acme/gw-a/other",
    ];
    for topic in forbidden {
        // mosquitto drops a denied MQTT 3.1.1 publish. 2.0.11 with `max_queued_messages 0`
        // (reliability.md §1) then fails to send its PUBACK and closes the connection ("Bad
        // socket read/write"): denied either way. Each publish gets its own connection, and the
        // broker has handled it (acked or closed) before the next one connects.
        let _ = gw_a.try_publish(topic, "forbidden").await;
        gw_a = device(&broker, &pki, "gw-a").await;
    }
    // Messages from one publisher reach a subscriber in order: once the marker, sent after all
    // the forbidden ones, has arrived, any forbidden message that got through would have too.
    let marker_topic = "acme/gw-a/sync/rows/batch";
    gw_a.publish(marker_topic, "marker").await;
    for observer in [&mut service, &mut auditor] {
        let (marker, before) = observer.messages_until(marker_topic, DEADLINE).await;
        assert_eq!(marker.text(), "marker");
        assert!(
            before.is_empty(),
            "{} received forbidden messages: {before:?}",
            observer.id()
        );
    }
    // And the broker says why: each one was denied by the ACL (mosquitto 2.0 debug log).
    let denied = broker.log().matches("Denied PUBLISH from gw-a").count();
    assert_eq!(denied, forbidden.len(), "broker log:\n{}", broker.log());
}

#[tokio::test]
async fn controls_reach_only_the_addressed_device() {
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let mut service = TestClient::connect(broker.mqtt_options("service", &pki.service()))
        .await
        .unwrap();
    let mut gw_a = device(&broker, &pki, "gw-a").await;
    let mut gw_b = device(&broker, &pki, "gw-b").await;
    gw_a.subscribe("acme/gw-a/sync/ingest/control").await;
    gw_a.subscribe("/gw-a/sync/ingest/control").await;
    // gw-b tries to listen to every control topic; the broker filters per message.
    let _ = gw_b.try_subscribe("+/+/sync/ingest/control").await.unwrap();
    gw_b.subscribe("acme/gw-b/sync/ingest/control").await;

    service
        .publish("acme/gw-a/sync/ingest/control", "pause")
        .await;
    let control = gw_a.expect_message(DEADLINE, "the control for gw-a").await;
    assert_eq!(
        (control.topic.as_str(), control.text().as_str()),
        ("acme/gw-a/sync/ingest/control", "pause")
    );
    service
        .publish("/gw-a/sync/ingest/control", "slugless")
        .await;
    let control = gw_a.expect_message(DEADLINE, "the slugless control").await;
    assert_eq!(control.text(), "slugless");

    // Marker for gw-b, sent after gw-a's controls by the same publisher.
    service
        .publish("acme/gw-b/sync/ingest/control", "marker")
        .await;
    let (marker, before) = gw_b
        .messages_until("acme/gw-b/sync/ingest/control", DEADLINE)
        .await;
    assert_eq!(marker.text(), "marker");
    assert!(
        before.is_empty(),
        "gw-b received gw-a's controls: {before:?}"
    );
}

#[tokio::test]
async fn a_device_receives_nothing_but_its_own_controls() {
    let (pki, broker, _service) = broker_with_service().await;
    let mut gw_a = device(&broker, &pki, "gw-a").await;
    let mut gw_b = device(&broker, &pki, "gw-b").await;
    // mosquitto 2.0 grants any SUBSCRIBE and applies the read ACL to each message instead.
    let _ = gw_b.try_subscribe("#").await.unwrap();
    gw_b.subscribe("acme/gw-b/sync/ingest/control").await;
    gw_a.publish("acme/gw-a/sync/rows/batch", "private").await;

    let mut service = TestClient::connect(broker.mqtt_options("service-2", &pki.service()))
        .await
        .unwrap();
    service
        .publish("acme/gw-b/sync/ingest/control", "marker")
        .await;
    // Different publishers: a delivered `private` could in principle arrive after the marker,
    // but gw-a's publish was acknowledged (and so routed) before the marker was sent.
    let (_, before) = gw_b
        .messages_until("acme/gw-b/sync/ingest/control", DEADLINE)
        .await;
    assert!(before.is_empty(), "gw-b received: {before:?}");
}

#[tokio::test]
async fn the_broker_restarts_on_the_same_port_and_keeps_persistent_sessions() {
    let pki = Pki::generate();
    let mut broker = Broker::start(&pki);
    let port = broker.port();
    let mut options = broker.mqtt_options("gw-1", &pki.device("gw-1"));
    options.set_clean_session(false);
    let mut gw1 = TestClient::connect(options.clone()).await.unwrap();
    gw1.subscribe("acme/gw-1/sync/ingest/control").await;
    gw1.disconnect().await;

    broker.restart();
    assert_eq!(broker.port(), port);

    // Queued for the offline persistent session across the restart.
    let mut service = TestClient::connect(broker.mqtt_options("service", &pki.service()))
        .await
        .unwrap();
    service
        .publish("acme/gw-1/sync/ingest/control", "queued")
        .await;
    let mut gw1 = TestClient::connect(options).await.unwrap();
    let control = gw1.expect_message(DEADLINE, "the queued control").await;
    assert_eq!(control.text(), "queued");

    broker.kill();
    assert!(!broker.is_running());
    broker.start_again();
    TestClient::connect(broker.mqtt_options("gw-2", &pki.device("gw-2")))
        .await
        .unwrap();
}

#[tokio::test]
async fn sql_round_trip_on_a_fresh_database() {
    let db = TestDatabase::create();
    assert!(db.url().contains(&format!("dbname={}", db.name())));
    assert!(db.postgres_url().starts_with("postgres://"));
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO t VALUES ($1, $2)", &[&1i32, &"one"])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT name FROM t WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "one");

    // Both string forms connect to the same database.
    for url in [db.url(), db.postgres_url()] {
        let other = edge_cloud_store::connect::connect(&url).await.unwrap();
        let row = other
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "{url}");
    }
}

#[tokio::test]
async fn test_databases_are_isolated() {
    let (first, second) = (TestDatabase::create_async().await, TestDatabase::create());
    assert_ne!(first.name(), second.name());
    let a = first.connect().await;
    let b = second.connect().await;
    a.batch_execute("CREATE TABLE only_in_first (id int)")
        .await
        .unwrap();
    let in_second: i64 = b
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_first'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_second, 0);
    let current: String = b
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, second.name());
}

#[test]
fn test_databases_work_from_sync_tests() {
    let db = TestDatabase::create();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = db.connect().await;
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
}

#[tokio::test]
async fn wait_for_polls_an_async_condition() {
    let db = TestDatabase::create();
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE q (id int)")
        .await
        .unwrap();
    let writer = db.connect().await;
    tokio::spawn(async move {
        for id in 0..3 {
            writer
                .execute("INSERT INTO q VALUES ($1)", &[&id])
                .await
                .unwrap();
        }
    });
    wait_for(DEADLINE, "three rows in q", || async {
        let row = client
            .query_one("SELECT count(*) FROM q", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0) == 3
    })
    .await;
}

#[test]
fn the_service_identity_is_named_as_in_the_acl() {
    assert_eq!(SERVICE_USER, "edge-service");
    assert!(edge_e2e::mosquitto::acl_file_contents().contains("user edge-service"));
}
