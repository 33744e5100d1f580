//! The `api` Lambda: API Gateway (HTTP API, JWT authorizer) → the governance API router.
//!
//! Config (env only): `EDGE_DATABASE_SECRET_ARN` (locally `EDGE_DATABASE_URL` /
//! `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 4); optional HS256 key from
//! `EDGE_JWT_SECRET_ARN` (locally `EDGE_JWT_SECRET`) and `EDGE_JWT_JWKS` / `EDGE_JWT_JWKS_FILE`
//! (RS256 JWKS JSON) for requests that did not pass through the gateway's authorizer. The
//! authorizer's claims are trusted when present. `EDGE_REPLAY_QUEUE_URL`: the replay queue,
//! sent one message after each approval (or consolidation, reset) so the backlog replays at
//! once rather than at the next schedule tick.

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::api::auth::AuthConfig;
use edge_functions::api::Api;
use edge_functions::aws::db::ThawGuard;
use edge_functions::aws::replay_queue::SqsReplayQueue;
use edge_functions::aws::secrets;
use edge_functions::lambda;
use edge_functions::replay_trigger::ReplayTrigger;
use lambda_http::{service_fn, Request};
use tower::ServiceExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let mut sdk = None;
    let pool = lambda::pool_from_env(&mut sdk, 4).await?;
    let mut auth = auth_from_env(&mut sdk).await?;
    auth.trust_gateway_claims = true;
    let mut api = Api::new(pool, auth);
    if let Some(url) = std::env::var("EDGE_REPLAY_QUEUE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        let sdk = match sdk {
            Some(s) => s,
            None => edge_functions::aws::config::load().await,
        };
        api = api.with_replay_trigger(ReplayTrigger::Sqs(SqsReplayQueue::new(&sdk, url)));
    }
    // The router itself is the Lambda's service; the thaw guard looks at the pool first.
    let pool = api.pool.clone();
    let thaw = ThawGuard::default();
    let router = edge_functions::api::service::<lambda_http::Body>(edge_functions::api::router(
        Arc::new(api),
    ));
    lambda_http::run(service_fn(move |req: Request| {
        thaw.before_request(&pool);
        router.clone().oneshot(req)
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

async fn auth_from_env(sdk: &mut Option<aws_config::SdkConfig>) -> anyhow::Result<AuthConfig> {
    let mut auth = match secrets::from_env(sdk, "EDGE_JWT_SECRET_ARN", &["EDGE_JWT_SECRET"]).await?
    {
        Some(s) => AuthConfig::hs256(s.expose().as_bytes().to_vec()),
        None => AuthConfig::default(),
    };
    let jwks = match (
        std::env::var("EDGE_JWT_JWKS"),
        std::env::var("EDGE_JWT_JWKS_FILE"),
    ) {
        (Ok(j), _) if !j.is_empty() => Some(j),
        (_, Ok(f)) if !f.is_empty() => {
            Some(std::fs::read_to_string(&f).with_context(|| format!("reading {f}"))?)
        }
        _ => None,
    };
    if let Some(j) = jwks {
        auth = auth.with_jwks_json(&j)?;
    }
    // Optional: tokens that bypass the gateway must then carry exactly this `iss` / `aud`.
    auth = auth.with_expected_claims_from_env();
    Ok(auth)
}
