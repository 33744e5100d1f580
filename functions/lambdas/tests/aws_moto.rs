//! The AWS adapters (`edge_functions::aws`) against moto in server mode — the only stand-in for
//! AWS (`edge_e2e::Moto`); the database is the harness's real PostgreSQL. Every client is built
//! by `aws::config::loader()`, the Lambdas' own configuration path (rustls + ring HTTP
//! client), with moto's URL as the endpoint.
//!
//! Covered: S3 presigned PUT (signed `content-length`) → HTTP PUT → GetObject streamed back;
//! a missing object; the whole spill flow (grant → PUT → finalize → mirror rows, and
//! `spill_object_missing`) with S3 as the object store; the replay-queue message after an API approval; the sweep publishing a
//! control over the IoT data plane and forwarding governance events to EventBridge (a rule with
//! an SQS target observes what arrives); every event type through the documented rule; the
//! database secret in every shape (Secrets Manager, SSM SecureString) connecting to
//! PostgreSQL; access denied (moto's IAM enforcement) and not-found outcomes.
//!
//! Throttling: moto cannot throttle. The two throttling tests therefore use a canned-response
//! endpoint — a local TCP listener that answers every request with one fixed AWS error
//! response (S3 `503 SlowDown`, EventBridge `ThrottlingException`, and PutEvents' 200 with a
//! throttled entry). It is a fake of AWS for that one error only, allowed as an AWS stand-in
//! because moto has no such feature; everything else goes to moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_config::{Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use base64::Engine as _;
use common::*;
use edge_e2e::moto::{ACCESS_KEY, ACCOUNT, REGION, SECRET_KEY};
use edge_e2e::{wait_for_some, Moto, TestDatabase};
use edge_functions::api::auth::{mint, AuthConfig, Claims, MANAGE_DEVICES};
use edge_functions::api::{handle, Api};
use edge_functions::aws::config;
use edge_functions::aws::db::{lambda_pool, ThawGuard};
use edge_functions::aws::eventbridge::{EventBridgeForwarder, DEFAULT_SOURCE, EVENT_TYPES};
use edge_functions::aws::iot::IotDataPublisher;
use edge_functions::aws::replay_queue::SqsReplayQueue;
use edge_functions::aws::s3::S3Objects;
use edge_functions::aws::secrets::{database_url_from_secret_with, fetch, DatabaseDefaults};
use edge_functions::aws::ServiceOutcome;
use edge_functions::control_publisher::{ControlPublisher, PublishError};
use edge_functions::env::MetricsSettings;
use edge_functions::events::EventForwarder;
use edge_functions::lambda;
use edge_functions::objects::{ObjectError, ObjectStore};
use edge_functions::replay_trigger::ReplayTrigger;
use edge_functions::store::controls::issue_lineage_control;
use edge_functions::store::forwarding::ForwardEvent;
use edge_functions::Deps;
use edge_protocol::control::ControlKind;
use lambda_http::http::{Method, StatusCode};
use lambda_http::Body;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

/// The rule docs/deploy.md §5 tells operators to create: every governance event by name.
fn documented_rule_pattern() -> String {
    json!({"source": [DEFAULT_SOURCE], "detail-type": EVENT_TYPES}).to_string()
}

/// An SDK configuration for `endpoint` through the Lambdas' own loader.
async fn sdk_at(endpoint: &str, key: &str, secret: &str) -> SdkConfig {
    config::loader()
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .load()
        .await
}

async fn sdk(moto: &Moto) -> SdkConfig {
    sdk_at(&moto.url(), ACCESS_KEY, SECRET_KEY).await
}

/// S3 on a local endpoint needs path-style URLs (`bucket.127.0.0.1` does not resolve).
fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn bucket(sdk: &SdkConfig, name: &str) -> aws_sdk_s3::Client {
    let s3 = s3_client(sdk);
    s3.create_bucket()
        .bucket(name)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    s3
}

