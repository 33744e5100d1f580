//! The governance events feed.

use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use edge_cloud_store::read as query;

use crate::api::answer::{Answer, ApiError, Success};
use crate::api::docs::Envelope;
use crate::api::extract::{Read, MAX_LIMIT};

/// Query of the events feed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventsQuery {
    /// The last cursor seen (`meta.next_cursor`); 0 or absent = from the start.
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// 1..=500, default 100
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Governance events after a cursor, oldest first.
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/events", tag = "events",
    params(("project_id" = Uuid, Path), EventsQuery),
    responses((status = 200, description = "`meta.next_cursor` continues the feed", body = inline(Envelope<Vec<query::EventView>>))))]
pub async fn events(read: Read) -> Answer {
    let p = read.params(&["after", "limit"])?;
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
    let rows = query::events(read.db(), read.scope, after, limit).await?;
    let next = rows.last().map_or(after.to_string(), |e| e.id.clone());
    Ok(Success::data(rows).with_meta(json!({"next_cursor": next, "limit": limit})))
}
