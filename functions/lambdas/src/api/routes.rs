//! One function per route of cloud.md §10, with its request parsing and its OpenAPI
//! description (`#[utoipa::path]`), so the document cannot drift from the code.

use std::collections::HashMap;

use edge_cloud_store::tokio_postgres::GenericClient;
use lambda_http::http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use edge_cloud_core::classify::{classify, ClassifyPolicy, Disposition};
use edge_cloud_core::review::{ColumnAction, ColumnActionKind, ReviewState};
use edge_cloud_store::backpressure::reset_materialization;
use edge_cloud_store::coalesce as coalesce_store;
use edge_cloud_store::core::policy::PolicyPatch;
use edge_cloud_store::error::ResetError;
use edge_cloud_store::lineage::delete_lineage as delete_lineage_store;
use edge_cloud_store::lineage::{bindings, schema_columns};
use edge_cloud_store::policy as policy_store;
use edge_cloud_store::read::reviews::{DeviceReview, RegistryReview};
use edge_cloud_store::read::{self as query, LineageFilter, RegistryFilter};
use edge_cloud_store::review as review_store;
use edge_cloud_store::scope::{Page, Scope};
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};

use super::{Answer, Api, ApiError, Caller, Success};

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

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

fn page(p: &HashMap<String, String>) -> Result<Page, ApiError> {
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
    if !(1..=1_000_000).contains(&page) {
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

fn uuid_param(p: &HashMap<String, String>, k: &str) -> Result<Option<Uuid>, ApiError> {
    p.get(k)
        .map(|v| {
            Uuid::parse_str(v)
                .map_err(|e| ApiError::bad_request("invalid_parameter", format!("{k}: {e}")))
        })
        .transpose()
}

fn id(segment: &str, what: &str) -> Result<Uuid, ApiError> {
    // A malformed id names no object: answered like a missing one.
    Uuid::parse_str(segment).map_err(|_| ApiError::not_found(what))
}

fn list_meta(page: Page, total: i64) -> Value {
    json!({"page": page.page, "limit": page.limit, "total": total})
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// GET routes (and the read-only dry-run classification).
pub async fn read(api: &Api, caller: &Caller, seg: &[&str], query: Option<&str>) -> Answer {
    let c = api.pool.get().await.map_err(|e| super::internal(&e))?;
    let s = caller.scope;
    match seg {
        ["edge", "lineages"] => list_lineages(&**c, s, query).await,
        ["edge", "lineages", l] => get_lineage(&**c, s, id(l, "lineage")?, query).await,
        ["edge", "lineages", l, "staged-rows"] => {
            staged_rows(&**c, s, id(l, "lineage")?, query).await
        }
        ["edge", "lineages", l, "mirror-rows"] => {
            mirror_rows(&**c, s, id(l, "lineage")?, query).await
        }
        ["edge", "schema-reviews"] => list_reviews(&**c, s, query).await,
        ["edge", "schema-reviews", r] => get_review(&**c, s, id(r, "schema review")?, query).await,
        ["edge", "policy"] => get_policy(&**c, s, query).await,
        ["edge", "events"] => events(&**c, s, query).await,
        ["edge", "registry"] => list_registry(&**c, s, query).await,
        ["edge", "registry", g] => get_registry(&**c, s, id(g, "registry entry")?, query).await,
        ["edge", "registry-reviews"] => list_registry_reviews(&**c, s, query).await,
        ["edge", "registry-reviews", r] => {
            get_registry_review(&**c, s, id(r, "registry review")?, query).await
        }
        ["edge", "coalesced-mirrors"] => list_coalesced(&**c, s, query).await,
        ["edge", "coalesced-mirrors", m] => {
            get_coalesced(&**c, s, id(m, "coalesced mirror")?, query).await
        }
        ["edge", "schema-classify"] | ["edge", "coalesced-mirrors", _, "consolidate"] => {
            Err(method_not_allowed())
        }
        _ => Err(ApiError::not_found("route")),
    }
}

/// Lists lineages.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages", tag = "lineages",
    params(("project_id" = Uuid, Path), LineageQuery),
    responses((status = 200, description = "`data`: lineages; `meta`: page, limit, total", body = ListLineages),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_lineages<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(
        query,
        &[
            "device_id",
            "fleet_id",
            "status",
            "source_table",
            "page",
            "limit",
        ],
    )?;
    let pg = page(&p)?;
    let status = p.get("status").cloned();
    if let Some(st) = &status {
        if st != "active" && st != "paused" {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "status must be active or paused",
            ));
        }
    }
    let f = LineageFilter {
        device_id: uuid_param(&p, "device_id")?,
        fleet_id: uuid_param(&p, "fleet_id")?,
        status,
        source_table: p.get("source_table").cloned(),
    };
    let (rows, total) = query::list_lineages(c, s, &f, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// Query of the lineage list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LineageQuery {
    device_id: Option<Uuid>,
    fleet_id: Option<Uuid>,
    /// `active` | `paused`
    status: Option<String>,
    source_table: Option<String>,
    /// 1-based, default 1
    page: Option<i64>,
    /// 1..=500, default 50
    limit: Option<i64>,
}

/// Page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PageQuery {
    /// 1-based, default 1
    page: Option<i64>,
    /// 1..=500, default 50
    limit: Option<i64>,
}

/// A lineage with its schema versions, bindings and replay intent.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::LineageDetail>)), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_lineage<C: GenericClient>(c: &C, s: Scope, l: Uuid, query: Option<&str>) -> Answer {
    params(query, &[])?;
    Ok(Success::data(query::lineage_detail(c, s, l).await?))
}

