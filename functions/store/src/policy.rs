//! The one reader and writer of `edge_replication_policy` (cloud.md §3, §5, §7, §9). The policy
//! type, its defaults and the patch rules are [`edge_cloud_core::policy`]; a project without a
//! row has the default policy.

use std::sync::OnceLock;

use edge_cloud_core::backpressure::Caps;
use edge_cloud_core::coalesce::CoalescingMode;
use edge_cloud_core::policy::{Policy, PolicyPatch};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::scope::{ts, Scope};
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

const POLICY_COLUMNS: &str = "allow_additive_continue, allow_auto_create_device_data_points, \
     max_pending_rows_per_lineage, max_pending_bytes_per_lineage, resume_threshold_percent, \
     circuit_breaker_failures, schema_coalescing_mode, updated_at";

/// A stored policy row: the policy and when it last changed.
fn from_row(r: &tokio_postgres::Row) -> Result<(Policy, OffsetDateTime), StoreError> {
    let mode: String = r.get(6);
    Ok((
        Policy {
            allow_additive_continue: r.get(0),
            allow_auto_create_device_data_points: r.get(1),
            caps: Caps {
                max_pending_rows: r.get(2),
                max_pending_bytes: r.get(3),
                resume_threshold_percent: r.get(4),
                breaker_failures: r.get(5),
            },
            schema_coalescing_mode: CoalescingMode::parse(&mode)
                .ok_or_else(|| StoreError::Corrupt(format!("schema_coalescing_mode {mode:?}")))?,
        },
        r.get(7),
    ))
}

/// The stored policy row of a project (`org_id`: only if the project belongs to that org).
async fn stored<C: GenericClient + Sync>(
    c: &C,
    project_id: Uuid,
    org_id: Option<Uuid>,
) -> Result<Option<(Policy, OffsetDateTime)>, StoreError> {
    let row = match org_id {
        // Intake (every batch): by primary key alone.
        None => {
            c.query_opt_unnamed(
                &format!(
                    "SELECT {POLICY_COLUMNS} FROM edge_replication_policy WHERE project_id = $1"
                ),
                &[&project_id],
            )
            .await?
        }
        Some(org_id) => {
            c.query_opt_unnamed(
                &format!(
                    "SELECT {POLICY_COLUMNS} FROM edge_replication_policy \
                     WHERE project_id = $1 AND org_id = $2"
                ),
                &[&project_id, &org_id],
            )
            .await?
        }
    };
    row.as_ref().map(from_row).transpose()
}

/// The project's policy ([`Policy::default`] without a row).
pub async fn policy<C: GenericClient + Sync>(
    c: &C,
    project_id: Uuid,
) -> Result<Policy, StoreError> {
    Ok(stored(c, project_id, None)
        .await?
        .map_or_else(Policy::default, |(p, _)| p))
}

/// The policy of the scope's project ([`Policy::default`] without a row of that org).
pub async fn scoped_policy<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
) -> Result<Policy, StoreError> {
    Ok(stored(c, scope.project_id, Some(scope.org_id))
        .await?
        .map_or_else(Policy::default, |(p, _)| p))
}

/// The project's coalescing mode (`none` without a policy row).
pub async fn coalescing_mode<C: GenericClient + Sync>(
    c: &C,
    project_id: Uuid,
) -> Result<CoalescingMode, StoreError> {
    Ok(policy(c, project_id).await?.schema_coalescing_mode)
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

impl PolicyView {
    fn new(p: Policy, updated_at: Option<OffsetDateTime>) -> PolicyView {
        PolicyView {
            allow_additive_continue: p.allow_additive_continue,
            allow_auto_create_device_data_points: p.allow_auto_create_device_data_points,
            max_pending_rows_per_lineage: p.caps.max_pending_rows,
            max_pending_bytes_per_lineage: p.caps.max_pending_bytes,
            resume_threshold_percent: p.caps.resume_threshold_percent,
            circuit_breaker_failures: p.caps.breaker_failures,
            schema_coalescing_mode: p.schema_coalescing_mode.as_str().to_owned(),
            updated_at: updated_at.map(ts),
        }
    }
}

/// The scope's policy; the production defaults when the project has no row yet.
pub async fn policy_view<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
) -> Result<PolicyView, OpError> {
    Ok(
        match stored(c, scope.project_id, Some(scope.org_id)).await? {
            Some((p, at)) => PolicyView::new(p, Some(at)),
            None => PolicyView::new(Policy::default(), None),
        },
    )
}

