//! The registry as the API shows it (cloud.md §9): registry entries with their reviews, and
//! the shared (coalesced) mirrors with the entries and lineages that write to them.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::read::page::page_with_total;
use crate::read::reviews::{entry_reviews, RegistryReviewView};
use crate::scope::{ts, Page, Scope};
use crate::unnamed::UnnamedStatements;

/// A registry entry as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryEntryView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub project_id: Uuid,
    /// `project` | `fleet`
    pub scope: String,
    /// The project or fleet id.
    pub scope_id: Uuid,
    pub source_table: String,
    pub schema_hash: String,
    pub classification: String,
    pub diff: serde_json::Value,
    /// pending | approved | rejected | abandoned
    pub status: String,
    pub origin_device_id: Uuid,
    pub mirror_table_name: Option<String>,
    /// Lineages bound to this entry's hash and shared mirror.
    pub adopted_lineages: i64,
    pub created_at: String,
    pub updated_at: String,
}

const ENTRY_VIEW: &str = "g.id, g.org_id, g.project_id, g.scope_kind, g.scope_id, \
     g.source_table, g.schema_hash, g.classification, g.diff, g.status, g.origin_device_id, \
     g.mirror_table_name, \
     (SELECT count(DISTINCT b.lineage_id) FROM edge_column_bindings b \
      WHERE b.schema_hash = g.schema_hash AND b.mirror_table_name = g.mirror_table_name), \
     g.created_at, g.updated_at";

fn entry_view(r: &tokio_postgres::Row) -> RegistryEntryView {
    RegistryEntryView {
        id: r.get(0),
        org_id: r.get(1),
        project_id: r.get(2),
        scope: r.get(3),
        scope_id: r.get(4),
        source_table: r.get(5),
        schema_hash: r.get(6),
        classification: r.get(7),
        diff: r.get(8),
        status: r.get(9),
        origin_device_id: r.get(10),
        mirror_table_name: r.get(11),
        adopted_lineages: r.get(12),
        created_at: ts(r.get(13)),
        updated_at: ts(r.get(14)),
    }
}

/// Filters of the registry list.
#[derive(Debug, Clone, Default)]
pub struct RegistryFilter {
    pub status: Option<String>,
    pub source_table: Option<String>,
}

/// A page of the scope's registry entries, newest first.
pub async fn list_registry<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    f: &RegistryFilter,
    page: Page,
) -> Result<(Vec<RegistryEntryView>, i64), OpError> {
    const WHERE: &str = "g.org_id = $1 AND g.project_id = $2 \
         AND ($3::text IS NULL OR g.status = $3) AND ($4::text IS NULL OR g.source_table = $4)";
    page_with_total(
        c,
        ENTRY_VIEW,
        &format!("FROM edge_schema_registry g WHERE {WHERE}"),
        "g.created_at DESC, g.id DESC",
        &[
            (&scope.org_id, Type::UUID),
            (&scope.project_id, Type::UUID),
            (&f.status, Type::TEXT),
            (&f.source_table, Type::TEXT),
        ],
        page,
        entry_view,
    )
    .await
}

/// A registry entry with its reviews.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryDetail {
    pub entry: RegistryEntryView,
    pub reviews: Vec<RegistryReviewView>,
    /// Lineages bound through this entry.
    pub lineage_ids: Vec<Uuid>,
}