/// An HTTP PUT of `body` to a presigned URL, as the agent sends it; the status code.
async fn http_put(url: &str, body: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").expect("a local http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

async fn queue(sdk: &SdkConfig, name: &str) -> (aws_sdk_sqs::Client, String, String) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
    (sqs, url, arn)
}

/// Waits until `n` messages arrived on `url`; their bodies.
async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, n: usize) -> Vec<Value> {
    let got = tokio::sync::Mutex::new(Vec::new());
    wait_for_some(Duration::from_secs(20), "messages on the queue", || async {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let mut got = got.lock().await;
        for m in out.messages() {
            got.push(serde_json::from_str::<Value>(m.body().unwrap()).unwrap());
        }
        (got.len() >= n).then(|| got.clone())
    })
    .await
}

/// A bus with the documented rule and an SQS queue as its target: what reaches the queue is
/// what a subscriber of the rule receives.
async fn observed_bus(sdk: &SdkConfig, bus: &str) -> (aws_sdk_sqs::Client, String) {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    events.create_event_bus().name(bus).send().await.unwrap();
    let (sqs, url, arn) = queue(sdk, "governance-events").await;
    events
        .put_rule()
        .name("edge-governance")
        .event_bus_name(bus)
        .event_pattern(documented_rule_pattern())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("edge-governance")
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    (sqs, url)
}

#[tokio::test]
async fn s3_presigned_put_then_get_object_round_trip() {
    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let store = S3Objects::from_client(bucket(&sdk, "spill-bucket").await, "spill-bucket");
    let key = edge_cloud_core::spill::object_key(Uuid::now_v7(), Uuid::now_v7());
    // Larger than one read chunk, so the body really streams through the channel.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let len = u64::try_from(body.len()).unwrap();
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(900);

    let url = store.presign_put(&key, expires, Some(len)).await.unwrap();
    assert!(
        url.starts_with(&format!("{}/spill-bucket/spill/", moto.url())),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-SignedHeaders=content-length%3Bhost"),
        "the length is signed: {url}"
    );
    assert_eq!(http_put(&url, &body).await, 200);

    let reader = store.open(&key).await.unwrap().expect("the object");
    assert_eq!(reader.size, Some(len));
    let mut body_reader = reader.body;
    let read = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        body_reader.read_to_end(&mut v).map(|_| v)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read, body, "GetObject streams back what was PUT");

    // No object under the key: `None`, which the finalize records as spill_object_missing.
    let missing = edge_cloud_core::spill::object_key(Uuid::now_v7(), Uuid::now_v7());
    assert!(store.open(&missing).await.unwrap().is_none());
}

const SECRET: &[u8] = b"moto-test-secret";

fn bearer(org: Uuid, project: Uuid) -> String {
    let claims = Claims {
        sub: "operator@test".into(),
        org_id: org,
        projects: vec![project],
        permissions: vec![MANAGE_DEVICES.into()],
        exp: 4_000_000_000,
        iat: 0,
    };
    format!("Bearer {}", mint(SECRET, &claims).unwrap())
}

async fn api_call(api: &Api, e: &Env, method: Method, rel: &str, body: Option<Value>) -> Value {
    let mut b = lambda_http::http::Request::builder()
        .method(method)
        .uri(format!(
            "/core/api/v1/projects/{}{rel}",
            e.device.project_id
        ))
        .header(
            "Authorization",
            bearer(e.device.org_id, e.device.project_id),
        )
        .header("ORG-ID", e.device.org_id.to_string());
    if body.is_some() {
        b = b.header("Idempotency-Key", Uuid::now_v7().to_string());
    }
    let req = b
        .body(
            body.map(|v| Body::Text(v.to_string()))
                .unwrap_or(Body::Empty),
        )
        .unwrap();
    let resp = handle(api, req).await;
    let status = resp.status();
    let v: Value = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    assert_eq!(status, StatusCode::OK, "{rel}: {v}");
    v
}

