//! Mirror tables and telemetry values: DDL from [`edge_cloud_core::mirror`], executed here,
//! and the set-based writes.

use edge_cloud_core::mirror::{ColumnValues, MirrorTable, UpsertPlan};
use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::StoreError;

/// Creates the mirror table, or adds the columns a later approval bound. A column that
/// exists with another type cannot be reconciled in place: that is a permanent error the
/// reviewer must resolve (new mirror name or an ignore action).
pub async fn ensure_mirror<C: GenericClient>(c: &C, table: &MirrorTable) -> Result<(), StoreError> {
    let existing = c
        .query(
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

/// Executes an upsert plan as one statement; returns the rows written (older versions are
/// skipped by the guard and not counted).
pub async fn apply_upserts<C: GenericClient>(
    c: &C,
    table: &MirrorTable,
    device_id: Uuid,
    plan: &UpsertPlan,
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
    Ok(c.execute_typed(&table.upsert_sql(), &params).await?)
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
/// batch id and row index).
pub async fn insert_telemetry_values<C: GenericClient>(
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
pub async fn ack_control<C: GenericClient>(
    c: &C,
    device_id: Uuid,
    control_id: Uuid,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE edge_pending_controls SET status = 'acked', acked_at = now() \
             WHERE control_id = $1 AND device_id = $2 AND status = 'pending'",
            &[&control_id, &device_id],
        )
        .await?;
    Ok(n == 1)
}
