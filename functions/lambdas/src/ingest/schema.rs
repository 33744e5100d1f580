//! Classification of a batch against its lineage (cloud.md §3): the approved schema, the
//! batch's, the policy → a class, a review when one is due, and the route (bindings or
//! staging). Schema observations (protocol §5) record a hash's columns for later batches.

use edge_cloud_core::classify::{classify, ClassifyPolicy, SchemaClass};
use edge_cloud_core::coalesce::RegistryScope;
use edge_cloud_core::intake::{plan_intake, BindingsOf, StagingReason};
use edge_cloud_store::coalesce::open_registry_review;
use edge_cloud_store::device_block;
use edge_cloud_store::lineage::{
    bindings, open_review, pause_lineage, record_schema_version, schema_columns, upsert_lineage,
    Lineage,
};
use edge_cloud_store::policy::policy;
use edge_cloud_store::registry::Device;
use edge_cloud_store::staging::StageTarget;
use edge_cloud_store::tokio_postgres::Transaction;
use edge_protocol::batch::RowBatch;
use edge_protocol::schema::SchemaObservation;
use edge_protocol::telemetry::TelemetryBatch;
use uuid::Uuid;

use super::Outcome;
use crate::HandlerError;

/// Everything intake derives from the lineage before routing.
pub(super) struct Classified {
    pub(super) lineage: Lineage,
    pub(super) class: SchemaClass,
    pub(super) route: Result<BindingsOf, StagingReason>,
}

/// What staging keys a batch's rows by: row and telemetry batches alike.
pub(super) trait StagedBatch {
    fn source_table(&self) -> &str;
    fn batch_id(&self) -> Uuid;
    fn schema_hash(&self) -> &str;
}

/// Both batch types name these fields alike.
macro_rules! staged_batch {
    ($batch:ty) => {
        impl StagedBatch for $batch {
            fn source_table(&self) -> &str {
                &self.source_table
            }
            fn batch_id(&self) -> Uuid {
                self.batch_id
            }
            fn schema_hash(&self) -> &str {
                &self.schema_hash
            }
        }
    };
}
staged_batch!(RowBatch);
staged_batch!(TelemetryBatch);

/// Where the rows of batch `b` on a lineage are staged, and why (the route's answer).
pub(super) fn stage_target<'a>(
    lineage_id: Uuid,
    device: &Device,
    b: &'a impl StagedBatch,
    reason: StagingReason,
) -> StageTarget<'a> {
    StageTarget {
        lineage_id,
        device_id: device.device_id,
        source_table: b.source_table(),
        batch_id: b.batch_id(),
        schema_hash: b.schema_hash(),
        reason,
    }
}

/// Classifies a batch of `schema_hash` (columns `carried`, else as recorded) on `lineage`;
/// `bound` = the hash has bindings; `registry` = the coalescing scope awaiting a registry review.
pub(super) async fn classify_batch(
    tx: &Transaction<'_>,
    device: &Device,
    lineage: Lineage,
    schema_hash: &str,
    carried: Option<&edge_protocol::fingerprint::SchemaColumns>,
    bound: bool,
    registry: Option<RegistryScope>,
) -> Result<Classified, HandlerError> {
    let policy = policy(tx, device.project_id).await?;
    let approved = match &lineage.approved_schema_hash {
        Some(h) => schema_columns(tx, lineage.id, h).await?,
        None => None,
    };
    let new = match carried {
        Some(c) => Some(c.clone()),
        None => schema_columns(tx, lineage.id, schema_hash).await?,
    };
    let c = classify(
        approved.as_ref(),
        bound,
        new.as_ref(),
        ClassifyPolicy {
            allow_additive_continue: policy.allow_additive_continue,
        },
    );
    record_schema_version(tx, lineage.id, schema_hash, new.as_ref(), c.class, &c.diff).await?;
    let plan = plan_intake(c.disposition, lineage.is_active());
    if let (true, Some(scope)) = (plan.open_review, registry) {
        // Coalescing mode: one registry review per (scope, table, hash) instead of one per
        // device (cloud.md §9).
        open_registry_review(
            tx,
            (Uuid::now_v7(), Uuid::now_v7()),
            device,
            scope,
            lineage.id,
            &lineage.source_table,
            schema_hash,
            c.class,
            &c.diff,
        )
        .await?;
    } else if plan.open_review {
        open_review(
            tx,
            Uuid::now_v7(),
            device,
            lineage.id,
            schema_hash,
            c.class,
            &c.diff,
        )
        .await?;
    }
    if plan.pause_for_review {
        pause_lineage(tx, lineage.id, "schema_review").await?;
    }
    Ok(Classified {
        lineage,
        class: c.class,
        route: plan.route,
    })
}

/// Schema observations (protocol §5) are advisory: record the hash (and its columns) for the
/// lineage, so a later batch without `schema_columns` can still be classified. The device's
/// block of the table (`blocked_reason`, `blocked_commit_seq`) is recorded on the lineage, and
/// cleared by an observation without it.
pub(super) async fn observe_schema(
    tx: &Transaction<'_>,
    device: &Device,
    obs: SchemaObservation,
) -> Result<Outcome, HandlerError> {
    let lineage = upsert_lineage(
        tx,
        Uuid::now_v7(),
        device,
        &obs.source_table,
        "rows",
        &obs.schema_hash,
    )
    .await?;
    // The device's own block of the table (reliability.md §2), or its end.
    device_block::record(
        tx,
        lineage.id,
        obs.blocked_reason.as_deref().zip(obs.blocked_commit_seq),
    )
    .await?;
    if let Some(cols) = &obs.schema_columns {
        let approved = match &lineage.approved_schema_hash {
            Some(h) => schema_columns(tx, lineage.id, h).await?,
            None => None,
        };
        let bound = bindings(tx, lineage.id, &obs.schema_hash).await?.is_some();
        let c = classify(
            approved.as_ref(),
            bound,
            Some(cols),
            ClassifyPolicy::default(),
        );
        record_schema_version(
            tx,
            lineage.id,
            &obs.schema_hash,
            Some(cols),
            c.class,
            &c.diff,
        )
        .await?;
    }
    Ok(Outcome::SchemaObserved {
        lineage_id: lineage.id,
    })
}