/// Staged rows of a lineage in replay order.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/staged-rows", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::StagedRowView>>)), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn staged_rows<C: GenericClient>(c: &C, s: Scope, l: Uuid, query: Option<&str>) -> Answer {
    let p = params(query, &["page", "limit"])?;
    let pg = page(&p)?;
    let (rows, total) = query::staged_rows(c, s, l, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// Query of the mirror rows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct MirrorQuery {
    /// Comma-separated business columns (default: all); an unknown name is a 400.
    columns: Option<String>,
    /// 1-based (OFFSET paging; prefer `after` for deep pages)
    page: Option<i64>,
    limit: Option<i64>,
    /// `meta.next_cursor` of the previous page: keyset paging (not with `page`; `meta.page` is
    /// then null)
    after: Option<String>,
}

/// Live mirror rows of a lineage in primary-key order. `meta`: page, limit, total (the
/// device's live rows, cached for up to 5 s), next_cursor (null on the last page).
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/mirror-rows", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), MirrorQuery),
    responses((status = 200, body = inline(Envelope<query::MirrorRows>)), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn mirror_rows<C: GenericClient>(c: &C, s: Scope, l: Uuid, query: Option<&str>) -> Answer {
    let p = params(query, &["columns", "page", "limit", "after"])?;
    if p.contains_key("after") && p.contains_key("page") {
        return Err(ApiError::bad_request(
            "invalid_pagination",
            "give page or after, not both",
        ));
    }
    let pg = page(&p)?;
    let cols: Option<Vec<String>> = p.get("columns").map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    });
    if cols.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "columns must name at least one column",
        ));
    }
    let after = p.get("after").map(String::as_str);
    let (rows, total, next) = query::mirror_rows(c, s, l, cols.as_deref(), pg, after).await?;
    let mut meta = list_meta(pg, total);
    meta["next_cursor"] = json!(next);
    if after.is_some() {
        // A keyset page has no page number.
        meta["page"] = Value::Null;
    }
    Ok(Success::data(rows).with_meta(meta))
}

/// Query of the review list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ReviewQuery {
    /// queued | in_review | approved | rejected | abandoned
    status: Option<String>,
    lineage_id: Option<Uuid>,
    page: Option<i64>,
    limit: Option<i64>,
}

/// Lists schema reviews, newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews", tag = "reviews",
    params(("project_id" = Uuid, Path), ReviewQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::ReviewView>>)), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_reviews<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(query, &["status", "lineage_id", "page", "limit"])?;
    let pg = page(&p)?;
    let status = p.get("status").map(String::as_str);
    if let Some(st) = status {
        if ReviewState::parse(st).is_none() {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "status must be queued, in_review, approved, rejected or abandoned",
            ));
        }
    }
    let (rows, total) =
        query::list_reviews(c, s, status, uuid_param(&p, "lineage_id")?, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// One schema review.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::ReviewView>)), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_review<C: GenericClient>(c: &C, s: Scope, r: Uuid, query: Option<&str>) -> Answer {
    params(query, &[])?;
    Ok(Success::data(query::review(c, s, r, false).await?))
}

