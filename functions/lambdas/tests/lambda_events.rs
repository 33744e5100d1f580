//! Every fixture in `events/` (what `cargo lambda invoke --data-file` sends, see
//! docs/deploy.md) through the very functions the Lambda binaries run, against the harness
//! PostgreSQL: the IoT-rule envelopes in SQS stage rows, the HTTP API v2 request with the JWT
//! authorizer's claims lists them in the API envelope, the EventBridge schedule runs the sweep
//! (which publishes a pending control) and the replay backstop, the spill `url_request` +
//! `finalize` envelopes grant an upload and stage the object's row. Also: the Lambda pool drops
//! idle connections after a thaw and keeps working.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use edge_e2e::TestDatabase;
use edge_functions::api::auth::AuthConfig;
use edge_functions::api::Api;
use edge_functions::aws::db::{lambda_pool, ThawGuard, STALE_AFTER};
use edge_functions::control_publisher::{ControlPublisher, PublishError};
use edge_functions::env::MetricsSettings;
use edge_functions::events::LogForwarder;
use edge_functions::replay_trigger::ReplayTrigger;
use edge_functions::store::controls::issue_lineage_control;
use edge_functions::store::migrate::migrate;
use edge_functions::store::registry::{create_device, Device};
use edge_functions::{lambda, Deps};
use edge_protocol::control::ControlKind;
use lambda_http::http::StatusCode;
use lambda_http::request::LambdaRequest;
use lambda_http::Body;
use serde_json::Value;
use uuid::Uuid;

const INGEST: &str = include_str!("../events/ingest-sqs.json");
const API: &str = include_str!("../events/api-http-v2.json");
const SCHEDULE: &str = include_str!("../events/schedule.json");
const SPILL: &str = include_str!("../events/ingest-sqs-spill.json");

/// The ids the API fixture's claims and path use (docs/deploy.md registers the device with
/// them before `cargo lambda invoke`).
const ORG: &str = "0193a000-0000-7000-8000-0000000000a1";
const PROJECT: &str = "0193a000-0000-7000-8000-0000000000b1";

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Vec<u8>)>>);

impl ControlPublisher for Recorder {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        self.0.lock().unwrap().push((topic.to_owned(), payload));
        Ok(())
    }
}

struct Stack {
    _db: TestDatabase,
    deps: Deps,
    device: Device,
    thaw: ThawGuard,
}

/// The database as `edge-cloud migrate` + `devices create --name gw-07 --slug acme --org ORG
/// --project PROJECT` leave it, behind the pool the Lambdas build.
async fn stack() -> Stack {
    let db = TestDatabase::create_async().await;
    let pool = lambda_pool(&db.url(), 4).unwrap();
    migrate(&mut pool.get().await.unwrap()).await.unwrap();
    let device = Device {
        device_id: Uuid::now_v7(),
        device_name: "gw-07".into(),
        org_id: Uuid::parse_str(ORG).unwrap(),
        project_id: Uuid::parse_str(PROJECT).unwrap(),
        fleet_id: Uuid::now_v7(),
        topic_slug: "acme".into(),
        control_key: b"fixture-control-key".to_vec(),
    };
    assert!(create_device(&**pool.get().await.unwrap(), &device)
        .await
        .unwrap());
    Stack {
        _db: db,
        deps: Deps::new(pool),
        device,
        thaw: ThawGuard::default(),
    }
}

