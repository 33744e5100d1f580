//! The replay worker's store side (cloud.md §8): drains a lineage's staged rows through the
//! same materializer as live batches, one bounded chunk per transaction.
//!
//! Each chunk transaction takes, in this order: the intent row (`FOR UPDATE SKIP LOCKED`, so
//! concurrent workers spread over intents), then the lineage row (the lock every ingest
//! transaction of the lineage takes first — so replay and live batches of one lineage
//! interleave chunk by batch, never deadlock on mirror rows, and no row can be staged while a
//! chunk reads and deletes). Inside it: read the next rows after the cursor, upsert them
//! version-guarded, delete the drained rows (and uncount them), mark misfits
//! `materialization_failed`, advance cursor and `rows_replayed`, commit. A crash anywhere loses
//! at most the uncommitted chunk, which the next worker reads again from the same cursor.
//! The draining itself (and what is drainable) is [`crate::drain`].

use std::collections::HashMap;

use deadpool_postgres::Pool;
use edge_cloud_core::replay::{after_chunk, after_failure, IntentStatus, Step};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::backpressure::{check_after_intake, note_clean_batch};
use crate::drain::{drain_chunk, drainable_behind, StagedKey};
use crate::lineage::lock_lineage;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;
use edge_cloud_core::backpressure::streak_ends;

/// Start of the keyset: smaller than every staged key (telemetry uses the nil epoch, seq ≥ 0).
fn start_key() -> StagedKey {
    (Uuid::nil(), i64::MIN, String::new())
}

/// Open intents of active lineages, oldest first.
pub async fn open_intents<C: GenericClient + Sync>(
    c: &C,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = c
        .query_unnamed(
            "SELECT i.id FROM edge_replay_intents i \
             JOIN edge_table_lineages l ON l.id = i.lineage_id \
             WHERE i.status IN ('pending', 'running') AND l.status = 'active' \
             ORDER BY i.created_at LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What one [`replay_chunk`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Another worker holds the intent, it is closed, or its lineage is paused: nothing done.
    Skipped,
    /// A chunk committed.
    Advanced {
        lineage_id: Uuid,
        /// The lineage's kind (`rows` / `telemetry`).
        kind: String,
        drained: i64,
        failed: i64,
        status: IntentStatus,
    },
}

/// One chunk of one intent, in its own transaction (see module docs). Replayed misfits count
/// toward the circuit breaker like live ones: the breaker check runs before the commit (a trip
/// pauses the lineage, which stops the next chunk).
pub async fn replay_chunk(
    pool: &Pool,
    intent_id: Uuid,
    limit: i64,
    now: OffsetDateTime,
) -> Result<ChunkOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Unnamed statements, not cached prepared ones: a cached named statement stays on the
    // server connection, which a transaction-mode pooler hands to other clients (and RDS Proxy
    // pins). Parse + Bind + Execute go out in one round trip instead.
    let Some(intent) = tx
        .query_opt_unnamed(
            "SELECT lineage_id, cursor_epoch, cursor_seq, cursor_pk_key, status \
             FROM edge_replay_intents WHERE id = $1 AND status IN ('pending', 'running') \
             FOR UPDATE SKIP LOCKED",
            &[&intent_id],
        )
        .await?
    else {
        return Ok(ChunkOutcome::Skipped);
    };
    let lineage_id: Uuid = intent.get(0);
    let lineage = lock_lineage(&*tx, lineage_id).await?;
    if !lineage.is_active() {
        return Ok(ChunkOutcome::Skipped);
    }
    let cursor: StagedKey = match (
        intent.get::<_, Option<Uuid>>(1),
        intent.get::<_, Option<i64>>(2),
    ) {
        (Some(e), Some(s)) => (e, s, intent.get::<_, Option<String>>(3).unwrap_or_default()),
        _ => start_key(),
    };
    let mut cache = HashMap::new();
    let chunk = drain_chunk(
        &*tx,
        lineage_id,
        lineage.device_id,
        &cursor,
        limit,
        &mut cache,
    )
    .await?;
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let behind = if chunk.fetched < limit_usize {
        let upto = chunk.last.clone().unwrap_or_else(|| cursor.clone());
        drainable_behind(&*tx, lineage_id, &upto).await?
    } else {
        false
    };
    let (status, next): (IntentStatus, Option<StagedKey>) =
        match after_chunk(chunk.fetched, limit_usize, behind) {
            Step::Continue => (IntentStatus::Running, chunk.last.clone()),
            Step::RestartPass => (IntentStatus::Running, None),
            Step::Done => (IntentStatus::Done, chunk.last.clone().or(Some(cursor))),
        };
    // A chunk that drained rows ends the breaker's streak, as a live batch does.
    if streak_ends(chunk.drained) {
        note_clean_batch(&*tx, lineage_id).await?;
    }
    if chunk.failed > 0 {
        check_after_intake(&*tx, lineage_id, now, Uuid::now_v7()).await?;
    }
    tx.execute_unnamed(
        "UPDATE edge_replay_intents SET status = $2, cursor_epoch = $3, cursor_seq = $4, \
             cursor_pk_key = $5, rows_replayed = rows_replayed + $6, updated_at = now() \
         WHERE id = $1",
        &[
            &intent_id,
            &status.as_str(),
            &next.as_ref().map(|k| k.0),
            &next.as_ref().map(|k| k.1),
            &next.as_ref().map(|k| k.2.as_str()),
            &chunk.drained,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(ChunkOutcome::Advanced {
        lineage_id,
        kind: lineage.kind,
        drained: chunk.drained,
        failed: chunk.failed,
        status,
    })
}

/// Records a failed chunk (its transaction rolled back) on the intent; repeated permanent
/// failures park it as `failed` with the error for the operator.
pub async fn record_failure(
    pool: &Pool,
    intent_id: Uuid,
    error: &StoreError,
) -> Result<IntentStatus, StoreError> {
    let c = pool.get().await?;
    let row = c
        .query_opt_unnamed(
            "UPDATE edge_replay_intents SET failure_count = failure_count + 1, last_error = $2, \
                 updated_at = now() WHERE id = $1 RETURNING failure_count",
            &[&intent_id, &error.to_string()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(IntentStatus::Done);
    };
    let status = after_failure(row.get(0), !error.is_transient());
    if status == IntentStatus::Failed {
        c.execute_unnamed(
            "UPDATE edge_replay_intents SET status = 'failed' WHERE id = $1",
            &[&intent_id],
        )
        .await?;
    }
    Ok(status)
}
