//! Consolidation (cloud.md §9): copying per-device mirror rows into the scope's shared mirror
//! and rebinding the lineages whose approved hash the registry approved.

use edge_cloud_core::coalesce::consolidate_sql;
use edge_cloud_core::naming::PLATFORM_COLUMNS;
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::coalesce::intake::adopt;
use crate::error::OpError;
use crate::lineage::emit_scope_event;
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// One per-device mirror's part of a consolidation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsolidationSource {
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub mirror_table_name: String,
    /// Rows of the device in the per-device mirror (tombstones included: they keep deleted
    /// rows deleted in the shared mirror).
    pub rows: i64,
    /// Rows written into the shared mirror (0 in a dry run; newer shared rows are kept).
    pub copied: i64,
    /// Whether the lineage now writes to the shared mirror (its approved hash is a registry
    /// hash of this mirror).
    pub rebound: bool,
    /// Why this source was skipped, if it was.
    pub skipped: Option<String>,
}

/// The report of one shared mirror's consolidation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Consolidation {
    pub coalesced_mirror_id: Uuid,
    pub mirror_table_name: String,
    pub dry_run: bool,
    pub sources: Vec<ConsolidationSource>,
    pub rows_total: i64,
    pub rows_copied: i64,
}

async fn table_columns<C: GenericClient + Sync>(
    c: &C,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(c.query_unnamed(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attnum",
        &[&table],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

async fn pk_columns<C: GenericClient + Sync>(
    c: &C,
    table: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(c.query_unnamed(
        "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        &[&table],
    )
    .await?
    .iter()
    .map(|r| r.get::<_, String>(0))
    .filter(|n| n != "device_id")
    .collect())
}

/// Copies per-device mirror rows of `source_table` into the scope's shared mirror(s) and
/// rebinds lineages whose approved hash the registry approved (cloud.md §9). The lineages are
/// locked first, so no live batch writes the old mirror between the copy and the rebind.
/// `dry_run` counts only. 404 when the table has no shared mirror in the project.
pub async fn consolidate<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    source_table: &str,
    fleet_id: Option<Uuid>,
    dry_run: bool,
) -> Result<Vec<Consolidation>, OpError> {
    let mirrors = c
        .query_unnamed(
            "SELECT id, scope_kind, scope_id, mirror_table_name FROM edge_coalesced_mirrors \
             WHERE org_id = $1 AND project_id = $2 AND source_table = $3 \
                 AND ($4::uuid IS NULL OR scope_kind = 'project' OR scope_id = $4) \
             ORDER BY scope_kind, scope_id FOR UPDATE",
            &[&scope.org_id, &scope.project_id, &source_table, &fleet_id],
        )
        .await?;
    if mirrors.is_empty() {
        return Err(OpError::NotFound("coalesced mirror"));
    }
    let mut out = Vec::new();
    for m in &mirrors {
        let (mirror_id, kind, scope_id, shared): (Uuid, String, Uuid, String) =
            (m.get(0), m.get(1), m.get(2), m.get(3));
        let shared_cols = table_columns(c, &shared).await?;
        let shared_pk = pk_columns(c, &shared).await?;
        let sources = c
            .query_unnamed(
                "SELECT DISTINCT l.id, l.device_id, b.mirror_table_name, \
                     (l.approved_schema_hash IN (SELECT g.schema_hash FROM edge_schema_registry g \
                         WHERE g.project_id = l.project_id AND g.mirror_table_name = $5 \
                             AND g.status = 'approved')) AS rebind, \
                     l.approved_schema_hash \
                 FROM edge_table_lineages l \
                 JOIN edge_column_bindings b ON b.lineage_id = l.id \
                 WHERE l.project_id = $1 AND l.source_table = $2 \
                     AND ($3 = 'project' OR l.fleet_id = $4) \
                     AND b.action = 'mirror' AND b.mirror_table_name <> $5 \
                 ORDER BY l.id",
                &[&scope.project_id, &source_table, &kind, &scope_id, &shared],
            )
            .await?;
        let mut report = Consolidation {
            coalesced_mirror_id: mirror_id,
            mirror_table_name: shared.clone(),
            dry_run,
            sources: Vec::new(),
            rows_total: 0,
            rows_copied: 0,
        };
        let ids: Vec<Uuid> = sources.iter().map(|s| s.get(0)).collect();
        if !dry_run && !ids.is_empty() {
            c.execute_unnamed(
                "SELECT 1 FROM edge_table_lineages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await?;
        }
        for s in &sources {
            let (lineage_id, device_id, table, rebind, approved): (
                Uuid,
                Uuid,
                String,
                Option<bool>,
                Option<String>,
            ) = (s.get(0), s.get(1), s.get(2), s.get(3), s.get(4));
            let src_cols = table_columns(c, &table).await?;
            let mut entry = ConsolidationSource {
                lineage_id,
                device_id,
                mirror_table_name: table.clone(),
                rows: 0,
                copied: 0,
                rebound: false,
                skipped: None,
            };
            if src_cols.is_empty() {
                entry.skipped = Some("the per-device mirror table does not exist".into());
                report.sources.push(entry);
                continue;
            }
            let mut common = Vec::new();
            let mut conflict = None;
            for (name, ty) in &src_cols {
                if PLATFORM_COLUMNS.contains(&name.as_str()) {
                    continue;
                }
                match shared_cols.iter().find(|(n, _)| n == name) {
                    Some((_, sty)) if sty == ty => common.push(name.clone()),
                    Some((_, sty)) => {
                        conflict = Some(format!("column {name:?} is {ty} here, {sty} shared"));
                    }
                    None => {}
                }
            }
            if let Some(pk) = shared_pk.iter().find(|p| !common.contains(p)) {
                conflict.get_or_insert_with(|| format!("key column {pk:?} is missing"));
            }
            entry.rows = c
                .query_one_unnamed(
                    &format!(
                        "SELECT count(*) FROM {} WHERE \"device_id\" = $1",
                        edge_cloud_core::naming::quote_ident(&table)
                    ),
                    &[&device_id],
                )
                .await?
                .get(0);
            report.rows_total += entry.rows;
            if let Some(why) = conflict {
                entry.skipped = Some(why);
                report.sources.push(entry);
                continue;
            }
            if !dry_run {
                let n = c
                    .execute_unnamed(
                        &consolidate_sql(&shared, &table, &common, &shared_pk),
                        &[&device_id],
                    )
                    .await?;
                entry.copied = i64::try_from(n).unwrap_or(i64::MAX);
                report.rows_copied += entry.copied;
                if rebind == Some(true) {
                    if let Some(hash) = approved {
                        entry.rebound =
                            rebind_lineage(c, scope, lineage_id, &shared, &hash).await?;
                    }
                }
            } else {
                entry.rebound = rebind == Some(true);
            }
            report.sources.push(entry);
        }
        if !dry_run {
            c.execute_unnamed(
                "UPDATE edge_coalesced_mirrors SET last_consolidated_at = now(), \
                     updated_at = now() WHERE id = $1",
                &[&mirror_id],
            )
            .await?;
            emit_scope_event(
                c,
                "integration.edge_coalesced_mirror.consolidated.v1",
                scope,
                Some(mirror_id),
                serde_json::json!({"mirror_table_name": shared, "source_table": source_table,
                    "rows_copied": report.rows_copied,
                    "rebound_lineage_ids": report.sources.iter().filter(|s| s.rebound)
                        .map(|s| s.lineage_id).collect::<Vec<_>>()}),
            )
            .await?;
        }
        out.push(report);
    }
    Ok(out)
}

/// Points a lineage's bindings of `hash` at the registry entry's (shared) bindings.
async fn rebind_lineage<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    lineage_id: Uuid,
    shared: &str,
    hash: &str,
) -> Result<bool, StoreError> {
    let entry: Option<Uuid> = c
        .query_opt_unnamed(
            "SELECT id FROM edge_schema_registry WHERE project_id = $1 AND schema_hash = $2 \
                 AND mirror_table_name = $3 AND status = 'approved'",
            &[&scope.project_id, &hash, &shared],
        )
        .await?
        .map(|r| r.get(0));
    let Some(entry) = entry else {
        return Ok(false);
    };
    c.execute_unnamed(
        "DELETE FROM edge_column_bindings WHERE lineage_id = $1 AND schema_hash = $2",
        &[&lineage_id, &hash],
    )
    .await?;
    Ok(!adopt(c, entry, &[lineage_id]).await?.is_empty())
}
