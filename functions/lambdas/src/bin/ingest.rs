//! The `ingest` Lambda: SQS batches of ingress envelopes → the ingest handler.
//!
//! Config (env): `DATABASE_URL`, `EDGE_DB_POOL_SIZE` (default 4). The pool is built once per
//! cold start; migrations are not run here (deploy runs `edge-cloud migrate`).

use std::sync::Arc;

use anyhow::Context as _;
use aws_lambda_events::event::sqs::SqsEvent;
use edge_functions::sqs::handle_sqs;
use edge_functions::{store, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

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
    let deps = Arc::new(Deps::new(store::pool::connect(&url, size)?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let deps = Arc::clone(&deps);
        async move { Ok::<_, lambda_runtime::Error>(handle_sqs(&deps, event.payload).await) }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
