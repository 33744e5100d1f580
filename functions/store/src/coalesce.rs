//! Registry coalescing (cloud.md §9): registry entries and reviews, adoption of lineages into a
//! shared mirror, and consolidation of per-device mirrors. Decisions come from
//! [`edge_cloud_core::coalesce`]; every write runs in the caller's transaction with its event.
//!
//! Adoption is what makes "approved once, every device auto-approved" work: an approved entry
//! keeps its binding rows as JSON, and binding a lineage is one `INSERT … SELECT FROM
//! jsonb_to_recordset` into `edge_column_bindings` plus the lineage update, so the regular
//! materializer and replay worker then treat the lineage exactly like a per-device approval
//! (the shared mirror has `device_id` in its key like every mirror).

use edge_cloud_core::classify::{SchemaClass, SchemaDiff};
use edge_cloud_core::coalesce::{
    check_registry_actions, coalesced_mirror_name, consolidate_sql, registry_intake,
    registry_scope, CoalescingMode, RegistryIntake, RegistryScope, RegistryStatus, ScopeKind,
};
use edge_cloud_core::naming::PLATFORM_COLUMNS;
use edge_cloud_core::review::{
    plan_approval, transition, ApprovalPolicy, ApprovalTarget, ColumnAction, ReviewAction,
    ReviewState,
};
use edge_protocol::fingerprint::SchemaColumns;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::mirror::ensure_mirror;
use crate::query::{ts, OpError, Page, Scope};
use crate::registry::Device;
use crate::StoreError;

