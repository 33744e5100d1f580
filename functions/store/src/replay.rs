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
use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::Pool;
use edge_cloud_core::replay::{after_chunk, after_failure, IntentStatus, Step};
use edge_protocol::batch::RowChange;
use futures_util::future::try_join_all;
use futures_util::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use time::OffsetDateTime;

use crate::approve::{mark_failed, plan_group, staged_change, StagedKey, StagedRow};
use crate::backpressure::check_after_intake;
use crate::lineage::{lineage_bindings, lock_lineage, Bindings};
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
/// transaction (which must hold the lineage lock). `cache` holds the lineage's bindings by hash
/// (filled on first use; keep it for the chunks of one transaction).
pub async fn drain_chunk<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    after: &StagedKey,
    limit: i64,
    cache: &mut HashMap<String, Option<Bindings>>,
) -> Result<Chunk, StoreError> {
    if cache.is_empty() {
        cache.extend(
            lineage_bindings(c, lineage_id)
                .await?
                .into_iter()
                .map(|(h, b)| (h, Some(b))),
        );
    }
    // Drainable = a hash with bindings; asked as a list rather than a per-row `EXISTS` probe.
    let bound: Vec<&str> = cache
        .iter()
        .filter(|(_, b)| b.is_some())
        .map(|(h, _)| h.as_str())
        .collect();
    let bindings: &HashMap<String, Option<Bindings>> = cache;
    // `pk`/`row` as text: parsed straight into protocol values (approve::parse_staged).
    let stream = c
        .query_typed_raw(
            "SELECT journal_epoch, source_commit_seq, pk_key, op, pk::text, \"row\"::text, \
                 schema_hash, event_ts, batch_id, bytes \
             FROM edge_staged_rows WHERE lineage_id = $1 \
                 AND (journal_epoch, source_commit_seq, pk_key) > ($2, $3, $4) \
                 AND staging_reason <> 'materialization_failed' AND schema_hash = ANY($5) \
             ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $6",
            [
                (&lineage_id as &(dyn ToSql + Sync), Type::UUID),
                (&after.0, Type::UUID),
                (&after.1, Type::INT8),
                (&after.2, Type::TEXT),
                (&bound, Type::TEXT_ARRAY),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    futures_util::pin_mut!(stream);
    // The chunk is worked in slices as its rows stream in: each slice is decoded and planned
    // (decode, fitness, newest per key) and its writes are sent at once, without waiting for
    // an answer. The server runs them as soon as it has sent the last row, so decoding and
    // planning on this side overlap the server's writes instead of alternating with them.
    // Writes of one key in two slices are ordered by the version guard, as live batches are.
    let mut chunk = Chunk::default();
    let mut sent: Vec<Pending<'_>> = Vec::new();
    let mut misfits: Vec<(StagedKey, String)> = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let mut runs: Vec<(StagedKey, StagedKey)> = Vec::new();
    let mut drained_rows = 0usize;
    let mut slice: Vec<tokio_postgres::Row> = Vec::with_capacity(PIPELINE_SLICE);
    let mut decoded: Vec<Option<Result<RowChange, String>>> = Vec::with_capacity(PIPELINE_SLICE);
    loop {
        let next = stream.try_next().await?;
        let end = next.is_none();
        if let Some(r) = next {
            let mirrored =
                matches!(bindings.get(r.get::<_, &str>(6)), Some(Some(b)) if b.mirror.is_some());
            decoded.push(mirrored.then(|| staged_change(&r)));
            slice.push(r);
        }
        if slice.is_empty() || (slice.len() < PIPELINE_SLICE && !end) {
            if end {
                break;
            }
            continue;
        }
        chunk.fetched += slice.len();
        for r in &slice {
            let k: StagedKey = (r.get(0), r.get(1), r.get(2));
            match runs.last_mut() {
                Some((first, last)) if first.0 == k.0 => *last = k,
                _ => runs.push((k.clone(), k)),
            }
        }
        // Group by hash, keeping key order inside each group.
        let mut groups: Vec<(&str, Vec<StagedRow<'_>>)> = Vec::new();
        for (r, d) in slice.iter().zip(decoded.drain(..)) {
            let hash: &str = r.get(6);
            match groups.iter_mut().find(|(h, _)| *h == hash) {
                Some((_, g)) => g.push((r, d)),
                None => groups.push((hash, vec![(r, d)])),
            }
        }
        for (hash, group) in groups {
            let Some(Some(b)) = bindings.get(hash) else {
                continue;
            };
            let planned = plan_group(b, group);
            drained_rows += planned.drained.len();
            misfits.extend(planned.failed);
            if !written.iter().any(|h| h == hash) {
                written.push(hash.to_owned());
            }
            for w in planned.writes {
                send(
                    &mut sent,
                    Box::pin(async move { w.apply(c, device_id).await.map(|_| 0) }),
                )?;
            }
        }
        slice.clear();
        if end {
            break;
        }
    }
    chunk.last = runs.last().map(|(_, last)| last.clone());
    if chunk.fetched == 0 {
        return Ok(chunk);
    }
    chunk.failed = i64::try_from(misfits.len()).unwrap_or(i64::MAX);
    let misfit_epochs: Vec<Uuid> = misfits.iter().map(|(k, _)| k.0).collect();
    let misfit_seqs: Vec<i64> = misfits.iter().map(|(k, _)| k.1).collect();
    let misfit_keys: Vec<&str> = misfits.iter().map(|(k, _)| k.2.as_str()).collect();
    let mut tail: Vec<Pending<'_>> = Vec::new();
    tail.push(Box::pin(async {
        mark_failed(c, lineage_id, &misfits).await.map(|()| 0)
    }));
    if drained_rows > 0 {
        for (first, last) in &runs {
            tail.push(Box::pin(delete_range(
                c,
                lineage_id,
                first,
                last,
                &written,
                (&misfit_epochs, &misfit_seqs, &misfit_keys),
            )));
        }
    }
    // The deletes' results are the rows drained (the other statements answer 0).
    try_join_all(sent).await?;
    chunk.drained = try_join_all(tail).await?.iter().sum();
    Ok(chunk)
}

/// Rows per slice of a chunk's pipeline (see [`drain_chunk`]).
const PIPELINE_SLICE: usize = 250;

/// Polls a statement once — which hands it to the connection — and keeps it for its answer.
fn send<'a>(sent: &mut Vec<Pending<'a>>, mut statement: Pending<'a>) -> Result<(), StoreError> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match statement.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result.map(|_| ()),
        std::task::Poll::Pending => {
            sent.push(statement);
            Ok(())
        }
    }
}

/// A statement sent as part of a chunk's pipeline (result: rows deleted, 0 for the others).
type Pending<'a> = Pin<Box<dyn Future<Output = Result<i64, StoreError>> + Send + 'a>>;

/// Deletes the drained rows of one epoch run as the key range `[first, last]` instead of a
/// list of keys: one index range scan rather than a probe per row. Exact because the lineage
/// lock keeps anything from being staged meanwhile, every drainable row of the range was read
/// (the chunk is the first rows after the cursor), and this chunk's misfits were already
/// marked `materialization_failed`, which the filter excludes.
///
/// The chunk's misfits are excluded by key as well as by `staging_reason`: the pipeline may
/// deliver this statement before the one marking them, and must never delete them either way.
///
/// The epoch is an equality and the range a two-column row comparison on purpose: PostgreSQL's
/// B-tree only stops a scan on the *first* column of a row comparison, so the earlier
/// `(lineage_id, epoch, seq, pk_key) <= (…)` ran every chunk to the end of the lineage's rows —
/// O(backlog) per chunk, quadratic over a drain (measured: 1,858 index pages per 1,000-row chunk
/// of a 200k backlog, 60 ms, against 54 pages and 1 ms bounded). The redundant `BETWEEN` on the
/// seq is for the planner: it cannot estimate row comparisons, guessed a third of the lineage's
/// rows and chose a sequential scan (auto_explain: 20–50 ms per chunk); a plain range it reads
/// from the histogram.
async fn delete_range<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    first: &StagedKey,
    last: &StagedKey,
    hashes: &[String],
    misfits: (&[Uuid], &[i64], &[&str]),
) -> Result<i64, StoreError> {
    let row = c
        .query_typed(
            "WITH del AS ( \
                 DELETE FROM edge_staged_rows s \
                 WHERE lineage_id = $1 AND journal_epoch = $2 \
                     AND (source_commit_seq, pk_key) >= ($3, $4) \
                     AND (source_commit_seq, pk_key) <= ($5, $6) \
                     AND source_commit_seq BETWEEN $3 AND $5 \
                     AND staging_reason <> 'materialization_failed' \
                     AND schema_hash = ANY($7) \
                     AND (journal_epoch, source_commit_seq, pk_key) NOT IN ( \
                         SELECT * FROM unnest($8::uuid[], $9::bigint[], $10::text[])) \
                 RETURNING s.bytes), \
             counted AS (SELECT count(*) AS n, COALESCE(sum(bytes), 0)::bigint AS b FROM del), \
             upd AS ( \
                 UPDATE edge_table_lineages l SET \
                     staged_row_count = greatest(l.staged_row_count - counted.n, 0), \
                     staged_bytes = greatest(l.staged_bytes - counted.b, 0), updated_at = now() \
                 FROM counted WHERE l.id = $1 AND counted.n > 0) \
             SELECT n FROM counted",
            &[
                (&lineage_id, Type::UUID),
                (&first.0, Type::UUID),
                (&first.1, Type::INT8),
                (&first.2, Type::TEXT),
                (&last.1, Type::INT8),
                (&last.2, Type::TEXT),
                (&hashes, Type::TEXT_ARRAY),
                (&misfits.0, Type::UUID_ARRAY),
                (&misfits.1, Type::INT8_ARRAY),
                (&misfits.2, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(row.first().map_or(0, |r| r.get(0)))
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
    // The per-chunk statements are prepared once per pooled connection: a chunk is a handful
    // of round trips, and re-parsing each of them every chunk was a measurable share of it.
    let lock_intent = tx
        .prepare_cached(
            "SELECT lineage_id, cursor_epoch, cursor_seq, cursor_pk_key, status \
             FROM edge_replay_intents WHERE id = $1 AND status IN ('pending', 'running') \
             FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let Some(intent) = tx.query_opt(&lock_intent, &[&intent_id]).await? else {
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
    let advance = tx
        .prepare_cached(
            "UPDATE edge_replay_intents SET status = $2, cursor_epoch = $3, cursor_seq = $4, \
                 cursor_pk_key = $5, rows_replayed = rows_replayed + $6, updated_at = now() \
             WHERE id = $1",
        )
        .await?;
    tx.execute(
        &advance,
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