#[tokio::test]
async fn an_approval_through_the_api_sends_the_replay_queue_message() {
    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let (sqs, url, _) = queue(&sdk, "edge-replay").await;
    let e = env().await;
    let api = Api::new(e.deps.pool.clone(), AuthConfig::hs256(SECRET.to_vec()))
        .with_replay_trigger(ReplayTrigger::Sqs(SqsReplayQueue::new(&sdk, &url)));

    let batch = row_batch(
        e.id(),
        e.id(),
        &device_state(),
        true,
        &[ins(1, 1, "heat", 20.5), ins(2, 2, "cool", 18.0)],
    );
    e.rows(&batch).await;
    let lineage = e.lineage_id("device_state").await;
    let v = api_call(
        &api,
        &e,
        Method::GET,
        &format!("/edge/schema-reviews?lineage_id={lineage}"),
        None,
    )
    .await;
    let review = v["data"][0]["id"].as_str().unwrap().to_owned();
    let v = api_call(
        &api,
        &e,
        Method::POST,
        &format!("/edge/schema-reviews/{review}/claim"),
        Some(json!({})),
    )
    .await;
    let version = v["data"]["action_version"].as_i64().unwrap();
    let v = api_call(
        &api,
        &e,
        Method::POST,
        &format!("/edge/schema-reviews/{review}/approve"),
        Some(json!({"action_version": version, "column_actions": [
            {"source_column_name": "id", "action": "mirror"},
            {"source_column_name": "mode", "action": "mirror"},
            {"source_column_name": "setpoint", "action": "mirror"},
        ]})),
    )
    .await;
    assert_eq!(v["data"]["status"], "approved", "{v}");

    let messages = receive(&sqs, &url, 1).await;
    assert_eq!(messages.len(), 1, "one nudge per approval: {messages:?}");
    assert!(
        !messages[0]["reason"].as_str().unwrap().is_empty(),
        "{messages:?}"
    );
    assert!(messages[0]["sent_at"].as_str().unwrap().ends_with('Z'));
}

const INGEST: &str = include_str!("../events/ingest-sqs.json");
const SCHEDULE: &str = include_str!("../events/schedule.json");
const ORG: &str = "0193a000-0000-7000-8000-0000000000a1";
const PROJECT: &str = "0193a000-0000-7000-8000-0000000000b1";