/// The project's coalescing mode (`none` without a policy row).
pub async fn mode<C: GenericClient>(c: &C, project_id: Uuid) -> Result<CoalescingMode, StoreError> {
    let row = c
        .query_opt(
            "SELECT schema_coalescing_mode FROM edge_replication_policy WHERE project_id = $1",
            &[&project_id],
        )
        .await?;
    let m: Option<String> = row.map(|r| r.get(0));
    CoalescingMode::parse(m.as_deref().unwrap_or("none"))
        .ok_or_else(|| StoreError::Corrupt(format!("schema_coalescing_mode {m:?}")))
}

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
pub async fn intake<C: GenericClient>(
    c: &C,
    device: &Device,
    lineage_id: Uuid,
    source_table: &str,
    schema_hash: &str,
) -> Result<Intake, StoreError> {
    let mode = mode(c, device.project_id).await?;
    let Some(scope) = registry_scope(mode, device.project_id, device.fleet_id) else {
        return Ok(Intake::PerDevice);
    };
    let entry = c
        .query_opt(
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
pub async fn open_registry_review<C: GenericClient>(
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
        .execute(
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
    c.execute(
        "INSERT INTO edge_registry_reviews (id, registry_id, org_id, project_id) \
         VALUES ($1, $2, $3, $4)",
        &[&review_id, &entry_id, &device.org_id, &device.project_id],
    )
    .await?;
    event(
        c,
        "integration.edge_schema_review.queued.v1",
        Scope {
            org_id: device.org_id,
            project_id: device.project_id,
        },
        review_id,
        serde_json::json!({"registry_id": entry_id, "registry_review_id": review_id,
            "scope": scope.kind.as_str(), "scope_id": scope.id, "source_table": source_table,
            "schema_hash": schema_hash, "classification": class.as_str(),
            "device_id": device.device_id, "lineage_id": lineage_id}),
    )
    .await?;
    Ok(true)
}

async fn event<C: GenericClient>(
    c: &C,
    event_type: &str,
    scope: Scope,
    subject: Uuid,
    payload: serde_json::Value,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO edge_events (event_type, org_id, project_id, subject_id, payload) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &event_type,
            &scope.org_id,
            &scope.project_id,
            &subject,
            &payload,
        ],
    )
    .await?;
    Ok(())
}

/// Binds lineages to an approved entry: its binding rows (pointing at the shared mirror), the
/// approved hash and mirror on the lineage, `active` unless a deferred required column or a
/// flow-control pause holds it, and a replay intent where rows of the hash are staged. Returns
/// the lineages bound by this call (already-bound ones are skipped).
pub async fn adopt<C: GenericClient>(
    c: &C,
    registry_id: Uuid,
    lineage_ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    let rows = c
        .query(
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

// ---------------------------------------------------------------------------------------------
// API reads

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

fn offset(p: Page) -> i64 {
    (p.page.max(1) - 1).saturating_mul(p.limit)
}

/// Filters of the registry list.
#[derive(Debug, Clone, Default)]
pub struct RegistryFilter {
    pub status: Option<String>,
    pub source_table: Option<String>,
}

/// A page of the scope's registry entries, newest first.
pub async fn list_registry<C: GenericClient>(
    c: &C,
    scope: Scope,
    f: &RegistryFilter,
    page: Page,
) -> Result<(Vec<RegistryEntryView>, i64), OpError> {
    const WHERE: &str = "g.org_id = $1 AND g.project_id = $2 \
         AND ($3::text IS NULL OR g.status = $3) AND ($4::text IS NULL OR g.source_table = $4)";
    let total: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM edge_schema_registry g WHERE {WHERE}"),
            &[&scope.org_id, &scope.project_id, &f.status, &f.source_table],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {ENTRY_VIEW} FROM edge_schema_registry g WHERE {WHERE} \
                 ORDER BY g.created_at DESC, g.id DESC LIMIT $5 OFFSET $6"
            ),
            &[
                &scope.org_id,
                &scope.project_id,
                &f.status,
                &f.source_table,
                &page.limit,
                &offset(page),
            ],
        )
        .await?;
    Ok((rows.iter().map(entry_view).collect(), total))
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
pub async fn registry_detail<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<RegistryDetail, OpError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {ENTRY_VIEW} FROM edge_schema_registry g \
                 WHERE g.id = $1 AND g.org_id = $2 AND g.project_id = $3"
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound("registry entry"))?;
    let entry = entry_view(&row);
    let reviews = c
        .query(
            &format!(
                "SELECT {RREVIEW_VIEW} FROM edge_registry_reviews r \
                 JOIN edge_schema_registry g ON g.id = r.registry_id \
                 WHERE r.registry_id = $1 ORDER BY r.created_at, r.id"
            ),
            &[&id],
        )
        .await?
        .iter()
        .map(rreview_view)
        .collect();
    let lineage_ids = c
        .query(
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

/// A registry review as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryReviewView {
    pub id: Uuid,
    pub registry_id: Uuid,
    /// `project` | `fleet`
    pub scope: String,
    pub scope_id: Uuid,
    pub source_table: String,
    pub schema_hash: String,
    pub classification: String,
    pub diff: serde_json::Value,
    /// queued | in_review | approved | rejected | abandoned
    pub status: String,
    pub action_version: i32,
    pub claimed_by: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const RREVIEW_VIEW: &str = "r.id, r.registry_id, g.scope_kind, g.scope_id, g.source_table, \
     g.schema_hash, g.classification, g.diff, r.state, r.action_version, r.claimed_by, \
     r.decided_by, r.decided_at, r.reason, r.created_at, r.updated_at";

fn rreview_view(r: &tokio_postgres::Row) -> RegistryReviewView {
    RegistryReviewView {
        id: r.get(0),
        registry_id: r.get(1),
        scope: r.get(2),
        scope_id: r.get(3),
        source_table: r.get(4),
        schema_hash: r.get(5),
        classification: r.get(6),
        diff: r.get(7),
        status: r.get(8),
        action_version: r.get(9),
        claimed_by: r.get(10),
        decided_by: r.get(11),
        decided_at: r.get::<_, Option<OffsetDateTime>>(12).map(ts),
        reason: r.get(13),
        created_at: ts(r.get(14)),
        updated_at: ts(r.get(15)),
    }
}

/// A page of the scope's registry reviews, newest first.
pub async fn list_registry_reviews<C: GenericClient>(
    c: &C,
    scope: Scope,
    status: Option<&str>,
    registry_id: Option<Uuid>,
    page: Page,
) -> Result<(Vec<RegistryReviewView>, i64), OpError> {
    const WHERE: &str = "r.org_id = $1 AND r.project_id = $2 \
         AND ($3::text IS NULL OR r.state = $3) AND ($4::uuid IS NULL OR r.registry_id = $4)";
    let total: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM edge_registry_reviews r WHERE {WHERE}"),
            &[&scope.org_id, &scope.project_id, &status, &registry_id],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {RREVIEW_VIEW} FROM edge_registry_reviews r \
                 JOIN edge_schema_registry g ON g.id = r.registry_id WHERE {WHERE} \
                 ORDER BY r.created_at DESC, r.id DESC LIMIT $5 OFFSET $6"
            ),
            &[
                &scope.org_id,
                &scope.project_id,
                &status,
                &registry_id,
                &page.limit,
                &offset(page),
            ],
        )
        .await?;
    Ok((rows.iter().map(rreview_view).collect(), total))
}

