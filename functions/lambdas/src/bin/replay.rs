//! The `replay` Lambda: any trigger (an SQS message after an approval, or an EventBridge
//! schedule) drains open replay intents until none is left or the invocation's deadline is
//! near. Stopping mid-way is harmless: every chunk commits its cursor with its writes.
//!
//! Config (env): `DATABASE_URL`, `EDGE_DB_POOL_SIZE` (default 2), `EDGE_REPLAY_CHUNK`
//! (default 1000 rows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edge_functions::replay::{drain, Budget, DEFAULT_CHUNK};
use edge_functions::{store, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

/// Left for the last chunk's commit and the response before the Lambda is killed.
const DEADLINE_MARGIN: Duration = Duration::from_secs(15);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(s) => s.parse().with_context(|| name.to_owned()),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let size = env_or("EDGE_DB_POOL_SIZE", 2usize)?;
    let chunk = env_or("EDGE_REPLAY_CHUNK", DEFAULT_CHUNK)?;
    let deps = Arc::new(Deps::new(store::pool::connect(&url, size)?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let deps = Arc::clone(&deps);
        async move {
            let now_ms =
                u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(0);
            let left = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
            let budget = Budget {
                until: Some(Instant::now() + left.saturating_sub(DEADLINE_MARGIN)),
                max_chunks: None,
            };
            let r = drain(&deps, chunk, budget).await;
            Ok::<_, lambda_runtime::Error>(serde_json::json!({
                "chunks": r.chunks, "drained": r.drained, "failed": r.failed,
                "intents_done": r.intents_done, "errors": r.errors,
                "budget_exhausted": r.budget_exhausted,
            }))
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