/// The project policy (production defaults until patched).
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/policy", tag = "policy",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<policy_store::PolicyView>))),
    security(("bearer" = [])))]
async fn get_policy<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    params(query, &[])?;
    Ok(Success::data(policy_store::policy_view(c, s).await?))
}

/// Query of the events feed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventsQuery {
    /// The last cursor seen (`meta.next_cursor`); 0 or absent = from the start.
    after: Option<String>,
    /// 1..=500, default 100
    limit: Option<i64>,
}

/// Governance events after a cursor, oldest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/events", tag = "events",
    params(("project_id" = Uuid, Path), EventsQuery),
    responses((status = 200, description = "`meta.next_cursor` continues the feed", body = inline(Envelope<Vec<query::EventView>>)),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn events<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(query, &["after", "limit"])?;
    let after = match p.get("after") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "after must be a cursor from this feed")
        })?,
    };
    let limit = match p.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_pagination",
                    format!("limit must be between 1 and {MAX_LIMIT}"),
                )
            })?,
    };
    let rows = query::events(c, s, after, limit).await?;
    let next = rows.last().map_or(after.to_string(), |e| e.id.clone());
    Ok(Success::data(rows).with_meta(json!({"next_cursor": next, "limit": limit})))
}

/// The mutations, recognised from method + path before any body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteLineage(Uuid),
    ResetMaterialization(Uuid),
    Claim(Uuid),
    Approve(Uuid),
    Reject(Uuid),
    Classify,
    PatchPolicy,
    RegistryClaim(Uuid),
    RegistryApprove(Uuid),
    RegistryReject(Uuid),
    RegistryAbandon(Uuid),
    /// Consolidation of a source table's shared mirror(s).
    Consolidate(String),
}

/// Which mutation (404/405/501 otherwise).
pub fn mutation(method: &Method, seg: &[&str]) -> Result<Op, ApiError> {
    let post = *method == Method::POST;
    match seg {
        ["edge", "lineages", l] if *method == Method::DELETE => {
            Ok(Op::DeleteLineage(id(l, "lineage")?))
        }
        ["edge", "lineages", l, "reset-materialization"] if post => {
            Ok(Op::ResetMaterialization(id(l, "lineage")?))
        }
        ["edge", "schema-reviews", r, action] if post => {
            let r = id(r, "schema review")?;
            match *action {
                "claim" => Ok(Op::Claim(r)),
                "approve" => Ok(Op::Approve(r)),
                "reject" => Ok(Op::Reject(r)),
                _ => Err(ApiError::not_found("route")),
            }
        }
        ["edge", "schema-classify"] if post => Ok(Op::Classify),
        ["edge", "policy"] if *method == Method::PATCH => Ok(Op::PatchPolicy),
        ["edge", "registry-reviews", r, action] if post => {
            let r = id(r, "registry review")?;
            match *action {
                "claim" => Ok(Op::RegistryClaim(r)),
                "approve" => Ok(Op::RegistryApprove(r)),
                "reject" => Ok(Op::RegistryReject(r)),
                "abandon" => Ok(Op::RegistryAbandon(r)),
                _ => Err(ApiError::not_found("route")),
            }
        }
        ["edge", "coalesced-mirrors", t, "consolidate"] if post => {
            Ok(Op::Consolidate((*t).to_owned()))
        }
        ["edge", "registry"]
        | ["edge", "registry", _]
        | ["edge", "registry-reviews"]
        | ["edge", "registry-reviews", _]
        | ["edge", "coalesced-mirrors"]
        | ["edge", "coalesced-mirrors", _]
        | ["edge", "coalesced-mirrors", _, "consolidate"] => Err(method_not_allowed()),
        ["edge", "lineages"]
        | ["edge", "lineages", _]
        | ["edge", "lineages", _, _]
        | ["edge", "schema-reviews"]
        | ["edge", "schema-reviews", _]
        | ["edge", "policy"]
        | ["edge", "events"] => Err(method_not_allowed()),
        _ => Err(ApiError::not_found("route")),
    }
}

/// The envelope of a success (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Envelope<T> {
    /// Always 1.
    ok: i32,
    data: T,
    #[schema(value_type = Object)]
    meta: Value,
}

/// A list of lineages (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ListLineages {
    ok: i32,
    data: Vec<query::LineageView>,
    /// `{page, limit, total}`
    #[schema(value_type = Object)]
    meta: Value,
}

