//! The HTTP API on real PostgreSQL, driven in-process through the very router the `api` Lambda
//! and the local runner serve: every route's happy path, 401/403/404/409, idempotent replays,
//! pagination edges, malformed bodies and cross-tenant refusals.
#![allow(clippy::unwrap_used)]

mod common;

use common::api::*;
use common::*;
use edge_functions::api::auth::{mint, Claims, MANAGE_DEVICES};
use edge_functions::api::handle;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request};
use serde_json::{json, Value};
use uuid::Uuid;

impl T {
    /// One device_state lineage with a queued review and 3 staged rows.
    async fn staged_lineage(&self) -> Uuid {
        let s = device_state();
        let b = row_batch(
            self.env.id(),
            self.env.id(),
            &s,
            true,
            &[
                ins(1, 1, "heat", 20.5),
                ins(2, 2, "cool", 18.0),
                ins(3, 3, "off", 0.0),
            ],
        );
        self.env.rows(&b).await;
        self.env.lineage_id("device_state").await
    }

    async fn review_id(&self, lineage: Uuid) -> (Uuid, i64) {
        let (st, v) = self
            .get(&format!("/edge/schema-reviews?lineage_id={lineage}"))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let r = &v["data"][0];
        (
            Uuid::parse_str(r["id"].as_str().unwrap()).unwrap(),
            r["action_version"].as_i64().unwrap(),
        )
    }

    async fn claim(&self, review: Uuid) -> i64 {
        let (st, v) = self
            .post(&format!("/edge/schema-reviews/{review}/claim"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["status"], "in_review");
        v["data"]["action_version"].as_i64().unwrap()
    }
}

fn mirror_all(version: i64) -> Value {
    json!({"action_version": version, "column_actions": [
        {"source_column_name": "id", "action": "mirror"},
        {"source_column_name": "mode", "action": "mirror"},
        {"source_column_name": "setpoint", "action": "mirror", "mirror_column_name": "target_c"},
    ]})
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn auth_errors_and_tenant_scope() {
    let t = t().await;
    let lineage = t.staged_lineage().await;
    let rel = format!("/edge/lineages/{lineage}");

    let mut c = t.call(Method::GET, &rel);
    c.token = None;
    let (st, v) = t.send(c).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["ok"], 0);
    assert_eq!(code(&v), "unauthorized");

    let bad = "not.a.jwt";
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(bad);
    assert_eq!(t.send(c).await.0, StatusCode::UNAUTHORIZED);

    let forged = mint(
        b"other-secret",
        &Claims {
            sub: "x".into(),
            org_id: t.env.device.org_id,
            projects: vec![t.env.device.project_id],
            permissions: vec![MANAGE_DEVICES.into()],
            exp: 4_000_000_000,
            iat: 0,
        },
    )
    .unwrap();
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(&forged);
    assert_eq!(t.send(c).await.0, StatusCode::UNAUTHORIZED);

    let mut c = t.call(Method::GET, &rel);
    c.org = None;
    let (st, v) = t.send(c).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "missing_org_id"));

    let mut c = t.call(Method::GET, &rel);
    c.org = Some(Uuid::now_v7().to_string());
    let (st, v) = t.send(c).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "org_mismatch"));

    // Another tenant (own org and project) sees neither the project nor the lineage.
    let other_org = Uuid::now_v7();
    let other_project = Uuid::now_v7();
    let other = token(other_org, vec![other_project], true);
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    c.path = format!("/core/api/v1/projects/{other_project}/edge/lineages/{lineage}");
    let (st, v) = t.send(c).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let mut c = t.call(Method::GET, "/edge/lineages");
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    c.path = format!("/core/api/v1/projects/{other_project}/edge/lineages");
    let (st, v) = t.send(c).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["meta"]["total"], 0);
    // Same org, project not in the token: 404.
    let narrow = token(t.env.device.org_id, vec![other_project], true);
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(&narrow);
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
    // Cross-tenant mutation: 404, nothing deleted.
    let mut c = t.call(Method::DELETE, &rel);
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    c.path = format!("/core/api/v1/projects/{other_project}/edge/lineages/{lineage}");
    c.key = Some("k-cross".into());
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&rel).await.0, StatusCode::OK);

    // Read-only token: reads work, mutations are 403.
    let viewer = token(t.env.device.org_id, vec![t.env.device.project_id], false);
    let mut c = t.call(Method::GET, &rel);
    c.token = Some(&viewer);
    assert_eq!(t.send(c).await.0, StatusCode::OK);
    let mut c = t.call(Method::DELETE, &rel);
    c.token = Some(&viewer);
    c.key = Some("k1".into());
    let (st, v) = t.send(c).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));

    // Unknown routes and methods.
    assert_eq!(t.get("/edge/nope").await.0, StatusCode::NOT_FOUND);
    let mut c = t.call(Method::PUT, "/edge/lineages");
    c.key = Some("k2".into());
    assert_eq!(t.send(c).await.0, StatusCode::METHOD_NOT_ALLOWED);
    // Registry coalescing routes are served (functions/lambdas/tests/coalesce.rs).
    assert_eq!(t.get("/edge/registry-reviews").await.0, StatusCode::OK);
}

