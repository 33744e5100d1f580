//! Lineages, schema versions, reviews opened by intake, bindings, watermarks, the lineage's
//! sync-health columns kept by intake ([`Received`], observability.md §4) and the governance
//! events (cloud.md §11).

use std::collections::HashMap;

use edge_cloud_core::classify::{SchemaClass, SchemaDiff};
use edge_cloud_core::mirror::{MirrorColumn, MirrorTable, MirrorType};
use edge_protocol::fingerprint::SchemaColumns;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::registry::Device;
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A lineage row as intake needs it (locked for the rest of the transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub id: Uuid,
    pub device_id: Uuid,
    pub source_table: String,
    pub kind: String,
    pub status: String,
    pub pause_reason: Option<String>,
    pub approved_schema_hash: Option<String>,
    pub mirror_table_name: Option<String>,
    pub last_batch_seq: Option<i64>,
    pub last_batch_id: Option<Uuid>,
    /// The schema of the last batch or observation the device sent.
    pub current_schema_hash: Option<String>,
}

impl Lineage {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

const LINEAGE_COLUMNS: &str = "id, device_id, source_table, kind, status, pause_reason, \
     approved_schema_hash, mirror_table_name, last_batch_seq, last_batch_id, current_schema_hash";

fn lineage_from_row(r: &tokio_postgres::Row) -> Lineage {
    Lineage {
        id: r.get(0),
        device_id: r.get(1),
        source_table: r.get(2),
        kind: r.get(3),
        status: r.get(4),
        pause_reason: r.get(5),
        approved_schema_hash: r.get(6),
        mirror_table_name: r.get(7),
        last_batch_seq: r.get(8),
        last_batch_id: r.get(9),
        current_schema_hash: r.get(10),
    }
}

/// Creates the lineage on first sight (paused until something is approved) and row-locks it:
/// every batch of one lineage is serialized from here to commit, which keeps counters,
/// watermarks and telemetry sequencing race-free.
pub async fn upsert_lineage<C: GenericClient + Sync>(
    c: &C,
    new_id: Uuid,
    device: &Device,
    source_table: &str,
    kind: &str,
    schema_hash: &str,
) -> Result<Lineage, StoreError> {
    let row = c
        .query_one_unnamed(
            &format!(
                "INSERT INTO edge_table_lineages (id, org_id, project_id, fleet_id, device_id, \
                     source_table, kind, current_schema_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (device_id, source_table) DO UPDATE \
                     SET current_schema_hash = EXCLUDED.current_schema_hash, updated_at = now() \
                 RETURNING {LINEAGE_COLUMNS}"
            ),
            &[
                &new_id,
                &device.org_id,
                &device.project_id,
                &device.fleet_id,
                &device.device_id,
                &source_table,
                &kind,
                &schema_hash,
            ],
        )
        .await?;
    Ok(lineage_from_row(&row))
}

/// A lineage by id, row-locked.
pub async fn lock_lineage<C: GenericClient + Sync>(c: &C, id: Uuid) -> Result<Lineage, StoreError> {
    // Typed: one round trip. Every ingest and replay transaction starts here.
    let row = c
        .query_typed_opt(
            &format!("SELECT {LINEAGE_COLUMNS} FROM edge_table_lineages WHERE id = $1 FOR UPDATE"),
            &[(&id, Type::UUID)],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("lineage {id}")))?;
    Ok(lineage_from_row(&row))
}

/// The lineage of (device, source_table), if any.
pub async fn find_lineage<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    source_table: &str,
) -> Result<Option<Lineage>, StoreError> {
    let row = c
        .query_opt_unnamed(
            &format!(
                "SELECT {LINEAGE_COLUMNS} FROM edge_table_lineages \
                 WHERE device_id = $1 AND source_table = $2"
            ),
            &[&device_id, &source_table],
        )
        .await?;
    Ok(row.as_ref().map(lineage_from_row))
}

/// The columns recorded for (lineage, hash), if the hash was seen with its columns.
pub async fn schema_columns<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    schema_hash: &str,
) -> Result<Option<SchemaColumns>, StoreError> {
    let row = c
        .query_opt_unnamed(
            "SELECT columns FROM edge_schema_versions \
             WHERE lineage_id = $1 AND schema_hash = $2 AND columns IS NOT NULL",
            &[&lineage_id, &schema_hash],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let v: serde_json::Value = r.get(0);
            serde_json::from_value(v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("schema columns of {schema_hash}: {e}")))
        }
    }
}