/// One registry review of the scope (locked with its entry for a transition).
pub async fn registry_review<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<RegistryReviewView, OpError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {RREVIEW_VIEW} FROM edge_registry_reviews r \
                 JOIN edge_schema_registry g ON g.id = r.registry_id \
                 WHERE r.id = $1 AND r.org_id = $2 AND r.project_id = $3{}",
                if lock { " FOR UPDATE OF r, g" } else { "" }
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound("registry review"))?;
    Ok(rreview_view(&row))
}

// ---------------------------------------------------------------------------------------------
// Registry review transitions

fn check(
    r: &RegistryReviewView,
    action: ReviewAction,
    given: Option<i32>,
) -> Result<ReviewState, OpError> {
    let state = ReviewState::parse(&r.status)
        .ok_or_else(|| StoreError::Corrupt(format!("registry review state {:?}", r.status)))?;
    transition(state, r.action_version, action, given).map_err(|e| OpError::Conflict {
        code: e.code(),
        message: e.to_string(),
    })
}

fn scope_of(r: &RegistryReviewView) -> Result<RegistryScope, OpError> {
    let kind = ScopeKind::parse(&r.scope)
        .ok_or_else(|| StoreError::Corrupt(format!("registry scope {:?}", r.scope)))?;
    Ok(RegistryScope {
        kind,
        id: r.scope_id,
    })
}

/// queued → in_review.
pub async fn claim<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: Option<i32>,
) -> Result<RegistryReviewView, OpError> {
    let r = registry_review(c, scope, id, true).await?;
    let next = check(&r, ReviewAction::Claim, given_version)?;
    c.execute(
        "UPDATE edge_registry_reviews SET state = $2, claimed_by = $3, \
             action_version = action_version + 1, updated_at = now() WHERE id = $1",
        &[&id, &next.as_str(), &actor],
    )
    .await?;
    registry_review(c, scope, id, false).await
}