#[tokio::test]
async fn lineage_list_filters_and_pagination() {
    let t = t().await;
    let lineage = t.staged_lineage().await;
    // A second table for the same device.
    let other = edge_protocol::fingerprint::SchemaColumns::new(
        "alarms",
        vec![col("id", "INTEGER", 1, 1), col("msg", "TEXT", 0, 0)],
    );
    let b = row_batch(
        t.env.id(),
        t.env.id(),
        &other,
        true,
        &[(1, "insert", json!({"id": 1}), json!({"id": 1, "msg": "x"}))],
    );
    t.env.rows(&b).await;

    let (st, v) = t.get("/edge/lineages").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["ok"], 1);
    assert_eq!(v["meta"], json!({"page": 1, "limit": 50, "total": 2}));
    let first = &v["data"][0];
    for k in [
        "id",
        "org_id",
        "project_id",
        "fleet_id",
        "device_id",
        "source_table",
        "status",
        "pause_reason",
        "mirror_table_name",
        "staged_row_count",
        "staged_bytes",
        "created_at",
        "updated_at",
    ] {
        assert!(first.get(k).is_some(), "lineage lacks {k}: {first}");
    }

    let (_, v) = t.get("/edge/lineages?source_table=device_state").await;
    assert_eq!(v["meta"]["total"], 1);
    assert_eq!(v["data"][0]["id"], lineage.to_string());
    assert_eq!(v["data"][0]["staged_row_count"], 3);
    let (_, v) = t
        .get(&format!(
            "/edge/lineages?device_id={}&status=paused&fleet_id={}",
            t.env.device.device_id, t.env.device.fleet_id
        ))
        .await;
    assert_eq!(v["meta"]["total"], 2);
    let (_, v) = t.get("/edge/lineages?status=active").await;
    assert_eq!(v["meta"]["total"], 0);
    let (_, v) = t
        .get(&format!("/edge/lineages?fleet_id={}", Uuid::now_v7()))
        .await;
    assert_eq!(v["data"], json!([]));

    // Pagination edges.
    let (_, v) = t.get("/edge/lineages?limit=1&page=2").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["meta"], json!({"page": 2, "limit": 1, "total": 2}));
    let (_, v) = t.get("/edge/lineages?limit=1&page=3").await;
    assert_eq!(v["data"], json!([]));
    assert_eq!(v["meta"]["total"], 2, "total survives past the last page");
    let (st, _) = t.get("/edge/lineages?limit=500").await;
    assert_eq!(st, StatusCode::OK);
    for bad in [
        "limit=501",
        "limit=0",
        "limit=-1",
        "page=0",
        "page=abc",
        "limit=1.5",
        "status=sleeping",
        "device_id=not-a-uuid",
        "colour=red",
    ] {
        let (st, v) = t.get(&format!("/edge/lineages?{bad}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["ok"], 0);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn review_claim_approve_replay_and_mirror_rows() {
    let t = t().await;
    let lineage = t.staged_lineage().await;

    // Detail before approval: a schema version, no bindings, no intent.
    let (st, v) = t.get(&format!("/edge/lineages/{lineage}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["lineage"]["status"], "paused");
    assert_eq!(
        v["data"]["schema_versions"][0]["classification"],
        "ambiguous"
    );
    assert_eq!(v["data"]["bindings"], json!([]));
    assert_eq!(v["data"]["replay_intent"], Value::Null);

    // Staged rows, paged.
    let (_, v) = t
        .get(&format!("/edge/lineages/{lineage}/staged-rows?limit=2"))
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["meta"]["total"], 3);
    assert_eq!(v["data"][0]["source_commit_seq"], 1);
    assert_eq!(v["data"][0]["staging_reason"], "schema_review");
    let (_, v) = t
        .get(&format!(
            "/edge/lineages/{lineage}/staged-rows?limit=2&page=2"
        ))
        .await;
    assert_eq!(v["data"][0]["source_commit_seq"], 3);

    // No mirror yet.
    let (st, _) = t
        .get(&format!("/edge/lineages/{lineage}/mirror-rows"))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (review, v1) = t.review_id(lineage).await;
    let (st, v) = t.get(&format!("/edge/schema-reviews/{review}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["status"], "queued");
    assert_eq!(v["data"]["source_table"], "device_state");
    assert!(v["data"]["diff"]["added"].is_array());
    let (_, v) = t.get("/edge/schema-reviews?status=queued").await;
    assert_eq!(v["meta"]["total"], 1);
    let (_, v) = t.get("/edge/schema-reviews?status=approved").await;
    assert_eq!(v["meta"]["total"], 0);
    assert_eq!(
        t.get("/edge/schema-reviews?status=nope").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.get(&format!("/edge/schema-reviews/{}", Uuid::now_v7()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Approve before claim: 409.
    let (st, v) = t
        .post(
            &format!("/edge/schema-reviews/{review}/approve"),
            mirror_all(v1),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "invalid_review_state")
    );

    let v2 = t.claim(review).await;
    assert_eq!(v2, v1 + 1);
    // Claim again: 409.
    let (st, _) = t
        .post(&format!("/edge/schema-reviews/{review}/claim"), json!({}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // Stale action_version: 409.
    let (st, v) = t
        .post(
            &format!("/edge/schema-reviews/{review}/approve"),
            mirror_all(v1),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "stale_action_version")
    );
    // PK not mirrored: 400.
    let (st, v) = t
        .post(
            &format!("/edge/schema-reviews/{review}/approve"),
            json!({"action_version": v2, "column_actions": [
                {"source_column_name": "id", "action": "ignore"},
                {"source_column_name": "mode", "action": "mirror"},
                {"source_column_name": "setpoint", "action": "mirror"}]}),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "pk_column_not_mirrored")
    );
    // auto_create_and_map without the policy: 400.
    let (st, v) = t
        .post(
            &format!("/edge/schema-reviews/{review}/approve"),
            json!({"action_version": v2, "column_actions": [
                {"source_column_name": "id", "action": "mirror"},
                {"source_column_name": "mode", "action": "mirror"},
                {"source_column_name": "setpoint", "action": "auto_create_and_map"}]}),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "auto_create_not_allowed")
    );
    // Malformed bodies: 400 with serde's message.
    for body in [
        "{",
        "[]",
        r#"{"action_version": "x", "column_actions": []}"#,
        r#"{"action_version": 2, "column_actions": [{"source_column_name": "id", "action": "teleport"}]}"#,
        r#"{"action_version": 2, "column_actions": [], "extra": 1}"#,
    ] {
        let mut c = t.call(
            Method::POST,
            &format!("/edge/schema-reviews/{review}/approve"),
        );
        c.key = Some(Uuid::now_v7().to_string());
        c.body = Some(body.into());
        let (st, v) = t.send(c).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{body}"
        );
        assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    }
    // Missing Idempotency-Key: 400.
    let mut c = t.call(
        Method::POST,
        &format!("/edge/schema-reviews/{review}/approve"),
    );
    c.body = Some(mirror_all(v2).to_string());
    let (st, v) = t.send(c).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "missing_idempotency_key")
    );

    // The approval, with an idempotency key.
    let approve = |key: &str, body: Value| {
        let mut c = t.call(
            Method::POST,
            &format!("/edge/schema-reviews/{review}/approve"),
        );
        c.key = Some(key.into());
        c.body = Some(body.to_string());
        c
    };
    let (st, first) = t.send(approve("approve-1", mirror_all(v2))).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert_eq!(first["data"]["status"], "approved");
    assert_eq!(first["data"]["action_version"], v2 + 1);
    assert_eq!(first["meta"]["lineage_status"], "active");
    let mirror = first["meta"]["mirror_table_name"]
        .as_str()
        .unwrap()
        .to_owned();
    // Same key, same body (even re-spaced): the stored answer, nothing runs twice.
    let respaced = serde_json::to_string_pretty(&mirror_all(v2)).unwrap();
    let mut c = approve("approve-1", Value::Null);
    c.body = Some(respaced);
    let (st, again) = t.send(c).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(again, first);
    // Same key, different body: 422.
    let (st, v) = t.send(approve("approve-1", mirror_all(v2 + 7))).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    // New key, same body: the review moved on → 409.
    let (st, _) = t.send(approve("approve-2", mirror_all(v2))).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // One transaction's worth of effects.
    let intents = t
        .env
        .scalar_i64("SELECT count(*) FROM edge_replay_intents WHERE status = 'pending'")
        .await;
    assert_eq!(intents, 1, "exactly one replay intent despite the replays");
    let approved_events = t
        .env
        .scalar_i64(
            "SELECT count(*) FROM edge_events \
             WHERE event_type = 'integration.edge_schema_review.approved.v1'",
        )
        .await;
    assert_eq!(approved_events, 1);
    let resumes = t
        .env
        .scalar_i64("SELECT count(*) FROM edge_pending_controls")
        .await;
    assert_eq!(
        resumes, 0,
        "approval sends no control to a device not paused by one"
    );
    let (_, v) = t.get(&format!("/edge/lineages/{lineage}")).await;
    assert_eq!(v["data"]["lineage"]["status"], "active");
    assert_eq!(v["data"]["bindings"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"]["replay_intent"]["status"], "pending");
    assert_eq!(
        v["data"]["replay_intent"]["action_kind"],
        "schema_review_approved"
    );

    // Drain the backlog (the replay worker's job) and read the mirror.
    {
        let c = t.env.deps.pool.get().await.unwrap();
        edge_functions::store::drain::replay_staged(&**c, lineage, t.env.device.device_id, 100)
            .await
            .unwrap();
    }
    let (st, v) = t
        .get(&format!("/edge/lineages/{lineage}/mirror-rows?limit=2"))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["mirror_table_name"], mirror);
    assert_eq!(v["data"]["source"], "mirror");
    assert_eq!(v["meta"]["total"], 3);
    let row = &v["data"]["rows"][0];
    assert_eq!(row["device_id"], t.env.device.device_id.to_string());
    assert!(row["materialized_at"]["created_at"].is_string());
    assert_eq!(
        row["data"],
        json!({"id": 1, "mode": "heat", "target_c": 20.5})
    );
    let (_, v) = t
        .get(&format!(
            "/edge/lineages/{lineage}/mirror-rows?columns=id,target_c&page=2&limit=2"
        ))
        .await;
    let r = &v["data"]["rows"][0]["data"];
    assert_eq!(
        (r["id"].as_i64(), r["target_c"].as_f64()),
        (Some(3), Some(0.0))
    );
    assert_eq!(r.as_object().unwrap().len(), 2);
    // Keyset paging: next_cursor continues after the last key; null on the last page.
    let (_, v) = t
        .get(&format!("/edge/lineages/{lineage}/mirror-rows?limit=2"))
        .await;
    let cursor = v["meta"]["next_cursor"].as_str().unwrap().to_owned();
    let (st, v) = t
        .get(&format!(
            "/edge/lineages/{lineage}/mirror-rows?limit=2&after={cursor}"
        ))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["rows"][0]["data"]["id"], 3);
    assert_eq!(v["data"]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(v["meta"]["next_cursor"], Value::Null);
    assert_eq!(v["meta"]["page"], Value::Null);
    assert_eq!(v["meta"]["total"], 3);
    for bad in ["zz", "00", &format!("{cursor}&page=2")] {
        let (st, v) = t
            .get(&format!("/edge/lineages/{lineage}/mirror-rows?after={bad}"))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (st, v) = t
        .get(&format!(
            "/edge/lineages/{lineage}/mirror-rows?columns=id,setpoint"
        ))
        .await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "unknown_column"));
    let (st, _) = t
        .get(&format!(
            "/edge/lineages/{lineage}/mirror-rows?columns=_edge_deleted"
        ))
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "platform columns are not selectable"
    );

    // Live rows now materialize straight away.
    let b = row_batch(
        t.env.id(),
        t.env.id(),
        &device_state(),
        false,
        &[ins(10, 4, "eco", 16.0)],
    );
    t.env.rows(&b).await;
    let (_, v) = t
        .get(&format!("/edge/lineages/{lineage}/mirror-rows"))
        .await;
    assert_eq!(v["meta"]["total"], 4);
}

#[tokio::test]
async fn deferred_required_column_keeps_the_lineage_paused_and_auto_create_maps() {
    let t = t().await;
    // mode is NOT NULL here.
    let s = edge_protocol::fingerprint::SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 1, 0),
            col("setpoint", "REAL", 0, 0),
        ],
    );
    let b = row_batch(t.env.id(), t.env.id(), &s, true, &[ins(1, 1, "heat", 20.5)]);
    t.env.rows(&b).await;
    let lineage = t.env.lineage_id("device_state").await;
    let (review, _) = t.review_id(lineage).await;
    let v = t.claim(review).await;

    // Enable auto-create, then approve with a blocking defer.
    let mut c = t.call(Method::PATCH, "/edge/policy");
    c.key = Some("p1".into());
    c.body = Some(json!({"allow_auto_create_device_data_points": true}).to_string());
    let (st, p) = t.send(c).await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["data"]["allow_auto_create_device_data_points"], true);

    let (st, r) = t
        .post(
            &format!("/edge/schema-reviews/{review}/approve"),
            json!({"action_version": v, "column_actions": [
                {"source_column_name": "id", "action": "mirror"},
                {"source_column_name": "mode", "action": "defer"},
                {"source_column_name": "setpoint", "action": "auto_create_and_map"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["meta"]["lineage_status"], "paused");
    assert_eq!(r["meta"]["blocking_deferred"], json!(["mode"]));
    let (_, d) = t.get(&format!("/edge/lineages/{lineage}")).await;
    assert_eq!(d["data"]["lineage"]["status"], "paused");
    let dp = d["data"]["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["source_column_name"] == "setpoint")
        .unwrap()
        .clone();
    assert_eq!(dp["action"], "auto_create_and_map");
    assert!(dp["device_data_point_id"].is_string());
    let n = t
        .env
        .scalar_i64("SELECT count(*) FROM device_data_points WHERE name = 'device_state.setpoint'")
        .await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn reject_delete_policy_classify_events_reset() {
    let t = t().await;
    let lineage = t.staged_lineage().await;
    let (review, v) = t.review_id(lineage).await;

    // Reject from queued (no claim needed); empty reason is a 400.
    let (st, _) = t
        .post(
            &format!("/edge/schema-reviews/{review}/reject"),
            json!({"action_version": v, "reason": " "}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, r) = t
        .post(
            &format!("/edge/schema-reviews/{review}/reject"),
            json!({"action_version": v, "reason": "test table"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["data"]["status"], "rejected");
    assert_eq!(r["data"]["reason"], "test table");
    let (_, l) = t.get(&format!("/edge/lineages/{lineage}")).await;
    assert_eq!(l["data"]["lineage"]["status"], "paused");
    assert_eq!(l["data"]["lineage"]["staged_row_count"], 3);
    let (st, _) = t
        .post(&format!("/edge/schema-reviews/{review}/claim"), json!({}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Reset-materialization: paused for schema review → 409.
    let (st, v) = t
        .post(
            &format!("/edge/lineages/{lineage}/reset-materialization"),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        t.post(
            &format!("/edge/lineages/{}/reset-materialization", Uuid::now_v7()),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Events: queued then rejected, cursor-paged.
    let (st, e) = t.get("/edge/events?limit=1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        e["data"][0]["event_type"],
        "integration.edge_schema_review.queued.v1"
    );
    let cursor = e["meta"]["next_cursor"].as_str().unwrap().to_owned();
    let (_, e) = t.get(&format!("/edge/events?after={cursor}")).await;
    assert_eq!(
        e["data"][0]["event_type"],
        "integration.edge_schema_review.rejected.v1"
    );
    let last = e["meta"]["next_cursor"].as_str().unwrap().to_owned();
    let (_, e) = t.get(&format!("/edge/events?after={last}")).await;
    assert_eq!(e["data"], json!([]));
    assert_eq!(e["meta"]["next_cursor"], last);
    assert_eq!(
        t.get("/edge/events?after=abc").await.0,
        StatusCode::BAD_REQUEST
    );

    // Policy.
    let (st, p) = t.get("/edge/policy").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(p["data"]["max_pending_rows_per_lineage"], 100_000);
    assert_eq!(p["data"]["schema_coalescing_mode"], "none");
    for bad in [
        json!({}),
        json!({"resume_threshold_percent": 0}),
        json!({"schema_coalescing_mode": "galaxy"}),
        json!({"max_pending_rows_per_lineage": -5}),
        json!({"unknown_field": true}),
    ] {
        let mut c = t.call(Method::PATCH, "/edge/policy");
        c.key = Some(Uuid::now_v7().to_string());
        c.body = Some(bad.to_string());
        assert_eq!(t.send(c).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let mut c = t.call(Method::PATCH, "/edge/policy");
    c.key = Some("pp".into());
    c.body = Some(
        json!({"schema_coalescing_mode": "fleet", "resume_threshold_percent": 50}).to_string(),
    );
    let (st, p) = t.send(c).await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["data"]["schema_coalescing_mode"], "fleet");
    assert_eq!(p["data"]["resume_threshold_percent"], 50);
    assert_eq!(
        t.get("/edge/policy").await.1["data"]["resume_threshold_percent"],
        50
    );

    // Dry-run classification.
    let cols = json!([{"name": "id", "type": "INTEGER", "not_null": true, "pk": 1},
                      {"name": "mode", "type": "TEXT"}]);
    let (st, c) = t
        .post(
            "/edge/schema-classify",
            json!({"table_name": "device_state", "columns": cols}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["data"]["classification"], "ambiguous");
    let (_, c) = t
        .post(
            "/edge/schema-classify",
            json!({"table_name": "device_state", "columns": cols,
                   "approved_columns": [{"name": "id", "type": "INTEGER", "not_null": true, "pk": 1}]}),
        )
        .await;
    assert_eq!(c["data"]["classification"], "compatible_additive");
    assert_eq!(c["data"]["summary"], json!(["added mode TEXT"]));
    let (_, c) = t
        .post(
            "/edge/schema-classify",
            json!({"table_name": "device_state", "columns": [{"name": "id", "type": "TEXT", "pk": 1}],
                   "lineage_id": lineage}),
        )
        .await;
    assert_eq!(
        c["data"]["classification"], "ambiguous",
        "no approved schema yet"
    );
    let (st, _) = t
        .post(
            "/edge/schema-classify",
            json!({"table_name": "t", "columns": []}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = t
        .post(
            "/edge/schema-classify",
            json!({"table_name": "t", "columns": cols, "lineage_id": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Delete: gone, with its staged rows; again → 404 (a new key) or the stored 200 (same key).
    let mut c = t.call(Method::DELETE, &format!("/edge/lineages/{lineage}"));
    c.key = Some("del".into());
    let (st, d) = t.send(c).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(d["data"]["lineage_id"], lineage.to_string());
    let mut c = t.call(Method::DELETE, &format!("/edge/lineages/{lineage}"));
    c.key = Some("del".into());
    assert_eq!(t.send(c).await, (st, d));
    let mut c = t.call(Method::DELETE, &format!("/edge/lineages/{lineage}"));
    c.key = Some("del-2".into());
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get(&format!("/edge/lineages/{lineage}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.env
            .scalar_i64("SELECT count(*) FROM edge_staged_rows")
            .await,
        0
    );
}

#[tokio::test]
async fn openapi_document_is_committed() {
    let generated = edge_functions::api::openapi::document_text();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("EDGE_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: regenerate with \
         EDGE_WRITE_OPENAPI=1 cargo test -p edge-functions --test api openapi_document_is_committed"
    );
    // Served as-is.
    let t = t().await;
    let req: Request = lambda_http::http::Request::builder()
        .uri("/openapi.json")
        .body(Body::Empty)
        .unwrap();
    let resp = handle(&t.api, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = match resp.body() {
        Body::Text(s) => serde_json::from_str(s).unwrap(),
        _ => panic!(),
    };
    assert!(v["paths"]["/core/api/v1/projects/{project_id}/edge/lineages"].is_object());
}