#[tokio::test]
async fn the_sweep_publishes_controls_over_iot_data_and_forwards_events_to_eventbridge() {
    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let (sqs, events_url) = observed_bus(&sdk, "edge-governance").await;

    // The database as the Lambda fixtures expect it (docs/deploy.md "Local invocation").
    let db = TestDatabase::create_async().await;
    let pool = lambda_pool(&db.url(), 4).unwrap();
    edge_functions::store::migrate::migrate(&mut pool.get().await.unwrap())
        .await
        .unwrap();
    let device = edge_functions::store::registry::Device {
        device_id: Uuid::now_v7(),
        device_name: "gw-07".into(),
        org_id: Uuid::parse_str(ORG).unwrap(),
        project_id: Uuid::parse_str(PROJECT).unwrap(),
        fleet_id: Uuid::now_v7(),
        topic_slug: "acme".into(),
        control_key: b"fixture-control-key".to_vec(),
    };
    assert!(
        edge_functions::store::registry::create_device(&**pool.get().await.unwrap(), &device)
            .await
            .unwrap()
    );
    let deps = Deps::new(pool);
    let thaw = ThawGuard::default();
    let resp = lambda::ingest(&deps, &thaw, serde_json::from_str(INGEST).unwrap()).await;
    assert!(resp.batch_item_failures.is_empty());
    let lineage: Uuid = {
        let c = deps.pool.get().await.unwrap();
        c.query_one("SELECT id FROM edge_table_lineages", &[])
            .await
            .unwrap()
            .get(0)
    };
    issue_lineage_control(
        &**deps.pool.get().await.unwrap(),
        &device,
        lineage,
        "device_state",
        ControlKind::PauseLineage,
        103,
        Some("fixture"),
        OffsetDateTime::now_utc(),
        Uuid::now_v7(),
    )
    .await
    .unwrap();

    let publisher = IotDataPublisher::new(&sdk, &moto.url());
    let forwarder = EventBridgeForwarder::new(&sdk, "edge-governance", DEFAULT_SOURCE);
    let report = lambda::sweep(
        &deps,
        &thaw,
        &publisher,
        &forwarder,
        &ReplayTrigger::Polling,
        &MetricsSettings::lambda_from_env().unwrap(),
        &serde_json::from_str(SCHEDULE).unwrap(),
    )
    .await;
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["published"], 1, "{report}");
    assert_eq!(report["forwarded"], 1, "{report}");

    // moto's data plane answered the Publish; its recorder shows what it received.
    let publishes: Vec<Value> = moto
        .recorded_requests()
        .unwrap()
        .into_iter()
        .filter(|r| r["url"].as_str().unwrap_or("").contains("/topics/"))
        .collect();
    assert_eq!(publishes.len(), 1, "{publishes:?}");
    let url = publishes[0]["url"].as_str().unwrap();
    // (The recorder writes the URL decoded: the SDK sent the topic as one escaped segment.)
    assert!(
        url.ends_with("/topics/acme/gw-07/sync/ingest/control?qos=1"),
        "{url}"
    );
    let body = base64::engine::general_purpose::STANDARD
        .decode(publishes[0]["body"].as_str().unwrap())
        .unwrap();
    let control: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(control["source_table"], "device_state", "{control}");

    // The queued review reached the bus and matched the documented rule.
    let got = receive(&sqs, &events_url, 1).await;
    assert_eq!(got[0]["source"], DEFAULT_SOURCE);
    assert_eq!(
        got[0]["detail-type"],
        "integration.edge_schema_review.queued.v1"
    );
    assert_eq!(got[0]["detail"]["org_id"], ORG);
    assert!(got[0]["detail"]["id"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn every_event_type_reaches_the_documented_rule() {
    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let (sqs, url) = observed_bus(&sdk, "edge-governance").await;
    let events: Vec<ForwardEvent> = EVENT_TYPES
        .iter()
        .zip(1..)
        .map(|(t, id)| ForwardEvent {
            id,
            event_type: (*t).to_owned(),
            org_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            subject_id: Some(Uuid::now_v7()),
            payload: json!({"n": id}),
            created_at: "2026-12-03T18:00:00Z".into(),
        })
        .collect();
    EventBridgeForwarder::new(&sdk, "edge-governance", DEFAULT_SOURCE)
        .forward(&events)
        .await
        .unwrap();
    let got = receive(&sqs, &url, EVENT_TYPES.len()).await;
    let types: BTreeSet<&str> = got
        .iter()
        .map(|m| m["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(types, EVENT_TYPES.iter().copied().collect::<BTreeSet<_>>());
    // The detail is the event: `detail.id` is the de-duplication key of deploy.md §5.
    let ids: BTreeSet<i64> = got
        .iter()
        .map(|m| m["detail"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), EVENT_TYPES.len());
}

/// The harness database's connection parts, for the JSON secret shapes.
fn parts(db: &TestDatabase) -> (String, u16, String, String) {
    let cfg = db.config();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the harness listens on TCP: {other:?}"),
    };
    let user = cfg.get_user().unwrap().to_owned();
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .unwrap_or_else(|| "unused-by-trust-auth".into());
    (host, db.port(), user, password)
}

/// Reads the secret as a Lambda does and connects with what it says.
async fn connects(sdk: &SdkConfig, arn: &str, defaults: &DatabaseDefaults, db: &TestDatabase) {
    let value = fetch(sdk, arn).await.unwrap();
    let url = database_url_from_secret_with(&value, defaults).unwrap();
    // The Lambdas verify the database certificate (verify-full) against EDGE_DB_SSLROOTCERT
    // when the URL names no CA, as a deployment's template sets it: here the harness CA. (Every
    // test of this binary that connects uses the same harness, so the process-wide variable
    // cannot point one at a wrong CA.) A plaintext harness (EDGE_TEST_PG_TLS=0) is told so.
    let url = match db.sslrootcert() {
        Some(ca) => {
            std::env::set_var(edge_functions::aws::db::SSLROOTCERT_ENV, ca);
            url.expose().to_owned()
        }
        None if url.expose().contains("sslmode=") => url.expose().to_owned(),
        None if url.expose().contains('?') => format!("{}&sslmode=disable", url.expose()),
        None => format!("{}?sslmode=disable", url.expose()),
    };
    let pool = lambda_pool(&url, 1).unwrap();
    let c = pool.get().await.unwrap_or_else(|e| panic!("{arn}: {e}"));
    let name: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, db.name(), "{arn}");
}

#[tokio::test]
async fn the_database_secret_in_every_shape_connects_to_postgres() {
    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let db = TestDatabase::create_async().await;
    let (host, port, user, password) = parts(&db);
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = |name: &'static str, value: String| {
        let sm = sm.clone();
        async move {
            sm.create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
                .unwrap()
                .arn
                .unwrap()
        }
    };
    let none = DatabaseDefaults::default();

    let plain = secret("edge/db-url", db.postgres_url()).await;
    connects(&sdk, &plain, &none, &db).await;
    let url_json = secret("edge/db-json", json!({"url": db.url()}).to_string()).await;
    connects(&sdk, &url_json, &none, &db).await;
    let rds = json!({"engine": "postgres", "username": user, "password": password,
        "host": host, "port": port, "dbname": db.name()});
    let rds = secret("edge/db-rds", rds.to_string()).await;
    connects(&sdk, &rds, &none, &db).await;

    // RDS's managed master secret (ManageMasterUserPassword) holds the credentials only: it
    // names no host, so the Lambda needs EDGE_DATABASE_HOST (+ _PORT, _NAME) to complete it.
    let managed = json!({"username": user, "password": password}).to_string();
    let managed = secret("rds!db-0123", managed).await;
    let value = fetch(&sdk, &managed).await.unwrap();
    let err = database_url_from_secret_with(&value, &none).unwrap_err();
    assert!(err.to_string().contains("EDGE_DATABASE_HOST"), "{err}");
    let defaults = DatabaseDefaults {
        host: Some(host.clone()),
        port: Some(port.to_string()),
        dbname: Some(db.name().to_owned()),
    };
    connects(&sdk, &managed, &defaults, &db).await;

    // An SSM SecureString parameter, addressed by its ARN.
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name("/edge/db-url")
        .value(db.postgres_url())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let ssm = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/edge/db-url");
    connects(&sdk, &ssm, &none, &db).await;

    // Secrets that do not exist: named not_found, whichever service.
    let missing = format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:edge/none-AbCdEf");
    let e = fetch(&sdk, &missing).await.unwrap_err();
    assert_eq!(e.outcome(), Some(ServiceOutcome::NotFound), "{e}");
    let e = fetch(
        &sdk,
        &format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/edge/none"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.outcome(), Some(ServiceOutcome::NotFound), "{e}");
    assert!(
        e.to_string().starts_with("ssm:GetParameter: not_found"),
        "{e}"
    );
}

#[tokio::test]
async fn access_denied_is_a_named_outcome_of_every_adapter() {
    let moto = Moto::start();
    let admin = sdk(&moto).await;
    let s3 = bucket(&admin, "spill-bucket").await;
    s3.put_object()
        .bucket("spill-bucket")
        .key("spill/a/b.jsonl.zst")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let (_, queue_url, _) = queue(&admin, "edge-replay").await;
    let secret_arn = aws_sdk_secretsmanager::Client::new(&admin)
        .create_secret()
        .name("edge/db")
        .secret_string("postgres://x")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    // A user without a single policy, as a Lambda role missing a statement would be.
    let (key_id, key_secret) = moto.create_user_without_policies("no-policy").unwrap();
    moto.enforce_iam().unwrap();
    let denied = sdk_at(&moto.url(), &key_id, &key_secret).await;

    let store = S3Objects::from_client(s3_client(&denied), "spill-bucket");
    match store.open("spill/a/b.jsonl.zst").await {
        Err(ObjectError::Unavailable(m)) => {
            assert!(
                m.starts_with("s3:GetObject: access_denied (AccessDenied"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // moto answers the JSON-protocol services' denials (SQS, Secrets Manager, EventBridge, IoT
    // data) with an XML error body the SDK cannot parse, so there the outcome comes from the
    // HTTP 403 alone (`access_denied (HTTP 403)`); S3 has its code. moto's IoT data plane may
    // refuse on the signature rather than on policy: either way the caller is not allowed.
    let e = SqsReplayQueue::new(&denied, &queue_url)
        .send("test")
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Some(ServiceOutcome::AccessDenied), "{e}");
    let e = fetch(&denied, &secret_arn).await.unwrap_err();
    assert_eq!(e.outcome(), Some(ServiceOutcome::AccessDenied), "{e}");
    let event = ForwardEvent {
        id: 1,
        event_type: EVENT_TYPES[0].into(),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        subject_id: None,
        payload: json!({}),
        created_at: "2026-12-03T18:00:00Z".into(),
    };
    let e = EventBridgeForwarder::new(&denied, "default", DEFAULT_SOURCE)
        .forward(&[event])
        .await
        .unwrap_err();
    assert!(
        e.0.starts_with("events:PutEvents: access_denied"),
        "{}",
        e.0
    );
    match IotDataPublisher::new(&denied, &moto.url())
        .publish("acme/gw-07/sync/ingest/control", b"{}".to_vec())
        .await
    {
        Err(PublishError::Aws(m)) => {
            assert!(m.starts_with("iot:Publish: access_denied"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// A canned-response endpoint (see the module docs: moto cannot throttle): answers every
/// request with `response` and counts the requests.
async fn canned(response: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                // Read the head and the body the request declares, then answer and close.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, count)
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         x-amzn-RequestId: canned\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn s3_slow_down_is_retried_then_named_throttled() {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    let (url, count) = canned(http_response("503 Slow Down", "application/xml", body)).await;
    let sdk = sdk_at(&url, ACCESS_KEY, SECRET_KEY).await;
    let store = S3Objects::from_client(s3_client(&sdk), "spill-bucket");
    match store.open("spill/a/b.jsonl.zst").await {
        Err(e @ ObjectError::Unavailable(_)) => {
            // Retryable: the finalize answers spill_store_unavailable and the device re-sends.
            assert!(e.is_retryable());
            assert!(
                e.to_string()
                    .contains("s3:GetObject: throttled (SlowDown, HTTP 503)"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The SDK's standard retry policy tried three times before giving up.
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn eventbridge_throttling_keeps_the_batch_for_the_next_sweep() {
    let event = ForwardEvent {
        id: 41,
        event_type: EVENT_TYPES[4].into(),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        subject_id: None,
        payload: json!({}),
        created_at: "2026-12-03T18:00:00Z".into(),
    };
    // The whole call throttled (HTTP 400 ThrottlingException): retried by the SDK, then named.
    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
    let (url, count) = canned(http_response(
        "400 Bad Request",
        "application/x-amz-json-1.1",
        body,
    ))
    .await;
    let sdk = sdk_at(&url, ACCESS_KEY, SECRET_KEY).await;
    let e = EventBridgeForwarder::new(&sdk, "default", DEFAULT_SOURCE)
        .forward(std::slice::from_ref(&event))
        .await
        .unwrap_err();
    assert!(
        e.0.starts_with("events:PutEvents: throttled (ThrottlingException, HTTP 400)"),
        "{}",
        e.0
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // One entry throttled inside a 200 answer: the batch fails, so the cursor stays.
    let body = r#"{"FailedEntryCount":1,"Entries":[{"ErrorCode":"ThrottlingException","ErrorMessage":"Rate exceeded"}]}"#;
    let (url, _) = canned(http_response("200 OK", "application/x-amz-json-1.1", body)).await;
    let sdk = sdk_at(&url, ACCESS_KEY, SECRET_KEY).await;
    let e = EventBridgeForwarder::new(&sdk, "default", DEFAULT_SOURCE)
        .forward(&[event])
        .await
        .unwrap_err();
    assert_eq!(
        e.0,
        "events:PutEvents: 1 of 1 entries failed (event 41: ThrottlingException Rate exceeded)"
    );
}

/// zstd JSON Lines, as the agent builds a spill object.
fn spill_object(rows: &[Change]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    for (seq, op, pk, row) in rows {
        let line = json!({"commit_seq": seq, "op": op, "pk": pk, "row": row});
        serde_json::to_writer(&mut enc, &line).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap()
}

fn upload_request(kind: &str, batch_id: Uuid, content_length: Option<u64>) -> Vec<u8> {
    let mut v = json!({"format_version": 1, "request_kind": kind, "source_table": "device_state",
        "segment_kind": "payload_spill", "batch_id": batch_id.to_string()});
    if let Some(n) = content_length {
        v["content_length"] = json!(n);
    }
    v.to_string().into_bytes()
}

/// The whole spill flow of protocol §7 with S3 as the ingest Lambda configures it: the grant's
/// URL is an S3 presigned PUT (moto), the device's PUT lands in the bucket, the finalize streams
/// it back through the row intake; a finalize without an object is `spill_object_missing`.
#[tokio::test]
async fn the_spill_flow_runs_through_s3() {
    use edge_cloud_core::spill::SpillCode;
    use edge_functions::env::Objects;
    use edge_functions::ingest::Outcome;

    let moto = Moto::start();
    let sdk = sdk(&moto).await;
    let store = S3Objects::from_client(bucket(&sdk, "spill-bucket").await, "spill-bucket");
    let mut e = env().await;
    e.deps = e.deps.clone().with_objects(Objects::S3(store));
    // The lineage exists and is approved, so the object's rows materialize.
    let epoch = e.id();
    let first = row_batch(
        e.id(),
        epoch,
        &device_state(),
        true,
        &[ins(1, 1, "heat", 20.5)],
    );
    e.rows(&first).await;
    e.approve("device_state").await;

    let batch = e.id();
    let big = "x".repeat(200_000);
    let body = spill_object(&[ins(2, 2, &big, 1.0), ins(3, 3, "cool", 2.0)]);
    let n = u64::try_from(body.len()).unwrap();
    let o = e
        .send(
            "sync/ingest/request",
            &upload_request("url_request", batch, Some(n)),
        )
        .await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    let grant: Value = e
        .client
        .query_one(
            "SELECT envelope FROM edge_pending_controls WHERE control_kind = 'url_grant' \
             AND envelope->>'batch_id' = $1",
            &[&batch.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let url = grant["presigned_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/spill-bucket/spill/", moto.url())),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-SignedHeaders=content-length%3Bhost"),
        "{url}"
    );
    assert_eq!(http_put(url, &body).await, 200);
    let o = e
        .send(
            "sync/ingest/request",
            &upload_request("finalize", batch, None),
        )
        .await;
    assert!(
        matches!(
            o,
            Outcome::Accepted {
                materialized: 2,
                ..
            }
        ),
        "{o:?}"
    );
    let table = e.mirror_table().await;
    let mode: String = e
        .client
        .query_one(&format!("SELECT mode FROM \"{table}\" WHERE id = 3"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "cool");

    // Granted, never uploaded: GetObject's NoSuchKey is the named spill_object_missing.
    let lost = e.id();
    let o = e
        .send(
            "sync/ingest/request",
            &upload_request("url_request", lost, Some(10)),
        )
        .await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    let o = e
        .send(
            "sync/ingest/request",
            &upload_request("finalize", lost, None),
        )
        .await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::ObjectMissing,
                ..
            }
        ),
        "{o:?}"
    );
}