/// `{"ok":0,"error":{"code","message"}}`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Always 0.
    ok: i32,
    error: ErrorDetail,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable: not_found, unauthorized, forbidden, invalid_body, invalid_pagination,
    /// unknown_column, stale_action_version, invalid_review_state, idempotency_key_reused, …
    code: String,
    message: String,
}

/// Claim body (optional): `{"action_version": n}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    #[serde(default)]
    pub action_version: Option<i32>,
}

/// The column actions of cloud.md §5.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Mirror,
    Map,
    Ignore,
    Defer,
    AutoCreateAndMap,
}

/// One column action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnActionBody {
    pub source_column_name: String,
    pub action: ActionKind,
    /// `mirror` only: rename in the mirror table.
    #[serde(default)]
    pub mirror_column_name: Option<String>,
    /// `mirror` only, first approval only; must start with `edge_mirror_`.
    #[serde(default)]
    pub mirror_table_name: Option<String>,
    /// `map` only: an existing data point of the device.
    #[serde(default)]
    pub device_data_point_id: Option<Uuid>,
}

/// Approve body. Every column of the reviewed schema needs exactly one action; primary-key
/// columns must be `mirror`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    pub action_version: i32,
    pub column_actions: Vec<ColumnActionBody>,
}

/// Reject body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub action_version: i32,
    pub reason: String,
}

/// A column of the dry-run classification (SQLite `PRAGMA table_info` fields).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyColumn {
    pub name: String,
    /// Declared SQLite type, e.g. `INTEGER`, `VARCHAR(20)`; the affinity is derived from it.
    #[serde(rename = "type", default)]
    pub decl_type: String,
    #[serde(default)]
    pub not_null: bool,
    /// 0 = not in the primary key, else 1-based position.
    #[serde(default)]
    pub pk: i64,
}

/// Dry-run classification: the candidate columns against either a lineage's approved schema or
/// an explicit `approved_columns` list (neither = a first schema).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    pub table_name: String,
    pub columns: Vec<ClassifyColumn>,
    #[serde(default)]
    pub lineage_id: Option<Uuid>,
    #[serde(default)]
    pub approved_columns: Option<Vec<ClassifyColumn>>,
    /// Overrides the project's policy for the dry run.
    #[serde(default)]
    pub allow_additive_continue: Option<bool>,
}

/// Policy patch: any subset of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatchBody {
    pub allow_additive_continue: Option<bool>,
    pub allow_auto_create_device_data_points: Option<bool>,
    /// ≥ 1
    pub max_pending_rows_per_lineage: Option<i64>,
    /// ≥ 1
    pub max_pending_bytes_per_lineage: Option<i64>,
    /// 1..=100
    pub resume_threshold_percent: Option<i32>,
    /// ≥ 1
    pub circuit_breaker_failures: Option<i32>,
    /// none | project | fleet
    pub schema_coalescing_mode: Option<String>,
}

/// A parsed mutation.
#[derive(Debug)]
pub enum Input {
    DeleteLineage(Uuid),
    ResetMaterialization(Uuid),
    Claim(Uuid, ClaimBody),
    Approve(Uuid, ApproveBody),
    Reject(Uuid, RejectBody),
    Classify(ClassifyBody),
    PatchPolicy(PolicyPatchBody),
    RegistryClaim(Uuid, ClaimBody),
    RegistryApprove(Uuid, ApproveBody),
    RegistryClose(Uuid, CloseBody, bool),
    Consolidate(String, ConsolidateBody),
}

/// Registry reject/abandon body: reject needs a reason, abandon may give one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    pub action_version: i32,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Consolidate body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateBody {
    /// Count only (default false).
    #[serde(default)]
    pub dry_run: bool,
    /// Fleet mode: only this fleet's shared mirror (default: every shared mirror of the table).
    #[serde(default)]
    pub fleet_id: Option<Uuid>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("request body is not valid: {e}"))
    })
}