/// queued | in_review → rejected (entry `rejected`: devices sending the hash keep staging) or
/// → abandoned (entry `abandoned`: each waiting lineage gets its own per-device review, and
/// later devices take the per-device path).
pub async fn close<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    reason: Option<&str>,
    abandon: bool,
) -> Result<RegistryReviewView, OpError> {
    let r = registry_review(c, scope, id, true).await?;
    let action = if abandon {
        ReviewAction::Abandon
    } else {
        ReviewAction::Reject
    };
    let next = check(&r, action, Some(given_version))?;
    c.execute(
        "UPDATE edge_registry_reviews SET state = $2, reason = $3, decided_by = $4, \
             decided_at = now(), action_version = action_version + 1, updated_at = now() \
         WHERE id = $1",
        &[&id, &next.as_str(), &reason, &actor],
    )
    .await?;
    let entry_status = if abandon { "abandoned" } else { "rejected" };
    c.execute(
        "UPDATE edge_schema_registry SET status = $2, updated_at = now() WHERE id = $1",
        &[&r.registry_id, &entry_status],
    )
    .await?;
    let mut handed_back: Vec<Uuid> = Vec::new();
    if abandon {
        // Per-device reviews for every lineage waiting on this hash, with their queued events,
        // in one statement.
        let rs = scope_of(&r)?;
        handed_back = c
            .query(
                "WITH w AS ( \
                     SELECT l.id, l.device_id FROM edge_table_lineages l \
                     WHERE l.project_id = $1 AND l.source_table = $2 \
                         AND ($3 = 'project' OR l.fleet_id = $4) \
                         AND (l.current_schema_hash = $5 OR EXISTS (SELECT 1 \
                             FROM edge_staged_rows s WHERE s.lineage_id = l.id \
                                 AND s.schema_hash = $5)) \
                         AND NOT EXISTS (SELECT 1 FROM edge_column_bindings b \
                             WHERE b.lineage_id = l.id AND b.schema_hash = $5)), \
                 rv AS ( \
                     INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, \
                         classification, diff) \
                     SELECT gen_random_uuid(), w.id, $5, $6, $7 FROM w \
                     ON CONFLICT (lineage_id, schema_hash) WHERE state IN ('queued', 'in_review') \
                     DO NOTHING RETURNING id, lineage_id), \
                 ev AS ( \
                     INSERT INTO edge_events (event_type, org_id, project_id, subject_id, payload) \
                     SELECT 'integration.edge_schema_review.queued.v1', $8, $1, rv.id, \
                         jsonb_build_object('lineage_id', rv.lineage_id, 'schema_hash', $5::text, \
                             'classification', $6::text, 'device_id', w.device_id, \
                             'from_registry_id', $9::uuid) \
                     FROM rv JOIN w ON w.id = rv.lineage_id) \
                 SELECT lineage_id FROM rv",
                &[
                    &scope.project_id,
                    &r.source_table,
                    &rs.kind.as_str(),
                    &rs.id,
                    &r.schema_hash,
                    &r.classification,
                    &r.diff,
                    &scope.org_id,
                    &r.registry_id,
                ],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
    }
    event(
        c,
        if abandon {
            "integration.edge_schema_review.abandoned.v1"
        } else {
            "integration.edge_schema_review.rejected.v1"
        },
        scope,
        id,
        serde_json::json!({"registry_id": r.registry_id, "schema_hash": r.schema_hash,
            "source_table": r.source_table, "reason": reason, "decided_by": actor,
            "per_device_review_lineages": handed_back}),
    )
    .await?;
    registry_review(c, scope, id, false).await
}

/// What a registry approval did besides moving the review.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryApproval {
    pub review: RegistryReviewView,
    pub mirror_table_name: Option<String>,
    pub coalesced_mirror_id: Option<Uuid>,
    /// Lineages of the scope waiting on this hash, bound now.
    pub adopted_lineage_ids: Vec<Uuid>,
    pub blocking_deferred: Vec<String>,
}

