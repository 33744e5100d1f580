//! Backpressure, circuit breaker, resume and reset-materialization (cloud.md §7), executing the
//! decisions of [`edge_cloud_core::backpressure`] in the caller's transaction.
//!
//! Pause: lineage paused (our reason unless it already waits for a schema review), device
//! pause recorded, a signed `pause_lineage` control stored pending, event — all in the
//! transaction of the batch (or replay chunk) that crossed the line, so a crash leaves all or
//! none of it. The control goes out after the commit (the publisher re-sends pending controls
//! until the device acks).

use std::collections::HashMap;

use edge_cloud_core::backpressure::{
    may_reset, pause_after_intake, resume_after_reset, sweep, Caps, Load, PauseReason,
};
use edge_protocol::control::ControlKind;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::controls::{current_watermark, issue_lineage_control};
use crate::drain::{drain_chunk, ensure_intent, has_drainable};
use crate::error::ResetError;
use crate::lineage::{emit_event, lock_lineage};
use crate::policy::lineage_load_sql;
use crate::registry::{device_by_id, Device};
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A lineage's counters, pause state and its project's caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageLoad {
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub source_table: String,
    pub status: String,
    pub pause_reason: Option<String>,
    pub load: Load,
    pub caps: Caps,
}

/// Reads counters and caps in one statement (the policy row is optional: the default caps).
pub async fn lineage_load<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<LineageLoad, StoreError> {
    let r = c
        .query_opt_unnamed(lineage_load_sql(), &[&lineage_id])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("lineage {lineage_id}")))?;
    let pause_reason: Option<String> = r.get(3);
    let device_pause: Option<String> = r.get(4);
    Ok(LineageLoad {
        lineage_id,
        device_id: r.get(0),
        source_table: r.get(1),
        status: r.get(2),
        load: Load {
            staged_rows: r.get(5),
            staged_bytes: r.get(6),
            failure_count: r.get(7),
            lineage_pause: pause_reason.as_deref().and_then(PauseReason::from_db),
            device_pause: device_pause.as_deref().and_then(PauseReason::from_db),
        },
        pause_reason,
        caps: Caps {
            max_pending_rows: r.get(8),
            max_pending_bytes: r.get(9),
            resume_threshold_percent: r.get(10),
            breaker_failures: r.get(11),
        },
    })
}

async fn device_of<C: GenericClient + Sync>(c: &C, device_id: Uuid) -> Result<Device, StoreError> {
    device_by_id(c, device_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {device_id}")))
}

/// The check after every accepted batch (and replay chunk with misfits), in its transaction,
/// with the lineage locked. Returns the pause it applied, if any.
pub async fn check_after_intake<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<Option<PauseReason>, StoreError> {
    let ll = lineage_load(c, lineage_id).await?;
    let Some(reason) = pause_after_intake(&ll.load, &ll.caps) else {
        return Ok(None);
    };
    pause(c, &ll, reason, now, control_id).await?;
    Ok(Some(reason))
}

/// A batch materialized without a single misfit: the breaker counts failures *in a row*, so
/// the streak ends here. A no-op write is skipped by the `WHERE`.
pub async fn note_clean_batch<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_table_lineages SET materialization_failure_count = 0 \
         WHERE id = $1 AND materialization_failure_count > 0 AND status = 'active'",
        &[&lineage_id],
    )
    .await?;
    Ok(())
}

