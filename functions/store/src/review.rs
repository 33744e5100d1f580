//! Review workflow writes (cloud.md §5), lineage deletion and the project policy, each in the
//! caller's transaction together with the event it causes (cloud.md §11).
//!
//! Approval is the one big transaction of the governance loop: mirror DDL (create, or widen for
//! newly mirrored columns), column bindings, a replay intent for the staged backlog, the
//! lineage's new status and the `approved` event commit together or not at all. It never sends
//! `resume_lineage` itself: a device paused by a control (`device_pause_reason`) is resumed by
//! the sweep once the backlog has drained, which is also what keeps the approval's transaction
//! free of network calls.

use edge_cloud_core::review::{
    plan_approval, transition, ApprovalPolicy, ApprovalTarget, ColumnAction, ColumnActionKind,
    ReviewAction, ReviewState,
};
use edge_protocol::fingerprint::{Affinity, ColumnFingerprint, SchemaColumns};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::lineage::{emit_event, lock_lineage, schema_columns};
use crate::mirror::ensure_mirror;
use crate::query::{review, ts, OpError, ReviewView, Scope};
use crate::registry::{device_by_id, Device};
use crate::StoreError;

async fn device_of<C: GenericClient>(c: &C, device_id: Uuid) -> Result<Device, OpError> {
    device_by_id(c, device_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("lineage device {device_id} is not registered")))
        .map_err(OpError::from)
}

fn check(r: &ReviewView, action: ReviewAction, given: Option<i32>) -> Result<ReviewState, OpError> {
    let state = ReviewState::parse(&r.status)
        .ok_or_else(|| StoreError::Corrupt(format!("review state {:?}", r.status)))?;
    transition(state, r.action_version, action, given).map_err(|e| OpError::Conflict {
        code: e.code(),
        message: e.to_string(),
    })
}

/// queued → in_review, recording who claimed it.
pub async fn claim<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: Option<i32>,
) -> Result<ReviewView, OpError> {
    let r = review(c, scope, id, true).await?;
    let next = check(&r, ReviewAction::Claim, given_version)?;
    c.execute(
        "UPDATE edge_schema_reviews SET state = $2, claimed_by = $3, \
             action_version = action_version + 1, updated_at = now() WHERE id = $1",
        &[&id, &next.as_str(), &actor],
    )
    .await?;
    review(c, scope, id, false).await
}

/// queued | in_review → rejected. The lineage stays paused and its staged rows are kept.
pub async fn reject<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    reason: &str,
) -> Result<ReviewView, OpError> {
    let r = review(c, scope, id, true).await?;
    let next = check(&r, ReviewAction::Reject, Some(given_version))?;
    c.execute(
        "UPDATE edge_schema_reviews SET state = $2, reason = $3, decided_by = $4, \
             decided_at = now(), action_version = action_version + 1, updated_at = now() \
         WHERE id = $1",
        &[&id, &next.as_str(), &reason, &actor],
    )
    .await?;
    let l = lock_lineage(c, r.lineage_id).await?;
    let device = device_of(c, l.device_id).await?;
    emit_event(
        c,
        "integration.edge_schema_review.rejected.v1",
        &device,
        Some(id),
        serde_json::json!({"lineage_id": r.lineage_id, "schema_hash": r.schema_hash,
                           "reason": reason, "decided_by": actor}),
    )
    .await?;
    review(c, scope, id, false).await
}

/// What an approval did besides moving the review.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApprovalOutcome {
    pub review: ReviewView,
    pub lineage_status: String,
    pub mirror_table_name: Option<String>,
    pub replay_intent_id: Uuid,
    /// Deferred NOT NULL columns that keep the lineage paused.
    pub blocking_deferred: Vec<String>,
}