/// Parses the body a mutation needs (400 with serde's message otherwise).
pub fn parse_mutation(op: Op, body: &[u8]) -> Result<Input, ApiError> {
    Ok(match op {
        Op::DeleteLineage(l) => Input::DeleteLineage(l),
        Op::ResetMaterialization(l) => Input::ResetMaterialization(l),
        Op::Claim(r) => Input::Claim(r, json_body(body, true)?),
        Op::Approve(r) => Input::Approve(r, json_body(body, false)?),
        Op::Reject(r) => {
            let b: RejectBody = json_body(body, false)?;
            if b.reason.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "reason must not be empty",
                ));
            }
            Input::Reject(r, b)
        }
        Op::Classify => Input::Classify(json_body(body, false)?),
        Op::PatchPolicy => Input::PatchPolicy(validate_policy(json_body(body, false)?)?),
        Op::RegistryClaim(r) => Input::RegistryClaim(r, json_body(body, true)?),
        Op::RegistryApprove(r) => Input::RegistryApprove(r, json_body(body, false)?),
        Op::RegistryReject(r) => {
            let b: CloseBody = json_body(body, false)?;
            if b.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "reason must not be empty",
                ));
            }
            Input::RegistryClose(r, b, false)
        }
        Op::RegistryAbandon(r) => Input::RegistryClose(r, json_body(body, false)?, true),
        Op::Consolidate(t) => Input::Consolidate(t, json_body(body, true)?),
    })
}

fn validate_policy(p: PolicyPatchBody) -> Result<PolicyPatchBody, ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request("invalid_policy", m.to_owned()));
    if p.allow_additive_continue.is_none()
        && p.allow_auto_create_device_data_points.is_none()
        && p.max_pending_rows_per_lineage.is_none()
        && p.max_pending_bytes_per_lineage.is_none()
        && p.resume_threshold_percent.is_none()
        && p.circuit_breaker_failures.is_none()
        && p.schema_coalescing_mode.is_none()
    {
        return bad("the patch sets no field");
    }
    if p.max_pending_rows_per_lineage.is_some_and(|v| v < 1) {
        return bad("max_pending_rows_per_lineage must be at least 1");
    }
    if p.max_pending_bytes_per_lineage.is_some_and(|v| v < 1) {
        return bad("max_pending_bytes_per_lineage must be at least 1");
    }
    if p.resume_threshold_percent
        .is_some_and(|v| !(1..=100).contains(&v))
    {
        return bad("resume_threshold_percent must be between 1 and 100");
    }
    if p.circuit_breaker_failures.is_some_and(|v| v < 1) {
        return bad("circuit_breaker_failures must be at least 1");
    }
    if let Some(m) = &p.schema_coalescing_mode {
        if !["none", "project", "fleet"].contains(&m.as_str()) {
            return bad("schema_coalescing_mode must be none, project or fleet");
        }
    }
    Ok(p)
}

/// Runs a parsed mutation in the caller's transaction.
pub async fn execute<C: GenericClient + Sync>(c: &C, caller: &Caller, input: Input) -> Answer {
    let s = caller.scope;
    let actor = caller.claims.sub.as_str();
    match input {
        Input::DeleteLineage(l) => delete_lineage(c, s, l).await,
        Input::ResetMaterialization(l) => reset(c, s, l).await,
        Input::Claim(r, b) => claim(c, s, r, actor, b).await,
        Input::Approve(r, b) => approve(c, s, r, actor, b).await,
        Input::Reject(r, b) => reject(c, s, r, actor, b).await,
        Input::Classify(b) => schema_classify(c, s, b).await,
        Input::PatchPolicy(b) => patch_policy(c, s, b).await,
        Input::RegistryClaim(r, b) => registry_claim(c, s, r, actor, b).await,
        Input::RegistryApprove(r, b) => registry_approve(c, s, r, actor, b).await,
        Input::RegistryClose(r, b, abandon) => registry_close(c, s, r, actor, b, abandon).await,
        Input::Consolidate(t, b) => consolidate(c, s, &t, b).await,
    }
}

/// Deletes a lineage and its staged rows, reviews, bindings and intents (the mirror stays).
#[utoipa::path(delete, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "`data`: {lineage_id}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_lineage<C: GenericClient>(c: &C, s: Scope, l: Uuid) -> Answer {
    delete_lineage_store(c, s, l).await?;
    Ok(Success::data(json!({"lineage_id": l})))
}

/// Clears the circuit breaker, retries failed rows and resumes the device if it was paused.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/reset-materialization", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "`data`: {lineage_id, resumed, staged_row_count, status}"),
        (status = 404, body = ErrorBody), (status = 409, description = "not blocked, or a review is open", body = ErrorBody)),
    security(("bearer" = [])))]
