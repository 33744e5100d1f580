//! Schema reviews: the list, one review, claim → approve | reject; the dry-run classification.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use edge_cloud_core::classify::{classify, ClassifyPolicy, Disposition};
use edge_cloud_core::review::ReviewState;
use edge_cloud_store::lineage::{bindings, schema_columns};
use edge_cloud_store::read as query;
use edge_cloud_store::read::reviews::DeviceReview;
use edge_cloud_store::review::{self as review_store, Approve};
use edge_cloud_store::scope::Scope;
use edge_cloud_store::tokio_postgres::GenericClient;
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};

use crate::api::answer::{Answer, ApiError, Success};
use crate::api::body::{
    column_actions, ApproveBody, ClaimBody, ClassifyBody, ClassifyColumn, RejectBody,
};
use crate::api::docs::{Envelope, ErrorBody};
use crate::api::extract::{list_meta, page, uuid_param, Id, PageQuery, Read, SchemaReview};
use crate::api::mutation::Mutation;
use crate::api::Api;

/// Query of the review list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ReviewQuery {
    /// queued | in_review | approved | rejected | abandoned
    #[param(pattern = "^(queued|in_review|approved|rejected|abandoned)$")]
    status: Option<String>,
    lineage_id: Option<Uuid>,
}

/// Lists schema reviews, newest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews", tag = "reviews",
    params(("project_id" = Uuid, Path), ReviewQuery, PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::ReviewView>>))))]
pub async fn list_reviews(read: Read) -> Answer {
    let p = read.params(&["status", "lineage_id", "page", "limit"])?;
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
    let lineage = uuid_param(&p, "lineage_id")?;
    let (rows, total) = query::list_reviews(read.db(), read.scope, status, lineage, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// One schema review.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::ReviewView>))))]
pub async fn get_review(read: Read, Id(r, _): Id<SchemaReview>) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        query::review(read.db(), read.scope, r, false).await?,
    ))
}

/// queued → in_review.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/claim", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body(content = ClaimBody, description = "optional"),
    responses((status = 200, body = inline(Envelope<query::ReviewView>))))]
pub async fn claim(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<SchemaReview>,
    m: Mutation<ClaimBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, actor, b| {
        Box::pin(async move {
            Ok(Success::data(
                review_store::claim::<DeviceReview, _>(tx, s, r, actor, b.action_version).await?,
            ))
        })
    })
    .await
}

/// in_review → approved: mirror DDL, bindings, replay intent, lineage status and the event, in
/// one transaction. `meta` tells the lineage status, mirror table and replay intent.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/approve", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body = ApproveBody,
    responses((status = 200, body = inline(Envelope<query::ReviewView>)), (status = 409, description = "wrong state or stale action_version; or the mirror table: mirror_table_in_use (another lineage or coalesced mirror of the project owns it), mirror_table_not_owned (another project's or org's), mirror_primary_key_changed (the approved primary key differs from the mirror's), mirror_column_type_conflict", body = ErrorBody)))]
pub async fn approve(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<SchemaReview>,
    m: Mutation<ApproveBody>,
) -> Answer {
    m.commit(
        &api,
        Some("schema review approved"),
        move |tx, s, actor, b| {
            Box::pin(async move {
                let out = approve_kind::<DeviceReview, _>(tx, s, r, actor, b).await?;
                Ok(Success::data(&out.review).with_meta(json!({
                    "lineage_status": out.lineage_status,
                    "mirror_table_name": out.mirror_table_name,
                    "replay_intent_id": out.replay_intent_id,
                    "blocking_deferred": out.blocking_deferred,
                })))
            })
        },
    )
    .await
}

/// queued | in_review → rejected; the lineage stays paused, staged rows are kept.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-reviews/{review_id}/reject", tag = "reviews",
    params(("project_id" = Uuid, Path), ("review_id" = Uuid, Path)),
    request_body = RejectBody,
    responses((status = 200, body = inline(Envelope<query::ReviewView>))))]
pub async fn reject(
    State(api): State<Arc<Api>>,
    Id(r, _): Id<SchemaReview>,
    m: Mutation<RejectBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, actor, b| {
        Box::pin(async move {
            Ok(Success::data(
                review_store::reject(tx, s, r, actor, b.action_version, &b.reason).await?,
            ))
        })
    })
    .await
}

/// Dry-run classification with the same function intake uses. Changes nothing; like every POST
/// it takes an Idempotency-Key.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/schema-classify", tag = "reviews",
    params(("project_id" = Uuid, Path)),
    request_body = ClassifyBody,
    responses((status = 200, description = "`data`: {schema_hash, classification, disposition, diff, summary}")))]
pub async fn schema_classify(State(api): State<Arc<Api>>, m: Mutation<ClassifyBody>) -> Answer {
    m.commit(&api, None, |tx, s, _, b| {
        Box::pin(dry_run_classify(tx, s, b))
    })
    .await
}

async fn dry_run_classify<C: GenericClient + Sync>(c: &C, s: Scope, b: ClassifyBody) -> Answer {
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
    let policy = edge_cloud_store::policy::policy_view(c, s).await?;
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

/// An approval of either review kind: the body's column actions, new ids from UUIDv7.
pub(super) async fn approve_kind<K: Approve, C: GenericClient + Sync>(
    c: &C,
    s: Scope,
    r: Uuid,
    actor: &str,
    b: ApproveBody,
) -> Result<K::Outcome, ApiError> {
    let actions = column_actions(b.column_actions);
    let out =
        review_store::approve::<K, _>(c, s, r, actor, b.action_version, &actions, Uuid::now_v7)
            .await?;
    Ok(out)
}
