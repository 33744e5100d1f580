//! Re-snapshot runs and the ghost-row sweep (edge-policies §5), and stale journal epochs
//! (reliability.md §5).
//!
//! A device with `snapshot_markers` granted sends each snapshot as chunk batches
//! (`snapshot_chunk` 0, 1, …, every row at a version ≥ (epoch, `snapshot_start_seq`)) and then
//! an end marker. On `complete` with chunks 0..N−1 all recorded, none failed and none still
//! staged, every mirror row of this device (and lineage's mirror tables) whose version is below
//! (epoch, `snapshot_start_seq`) is one the device no longer has: it is tombstoned at that
//! version with the mirror's own guard (`(_edge_epoch, _edge_commit_seq) <` the new version), so
//! a live value written by a change after the snapshot started is never touched, and rows of
//! older epochs (a restored database) go too. A missing chunk, a failed one or `aborted` → no
//! sweep.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// What became of a chunk batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    Materialized,
    Staged,
    Failed,
}

impl ChunkStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChunkStatus::Materialized => "materialized",
            ChunkStatus::Staged => "staged",
            ChunkStatus::Failed => "failed",
        }
    }
}

/// The identity of a run, as every batch of it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunKey {
    pub snapshot_id: Uuid,
    pub lineage_id: Uuid,
    pub device_id: Uuid,
    pub journal_epoch: Uuid,
    pub snapshot_start_seq: i64,
}

/// The state a run ended in after its end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Ghost rows tombstoned.
    Swept { ghost_rows_deleted: u64 },
    /// Complete, but a chunk is still staged: swept once replayed ([`sweep_ready`]).
    AwaitingReplay,
    /// The device aborted it.
    Aborted,
    /// A chunk is missing or failed: no sweep.
    Incomplete(String),
}

async fn ensure_run<C: GenericClient + Sync>(c: &C, k: &RunKey) -> Result<(), StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_snapshot_runs (snapshot_id, lineage_id, device_id, journal_epoch, \
             snapshot_start_seq) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (snapshot_id) DO NOTHING",
        &[
            &k.snapshot_id,
            &k.lineage_id,
            &k.device_id,
            &k.journal_epoch,
            &k.snapshot_start_seq,
        ],
    )
    .await?;
    Ok(())
}

