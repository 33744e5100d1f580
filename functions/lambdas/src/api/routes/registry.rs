//! Schema coalescing: registry entries, registry reviews (claim → approve | reject | abandon)
//! and the shared (coalesced) mirrors with their consolidation.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use edge_cloud_core::coalesce::RegistryStatus;
use edge_cloud_core::review::ReviewState;
use edge_cloud_store::coalesce as coalesce_store;
use edge_cloud_store::read::reviews::RegistryReview as RegistryReviewKind;
use edge_cloud_store::read::{self as query, RegistryFilter};
use edge_cloud_store::review as review_store;

use crate::api::answer::{Answer, ApiError, Success};
use crate::api::body::{
    ApproveBody, ClaimBody, CloseBody, ConsolidateBody, RegistryRejectBody, RejectCloseBody,
};
use crate::api::docs::{Envelope, ErrorBody};
use crate::api::extract::{
    list_meta, page, uuid_param, CoalescedMirror, Id, ObjectSegment, PageQuery, Read,
    RegistryEntry, RegistryReview,
};
use crate::api::mutation::Mutation;
use crate::api::routes::reviews::approve_kind;
use crate::api::Api;

/// Query of the registry list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RegistryQuery {
    /// pending | approved | rejected | abandoned
    #[param(pattern = "^(pending|approved|rejected|abandoned)$")]
    status: Option<String>,
    source_table: Option<String>,
}

/// Registry entries (one per scope, table and schema hash in coalescing mode), newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry", tag = "registry",
    params(("project_id" = Uuid, Path), RegistryQuery, PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::RegistryEntryView>>))))]
pub async fn list_registry(read: Read) -> Answer {
    let p = read.params(&["status", "source_table", "page", "limit"])?;
    let pg = page(&p)?;
    let status = p.get("status").cloned();
    if status
        .as_deref()
        .is_some_and(|st| RegistryStatus::parse(st).is_none())
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
    let (rows, total) = query::list_registry(read.db(), read.scope, &f, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// A registry entry with its reviews and the lineages bound through it.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry/{registry_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("registry_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::RegistryDetail>))))]
pub async fn get_registry(read: Read, Id(g, _): Id<RegistryEntry>) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        query::registry_detail(read.db(), read.scope, g).await?,
    ))
}

/// Query of the registry review list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RegistryReviewQuery {
    /// queued | in_review | approved | rejected | abandoned
    #[param(pattern = "^(queued|in_review|approved|rejected|abandoned)$")]
    status: Option<String>,
    registry_id: Option<Uuid>,
}

/// Registry reviews, newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews", tag = "registry",
    params(("project_id" = Uuid, Path), RegistryReviewQuery, PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::RegistryReviewView>>))))]
pub async fn list_registry_reviews(read: Read) -> Answer {
    let p = read.params(&["status", "registry_id", "page", "limit"])?;
    let pg = page(&p)?;
    let status = p.get("status").map(String::as_str);
    if status.is_some_and(|st| ReviewState::parse(st).is_none()) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "status must be queued, in_review, approved, rejected or abandoned",
        ));
    }
    let registry = uuid_param(&p, "registry_id")?;
    let (rows, total) =
        query::list_registry_reviews(read.db(), read.scope, status, registry, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// One registry review.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>))))]
pub async fn get_registry_review(read: Read, Id(r, _): Id<RegistryReview>) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        query::registry_review(read.db(), read.scope, r, false).await?,
    ))
}

/// Query of the coalesced mirror list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CoalescedQuery {
    source_table: Option<String>,
}

/// Shared mirrors of the project.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors", tag = "registry",
    params(("project_id" = Uuid, Path), CoalescedQuery, PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::CoalescedMirrorView>>))))]
