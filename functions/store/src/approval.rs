//! One way to apply an approval plan (cloud.md §5, §9), shared by per-device reviews and
//! registry reviews (each kind's [`crate::review::Approve`]): the plan from the reviewed
//! columns, the mirror DDL, the binding rows, the data points and the replay intent of a
//! device approval. The review's own move to `approved` is a transition
//! ([`crate::review::mark_approved`]).
//!
//! Approval never sends `resume_lineage` itself: a device paused by a control
//! (`device_pause_reason`) is resumed by the sweep once the backlog has drained, which is also
//! what keeps the approval's transaction free of network calls.

use edge_cloud_core::mirror::MirrorColumn;
use edge_cloud_core::naming::{claim, Claim, MirrorOwner};
use edge_cloud_core::review::{
    plan_approval, ApprovalPlan, ApprovalPolicy, ApprovalTarget, ColumnAction, ColumnActionKind,
};
use edge_protocol::fingerprint::{Affinity, SchemaColumns};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::OpError;
use crate::lineage::Lineage;
use crate::mirror::{ensure_mirror, mirror_owner, primary_key_columns, record_mirror_owner};
use crate::scope::Scope;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// 409 when the reviewed hash has no recorded columns to plan from.
pub(crate) fn columns_missing(schema_hash: &str) -> OpError {
    OpError::Conflict {
        code: "schema_columns_missing",
        message: format!(
            "no columns were recorded for schema {schema_hash}: wait for a batch carrying \
             schema_columns"
        ),
    }
}

/// The plan of the column actions against the reviewed columns (400 when they do not fit).
pub(crate) fn plan(
    target: ApprovalTarget<'_>,
    schema: &SchemaColumns,
    actions: &[ColumnAction],
    policy: ApprovalPolicy,
) -> Result<ApprovalPlan, OpError> {
    plan_approval(target, schema, actions, policy).map_err(|e| OpError::Invalid {
        code: e.code(),
        message: e.to_string(),
    })
}

/// Candidates tried for a default mirror name before giving up (`_2` … `_{N}`).
const MAX_NAME_CANDIDATES: u32 = 1_000;

/// The first of `candidate(1)`, `candidate(2)`, … that `claimant` may use: free or its own
/// (reliability.md §3: a name another lineage or coalesced mirror owns gets `_2`, `_3`, …).
pub(crate) async fn free_mirror_name<C: GenericClient + Sync>(
    c: &C,
    claimant: &MirrorOwner,
    candidate: impl Fn(u32) -> String,
) -> Result<String, OpError> {
    for n in 1..=MAX_NAME_CANDIDATES {
        let name = candidate(n);
        let owner = mirror_owner(c, &name).await?;
        if matches!(
            claim(owner.as_ref(), claimant, false),
            Claim::Free | Claim::Owned
        ) {
            return Ok(name);
        }
    }
    Err(OpError::Conflict {
        code: "mirror_table_in_use",
        message: format!("no free mirror table name after {MAX_NAME_CANDIDATES} candidates"),
    })
}

/// Checks that `claimant` may create or widen the plan's mirror table and records it as owner
/// when the name is free: 409 `mirror_table_in_use` (owned by another lineage or coalesced
/// mirror of the project) or `mirror_table_not_owned` (another project's or org's). `adopted`:
/// the claimant is a lineage writing the table because a coalesced mirror adopted it.
pub(crate) async fn claim_mirror<C: GenericClient + Sync>(
    c: &C,
    plan: &ApprovalPlan,
    claimant: &MirrorOwner,
    adopted: bool,
) -> Result<(), OpError> {
    let Some(table) = &plan.mirror else {
        return Ok(());
    };
    let owner = mirror_owner(c, &table.name).await?;
    match claim(owner.as_ref(), claimant, adopted) {
        Claim::Owned => Ok(()),
        Claim::Free => Ok(record_mirror_owner(c, &table.name, claimant).await?),
        Claim::InUse => Err(OpError::Conflict {
            code: "mirror_table_in_use",
            message: format!(
                "mirror table {:?} belongs to another lineage or coalesced mirror of this \
                 project: choose another mirror_table_name",
                table.name
            ),
        }),
        Claim::NotOwned => Err(OpError::Conflict {
            code: "mirror_table_not_owned",
            message: format!(
                "mirror table {:?} belongs to another project: choose another \
                 mirror_table_name",
                table.name
            ),
        }),
    }
}

/// The plan's mirror DDL: create, or widen for newly mirrored columns (409 when a column's
/// type conflicts with the existing table, `mirror_primary_key_changed` when the approved
/// primary key is not the existing table's — refused up front, reliability.md §4).
pub(crate) async fn create_mirror<C: GenericClient + Sync>(
    c: &C,
    plan: &ApprovalPlan,
) -> Result<(), OpError> {
    if let Some(table) = &plan.mirror {
        let existing_pk = primary_key_columns(c, &table.name).await?;
        if let Some(message) = table.primary_key_change(&existing_pk) {
            return Err(OpError::Conflict {
                code: "mirror_primary_key_changed",
                message,
            });
        }
        ensure_mirror(c, table).await.map_err(|e| match e {
            StoreError::Corrupt(m) => OpError::Conflict {
                code: "mirror_column_type_conflict",
                message: m,
            },
            other => OpError::Store(other),
        })?;
    }
    Ok(())
}