async fn scalar(s: &Stack, sql: &str) -> i64 {
    let c = s.deps.pool.get().await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn ingest_fixture(s: &Stack) {
    let event: SqsEvent = serde_json::from_str(INGEST).unwrap();
    let n = event.records.len();
    let resp = lambda::ingest(&s.deps, &s.thaw, event).await;
    assert!(
        resp.batch_item_failures.is_empty(),
        "no message of the fixture ({n}) is retried: {:?}",
        resp.batch_item_failures
    );
}

#[tokio::test]
async fn sqs_fixture_stages_the_row_batch() {
    let s = stack().await;
    ingest_fixture(&s).await;
    // A new table waits for review: its three changes are staged, the batch is in the ledger.
    assert_eq!(
        scalar(&s, "SELECT count(*) FROM edge_table_lineages").await,
        1
    );
    let staged = scalar(&s, "SELECT count(*) FROM edge_staged_rows").await;
    assert_eq!(staged, 3);
    assert_eq!(
        scalar(
            &s,
            "SELECT count(*) FROM edge_export_segments WHERE status = 'staged'"
        )
        .await,
        1
    );
    // Redelivery (SQS at-least-once) changes nothing.
    ingest_fixture(&s).await;
    assert_eq!(
        scalar(&s, "SELECT count(*) FROM edge_staged_rows").await,
        staged
    );
}

#[tokio::test]
async fn http_api_fixture_returns_the_lineage_envelope() {
    let s = stack().await;
    ingest_fixture(&s).await;
    // As the api binary configures it: no key of its own, the authorizer's claims decide.
    let mut auth = AuthConfig::default();
    auth.trust_gateway_claims = true;
    let api = Api::new(s.deps.pool.clone(), auth);
    let req: LambdaRequest = serde_json::from_str(API).unwrap();
    let resp = lambda::api(&api, &s.thaw, req.into()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = match resp.body() {
        Body::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        Body::Binary(b) => serde_json::from_slice(b.as_slice()).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    assert_eq!(body["ok"], 1, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{body}");
    assert_eq!(data[0]["source_table"], "device_state");
    assert_eq!(data[0]["device_id"], s.device.device_id.to_string());
    assert_eq!(data[0]["project_id"], PROJECT);
    assert_eq!(body["meta"]["page"], 1);
    assert_eq!(body["meta"]["limit"], 20);
    assert_eq!(body["meta"]["total"], 1);

    // The same request with another org in its claims sees nothing of this tenant.
    let other = API.replace(
        "\"org_id\": \"0193a000-0000-7000-8000-0000000000a1\"",
        "\"org_id\": \"0193a000-0000-7000-8000-0000000000ff\"",
    );
    assert_ne!(other, API);
    let req: LambdaRequest = serde_json::from_str(&other).unwrap();
    let resp = lambda::api(&api, &s.thaw, req.into()).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

#[tokio::test]
async fn schedule_fixture_runs_the_sweep_and_the_replay_backstop() {
    let s = stack().await;
    ingest_fixture(&s).await;
    // A pending control for the fixture's lineage, as backpressure would issue it.
    let lineage: Uuid = {
        let c = s.deps.pool.get().await.unwrap();
        c.query_one("SELECT id FROM edge_table_lineages", &[])
            .await
            .unwrap()
            .get(0)
    };
    {
        let c = s.deps.pool.get().await.unwrap();
        issue_lineage_control(
            &**c,
            &s.device,
            lineage,
            "device_state",
            ControlKind::PauseLineage,
            103,
            Some("fixture"),
            time::OffsetDateTime::now_utc(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    }
    let event: Value = serde_json::from_str(SCHEDULE).unwrap();
    let publisher = Recorder::default();
    let report = lambda::sweep(
        &s.deps,
        &s.thaw,
        &publisher,
        &LogForwarder,
        &ReplayTrigger::Polling,
        &MetricsSettings::lambda_from_env().unwrap(),
        &event,
    )
    .await;
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["published"], 1, "{report}");
    // The fleet's gauges as EMF after the run (observability.md §2).
    assert!(report["gauge_lines"].as_u64().unwrap() > 0, "{report}");
    let sent = publisher.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "acme/gw-07/sync/ingest/control");
    let control: Value = serde_json::from_slice(&sent[0].1).unwrap();
    assert_eq!(control["source_table"], "device_state");

    // The replay Lambda's schedule backstop: nothing approved, nothing to drain, no error.
    let report = lambda::replay(&s.deps, &s.thaw, 1000, Duration::from_secs(60)).await;
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["drained"], 0, "{report}");
}

#[tokio::test]
async fn a_thaw_drops_idle_connections_and_the_next_request_reconnects() {
    let s = stack().await;
    let guard = ThawGuard::default();
    let t0 = 1_733_000_000_000u64;
    assert_eq!(guard.before_request_at(&s.deps.pool, t0), 0, "first call");
    assert_eq!(scalar(&s, "SELECT 1::bigint").await, 1);
    let idle = s.deps.pool.status().available;
    assert!(idle >= 1);
    // A short pause keeps the pool; a long one (a frozen environment) empties it.
    assert_eq!(guard.before_request_at(&s.deps.pool, t0 + 1_000), 0);
    let gap = u64::try_from(STALE_AFTER.as_millis()).unwrap() + 1;
    assert_eq!(
        guard.before_request_at(&s.deps.pool, t0 + 1_000 + gap),
        idle
    );
    assert_eq!(s.deps.pool.status().size, 0);
    // …and the next request simply opens a fresh connection.
    ingest_fixture(&s).await;
    assert_eq!(
        scalar(&s, "SELECT count(*) FROM edge_table_lineages").await,
        1
    );
}

#[tokio::test]
async fn a_connection_killed_by_the_server_is_replaced_on_checkout() {
    let s = stack().await;
    let pid: i32 = {
        let c = s.deps.pool.get().await.unwrap();
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    // What an RDS Proxy idle timeout or a failover does to a pooled connection.
    let killer = s._db.connect().await;
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Verified recycling notices and hands out a working connection.
    let c = s.deps.pool.get().await.unwrap();
    let again: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(again, pid);
}

#[tokio::test]
async fn spill_fixture_grants_an_upload_and_finalizes_the_object() {
    use std::io::Write as _;
    let mut s = stack().await;
    ingest_fixture(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let objects = edge_functions::objects::local::LocalObjects::new(
        dir.path(),
        "http://127.0.0.1:9",
        b"fixture".to_vec(),
    );
    s.deps = s
        .deps
        .clone()
        .with_objects(edge_functions::env::Objects::Local(objects));
    // The object the device would have PUT, where the grant's URL points.
    let batch = Uuid::parse_str("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f7a").unwrap();
    let path = dir.path().join(edge_cloud_core::spill::object_key(
        s.device.device_id,
        batch,
    ));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(
        br#"{"commit_seq":900,"op":"insert","pk":{"id":9},"row":{"id":9,"mode":"big","setpoint":1.5}}"#,
    )
    .unwrap();
    std::fs::write(&path, enc.finish().unwrap()).unwrap();

    let event: SqsEvent = serde_json::from_str(SPILL).unwrap();
    let resp = lambda::ingest(&s.deps, &s.thaw, event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    assert_eq!(
        scalar(
            &s,
            "SELECT count(*) FROM edge_pending_controls WHERE control_kind = 'url_grant'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &s,
            "SELECT count(*) FROM edge_export_segments WHERE kind = 'spill' AND status = 'staged'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&s, "SELECT count(*) FROM edge_staged_rows").await,
        4,
        "the fixture batch's three rows and the object's one"
    );
    // Redelivery of both: no second grant is minted while the first is unacked, and the
    // finalize is a duplicate.
    let event: SqsEvent = serde_json::from_str(SPILL).unwrap();
    let resp = lambda::ingest(&s.deps, &s.thaw, event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    assert_eq!(scalar(&s, "SELECT count(*) FROM edge_staged_rows").await, 4);
}

/// The API fixture with `claims` as the JWT authorizer's (replacing the fixture's), sent as
/// `GET …/lineages`, or as `POST …/schema-reviews/{missing}/claim` when `mutate`.
async fn gateway_call(api: &Api, s: &Stack, claims: Value, mutate: bool) -> (StatusCode, Value) {
    let mut event: Value = serde_json::from_str(API).unwrap();
    event["requestContext"]["authorizer"]["jwt"]["claims"] = claims;
    if mutate {
        let path = format!(
            "/core/api/v1/projects/{PROJECT}/edge/schema-reviews/{}/claim",
            Uuid::now_v7()
        );
        event["rawPath"] = Value::from(path.clone());
        event["rawQueryString"] = Value::from("");
        event["queryStringParameters"] = serde_json::json!({});
        event["requestContext"]["http"]["method"] = Value::from("POST");
        event["requestContext"]["http"]["path"] = Value::from(path);
        event["headers"]["content-type"] = Value::from("application/json");
        event["headers"]["content-length"] = Value::from("2");
        event["headers"]["idempotency-key"] = Value::from(Uuid::now_v7().to_string());
        event["body"] = Value::from("{}");
    }
    let req: LambdaRequest = serde_json::from_value(event).unwrap();
    let resp = lambda::api(api, &s.thaw, req.into()).await;
    let body: Value = match resp.body() {
        Body::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        Body::Binary(b) => serde_json::from_slice(b.as_slice()).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    (resp.status(), body)
}

/// The claim mapping on the `api` Lambda's path: API Gateway's JWT authorizer verified a
/// Cognito ID token and hands its claims over flattened to strings (`cognito:groups` as
/// `[a b]`); a Keycloak-like nested claim arrives as Go's `map[…]` rendering or JSON text.
#[tokio::test]
async fn http_api_fixture_with_cognito_and_nested_claims_through_the_mapping() {
    use edge_functions::api::auth::ClaimMapping;
    use serde_json::json;
    let s = stack().await;
    ingest_fixture(&s).await;
    let mut auth = AuthConfig::default().with_claim_mapping(ClaimMapping::new(
        "custom:org_id",
        "custom:projects",
        "cognito:groups",
        None,
    ));
    auth.trust_gateway_claims = true;
    let api = Api::new(s.deps.pool.clone(), auth);
    let cognito = json!({
        "sub": "5f1c2d3e-0000-4000-8000-00000000c0de",
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_EXAMPLE",
        "aud": "4example0client0id0abcdefgh",
        "token_use": "id",
        "cognito:groups": "[operators PROJECT_CAN_MANAGE_DEVICES]",
        "custom:org_id": ORG,
        "custom:projects": format!("0193a000-0000-7000-8000-0000000000b9,{PROJECT}"),
        "iat": "1733000000",
        "exp": "4102444800",
    });
    let (status, body) = gateway_call(&api, &s, cognito.clone(), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    // Past the permission check: the review does not exist.
    let (status, body) = gateway_call(&api, &s, cognito.clone(), true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let mut reader = cognito.clone();
    reader["cognito:groups"] = json!("[operators]");
    let (status, body) = gateway_call(&api, &s, reader, true).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["error"]["claim"], "cognito:groups");
    assert_eq!(
        body["error"]["message"],
        "this action needs the PROJECT_CAN_MANAGE_DEVICES permission in the token's claim \
         cognito:groups (EDGE_JWT_CLAIM_PERMISSIONS); it holds: operators"
    );
    let mut orgless = cognito.clone();
    orgless.as_object_mut().unwrap().remove("custom:org_id");
    let (status, body) = gateway_call(&api, &s, orgless, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["error"],
        json!({"code": "claim_missing", "claim": "custom:org_id",
               "message": "token has no claim custom:org_id (EDGE_JWT_CLAIM_ORG)"})
    );
    let mut bad = cognito.clone();
    bad["custom:projects"] = json!("[site-7]");
    let (status, body) = gateway_call(&api, &s, bad, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "claim_invalid");
    assert_eq!(body["error"]["claim"], "custom:projects");

    // Nested claims through the gateway: Go's map rendering and JSON text.
    let mut auth = AuthConfig::default().with_claim_mapping(ClaimMapping::new(
        "edge.org_id",
        "edge.projects",
        "realm_access.roles",
        None,
    ));
    auth.trust_gateway_claims = true;
    let api = Api::new(s.deps.pool.clone(), auth);
    let keycloak = json!({
        "sub": "operator",
        "iss": "https://sso.example/realms/edge",
        "realm_access": "map[roles:[offline_access PROJECT_CAN_MANAGE_DEVICES]]",
        "edge": format!("{{\"org_id\":\"{ORG}\",\"projects\":[\"{PROJECT}\"]}}"),
        "exp": "4102444800",
    });
    let (status, body) = gateway_call(&api, &s, keycloak.clone(), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = gateway_call(&api, &s, keycloak, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
