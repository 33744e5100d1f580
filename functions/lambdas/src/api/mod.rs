//! The HTTP API (cloud.md §10): one router, `lambda_http` request in, response out.
//!
//! The same [`handle`] serves the `api` Lambda (`lambda_http::run`) and the local runner's
//! hyper listener ([`local::serve`]), so nothing here knows where it runs. Design:
//! - every request is authenticated first ([`auth`]); the tenant scope is the token's org and
//!   the path's project, which must be one of the token's projects — anything else is 404, so
//!   another tenant's objects are indistinguishable from missing ones;
//! - reads go straight to [`edge_cloud_store::read`];
//! - mutations need `PROJECT_CAN_MANAGE_DEVICES` and an `Idempotency-Key`; they run in one
//!   transaction that also stores the response under the key, so a retried request gets the
//!   stored answer (same body) or `422 idempotency_key_reused` (different body);
//! - every answer is the envelope `{"ok":1,"data":…,"meta":…}` / `{"ok":0,"error":{…}}`.
//!
//! # Layout
//! - [`auth`] — JWT verification, gateway claims, development tokens
//! - [`routes`] — request parsing and one function per route (documented for OpenAPI)
//! - [`openapi`] — the generated OpenAPI document
//! - [`local`] — serving the router on a TCP listener (the local runner)

pub mod auth;
pub mod local;
pub mod openapi;
pub mod routes;

use lambda_http::http::{header, HeaderMap, Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use edge_cloud_store::error::OpError;
use edge_cloud_store::idempotency::{store_response, stored_response, StoredResponse};
use edge_cloud_store::scope::Scope;

use crate::api::auth::{AuthConfig, Claims, MANAGE_DEVICES};
use crate::replay_trigger::ReplayTrigger;

/// Everything the API needs, built once per process.
#[derive(Debug, Clone)]
pub struct Api {
    pub pool: deadpool_postgres::Pool,
    pub auth: AuthConfig,
    /// Started after a mutation that opens replay intents (SQS in AWS, nothing locally).
    pub replay_trigger: ReplayTrigger,
}

impl Api {
    /// An API whose replay intents are picked up by polling (the local runner, tests).
    pub fn new(pool: deadpool_postgres::Pool, auth: AuthConfig) -> Self {
        Api {
            pool,
            auth,
            replay_trigger: ReplayTrigger::Polling,
        }
    }

    pub fn with_replay_trigger(mut self, trigger: ReplayTrigger) -> Self {
        self.replay_trigger = trigger;
        self
    }
}

/// The path prefix of every project route.
pub const BASE: &str = "/core/api/v1/projects/";

/// An error answer: status, machine-readable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn body(&self) -> Value {
        json!({"ok": 0, "error": {"code": self.code, "message": self.message}})
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(what) => ApiError::not_found(what),
            OpError::Invalid { code, message } => ApiError::bad_request(code, message),
            OpError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            OpError::Store(e) => internal(&e),
        }
    }
}

impl From<edge_cloud_store::StoreError> for ApiError {
    fn from(e: edge_cloud_store::StoreError) -> Self {
        internal(&e)
    }
}

impl From<edge_cloud_store::tokio_postgres::Error> for ApiError {
    fn from(e: edge_cloud_store::tokio_postgres::Error) -> Self {
        internal(&e)
    }
}

/// Database trouble: logged in full, answered without internals (503 when retrying can help).
fn internal(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "api request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the request can be retried",
    )
}

/// A success answer: status, `data`, `meta`.
#[derive(Debug, Clone)]
pub struct Success {
    pub status: StatusCode,
    pub data: Value,
    pub meta: Value,
}

impl Success {
    pub fn data(data: impl Serialize) -> Self {
        Success {
            status: StatusCode::OK,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            meta: json!({}),
        }
    }

    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = meta;
        self
    }

    fn body(&self) -> Value {
        json!({"ok": 1, "data": self.data, "meta": self.meta})
    }
}

pub type Answer = Result<Success, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::Text(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn respond(a: Answer) -> Response<Body> {
    match a {
        Result::Ok(ok) => json_response(ok.status, &ok.body()),
        Err(e) => json_response(e.status, &e.body()),
    }
}

/// The authenticated caller and the project scope of the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub scope: Scope,
}