/// in_review → approved, with everything of cloud.md §5 in the caller's transaction (module
/// docs). `new_id` supplies the replay intent's and created data points' ids.
pub async fn approve<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    actions: &[ColumnAction],
    mut new_id: impl FnMut() -> Uuid,
) -> Result<ApprovalOutcome, OpError> {
    let r = review(c, scope, id, true).await?;
    check(&r, ReviewAction::Approve, Some(given_version))?;
    let lineage = lock_lineage(c, r.lineage_id).await?;
    let telemetry = lineage.kind == "telemetry";
    let schema = match schema_columns(c, lineage.id, &r.schema_hash).await? {
        Some(s) => s,
        None if telemetry => telemetry_fields(c, lineage.id, &lineage.source_table).await?,
        None => {
            return Err(OpError::Conflict {
                code: "schema_columns_missing",
                message: format!(
                    "no columns were recorded for schema {}: wait for a batch carrying \
                     schema_columns",
                    r.schema_hash
                ),
            })
        }
    };
    let policy = policy(c, scope).await?;
    let plan = plan_approval(
        ApprovalTarget {
            device_id: lineage.device_id,
            source_table: &lineage.source_table,
            telemetry,
            existing_mirror: lineage.mirror_table_name.as_deref(),
        },
        &schema,
        actions,
        ApprovalPolicy {
            allow_auto_create_device_data_points: policy.allow_auto_create_device_data_points,
        },
    )
    .map_err(|e| OpError::Invalid {
        code: e.code(),
        message: e.to_string(),
    })?;

    // `map` targets must be data points of this very device.
    let wanted: Vec<Uuid> = plan
        .mapped
        .iter()
        .filter_map(|m| m.device_data_point_id)
        .collect();
    if !wanted.is_empty() {
        let found: i64 = c
            .query_one(
                "SELECT count(DISTINCT id) FROM device_data_points \
                 WHERE id = ANY($1) AND device_id = $2",
                &[&wanted, &lineage.device_id],
            )
            .await?
            .get(0);
        let mut distinct = wanted.clone();
        distinct.sort();
        distinct.dedup();
        if usize::try_from(found).unwrap_or(0) != distinct.len() {
            return Err(OpError::Invalid {
                code: "device_data_point_not_found",
                message: "a device_data_point_id is not a data point of this lineage's device"
                    .into(),
            });
        }
    }
    // auto_create_and_map: `{table}.{column}`, reusing a data point of that name.
    let auto: Vec<&str> = plan
        .mapped
        .iter()
        .filter(|m| m.device_data_point_id.is_none())
        .map(|m| m.source_column_name.as_str())
        .collect();
    let mut created: Vec<(String, Uuid)> = Vec::new();
    if !auto.is_empty() {
        let ids: Vec<Uuid> = auto.iter().map(|_| new_id()).collect();
        let names: Vec<String> = auto
            .iter()
            .map(|a| format!("{}.{a}", lineage.source_table))
            .collect();
        let types: Vec<&str> = auto
            .iter()
            .map(|a| {
                let text = schema
                    .columns
                    .iter()
                    .any(|c| c.name == *a && c.decl_type_affinity == Affinity::Text);
                if text {
                    "text"
                } else {
                    "numeric"
                }
            })
            .collect();
        let rows = c
            .query(
                "INSERT INTO device_data_points (id, org_id, project_id, device_id, name, value_type) \
                 SELECT u.id, $1, $2, $3, u.n, u.t FROM unnest($4::uuid[], $5::text[], $6::text[]) \
                     AS u(id, n, t) \
                 ON CONFLICT (device_id, name) DO UPDATE SET name = EXCLUDED.name \
                 RETURNING id, name",
                &[
                    &scope.org_id,
                    &scope.project_id,
                    &lineage.device_id,
                    &ids,
                    &names,
                    &types,
                ],
            )
            .await?;
        let prefix = format!("{}.", lineage.source_table);
        for row in &rows {
            let name: String = row.get(1);
            let column = name.strip_prefix(&prefix).unwrap_or(&name).to_owned();
            created.push((column, row.get(0)));
        }
    }

    if let Some(table) = &plan.mirror {
        ensure_mirror(c, table).await.map_err(|e| match e {
            StoreError::Corrupt(m) => OpError::Conflict {
                code: "mirror_column_type_conflict",
                message: m,
            },
            other => OpError::Store(other),
        })?;
    }

    // One binding row per source column, whatever its action, so the review's decision is
    // fully recorded (ignored/deferred columns included).
    let mut src: Vec<&str> = Vec::new();
    let mut act: Vec<&str> = Vec::new();
    let mut mtable: Vec<Option<&str>> = Vec::new();
    let mut mcol: Vec<Option<&str>> = Vec::new();
    let mut mtype: Vec<Option<&str>> = Vec::new();
    let mut pk: Vec<i32> = Vec::new();
    let mut dp: Vec<Option<Uuid>> = Vec::new();
    for a in actions {
        src.push(&a.source_column_name);
        act.push(a.action.as_str());
        let mirrored = plan.mirror.as_ref().and_then(|t| {
            t.columns
                .iter()
                .find(|c| c.source_name == a.source_column_name)
                .map(|c| (t.name.as_str(), c))
        });
        mtable.push(mirrored.map(|(t, _)| t));
        mcol.push(mirrored.map(|(_, c)| c.name.as_str()));
        mtype.push(mirrored.map(|(_, c)| c.ty.sql()));
        pk.push(
            mirrored
                .map(|(_, c)| i32::try_from(c.pk_ordinal).unwrap_or(0))
                .unwrap_or(0),
        );
        dp.push(match a.action {
            ColumnActionKind::Map => a.device_data_point_id,
            ColumnActionKind::AutoCreateAndMap => created
                .iter()
                .find(|(n, _)| *n == a.source_column_name)
                .map(|(_, id)| *id),
            _ => None,
        });
    }
    c.execute(
        "INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, action, \
             mirror_table_name, mirror_column_name, mirror_type, pk_ordinal, device_data_point_id) \
         SELECT $1, $2, u.s, u.a, u.t, u.c, u.y, u.p, u.d \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[], \
             $9::uuid[]) AS u(s, a, t, c, y, p, d) \
         ON CONFLICT (lineage_id, schema_hash, source_column_name) DO UPDATE SET \
             action = EXCLUDED.action, mirror_table_name = EXCLUDED.mirror_table_name, \
             mirror_column_name = EXCLUDED.mirror_column_name, \
             mirror_type = EXCLUDED.mirror_type, pk_ordinal = EXCLUDED.pk_ordinal, \
             device_data_point_id = EXCLUDED.device_data_point_id",
        &[
            &lineage.id,
            &r.schema_hash,
            &src,
            &act,
            &mtable,
            &mcol,
            &mtype,
            &pk,
            &dp,
        ],
    )
    .await?;

    // A circuit-breaker pause is lifted only by reset-materialization: approving a schema does
    // not make poison rows fit.
    let activate = plan.activates() && lineage.pause_reason.as_deref() != Some("circuit_breaker");
    let mirror_name = plan.mirror.as_ref().map(|t| t.name.clone());
    let status: String = c
        .query_one(
            "UPDATE edge_table_lineages SET approved_schema_hash = $2, \
                 mirror_table_name = COALESCE($3, mirror_table_name), \
                 status = CASE WHEN $4 THEN 'active' ELSE 'paused' END, \
                 pause_reason = CASE WHEN $4 THEN NULL \
                     ELSE COALESCE(pause_reason, 'schema_review') END, \
                 updated_at = now() \
             WHERE id = $1 RETURNING status",
            &[&lineage.id, &r.schema_hash, &mirror_name, &activate],
        )
        .await?
        .get(0);
    let new_version = r.action_version + 1;
    let intent = new_id();
    c.execute(
        "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind, \
             action_version) VALUES ($1, $2, $3, 'pending', 'schema_review_approved', $4)",
        &[&intent, &lineage.id, &r.schema_hash, &new_version],
    )
    .await?;
    c.execute(
        "UPDATE edge_schema_reviews SET state = 'approved', decided_by = $2, decided_at = now(), \
             action_version = $3, updated_at = now() WHERE id = $1",
        &[&id, &actor, &new_version],
    )
    .await?;
    let device = device_of(c, lineage.device_id).await?;
    emit_event(
        c,
        "integration.edge_schema_review.approved.v1",
        &device,
        Some(id),
        serde_json::json!({
            "lineage_id": lineage.id,
            "schema_hash": r.schema_hash,
            "decided_by": actor,
            "mirror_table_name": mirror_name.as_deref().or(lineage.mirror_table_name.as_deref()),
            "lineage_status": status,
            "replay_intent_id": intent,
            "blocking_deferred": plan.blocking_deferred,
        }),
    )
    .await?;
    Ok(ApprovalOutcome {
        review: review(c, scope, id, false).await?,
        lineage_status: status,
        mirror_table_name: mirror_name.or(lineage.mirror_table_name),
        replay_intent_id: intent,
        blocking_deferred: plan.blocking_deferred,
    })
}

