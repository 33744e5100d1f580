//! The events feed of the API (cloud.md §11), by cursor.

use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::scope::{ts, Scope};
use crate::unnamed::UnnamedStatements;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// The cursor: pass the last one as `after` to continue.
    pub id: String,
    pub event_type: String,
    pub subject_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub created_at: String,
}

/// Events of the scope after the cursor, oldest first.
pub async fn events<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<EventView>, OpError> {
    let rows = c
        .query_unnamed(
            "SELECT id, event_type, subject_id, payload, created_at FROM edge_events \
             WHERE project_id = $1 AND org_id = $2 AND id > $3 ORDER BY id LIMIT $4",
            &[&scope.project_id, &scope.org_id, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventView {
            id: r.get::<_, i64>(0).to_string(),
            event_type: r.get(1),
            subject_id: r.get(2),
            payload: r.get(3),
            created_at: ts(r.get(4)),
        })
        .collect())
}
