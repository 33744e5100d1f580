//! Tables the device blocked itself (reliability.md §2 "Blocked tables", §6), on their lineage
//! (migration 0008): recorded from the device's schema observation (`blocked_reason`,
//! `blocked_commit_seq`; one without them clears the block), shown as `device_block` on the
//! lineage resource; the operator's decision issued as the signed control `unblock_table`
//! (pending until acked, like every control); a skip's ack carries the dropped entry, kept as a
//! dead letter `skipped_by_operator` — the one way a change is ever dropped, never silently.

use edge_protocol::control::{sign_in_place, ControlEnvelope, SkippedEntry, UnblockAction};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::controls::IssuedControl;
use crate::dead_letters::{park, NewDeadLetter};
use crate::registry::Device;
use crate::scope::ts;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// The dead letter error text (and resolution) of an entry an operator skipped.
pub const SKIPPED_BY_OPERATOR: &str = "skipped_by_operator";

/// A block the device reported for the lineage's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeviceBlock {
    /// `undecodable_journal_entry`, `spill_row_too_large`, `upload_failed:<code>`, …
    pub reason: String,
    /// The blocking journal entry's `commit_seq` (what `unblock` names).
    pub commit_seq: i64,
    /// When the cloud learnt of it (RFC 3339).
    pub since: String,
}

/// The block from a lineage row's `device_block_reason`, `device_block_commit_seq`,
/// `device_block_at` (in that order from `first`).
pub fn from_columns(r: &tokio_postgres::Row, first: usize) -> Option<DeviceBlock> {
    let reason: Option<String> = r.get(first);
    let seq: Option<i64> = r.get(first + 1);
    let at: Option<OffsetDateTime> = r.get(first + 2);
    match (reason, seq) {
        (Some(reason), Some(commit_seq)) => Some(DeviceBlock {
            reason,
            commit_seq,
            since: at.map(ts).unwrap_or_default(),
        }),
        _ => None,
    }
}

/// Records what the device reported for `lineage_id`: `Some((reason, commit_seq))` sets the
/// block (its time kept while the same block is re-reported), `None` clears it.
pub async fn record<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    block: Option<(&str, i64)>,
) -> Result<(), StoreError> {
    let (reason, seq) = match block {
        Some((r, s)) => (Some(r), Some(s)),
        None => (None, None),
    };
    c.execute_unnamed(
        "UPDATE edge_table_lineages SET device_block_reason = $2, device_block_commit_seq = $3, \
             device_block_at = CASE WHEN $2::text IS NULL THEN NULL \
                 WHEN device_block_reason IS NOT DISTINCT FROM $2 \
                      AND device_block_commit_seq IS NOT DISTINCT FROM $3 \
                      AND device_block_at IS NOT NULL THEN device_block_at \
                 ELSE now() END, \
             updated_at = CASE WHEN device_block_reason IS DISTINCT FROM $2 \
                 OR device_block_commit_seq IS DISTINCT FROM $3 THEN now() ELSE updated_at END \
         WHERE id = $1",
        &[&lineage_id, &reason, &seq],
    )
    .await?;
    Ok(())
}

/// The lineage's device block (row-locking the lineage), `None` when it has none.
pub async fn current<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<Option<DeviceBlock>, StoreError> {
    let row = c
        .query_opt_unnamed(
            "SELECT device_block_reason, device_block_commit_seq, device_block_at \
             FROM edge_table_lineages WHERE id = $1 FOR UPDATE",
            &[&lineage_id],
        )
        .await?;
    Ok(row.and_then(|r| from_columns(&r, 0)))
}

/// Issues `unblock_table` for the lineage in the caller's transaction: signed, stored pending
/// (re-sent until acked) with `reason` = the action and `server_watermark` = the entry's
/// `commit_seq`. An older unacked `unblock_table` of the lineage is superseded.
#[allow(clippy::too_many_arguments)]
pub async fn issue_unblock<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    lineage_id: Uuid,
    source_table: &str,
    action: UnblockAction,
    commit_seq: i64,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<IssuedControl, StoreError> {
    let issued_at = edge_protocol::timestamp::format(now)
        .map_err(|e| StoreError::Corrupt(format!("issued_at: {e}")))?;
    let mut envelope =
        ControlEnvelope::unblock_table(control_id, source_table, action, commit_seq, issued_at);
    sign_in_place(&mut envelope, &device.control_key);
    let json = serde_json::to_value(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute_unnamed(
        "UPDATE edge_pending_controls SET status = 'superseded' \
         WHERE lineage_id = $1 AND status = 'pending' AND control_kind = 'unblock_table'",
        &[&lineage_id],
    )
    .await?;
    c.execute_unnamed(
        "INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, control_kind, \
             source_table, server_watermark, reason, envelope) \
         VALUES ($1, $2, $3, 'unblock_table', $4, $5, $6, $7)",
        &[
            &control_id,
            &device.device_id,
            &lineage_id,
            &source_table,
            &commit_seq,
            &action.as_str(),
            &json,
        ],
    )
    .await?;
    Ok(IssuedControl {
        control_id,
        envelope,
    })
}

/// How the ack that carries a skipped entry arrived (the dead letter's `transport`, `topic`).
#[derive(Debug, Clone, Copy)]
pub struct AckArrival<'a> {
    pub transport: &'a str,
    pub topic: Option<&'a str>,
}

/// Records the entry an operator skipped, from the ack of the `unblock_table` skip
/// `control_id` of `device_id`, as a dead letter `skipped_by_operator` (resolved at once: it is
/// a record, not something to retry). Only for a skip this cloud issued to that device for that
/// table and entry; once per control (a re-sent ack finds it). Returns the dead letter's id, or
/// `None` when the ack does not match a skip.
pub async fn record_skipped<C: GenericClient + Sync>(
    c: &C,
    device_id: Uuid,
    control_id: Uuid,
    entry: &SkippedEntry,
    arrival: AckArrival<'_>,
) -> Result<Option<i64>, StoreError> {
    let issued = c
        .query_opt_unnamed(
            "SELECT 1 FROM edge_pending_controls WHERE control_id = $1 AND device_id = $2 \
                 AND control_kind = 'unblock_table' AND reason = 'skip' \
                 AND source_table = $3 AND server_watermark = $4",
            &[
                &control_id,
                &device_id,
                &entry.source_table,
                &entry.commit_seq,
            ],
        )
        .await?;
    if issued.is_none() {
        return Ok(None);
    }
    let id = control_id.to_string();
    if let Some(r) = c
        .query_opt_unnamed(
            "SELECT id FROM edge_dead_letters WHERE message_id = $1 AND error LIKE $2",
            &[&id, &format!("{SKIPPED_BY_OPERATOR}%")],
        )
        .await?
    {
        return Ok(Some(r.get(0)));
    }
    let error = format!(
        "{SKIPPED_BY_OPERATOR}: {:?} commit_seq {}",
        entry.source_table, entry.commit_seq
    );
    let dl = park(
        c,
        &NewDeadLetter {
            transport: arrival.transport,
            message_id: Some(&id),
            topic: arrival.topic,
            body: &entry.entry,
            error: &error,
        },
    )
    .await?;
    c.execute_unnamed(
        "UPDATE edge_dead_letters SET resolved_at = now(), resolution = $2 WHERE id = $1",
        &[&dl, &SKIPPED_BY_OPERATOR],
    )
    .await?;
    Ok(Some(dl))
}
