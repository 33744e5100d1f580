//! Staged-row materialization (cloud.md §4, §8): draining a lineage's staged rows through the
//! same plan and version-guarded upsert as live batches, in the caller's transaction. The
//! replay worker ([`crate::replay`]) and reset-materialization ([`crate::backpressure`]) drain
//! chunk by chunk with [`drain_chunk`]; [`replay_staged`] drains a whole backlog at once.
//!
//! What is drainable: rows of a hash that has bindings, not `materialization_failed` (those wait
//! for reset-materialization), and only while the lineage is active — a paused lineage holds
//! its rows, and whoever re-activates it makes sure an intent is open ([`ensure_intent`]).
//!
//! # Layout
//! - [`plan`] — decoding and planning a group of staged rows (no I/O)

pub mod plan;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use edge_protocol::batch::RowChange;
use futures_util::future::try_join_all;
use futures_util::TryStreamExt;
use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::lineage::{bindings, lineage_bindings, Bindings};
use crate::mirror::{apply_guarded_upserts, insert_telemetry_values};
use crate::unnamed::UnnamedStatements;
use crate::StoreError;
use edge_cloud_core::mirror::Guard;

pub(crate) use self::plan::StagedKey;
use self::plan::{plan_group, staged_change, GroupWrite, StagedRow};

/// The start of both drains' read: staged rows of lineage `$1` after the keyset cursor
/// `($2, $3, $4)`, with `pk`/`row` as text at columns 4 and 5 (what [`plan`] decodes). A macro so
/// the statements stay literals.
macro_rules! staged_rows_after {
    () => {
        "SELECT journal_epoch, source_commit_seq, pk_key, op, pk::text, \"row\"::text, \
             schema_hash, event_ts, batch_id, bytes \
         FROM edge_staged_rows WHERE lineage_id = $1 \
             AND (journal_epoch, source_commit_seq, pk_key) > ($2, $3, $4) "
    };
}

/// The tail of both deletes of drained rows: count the deleted rows (`del`, returning their
/// `bytes`), take them off the lineage's counters and raise its `newest_materialized_source_at`
/// to parameter `$source` (the drained rows' newest [`plan::source_time`]: they are
/// materialized now, observability.md §4). Ends inside the `upd` CTE's WHERE, which the
/// statement closes.
macro_rules! uncount_deleted {
    ($source:literal) => {
        concat!(
            "counted AS (SELECT count(*) AS n, COALESCE(sum(bytes), 0)::bigint AS b FROM del), \
             upd AS ( \
                 UPDATE edge_table_lineages l SET \
                     staged_row_count = greatest(l.staged_row_count - counted.n, 0), \
                     staged_bytes = greatest(l.staged_bytes - counted.b, 0), \
                     newest_materialized_source_at = greatest(l.newest_materialized_source_at, ",
            $source,
            "::timestamptz), updated_at = now() \
                 FROM counted WHERE l.id = $1"
        )
    };
}

/// What a replay drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Staged rows written (or superseded) and deleted from staging.
    pub drained: i64,
    /// Rows that stay staged as `materialization_failed`.
    pub failed: i64,
}

/// Drains a lineage's staged rows whose schema hash has bindings, in `(epoch, seq)` order and
/// chunks of `chunk` rows, through the same plan and upsert as live batches. Drained rows are
/// deleted (and uncounted); misfits stay staged as `materialization_failed`; rows of unbound
/// hashes stay as they are.
pub async fn replay_staged<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    chunk: i64,
) -> Result<ReplayReport, StoreError> {
    let mut report = ReplayReport::default();
    let mut cursor: (Uuid, i64, String) = (Uuid::nil(), i64::MIN, String::new());
    let mut binding_cache: HashMap<String, Option<Bindings>> = HashMap::new();
    loop {
        let rows = c
            .query_unnamed(
                concat!(
                    staged_rows_after!(),
                    "ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $5"
                ),
                &[&lineage_id, &cursor.0, &cursor.1, &cursor.2, &chunk],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        cursor = (last.get(0), last.get(1), last.get(2));
        // Group by hash, keeping (epoch, seq) order inside each group.
        let mut groups: HashMap<String, Vec<&tokio_postgres::Row>> = HashMap::new();
        for r in &rows {
            groups.entry(r.get(6)).or_default().push(r);
        }
        for (hash, group) in groups {
            if !binding_cache.contains_key(&hash) {
                let b = bindings(c, lineage_id, &hash).await?;
                binding_cache.insert(hash.clone(), b);
            }
            let Some(Some(b)) = binding_cache.get(&hash) else {
                continue;
            };
            let (drained, failed) = drain_group(c, lineage_id, device_id, b, &group).await?;
            report.drained += drained;
            report.failed += failed;
        }
    }
    // A complete re-snapshot whose chunks were staged is swept once they are replayed.
    crate::snapshot_runs::sweep_ready(c, lineage_id).await?;
    Ok(report)
}

/// Writes a group of staged rows of one bound hash, marks its misfits `materialization_failed`
/// and deletes (and uncounts) the rows it drained (written or superseded); returns the rows
/// drained and failed.
async fn drain_group<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    b: &Bindings,
    group: &[&tokio_postgres::Row],
) -> Result<(i64, i64), StoreError> {
    let writes = plan_group(b, group.iter().map(|r| (*r, None)).collect());
    for w in &writes.writes {
        w.apply(c, device_id).await?;
    }
    mark_failed(c, lineage_id, &writes.failed).await?;
    let n_drained = delete_staged(c, lineage_id, &writes.drained, writes.newest_source).await?;
    Ok((
        n_drained,
        i64::try_from(writes.failed.len()).unwrap_or(i64::MAX),
    ))
}