/// Records a hash seen for a lineage: first sight stores columns, class and diff; later
/// sightings bump `last_seen` and fill in columns a first, column-less batch lacked.
pub async fn record_schema_version<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    schema_hash: &str,
    columns: Option<&SchemaColumns>,
    class: SchemaClass,
    diff: &SchemaDiff,
) -> Result<(), StoreError> {
    let columns = columns
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let diff = serde_json::to_value(diff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute_unnamed(
        "INSERT INTO edge_schema_versions (lineage_id, schema_hash, columns, classification, diff) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (lineage_id, schema_hash) DO UPDATE \
             SET last_seen = now(), \
                 columns = COALESCE(edge_schema_versions.columns, EXCLUDED.columns)",
        &[&lineage_id, &schema_hash, &columns, &class.as_str(), &diff],
    )
    .await?;
    Ok(())
}

/// Opens a review for (lineage, hash) unless one is open; emits the queued event when it did.
pub async fn open_review<C: GenericClient + Sync>(
    c: &C,
    review_id: Uuid,
    device: &Device,
    lineage_id: Uuid,
    schema_hash: &str,
    class: SchemaClass,
    diff: &SchemaDiff,
) -> Result<bool, StoreError> {
    let diff = serde_json::to_value(diff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, classification, diff) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (lineage_id, schema_hash) WHERE state IN ('queued', 'in_review') \
             DO NOTHING",
            &[
                &review_id,
                &lineage_id,
                &schema_hash,
                &class.as_str(),
                &diff,
            ],
        )
        .await?;
    if n == 1 {
        emit_event(
            c,
            "integration.edge_schema_review.queued.v1",
            device,
            Some(review_id),
            serde_json::json!({"lineage_id": lineage_id, "schema_hash": schema_hash,
                               "classification": class.as_str()}),
        )
        .await?;
    }
    Ok(n == 1)
}

/// Pauses a lineage; an existing pause keeps its (earlier) reason.
pub async fn pause_lineage<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_table_lineages SET status = 'paused', \
             pause_reason = COALESCE(pause_reason, $2), updated_at = now() WHERE id = $1",
        &[&lineage_id, &reason],
    )
    .await?;
    Ok(())
}

/// What an accepted batch (or spill chunk) tells the lineage's sync health (observability.md
/// §4, migration 0012): intake accepted it now — not a duplicate, not a rejection — and, when
/// rows of it materialized, its source time (rows: the UUIDv7 time of `batch_id`; telemetry:
/// `cursor_end_ts`). Staged rows wait: the drain raises the source time when it materializes
/// them (`crate::drain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The batch's source time when rows of it materialized; `None` when all of it was staged.
    pub materialized_source_at: Option<OffsetDateTime>,
}

/// The one change of the health columns on an accepted batch, as a `SET` list over
/// `edge_table_lineages`; `source` is the parameter of [`Received::materialized_source_at`]
/// (`GREATEST` skips a NULL, so a staged batch leaves the source time as it was). Folded into
/// the statement intake already runs on the lineage ([`advance_watermark`] for rows and spill
/// chunks, [`advance_batch_seq`] for telemetry): no extra round trip per batch.
fn health_set(source: &str) -> String {
    format!(
        "last_batch_received_at = now(), newest_materialized_source_at = \
         GREATEST(edge_table_lineages.newest_materialized_source_at, {source}::timestamptz)"
    )
}

/// Raises the lineage's high watermark for an epoch (never lowers it), and records the
/// accepted row batch (or spill chunk) on the lineage ([`Received`]) in the same statement.
pub async fn advance_watermark<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    journal_epoch: Uuid,
    seq: i64,
    received: Received,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        &format!(
            "WITH health AS (UPDATE edge_table_lineages SET {} WHERE id = $1) \
             INSERT INTO edge_lineage_watermarks (lineage_id, journal_epoch, high_seq) \
             VALUES ($1, $2, $3) ON CONFLICT (lineage_id, journal_epoch) DO UPDATE \
                 SET high_seq = GREATEST(edge_lineage_watermarks.high_seq, EXCLUDED.high_seq), \
                     updated_at = now()",
            health_set("$4")
        ),
        &[
            &lineage_id,
            &journal_epoch,
            &seq,
            &received.materialized_source_at,
        ],
    )
    .await?;
    Ok(())
}

/// Records an accepted telemetry batch: the lineage's newest batch (when its `batch_seq` is
/// above the last) and [`Received`], in one statement.
pub async fn advance_batch_seq<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    batch_seq: i64,
    batch_id: Uuid,
    received: Received,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        &format!(
            "UPDATE edge_table_lineages SET \
                 last_batch_id = CASE WHEN last_batch_seq IS NULL OR last_batch_seq < $2 \
                     THEN $3 ELSE last_batch_id END, \
                 last_batch_seq = GREATEST(last_batch_seq, $2), {}, updated_at = now() \
             WHERE id = $1",
            health_set("$4")
        ),
        &[
            &lineage_id,
            &batch_seq,
            &batch_id,
            &received.materialized_source_at,
        ],
    )
    .await?;
    Ok(())
}

/// The bindings of one approved hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bindings {
    /// `mirror` columns as a table (None when nothing is mirrored).
    pub mirror: Option<MirrorTable>,
    /// `map` / `auto_create_and_map` columns: source column → data point.
    pub mapped: Vec<(String, Uuid)>,
}

