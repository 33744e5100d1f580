//! The `replay` Lambda: any trigger (an SQS message after an approval, or an EventBridge
//! schedule) drains open replay intents until none is left or the invocation's deadline is
//! near. Stopping mid-way is harmless: every chunk commits its cursor with its writes.
//!
//! Config (env only): `EDGE_DATABASE_SECRET_ARN` (locally `EDGE_DATABASE_URL` /
//! `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 2), `EDGE_REPLAY_CHUNK` (default 2000 rows).

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::aws::db::ThawGuard;
use edge_functions::replay::DEFAULT_CHUNK;
use edge_functions::{lambda, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let chunk = match std::env::var("EDGE_REPLAY_CHUNK") {
        Ok(s) => s.parse().context("EDGE_REPLAY_CHUNK")?,
        Err(_) => DEFAULT_CHUNK,
    };
    let pool = lambda::pool_from_env(&mut None, 2).await?;
    let state = Arc::new((Deps::new(pool), ThawGuard::default()));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let state = Arc::clone(&state);
        async move {
            let (deps, thaw) = &*state;
            let left = lambda::time_left(event.context.deadline);
            Ok::<_, lambda_runtime::Error>(lambda::replay(deps, thaw, chunk, left).await)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