/// Telemetry lineages carry no schema_columns: their "columns" are the fields seen in staged
/// rows, each a nullable value.
async fn telemetry_fields<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    source_table: &str,
) -> Result<SchemaColumns, OpError> {
    let rows = c
        .query(
            "SELECT DISTINCT jsonb_object_keys(\"row\") FROM edge_staged_rows \
             WHERE lineage_id = $1 AND jsonb_typeof(\"row\") = 'object'",
            &[&lineage_id],
        )
        .await?;
    Ok(SchemaColumns::new(
        source_table,
        rows.iter()
            .map(|r| ColumnFingerprint::from_table_info(r.get::<_, String>(0), "", 0, 0))
            .collect(),
    ))
}

/// Deletes a lineage with everything that cascades from it (versions, reviews, bindings,
/// staged rows, replay intents, pending controls). The mirror table stays: its rows are the
/// customer's data and other lineages may share it.
pub async fn delete_lineage<C: GenericClient>(
    c: &C,
    scope: Scope,
    id: Uuid,
) -> Result<(), OpError> {
    let n = c
        .execute(
            "DELETE FROM edge_table_lineages WHERE id = $1 AND org_id = $2 AND project_id = $3",
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?;
    if n == 0 {
        return Err(OpError::NotFound("lineage"));
    }
    Ok(())
}

/// The project policy (cloud.md §3, §5, §7, §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub allow_additive_continue: bool,
    pub allow_auto_create_device_data_points: bool,
    pub max_pending_rows_per_lineage: i64,
    pub max_pending_bytes_per_lineage: i64,
    pub resume_threshold_percent: i32,
    pub circuit_breaker_failures: i32,
    pub schema_coalescing_mode: String,
    pub updated_at: Option<String>,
}

