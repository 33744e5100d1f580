//! The routes of cloud.md §10, one file per resource; this module puts them in one axum
//! [`Router`] with the OpenAPI document (utoipa-axum: each route is registered with its
//! `#[utoipa::path]`, so paths, methods and the document are written once).
//!
//! Answers the router itself gives, as the API always gave them:
//! - a path no route has: `404 not_found` ("route not found"), after the caller is checked when
//!   it is under the project prefix (so a request without a token is 401 there);
//! - a route asked with another method: the caller is checked, then `405 method_not_allowed`
//!   with `Allow` (set by the router);
//! - `GET /openapi.json`: the document (no auth; any other method is a 404).
//!
//! # Layout
//! - [`lineages`] — lineages, staged and mirror rows, delete, reset-materialization, unblock
//! - [`reviews`] — schema reviews and the dry-run classification
//! - [`registry`] — registry entries and reviews, shared mirrors, consolidation
//! - [`policy`] — the project policy
//! - [`events`] — the governance events feed
//! - [`fleet`] — the fleet's sync health, worst first (observability.md §4)

pub mod events;
pub mod fleet;
pub mod lineages;
pub mod policy;
pub mod registry;
pub mod reviews;

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::Value;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{json_response, ApiError};
use super::body;
use super::docs::{complete, exclusive_query, ApiDoc};
use super::extract::Caller;
use super::{Api, BASE};

/// The routes and the document, built once per process (the state is given per [`Api`]).
fn built() -> &'static (Router<Arc<Api>>, Value) {
    static BUILT: OnceLock<(Router<Arc<Api>>, Value)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .routes(routes!(lineages::list_lineages))
            .routes(routes!(lineages::get_lineage, lineages::delete_lineage))
            .routes(routes!(lineages::staged_rows))
            .routes(routes!(lineages::mirror_rows))
            .routes(routes!(lineages::reset))
            .routes(routes!(lineages::unblock))
            .routes(routes!(reviews::list_reviews))
            .routes(routes!(reviews::get_review))
            .routes(routes!(reviews::claim))
            .routes(routes!(reviews::approve))
            .routes(routes!(reviews::reject))
            .routes(routes!(reviews::schema_classify))
            .routes(routes!(policy::get_policy, policy::patch_policy))
            .routes(routes!(events::events))
            .routes(routes!(fleet::fleet_health))
            .routes(routes!(registry::list_registry))
            .routes(routes!(registry::get_registry))
            .routes(routes!(registry::list_registry_reviews))
            .routes(routes!(registry::get_registry_review))
            .routes(routes!(registry::registry_claim))
            .routes(routes!(registry::registry_approve))
            .routes(routes!(registry::registry_reject))
            .routes(routes!(registry::registry_abandon))
            .routes(routes!(registry::list_coalesced))
            .routes(routes!(registry::get_coalesced))
            .routes(routes!(registry::consolidate))
            .split_for_parts();
        let mut doc = serde_json::to_value(doc).unwrap_or(Value::Null);
        complete(&mut doc);
        exclusive_query(
            &mut doc,
            "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/mirror-rows",
            "get",
            "page",
            "after",
        );
        if let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
            body::refine(schemas);
        }
        let router = router
            .method_not_allowed_fallback(method_not_allowed)
            .route("/openapi.json", any(openapi_json))
            .fallback(no_route);
        (router, doc)
    })
}

/// The API's router over `api`.
pub fn router(api: Arc<Api>) -> Router {
    built().0.clone().with_state(api)
}

/// The OpenAPI document of the router.
pub fn document() -> &'static Value {
    &built().1
}

async fn openapi_json(method: Method) -> Response {
    if method == Method::GET {
        json_response(StatusCode::OK, document())
    } else {
        ApiError::not_found("route").into_response()
    }
}

async fn method_not_allowed(_: Caller) -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_route(State(api): State<Arc<Api>>, mut parts: Parts) -> ApiError {
    if parts.uri.path().starts_with(BASE) {
        if let Err(e) = Caller::from_request_parts(&mut parts, &api).await {
            return e;
        }
    }
    ApiError::not_found("route")
}
