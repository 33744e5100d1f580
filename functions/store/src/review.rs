//! Review transitions (cloud.md §5, §9) — claim, reject/abandon, approve — for both kinds of
//! review ([`ReviewKind`]), each in the caller's transaction together with the event it causes
//! (cloud.md §11). The state machine is [`edge_cloud_core::review::transition`]; this module
//! checks it against the locked review and writes the new state. Per-device reviews are
//! decided here; registry reviews in [`crate::coalesce::review`].
//!
//! Approval is the one big transaction of the governance loop: mirror DDL (create, or widen for
//! newly mirrored columns), column bindings, a replay intent for the staged backlog, the
//! lineage's new status and the `approved` event commit together or not at all (the shared
//! steps: [`crate::approval`]).

use edge_cloud_core::review::{
    approved_schema_after, transition, ApprovalPolicy, ApprovalTarget, ColumnAction, ReviewAction,
    ReviewState,
};
use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use std::future::Future;

use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::approval::{
    bind_lineage, binding_rows, claim_mirror, columns_missing, create_mirror, device_data_points,
    free_mirror_name, open_replay_intent, plan,
};
use crate::error::OpError;
use crate::lineage::{emit_event, lock_lineage, schema_columns};
use crate::policy::scoped_policy;
use crate::read::reviews::{one, DeviceReview, ReviewKind, ReviewView};
use crate::registry::{device_by_id, Device};
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;
use edge_cloud_core::naming::{mirror_table_candidate, MirrorOwner, OwnerRef};

/// The state `action` moves the review to, or 409 when the review's state or version forbids
/// it.
pub(crate) fn check<K: ReviewKind>(
    v: &K::View,
    action: ReviewAction,
    given: Option<i32>,
) -> Result<ReviewState, OpError> {
    let (status, version) = K::state(v);
    let state = ReviewState::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("{} {status:?}", K::STATE)))?;
    transition(state, version, action, given).map_err(|e| OpError::Conflict {
        code: e.code(),
        message: e.to_string(),
    })
}

/// queued → in_review for a review of either kind ([`DeviceReview`],
/// [`crate::read::reviews::RegistryReview`]), recording who claimed it.
pub async fn claim<K: ReviewKind, C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: Option<i32>,
) -> Result<K::View, OpError> {
    let r = one::<K, C>(c, scope, id, true).await?;
    let next = check::<K>(&r, ReviewAction::Claim, given_version)?;
    c.execute_unnamed(
        &format!(
            "UPDATE {} SET state = $2, claimed_by = $3, \
                 action_version = action_version + 1, updated_at = now() WHERE id = $1",
            K::TABLE
        ),
        &[&id, &next.as_str(), &actor],
    )
    .await?;
    one::<K, C>(c, scope, id, false).await
}

/// Records a closing decision (rejected, abandoned) with its reason.
pub(crate) async fn close_review<K: ReviewKind, C: GenericClient + Sync>(
    c: &C,
    id: Uuid,
    next: ReviewState,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), OpError> {
    c.execute_unnamed(
        &format!(
            "UPDATE {} SET state = $2, reason = $3, decided_by = $4, \
                 decided_at = now(), action_version = action_version + 1, updated_at = now() \
             WHERE id = $1",
            K::TABLE
        ),
        &[&id, &next.as_str(), &reason, &actor],
    )
    .await?;
    Ok(())
}

/// Records the approval (the caller applied its plan, [`crate::approval`]).
pub(crate) async fn mark_approved<K: ReviewKind, C: GenericClient + Sync>(
    c: &C,
    id: Uuid,
    actor: &str,
    new_version: i32,
) -> Result<(), OpError> {
    c.execute_unnamed(
        &format!(
            "UPDATE {} SET state = 'approved', decided_by = $2, decided_at = now(), \
                 action_version = $3, updated_at = now() WHERE id = $1",
            K::TABLE
        ),
        &[&id, &actor, &new_version],
    )
    .await?;
    Ok(())
}

async fn device_of<C: GenericClient + Sync>(c: &C, device_id: Uuid) -> Result<Device, OpError> {
    device_by_id(c, device_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("lineage device {device_id} is not registered")))
        .map_err(OpError::from)
}

/// queued | in_review → rejected. The lineage stays paused and its staged rows are kept.
pub async fn reject<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    reason: &str,
) -> Result<ReviewView, OpError> {
    let r = one::<DeviceReview, C>(c, scope, id, true).await?;
    let next = check::<DeviceReview>(&r, ReviewAction::Reject, Some(given_version))?;
    close_review::<DeviceReview, C>(c, id, next, Some(reason), actor).await?;
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
    one::<DeviceReview, C>(c, scope, id, false).await
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

/// A kind of review approval applies to: what approving one does besides moving its state.
pub trait Approve: ReviewKind {
    /// What the approval answers.
    type Outcome;

    /// Applies the approval of `r` — locked, the transition checked — and marks it approved
    /// (action version `r`'s + 1), in the caller's transaction.
    fn apply<C: GenericClient + Sync, F: FnMut() -> Uuid>(
        c: &C,
        scope: Scope,
        r: Self::View,
        actor: &str,
        actions: &[ColumnAction],
        new_id: F,
    ) -> impl Future<Output = Result<Self::Outcome, OpError>>;
}

/// in_review → approved for a review of either kind, with everything its approval applies
/// ([`Approve::apply`]) in the caller's transaction. `new_id` supplies the ids the kind needs
/// (per-device: the replay intent's and created data points').
pub async fn approve<K: Approve, C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    actor: &str,
    given_version: i32,
    actions: &[ColumnAction],
    new_id: impl FnMut() -> Uuid,
) -> Result<K::Outcome, OpError> {
    let r = one::<K, C>(c, scope, id, true).await?;
    check::<K>(&r, ReviewAction::Approve, Some(given_version))?;
    K::apply(c, scope, r, actor, actions, new_id).await
}