/// Fields a PATCH may set (`None` keeps the stored value).
#[derive(Debug, Clone, Default)]
pub struct PolicyPatch {
    pub allow_additive_continue: Option<bool>,
    pub allow_auto_create_device_data_points: Option<bool>,
    pub max_pending_rows_per_lineage: Option<i64>,
    pub max_pending_bytes_per_lineage: Option<i64>,
    pub resume_threshold_percent: Option<i32>,
    pub circuit_breaker_failures: Option<i32>,
    pub schema_coalescing_mode: Option<String>,
}

const POLICY_COLUMNS: &str = "allow_additive_continue, allow_auto_create_device_data_points, \
     max_pending_rows_per_lineage, max_pending_bytes_per_lineage, resume_threshold_percent, \
     circuit_breaker_failures, schema_coalescing_mode, updated_at";

fn policy_view(r: &tokio_postgres::Row) -> PolicyView {
    PolicyView {
        allow_additive_continue: r.get(0),
        allow_auto_create_device_data_points: r.get(1),
        max_pending_rows_per_lineage: r.get(2),
        max_pending_bytes_per_lineage: r.get(3),
        resume_threshold_percent: r.get(4),
        circuit_breaker_failures: r.get(5),
        schema_coalescing_mode: r.get(6),
        updated_at: r.get::<_, Option<time::OffsetDateTime>>(7).map(ts),
    }
}