pub async fn list_coalesced(read: Read) -> Answer {
    let p = read.params(&["source_table", "page", "limit"])?;
    let pg = page(&p)?;
    let table = p.get("source_table").map(String::as_str);
    let (rows, total) = query::list_coalesced(read.db(), read.scope, table, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// A shared mirror with its registry entries and lineages.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors/{mirror_id}", tag = "registry",
    params(("project_id" = Uuid, Path), ("mirror_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::CoalescedMirrorDetail>))))]
pub async fn get_coalesced(read: Read, Id(m, _): Id<CoalescedMirror>) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        query::coalesced_detail(read.db(), read.scope, m).await?,
    ))
}

/// queued → in_review.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/claim", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body(content = ClaimBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>))))]
pub async fn registry_claim(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<RegistryReview>,
    m: Mutation<ClaimBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, actor, b| {
        Box::pin(async move {
            Ok(Success::data(
                review_store::claim::<RegistryReviewKind, _>(tx, s, r, actor, b.action_version)
                    .await?,
            ))
        })
    })
    .await
}

/// in_review → approved at registry scope: the shared mirror, the entry's bindings and every
/// waiting lineage of the scope bound to it, in one transaction. Only `mirror`, `ignore` and
/// `defer` actions (data points belong to one device). `meta`: mirror, adopted lineages.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/approve", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body = ApproveBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>)), (status = 409, description = "wrong state or stale action_version; or the mirror table: mirror_table_in_use (another lineage or coalesced mirror of the project owns it), mirror_table_not_owned (another project's or org's), mirror_primary_key_changed (the approved primary key differs from the mirror's), mirror_column_type_conflict", body = ErrorBody)))]
pub async fn registry_approve(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<RegistryReview>,
    m: Mutation<ApproveBody>,
) -> Answer {
    m.commit(
        &api,
        Some("registry review approved"),
        move |tx, s, actor, b| {
            Box::pin(async move {
                let out = approve_kind::<RegistryReviewKind, _>(tx, s, r, actor, b).await?;
                Ok(Success::data(&out.review).with_meta(json!({
                    "mirror_table_name": out.mirror_table_name,
                    "coalesced_mirror_id": out.coalesced_mirror_id,
                    "adopted_lineage_ids": out.adopted_lineage_ids,
                    "blocking_deferred": out.blocking_deferred,
                })))
            })
        },
    )
    .await
}

/// queued | in_review → rejected (devices sending the hash keep staging).
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/reject", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body = RegistryRejectBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>))))]
pub async fn registry_reject(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<RegistryReview>,
    m: Mutation<RejectCloseBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, actor, b| {
        Box::pin(close(tx, s, r, actor, b.0, false))
    })
    .await
}

/// queued | in_review → abandoned: the hash goes back to per-device reviews (one is opened for
/// every lineage waiting on it).
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/registry-reviews/{review_id}/abandon", tag = "registry",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body = CloseBody,
    responses((status = 200, body = inline(Envelope<query::RegistryReviewView>))))]
pub async fn registry_abandon(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<RegistryReview>,
    m: Mutation<CloseBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, actor, b| {
        Box::pin(close(tx, s, r, actor, b, true))
    })
    .await
}

async fn close<C: edge_cloud_store::tokio_postgres::GenericClient + Sync>(
    c: &C,
    s: edge_cloud_store::scope::Scope,
    r: Uuid,
    actor: &str,
    b: CloseBody,
    abandon: bool,
) -> Answer {
    let reason = b.reason.as_deref();
    Ok(Success::data(
        coalesce_store::close(c, s, r, actor, b.action_version, reason, abandon).await?,
    ))
}

/// Copies per-device mirror rows of the table into its shared mirror(s) and rebinds lineages
/// whose approved hash the registry approved; `dry_run` only counts. `data`: one report per
/// shared mirror.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/coalesced-mirrors/{source_table}/consolidate", tag = "registry",
    params(("project_id" = Uuid, Path), ("source_table" = String, Path)),
    request_body(content = ConsolidateBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<Vec<coalesce_store::Consolidation>>)), (status = 404, description = "no shared mirror for the table", body = ErrorBody)))]
pub async fn consolidate(
    State(api): State<Arc<Api>>,
    ObjectSegment(table): ObjectSegment,
    m: Mutation<ConsolidateBody>,
) -> Answer {
    m.commit(
        &api,
        Some("coalesced mirror consolidated"),
        move |tx, s, _, b| {
            Box::pin(async move {
                let out = coalesce_store::consolidate(tx, s, &table, b.fleet_id, b.dry_run).await?;
                Ok(Success::data(out))
            })
        },
    )
    .await
}