/// Serves one request (module docs).
pub async fn handle(api: &Api, req: Request) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/openapi.json" && req.method() == Method::GET {
        return json_response(StatusCode::OK, &openapi::document());
    }
    let Some(rest) = path.strip_prefix(BASE) else {
        return respond(Err(ApiError::not_found("route")));
    };
    let claims = match authenticate(api, &req) {
        Result::Ok(c) => c,
        Err(e) => return respond(Err(e)),
    };
    let (project, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let caller = match scope(&claims, req.headers(), project) {
        Result::Ok(scope) => Caller { claims, scope },
        Err(e) => return respond(Err(e)),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    if method == Method::GET {
        return respond(routes::read(api, &caller, &segments, req.uri().query()).await);
    }
    respond(mutate(api, &caller, &method, &path, &segments, &req).await)
}

fn authenticate(api: &Api, req: &Request) -> Result<Claims, ApiError> {
    let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    if api.auth.trust_gateway_claims {
        use lambda_http::request::RequestContext;
        use lambda_http::RequestExt as _;
        if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() {
            if let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()) {
                return auth::claims_from_gateway(&jwt.claims)
                    .map_err(|e| unauthorized(e.to_string()));
            }
        }
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token".into()))?;
    api.auth
        .verify(token)
        .map_err(|e| unauthorized(e.to_string()))
}

fn scope(claims: &Claims, headers: &HeaderMap, project: &str) -> Result<Scope, ApiError> {
    let org = headers
        .get("org-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing_org_id", "the ORG-ID header is required"))?;
    let org = Uuid::parse_str(org.trim())
        .map_err(|e| ApiError::bad_request("invalid_org_id", format!("ORG-ID: {e}")))?;
    if org != claims.org_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "org_mismatch",
            "the ORG-ID header names an organization the token does not belong to",
        ));
    }
    // A project outside the token's list is answered like a missing one.
    let project_id = Uuid::parse_str(project)
        .ok()
        .filter(|p| claims.may_see(*p))
        .ok_or_else(|| ApiError::not_found("project"))?;
    Result::Ok(Scope {
        org_id: org,
        project_id,
    })
}

/// The body hash an idempotency key is bound to: method, path and the body — canonical JSON
/// when it parses (so key order and whitespace do not matter), the raw bytes otherwise.
fn request_hash(method: &Method, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    match serde_json::from_slice::<Value>(body) {
        Result::Ok(v) => h.update(v.to_string().as_bytes()),
        Err(_) => h.update(body),
    }
    hex::encode(h.finalize())
}

fn body_bytes(req: &Request) -> &[u8] {
    match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    }
}

fn replay_stored(stored: StoredResponse) -> Answer {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let ok = stored.body.get("ok").and_then(Value::as_i64) == Some(1);
    if ok {
        Result::Ok(Success {
            status,
            data: stored.body.get("data").cloned().unwrap_or(Value::Null),
            meta: stored.body.get("meta").cloned().unwrap_or(json!({})),
        })
    } else {
        let e = stored.body.get("error");
        let msg = e
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let code = e
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("replayed_error");
        Err(ApiError::new(status, code, msg))
    }
}

/// A mutation: permission, idempotency key, then the route in a transaction that stores its
/// answer (module docs).
async fn mutate(
    api: &Api,
    caller: &Caller,
    method: &Method,
    path: &str,
    segments: &[&str],
    req: &Request,
) -> Answer {
    let op = routes::mutation(method, segments)?;
    // These may open replay intents; the worker is nudged once they are committed.
    let nudge = match &op {
        routes::Op::Approve(_) => Some("schema review approved"),
        routes::Op::RegistryApprove(_) => Some("registry review approved"),
        routes::Op::Consolidate(_) => Some("coalesced mirror consolidated"),
        routes::Op::ResetMaterialization(_) => Some("materialization reset"),
        _ => None,
    };
    if !caller.claims.has(MANAGE_DEVICES) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this action needs the {MANAGE_DEVICES} permission"),
        ));
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "mutations need an Idempotency-Key header (1-255 characters)",
            )
        })?
        .to_owned();
    let body = body_bytes(req);
    let hash = request_hash(method, path, body);
    let org = caller.scope.org_id;
    let mut client = api.pool.get().await.map_err(|e| internal(&e))?;
    if let Some(stored) = stored_response(&**client, org, &key).await? {
        return check_replay(stored, &hash);
    }
    let input = routes::parse_mutation(op, body)?;
    let tx = client.transaction().await?;
    let answer = routes::execute(&*tx, caller, input).await;
    match answer {
        Result::Ok(ok) => {
            let stored = StoredResponse {
                request_hash: hash.clone(),
                status: i32::from(ok.status.as_u16()),
                body: ok.body(),
            };
            if !store_response(&*tx, org, &key, method.as_str(), path, &stored).await? {
                // A concurrent request with the same key committed first: its answer wins.
                tx.rollback().await?;
                return match stored_response(&**client, org, &key).await? {
                    Some(s) => check_replay(s, &hash),
                    None => Err(internal(&"idempotency key vanished")),
                };
            }
            tx.commit().await?;
            if let Some(reason) = nudge {
                api.replay_trigger.nudge(reason).await;
            }
            Result::Ok(ok)
        }
        Err(e) => {
            tx.rollback().await?;
            // Client errors are answers too: the same request gets the same 4xx. Server errors
            // are not stored, so a retry can succeed.
            if e.status.is_client_error() {
                let stored = StoredResponse {
                    request_hash: hash,
                    status: i32::from(e.status.as_u16()),
                    body: e.body(),
                };
                store_response(&**client, org, &key, method.as_str(), path, &stored).await?;
            }
            Err(e)
        }
    }
}

fn check_replay(stored: StoredResponse, hash: &str) -> Answer {
    if stored.request_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        ));
    }
    replay_stored(stored)
}
