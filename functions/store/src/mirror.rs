//! Mirror tables and telemetry values: DDL from [`edge_cloud_core::mirror`], executed here,
//! and the set-based writes.

use edge_cloud_core::mirror::{ColumnValues, Guard, MirrorTable, UpsertPlan};
use edge_cloud_core::naming::{MirrorOwner, OwnerRef};
use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// Creates the mirror table, or adds the columns a later approval bound. A column that
/// exists with another type cannot be reconciled in place: that is a permanent error the
/// reviewer must resolve (new mirror name or an ignore action).
pub async fn ensure_mirror<C: GenericClient + Sync>(
    c: &C,
    table: &MirrorTable,
) -> Result<(), StoreError> {
    let existing = c
        .query_unnamed(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a \
             WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 \
                 AND NOT a.attisdropped",
            &[&table.name],
        )
        .await?;
    if existing.is_empty() {
        c.batch_execute(&table.create_sql()).await?;
        return Ok(());
    }
    let names: Vec<String> = existing.iter().map(|r| r.get(0)).collect();
    for col in &table.columns {
        if let Some(r) = existing.iter().find(|r| r.get::<_, String>(0) == col.name) {
            let ty: String = r.get(1);
            if ty != col.ty.sql() {
                return Err(StoreError::Corrupt(format!(
                    "mirror {:?} column {:?} is {ty}, the binding wants {}",
                    table.name,
                    col.name,
                    col.ty.sql()
                )));
            }
        }
    }
    for stmt in table.add_columns_sql(&names) {
        c.batch_execute(&stmt).await?;
    }
    Ok(())
}

