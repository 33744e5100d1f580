//! Controls (protocol §6): issuing signed pause/resume controls into `edge_pending_controls`,
//! and what the runner (or the sweep Lambda) must (re-)publish until acked.

use deadpool_postgres::Pool;
use edge_protocol::control::{sign_in_place, ControlEnvelope, ControlKind};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::registry::Device;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A control due for (re-)publication.
#[derive(Debug, Clone)]
pub struct DueControl {
    pub control_id: Uuid,
    /// `{slug}/{device}/sync/ingest/control`
    pub topic: String,
    /// The stored signed envelope, byte-identical on every attempt.
    pub payload: Vec<u8>,
    /// `control_kind`, and the attempts including this one (1 = the first publish).
    pub kind: String,
    pub attempts: i32,
}

/// Claims up to `limit` due controls and schedules their next attempt with exponential
/// backoff (5 s · 2^attempts, at most 5 min), in one statement so concurrent publishers do
/// not double-send (`SKIP LOCKED`).
pub async fn due_controls(pool: &Pool, limit: i64) -> Result<Vec<DueControl>, StoreError> {
    let c = pool.get().await?;
    let rows = c
        .query_unnamed(
            "WITH due AS ( \
                 SELECT control_id FROM edge_pending_controls \
                 WHERE status = 'pending' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE edge_pending_controls p SET attempts = p.attempts + 1, \
                 next_attempt_at = now() + least(interval '5 seconds' * power(2, p.attempts), \
                                                 interval '5 minutes') \
             FROM due, edge_devices d \
             WHERE p.control_id = due.control_id AND d.device_id = p.device_id \
             RETURNING p.control_id, d.topic_slug, d.device_name, p.envelope::text, \
                 p.control_kind, p.attempts",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let slug: String = r.get(1);
            let name: String = r.get(2);
            let text: String = r.get(3);
            DueControl {
                control_id: r.get(0),
                topic: format!("{slug}/{name}/sync/ingest/control"),
                payload: text.into_bytes(),
                kind: r.get(4),
                attempts: r.get(5),
            }
        })
        .collect())
}

/// A control issued by the cloud: signed with the device's control key, stored pending (it is
/// re-sent until the device acks it) and returned for an immediate first publish.
#[derive(Debug, Clone)]
pub struct IssuedControl {
    pub control_id: Uuid,
    pub envelope: ControlEnvelope,
}

/// The lineage's `server_watermark` (protocol §6): the last accepted `commit_seq` of its newest
/// journal epoch (UUIDv7 epochs sort by creation time) for row tables, the last accepted
/// `batch_seq` for telemetry; 0 before anything was accepted.
pub async fn current_watermark<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<i64, StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT CASE WHEN l.kind = 'telemetry' THEN l.last_batch_seq ELSE \
                 (SELECT w.high_seq FROM edge_lineage_watermarks w WHERE w.lineage_id = l.id \
                  ORDER BY w.journal_epoch DESC LIMIT 1) END \
             FROM edge_table_lineages l WHERE l.id = $1",
            &[&lineage_id],
        )
        .await?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// Issues a `pause_lineage` / `resume_lineage` control for a lineage in the caller's
/// transaction. An older unacked pause/resume of the same lineage is marked `superseded`: the
/// newer one decides, and re-sending the stale one would only make the device reject it as
/// older (`issued_at`).
#[allow(clippy::too_many_arguments)]
pub async fn issue_lineage_control<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    lineage_id: Uuid,
    source_table: &str,
    kind: ControlKind,
    server_watermark: i64,
    reason: Option<&str>,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<IssuedControl, StoreError> {
    let issued_at = edge_protocol::timestamp::format(now)
        .map_err(|e| StoreError::Corrupt(format!("issued_at: {e}")))?;
    let mut envelope = match kind {
        ControlKind::PauseLineage => ControlEnvelope::pause_lineage(
            control_id,
            source_table,
            server_watermark,
            reason.unwrap_or("paused by the cloud"),
            issued_at,
        ),
        _ => {
            let mut e = ControlEnvelope::resume_lineage(
                control_id,
                source_table,
                server_watermark,
                issued_at,
            );
            e.reason = reason.map(str::to_owned);
            e
        }
    };
    sign_in_place(&mut envelope, &device.control_key);
    let json = serde_json::to_value(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute_unnamed(
        "UPDATE edge_pending_controls SET status = 'superseded' \
         WHERE lineage_id = $1 AND status = 'pending' \
             AND control_kind IN ('pause_lineage', 'resume_lineage')",
        &[&lineage_id],
    )
    .await?;
    c.execute_unnamed(
        "INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, server_watermark, reason, envelope) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &control_id,
            &device.device_id,
            &lineage_id,
            &kind.as_str(),
            &source_table,
            &server_watermark,
            &reason,
            &json,
        ],
    )
    .await?;
    Ok(IssuedControl {
        control_id,
        envelope,
    })
}
