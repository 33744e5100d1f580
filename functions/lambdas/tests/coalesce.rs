//! Registry coalescing (cloud.md §9) on real PostgreSQL through the API router and the ingest
//! handler: the first device of a scope opens one registry review, later devices wait without a
//! review of their own, approval binds them all to the shared mirror (device_id in the key), a
//! device arriving afterwards is auto-approved, consolidation copies a per-device mirror, and
//! the routes answer 401/403/404/409 and refuse other tenants.
#![allow(clippy::unwrap_used)]

mod common;

use common::api::{token, SECRET};
use common::*;
use edge_cloud_core::naming::uuid8;
use edge_functions::api::auth::AuthConfig;
use edge_functions::api::{handle, Api};
use edge_functions::ingest::Outcome;
use edge_functions::replay::{drain, Budget};
use edge_functions::store::registry::{create_device, Device};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request};
use serde_json::{json, Value};
use uuid::Uuid;

struct T {
    env: Env,
    api: Api,
    token: String,
}

impl T {
    async fn new() -> T {
        let env = env().await;
        let api = Api::new(env.deps.pool.clone(), AuthConfig::hs256(SECRET.to_vec()));
        let token = token(env.device.org_id, vec![env.device.project_id], true);
        T { env, api, token }
    }

    async fn req(
        &self,
        method: Method,
        org: Uuid,
        project: Uuid,
        rel: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = lambda_http::http::Request::builder()
            .method(method.clone())
            .uri(format!("/core/api/v1/projects/{project}{rel}"))
            .header("ORG-ID", org.to_string());
        if let Some(t) = token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        if method != Method::GET {
            b = b.header("Idempotency-Key", Uuid::now_v7().to_string());
        }
        let req: Request = b
            .body(body.map_or(Body::Empty, |v| Body::Text(v.to_string())))
            .unwrap();
        let resp = handle(&self.api, req).await;
        let status = resp.status();
        let v = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("unexpected body {other:?}"),
        };
        (status, v)
    }

    async fn get(&self, rel: &str) -> (StatusCode, Value) {
        let d = &self.env.device;
        self.req(
            Method::GET,
            d.org_id,
            d.project_id,
            rel,
            Some(&self.token),
            None,
        )
        .await
    }

    async fn post(&self, rel: &str, body: Value) -> (StatusCode, Value) {
        let d = &self.env.device;
        self.req(
            Method::POST,
            d.org_id,
            d.project_id,
            rel,
            Some(&self.token),
            Some(body),
        )
        .await
    }

    async fn patch_mode(&self, mode: &str) {
        let d = &self.env.device;
        let (st, v) = self
            .req(
                Method::PATCH,
                d.org_id,
                d.project_id,
                "/edge/policy",
                Some(&self.token),
                Some(json!({"schema_coalescing_mode": mode})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }

    /// Another device of the same project (and, unless given, a new fleet).
    async fn device(&self, name: &str, fleet: Option<Uuid>) -> Device {
        let d = Device {
            device_id: Uuid::now_v7(),
            device_name: name.into(),
            org_id: self.env.device.org_id,
            project_id: self.env.device.project_id,
            fleet_id: fleet.unwrap_or_else(Uuid::now_v7),
            topic_slug: SLUG.into(),
            control_key: vec![7; 32],
        };
        let c = self.env.deps.pool.get().await.unwrap();
        assert!(create_device(&**c, &d).await.unwrap());
        d
    }

    async fn send_rows(&self, device: &str, rows: &[Change]) -> Outcome {
        let b = row_batch(self.env.id(), self.env.id(), &device_state(), true, rows);
        self.env
            .send_as(device, "sync/rows/batch", b.to_string().as_bytes())
            .await
    }

    async fn lineage_of(&self, device: Uuid) -> Uuid {
        self.env
            .client
            .query_one(
                "SELECT id FROM edge_table_lineages WHERE device_id = $1 \
                     AND source_table = 'device_state'",
                &[&device],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn mirror_count(&self, table: &str, device: Uuid) -> i64 {
        self.env
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{table}\" WHERE device_id = $1 AND NOT _edge_deleted"
                ),
                &[&device],
            )
            .await
            .unwrap()
            .get(0)
    }
}

fn mirror_all(version: i64) -> Value {
    json!({"action_version": version, "column_actions": [
        {"source_column_name": "id", "action": "mirror"},
        {"source_column_name": "mode", "action": "mirror"},
        {"source_column_name": "setpoint", "action": "mirror"},
    ]})
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn registry_review_binds_every_device_of_the_project_to_the_shared_mirror() {
    let t = T::new().await;
    let d = t.env.device.clone();

    // Before coalescing: the env device is approved per device and has its own mirror.
    t.send_rows(DEVICE, &[ins(1, 1, "heat", 20.5), ins(2, 2, "cool", 18.0)])
        .await;
    let own = t.env.approve("device_state").await;
    let own_mirror = own.mirror_table.unwrap();
    assert_eq!(t.mirror_count(&own_mirror, d.device_id).await, 2);

    t.patch_mode("project").await;
    let a = t.device("gw-a", None).await;
    let b = t.device("gw-b", None).await;

    // The first device announcing the hash opens the one registry review; the second waits.
    let out = t.send_rows("gw-a", &[ins(1, 10, "heat", 21.0)]).await;
    assert!(matches!(out, Outcome::Accepted { .. }), "{out:?}");
    t.send_rows("gw-b", &[ins(1, 20, "off", 0.0), ins(2, 21, "heat", 19.0)])
        .await;
    let (st, v) = t.get("/edge/registry").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["meta"]["total"], 1, "{v}");
    let entry = &v["data"][0];
    assert_eq!(entry["status"], "pending");
    assert_eq!(entry["scope"], "project");
    assert_eq!(entry["origin_device_id"], a.device_id.to_string());
    let registry_id = uuid(&entry["id"]);
    let (_, v) = t.get("/edge/schema-reviews?status=queued").await;
    assert_eq!(
        v["meta"]["total"], 0,
        "no per-device review in coalescing mode: {v}"
    );
    let (_, v) = t.get("/edge/registry-reviews?status=queued").await;
    assert_eq!(v["meta"]["total"], 1, "{v}");
    let review = uuid(&v["data"][0]["id"]);
    assert_eq!(v["data"][0]["registry_id"], registry_id.to_string());
    let (st, detail) = t.get(&format!("/edge/registry-reviews/{review}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(detail["data"]["status"], "queued");
    let (_, ev) = t.get("/edge/events").await;
    assert!(ev["data"].as_array().unwrap().iter().any(|e| {
        e["event_type"] == "integration.edge_schema_review.queued.v1"
            && e["payload"]["registry_review_id"] == review.to_string()
    }));

    // 409: approve before claim, stale version.
    let (st, v) = t
        .post(
            &format!("/edge/registry-reviews/{review}/approve"),
            mirror_all(1),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = t
        .post(
            &format!("/edge/registry-reviews/{review}/claim"),
            json!({"action_version": 7}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(code(&v), "stale_action_version");
    let (st, v) = t
        .post(&format!("/edge/registry-reviews/{review}/claim"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["status"], "in_review");
    let version = v["data"]["action_version"].as_i64().unwrap();

    // Data points belong to one device: refused at registry scope.
    let (st, v) = t
        .post(
            &format!("/edge/registry-reviews/{review}/approve"),
            json!({"action_version": version, "column_actions": [
                {"source_column_name": "id", "action": "mirror"},
                {"source_column_name": "mode", "action": "auto_create_and_map"},
                {"source_column_name": "setpoint", "action": "ignore"},
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(code(&v), "registry_action_not_supported");

    let (st, v) = t
        .post(
            &format!("/edge/registry-reviews/{review}/approve"),
            mirror_all(version),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["status"], "approved");
    let shared = format!("edge_mirror_p{}_device_state", uuid8(&d.project_id));
    assert_eq!(v["meta"]["mirror_table_name"], shared.as_str());
    let adopted: Vec<Uuid> = v["meta"]["adopted_lineage_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let (la, lb) = (
        t.lineage_of(a.device_id).await,
        t.lineage_of(b.device_id).await,
    );
    assert!(adopted.contains(&la) && adopted.contains(&lb), "{v}");
    assert_eq!(
        adopted.len(),
        2,
        "the per-device lineage keeps its own binding: {v}"
    );

    // The staged rows of both waiting devices replay into the shared mirror.
    let r = drain(&t.env.deps, 100, Budget::UNLIMITED).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(t.mirror_count(&shared, a.device_id).await, 1);
    assert_eq!(t.mirror_count(&shared, b.device_id).await, 2);

    // A device arriving after the approval is auto-approved: no review, straight to the mirror.
    let c = t.device("gw-c", None).await;
    let out = t.send_rows("gw-c", &[ins(1, 20, "cool", 17.0)]).await;
    assert!(matches!(out, Outcome::Accepted { .. }), "{out:?}");
    assert_eq!(t.mirror_count(&shared, c.device_id).await, 1);
    let lc = t.lineage_of(c.device_id).await;
    let (_, l) = t.get(&format!("/edge/lineages/{lc}")).await;
    assert_eq!(l["data"]["lineage"]["status"], "active", "{l}");
    let (_, rows) = t.get(&format!("/edge/lineages/{lc}/mirror-rows")).await;
    assert_eq!(rows["data"]["source"], "coalesced", "{rows}");
    assert_eq!(rows["data"]["rows"][0]["data"]["mode"], "cool");
    assert_eq!(rows["meta"]["total"], 1);
    let (_, v) = t.get("/edge/registry-reviews").await;
    assert_eq!(v["meta"]["total"], 1, "{v}");

    // Registry detail and the coalesced mirror.
    let (st, v) = t.get(&format!("/edge/registry/{registry_id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["entry"]["status"], "approved");
    assert_eq!(v["data"]["lineage_ids"].as_array().unwrap().len(), 3);
    let (_, v) = t.get("/edge/coalesced-mirrors").await;
    assert_eq!(v["meta"]["total"], 1, "{v}");
    let mirror_id = uuid(&v["data"][0]["id"]);
    assert_eq!(v["data"][0]["mirror_table_name"], shared.as_str());
    let (st, v) = t.get(&format!("/edge/coalesced-mirrors/{mirror_id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["lineages"].as_array().unwrap().len(), 3);

    // Consolidation: dry run counts, the real run copies and rebinds the per-device lineage.
    let (st, v) = t
        .post(
            "/edge/coalesced-mirrors/device_state/consolidate",
            json!({"dry_run": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let rep = &v["data"][0];
    assert_eq!(rep["dry_run"], true);
    assert_eq!(rep["rows_total"], 2, "{v}");
    assert_eq!(rep["rows_copied"], 0);
    assert_eq!(rep["sources"][0]["mirror_table_name"], own_mirror.as_str());
    assert_eq!(t.mirror_count(&shared, d.device_id).await, 0);
    let (st, v) = t
        .post(
            "/edge/coalesced-mirrors/device_state/consolidate",
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["rows_copied"], 2, "{v}");
    assert_eq!(v["data"][0]["sources"][0]["rebound"], true, "{v}");
    assert_eq!(t.mirror_count(&shared, d.device_id).await, 2);
    // Idempotent: a second run copies nothing newer.
    let (_, v) = t
        .post(
            "/edge/coalesced-mirrors/device_state/consolidate",
            json!({}),
        )
        .await;
    assert_eq!(v["data"][0]["rows_total"], 0, "already rebound: {v}");
    // The rebound device now writes to the shared mirror.
    t.send_rows(DEVICE, &[ins(3, 3, "heat", 22.0)]).await;
    assert_eq!(t.mirror_count(&shared, d.device_id).await, 3);
    let (st, v) = t
        .post(
            "/edge/coalesced-mirrors/no_such_table/consolidate",
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn registry_routes_refuse_bad_callers_and_other_tenants() {
    let t = T::new().await;
    let d = t.env.device.clone();
    t.patch_mode("fleet").await;
    t.send_rows(DEVICE, &[ins(1, 1, "heat", 20.5)]).await;
    let (_, v) = t.get("/edge/registry-reviews").await;
    let review = uuid(&v["data"][0]["id"]);
    assert_eq!(v["data"][0]["scope"], "fleet");
    assert_eq!(v["data"][0]["scope_id"], d.fleet_id.to_string());
    let rel = format!("/edge/registry-reviews/{review}");

    // 401 without a token.
    let (st, _) = t
        .req(Method::GET, d.org_id, d.project_id, &rel, None, None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // 403: a view-only caller may read but not claim.
    let viewer = token(d.org_id, vec![d.project_id], false);
    let (st, _) = t
        .req(
            Method::GET,
            d.org_id,
            d.project_id,
            &rel,
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = t
        .req(
            Method::POST,
            d.org_id,
            d.project_id,
            &format!("{rel}/claim"),
            Some(&viewer),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    // Another org's caller, in its own project: the review does not exist there.
    let (other_org, other_project) = (Uuid::now_v7(), Uuid::now_v7());
    let other = token(other_org, vec![other_project], true);
    for (m, path, body) in [
        (Method::GET, rel.clone(), None),
        (Method::POST, format!("{rel}/claim"), Some(json!({}))),
        (
            Method::POST,
            format!("{rel}/abandon"),
            Some(json!({"action_version": 1})),
        ),
    ] {
        let (st, v) = t
            .req(m, other_org, other_project, &path, Some(&other), body)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let (_, v) = t
        .req(
            Method::GET,
            other_org,
            other_project,
            "/edge/registry",
            Some(&other),
            None,
        )
        .await;
    assert_eq!(v["meta"]["total"], 0, "{v}");
    // 404 for unknown and malformed ids, 400 for bad filters and bodies, 405 for wrong methods.
    let (st, _) = t.get(&format!("/edge/registry/{}", Uuid::now_v7())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = t.get("/edge/coalesced-mirrors/not-a-uuid").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = t.get("/edge/registry?status=maybe").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, v) = t
        .post(&format!("{rel}/reject"), json!({"action_version": 1}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a reject needs a reason: {v}");
    let (st, _) = t
        .get("/edge/coalesced-mirrors/device_state/consolidate")
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    // Abandon hands the hash back to a per-device review; later sightings stay per device.
    let (st, v) = t
        .post(
            &format!("{rel}/abandon"),
            json!({"action_version": 1, "reason": "per device after all"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["status"], "abandoned");
    let (st, v) = t.post(&format!("{rel}/claim"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (_, v) = t.get("/edge/schema-reviews?status=queued").await;
    assert_eq!(v["meta"]["total"], 1, "{v}");
    t.send_rows(DEVICE, &[ins(2, 2, "cool", 18.0)]).await;
    let (_, v) = t.get("/edge/registry-reviews").await;
    assert_eq!(v["meta"]["total"], 1, "no new registry review: {v}");
    let (_, v) = t.get("/edge/registry").await;
    assert_eq!(v["data"][0]["status"], "abandoned");
}
