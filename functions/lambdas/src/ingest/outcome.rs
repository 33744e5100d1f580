//! What an envelope came to ([`Outcome`]), and the common end of every accepted batch: flow
//! control (cloud.md §7), the ledger row's outcome and the handler's answer.

use edge_cloud_core::backpressure::streak_ends;
use edge_cloud_core::classify::SchemaClass;
use edge_cloud_core::metrics::StagedByReason;
use edge_cloud_core::spill::SpillCode;
use edge_cloud_store::backpressure::{check_after_intake, note_clean_batch};
use edge_cloud_store::ledger::{finish_segment, SegmentOutcome};
use edge_cloud_store::tokio_postgres::Transaction;
use edge_cloud_store::StoreError;
use edge_protocol::validate::RejectionCode;
use time::OffsetDateTime;
use uuid::Uuid;

use super::ledger::count;
use crate::HandlerError;

/// What happened to an envelope. Every variant is a success for the transport: only
/// [`HandlerError`]s that [`HandlerError::is_retryable`] are redelivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A batch was accepted and is now durably materialized and/or staged.
    Accepted {
        lineage_id: Uuid,
        batch_id: Uuid,
        class: SchemaClass,
        materialized: i64,
        staged: i64,
        /// Rows staged as `materialization_failed`.
        failed: i64,
        /// What else the counters need (observability.md §2).
        tally: Tally,
    },
    /// The (device, batch_id) was already in the ledger: nothing done.
    Duplicate { batch_id: Uuid },
    /// Recorded in the ledger with its code; never retried.
    Rejected {
        code: RejectionCode,
        message: String,
    },
    /// A control ack (`known` = it matched a pending control).
    ControlAcked { control_id: Uuid, known: bool },
    /// A schema observation was recorded.
    SchemaObserved { lineage_id: Uuid },
    /// Accepted but not acted on.
    Ignored { reason: String },
    /// A `url_request` was answered with a signed `url_grant` control (pending until acked).
    UploadGranted { batch_id: Uuid, control_id: Uuid },
    /// A `url_request` got no grant now (the code says why); the device asks again.
    UploadNotGranted { batch_id: Uuid, code: SpillCode },
    /// A `finalize` whose object could not be processed; nothing of it was kept, the outcome
    /// is recorded on the upload, and a new `url_request` for the batch may try again.
    SpillFailed {
        batch_id: Uuid,
        code: SpillCode,
        message: String,
    },
    /// Failed ingress (bad topic, identity mismatch, bad base64): logged and dropped; there
    /// is no registered device to attribute it to.
    Dropped { reason: String },
}

/// What an accepted batch adds to the counters beyond its row counts (observability.md §2),
/// noted where intake decides it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// The ledger status is `staged` (the batch was routed to staging), else `materialized`.
    pub staged_status: bool,
    /// The rows staged, per reason.
    pub staged_by: StagedByReason,
    /// A batch of a journal epoch older than the lineage's newest was recorded (reliability §5).
    pub stale_epoch: bool,
}

/// What the rows of one batch (or one chunk of a spill object) came to.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Processed {
    pub(super) lineage_id: Option<Uuid>,
    pub(super) class: Option<SchemaClass>,
    /// Some rows were staged (the batch's ledger status is then `staged`).
    pub(super) staged_any: bool,
    /// (materialized, staged, failed) rows.
    pub(super) counts: (i64, i64, i64),
    pub(super) staged_by: StagedByReason,
    pub(super) stale_epoch: bool,
}

impl Processed {
    /// Adds a later chunk of the same spill object.
    pub(super) fn merge(&mut self, other: Processed) {
        self.lineage_id = other.lineage_id.or(self.lineage_id);
        self.class = other.class.or(self.class);
        self.staged_any |= other.staged_any;
        self.counts.0 += other.counts.0;
        self.counts.1 += other.counts.1;
        self.counts.2 += other.counts.2;
        self.staged_by.merge(other.staged_by);
        self.stale_epoch |= other.stale_epoch;
    }
}

/// The common end of a processed row batch or spill: [`accept`] with its totals.
pub(super) async fn accept_processed(
    tx: &Transaction<'_>,
    device_id: Uuid,
    batch_id: Uuid,
    batch_time: OffsetDateTime,
    p: &Processed,
) -> Result<Outcome, HandlerError> {
    let (Some(lineage_id), Some(class)) = (p.lineage_id, p.class) else {
        return Err(StoreError::Corrupt(format!("batch {batch_id} accepted without rows")).into());
    };
    accept(
        tx,
        &Accepted {
            device_id,
            lineage_id,
            batch_id,
            batch_time,
            class,
            status: if p.staged_any {
                "staged"
            } else {
                "materialized"
            },
            counts: p.counts,
            staged_by: p.staged_by,
            stale_epoch: p.stale_epoch,
        },
    )
    .await
}

/// What an accepted row or telemetry batch came to.
pub(super) struct Accepted {
    pub(super) device_id: Uuid,
    pub(super) lineage_id: Uuid,
    pub(super) batch_id: Uuid,
    pub(super) batch_time: OffsetDateTime,
    pub(super) class: SchemaClass,
    pub(super) status: &'static str,
    /// (materialized, staged, failed) rows.
    pub(super) counts: (i64, i64, i64),
    pub(super) staged_by: StagedByReason,
    pub(super) stale_epoch: bool,
}

/// The common end of intake, in the batch's transaction: flow control (§7), the ledger row's
/// outcome, and the handler's answer.
pub(super) async fn accept(tx: &Transaction<'_>, a: &Accepted) -> Result<Outcome, HandlerError> {
    let (materialized, staged, failed) = a.counts;
    flow_control(tx, a.lineage_id, staged, failed, materialized).await?;
    finish_segment(
        tx,
        a.device_id,
        a.batch_id,
        a.batch_time,
        &SegmentOutcome {
            lineage_id: a.lineage_id,
            status: a.status,
            classification: a.class.as_str(),
            materialized_rows: count(usize::try_from(materialized).unwrap_or(0)),
            staged_rows: count(usize::try_from(staged).unwrap_or(0)),
        },
    )
    .await?;
    Ok(Outcome::Accepted {
        lineage_id: a.lineage_id,
        batch_id: a.batch_id,
        class: a.class,
        materialized,
        staged,
        failed,
        tally: Tally {
            staged_status: a.status == "staged",
            staged_by: a.staged_by,
            stale_epoch: a.stale_epoch,
        },
    })
}

/// Backpressure and circuit breaker (cloud.md §7) after an accepted batch, in its transaction:
/// a batch that materialized any row ends a failure streak (its misfits stay staged as
/// `materialization_failed`: [`streak_ends`]); anything staged may cross a cap or trip the
/// breaker, which pauses the lineage and stores a signed `pause_lineage` control.
async fn flow_control(
    tx: &Transaction<'_>,
    lineage_id: Uuid,
    staged: i64,
    failed: i64,
    materialized: i64,
) -> Result<(), HandlerError> {
    if streak_ends(materialized) {
        note_clean_batch(tx, lineage_id).await?;
    }
    if staged > 0 || failed > 0 {
        let now = OffsetDateTime::now_utc();
        if let Some(reason) = check_after_intake(tx, lineage_id, now, Uuid::now_v7()).await? {
            tracing::warn!(%lineage_id, reason = reason.as_str(), "lineage paused; pause_lineage control issued");
        }
    }
    Ok(())
}
