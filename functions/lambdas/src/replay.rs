//! The replay worker (cloud.md §8): drains open replay intents chunk by chunk. Each chunk is its
//! own transaction in the store ([`edge_cloud_store::replay::replay_chunk`]), so stopping the
//! worker anywhere — a Lambda timeout, an aborted task, a crash — loses nothing: the next run
//! continues from the intent's cursor.

use std::time::{Duration, Instant};

use edge_cloud_core::metrics::{FailureClass, Handler};
use edge_cloud_core::replay::IntentStatus;
use edge_cloud_store::replay::{open_intents, record_failure, replay_chunk, ChunkOutcome};
use time::OffsetDateTime;

use crate::Deps;

/// Staged rows per chunk transaction: large enough for set-based throughput, small enough
/// that one chunk holds the lineage lock (and delays live batches) for only milliseconds —
/// ~17 ms at 2,000 rows on a 2-core machine, where 1,000-row chunks drain ~15 % slower
/// (docs/benchmarks.md, replay drain).
pub const DEFAULT_CHUNK: i64 = 2_000;

/// How far one [`drain`] call may go.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Stop starting chunks after this instant (a Lambda's deadline minus a margin).
    pub until: Option<Instant>,
    /// Stop after this many chunks (tests use it to stop a worker between chunks).
    pub max_chunks: Option<u64>,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        until: None,
        max_chunks: None,
    };

    fn exhausted(&self, chunks: u64) -> bool {
        self.until.is_some_and(|t| Instant::now() >= t)
            || self.max_chunks.is_some_and(|m| chunks >= m)
    }
}

/// What a [`drain`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub chunks: u64,
    pub drained: i64,
    pub failed: i64,
    pub intents_done: u64,
    pub errors: u64,
    /// Stopped by the budget with work left.
    pub budget_exhausted: bool,
}

/// Drains open intents of active lineages until none is left or the budget is spent.
pub async fn drain(deps: &Deps, chunk: i64, budget: Budget) -> DrainReport {
    let mut report = DrainReport::default();
    loop {
        let intents = {
            let c = match deps.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "replay: no database connection");
                    report.errors += 1;
                    return report;
                }
            };
            match open_intents(&**c, 16).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "replay: listing intents");
                    report.errors += 1;
                    return report;
                }
            }
        };
        if intents.is_empty() {
            return report;
        }
        let mut progressed = false;
        for intent in intents {
            loop {
                if budget.exhausted(report.chunks) {
                    report.budget_exhausted = true;
                    return report;
                }
                let started = Instant::now();
                let outcome =
                    replay_chunk(&deps.pool, intent, chunk, OffsetDateTime::now_utc()).await;
                if !matches!(outcome, Ok(ChunkOutcome::Skipped)) {
                    deps.metrics.observe(Handler::Replay, started);
                }
                match outcome {
                    Ok(ChunkOutcome::Skipped) => break,
                    Ok(ChunkOutcome::Advanced {
                        lineage_id,
                        kind,
                        drained,
                        failed,
                        status,
                    }) => {
                        deps.metrics.record_replay_chunk(&kind, drained, failed);
                        progressed = true;
                        report.chunks += 1;
                        report.drained += drained;
                        report.failed += failed;
                        if status == IntentStatus::Done {
                            report.intents_done += 1;
                            tracing::info!(%intent, %lineage_id, "replay intent done");
                            break;
                        }
                    }
                    Err(e) => {
                        report.errors += 1;
                        if e.is_transient() {
                            deps.metrics.failure(FailureClass::Transient);
                        }
                        let status = record_failure(&deps.pool, intent, &e).await;
                        tracing::warn!(%intent, error = %e, ?status, "replay chunk failed");
                        break;
                    }
                }
            }
        }
        if !progressed {
            // Every open intent was skipped (held elsewhere) or failed: let the caller wait.
            return report;
        }
    }
}

/// The local runner's replay loop: drain, then wait a second whenever there was nothing to do
/// (or only errors), forever. Abort the task to stop it; a chunk in flight rolls back.
pub async fn replay_loop(deps: Deps, chunk: i64) {
    loop {
        let r = drain(&deps, chunk, Budget::UNLIMITED).await;
        if r.chunks == 0 || r.errors > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
