//! What each Lambda does with one event, outside `main`: the binaries in `src/bin/` only build
//! their [`Deps`] once ([`crate::env`]) and loop over this, and the fixture tests
//! (tests/lambda_events.rs) feed the files in `events/` through exactly the same functions.
//!
//! Every entry point first lets the [`ThawGuard`] drop idle database connections that a long
//! freeze may have left dead (see [`crate::aws::db`]), and ends by writing the invocation's
//! counter increments and durations as EMF lines on stdout ([`crate::metrics`]).

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Request, Response};

use crate::api::Api;
use crate::aws::db::ThawGuard;
use crate::collector::write_gauge_emf;
use crate::control_publisher::ControlPublisher;
use crate::env::MetricsSettings;
use crate::events::EventForwarder;
use crate::replay::{drain, Budget};
use crate::replay_trigger::ReplayTrigger;
use crate::sweep::sweep_once_with;
use crate::Deps;

/// Left for the last replay chunk's commit and the response before the Lambda is killed.
pub const REPLAY_DEADLINE_MARGIN: Duration = Duration::from_secs(15);

/// `ingest`: an SQS batch of ingress envelopes; retryable failures come back as
/// `batchItemFailures` so only those messages are redelivered.
pub async fn ingest(deps: &Deps, thaw: &ThawGuard, event: SqsEvent) -> SqsBatchResponse {
    thaw.before_request(&deps.pool);
    let response = crate::sqs::handle_sqs(deps, event).await;
    deps.metrics.write_emf();
    response
}

/// `api`: one API Gateway HTTP API request (JWT authorizer claims in its request context).
pub async fn api(api: &Api, thaw: &ThawGuard, req: Request) -> Response<Body> {
    thaw.before_request(&api.pool);
    let response = crate::api::handle(api, req).await;
    api.metrics.write_emf();
    response
}

/// `sweep`: an EventBridge schedule tick (the event's content does not matter): resume sweep
/// (nudging `replay` when lineages resumed), (re-)publication of due controls, governance
/// events handed to `forwarder` (EventBridge in AWS); then the fleet's gauges as EMF lines
/// (observability.md §2, `metrics`: `EDGE_METRICS_SILENT_AFTER`, `EDGE_METRICS_LINEAGE_CAP`).
pub async fn sweep<P: ControlPublisher, F: EventForwarder>(
    deps: &Deps,
    thaw: &ThawGuard,
    publisher: &P,
    forwarder: &F,
    replay: &ReplayTrigger,
    metrics: &MetricsSettings,
    event: &serde_json::Value,
) -> serde_json::Value {
    thaw.before_request(&deps.pool);
    tracing::debug!(id = ?event.get("id"), time = ?event.get("time"), "sweep tick");
    let now = time::OffsetDateTime::now_utc();
    let r = sweep_once_with(deps, publisher, forwarder, replay, now).await;
    deps.metrics.write_emf();
    // After the sweep, so the gauges show what it resumed and published.
    let gauge_lines = write_gauge_emf(&deps.pool, metrics, time::OffsetDateTime::now_utc()).await;
    serde_json::json!({
        "resumed": r.resumed, "published": r.published, "forwarded": r.forwarded,
        "errors": r.errors, "gauge_lines": gauge_lines,
    })
}

/// `replay`: any trigger (an SQS message, the schedule backstop) drains open replay intents
/// until none is left or `time_left` (minus [`REPLAY_DEADLINE_MARGIN`]) is spent.
pub async fn replay(
    deps: &Deps,
    thaw: &ThawGuard,
    chunk: i64,
    time_left: Duration,
) -> serde_json::Value {
    thaw.before_request(&deps.pool);
    let budget = Budget {
        until: Some(Instant::now() + time_left.saturating_sub(REPLAY_DEADLINE_MARGIN)),
        max_chunks: None,
    };
    let r = drain(deps, chunk, budget).await;
    deps.metrics.write_emf();
    serde_json::json!({
        "chunks": r.chunks, "drained": r.drained, "failed": r.failed,
        "intents_done": r.intents_done, "errors": r.errors,
        "budget_exhausted": r.budget_exhausted,
    })
}

/// Milliseconds left until a Lambda deadline (`Context::deadline`, epoch ms).
pub fn time_left(deadline_ms: u64) -> Duration {
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0);
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