/// One registry entry of the scope.
pub async fn registry_detail<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<RegistryDetail, OpError> {
    let row = c
        .query_opt_unnamed(
            &format!(
                "SELECT {ENTRY_VIEW} FROM edge_schema_registry g \
                 WHERE g.id = $1 AND g.org_id = $2 AND g.project_id = $3"
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound("registry entry"))?;
    let entry = entry_view(&row);
    let reviews = entry_reviews(c, id).await?;
    let lineage_ids = c
        .query_unnamed(
            "SELECT DISTINCT b.lineage_id FROM edge_column_bindings b \
             JOIN edge_table_lineages l ON l.id = b.lineage_id \
             WHERE b.schema_hash = $1 AND b.mirror_table_name = $2 AND l.project_id = $3 \
             ORDER BY 1",
            &[
                &entry.schema_hash,
                &entry.mirror_table_name,
                &scope.project_id,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(RegistryDetail {
        entry,
        reviews,
        lineage_ids,
    })
}

/// A shared mirror as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CoalescedMirrorView {
    pub id: Uuid,
    /// `project` | `fleet`
    pub scope: String,
    pub scope_id: Uuid,
    pub source_table: String,
    pub mirror_table_name: String,
    /// Lineages whose bindings write to this mirror.
    pub lineage_count: i64,
    pub last_consolidated_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const MIRROR_VIEW: &str = "m.id, m.scope_kind, m.scope_id, m.source_table, m.mirror_table_name, \
     (SELECT count(DISTINCT b.lineage_id) FROM edge_column_bindings b \
      JOIN edge_table_lineages l ON l.id = b.lineage_id \
      WHERE b.mirror_table_name = m.mirror_table_name AND l.project_id = m.project_id), \
     m.last_consolidated_at, m.created_at, m.updated_at";

fn mirror_view(r: &tokio_postgres::Row) -> CoalescedMirrorView {
    CoalescedMirrorView {
        id: r.get(0),
        scope: r.get(1),
        scope_id: r.get(2),
        source_table: r.get(3),
        mirror_table_name: r.get(4),
        lineage_count: r.get(5),
        last_consolidated_at: r.get::<_, Option<OffsetDateTime>>(6).map(ts),
        created_at: ts(r.get(7)),
        updated_at: ts(r.get(8)),
    }
}

/// A page of the scope's shared mirrors.
pub async fn list_coalesced<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    source_table: Option<&str>,
    page: Page,
) -> Result<(Vec<CoalescedMirrorView>, i64), OpError> {
    page_with_total(
        c,
        MIRROR_VIEW,
        "FROM edge_coalesced_mirrors m WHERE m.org_id = $1 AND m.project_id = $2 \
         AND ($3::text IS NULL OR m.source_table = $3)",
        "m.source_table, m.scope_kind, m.scope_id",
        &[
            (&scope.org_id, Type::UUID),
            (&scope.project_id, Type::UUID),
            (&source_table, Type::TEXT),
        ],
        page,
        mirror_view,
    )
    .await
}

/// A shared mirror with the registry entries and lineages that write to it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CoalescedMirrorDetail {
    pub mirror: CoalescedMirrorView,
    pub registry_ids: Vec<Uuid>,
    pub lineages: Vec<CoalescedLineage>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CoalescedLineage {
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub status: String,
}

pub async fn coalesced_detail<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<CoalescedMirrorDetail, OpError> {
    let row = c
        .query_opt_unnamed(
            &format!(
                "SELECT {MIRROR_VIEW} FROM edge_coalesced_mirrors m \
                 WHERE m.id = $1 AND m.org_id = $2 AND m.project_id = $3"
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound("coalesced mirror"))?;
    let mirror = mirror_view(&row);
    let registry_ids = c
        .query_unnamed(
            "SELECT id FROM edge_schema_registry WHERE project_id = $1 \
                 AND mirror_table_name = $2 ORDER BY created_at, id",
            &[&scope.project_id, &mirror.mirror_table_name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lineages = c
        .query_unnamed(
            "SELECT DISTINCT l.id, l.device_id, l.status FROM edge_table_lineages l \
             JOIN edge_column_bindings b ON b.lineage_id = l.id \
             WHERE b.mirror_table_name = $1 AND l.project_id = $2 ORDER BY l.id",
            &[&mirror.mirror_table_name, &scope.project_id],
        )
        .await?
        .iter()
        .map(|r| CoalescedLineage {
            lineage_id: r.get(0),
            device_id: r.get(1),
            status: r.get(2),
        })
        .collect();
    Ok(CoalescedMirrorDetail {
        mirror,
        registry_ids,
        lineages,
    })
}