impl GroupWrite<'_> {
    pub async fn apply<C: GenericClient + Sync>(
        &self,
        c: &C,
        device_id: Uuid,
    ) -> Result<u64, StoreError> {
        match self {
            GroupWrite::Upsert(table, plan) => {
                apply_guarded_upserts(c, table, device_id, plan, Guard::NewerOrSame).await
            }
            GroupWrite::Telemetry(batch_id, values) => {
                insert_telemetry_values(c, device_id, *batch_id, values).await
            }
        }
    }
}

async fn delete_staged<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    keys: &[StagedKey],
    newest_source: Option<OffsetDateTime>,
) -> Result<i64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let epochs: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let pks: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let row = c
        .query_one_unnamed(
            concat!(
                "WITH del AS ( \
                 DELETE FROM edge_staged_rows s USING unnest($2::uuid[], $3::bigint[], $4::text[]) \
                     AS u(e, q, k) \
                 WHERE s.lineage_id = $1 AND s.journal_epoch = u.e AND s.source_commit_seq = u.q \
                     AND s.pk_key = u.k \
                 RETURNING s.bytes), ",
                uncount_deleted!("$5"),
                ") SELECT n FROM counted"
            ),
            &[&lineage_id, &epochs, &seqs, &pks, &newest_source],
        )
        .await?;
    Ok(row.get(0))
}

async fn mark_failed<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    failed: &[(StagedKey, String)],
) -> Result<(), StoreError> {
    if failed.is_empty() {
        return Ok(());
    }
    let epochs: Vec<Uuid> = failed.iter().map(|k| k.0 .0).collect();
    let seqs: Vec<i64> = failed.iter().map(|k| k.0 .1).collect();
    let pks: Vec<&str> = failed.iter().map(|k| k.0 .2.as_str()).collect();
    let errors: Vec<&str> = failed.iter().map(|k| k.1.as_str()).collect();
    c.execute_unnamed(
        "WITH upd AS ( \
             UPDATE edge_staged_rows s SET staging_reason = 'materialization_failed', error = u.err \
             FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::text[]) AS u(e, q, k, err) \
             WHERE s.lineage_id = $1 AND s.journal_epoch = u.e AND s.source_commit_seq = u.q \
                 AND s.pk_key = u.k AND s.staging_reason <> 'materialization_failed' \
             RETURNING u.err) \
         UPDATE edge_table_lineages l SET \
             materialization_failure_count = l.materialization_failure_count \
                 + (SELECT count(*) FROM upd)::integer, \
             materialization_last_error = COALESCE((SELECT max(err) FROM upd), \
                 l.materialization_last_error), \
             updated_at = now() \
         WHERE l.id = $1",
        &[&lineage_id, &epochs, &seqs, &pks, &errors],
    )
    .await?;
    Ok(())
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
    // `pk`/`row` as text: parsed straight into protocol values (plan::parse_staged).
    let stream = c
        .query_typed_raw(
            concat!(
                staged_rows_after!(),
                "AND staging_reason <> 'materialization_failed' AND schema_hash = ANY($5) \
                 ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $6"
            ),
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
    let mut newest_source: Option<OffsetDateTime> = None;
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
            newest_source = newest_source.max(planned.newest_source);
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
                newest_source,
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
    newest_source: Option<OffsetDateTime>,
) -> Result<i64, StoreError> {
    let row = c
        .query_typed(
            concat!(
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
                 RETURNING s.bytes), ",
                uncount_deleted!("$11"),
                " AND counted.n > 0) SELECT n FROM counted"
            ),
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
                (&newest_source, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Ok(row.first().map_or(0, |r| r.get(0)))
}

/// True when drainable rows exist at or before `upto`: rows staged behind the cursor.
pub(crate) async fn drainable_behind<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    upto: &StagedKey,
) -> Result<bool, StoreError> {
    Ok(c.query_one_unnamed(
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
pub async fn has_drainable<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<bool, StoreError> {
    let end = (Uuid::max(), i64::MAX, "\u{10FFFF}".to_owned());
    drainable_behind(c, lineage_id, &end).await
}

/// Opens a replay intent for the lineage unless one is open; true when it inserted one.
/// Called by whoever activates a lineage that holds staged rows (sweep resume, reset).
pub async fn ensure_intent<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    action_kind: &str,
    new_id: Uuid,
) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind) \
             SELECT $1, l.id, l.approved_schema_hash, 'pending', $3 FROM edge_table_lineages l \
             WHERE l.id = $2 AND NOT EXISTS (SELECT 1 FROM edge_replay_intents i \
                 WHERE i.lineage_id = l.id AND i.status IN ('pending', 'running'))",
            &[&new_id, &lineage_id, &action_kind],
        )
        .await?;
    Ok(n == 1)
}