/// in_review → approved: shared mirror DDL, the entry's binding rows, the coalesced mirror
/// record, adoption of every waiting lineage of the scope, and the event — one transaction.
pub async fn approve<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    actions: &[ColumnAction],
) -> Result<RegistryApproval, OpError> {
    let r = registry_review(c, scope, id, true).await?;
    check(&r, ReviewAction::Approve, Some(given_version))?;
    check_registry_actions(actions).map_err(|e| OpError::Invalid {
        code: "registry_action_not_supported",
        message: e.to_string(),
    })?;
    let rs = scope_of(&r)?;
    let columns = c
        .query_opt(
            "SELECT v.columns FROM edge_schema_versions v \
             JOIN edge_table_lineages l ON l.id = v.lineage_id \
             WHERE l.project_id = $1 AND l.source_table = $2 AND v.schema_hash = $3 \
                 AND v.columns IS NOT NULL LIMIT 1",
            &[&scope.project_id, &r.source_table, &r.schema_hash],
        )
        .await?;
    let Some(columns) = columns else {
        return Err(OpError::Conflict {
            code: "schema_columns_missing",
            message: format!(
                "no columns were recorded for schema {}: wait for a batch carrying \
                 schema_columns",
                r.schema_hash
            ),
        });
    };
    let schema: SchemaColumns = serde_json::from_value(columns.get(0))
        .map_err(|e| StoreError::Corrupt(format!("schema columns of {}: {e}", r.schema_hash)))?;
    let shared = coalesced_mirror_name(rs, &r.source_table);
    let plan = plan_approval(
        ApprovalTarget {
            device_id: Uuid::nil(),
            source_table: &r.source_table,
            telemetry: false,
            existing_mirror: Some(&shared),
        },
        &schema,
        actions,
        ApprovalPolicy {
            allow_auto_create_device_data_points: false,
        },
    )
    .map_err(|e| OpError::Invalid {
        code: e.code(),
        message: e.to_string(),
    })?;
    if let Some(table) = &plan.mirror {
        ensure_mirror(c, table).await.map_err(|e| match e {
            StoreError::Corrupt(m) => OpError::Conflict {
                code: "mirror_column_type_conflict",
                message: m,
            },
            other => OpError::Store(other),
        })?;
    }
    let bindings: Vec<serde_json::Value> = actions
        .iter()
        .map(|a| {
            let m = plan.mirror.as_ref().and_then(|t| {
                t.columns
                    .iter()
                    .find(|c| c.source_name == a.source_column_name)
            });
            serde_json::json!({
                "source_column_name": a.source_column_name,
                "action": a.action.as_str(),
                "mirror_column_name": m.map(|c| c.name.clone()),
                "mirror_type": m.map(|c| c.ty.sql()),
                "pk_ordinal": m.map_or(0, |c| c.pk_ordinal),
            })
        })
        .collect();
    let mirror_name = plan.mirror.as_ref().map(|t| t.name.clone());
    c.execute(
        "UPDATE edge_schema_registry SET status = 'approved', bindings = $2, \
             mirror_table_name = $3, activates = $4, updated_at = now() WHERE id = $1",
        &[
            &r.registry_id,
            &serde_json::Value::Array(bindings),
            &mirror_name,
            &plan.activates(),
        ],
    )
    .await?;
    let coalesced_mirror_id: Option<Uuid> = match &mirror_name {
        Some(name) => Some(
            c.query_one(
                "INSERT INTO edge_coalesced_mirrors (id, org_id, project_id, scope_kind, \
                     scope_id, source_table, mirror_table_name) \
                 VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (project_id, scope_kind, scope_id, source_table) \
                     DO UPDATE SET updated_at = now() RETURNING id",
                &[
                    &scope.org_id,
                    &scope.project_id,
                    &rs.kind.as_str(),
                    &rs.id,
                    &r.source_table,
                    name,
                ],
            )
            .await?
            .get(0),
        ),
        None => None,
    };
    let waiting: Vec<Uuid> = c
        .query(
            "SELECT l.id FROM edge_table_lineages l \
             WHERE l.project_id = $1 AND l.source_table = $2 AND l.kind = 'rows' \
                 AND ($3 = 'project' OR l.fleet_id = $4) \
                 AND (l.current_schema_hash = $5 OR EXISTS (SELECT 1 FROM edge_staged_rows s \
                     WHERE s.lineage_id = l.id AND s.schema_hash = $5)) \
             ORDER BY l.id FOR UPDATE OF l",
            &[
                &scope.project_id,
                &r.source_table,
                &rs.kind.as_str(),
                &rs.id,
                &r.schema_hash,
            ],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let adopted = adopt(c, r.registry_id, &waiting).await?;
    let new_version = r.action_version + 1;
    c.execute(
        "UPDATE edge_registry_reviews SET state = 'approved', decided_by = $2, \
             decided_at = now(), action_version = $3, updated_at = now() WHERE id = $1",
        &[&id, &actor, &new_version],
    )
    .await?;
    event(
        c,
        "integration.edge_schema_review.approved.v1",
        scope,
        id,
        serde_json::json!({"registry_id": r.registry_id, "schema_hash": r.schema_hash,
            "source_table": r.source_table, "scope": rs.kind.as_str(), "scope_id": rs.id,
            "decided_by": actor, "mirror_table_name": mirror_name,
            "adopted_lineage_ids": adopted, "blocking_deferred": plan.blocking_deferred}),
    )
    .await?;
    Ok(RegistryApproval {
        review: registry_review(c, scope, id, false).await?,
        mirror_table_name: mirror_name,
        coalesced_mirror_id,
        adopted_lineage_ids: adopted,
        blocking_deferred: plan.blocking_deferred,
    })
}

// ---------------------------------------------------------------------------------------------
// Coalesced mirrors

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
pub async fn list_coalesced<C: GenericClient>(
    c: &C,
    scope: Scope,
    source_table: Option<&str>,
    page: Page,
) -> Result<(Vec<CoalescedMirrorView>, i64), OpError> {
    const WHERE: &str =
        "m.org_id = $1 AND m.project_id = $2 AND ($3::text IS NULL OR m.source_table = $3)";
    let total: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM edge_coalesced_mirrors m WHERE {WHERE}"),
            &[&scope.org_id, &scope.project_id, &source_table],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {MIRROR_VIEW} FROM edge_coalesced_mirrors m WHERE {WHERE} \
                 ORDER BY m.source_table, m.scope_kind, m.scope_id LIMIT $4 OFFSET $5"
            ),
            &[
                &scope.org_id,
                &scope.project_id,
                &source_table,
                &page.limit,
                &offset(page),
            ],
        )
        .await?;
    Ok((rows.iter().map(mirror_view).collect(), total))
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