/// Per-device approval: everything of cloud.md §5 (module docs).
impl Approve for DeviceReview {
    type Outcome = ApprovalOutcome;

    async fn apply<C: GenericClient + Sync, F: FnMut() -> Uuid>(
        c: &C,
        scope: Scope,
        r: ReviewView,
        actor: &str,
        actions: &[ColumnAction],
        mut new_id: F,
    ) -> Result<ApprovalOutcome, OpError> {
        let id = r.id;
        let lineage = lock_lineage(c, r.lineage_id).await?;
        let telemetry = lineage.kind == "telemetry";
        let schema = match schema_columns(c, lineage.id, &r.schema_hash).await? {
            Some(s) => s,
            None if telemetry => telemetry_fields(c, lineage.id, &lineage.source_table).await?,
            None => return Err(columns_missing(&r.schema_hash)),
        };
        let policy = scoped_policy(c, scope).await?;
        let claimant = MirrorOwner {
            owner: OwnerRef::Lineage(lineage.id),
            // The review was read in `scope`, so the lineage is the scope's.
            org_id: scope.org_id,
            project_id: scope.project_id,
        };
        let default_mirror = match (&lineage.mirror_table_name, telemetry) {
            (None, false) => Some(
                free_mirror_name(c, &claimant, |n| {
                    mirror_table_candidate(&lineage.device_id, &lineage.source_table, n)
                })
                .await?,
            ),
            _ => None,
        };
        let plan = plan(
            ApprovalTarget {
                device_id: lineage.device_id,
                source_table: &lineage.source_table,
                telemetry,
                existing_mirror: lineage.mirror_table_name.as_deref(),
                default_mirror: default_mirror.as_deref(),
            },
            &schema,
            actions,
            ApprovalPolicy {
                allow_auto_create_device_data_points: policy.allow_auto_create_device_data_points,
            },
        )?;

        let data_points =
            device_data_points(c, scope, &lineage, &schema, &plan, actions, &mut new_id).await?;
        // Adopted: the lineage's stored mirror is a coalesced mirror's table.
        let adopted = lineage.mirror_table_name.is_some();
        claim_mirror(c, &plan, &claimant, adopted).await?;
        create_mirror(c, &plan).await?;
        let rows = binding_rows(actions, &plan);
        bind_lineage(c, lineage.id, &r.schema_hash, &rows, &data_points).await?;

        // A circuit-breaker pause is lifted only by reset-materialization: approving a schema does
        // not make poison rows fit.
        let activate =
            plan.activates() && lineage.pause_reason.as_deref() != Some("circuit_breaker");
        let mirror_name = plan.mirror.as_ref().map(|t| t.name.clone());
        let approved = approved_schema_after(
            lineage.approved_schema_hash.as_deref(),
            lineage.current_schema_hash.as_deref(),
            &r.schema_hash,
        );
        let status: String = c
            .query_one_unnamed(
                "UPDATE edge_table_lineages SET approved_schema_hash = $2, \
                     mirror_table_name = COALESCE($3, mirror_table_name), \
                     status = CASE WHEN $4 THEN 'active' ELSE 'paused' END, \
                     pause_reason = CASE WHEN $4 THEN NULL \
                         ELSE COALESCE(pause_reason, 'schema_review') END, \
                     updated_at = now() \
                 WHERE id = $1 RETURNING status",
                &[&lineage.id, &approved, &mirror_name, &activate],
            )
            .await?
            .get(0);
        let new_version = r.action_version + 1;
        let intent = new_id();
        open_replay_intent(c, intent, lineage.id, &r.schema_hash, new_version).await?;
        mark_approved::<DeviceReview, C>(c, id, actor, new_version).await?;
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
            review: one::<DeviceReview, C>(c, scope, id, false).await?,
            lineage_status: status,
            mirror_table_name: mirror_name.or(lineage.mirror_table_name),
            replay_intent_id: intent,
            blocking_deferred: plan.blocking_deferred,
        })
    }
}

/// Telemetry lineages carry no schema_columns: their "columns" are the fields seen in staged
/// rows, each a nullable value.
async fn telemetry_fields<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    source_table: &str,
) -> Result<SchemaColumns, OpError> {
    let rows = c
        .query_unnamed(
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
