//! Lineages: the list, one lineage, its staged and mirror rows; delete,
//! reset-materialization and unblock (the operator's decision about a table the device blocked).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;
use uuid::Uuid;

use edge_cloud_core::backpressure::ResetRefusal;
use edge_cloud_store::backpressure::reset_materialization;
use edge_cloud_store::device_block;
use edge_cloud_store::error::ResetError;
use edge_cloud_store::lineage::delete_lineage as delete_lineage_store;
use edge_cloud_store::read::{self as query, LineageFilter};
use edge_cloud_store::registry::device_by_id;
use edge_protocol::control::UnblockAction;

use crate::api::answer::{Answer, ApiError, Success};
use crate::api::body::{NoBody, UnblockActionBody, UnblockBody};
use crate::api::docs::{Envelope, ErrorBody, ListLineages};
use crate::api::extract::{list_meta, page, uuid_param, Id, Lineage, PageQuery, Read};
use crate::api::mutation::Mutation;
use crate::api::Api;

/// Query of the lineage list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LineageQuery {
    device_id: Option<Uuid>,
    fleet_id: Option<Uuid>,
    /// `active` | `paused`
    #[param(pattern = "^(active|paused)$")]
    status: Option<String>,
    source_table: Option<String>,
}

/// Query of the mirror rows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MirrorQuery {
    /// Comma-separated business columns (default: all); an unknown name is a 400.
    #[param(pattern = "[^,\\s]")]
    columns: Option<String>,
    /// `meta.next_cursor` of the previous page: keyset paging (not with `page`; `meta.page` is
    /// then null)
    after: Option<String>,
}

/// Lists lineages.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages", tag = "lineages",
    params(("project_id" = Uuid, Path), LineageQuery, PageQuery),
    responses((status = 200, description = "`data`: lineages; `meta`: page, limit, total", body = ListLineages)))]
pub async fn list_lineages(read: Read) -> Answer {
    let p = read.params(&[
        "device_id",
        "fleet_id",
        "status",
        "source_table",
        "page",
        "limit",
    ])?;
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
    let (rows, total) = query::list_lineages(read.db(), read.scope, &f, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// A lineage with its schema versions, bindings and replay intent.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<query::LineageDetail>))))]
pub async fn get_lineage(read: Read, Id(l, _): Id<Lineage>) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        query::lineage_detail(read.db(), read.scope, l).await?,
    ))
}

/// Staged rows of a lineage in replay order.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/staged-rows", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = inline(Envelope<Vec<query::StagedRowView>>))))]
pub async fn staged_rows(read: Read, Id(l, _): Id<Lineage>) -> Answer {
    let p = read.params(&["page", "limit"])?;
    let pg = page(&p)?;
    let (rows, total) = query::staged_rows(read.db(), read.scope, l, pg).await?;
    Ok(Success::data(rows).with_meta(list_meta(pg, total)))
}

/// Live mirror rows of a lineage in primary-key order. `meta`: page, limit, total (the
/// device's live rows, cached for up to 5 s), next_cursor (null on the last page).
/// `page` is OFFSET paging: prefer `after` for deep pages.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/mirror-rows", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path), MirrorQuery, PageQuery),
    responses((status = 200, body = inline(Envelope<query::MirrorRows>))))]
pub async fn mirror_rows(read: Read, Id(l, _): Id<Lineage>) -> Answer {
    let p = read.params(&["columns", "page", "limit", "after"])?;
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
    let (rows, total, next) =
        query::mirror_rows(read.db(), read.scope, l, cols.as_deref(), pg, after).await?;
    let mut meta = list_meta(pg, total);
    meta["next_cursor"] = json!(next);
    if after.is_some() {
        // A keyset page has no page number.
        meta["page"] = Value::Null;
    }
    Ok(Success::data(rows).with_meta(meta))
}

/// Deletes a lineage and its staged rows, reviews, bindings and intents (the mirror stays).
#[utoipa::path(delete, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path)),
    responses((status = 200, description = "`data`: {lineage_id}")))]
