//! The `replay` Lambda: any trigger (an SQS message after an approval, or an EventBridge
//! schedule) drains open replay intents until none is left or the invocation's deadline is
//! near. Stopping mid-way is harmless: every chunk commits its cursor with its writes.
//!
//! Config (env only, read by [`edge_functions::env`]): `EDGE_DATABASE_SECRET_ARN` (locally
//! `EDGE_DATABASE_URL` / `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 2), `EDGE_REPLAY_CHUNK`
//! (default 2000 rows).

use std::sync::Arc;

use edge_functions::aws::db::ThawGuard;
use edge_functions::env::{init_tracing, Lambda, LambdaSettings, LogOutput};
use edge_functions::lambda;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Lambda);
    let settings = LambdaSettings::from_env(Lambda::Replay)?;
    let chunk = settings.replay_chunk;
    let state = Arc::new((settings.deps().await?, ThawGuard::default()));
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