/// The project's policy; the production defaults when the project has no row yet.
pub async fn policy<C: GenericClient>(c: &C, scope: Scope) -> Result<PolicyView, OpError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {POLICY_COLUMNS} FROM edge_replication_policy \
                 WHERE project_id = $1 AND org_id = $2"
            ),
            &[&scope.project_id, &scope.org_id],
        )
        .await?;
    Ok(match row {
        Some(r) => policy_view(&r),
        None => PolicyView {
            allow_additive_continue: false,
            allow_auto_create_device_data_points: false,
            max_pending_rows_per_lineage: 100_000,
            max_pending_bytes_per_lineage: 1 << 30,
            resume_threshold_percent: 80,
            circuit_breaker_failures: 5,
            schema_coalescing_mode: "none".into(),
            updated_at: None,
        },
    })
}

/// Applies a validated patch (creating the project's row on first write).
pub async fn patch_policy<C: GenericClient>(
    c: &C,
    scope: Scope,
    p: &PolicyPatch,
) -> Result<PolicyView, OpError> {
    let row = c
        .query_opt(
            &format!(
                "INSERT INTO edge_replication_policy AS p (project_id, org_id, \
                     allow_additive_continue, allow_auto_create_device_data_points, \
                     max_pending_rows_per_lineage, max_pending_bytes_per_lineage, \
                     resume_threshold_percent, circuit_breaker_failures, schema_coalescing_mode) \
                 VALUES ($1, $2, COALESCE($3::boolean, false), COALESCE($4::boolean, false), \
                     COALESCE($5::bigint, 100000), COALESCE($6::bigint, 1073741824), \
                     COALESCE($7::integer, 80), COALESCE($8::integer, 5), \
                     COALESCE($9::text, 'none')) \
                 ON CONFLICT (project_id) DO UPDATE SET \
                     allow_additive_continue = COALESCE($3, p.allow_additive_continue), \
                     allow_auto_create_device_data_points = \
                         COALESCE($4, p.allow_auto_create_device_data_points), \
                     max_pending_rows_per_lineage = COALESCE($5, p.max_pending_rows_per_lineage), \
                     max_pending_bytes_per_lineage = COALESCE($6, p.max_pending_bytes_per_lineage), \
                     resume_threshold_percent = COALESCE($7, p.resume_threshold_percent), \
                     circuit_breaker_failures = COALESCE($8, p.circuit_breaker_failures), \
                     schema_coalescing_mode = COALESCE($9, p.schema_coalescing_mode), \
                     updated_at = now() \
                 WHERE p.org_id = $2 \
                 RETURNING {POLICY_COLUMNS}"
            ),
            &[
                &scope.project_id,
                &scope.org_id,
                &p.allow_additive_continue,
                &p.allow_auto_create_device_data_points,
                &p.max_pending_rows_per_lineage,
                &p.max_pending_bytes_per_lineage,
                &p.resume_threshold_percent,
                &p.circuit_breaker_failures,
                &p.schema_coalescing_mode,
            ],
        )
        .await?
        .ok_or(OpError::NotFound("project"))?;
    Ok(policy_view(&row))
}

/// A stored API response for an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: i32,
    pub body: serde_json::Value,
}

/// The response stored under (org, key), if any.
pub async fn stored_response<C: GenericClient>(
    c: &C,
    org_id: Uuid,
    key: &str,
) -> Result<Option<StoredResponse>, StoreError> {
    let row = c
        .query_opt(
            "SELECT request_hash, response_status, response_body FROM edge_idempotency_keys \
             WHERE org_id = $1 AND idempotency_key = $2",
            &[&org_id, &key],
        )
        .await?;
    Ok(row.map(|r| StoredResponse {
        request_hash: r.get(0),
        status: r.get(1),
        body: r.get(2),
    }))
}

/// Stores a response under (org, key); false when another request stored one first (the
/// caller then answers with that one).
pub async fn store_response<C: GenericClient>(
    c: &C,
    org_id: Uuid,
    key: &str,
    method: &str,
    path: &str,
    stored: &StoredResponse,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO edge_idempotency_keys (org_id, idempotency_key, method, path, \
                 request_hash, response_status, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &org_id,
                &key,
                &method,
                &path,
                &stored.request_hash,
                &stored.status,
                &stored.body,
            ],
        )
        .await?;
    Ok(n == 1)
}
