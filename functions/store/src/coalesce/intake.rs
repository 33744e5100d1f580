//! Intake under a registry scope (cloud.md §9): looking an unbound hash up in the registry,
//! opening the registry entry and review for a new one, and adopting lineages into an approved
//! entry's shared mirror.

use edge_cloud_core::classify::{SchemaClass, SchemaDiff};
use edge_cloud_core::coalesce::{
    registry_intake, registry_scope, RegistryIntake, RegistryScope, RegistryStatus,
};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::lineage::emit_scope_event;
use crate::policy::coalescing_mode;
use crate::registry::Device;
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// What intake must do for a hash the lineage has no bindings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// No registry involvement: the per-device review path.
    PerDevice,
    /// The lineage was just bound to the approved entry's shared mirror.
    Adopted,
    /// Stage and pause; the registry review (opened by [`open_registry_review`]) decides.
    Await(RegistryScope),
}

/// Looks the hash up in the registry of the device's scope and adopts the lineage when the
/// entry is approved.
pub async fn intake<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    lineage_id: Uuid,
    source_table: &str,
    schema_hash: &str,
) -> Result<Intake, StoreError> {
    let mode = coalescing_mode(c, device.project_id).await?;
    let Some(scope) = registry_scope(mode, device.project_id, device.fleet_id) else {
        return Ok(Intake::PerDevice);
    };
    let entry = c
        .query_opt_unnamed(
            "SELECT id, status FROM edge_schema_registry WHERE project_id = $1 \
                 AND scope_kind = $2 AND scope_id = $3 AND source_table = $4 AND schema_hash = $5",
            &[
                &device.project_id,
                &scope.kind.as_str(),
                &scope.id,
                &source_table,
                &schema_hash,
            ],
        )
        .await?;
    let status = entry
        .as_ref()
        .map(|r| {
            let s: &str = r.get(1);
            RegistryStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("registry {s}")))
        })
        .transpose()?;
    Ok(match (registry_intake(Some(scope), status), entry) {
        (RegistryIntake::PerDevice, _) => Intake::PerDevice,
        (RegistryIntake::Adopt, Some(e)) => {
            adopt(c, e.get(0), &[lineage_id]).await?;
            Intake::Adopted
        }
        (RegistryIntake::Adopt | RegistryIntake::AwaitRegistry, _) => Intake::Await(scope),
    })
}

/// Opens the registry entry for (scope, table, hash) and its queued review, unless the entry
/// exists (another device announced the hash first, or it was rejected). Emits the queued
/// event when it opened one.
#[allow(clippy::too_many_arguments)]
pub async fn open_registry_review<C: GenericClient + Sync>(
    c: &C,
    ids: (Uuid, Uuid),
    device: &Device,
    scope: RegistryScope,
    lineage_id: Uuid,
    source_table: &str,
    schema_hash: &str,
    class: SchemaClass,
    diff: &SchemaDiff,
) -> Result<bool, StoreError> {
    let (entry_id, review_id) = ids;
    let diff = serde_json::to_value(diff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_schema_registry (id, org_id, project_id, scope_kind, scope_id, \
                 source_table, schema_hash, classification, diff, origin_device_id, \
                 origin_lineage_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
            &[
                &entry_id,
                &device.org_id,
                &device.project_id,
                &scope.kind.as_str(),
                &scope.id,
                &source_table,
                &schema_hash,
                &class.as_str(),
                &diff,
                &device.device_id,
                &lineage_id,
            ],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    c.execute_unnamed(
        "INSERT INTO edge_registry_reviews (id, registry_id, org_id, project_id) \
         VALUES ($1, $2, $3, $4)",
        &[&review_id, &entry_id, &device.org_id, &device.project_id],
    )
    .await?;
    emit_scope_event(
        c,
        "integration.edge_schema_review.queued.v1",
        Scope {
            org_id: device.org_id,
            project_id: device.project_id,
        },
        Some(review_id),
        serde_json::json!({"registry_id": entry_id, "registry_review_id": review_id,
            "scope": scope.kind.as_str(), "scope_id": scope.id, "source_table": source_table,
            "schema_hash": schema_hash, "classification": class.as_str(),
            "device_id": device.device_id, "lineage_id": lineage_id}),
    )
    .await?;
    Ok(true)
}

/// Binds lineages to an approved entry: its binding rows (pointing at the shared mirror), the
/// approved hash and mirror on the lineage, `active` unless a deferred required column or a
/// flow-control pause holds it, and a replay intent where rows of the hash are staged. Returns
/// the lineages bound by this call (already-bound ones are skipped).
pub async fn adopt<C: GenericClient + Sync>(
    c: &C,
    registry_id: Uuid,
    lineage_ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    let rows = c
        .query_unnamed(
            "WITH e AS (SELECT schema_hash, bindings, mirror_table_name, activates \
                 FROM edge_schema_registry WHERE id = $1 AND status = 'approved'), \
             todo AS ( \
                 SELECT l.id FROM edge_table_lineages l, e WHERE l.id = ANY($2) \
                     AND NOT EXISTS (SELECT 1 FROM edge_column_bindings b \
                         WHERE b.lineage_id = l.id AND b.schema_hash = e.schema_hash)), \
             ins AS ( \
                 INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                     action, mirror_table_name, mirror_column_name, mirror_type, pk_ordinal) \
                 SELECT todo.id, e.schema_hash, b.source_column_name, b.action, \
                     CASE WHEN b.action = 'mirror' THEN e.mirror_table_name END, \
                     b.mirror_column_name, b.mirror_type, b.pk_ordinal \
                 FROM todo, e, jsonb_to_recordset(e.bindings) AS b(source_column_name text, \
                     action text, mirror_column_name text, mirror_type text, pk_ordinal integer) \
                 ON CONFLICT DO NOTHING), \
             intents AS ( \
                 INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, \
                     action_kind) \
                 SELECT gen_random_uuid(), todo.id, e.schema_hash, 'pending', \
                     'registry_review_approved' \
                 FROM todo, e WHERE EXISTS (SELECT 1 FROM edge_staged_rows s \
                     WHERE s.lineage_id = todo.id AND s.schema_hash = e.schema_hash)) \
             UPDATE edge_table_lineages l SET approved_schema_hash = e.schema_hash, \
                 mirror_table_name = e.mirror_table_name, \
                 status = CASE WHEN e.activates AND (l.pause_reason IS NULL \
                     OR l.pause_reason = 'schema_review') THEN 'active' ELSE l.status END, \
                 pause_reason = CASE WHEN e.activates AND (l.pause_reason IS NULL \
                     OR l.pause_reason = 'schema_review') THEN NULL \
                     WHEN l.status = 'paused' THEN l.pause_reason \
                     ELSE NULL END, \
                 updated_at = now() \
             FROM todo, e WHERE l.id = todo.id RETURNING l.id",
            &[&registry_id, &lineage_ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