pub async fn delete_lineage(
    State(api): State<Arc<Api>>,
    Id(l, _): Id<Lineage>,
    m: Mutation<NoBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, _, _| {
        Box::pin(async move {
            delete_lineage_store(tx, s, l).await?;
            Ok(Success::data(json!({"lineage_id": l})))
        })
    })
    .await
}

/// Clears the circuit breaker, retries failed rows and resumes the device if it was paused.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/reset-materialization", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path)),
    responses((status = 200, description = "`data`: {lineage_id, resumed, staged_row_count, status}"), (status = 409, description = "not blocked, or a review is open", body = ErrorBody)))]
pub async fn reset(
    State(api): State<Arc<Api>>,
    Id(l, _): Id<Lineage>,
    m: Mutation<NoBody>,
) -> Answer {
    m.commit(&api, Some("materialization reset"), move |tx, s, _, _| {
        Box::pin(async move {
            // Scope first: the store function takes a bare id.
            query::lineage(tx, s, l).await?;
            match reset_materialization(tx, l, time::OffsetDateTime::now_utc()).await {
                Ok(report) => Ok(Success::data(report)),
                Err(ResetError::Refused(r)) => {
                    let code = match r {
                        ResetRefusal::NotBlocked => "lineage_not_blocked",
                        ResetRefusal::ReviewOpen => "review_open",
                        ResetRefusal::AwaitingSchema => "awaiting_schema_review",
                    };
                    Err(ApiError::new(StatusCode::CONFLICT, code, r.to_string()))
                }
                Err(ResetError::Store(e)) => Err(e.into()),
            }
        })
    })
    .await
}

/// Decides about the entry that blocks the lineage's table on the device (reliability.md §2,
/// `device_block`): `retry` clears the block and the device tries the entry again; `skip` drops
/// exactly that entry, which the cloud keeps as a dead letter `skipped_by_operator` with its
/// bytes. Sends the signed control `unblock_table`; `device_block` goes when the device reports
/// the table unblocked.
#[utoipa::path(post, path = "/core/api/v1/projects/{project_id}/edge/lineages/{lineage_id}/unblock", tag = "lineages",
    params(("project_id" = Uuid, Path), ("lineage_id" = Uuid, Path)),
    request_body = UnblockBody,
    responses((status = 200, description = "`data`: {lineage_id, control_id, action, commit_seq}"),
        (status = 409, description = "the lineage has no device block (`lineage_not_blocked`), or it blocks at another entry (`commit_seq_mismatch`)", body = ErrorBody),
        (status = 422, description = "not a decision (`invalid_body`)", body = ErrorBody)))]
pub async fn unblock(
    State(api): State<Arc<Api>>,
    Id(l, _): Id<Lineage>,
    m: Mutation<UnblockBody>,
) -> Answer {
    m.commit(&api, None, move |tx, s, _, body| {
        Box::pin(async move {
            let view = query::lineage(tx, s, l).await?;
            let Some(block) = device_block::current(tx, l).await? else {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "lineage_not_blocked",
                    "the device has not blocked this lineage's table",
                ));
            };
            if block.commit_seq != body.commit_seq {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "commit_seq_mismatch",
                    format!(
                        "the table is blocked at commit_seq {}, not {}",
                        block.commit_seq, body.commit_seq
                    ),
                ));
            }
            let device = device_by_id(tx, view.device_id)
                .await?
                .ok_or(ApiError::not_found("device"))?;
            let action = match body.action {
                UnblockActionBody::Retry => UnblockAction::Retry,
                UnblockActionBody::Skip => UnblockAction::Skip,
            };
            let issued = device_block::issue_unblock(
                tx,
                &device,
                l,
                &view.source_table,
                action,
                body.commit_seq,
                time::OffsetDateTime::now_utc(),
                Uuid::now_v7(),
            )
            .await?;
            Ok(Success::data(json!({
                "lineage_id": l,
                "control_id": issued.control_id,
                "action": action.as_str(),
                "commit_seq": body.commit_seq,
            })))
        })
    })
    .await
}
