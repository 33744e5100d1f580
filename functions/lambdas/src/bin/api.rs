//! The `api` Lambda: API Gateway (HTTP API, JWT authorizer) → the governance API router.
//!
//! Config (env): `DATABASE_URL`, `EDGE_DB_POOL_SIZE` (default 4); optional `EDGE_JWT_SECRET`
//! (HS256) and `EDGE_JWT_JWKS` / `EDGE_JWT_JWKS_FILE` (RS256 JWKS JSON) for requests that did
//! not pass through the gateway's authorizer. The authorizer's claims are trusted when present.

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::api::auth::AuthConfig;
use edge_functions::api::{handle, Api};
use edge_functions::store;
use lambda_http::{service_fn, Request};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let size = match std::env::var("EDGE_DB_POOL_SIZE") {
        Ok(s) => s.parse().context("EDGE_DB_POOL_SIZE")?,
        Err(_) => 4,
    };
    let mut auth = auth_from_env()?;
    auth.trust_gateway_claims = true;
    let api = Arc::new(Api {
        pool: store::pool::connect(&url, size)?,
        auth,
    });
    lambda_http::run(service_fn(move |req: Request| {
        let api = Arc::clone(&api);
        async move { Ok::<_, lambda_http::Error>(handle(&api, req).await) }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

fn auth_from_env() -> anyhow::Result<AuthConfig> {
    let mut auth = match std::env::var("EDGE_JWT_SECRET") {
        Ok(s) if !s.is_empty() => AuthConfig::hs256(s.into_bytes()),
        _ => AuthConfig::default(),
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
    Ok(auth)
}
