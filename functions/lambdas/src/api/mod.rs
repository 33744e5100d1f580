//! The HTTP API (cloud.md §10): one axum router, served by `lambda_http::run` in the `api`
//! Lambda and by the local runner's listener ([`local`]), so nothing here knows where it runs.
//! Design:
//! - every project request is authenticated first ([`extract::Caller`]); the tenant scope is
//!   the token's org and the path's project, which must be one of the token's projects —
//!   anything else is 404, so another tenant's objects are indistinguishable from missing ones;
//! - reads go straight to [`edge_cloud_store::read`];
//! - mutations need `PROJECT_CAN_MANAGE_DEVICES` and an `Idempotency-Key`; they run in one
//!   transaction that also stores the response under the key, so a retried request gets the
//!   stored answer (same body) or `422 idempotency_key_reused` (different body)
//!   ([`mutation`]);
//! - every answer is the envelope `{"ok":1,"data":…,"meta":…}` / `{"ok":0,"error":{…}}`
//!   ([`answer`]).
//!
//! # Layout
//! - [`auth`] — JWT verification, gateway claims, development tokens
//! - [`claims`] — which token claims hold org, projects, permissions (`EDGE_JWT_CLAIM_*`)
//! - [`answer`] — the success and error envelopes
//! - [`extract`] — the caller (auth, `ORG-ID`, project), path ids, query-string rules
//! - [`mutation`] — permission, `Idempotency-Key`, replay and the mutation's transaction
//! - [`body`] — the mutations' request bodies and their checks
//! - [`routes`] — the router: one file per resource, each route with its OpenAPI operation
//! - [`docs`] — the OpenAPI frame and the documentation-only envelope types
//! - [`openapi`] — the generated OpenAPI document
//! - [`local`] — the router on the runner's listener (its request-body limit)

pub mod answer;
pub mod auth;
pub mod body;
pub mod claims;
pub mod docs;
pub mod extract;
pub mod local;
pub mod mutation;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use axum::http::uri::PathAndQuery;
use axum::http::{Request, Uri};
use axum::Router;
use tower::util::MapRequest;
use tower::ServiceExt as _;

pub use answer::{Answer, ApiError, Success};
pub use extract::Caller;

use crate::api::auth::AuthConfig;
use crate::api::extract::RawPath;
use crate::metrics::CloudMetrics;
use crate::replay_trigger::ReplayTrigger;

/// Everything the API needs, built once per process.
#[derive(Debug, Clone)]
pub struct Api {
    pub pool: deadpool_postgres::Pool,
    pub auth: AuthConfig,
    /// Started after a mutation that opens replay intents (SQS in AWS, nothing locally).
    pub replay_trigger: ReplayTrigger,
    /// Where each request's duration is recorded (`edge_handler_duration_seconds{handler=api}`).
    pub metrics: Arc<CloudMetrics>,
}

impl Api {
    /// An API whose replay intents are picked up by polling (the local runner, tests).
    pub fn new(pool: deadpool_postgres::Pool, auth: AuthConfig) -> Self {
        Api {
            pool,
            auth,
            replay_trigger: ReplayTrigger::Polling,
            metrics: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<CloudMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn with_replay_trigger(mut self, trigger: ReplayTrigger) -> Self {
        self.replay_trigger = trigger;
        self
    }
}

/// The path prefix of every project route.
pub const BASE: &str = "/core/api/v1/projects/";

/// The API's router over `api` (what [`service`] serves; the runner merges other routes in),
/// each request timed.
pub fn router(api: Arc<Api>) -> Router {
    let metrics = Arc::clone(&api.metrics);
    routes::router(api).layer(axum::middleware::from_fn_with_state(metrics, timed))
}

async fn timed(
    axum::extract::State(metrics): axum::extract::State<Arc<CloudMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics.observe(edge_cloud_core::metrics::Handler::Api, started);
    response
}

/// A router as the API serves it: requests' paths have their empty segments dropped before
/// routing (`…/edge//lineages/` is `…/edge/lineages`, as the API always took it).
pub type Service<B> = MapRequest<Router, fn(Request<B>) -> Request<B>>;

/// Serves `router` with the API's path rules (see [`Service`]).
pub fn service<B>(router: Router) -> Service<B> {
    MapRequest::new(router, canonical_path::<B> as fn(Request<B>) -> Request<B>)
}

/// Drops empty segments after the project segment of a project path; the path as sent is kept
/// in [`RawPath`] (an idempotency key is bound to it).
fn canonical_path<B>(mut req: Request<B>) -> Request<B> {
    let sent = req.uri().path().to_owned();
    if let Some(rest) = sent.strip_prefix(BASE) {
        let (project, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let mut canonical = format!("{BASE}{project}");
        for segment in tail.split('/').filter(|s| !s.is_empty()) {
            canonical.push('/');
            canonical.push_str(segment);
        }
        if canonical != sent {
            if let Some(query) = req.uri().query() {
                canonical = format!("{canonical}?{query}");
            }
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = PathAndQuery::try_from(canonical) {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
    req.extensions_mut().insert(RawPath(sent));
    req
}

/// Serves one request in-process (the fixture tests, the benchmark): what `lambda_http::run`
/// does with the router, without the runtime.
pub async fn handle(
    api: &Api,
    req: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body> {
    let svc = service::<lambda_http::Body>(router(Arc::new(api.clone())));
    let response = match svc.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    lambda_http::IntoResponse::into_response(response).await
}
