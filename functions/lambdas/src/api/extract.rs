//! Who calls and about what: the [`Caller`] (token, `ORG-ID`, the path's project), object ids
//! of the path ([`Id`]) and the query-string rules shared by the read routes.
//!
//! Every project route extracts the [`Caller`] first (an [`Id`] does it itself), so a request
//! without a valid token is 401 whatever else is wrong with it, as it always was.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;
use uuid::Uuid;

use edge_cloud_store::scope::{Page, Scope};

use super::answer::ApiError;
use super::auth::{self, Claims};
use super::claims::{ClaimMapping, ORG_VAR, PROJECTS_VAR};
use super::{Api, BASE};

/// The path as the client sent it (before empty segments were dropped for routing): what an
/// idempotency key is bound to and stored with.
#[derive(Debug, Clone)]
pub struct RawPath(pub String);

/// The path a request was sent to, as sent.
pub(crate) fn raw_path(parts: &Parts) -> String {
    parts
        .extensions
        .get::<RawPath>()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.0.clone())
}

/// The authenticated caller and the project scope of the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub scope: Scope,
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let claims = authenticate(api, parts)?;
        let project = parts
            .uri
            .path()
            .strip_prefix(BASE)
            .map_or("", |rest| rest.split_once('/').map_or(rest, |(p, _)| p));
        let scope = scope(api.auth.claim_mapping(), &claims, &parts.headers, project)?;
        let caller = Caller { claims, scope };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

fn authenticate(api: &Api, parts: &Parts) -> Result<Claims, ApiError> {
    if api.auth.trust_gateway_claims {
        use lambda_http::request::RequestContext;
        use lambda_http::RequestExt as _;
        if let Some(RequestContext::ApiGatewayV2(ctx)) = parts.extensions.request_context_ref() {
            if let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()) {
                return api.auth.gateway_claims(&jwt.claims).map_err(refused);
            }
        }
    }
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(auth::AuthError::Missing)
        .map_err(refused)?;
    api.auth.verify(token).map_err(refused)
}

/// The 401 of a token that was not accepted: `claim_missing` / `claim_invalid` naming the claim
/// when the token verified but its tenant claims do not, else `unauthorized`.
fn refused(e: auth::AuthError) -> ApiError {
    match e {
        auth::AuthError::Claim(c) => {
            ApiError::new(StatusCode::UNAUTHORIZED, c.code(), c.to_string()).with_claim(c.claim())
        }
        other => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", other.to_string()),
    }
}

fn scope(
    mapping: &ClaimMapping,
    claims: &Claims,
    headers: &HeaderMap,
    project: &str,
) -> Result<Scope, ApiError> {
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
            format!(
                "the ORG-ID header names an organization the token does not belong to (the \
                 token's claim {} ({ORG_VAR}) names another)",
                mapping.org_claim()
            ),
        )
        .with_claim(mapping.org_claim()));
    }
    // A project outside the token's list is answered like a missing one (cloud.md §10); the
    // message says where the list comes from, which holds for a missing project too.
    let project_id = Uuid::parse_str(project)
        .ok()
        .filter(|p| claims.may_see(*p))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "project not found among the token's projects (claim {}, {PROJECTS_VAR})",
                    mapping.projects_claim()
                ),
            )
        })?;
    Ok(Scope {
        org_id: org,
        project_id,
    })
}

/// The kind of object an [`Id`] names (its "… not found" message).
pub trait Named {
    const WHAT: &'static str;
}

macro_rules! named {
    ($($ty:ident => $what:literal),* $(,)?) => {$(
        #[doc = concat!("A ", $what, " id in the path.")]
        #[derive(Debug)]
        pub struct $ty;
        impl Named for $ty {
            const WHAT: &'static str = $what;
        }
    )*};
}

named! {
    Lineage => "lineage",
    SchemaReview => "schema review",
    RegistryEntry => "registry entry",
    RegistryReview => "registry review",
    CoalescedMirror => "coalesced mirror",
}

/// The object id of a path `…/edge/{resource}/{id}[/…]`, after the caller is known. A malformed
/// id names no object: answered like a missing one (404).
#[derive(Debug)]
pub struct Id<N>(pub Uuid, pub PhantomData<N>);

impl<N: Named> FromRequestParts<Arc<Api>> for Id<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let segment = ObjectSegment::from_request_parts(parts, api).await?;
        Uuid::parse_str(&segment.0)
            .map(|id| Id(id, PhantomData))
            .map_err(|_| ApiError::not_found(N::WHAT))
    }
}

/// The object segment of a path `…/edge/{resource}/{segment}[/…]` as sent (not decoded), after
/// the caller is known.
#[derive(Debug)]
pub struct ObjectSegment(pub String);

impl FromRequestParts<Arc<Api>> for ObjectSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, api).await?;
        // {BASE}{project}/edge/{resource}/{segment}: routing matched it, so it is there.
        let segment = parts
            .uri
            .path()
            .strip_prefix(BASE)
            .and_then(|rest| rest.split('/').nth(3))
            .unwrap_or_default();
        Ok(ObjectSegment(segment.to_owned()))
    }
}

/// The page parameters of a list (documentation; [`page`] reads them).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// 1-based, default 1
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<i64>,
    /// 1..=500, default 50
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A read: the caller and a pooled connection (taken before the path's ids are read, as it
/// always was) and the query string, read with [`Read::params`].
pub struct Read {
    pub scope: Scope,
    client: deadpool_postgres::Object,
    query: Option<String>,
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Read")
            .field("scope", &self.scope)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl Read {
    /// The connection.
    pub fn db(&self) -> &edge_cloud_store::tokio_postgres::Client {
        &self.client
    }

    /// The query string's parameters; one outside `allowed` is a 400.
    pub fn params(&self, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
        params(self.query.as_deref(), allowed)
    }
}

impl FromRequestParts<Arc<Api>> for Read {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, api).await?;
        let client = api.pool.get().await?;
        Ok(Read {
            scope: caller.scope,
            client,
            query: parts.uri.query().map(str::to_owned),
        })
    }
}

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;
/// The highest page number.
pub const MAX_PAGE: i64 = 1_000_000;

/// The query string's parameters; one outside `allowed` is a 400.
fn params(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; this route takes: {}",
                    allowed.join(", ")
                ),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// `page` and `limit` (defaults 1 and [`DEFAULT_LIMIT`]).
pub(crate) fn page(p: &HashMap<String, String>) -> Result<Page, ApiError> {
    let num = |k: &str, default: i64| -> Result<i64, ApiError> {
        match p.get(k) {
            None => Ok(default),
            Some(v) => v.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid_pagination", format!("{k} must be an integer"))
            }),
        }
    };
    let page = num("page", 1)?;
    let limit = num("limit", DEFAULT_LIMIT)?;
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(
            "invalid_pagination",
            "page must be between 1 and 1000000",
        ));
    }
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_pagination",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(Page { page, limit })
}

/// An optional UUID parameter.
pub(crate) fn uuid_param(p: &HashMap<String, String>, k: &str) -> Result<Option<Uuid>, ApiError> {
    p.get(k)
        .map(|v| {
            Uuid::parse_str(v)
                .map_err(|e| ApiError::bad_request("invalid_parameter", format!("{k}: {e}")))
        })
        .transpose()
}

/// The `meta` of a page of a list.
pub(crate) fn list_meta(page: Page, total: i64) -> Value {
    json!({"page": page.page, "limit": page.limit, "total": total})
}
