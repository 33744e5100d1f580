//! Rows of a lineage as the API shows them: its staged rows, and its live mirror rows with a
//! keyset cursor and a cached live-row count.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use edge_cloud_core::mirror::MirrorType;
use edge_cloud_core::naming::{quote_ident, uuid8, PLATFORM_COLUMNS};

use crate::error::OpError;
use crate::read::lineages::lineage;
use crate::scope::{ts, Page, Scope};
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StagedRowView {
    pub journal_epoch: Uuid,
    pub source_commit_seq: i64,
    pub op: String,
    pub pk: Option<serde_json::Value>,
    pub row: Option<serde_json::Value>,
    pub schema_hash: String,
    pub staging_reason: String,
    pub error: Option<String>,
    pub staged_at: String,
}

/// A page of a lineage's staged rows in replay order.
pub async fn staged_rows<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    page: Page,
) -> Result<(Vec<StagedRowView>, i64), OpError> {
    let l = lineage(c, scope, id).await?;
    let rows = c
        .query_unnamed(
            "SELECT journal_epoch, source_commit_seq, op, pk, \"row\", schema_hash, \
                 staging_reason, error, staged_at \
             FROM edge_staged_rows WHERE lineage_id = $1 \
             ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $2 OFFSET $3",
            &[&id, &page.limit, &page.offset()],
        )
        .await?;
    Ok((
        rows.iter()
            .map(|r| StagedRowView {
                journal_epoch: r.get(0),
                source_commit_seq: r.get(1),
                op: r.get(2),
                // The operator sees the device's values, not the storage marker.
                pk: r
                    .get::<_, Option<serde_json::Value>>(3)
                    .map(|v| edge_cloud_core::staged_json::decode(&v)),
                row: r
                    .get::<_, Option<serde_json::Value>>(4)
                    .map(|v| edge_cloud_core::staged_json::decode(&v)),
                schema_hash: r.get(5),
                staging_reason: r.get(6),
                error: r.get(7),
                staged_at: ts(r.get(8)),
            })
            .collect(),
        // The lineage counter is maintained with every stage/drain: no count(*) scan needed.
        l.staged_row_count,
    ))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MaterializedAt {
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MirrorRow {
    pub device_id: Uuid,
    pub materialized_at: MaterializedAt,
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MirrorRows {
    pub mirror_table_name: String,
    /// `mirror` (per device) or `coalesced` (shared by a project or fleet).
    pub source: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<MirrorRow>,
}

/// A page of the lineage's live (not tombstoned) mirror rows in primary-key order, with the
/// business columns `columns` (all when `None`; an unknown name is a 400).
pub async fn mirror_rows<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    columns: Option<&[String]>,
    page: Page,
    after: Option<&str>,
) -> Result<(MirrorRows, i64, Option<String>), OpError> {
    let l = lineage(c, scope, id).await?;
    let Some(table) = l.mirror_table_name.clone() else {
        return Err(OpError::NotFound(
            "mirror table (the lineage was never approved)",
        ));
    };
    let catalog = c
        .query_typed(
            "SELECT a.attname::text, \
                 COALESCE(array_position(i.indkey::int2[], a.attnum), 0)::integer, \
                 format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attnum",
            &[(&table, Type::TEXT)],
        )
        .await?;
    if catalog.is_empty() {
        return Err(OpError::NotFound("mirror table"));
    }
    let business: Vec<String> = catalog
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| !PLATFORM_COLUMNS.contains(&n.as_str()))
        .collect();
    let selected: Vec<String> = match columns {
        None => business.clone(),
        Some(wanted) => {
            if let Some(bad) = wanted.iter().find(|w| !business.contains(w)) {
                return Err(OpError::Invalid {
                    code: "unknown_column",
                    message: format!(
                        "column {bad:?} is not a column of {table}; known: {}",
                        business.join(", ")
                    ),
                });
            }
            wanted.to_vec()
        }
    };
    let mut pk: Vec<(i32, String, String)> = catalog
        .iter()
        .filter(|r| r.get::<_, i32>(1) > 0)
        .map(|r| (r.get(1), r.get(0), r.get(2)))
        .collect();
    pk.sort();
    let order: Vec<String> = pk.iter().map(|(_, n, _)| quote_ident(n)).collect();
    let order = if order.is_empty() {
        "\"device_id\"".to_owned()
    } else {
        order.join(", ")
    };
    // The keyset cursor: the last row's business key as text, so the next page starts with an
    // index range scan instead of walking OFFSET rows (cloud.md §10 pages stay available).
    let business_pk: Vec<&(i32, String, String)> =
        pk.iter().filter(|(_, n, _)| n != "device_id").collect();
    let cursor_expr = if business_pk.is_empty() {
        "NULL::text[]".to_owned()
    } else {
        format!(
            "ARRAY[{}]::text[]",
            business_pk
                .iter()
                .map(|(_, n, _)| format!("m.{}::text", quote_ident(n)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let after_values: Option<Vec<String>> = match after {
        None => None,
        Some(cur) => {
            let values =
                decode_cursor(cur).filter(|v| v.len() == business_pk.len() && !v.is_empty());
            Some(values.ok_or(OpError::Invalid {
                code: "invalid_cursor",
                message: "after must be a next_cursor of this mirror".into(),
            })?)
        }
    };
    let mut keyset = String::new();
    if let Some(values) = &after_values {
        let mut lhs = Vec::new();
        let mut rhs = Vec::new();
        for (i, ((_, n, ty), _)) in business_pk.iter().zip(values).enumerate() {
            // The type comes from the catalog, and only mirror types are accepted, so the cast
            // spliced here is one of five fixed names.
            let ty = MirrorType::from_sql(ty)
                .ok_or_else(|| StoreError::Corrupt(format!("mirror key type {ty:?}")))?;
            lhs.push(quote_ident(n));
            rhs.push(format!("${}::text::{}", i + 5, ty.sql()));
        }
        keyset = format!(" AND ({}) > ({})", lhs.join(", "), rhs.join(", "));
    }
    let offset = if after_values.is_some() {
        0
    } else {
        page.offset()
    };
    let t = quote_ident(&table);
    // The row's JSON holds just the selected columns, built by `jsonb_build_object` from the
    // columns themselves: the keys are `$4[i]` (names travel as a parameter, never as SQL
    // text) and the values are quoted identifiers of columns the catalog just listed. (The
    // earlier `jsonb_each(to_jsonb(m.*))` + `jsonb_object_agg` built and took apart a document
    // of every column per row: 3–5× the page query's time.) The page is cut in a subquery
    // first: a projection below LIMIT/OFFSET would build JSON for every skipped row.
    let data_expr = if selected.is_empty() {
        // Still mentions $4, whose type PostgreSQL could not infer otherwise.
        "(jsonb_build_object() - $4::text[])".to_owned()
    } else {
        format!(
            "jsonb_build_object({})",
            selected
                .iter()
                .enumerate()
                .map(|(i, n)| format!("($4::text[])[{}], m.{}", i + 1, quote_ident(n)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let sql = format!(
        "SELECT m.\"device_id\", m.\"created_at\", m.\"updated_at\", {data_expr}, \
             {cursor_expr} \
         FROM (SELECT * FROM {t} WHERE \"device_id\" = $1 AND NOT \"_edge_deleted\"{keyset} \
               ORDER BY {order} LIMIT $2 OFFSET $3) m \
         ORDER BY {order}"
    );
    let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = vec![
        (&l.device_id, Type::UUID),
        (&page.limit, Type::INT8),
        (&offset, Type::INT8),
        (&selected, Type::TEXT_ARRAY),
    ];
    if let Some(values) = &after_values {
        for v in values {
            params.push((v, Type::TEXT));
        }
    }
    let rows = c.query_typed(&sql, &params).await?;
    let next_cursor = match rows.last() {
        Some(r) if i64::try_from(rows.len()).unwrap_or(0) == page.limit => r
            .get::<_, Option<Vec<String>>>(4)
            .map(|v| encode_cursor(&v)),
        _ => None,
    };
    let total = live_count(c, l.id, &table, l.device_id).await?;
    let coalesced = table.starts_with(&format!("edge_mirror_p{}_", uuid8(&l.project_id)))
        || table.starts_with(&format!("edge_mirror_f{}_", uuid8(&l.fleet_id)));
    Ok((
        MirrorRows {
            mirror_table_name: table,
            source: if coalesced { "coalesced" } else { "mirror" },
            columns: selected,
            rows: rows
                .iter()
                .map(|r| {
                    let data = match r.get::<_, serde_json::Value>(3) {
                        serde_json::Value::Object(m) => m,
                        _ => serde_json::Map::new(),
                    };
                    MirrorRow {
                        device_id: r.get(0),
                        materialized_at: MaterializedAt {
                            created_at: ts(r.get(1)),
                            updated_at: ts(r.get(2)),
                        },
                        data,
                    }
                })
                .collect(),
        },
        total,
        next_cursor,
    ))
}

/// How long a large mirror's live-row count is reused. `meta.total` of mirror rows may lag by up
/// to this much once a device has [`MIRROR_COUNT_CACHED_FROM`] rows or more; in exchange a page
/// request does not scan all of the device's rows (a `count(*)` per request dominated the
/// page's latency under concurrent clients). Smaller counts are cheap and always exact.
pub const MIRROR_COUNT_TTL: Duration = Duration::from_secs(5);

/// Live-row count from which [`MIRROR_COUNT_TTL`] applies.
pub const MIRROR_COUNT_CACHED_FROM: i64 = 10_000;

/// Keyed by lineage too: a lineage id is unique across databases, a table name is not.
type CountCache = Mutex<HashMap<(Uuid, String, Uuid), (Instant, i64)>>;

fn count_cache() -> &'static CountCache {
    static CACHE: OnceLock<CountCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Live (not tombstoned) rows of a device in a mirror, from the process-wide cache when fresh.
async fn live_count<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    table: &str,
    device_id: Uuid,
) -> Result<i64, OpError> {
    let key = (lineage_id, table.to_owned(), device_id);
    let now = Instant::now();
    // A poisoned lock only loses the cache, never the answer.
    if let Ok(cache) = count_cache().lock() {
        if let Some((at, n)) = cache.get(&key) {
            if now.duration_since(*at) < MIRROR_COUNT_TTL {
                return Ok(*n);
            }
        }
    }
    let n: i64 = c
        .query_one_unnamed(
            &format!(
                "SELECT count(*) FROM {} m WHERE m.\"device_id\" = $1 AND NOT m.\"_edge_deleted\"",
                quote_ident(table)
            ),
            &[&device_id],
        )
        .await?
        .get(0);
    if n < MIRROR_COUNT_CACHED_FROM {
        return Ok(n);
    }
    if let Ok(mut cache) = count_cache().lock() {
        // Bounded: a process serving many mirrors starts over rather than grow without limit.
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(key, (now, n));
    }
    Ok(n)
}

/// `next_cursor`: the key values as a JSON array, hex-encoded so it is URL-safe as is.
fn encode_cursor(values: &[String]) -> String {
    let json = serde_json::to_string(values).unwrap_or_default();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<Vec<String>> {
    if cursor.len() % 2 != 0 || cursor.len() > 8192 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| {
            cursor
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    serde_json::from_slice(&bytes?).ok()
}
