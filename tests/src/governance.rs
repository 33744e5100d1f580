//! The development approval path of the tests and benchmarks: [`approve_all_columns`] stands
//! in for a reviewer. It mirrors every column of the lineage's current schema, creates the
//! mirror table and bindings, activates the lineage, closes open reviews for the hash and
//! replays the staged rows into the mirror — all in the caller's transaction, through the
//! store's own functions. Production approval is the review API
//! ([`edge_cloud_store::review::approve`]).

use edge_cloud_store::core::mirror::MirrorTable;
use edge_cloud_store::drain::{replay_staged, ReplayReport};
use edge_cloud_store::lineage::{emit_event, lock_lineage, schema_columns};
use edge_cloud_store::mirror::ensure_mirror;
use edge_cloud_store::registry::device_by_id;
use edge_cloud_store::StoreError;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// What a dev-path approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproveReport {
    pub schema_hash: String,
    pub mirror_table: Option<String>,
    pub replay: ReplayReport,
}

/// Dev path: approve every column of the lineage's current schema hash (see module docs).
/// `new_id` supplies fresh UUIDs (data points, the replay intent).
pub async fn approve_all_columns<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    mut new_id: impl FnMut() -> Uuid,
) -> Result<ApproveReport, StoreError> {
    let lineage = lock_lineage(c, lineage_id).await?;
    let device = device_by_id(c, lineage.device_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {}", lineage.device_id)))?;
    let hash: String = c
        .query_one(
            "SELECT current_schema_hash FROM edge_table_lineages WHERE id = $1",
            &[&lineage_id],
        )
        .await?
        .get::<_, Option<String>>(0)
        .ok_or_else(|| StoreError::NotFound(format!("lineage {lineage_id} has no schema yet")))?;

    let mut mirror_table = None;
    if lineage.kind == "telemetry" {
        // Every field seen in staged rows becomes a data point named `{table}.{field}`.
        c.execute(
            "WITH fields AS ( \
                 SELECT DISTINCT jsonb_object_keys(\"row\") AS f FROM edge_staged_rows \
                 WHERE lineage_id = $1 AND schema_hash = $2 AND jsonb_typeof(\"row\") = 'object'), \
             dps AS ( \
                 INSERT INTO device_data_points (id, org_id, project_id, device_id, name) \
                 SELECT gen_random_uuid(), $3, $4, $5, $6 || '.' || f FROM fields \
                 ON CONFLICT (device_id, name) DO UPDATE SET name = EXCLUDED.name \
                 RETURNING id, name) \
             INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                 action, device_data_point_id) \
             SELECT $1, $2, substr(dps.name, length($6) + 2), 'map', dps.id FROM dps \
             ON CONFLICT DO NOTHING",
            &[
                &lineage_id,
                &hash,
                &device.org_id,
                &device.project_id,
                &device.device_id,
                &lineage.source_table,
            ],
        )
        .await?;
    } else {
        let columns = schema_columns(c, lineage_id, &hash).await?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no columns recorded for schema {hash}: a batch carrying schema_columns must arrive first"
            ))
        })?;
        let table = MirrorTable::for_schema(&device.device_id, &columns);
        ensure_mirror(c, &table).await?;
        let sources: Vec<&str> = table
            .columns
            .iter()
            .map(|c| c.source_name.as_str())
            .collect();
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let types: Vec<&str> = table.columns.iter().map(|c| c.ty.sql()).collect();
        let pks: Vec<i32> = table
            .columns
            .iter()
            .map(|c| i32::try_from(c.pk_ordinal).unwrap_or(0))
            .collect();
        c.execute(
            "INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                 action, mirror_table_name, mirror_column_name, mirror_type, pk_ordinal) \
             SELECT $1, $2, u.s, 'mirror', $3, u.n, u.t, u.p \
             FROM unnest($4::text[], $5::text[], $6::text[], $7::integer[]) AS u(s, n, t, p) \
             ON CONFLICT DO NOTHING",
            &[
                &lineage_id,
                &hash,
                &table.name,
                &sources,
                &names,
                &types,
                &pks,
            ],
        )
        .await?;
        mirror_table = Some(table.name);
    }
    c.execute(
        "UPDATE edge_table_lineages SET status = 'active', pause_reason = NULL, \
             approved_schema_hash = $2, mirror_table_name = COALESCE($3, mirror_table_name), \
             updated_at = now() WHERE id = $1",
        &[&lineage_id, &hash, &mirror_table],
    )
    .await?;
    let reviews = c
        .query(
            "UPDATE edge_schema_reviews SET state = 'approved', decided_by = 'dev-path', \
                 decided_at = now(), action_version = action_version + 1, updated_at = now() \
             WHERE lineage_id = $1 AND schema_hash = $2 AND state IN ('queued', 'in_review') \
             RETURNING id",
            &[&lineage_id, &hash],
        )
        .await?;
    for r in &reviews {
        emit_event(
            c,
            "integration.edge_schema_review.approved.v1",
            &device,
            Some(r.get(0)),
            serde_json::json!({"lineage_id": lineage_id, "schema_hash": hash, "via": "dev-path"}),
        )
        .await?;
    }
    let intent = new_id();
    c.execute(
        "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind) \
         VALUES ($1, $2, $3, 'running', 'approve_all_columns')",
        &[&intent, &lineage_id, &hash],
    )
    .await?;
    let replay = replay_staged(c, lineage_id, device.device_id, 2_000).await?;
    c.execute(
        "UPDATE edge_replay_intents SET status = 'done', rows_replayed = $2, updated_at = now() \
         WHERE id = $1",
        &[&intent, &replay.drained],
    )
    .await?;
    Ok(ApproveReport {
        schema_hash: hash,
        mirror_table,
        replay,
    })
}