async fn pause<C: GenericClient + Sync>(
    c: &C,
    ll: &LineageLoad,
    reason: PauseReason,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<(), StoreError> {
    // A schema-review pause keeps its reason: the review is what must be decided first.
    c.execute_unnamed(
        "UPDATE edge_table_lineages SET status = 'paused', \
             pause_reason = CASE WHEN pause_reason = 'schema_review' THEN pause_reason ELSE $2 END, \
             device_pause_reason = $2, updated_at = now() \
         WHERE id = $1",
        &[&ll.lineage_id, &reason.as_str()],
    )
    .await?;
    let device = device_of(c, ll.device_id).await?;
    let watermark = current_watermark(c, ll.lineage_id).await?;
    let issued = issue_lineage_control(
        c,
        &device,
        ll.lineage_id,
        &ll.source_table,
        ControlKind::PauseLineage,
        watermark,
        Some(reason.control_reason()),
        now,
        control_id,
    )
    .await?;
    emit_event(
        c,
        "integration.edge_table_lineage.ingestion_paused.v1",
        &device,
        Some(ll.lineage_id),
        serde_json::json!({
            "lineage_id": ll.lineage_id,
            "source_table": ll.source_table,
            "reason": reason.as_str(),
            "server_watermark": watermark,
            "control_id": issued.control_id,
            "staged_row_count": ll.load.staged_rows,
            "staged_bytes": ll.load.staged_bytes,
            "materialization_failure_count": ll.load.failure_count,
        }),
    )
    .await?;
    Ok(())
}

/// What a resume did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resumed {
    pub activated: bool,
    /// The `resume_lineage` control sent, if the device had been paused.
    pub control_id: Option<Uuid>,
    pub server_watermark: Option<i64>,
    /// A replay intent was opened for rows staged while paused.
    pub replay_opened: bool,
}

async fn resume<C: GenericClient + Sync>(
    c: &C,
    ll: &LineageLoad,
    activate: bool,
    send_resume: bool,
    via: &str,
    now: OffsetDateTime,
) -> Result<Resumed, StoreError> {
    let mut out = Resumed::default();
    if activate {
        let n = c
            .execute_unnamed(
                "UPDATE edge_table_lineages SET status = 'active', pause_reason = NULL, \
                     updated_at = now() \
                 WHERE id = $1 AND pause_reason IN ('volume_backpressure', 'circuit_breaker')",
                &[&ll.lineage_id],
            )
            .await?;
        out.activated = n == 1;
    }
    let device = device_of(c, ll.device_id).await?;
    if send_resume {
        c.execute_unnamed(
            "UPDATE edge_table_lineages SET device_pause_reason = NULL, updated_at = now() \
             WHERE id = $1",
            &[&ll.lineage_id],
        )
        .await?;
        let watermark = current_watermark(c, ll.lineage_id).await?;
        let issued = issue_lineage_control(
            c,
            &device,
            ll.lineage_id,
            &ll.source_table,
            ControlKind::ResumeLineage,
            watermark,
            None,
            now,
            Uuid::now_v7(),
        )
        .await?;
        out.control_id = Some(issued.control_id);
        out.server_watermark = Some(watermark);
    }
    // Rows staged while the lineage was paused are behind any finished replay's cursor: an
    // open intent makes sure the worker drains them now that live rows materialize again.
    let active: bool = c
        .query_one_unnamed(
            "SELECT status = 'active' FROM edge_table_lineages WHERE id = $1",
            &[&ll.lineage_id],
        )
        .await?
        .get(0);
    if active && has_drainable(c, ll.lineage_id).await? {
        out.replay_opened = ensure_intent(c, ll.lineage_id, via, Uuid::now_v7()).await?;
    }
    if out.activated || out.control_id.is_some() {
        emit_event(
            c,
            "integration.edge_table_lineage.ingestion_resumed.v1",
            &device,
            Some(ll.lineage_id),
            serde_json::json!({
                "lineage_id": ll.lineage_id,
                "source_table": ll.source_table,
                "via": via,
                "server_watermark": out.server_watermark,
                "control_id": out.control_id,
                "staged_row_count": ll.load.staged_rows,
                "staged_bytes": ll.load.staged_bytes,
            }),
        )
        .await?;
    }
    Ok(out)
}

/// For the approval path (cloud.md §5: "approval does not send `resume_lineage` unless the
/// device had been paused by a control"): resumes the device if a control paused it. Call in
/// the approval transaction after the lineage is active; false when the device was not paused.
pub async fn resume_device_if_paused<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let ll = lineage_load(c, lineage_id).await?;
    if ll.load.device_pause.is_none() {
        return Ok(false);
    }
    let r = resume(c, &ll, false, true, "approval", now).await?;
    Ok(r.control_id.is_some())
}

