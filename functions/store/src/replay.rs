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
//!
//! What is drainable: rows of a hash that has bindings, not `materialization_failed` (those wait
//! for reset-materialization), and only while the lineage is active — a paused lineage holds
//! its rows, and whoever re-activates it makes sure an intent is open ([`ensure_intent`]).

use std::collections::HashMap;

use deadpool_postgres::Pool;
use edge_cloud_core::replay::{after_chunk, after_failure, IntentStatus, Step};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use time::OffsetDateTime;

use crate::approve::{materialize_group, StagedKey};
use crate::backpressure::check_after_intake;
use crate::lineage::{bindings, lock_lineage, Bindings};
use crate::StoreError;

/// Start of the keyset: smaller than every staged key (telemetry uses the nil epoch, seq ≥ 0).
fn start_key() -> StagedKey {
    (Uuid::nil(), i64::MIN, String::new())
}

/// What one chunk read and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Rows read for this chunk.
    pub fetched: usize,
    /// Rows written (or superseded by a newer version) and deleted from staging.
    pub drained: i64,
    /// Rows that stay staged as `materialization_failed`.
    pub failed: i64,
    /// Key of the last row read (the next cursor).
    pub last: Option<StagedKey>,
}

/// Reads and materializes the next `limit` drainable rows after `after`, in the caller's
/// transaction (which must hold the lineage lock).
pub async fn drain_chunk<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    after: &StagedKey,
    limit: i64,
    cache: &mut HashMap<String, Option<Bindings>>,
) -> Result<Chunk, StoreError> {
    let rows = c
        .query(
            "SELECT journal_epoch, source_commit_seq, pk_key, op, pk, \"row\", schema_hash, \
                 event_ts, batch_id, bytes \
             FROM edge_staged_rows s WHERE lineage_id = $1 \
                 AND (journal_epoch, source_commit_seq, pk_key) > ($2, $3, $4) \
                 AND staging_reason <> 'materialization_failed' \
                 AND EXISTS (SELECT 1 FROM edge_column_bindings b \
                             WHERE b.lineage_id = s.lineage_id AND b.schema_hash = s.schema_hash) \
             ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $5",
            &[&lineage_id, &after.0, &after.1, &after.2, &limit],
        )
        .await?;
    let mut chunk = Chunk {
        fetched: rows.len(),
        ..Chunk::default()
    };
    let Some(last) = rows.last() else {
        return Ok(chunk);
    };
    chunk.last = Some((last.get(0), last.get(1), last.get(2)));
    // Group by hash, keeping key order inside each group; across groups the version guard
    // orders the writes.
    let mut groups: Vec<(String, Vec<&tokio_postgres::Row>)> = Vec::new();
    for r in &rows {
        let hash: String = r.get(6);
        match groups.iter_mut().find(|(h, _)| *h == hash) {
            Some((_, g)) => g.push(r),
            None => groups.push((hash, vec![r])),
        }
    }
    let mut bound: Vec<String> = Vec::new();
    let mut drained_rows = 0usize;
    for (hash, group) in groups {
        if !cache.contains_key(&hash) {
            let b = bindings(c, lineage_id, &hash).await?;
            cache.insert(hash.clone(), b);
        }
        let Some(Some(b)) = cache.get(&hash) else {
            continue;
        };
        let (drained, failed) = materialize_group(c, lineage_id, device_id, b, &group).await?;
        drained_rows += drained.len();
        chunk.failed += failed;
        bound.push(hash);
    }
    if drained_rows > 0 {
        chunk.drained = delete_range(c, lineage_id, after, &chunk.last, &bound).await?;
    }
    Ok(chunk)
}

/// Deletes the chunk's drained rows as one key range `(after, last]` instead of a list of
/// keys: one index range scan rather than a probe per row, and the statement's cost no longer
/// grows with a planner misestimate of the key list. Exact because the lineage lock keeps
/// anything from being staged meanwhile, every drainable row of the range was read (the range
/// ends at the last row read), and this chunk's misfits were already marked
/// `materialization_failed`, which the filter excludes.
async fn delete_range<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    after: &StagedKey,
    last: &Option<StagedKey>,
    hashes: &[String],
) -> Result<i64, StoreError> {
    let Some(last) = last else { return Ok(0) };
    let row = c
        .query_one(
            "WITH del AS ( \
                 DELETE FROM edge_staged_rows s \
                 WHERE (lineage_id, journal_epoch, source_commit_seq, pk_key) > ($1, $2, $3, $4) \
                     AND (lineage_id, journal_epoch, source_commit_seq, pk_key) \
                         <= ($1, $5, $6, $7) \
                     AND staging_reason <> 'materialization_failed' \
                     AND schema_hash = ANY($8) \
                 RETURNING s.bytes), \
             counted AS (SELECT count(*) AS n, COALESCE(sum(bytes), 0)::bigint AS b FROM del), \
             upd AS ( \
                 UPDATE edge_table_lineages l SET \
                     staged_row_count = greatest(l.staged_row_count - counted.n, 0), \
                     staged_bytes = greatest(l.staged_bytes - counted.b, 0), updated_at = now() \
                 FROM counted WHERE l.id = $1) \
             SELECT n FROM counted",
            &[
                &lineage_id,
                &after.0,
                &after.1,
                &after.2,
                &last.0,
                &last.1,
                &last.2,
                &hashes,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// True when drainable rows exist at or before `upto`: rows staged behind the cursor.
async fn drainable_behind<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    upto: &StagedKey,
) -> Result<bool, StoreError> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM edge_staged_rows s WHERE lineage_id = $1 \
                 AND (journal_epoch, source_commit_seq, pk_key) <= ($2, $3, $4) \
                 AND staging_reason <> 'materialization_failed' \
                 AND EXISTS (SELECT 1 FROM edge_column_bindings b \
                             WHERE b.lineage_id = s.lineage_id AND b.schema_hash = s.schema_hash))",
        &[&lineage_id, &upto.0, &upto.1, &upto.2],
    )
    .await?
    .get(0))
}

/// Any drainable staged rows for the lineage?
pub async fn has_drainable<C: GenericClient>(c: &C, lineage_id: Uuid) -> Result<bool, StoreError> {
    let end = (Uuid::max(), i64::MAX, "\u{10FFFF}".to_owned());
    drainable_behind(c, lineage_id, &end).await
}

/// Opens a replay intent for the lineage unless one is open; true when it inserted one.
/// Called by whoever activates a lineage that holds staged rows (sweep resume, reset).
pub async fn ensure_intent<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    action_kind: &str,
    new_id: Uuid,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind) \
             SELECT $1, l.id, l.approved_schema_hash, 'pending', $3 FROM edge_table_lineages l \
             WHERE l.id = $2 AND NOT EXISTS (SELECT 1 FROM edge_replay_intents i \
                 WHERE i.lineage_id = l.id AND i.status IN ('pending', 'running'))",
            &[&new_id, &lineage_id, &action_kind],
        )
        .await?;
    Ok(n == 1)
}

/// Open intents of active lineages, oldest first.
pub async fn open_intents<C: GenericClient>(c: &C, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    let rows = c
        .query(
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
    let Some(intent) = tx
        .query_opt(
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
    if chunk.failed > 0 {
        check_after_intake(&*tx, lineage_id, now, Uuid::now_v7()).await?;
    }
    tx.execute(
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
        .query_opt(
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
        c.execute(
            "UPDATE edge_replay_intents SET status = 'failed' WHERE id = $1",
            &[&intent_id],
        )
        .await?;
    }
    Ok(status)
}
