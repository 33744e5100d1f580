//! Reads behind the HTTP API (cloud.md §10): lineages, schema versions, bindings, staged rows,
//! mirror rows, reviews and the events feed.
//!
//! Every query is scoped by `(org_id, project_id)` in its WHERE clause, so an object of another
//! tenant is indistinguishable from a missing one (the API answers 404 for both).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use edge_cloud_core::mirror::MirrorType;
use edge_cloud_core::naming::{quote_ident, uuid8, PLATFORM_COLUMNS};

use crate::StoreError;

/// The tenant scope of a request; only ever built from the authenticated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub org_id: Uuid,
    pub project_id: Uuid,
}

/// A 1-based page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i64,
    pub limit: i64,
}

impl Page {
    fn offset(&self) -> i64 {
        (self.page.max(1) - 1).saturating_mul(self.limit)
    }
}

/// Why an API operation did not happen (the API maps each variant to a status code).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Store(StoreError::Db(e))
    }
}

/// RFC 3339 text of a timestamp (what every API response carries).
pub fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

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
}

const LINEAGE_VIEW: &str = "l.id, l.org_id, l.project_id, l.fleet_id, l.device_id, \
     l.source_table, l.kind, l.status, l.pause_reason, l.device_pause_reason, \
     l.mirror_table_name, l.current_schema_hash, l.approved_schema_hash, l.staged_row_count, \
     l.staged_bytes, l.materialization_failure_count, l.materialization_last_error, \
     l.created_at, l.updated_at";

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
pub async fn list_lineages<C: GenericClient>(
    c: &C,
    scope: Scope,
    f: &LineageFilter,
    page: Page,
) -> Result<(Vec<LineageView>, i64), OpError> {
    // NULL parameters switch a filter off, so one prepared statement serves every combination.
    const WHERE: &str = "l.org_id = $1 AND l.project_id = $2 \
         AND ($3::uuid IS NULL OR l.device_id = $3) AND ($4::uuid IS NULL OR l.fleet_id = $4) \
         AND ($5::text IS NULL OR l.status = $5) AND ($6::text IS NULL OR l.source_table = $6)";
    // Typed statements: one round trip each (no separate prepare) on the API's hottest reads.
    let offset = page.offset();
    let rows = c
        .query_typed(
            &format!(
                "SELECT {LINEAGE_VIEW}, count(*) OVER () FROM edge_table_lineages l \
                 WHERE {WHERE} ORDER BY l.created_at, l.id LIMIT $7 OFFSET $8"
            ),
            &[
                (&scope.org_id, Type::UUID),
                (&scope.project_id, Type::UUID),
                (&f.device_id, Type::UUID),
                (&f.fleet_id, Type::UUID),
                (&f.status, Type::TEXT),
                (&f.source_table, Type::TEXT),
                (&page.limit, Type::INT8),
                (&offset, Type::INT8),
            ],
        )
        .await?;
    let total = match rows.first() {
        Some(r) => r.get(19),
        // Past the last page the window count is gone with the rows: count separately.
        None => c
            .query_one(
                &format!("SELECT count(*) FROM edge_table_lineages l WHERE {WHERE}"),
                &[
                    &scope.org_id,
                    &scope.project_id,
                    &f.device_id,
                    &f.fleet_id,
                    &f.status,
                    &f.source_table,
                ],
            )
            .await?
            .get(0),
    };
    Ok((rows.iter().map(lineage_view).collect(), total))
}