async fn reset<C: GenericClient + Sync>(c: &C, s: Scope, l: Uuid) -> Answer {
    // Scope first: the store function takes a bare id.
    query::lineage(c, s, l).await?;
    match reset_materialization(c, l, time::OffsetDateTime::now_utc()).await {
        Ok(report) => Ok(Success::data(report)),
        Err(ResetError::Refused(r)) => {
            use edge_cloud_core::backpressure::ResetRefusal;
            let code = match r {
                ResetRefusal::NotBlocked => "lineage_not_blocked",
                ResetRefusal::ReviewOpen => "review_open",
                ResetRefusal::AwaitingSchema => "awaiting_schema_review",
            };
            Err(ApiError::new(StatusCode::CONFLICT, code, r.to_string()))
        }
        Err(ResetError::Store(e)) => Err(e.into()),
    }
}

/// queued → in_review.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/claim", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body(content = ClaimBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<query::ReviewView>)), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn claim<C: GenericClient>(c: &C, s: Scope, r: Uuid, actor: &str, b: ClaimBody) -> Answer {
    Ok(Success::data(
        review_store::claim::<DeviceReview, _>(c, s, r, actor, b.action_version).await?,
    ))
}

/// in_review → approved: mirror DDL, bindings, replay intent, lineage status and the event, in
/// one transaction. `meta` tells the lineage status, mirror table and replay intent.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/approve", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = ApproveBody,
    responses((status = 200, body = inline(Envelope<query::ReviewView>)), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "wrong state or stale action_version", body = ErrorBody)),
    security(("bearer" = [])))]
async fn approve<C: GenericClient>(
    c: &C,
    s: Scope,
    r: Uuid,
    actor: &str,
    b: ApproveBody,
) -> Answer {
    let actions = column_actions(b.column_actions);
    let out = review_store::approve::<DeviceReview, _>(
        c,
        s,
        r,
        actor,
        b.action_version,
        &actions,
        Uuid::now_v7,
    )
    .await?;
    Ok(Success::data(&out.review).with_meta(json!({
        "lineage_status": out.lineage_status,
        "mirror_table_name": out.mirror_table_name,
        "replay_intent_id": out.replay_intent_id,
        "blocking_deferred": out.blocking_deferred,
    })))
}

fn column_actions(body: Vec<ColumnActionBody>) -> Vec<ColumnAction> {
    body.into_iter()
        .map(|a| ColumnAction {
            source_column_name: a.source_column_name,
            action: match a.action {
                ActionKind::Mirror => ColumnActionKind::Mirror,
                ActionKind::Map => ColumnActionKind::Map,
                ActionKind::Ignore => ColumnActionKind::Ignore,
                ActionKind::Defer => ColumnActionKind::Defer,
                ActionKind::AutoCreateAndMap => ColumnActionKind::AutoCreateAndMap,
            },
            mirror_column_name: a.mirror_column_name,
            mirror_table_name: a.mirror_table_name,
            device_data_point_id: a.device_data_point_id,
        })
        .collect()
}

/// queued | in_review → rejected; the lineage stays paused, staged rows are kept.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/reject", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = RejectBody,
    responses((status = 200, body = inline(Envelope<query::ReviewView>)), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn reject<C: GenericClient>(c: &C, s: Scope, r: Uuid, actor: &str, b: RejectBody) -> Answer {
    Ok(Success::data(
        review_store::reject(c, s, r, actor, b.action_version, &b.reason).await?,
    ))
}

/// Dry-run classification with the same function intake uses. Changes nothing; like every POST
/// it takes an Idempotency-Key.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-classify", tag = "reviews",
    params(("project_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = ClassifyBody,
    responses((status = 200, description = "`data`: {schema_hash, classification, disposition, diff, summary}"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn schema_classify<C: GenericClient>(c: &C, s: Scope, b: ClassifyBody) -> Answer {
    let fp = |cols: &[ClassifyColumn]| -> Vec<ColumnFingerprint> {
        cols.iter()
            .map(|c| {
                ColumnFingerprint::from_table_info(
                    c.name.clone(),
                    &c.decl_type,
                    i64::from(c.not_null),
                    c.pk,
                )
            })
            .collect()
    };
    if b.columns.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "columns must not be empty",
        ));
    }
    let new = SchemaColumns::new(b.table_name.clone(), fp(&b.columns));
    let hash = new.schema_hash();
    let policy = policy_store::policy_view(c, s).await?;
    let mut bound = false;
    let approved = match (b.lineage_id, &b.approved_columns) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give lineage_id or approved_columns, not both",
            ))
        }
        (Some(l), None) => {
            let lineage = query::lineage(c, s, l).await?;
            bound = bindings(c, l, &hash).await?.is_some();
            match lineage.approved_schema_hash {
                Some(h) => schema_columns(c, l, &h).await?,
                None => None,
            }
        }
        (None, Some(cols)) => Some(SchemaColumns::new(b.table_name.clone(), fp(cols))),
        (None, None) => None,
    };
    let result = classify(
        approved.as_ref(),
        bound,
        Some(&new),
        ClassifyPolicy {
            allow_additive_continue: b
                .allow_additive_continue
                .unwrap_or(policy.allow_additive_continue),
        },
    );
    let disposition = match result.disposition {
        Disposition::MaterializeOwnHash => "materialize",
        Disposition::MaterializeApprovedAndReview => "materialize_bound_columns_and_review",
        Disposition::StageAndReview => "stage_and_review",
    };
    Ok(Success::data(json!({
        "schema_hash": hash,
        "classification": result.class.as_str(),
        "disposition": disposition,
        "diff": result.diff,
        "summary": result.diff.summary(),
    })))
}