/// The primary-key columns of an existing table in key order (empty when it does not exist).
pub async fn primary_key_columns<C: GenericClient + Sync>(
    c: &C,
    table_name: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(c.query_unnamed(
        "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary \
             ORDER BY k.ord",
        &[&table_name],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// The recorded owner of a mirror table (`edge_mirror_tables`), locked for the caller's
/// transaction; `None` when nobody owns the name.
pub async fn mirror_owner<C: GenericClient + Sync>(
    c: &C,
    table_name: &str,
) -> Result<Option<MirrorOwner>, StoreError> {
    let row = c
        .query_opt_unnamed(
            "SELECT lineage_id, coalesced_mirror_id, org_id, project_id FROM edge_mirror_tables \
             WHERE table_name = $1 FOR UPDATE",
            &[&table_name],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let owner = match (r.get::<_, Option<Uuid>>(0), r.get::<_, Option<Uuid>>(1)) {
        (Some(l), _) => OwnerRef::Lineage(l),
        (None, Some(m)) => OwnerRef::Coalesced(m),
        (None, None) => {
            return Err(StoreError::Corrupt(format!(
                "edge_mirror_tables {table_name:?} has no owner"
            )))
        }
    };
    Ok(Some(MirrorOwner {
        owner,
        org_id: r.get(2),
        project_id: r.get(3),
    }))
}

/// Records `owner` as the owner of a free mirror table name.
pub async fn record_mirror_owner<C: GenericClient + Sync>(
    c: &C,
    table_name: &str,
    owner: &MirrorOwner,
) -> Result<(), StoreError> {
    let (lineage, coalesced) = match owner.owner {
        OwnerRef::Lineage(l) => (Some(l), None),
        OwnerRef::Coalesced(m) => (None, Some(m)),
    };
    c.execute_unnamed(
        "INSERT INTO edge_mirror_tables (table_name, org_id, project_id, lineage_id, \
             coalesced_mirror_id) VALUES ($1, $2, $3, $4, $5)",
        &[
            &table_name,
            &owner.org_id,
            &owner.project_id,
            &lineage,
            &coalesced,
        ],
    )
    .await?;
    Ok(())
}

/// Executes an upsert plan as one statement; returns the rows written (older versions are
/// skipped by the guard and not counted).
pub async fn apply_upserts<C: GenericClient + Sync>(
    c: &C,
    table: &MirrorTable,
    device_id: Uuid,
    plan: &UpsertPlan,
) -> Result<u64, StoreError> {
    apply_guarded_upserts(c, table, device_id, plan, Guard::Newer).await
}

/// [`apply_upserts`] with the given version guard (drains use [`Guard::NewerOrSame`]).
pub async fn apply_guarded_upserts<C: GenericClient + Sync>(
    c: &C,
    table: &MirrorTable,
    device_id: Uuid,
    plan: &UpsertPlan,
    guard: Guard,
) -> Result<u64, StoreError> {
    if plan.is_empty() {
        return Ok(0);
    }
    // Typed parameters: one round trip (parse, bind and execute together) instead of a
    // prepare round trip before every execution.
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(plan.columns.len() + 4);
    params.push((&device_id, Type::UUID));
    for col in &plan.columns {
        params.push(match col {
            ColumnValues::Bigint(v) => (v, Type::INT8_ARRAY),
            ColumnValues::Double(v) => (v, Type::FLOAT8_ARRAY),
            ColumnValues::Text(v) | ColumnValues::Numeric(v) => (v, Type::TEXT_ARRAY),
            ColumnValues::Bytea(v) => (v, Type::BYTEA_ARRAY),
        });
    }
    params.push((&plan.epochs, Type::UUID_ARRAY));
    params.push((&plan.seqs, Type::INT8_ARRAY));
    params.push((&plan.deleted, Type::BOOL_ARRAY));
    Ok(c.execute_typed(&table.guarded_upsert_sql(guard), &params)
        .await?)
}

/// One row of `telemetry_data_point_value`.
#[derive(Debug, Clone)]
pub struct TelemetryValue {
    pub data_point_id: Uuid,
    pub ts: OffsetDateTime,
    pub row_index: i32,
    pub numeric: Option<f64>,
    pub text: Option<String>,
    pub json: Option<serde_json::Value>,
    pub row_id: Option<String>,
}

/// Inserts values of one batch; a redelivered batch writes nothing twice (key includes
/// batch id and row index), and a value another batch of the device already stored — same data
/// point, `ts`, `row_id` and value — is not stored again: the agent re-reads a telemetry table
/// from the start when its rowids went back (reliability §5), and those readings arrive under a
/// new batch id.
pub async fn insert_telemetry_values<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    batch_id: Uuid,
    values: &[TelemetryValue],
) -> Result<u64, StoreError> {
    if values.is_empty() {
        return Ok(0);
    }
    let dps: Vec<Uuid> = values.iter().map(|v| v.data_point_id).collect();
    let ts: Vec<OffsetDateTime> = values.iter().map(|v| v.ts).collect();
    let idx: Vec<i32> = values.iter().map(|v| v.row_index).collect();
    let num: Vec<Option<f64>> = values.iter().map(|v| v.numeric).collect();
    let text: Vec<Option<&str>> = values.iter().map(|v| v.text.as_deref()).collect();
    let json: Vec<Option<&serde_json::Value>> = values.iter().map(|v| v.json.as_ref()).collect();
    let row_ids: Vec<Option<&str>> = values.iter().map(|v| v.row_id.as_deref()).collect();
    // Typed: one round trip, and the statement goes out when first polled (replay pipelines it).
    Ok(c.execute_typed(
        "INSERT INTO telemetry_data_point_value (device_id, data_point_id, ts, batch_id, \
                 row_index, value_numeric, value_text, value_json, row_id) \
             SELECT $1, u.dp, u.ts, $2, u.i, u.n, u.t, u.j, u.r \
             FROM unnest($3::uuid[], $4::timestamptz[], $5::integer[], \
                 $6::double precision[], $7::text[], $8::jsonb[], $9::text[]) \
                 AS u(dp, ts, i, n, t, j, r) \
             WHERE NOT EXISTS (SELECT 1 FROM telemetry_data_point_value v \
                 WHERE v.data_point_id = u.dp AND v.ts = u.ts AND v.batch_id <> $2 \
                   AND v.device_id = $1 \
                   AND v.row_id IS NOT DISTINCT FROM u.r \
                   AND v.value_numeric IS NOT DISTINCT FROM u.n \
                   AND v.value_text IS NOT DISTINCT FROM u.t \
                   AND v.value_json IS NOT DISTINCT FROM u.j) \
             ON CONFLICT DO NOTHING",
        &[
            (&device_id, Type::UUID),
            (&batch_id, Type::UUID),
            (&dps, Type::UUID_ARRAY),
            (&ts, Type::TIMESTAMPTZ_ARRAY),
            (&idx, Type::INT4_ARRAY),
            (&num, Type::FLOAT8_ARRAY),
            (&text, Type::TEXT_ARRAY),
            (&json, Type::JSONB_ARRAY),
            (&row_ids, Type::TEXT_ARRAY),
        ],
    )
    .await?)
}

/// Marks a pending control acked by its device; false when unknown or already acked.
pub async fn ack_control<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    control_id: Uuid,
) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            "UPDATE edge_pending_controls SET status = 'acked', acked_at = now() \
             WHERE control_id = $1 AND device_id = $2 AND status = 'pending'",
            &[&control_id, &device_id],
        )
        .await?;
    Ok(n == 1)
}
