//! Lineages as the API shows them: the list, one lineage, and its detail (schema versions,
//! bindings, newest replay intent).

use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::device_block::{self, DeviceBlock};
use crate::error::OpError;
use crate::read::page::page_with_total;
use crate::scope::{ts, Page, Scope};
use crate::unnamed::UnnamedStatements;

/// A lineage as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineageView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub project_id: Uuid,
    pub fleet_id: Uuid,
    pub device_id: Uuid,
    pub source_table: String,
    pub kind: String,
    pub status: String,
    pub pause_reason: Option<String>,
    pub device_pause_reason: Option<String>,
    pub mirror_table_name: Option<String>,
    pub current_schema_hash: Option<String>,
    pub approved_schema_hash: Option<String>,
    pub staged_row_count: i64,
    pub staged_bytes: i64,
    pub materialization_failure_count: i32,
    pub materialization_last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Set while the device has blocked the table itself (reliability.md §2): an entry it
    /// cannot decode or upload; decide with `POST …/unblock`.
    pub device_block: Option<DeviceBlock>,
}

const LINEAGE_VIEW: &str = "l.id, l.org_id, l.project_id, l.fleet_id, l.device_id, \
     l.source_table, l.kind, l.status, l.pause_reason, l.device_pause_reason, \
     l.mirror_table_name, l.current_schema_hash, l.approved_schema_hash, l.staged_row_count, \
     l.staged_bytes, l.materialization_failure_count, l.materialization_last_error, \
     l.created_at, l.updated_at, l.device_block_reason, l.device_block_commit_seq, \
     l.device_block_at";

fn lineage_view(r: &tokio_postgres::Row) -> LineageView {
    LineageView {
        id: r.get(0),
        org_id: r.get(1),
        project_id: r.get(2),
        fleet_id: r.get(3),
        device_id: r.get(4),
        source_table: r.get(5),
        kind: r.get(6),
        status: r.get(7),
        pause_reason: r.get(8),
        device_pause_reason: r.get(9),
        mirror_table_name: r.get(10),
        current_schema_hash: r.get(11),
        approved_schema_hash: r.get(12),
        staged_row_count: r.get(13),
        staged_bytes: r.get(14),
        materialization_failure_count: r.get(15),
        materialization_last_error: r.get(16),
        created_at: ts(r.get(17)),
        updated_at: ts(r.get(18)),
        device_block: device_block::from_columns(r, 19),
    }
}

/// Filters of the lineage list (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct LineageFilter {
    pub device_id: Option<Uuid>,
    pub fleet_id: Option<Uuid>,
    pub status: Option<String>,
    pub source_table: Option<String>,
}

/// A page of lineages and the total matching the filters.
pub async fn list_lineages<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    f: &LineageFilter,
    page: Page,
) -> Result<(Vec<LineageView>, i64), OpError> {
    // NULL parameters switch a filter off, so one prepared statement serves every combination.
    const WHERE: &str = "l.org_id = $1 AND l.project_id = $2 \
         AND ($3::uuid IS NULL OR l.device_id = $3) AND ($4::uuid IS NULL OR l.fleet_id = $4) \
         AND ($5::text IS NULL OR l.status = $5) AND ($6::text IS NULL OR l.source_table = $6)";
    page_with_total(
        c,
        LINEAGE_VIEW,
        &format!("FROM edge_table_lineages l WHERE {WHERE}"),
        "l.created_at, l.id",
        &[
            (&scope.org_id, Type::UUID),
            (&scope.project_id, Type::UUID),
            (&f.device_id, Type::UUID),
            (&f.fleet_id, Type::UUID),
            (&f.status, Type::TEXT),
            (&f.source_table, Type::TEXT),
        ],
        page,
        lineage_view,
    )
    .await
}

/// One lineage of the scope.
pub async fn lineage<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<LineageView, OpError> {
    let row = c
        .query_typed_opt(
            &format!(
                "SELECT {LINEAGE_VIEW} FROM edge_table_lineages l \
                 WHERE l.id = $1 AND l.org_id = $2 AND l.project_id = $3"
            ),
            &[
                (&id, Type::UUID),
                (&scope.org_id, Type::UUID),
                (&scope.project_id, Type::UUID),
            ],
        )
        .await?
        .ok_or(OpError::NotFound("lineage"))?;
    Ok(lineage_view(&row))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SchemaVersionView {
    pub schema_hash: String,
    pub classification: String,
    pub columns: Option<serde_json::Value>,
    pub diff: serde_json::Value,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BindingView {
    pub schema_hash: String,
    pub source_column_name: String,
    pub action: String,
    pub mirror_table_name: Option<String>,
    pub mirror_column_name: Option<String>,
    pub mirror_type: Option<String>,
    pub pk_ordinal: i32,
    pub device_data_point_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayIntentView {
    pub id: Uuid,
    pub status: String,
    pub action_kind: String,
    pub action_version: i32,
    pub rows_replayed: i64,
    pub failure_count: i32,
    pub last_error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineageDetail {
    pub lineage: LineageView,
    pub schema_versions: Vec<SchemaVersionView>,
    pub bindings: Vec<BindingView>,
    pub replay_intent: Option<ReplayIntentView>,
}

/// A lineage with its schema versions, bindings and newest replay intent.
pub async fn lineage_detail<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<LineageDetail, OpError> {
    let lineage = lineage(c, scope, id).await?;
    let versions = c
        .query_unnamed(
            "SELECT schema_hash, classification, columns, diff, first_seen, last_seen \
             FROM edge_schema_versions WHERE lineage_id = $1 ORDER BY first_seen, schema_hash",
            &[&id],
        )
        .await?;
    let bindings = c
        .query_unnamed(
            "SELECT schema_hash, source_column_name, action, mirror_table_name, \
                 mirror_column_name, mirror_type, pk_ordinal, device_data_point_id \
             FROM edge_column_bindings WHERE lineage_id = $1 \
             ORDER BY created_at, schema_hash, source_column_name",
            &[&id],
        )
        .await?;
    let intent = c
        .query_opt_unnamed(
            "SELECT id, status, action_kind, action_version, rows_replayed, failure_count, \
                 last_error, updated_at \
             FROM edge_replay_intents WHERE lineage_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&id],
        )
        .await?;
    Ok(LineageDetail {
        lineage,
        schema_versions: versions
            .iter()
            .map(|r| SchemaVersionView {
                schema_hash: r.get(0),
                classification: r.get(1),
                columns: r.get(2),
                diff: r.get(3),
                first_seen: ts(r.get(4)),
                last_seen: ts(r.get(5)),
            })
            .collect(),
        bindings: bindings
            .iter()
            .map(|r| BindingView {
                schema_hash: r.get(0),
                source_column_name: r.get(1),
                action: r.get(2),
                mirror_table_name: r.get(3),
                mirror_column_name: r.get(4),
                mirror_type: r.get(5),
                pk_ordinal: r.get(6),
                device_data_point_id: r.get(7),
            })
            .collect(),
        replay_intent: intent.map(|r| ReplayIntentView {
            id: r.get(0),
            status: r.get(1),
            action_kind: r.get(2),
            action_version: r.get(3),
            rows_replayed: r.get(4),
            failure_count: r.get(5),
            last_error: r.get(6),
            updated_at: ts(r.get(7)),
        }),
    })
}