/// Changes the project policy.
#[utoipa::path(patch, path = "/core/api/v1/projects/{project_id}/edge/policy", tag = "policy",
    params(("project_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = PolicyPatchBody,
    responses((status = 200, body = inline(Envelope<policy_store::PolicyView>)), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn patch_policy<C: GenericClient>(c: &C, s: Scope, b: PolicyPatchBody) -> Answer {
    let patch = PolicyPatch {
        allow_additive_continue: b.allow_additive_continue,
        allow_auto_create_device_data_points: b.allow_auto_create_device_data_points,
        max_pending_rows_per_lineage: b.max_pending_rows_per_lineage,
        max_pending_bytes_per_lineage: b.max_pending_bytes_per_lineage,
        resume_threshold_percent: b.resume_threshold_percent,
        circuit_breaker_failures: b.circuit_breaker_failures,
        schema_coalescing_mode: b.schema_coalescing_mode,
    };
    Ok(Success::data(
        policy_store::patch_policy(c, s, &patch).await?,
    ))
}

/// Query of the registry list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RegistryQuery {
    /// pending | approved | rejected | abandoned
    status: Option<String>,
    source_table: Option<String>,
    page: Option<i64>,
    limit: Option<i64>,
}

/// Registry entries (one per scope, table and schema hash in coalescing mode), newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry", tag = "registry",
    params(("project_id" = Uuid, Path), RegistryQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::RegistryEntryView>>)), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_registry<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(query, &["status", "source_table", "page", "limit"])?;
    let pg = page(&p)?;
    let status = p.get("status").cloned();
    if status
        .as_deref()
        .is_some_and(|st| edge_cloud_core::coalesce::RegistryStatus::parse(st).is_none())
    {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "status must be pending, approved, rejected or abandoned",
        ));
    }
    let f = RegistryFilter {
        status,
        source_table: p.get("source_table").cloned(),
    };
    let (rows, total) = query::list_registry(c, s, &f, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// A registry entry with its reviews and the lineages bound through it.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry/{registry_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("registry_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::RegistryDetail>)), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_registry<C: GenericClient>(c: &C, s: Scope, g: Uuid, query: Option<&str>) -> Answer {
    params(query, &[])?;
    Ok(Success::data(query::registry_detail(c, s, g).await?))
}

/// Query of the registry review list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RegistryReviewQuery {
    /// queued | in_review | approved | rejected | abandoned
    status: Option<String>,
    registry_id: Option<Uuid>,
    page: Option<i64>,
    limit: Option<i64>,
}

/// Registry reviews, newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews", tag = "registry",
    params(("project_id" = Uuid, Path), RegistryReviewQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::RegistryReviewView>>)), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_registry_reviews<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(query, &["status", "registry_id", "page", "limit"])?;
    let pg = page(&p)?;
    let status = p.get("status").map(String::as_str);
    if status.is_some_and(|st| ReviewState::parse(st).is_none()) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "status must be queued, in_review, approved, rejected or abandoned",
        ));
    }
    let (rows, total) =
        query::list_registry_reviews(c, s, status, uuid_param(&p, "registry_id")?, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// One registry review.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_registry_review<C: GenericClient>(
    c: &C,
    s: Scope,
    r: Uuid,
    query: Option<&str>,
) -> Answer {
    params(query, &[])?;
    Ok(Success::data(query::registry_review(c, s, r, false).await?))
}