/// One lineage of the resume sweep, in the caller's transaction: locks it, re-reads its load
/// and resumes it if [`sweep`] says so.
pub async fn sweep_lineage<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    now: OffsetDateTime,
) -> Result<Option<Resumed>, StoreError> {
    lock_lineage(c, lineage_id).await?;
    let ll = lineage_load(c, lineage_id).await?;
    let Some(decision) = sweep(&ll.load, &ll.caps) else {
        return Ok(None);
    };
    resume(
        c,
        &ll,
        decision.activate_lineage,
        decision.send_resume,
        "sweep",
        now,
    )
    .await
    .map(Some)
}

/// The answer of reset-materialization (cloud.md §10).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResetReport {
    pub lineage_id: Uuid,
    /// The lineage is materializing again (and the device was resumed if it had been paused).
    pub resumed: bool,
    pub staged_row_count: i64,
    /// The lineage's status afterwards.
    pub status: String,
}

/// Failed rows retried synchronously by a reset; anything beyond goes to the replay worker.
const RESET_SYNC_ROWS: usize = 50_000;
const RESET_CHUNK: i64 = 2_000;

/// Reset-materialization (cloud.md §7), in the caller's transaction: clears the failure
/// counter, retries the failed staged rows through the materializer, and — unless the retry
/// trips the breaker again — activates the lineage and sends `resume_lineage` if a control had
/// paused the device. Refused (409) when the lineage is not blocked or a review is open.
pub async fn reset_materialization<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    now: OffsetDateTime,
) -> Result<ResetReport, ResetError> {
    let lineage = lock_lineage(c, lineage_id).await?;
    let ll = lineage_load(c, lineage_id).await?;
    let row = c
        .query_one_unnamed(
            "SELECT EXISTS (SELECT 1 FROM edge_schema_reviews \
                     WHERE lineage_id = $1 AND state IN ('queued', 'in_review')), \
                 (SELECT count(*) FROM edge_staged_rows \
                     WHERE lineage_id = $1 AND staging_reason = 'materialization_failed')",
            &[&lineage_id],
        )
        .await
        .map_err(StoreError::from)?;
    let review_open: bool = row.get(0);
    let failed_rows: i64 = row.get(1);
    may_reset(
        &ll.load,
        ll.pause_reason.as_deref() == Some("schema_review"),
        review_open,
        failed_rows,
    )?;
    // Failed rows become drainable again, and the streak starts from zero.
    c.execute_unnamed(
        "WITH f AS (UPDATE edge_staged_rows SET staging_reason = 'lineage_paused', error = NULL \
                    WHERE lineage_id = $1 AND staging_reason = 'materialization_failed') \
         UPDATE edge_table_lineages SET materialization_failure_count = 0, \
             materialization_last_error = NULL, updated_at = now() WHERE id = $1",
        &[&lineage_id],
    )
    .await
    .map_err(StoreError::from)?;
    let mut cursor = (Uuid::nil(), i64::MIN, String::new());
    let mut retried = 0usize;
    let mut cache = HashMap::new();
    while retried < RESET_SYNC_ROWS {
        let chunk = drain_chunk(
            c,
            lineage_id,
            lineage.device_id,
            &cursor,
            RESET_CHUNK,
            &mut cache,
        )
        .await?;
        retried += chunk.fetched;
        match chunk.last {
            Some(last) if chunk.fetched == usize::try_from(RESET_CHUNK).unwrap_or(0) => {
                cursor = last;
            }
            _ => break,
        }
        let failures = lineage_load(c, lineage_id).await?.load.failure_count;
        if !resume_after_reset(failures, &ll.caps) {
            break;
        }
    }
    let after = lineage_load(c, lineage_id).await?;
    let resumed = resume_after_reset(after.load.failure_count, &after.caps);
    if resumed {
        // may_reset refused schema-review pauses, so any pause left is ours to lift.
        resume(
            c,
            &after,
            true,
            after.load.device_pause.is_some(),
            "reset",
            now,
        )
        .await?;
    } else if after.load.device_pause.is_none() {
        pause(c, &after, PauseReason::CircuitBreaker, now, Uuid::now_v7()).await?;
    }
    let end = lineage_load(c, lineage_id).await?;
    Ok(ResetReport {
        lineage_id,
        resumed,
        staged_row_count: end.load.staged_rows,
        status: end.status,
    })
}
