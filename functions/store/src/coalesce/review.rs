//! Registry review transitions (cloud.md §9) beyond the claim ([`crate::review::claim`]):
//! reject or abandon (handing the hash back
//! to per-device reviews), and approve (the shared mirror, the entry's bindings, adoption of
//! every waiting lineage). The transition checks and state writes are [`crate::review`]'s, the
//! approval steps [`crate::approval`]'s.

use edge_cloud_core::coalesce::{
    check_registry_actions, coalesced_mirror_name, RegistryScope, ScopeKind,
};
use edge_cloud_core::review::{ApprovalPolicy, ApprovalTarget, ColumnAction, ReviewAction};
use edge_protocol::fingerprint::SchemaColumns;
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::approval::{
    binding_rows, bindings_json, claim_mirror, columns_missing, create_mirror, free_mirror_name,
    plan,
};
use crate::coalesce::intake::adopt;
use crate::error::OpError;
use crate::lineage::emit_scope_event;
use crate::read::reviews::{one, RegistryReview, RegistryReviewView};
use crate::review::{check, close_review, mark_approved, Approve};
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;
use edge_cloud_core::naming::{fit_identifier, MirrorOwner, OwnerRef};

fn scope_of(r: &RegistryReviewView) -> Result<RegistryScope, OpError> {
    let kind = ScopeKind::parse(&r.scope)
        .ok_or_else(|| StoreError::Corrupt(format!("registry scope {:?}", r.scope)))?;
    Ok(RegistryScope {
        kind,
        id: r.scope_id,
    })
}