/// Applies a validated patch ([`edge_cloud_core::policy::validate_patch`]), creating the
/// project's row on first write: unset fields of a new row take the defaults.
pub async fn patch_policy<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    p: &PolicyPatch,
) -> Result<PolicyView, OpError> {
    let d = Policy::default();
    let row = c
        .query_opt_unnamed(
            &format!(
                "INSERT INTO edge_replication_policy AS p (project_id, org_id, \
                     allow_additive_continue, allow_auto_create_device_data_points, \
                     max_pending_rows_per_lineage, max_pending_bytes_per_lineage, \
                     resume_threshold_percent, circuit_breaker_failures, schema_coalescing_mode) \
                 VALUES ($1, $2, COALESCE($3::boolean, {}), COALESCE($4::boolean, {}), \
                     COALESCE($5::bigint, {}), COALESCE($6::bigint, {}), \
                     COALESCE($7::integer, {}), COALESCE($8::integer, {}), \
                     COALESCE($9::text, '{}')) \
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
                 RETURNING {POLICY_COLUMNS}",
                d.allow_additive_continue,
                d.allow_auto_create_device_data_points,
                d.caps.max_pending_rows,
                d.caps.max_pending_bytes,
                d.caps.resume_threshold_percent,
                d.caps.breaker_failures,
                d.schema_coalescing_mode.as_str(),
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
    let (p, at) = from_row(&row)?;
    Ok(PolicyView::new(p, Some(at)))
}

/// Sets a project's `allow_additive_continue` (tests; the API patches through
/// [`patch_policy`]).
pub async fn set_allow_additive_continue<C: GenericClient + Sync>(
    c: &C,
    org_id: Uuid,
    project_id: Uuid,
    allow: bool,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_replication_policy (project_id, org_id, allow_additive_continue) \
         VALUES ($1, $2, $3) ON CONFLICT (project_id) DO UPDATE \
             SET allow_additive_continue = EXCLUDED.allow_additive_continue, updated_at = now()",
        &[&project_id, &org_id, &allow],
    )
    .await?;
    Ok(())
}

/// The statement reading a lineage's counters with its project's caps, for
/// [`crate::backpressure::lineage_load`] — after every batch, so the text is built once (from
/// the core defaults, for a project without a policy row).
pub(crate) fn lineage_load_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let d = Caps::default();
        format!(
            "SELECT l.device_id, l.source_table, l.status, l.pause_reason, l.device_pause_reason, \
                 l.staged_row_count, l.staged_bytes, l.materialization_failure_count, \
                 COALESCE(p.max_pending_rows_per_lineage, {}), \
                 COALESCE(p.max_pending_bytes_per_lineage, {}), \
                 COALESCE(p.resume_threshold_percent, {}), \
                 COALESCE(p.circuit_breaker_failures, {}) \
             FROM edge_table_lineages l \
             LEFT JOIN edge_replication_policy p ON p.project_id = l.project_id \
             WHERE l.id = $1",
            d.max_pending_rows, d.max_pending_bytes, d.resume_threshold_percent, d.breaker_failures,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_statement_is_the_one_with_the_default_caps() {
        assert_eq!(
            lineage_load_sql(),
            "SELECT l.device_id, l.source_table, l.status, l.pause_reason, l.device_pause_reason, \
                 l.staged_row_count, l.staged_bytes, l.materialization_failure_count, \
                 COALESCE(p.max_pending_rows_per_lineage, 100000), \
                 COALESCE(p.max_pending_bytes_per_lineage, 1073741824), \
                 COALESCE(p.resume_threshold_percent, 80), \
                 COALESCE(p.circuit_breaker_failures, 5) \
             FROM edge_table_lineages l \
             LEFT JOIN edge_replication_policy p ON p.project_id = l.project_id \
             WHERE l.id = $1"
        );
    }
}