/// Bindings of (lineage, hash); `None` when that hash was never approved.
pub async fn bindings<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    schema_hash: &str,
) -> Result<Option<Bindings>, StoreError> {
    let rows = c
        .query_unnamed(
            "SELECT source_column_name, action, mirror_table_name, mirror_column_name, \
                 mirror_type, pk_ordinal, device_data_point_id \
             FROM edge_column_bindings WHERE lineage_id = $1 AND schema_hash = $2 \
             ORDER BY source_column_name",
            &[&lineage_id, &schema_hash],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    bindings_from_rows(rows.iter()).map(Some)
}

/// Bindings of every approved hash of the lineage, in one query (the replay worker needs all
/// of them per chunk: which hashes are drainable, and how to write each).
pub async fn lineage_bindings<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<HashMap<String, Bindings>, StoreError> {
    let rows = c
        .query_typed(
            "SELECT source_column_name, action, mirror_table_name, mirror_column_name, \
                 mirror_type, pk_ordinal, device_data_point_id, schema_hash \
             FROM edge_column_bindings WHERE lineage_id = $1 \
             ORDER BY schema_hash, source_column_name",
            &[(&lineage_id, Type::UUID)],
        )
        .await?;
    let mut by_hash: HashMap<String, Vec<&tokio_postgres::Row>> = HashMap::new();
    for r in &rows {
        by_hash.entry(r.get(7)).or_default().push(r);
    }
    by_hash
        .into_iter()
        .map(|(hash, rows)| bindings_from_rows(rows.into_iter()).map(|b| (hash, b)))
        .collect()
}

/// Builds [`Bindings`] from `edge_column_bindings` rows of one hash (columns as selected by
/// [`bindings`], in source-column order).
fn bindings_from_rows<'a>(
    rows: impl Iterator<Item = &'a tokio_postgres::Row>,
) -> Result<Bindings, StoreError> {
    let mut table_name: Option<String> = None;
    let mut columns = Vec::new();
    let mut mapped = Vec::new();
    for r in rows {
        let source: String = r.get(0);
        let action: &str = r.get(1);
        match action {
            "mirror" => {
                let ty: String = r.get(4);
                let ty = MirrorType::from_sql(&ty)
                    .ok_or_else(|| StoreError::Corrupt(format!("mirror type {ty:?}")))?;
                let name: Option<String> = r.get(3);
                table_name = r.get(2);
                columns.push(MirrorColumn {
                    name: name.unwrap_or_else(|| source.clone()),
                    source_name: source,
                    ty,
                    pk_ordinal: i64::from(r.get::<_, i32>(5)),
                });
            }
            "map" | "auto_create_and_map" => {
                if let Some(dp) = r.get::<_, Option<Uuid>>(6) {
                    mapped.push((source, dp));
                }
            }
            _ => {}
        }
    }
    let mirror = match table_name {
        Some(name) if !columns.is_empty() => Some(MirrorTable { name, columns }),
        _ => None,
    };
    Ok(Bindings { mirror, mapped })
}

/// Writes a governance event of a device in the caller's transaction (cloud.md §11); the
/// payload gets the device's id.
pub async fn emit_event<C: GenericClient + Sync>(
    c: &C,
    event_type: &str,
    device: &Device,
    subject_id: Option<Uuid>,
    payload: serde_json::Value,
) -> Result<(), StoreError> {
    let mut payload = payload;
    if let serde_json::Value::Object(map) = &mut payload {
        map.insert("device_id".into(), device.device_id.to_string().into());
    }
    let scope = Scope {
        org_id: device.org_id,
        project_id: device.project_id,
    };
    emit_scope_event(c, event_type, scope, subject_id, payload).await
}

/// Writes a governance event of the scope (no device: registry reviews, shared mirrors) in the
/// caller's transaction.
pub async fn emit_scope_event<C: GenericClient + Sync>(
    c: &C,
    event_type: &str,
    scope: Scope,
    subject_id: Option<Uuid>,
    payload: serde_json::Value,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_events (event_type, org_id, project_id, subject_id, payload) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &event_type,
            &scope.org_id,
            &scope.project_id,
            &subject_id,
            &payload,
        ],
    )
    .await?;
    Ok(())
}

/// Deletes a lineage with everything that cascades from it (versions, reviews, bindings,
/// staged rows, replay intents, pending controls). The mirror table stays: its rows are the
/// customer's data and other lineages may share it.
pub async fn delete_lineage<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<(), OpError> {
    let n = c
        .execute_unnamed(
            "DELETE FROM edge_table_lineages WHERE id = $1 AND org_id = $2 AND project_id = $3",
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?;
    if n == 0 {
        return Err(OpError::NotFound("lineage"));
    }
    Ok(())
}