/// queued | in_review → rejected (entry `rejected`: devices sending the hash keep staging) or
/// → abandoned (entry `abandoned`: each waiting lineage gets its own per-device review, and
/// later devices take the per-device path).
pub async fn close<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    reason: Option<&str>,
    abandon: bool,
) -> Result<RegistryReviewView, OpError> {
    let r = one::<RegistryReview, C>(c, scope, id, true).await?;
    let action = if abandon {
        ReviewAction::Abandon
    } else {
        ReviewAction::Reject
    };
    let next = check::<RegistryReview>(&r, action, Some(given_version))?;
    close_review::<RegistryReview, C>(c, id, next, reason, actor).await?;
    let entry_status = if abandon { "abandoned" } else { "rejected" };
    c.execute_unnamed(
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
            .query_unnamed(
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
    emit_scope_event(
        c,
        if abandon {
            "integration.edge_schema_review.abandoned.v1"
        } else {
            "integration.edge_schema_review.rejected.v1"
        },
        scope,
        Some(id),
        serde_json::json!({"registry_id": r.registry_id, "schema_hash": r.schema_hash,
            "source_table": r.source_table, "reason": reason, "decided_by": actor,
            "per_device_review_lineages": handed_back}),
    )
    .await?;
    one::<RegistryReview, C>(c, scope, id, false).await
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
/// record, adoption of every waiting lineage of the scope, and the event — one transaction
/// (`new_id` supplies a new coalesced mirror's id).
impl Approve for RegistryReview {
    type Outcome = RegistryApproval;

    async fn apply<C: GenericClient + Sync, F: FnMut() -> Uuid>(
        c: &C,
        scope: Scope,
        r: RegistryReviewView,
        actor: &str,
        actions: &[ColumnAction],
        mut new_id: F,
    ) -> Result<RegistryApproval, OpError> {
        let id = r.id;
        check_registry_actions(actions).map_err(|e| OpError::Invalid {
            code: "registry_action_not_supported",
            message: e.to_string(),
        })?;
        let rs = scope_of(&r)?;
        let columns = c
            .query_opt_unnamed(
                "SELECT v.columns FROM edge_schema_versions v \
                 JOIN edge_table_lineages l ON l.id = v.lineage_id \
                 WHERE l.project_id = $1 AND l.source_table = $2 AND v.schema_hash = $3 \
                     AND v.columns IS NOT NULL LIMIT 1",
                &[&scope.project_id, &r.source_table, &r.schema_hash],
            )
            .await?;
        let Some(columns) = columns else {
            return Err(columns_missing(&r.schema_hash));
        };
        let schema: SchemaColumns = serde_json::from_value(columns.get(0)).map_err(|e| {
            StoreError::Corrupt(format!("schema columns of {}: {e}", r.schema_hash))
        })?;
        // The coalesced mirror keeps the name it was created with; a new one takes the first
        // name no other lineage or coalesced mirror owns (reliability.md §3).
        let existing = c
            .query_opt_unnamed(
                "SELECT id, mirror_table_name FROM edge_coalesced_mirrors \
                 WHERE project_id = $1 AND scope_kind = $2 AND scope_id = $3 \
                     AND source_table = $4",
                &[
                    &scope.project_id,
                    &rs.kind.as_str(),
                    &rs.id,
                    &r.source_table,
                ],
            )
            .await?;
        let (mirror_id, shared, created) = match existing {
            Some(row) => (row.get::<_, Uuid>(0), row.get::<_, String>(1), false),
            None => {
                let mirror_id = new_id();
                let claimant = MirrorOwner {
                    owner: OwnerRef::Coalesced(mirror_id),
                    org_id: scope.org_id,
                    project_id: scope.project_id,
                };
                let base = coalesced_mirror_name(rs, &r.source_table);
                let name = free_mirror_name(c, &claimant, |n| {
                    if n <= 1 {
                        base.clone()
                    } else {
                        fit_identifier(&format!(
                            "{}_{n}",
                            coalesced_mirror_name(rs, &r.source_table)
                        ))
                    }
                })
                .await?;
                (mirror_id, name, true)
            }
        };
        let plan = plan(
            ApprovalTarget {
                device_id: Uuid::nil(),
                source_table: &r.source_table,
                telemetry: false,
                existing_mirror: Some(&shared),
                default_mirror: None,
            },
            &schema,
            actions,
            ApprovalPolicy {
                allow_auto_create_device_data_points: false,
            },
        )?;
        let bindings = bindings_json(&binding_rows(actions, &plan));
        let mirror_name = plan.mirror.as_ref().map(|t| t.name.clone());
        let coalesced_mirror_id: Option<Uuid> = match &mirror_name {
            Some(name) if created => Some(
                c.query_one_unnamed(
                    "INSERT INTO edge_coalesced_mirrors (id, org_id, project_id, scope_kind, \
                         scope_id, source_table, mirror_table_name) \
                     VALUES ($7, $1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (project_id, scope_kind, scope_id, source_table) \
                         DO UPDATE SET updated_at = now() RETURNING id",
                    &[
                        &scope.org_id,
                        &scope.project_id,
                        &rs.kind.as_str(),
                        &rs.id,
                        &r.source_table,
                        name,
                        &mirror_id,
                    ],
                )
                .await?
                .get(0),
            ),
            Some(_) => {
                c.execute_unnamed(
                    "UPDATE edge_coalesced_mirrors SET updated_at = now() WHERE id = $1",
                    &[&mirror_id],
                )
                .await?;
                Some(mirror_id)
            }
            None => None,
        };
        if let Some(id) = coalesced_mirror_id {
            let claimant = MirrorOwner {
                owner: OwnerRef::Coalesced(id),
                org_id: scope.org_id,
                project_id: scope.project_id,
            };
            claim_mirror(c, &plan, &claimant, false).await?;
        }
        create_mirror(c, &plan).await?;
        c.execute_unnamed(
            "UPDATE edge_schema_registry SET status = 'approved', bindings = $2, \
                 mirror_table_name = $3, activates = $4, updated_at = now() WHERE id = $1",
            &[&r.registry_id, &bindings, &mirror_name, &plan.activates()],
        )
        .await?;
        let waiting: Vec<Uuid> = c
            .query_unnamed(
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
        mark_approved::<RegistryReview, C>(c, id, actor, new_version).await?;
        emit_scope_event(
            c,
            "integration.edge_schema_review.approved.v1",
            scope,
            Some(id),
            serde_json::json!({"registry_id": r.registry_id, "schema_hash": r.schema_hash,
                "source_table": r.source_table, "scope": rs.kind.as_str(), "scope_id": rs.id,
                "decided_by": actor, "mirror_table_name": mirror_name,
                "adopted_lineage_ids": adopted, "blocking_deferred": plan.blocking_deferred}),
        )
        .await?;
        Ok(RegistryApproval {
            review: one::<RegistryReview, C>(c, scope, id, false).await?,
            mirror_table_name: mirror_name,
            coalesced_mirror_id,
            adopted_lineage_ids: adopted,
            blocking_deferred: plan.blocking_deferred,
        })
    }
}