/// Query of the coalesced mirror list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CoalescedQuery {
    source_table: Option<String>,
    page: Option<i64>,
    limit: Option<i64>,
}

/// Shared mirrors of the project.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors", tag = "registry",
    params(("project_id" = Uuid, Path), CoalescedQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::CoalescedMirrorView>>)), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_coalesced<C: GenericClient>(c: &C, s: Scope, query: Option<&str>) -> Answer {
    let p = params(query, &["source_table", "page", "limit"])?;
    let pg = page(&p)?;
    let (rows, total) =
        query::list_coalesced(c, s, p.get("source_table").map(String::as_str), pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// A shared mirror with its registry entries and lineages.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors/{mirror_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("mirror_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::CoalescedMirrorDetail>)), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_coalesced<C: GenericClient>(c: &C, s: Scope, m: Uuid, query: Option<&str>) -> Answer {
    params(query, &[])?;
    Ok(Success::data(query::coalesced_detail(c, s, m).await?))
}

/// queued → in_review.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/claim", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body(content = ClaimBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn registry_claim<C: GenericClient>(
    c: &C,
    s: Scope,
    r: Uuid,
    actor: &str,
    b: ClaimBody,
) -> Answer {
    Ok(Success::data(
        review_store::claim::<RegistryReview, _>(c, s, r, actor, b.action_version).await?,
    ))
}

/// in_review → approved at registry scope: the shared mirror, the entry's bindings and every
/// waiting lineage of the scope bound to it, in one transaction. Only `mirror`, `ignore` and
/// `defer` actions (data points belong to one device). `meta`: mirror, adopted lineages.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/approve", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = ApproveBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "wrong state or stale action_version", body = ErrorBody)),
    security(("bearer" = [])))]
async fn registry_approve<C: GenericClient>(
    c: &C,
    s: Scope,
    r: Uuid,
    actor: &str,
    b: ApproveBody,
) -> Answer {
    let actions = column_actions(b.column_actions);
    let out = review_store::approve::<RegistryReview, _>(
        c,
        s,
        r,
        actor,
        b.action_version,
        &actions,
        Uuid::now_v7,
    )
    .await?;
    Ok(Success::data(&out.review).with_meta(json!({
        "mirror_table_name": out.mirror_table_name,
        "coalesced_mirror_id": out.coalesced_mirror_id,
        "adopted_lineage_ids": out.adopted_lineage_ids,
        "blocking_deferred": out.blocking_deferred,
    })))
}

/// queued | in_review → rejected (devices sending the hash keep staging).
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/reject", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = CloseBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
#[allow(dead_code)]
async fn registry_reject() {}

/// queued | in_review → abandoned: the hash goes back to per-device reviews (one is opened for
/// every lineage waiting on it).
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/abandon", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    request_body = CloseBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
#[allow(dead_code)]
async fn registry_abandon() {}

async fn registry_close<C: GenericClient>(
    c: &C,
    s: Scope,
    r: Uuid,
    actor: &str,
    b: CloseBody,
    abandon: bool,
) -> Answer {
    Ok(Success::data(
        coalesce_store::close(
            c,
            s,
            r,
            actor,
            b.action_version,
            b.reason.as_deref(),
            abandon,
        )
        .await?,
    ))
}

/// Copies per-device mirror rows of the table into its shared mirror(s) and rebinds lineages
/// whose approved hash the registry approved; `dry_run` only counts. `data`: one report per
/// shared mirror.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors/{source_table}/consolidate", tag = "registry",
    params(("project_id" = Uuid, Path), ("source_table" = String, Path), ("Idempotency-Key" = String, Header)),
    request_body(content = ConsolidateBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<Vec<coalesce_store::Consolidation>>)), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "no shared mirror for the table", body = ErrorBody)),
    security(("bearer" = [])))]
async fn consolidate<C: GenericClient>(
    c: &C,
    s: Scope,
    source_table: &str,
    b: ConsolidateBody,
) -> Answer {
    let out = coalesce_store::consolidate(c, s, source_table, b.fleet_id, b.dry_run).await?;
    Ok(Success::data(out))
}