/// The data point of each column action of a device approval (`None` for actions without one):
/// `map` targets checked to be data points of the lineage's device, `auto_create_and_map`
/// creating `{table}.{column}` (reusing a data point of that name). `new_id` supplies the ids.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn device_data_points<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    lineage: &Lineage,
    schema: &SchemaColumns,
    plan: &ApprovalPlan,
    actions: &[ColumnAction],
    new_id: &mut impl FnMut() -> Uuid,
) -> Result<Vec<Option<Uuid>>, OpError> {
    let wanted: Vec<Uuid> = plan
        .mapped
        .iter()
        .filter_map(|m| m.device_data_point_id)
        .collect();
    if !wanted.is_empty() {
        let found: i64 = c
            .query_one_unnamed(
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
            .query_unnamed(
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

    Ok(actions
        .iter()
        .map(|a| match a.action {
            ColumnActionKind::Map => a.device_data_point_id,
            ColumnActionKind::AutoCreateAndMap => created
                .iter()
                .find(|(n, _)| *n == a.source_column_name)
                .map(|(_, id)| *id),
            _ => None,
        })
        .collect())
}

/// One binding row of an approval: a source column and what its action made of it. There is one
/// per column action, whatever the action, so the review's decision is fully recorded
/// (ignored/deferred columns included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindingRow<'a> {
    pub action: &'a ColumnAction,
    /// The mirror table and column, when the column is mirrored.
    pub mirrored: Option<(&'a str, &'a MirrorColumn)>,
}

impl<'a> BindingRow<'a> {
    pub fn source_column_name(&self) -> &'a str {
        &self.action.source_column_name
    }

    pub fn action_kind(&self) -> ColumnActionKind {
        self.action.action
    }

    pub fn mirror_table_name(&self) -> Option<&'a str> {
        self.mirrored.map(|(t, _)| t)
    }

    pub fn mirror_column_name(&self) -> Option<&'a str> {
        self.mirrored.map(|(_, c)| c.name.as_str())
    }

    pub fn mirror_type(&self) -> Option<&'static str> {
        self.mirrored.map(|(_, c)| c.ty.sql())
    }

    pub fn pk_ordinal(&self) -> i32 {
        self.mirrored
            .map(|(_, c)| i32::try_from(c.pk_ordinal).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// The binding rows of `actions` under `plan`, in action order.
pub(crate) fn binding_rows<'a>(
    actions: &'a [ColumnAction],
    plan: &'a ApprovalPlan,
) -> Vec<BindingRow<'a>> {
    actions
        .iter()
        .map(|a| BindingRow {
            action: a,
            mirrored: plan.mirror.as_ref().and_then(|t| {
                t.columns
                    .iter()
                    .find(|c| c.source_name == a.source_column_name)
                    .map(|c| (t.name.as_str(), c))
            }),
        })
        .collect()
}

/// The binding rows as a registry entry keeps them (JSON, bound to lineages on adoption,
/// which points `mirror` columns at the entry's shared mirror).
pub(crate) fn bindings_json(rows: &[BindingRow<'_>]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|b| {
                serde_json::json!({
                    "source_column_name": b.source_column_name(),
                    "action": b.action_kind().as_str(),
                    "mirror_column_name": b.mirror_column_name(),
                    "mirror_type": b.mirror_type(),
                    "pk_ordinal": b.pk_ordinal(),
                })
            })
            .collect(),
    )
}

/// Writes a lineage's binding rows of `schema_hash` (replacing an earlier decision for the same
/// columns); `data_points` gives each row's data point (`map`, `auto_create_and_map`).
pub(crate) async fn bind_lineage<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    schema_hash: &str,
    rows: &[BindingRow<'_>],
    data_points: &[Option<Uuid>],
) -> Result<(), OpError> {
    let src: Vec<&str> = rows.iter().map(|b| b.source_column_name()).collect();
    let act: Vec<&str> = rows.iter().map(|b| b.action_kind().as_str()).collect();
    let mtable: Vec<Option<&str>> = rows.iter().map(|b| b.mirror_table_name()).collect();
    let mcol: Vec<Option<&str>> = rows.iter().map(|b| b.mirror_column_name()).collect();
    let mtype: Vec<Option<&str>> = rows.iter().map(|b| b.mirror_type()).collect();
    let pk: Vec<i32> = rows.iter().map(|b| b.pk_ordinal()).collect();
    c.execute_unnamed(
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
            &lineage_id,
            &schema_hash,
            &src,
            &act,
            &mtable,
            &mcol,
            &mtype,
            &pk,
            &data_points,
        ],
    )
    .await?;
    Ok(())
}

/// Opens the replay intent that drains the lineage's staged backlog of the approved hash.
pub(crate) async fn open_replay_intent<C: GenericClient + Sync>(
    c: &C,
    intent_id: Uuid,
    lineage_id: Uuid,
    schema_hash: &str,
    action_version: i32,
) -> Result<(), OpError> {
    c.execute_unnamed(
        "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind, \
             action_version) VALUES ($1, $2, $3, 'pending', 'schema_review_approved', $4)",
        &[&intent_id, &lineage_id, &schema_hash, &action_version],
    )
    .await?;
    Ok(())
}
