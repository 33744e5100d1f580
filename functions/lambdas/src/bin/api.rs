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
use lambda_http::{service_fn, Request};
use tower::ServiceExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Lambda);
    let deps = LambdaSettings::from_env(Lambda::Api)?.deps().await?;
    // The router itself is the Lambda's service; the thaw guard looks at the pool first.
    let pool = deps.pool.clone();
    let metrics = Arc::clone(&deps.metrics);
    let thaw = ThawGuard::default();
    let router = edge_functions::api::service::<lambda_http::Body>(edge_functions::api::router(
        Arc::new(env::api(&deps)),
    ));
    lambda_http::run(service_fn(move |req: Request| {
        thaw.before_request(&pool);
        let response = router.clone().oneshot(req);
        let metrics = Arc::clone(&metrics);
        async move {
            let response = response.await;
            // The request's duration, as EMF, at the end of the invocation.
            metrics.write_emf();
            response
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
