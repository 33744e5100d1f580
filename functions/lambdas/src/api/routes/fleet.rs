//! The fleet's sync health (observability.md §4): every lineage of the project worst first,
//! with its lag, backlog, pause, review, controls and recent rejections.

use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use edge_cloud_store::read::fleet::generated_at;
use edge_cloud_store::read::{self as query, FleetFilter};
use edge_cloud_store::scope::ts;

use crate::api::answer::{Answer, ApiError, Success};
use crate::api::docs::ListFleetHealth;
use crate::api::extract::{list_meta, page, uuid_param, PageQuery, Read};

/// Query of the fleet view.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FleetHealthQuery {
    /// `active` | `paused`
    #[param(pattern = "^(active|paused)$")]
    status: Option<String>,
    /// `circuit_breaker` | `volume_backpressure` | `schema_review`, or `none` for lineages
    /// without a pause reason
    #[param(pattern = "^(circuit_breaker|volume_backpressure|schema_review|none)$")]
    pause_reason: Option<String>,
    /// Only lineages lagging at least this many seconds
    #[param(minimum = 0)]
    min_lag_seconds: Option<i64>,
    device_id: Option<Uuid>,
    device_name: Option<String>,
    fleet_id: Option<Uuid>,
    source_table: Option<String>,
}

const PAUSE_REASONS: [&str; 4] = [
    "circuit_breaker",
    "volume_backpressure",
    "schema_review",
    "none",
];

/// The project's lineages worst first: pause reason circuit_breaker, volume_backpressure,
/// schema_review, then active; then lag desc, staged rows desc, device name, source table.
/// `meta`: page, limit, total, generated_at (the instant every `lag_seconds` is measured
/// against, rounded up to the whole second).
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/fleet-health", tag = "fleet",
    params(("project_id" = Uuid, Path), FleetHealthQuery, PageQuery),
    responses((status = 200, description = "`data`: the lineages' sync health, worst first; `meta`: page, limit, total, generated_at", body = ListFleetHealth)))]
pub async fn fleet_health(read: Read) -> Answer {
    let p = read.params(&[
        "status",
        "pause_reason",
        "min_lag_seconds",
        "device_id",
        "device_name",
        "fleet_id",
        "source_table",
        "page",
        "limit",
    ])?;
    let pg = page(&p)?;
    let status = p.get("status").cloned();
    if status
        .as_deref()
        .is_some_and(|s| s != "active" && s != "paused")
    {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "status must be active or paused",
        ));
    }
    let pause_reason = p.get("pause_reason").cloned();
    if let Some(r) = &pause_reason {
        if !PAUSE_REASONS.contains(&r.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("pause_reason must be one of {}", PAUSE_REASONS.join(", ")),
            ));
        }
    }
    let min_lag_seconds = p
        .get("min_lag_seconds")
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "min_lag_seconds must be a non-negative integer",
                )
            })
        })
        .transpose()?;
    let f = FleetFilter {
        status,
        pause_reason,
        min_lag_seconds,
        device_id: uuid_param(&p, "device_id")?,
        device_name: p.get("device_name").cloned(),
        fleet_id: uuid_param(&p, "fleet_id")?,
        source_table: p.get("source_table").cloned(),
    };
    let at = generated_at(time::OffsetDateTime::now_utc());
    let (rows, total) = query::fleet_health(read.db(), read.scope, &f, at, pg).await?;
    let mut meta = list_meta(pg, total);
    meta["generated_at"] = json!(ts(at));
    Ok(Success::data(rows).with_meta(meta))
}