pub async fn coalesced_detail<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<CoalescedMirrorDetail, OpError> {
    let row = c
        .query_opt(
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
        .query(
            "SELECT id FROM edge_schema_registry WHERE project_id = $1 \
                 AND mirror_table_name = $2 ORDER BY created_at, id",
            &[&scope.project_id, &mirror.mirror_table_name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lineages = c
        .query(
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

async fn table_columns<C: GenericClient>(
    c: &C,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(c.query(
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

async fn pk_columns<C: GenericClient>(c: &C, table: &str) -> Result<Vec<String>, StoreError> {
    Ok(c.query(
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
pub async fn consolidate<C: GenericClient>(
    c: &C,
    scope: Scope,
    source_table: &str,
    fleet_id: Option<Uuid>,
    dry_run: bool,
) -> Result<Vec<Consolidation>, OpError> {
    let mirrors = c
        .query(
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
            .query(
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
            c.execute(
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
                .query_one(
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
                    .execute(
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
            c.execute(
                "UPDATE edge_coalesced_mirrors SET last_consolidated_at = now(), \
                     updated_at = now() WHERE id = $1",
                &[&mirror_id],
            )
            .await?;
            event(
                c,
                "integration.edge_coalesced_mirror.consolidated.v1",
                scope,
                mirror_id,
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
async fn rebind_lineage<C: GenericClient>(
    c: &C,
    scope: Scope,
    lineage_id: Uuid,
    shared: &str,
    hash: &str,
) -> Result<bool, StoreError> {
    let entry: Option<Uuid> = c
        .query_opt(
            "SELECT id FROM edge_schema_registry WHERE project_id = $1 AND schema_hash = $2 \
                 AND mirror_table_name = $3 AND status = 'approved'",
            &[&scope.project_id, &hash, &shared],
        )
        .await?
        .map(|r| r.get(0));
    let Some(entry) = entry else {
        return Ok(false);
    };
    c.execute(
        "DELETE FROM edge_column_bindings WHERE lineage_id = $1 AND schema_hash = $2",
        &[&lineage_id, &hash],
    )
    .await?;
    Ok(!adopt(c, entry, &[lineage_id]).await?.is_empty())
}
