//! The `api` Lambda: API Gateway (HTTP API, JWT authorizer) → the governance API router.
//!
//! Config (env only, read by [`edge_functions::env`]): `EDGE_DATABASE_SECRET_ARN` (locally
//! `EDGE_DATABASE_URL` / `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 4); optional HS256 key
//! from `EDGE_JWT_SECRET_ARN` (locally `EDGE_JWT_SECRET`) and `EDGE_JWT_JWKS` /
//! `EDGE_JWT_JWKS_FILE` (RS256 JWKS JSON) for requests that did not pass through the gateway's
//! authorizer. The authorizer's claims are trusted when present. `EDGE_REPLAY_QUEUE_URL`: the
//! replay queue, sent one message after each approval (or consolidation, reset) so the backlog
//! replays at once rather than at the next schedule tick.

use std::sync::Arc;

use edge_functions::aws::db::ThawGuard;
use edge_functions::env::{self, init_tracing, Lambda, LambdaSettings, LogOutput};
use edge_functions::lambda;
use lambda_http::{service_fn, Request};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Lambda);
    let deps = LambdaSettings::from_env(Lambda::Api)?.deps().await?;
    let state = Arc::new((env::api(&deps), ThawGuard::default()));
    lambda_http::run(service_fn(move |req: Request| {
        let state = Arc::clone(&state);
        async move {
            let (api, thaw) = &*state;
            Ok::<_, lambda_http::Error>(lambda::api(api, thaw, req).await)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