/// One lineage of the scope.
pub async fn lineage<C: GenericClient>(
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
pub async fn lineage_detail<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<LineageDetail, OpError> {
    let lineage = lineage(c, scope, id).await?;
    let versions = c
        .query(
            "SELECT schema_hash, classification, columns, diff, first_seen, last_seen \
             FROM edge_schema_versions WHERE lineage_id = $1 ORDER BY first_seen, schema_hash",
            &[&id],
        )
        .await?;
    let bindings = c
        .query(
            "SELECT schema_hash, source_column_name, action, mirror_table_name, \
                 mirror_column_name, mirror_type, pk_ordinal, device_data_point_id \
             FROM edge_column_bindings WHERE lineage_id = $1 \
             ORDER BY created_at, schema_hash, source_column_name",
            &[&id],
        )
        .await?;
    let intent = c
        .query_opt(
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
pub async fn staged_rows<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    page: Page,
) -> Result<(Vec<StagedRowView>, i64), OpError> {
    let l = lineage(c, scope, id).await?;
    let rows = c
        .query(
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
pub async fn mirror_rows<C: GenericClient>(
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
async fn live_count<C: GenericClient>(
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
        .query_one(
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

/// A schema review as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReviewView {
    pub id: Uuid,
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub source_table: String,
    pub schema_hash: String,
    pub classification: String,
    pub diff: serde_json::Value,
    pub status: String,
    pub action_version: i32,
    pub claimed_by: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) const REVIEW_VIEW: &str = "r.id, r.lineage_id, l.device_id, l.source_table, \
     r.schema_hash, r.classification, r.diff, r.state, r.action_version, r.claimed_by, \
     r.decided_by, r.decided_at, r.reason, r.created_at, r.updated_at";

pub(crate) fn review_view(r: &tokio_postgres::Row) -> ReviewView {
    ReviewView {
        id: r.get(0),
        lineage_id: r.get(1),
        device_id: r.get(2),
        source_table: r.get(3),
        schema_hash: r.get(4),
        classification: r.get(5),
        diff: r.get(6),
        status: r.get(7),
        action_version: r.get(8),
        claimed_by: r.get(9),
        decided_by: r.get(10),
        decided_at: r.get::<_, Option<OffsetDateTime>>(11).map(ts),
        reason: r.get(12),
        created_at: ts(r.get(13)),
        updated_at: ts(r.get(14)),
    }
}

/// A page of the scope's reviews, newest first.
pub async fn list_reviews<C: GenericClient>(
    c: &C,
    scope: Scope,
    status: Option<&str>,
    lineage_id: Option<Uuid>,
    page: Page,
) -> Result<(Vec<ReviewView>, i64), OpError> {
    const WHERE: &str = "l.org_id = $1 AND l.project_id = $2 \
         AND ($3::text IS NULL OR r.state = $3) AND ($4::uuid IS NULL OR r.lineage_id = $4)";
    let rows = c
        .query(
            &format!(
                "SELECT {REVIEW_VIEW}, count(*) OVER () FROM edge_schema_reviews r \
                 JOIN edge_table_lineages l ON l.id = r.lineage_id WHERE {WHERE} \
                 ORDER BY r.created_at DESC, r.id DESC LIMIT $5 OFFSET $6"
            ),
            &[
                &scope.org_id,
                &scope.project_id,
                &status,
                &lineage_id,
                &page.limit,
                &page.offset(),
            ],
        )
        .await?;
    let total = match rows.first() {
        Some(r) => r.get(15),
        None => c
            .query_one(
                &format!(
                    "SELECT count(*) FROM edge_schema_reviews r \
                     JOIN edge_table_lineages l ON l.id = r.lineage_id WHERE {WHERE}"
                ),
                &[&scope.org_id, &scope.project_id, &status, &lineage_id],
            )
            .await?
            .get(0),
    };
    Ok((rows.iter().map(review_view).collect(), total))
}

/// One review of the scope (`lock`: row-locked for a transition).
pub async fn review<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<ReviewView, OpError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {REVIEW_VIEW} FROM edge_schema_reviews r \
                 JOIN edge_table_lineages l ON l.id = r.lineage_id \
                 WHERE r.id = $1 AND l.org_id = $2 AND l.project_id = $3{}",
                if lock { " FOR UPDATE OF r, l" } else { "" }
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound("schema review"))?;
    Ok(review_view(&row))
}

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
pub async fn events<C: GenericClient>(
    c: &C,
    scope: Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<EventView>, OpError> {
    let rows = c
        .query(
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
