//! The scheduled sweep (cloud.md §7): resume lineages whose backlog fell below the threshold,
//! then (re-)publish due controls — the resumes just issued go out in the same run — then
//! forward new governance events (cloud.md §11). Runs as the `sweep` Lambda on an EventBridge
//! schedule and as a loop in the local runner.

use std::time::Duration;

use edge_cloud_store::sweep::resume_sweep;
use time::OffsetDateTime;

use crate::control_publisher::{publish_due, ControlPublisher};
use crate::events::{forward_events, EventForwarder, LogForwarder};
use crate::replay_trigger::ReplayTrigger;
use crate::Deps;

/// Lineages considered and controls published per sweep.
const SWEEP_LIMIT: i64 = 500;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub resumed: usize,
    pub published: usize,
    /// Governance events handed to the forwarder.
    pub forwarded: usize,
    pub errors: usize,
}

/// Events forwarded per batch, and batches per sweep.
const FORWARD_BATCH: i64 = 500;
const FORWARD_BATCHES: usize = 20;

/// One sweep at `now`, forwarding events as log lines ([`LogForwarder`]); resumed lineages'
/// replays are left to a polling loop (the local runner's).
pub async fn sweep_once<P: ControlPublisher>(
    deps: &Deps,
    publisher: &P,
    now: OffsetDateTime,
) -> SweepReport {
    sweep_once_with(deps, publisher, &LogForwarder, &ReplayTrigger::Polling, now).await
}

/// One sweep at `now` with the given event forwarder (EventBridge in AWS) and replay trigger
/// (the replay queue in AWS, nudged when a resume opened replay work). Errors are counted and
/// logged, never fatal: the next sweep retries.
pub async fn sweep_once_with<P: ControlPublisher, F: EventForwarder>(
    deps: &Deps,
    publisher: &P,
    forwarder: &F,
    replay: &ReplayTrigger,
    now: OffsetDateTime,
) -> SweepReport {
    let started = std::time::Instant::now();
    let mut report = SweepReport::default();
    match resume_sweep(&deps.pool, now, SWEEP_LIMIT).await {
        Ok(results) => {
            for (lineage_id, r) in results {
                match r {
                    Ok(resumed) => {
                        report.resumed += 1;
                        tracing::info!(%lineage_id, ?resumed, "lineage resumed by the sweep");
                    }
                    Err(e) => {
                        report.errors += 1;
                        tracing::warn!(%lineage_id, error = %e, "sweep of lineage failed");
                    }
                }
            }
        }
        Err(e) => {
            report.errors += 1;
            tracing::warn!(error = %e, "resume sweep");
        }
    }
    if report.resumed > 0 {
        replay.nudge("lineages resumed by the sweep").await;
    }
    match publish_due(&deps.pool, publisher, SWEEP_LIMIT, &deps.metrics).await {
        Ok(n) => report.published = n,
        Err(e) => {
            report.errors += 1;
            tracing::warn!(error = %e, "loading pending controls");
        }
    }
    match forward_events(deps, forwarder, FORWARD_BATCH, FORWARD_BATCHES).await {
        Ok(n) => report.forwarded = n,
        Err(e) => {
            report.errors += 1;
            tracing::warn!(error = %e, forwarder = forwarder.name(), "forwarding events");
        }
    }
    deps.metrics
        .observe(edge_cloud_core::metrics::Handler::Sweep, started);
    report
}

/// The local runner's sweep loop: every `period`, forever (abort the task to stop it).
pub async fn sweep_loop<P: ControlPublisher>(deps: Deps, publisher: P, period: Duration) {
    loop {
        sweep_once(&deps, &publisher, OffsetDateTime::now_utc()).await;
        tokio::time::sleep(period).await;
    }
}