/// Records a batch of chunk `chunk` (seqs `first..=last`) of a run. A chunk larger than one
/// batch arrives in several: the chunk covers all their seqs and takes the worst outcome of
/// them (failed > staged > materialized), so one failed row anywhere in it stops the sweep,
/// which would otherwise tombstone that row's older mirror version.
pub async fn record_chunk<C: GenericClient + Sync>(
    c: &C,
    k: &RunKey,
    chunk: i64,
    batch_id: Uuid,
    first_seq: i64,
    last_seq: i64,
    status: ChunkStatus,
) -> Result<(), StoreError> {
    ensure_run(c, k).await?;
    c.execute_unnamed(
        "INSERT INTO edge_snapshot_chunks (snapshot_id, chunk, batch_id, first_seq, last_seq, \
             status) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (snapshot_id, chunk) DO UPDATE SET \
             first_seq = least(edge_snapshot_chunks.first_seq, EXCLUDED.first_seq), \
             last_seq = greatest(edge_snapshot_chunks.last_seq, EXCLUDED.last_seq), \
             status = CASE \
                 WHEN 'failed' IN (edge_snapshot_chunks.status, EXCLUDED.status) THEN 'failed' \
                 WHEN 'staged' IN (edge_snapshot_chunks.status, EXCLUDED.status) THEN 'staged' \
                 ELSE 'materialized' END",
        &[
            &k.snapshot_id,
            &chunk,
            &batch_id,
            &first_seq,
            &last_seq,
            &status.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// Handles the end marker: records counts and the end, then sweeps when the run is whole.
pub async fn finish<C: GenericClient + Sync>(
    c: &C,
    k: &RunKey,
    chunk_count: i64,
    row_count: i64,
    complete: bool,
) -> Result<RunEnd, StoreError> {
    ensure_run(c, k).await?;
    c.execute_unnamed(
        "UPDATE edge_snapshot_runs SET chunk_count = $2, row_count = $3, updated_at = now() \
         WHERE snapshot_id = $1",
        &[&k.snapshot_id, &chunk_count, &row_count],
    )
    .await?;
    if !complete {
        set_state(c, k.snapshot_id, "aborted", Some("aborted by the device")).await?;
        return Ok(RunEnd::Aborted);
    }
    evaluate(c, k, chunk_count).await
}

async fn set_state<C: GenericClient + Sync>(
    c: &C,
    id: Uuid,
    state: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_snapshot_runs SET state = $2, detail = $3, updated_at = now() \
         WHERE snapshot_id = $1",
        &[&id, &state, &detail],
    )
    .await?;
    Ok(())
}

/// Decides and, when the run is whole, sweeps.
async fn evaluate<C: GenericClient + Sync>(
    c: &C,
    k: &RunKey,
    chunk_count: i64,
) -> Result<RunEnd, StoreError> {
    let r = c
        .query_one_unnamed(
            "SELECT count(*) FILTER (WHERE chunk >= 0 AND chunk < $2), \
                    count(*) FILTER (WHERE status = 'failed'), \
                    count(*) FILTER (WHERE status = 'staged'), \
                    coalesce(min(first_seq), 0), coalesce(max(last_seq), 0) \
             FROM edge_snapshot_chunks WHERE snapshot_id = $1",
            &[&k.snapshot_id, &chunk_count],
        )
        .await?;
    let (present, failed, staged): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    let (lo, hi): (i64, i64) = (r.get(3), r.get(4));
    if present != chunk_count {
        let why = format!("{present} of {chunk_count} chunks arrived: no sweep");
        set_state(c, k.snapshot_id, "incomplete", Some(&why)).await?;
        return Ok(RunEnd::Incomplete(why));
    }
    if failed > 0 {
        let why = format!("{failed} chunk(s) had rows that failed to materialize: no sweep");
        set_state(c, k.snapshot_id, "incomplete", Some(&why)).await?;
        return Ok(RunEnd::Incomplete(why));
    }
    if staged > 0 {
        // Replayed once no staged row of the chunks' range is left for this device.
        let left: i64 = c
            .query_one_unnamed(
                "SELECT count(*) FROM edge_staged_rows WHERE lineage_id = $1 AND device_id = $2 \
                 AND journal_epoch = $3 AND source_commit_seq BETWEEN $4 AND $5",
                &[&k.lineage_id, &k.device_id, &k.journal_epoch, &lo, &hi],
            )
            .await?
            .get(0);
        if left > 0 {
            set_state(c, k.snapshot_id, "awaiting_replay", None).await?;
            return Ok(RunEnd::AwaitingReplay);
        }
    }
    let n = sweep(c, k).await?;
    c.execute_unnamed(
        "UPDATE edge_snapshot_runs SET state = 'swept', ghost_rows_deleted = $2, detail = NULL, \
             updated_at = now() WHERE snapshot_id = $1",
        &[&k.snapshot_id, &i64::try_from(n).unwrap_or(i64::MAX)],
    )
    .await?;
    Ok(RunEnd::Swept {
        ghost_rows_deleted: n,
    })
}

/// Tombstones this device's rows below the run's version in every mirror table of the lineage.
async fn sweep<C: GenericClient + Sync>(c: &C, k: &RunKey) -> Result<u64, StoreError> {
    let tables: Vec<String> = c
        .query_unnamed(
            "SELECT DISTINCT mirror_table_name FROM edge_column_bindings \
             WHERE lineage_id = $1 AND mirror_table_name IS NOT NULL \
             UNION SELECT mirror_table_name FROM edge_table_lineages \
             WHERE id = $1 AND mirror_table_name IS NOT NULL",
            &[&k.lineage_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut n = 0;
    for table in tables {
        let exists: bool = c
            .query_one_unnamed("SELECT to_regclass(quote_ident($1)) IS NOT NULL", &[&table])
            .await?
            .get(0);
        if !exists {
            continue;
        }
        let sql = format!(
            "UPDATE \"{}\" AS m SET \"_edge_deleted\" = true, \"_edge_epoch\" = $2, \
                 \"_edge_commit_seq\" = $3, \"updated_at\" = now() \
             WHERE m.\"device_id\" = $1 AND NOT m.\"_edge_deleted\" \
                 AND (m.\"_edge_epoch\", m.\"_edge_commit_seq\") < ($2::uuid, $3::bigint)",
            table.replace('"', "\"\"")
        );
        n += c
            .execute_unnamed(
                &sql,
                &[&k.device_id, &k.journal_epoch, &k.snapshot_start_seq],
            )
            .await?;
    }
    Ok(n)
}

/// Re-evaluates the lineage's runs waiting for a replay (call after staged rows drained).
pub async fn sweep_ready<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
) -> Result<u64, StoreError> {
    let rows = c
        .query_unnamed(
            "SELECT snapshot_id, device_id, journal_epoch, snapshot_start_seq, chunk_count \
             FROM edge_snapshot_runs WHERE lineage_id = $1 AND state = 'awaiting_replay'",
            &[&lineage_id],
        )
        .await?;
    let mut swept = 0;
    for r in rows {
        let k = RunKey {
            snapshot_id: r.get(0),
            lineage_id,
            device_id: r.get(1),
            journal_epoch: r.get(2),
            snapshot_start_seq: r.get(3),
        };
        let chunks: Option<i64> = r.get(4);
        if let RunEnd::Swept { ghost_rows_deleted } = evaluate(c, &k, chunks.unwrap_or(0)).await? {
            swept += ghost_rows_deleted;
        }
    }
    Ok(swept)
}

/// The newest journal epoch recorded for the lineage, when it is newer than `epoch`.
pub async fn newer_epoch<C: GenericClient + Sync>(
    c: &C,
    lineage_id: Uuid,
    epoch: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    Ok(c.query_opt_unnamed(
        "SELECT journal_epoch FROM edge_lineage_watermarks \
             WHERE lineage_id = $1 AND journal_epoch > $2 ORDER BY journal_epoch DESC LIMIT 1",
        &[&lineage_id, &epoch],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Records a batch of a stale epoch; false when it was recorded before (redelivery).
pub async fn record_stale_epoch<C: GenericClient + Sync>(
    c: &C,
    batch_id: Uuid,
    lineage_id: Uuid,
    epoch: Uuid,
    newest: Uuid,
) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_stale_epoch_batches (batch_id, lineage_id, journal_epoch, \
                 newest_epoch) VALUES ($1, $2, $3, $4) ON CONFLICT (batch_id) DO NOTHING",
            &[&batch_id, &lineage_id, &epoch, &newest],
        )
        .await?;
    Ok(n == 1)
}
