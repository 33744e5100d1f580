//! The `ingest` Lambda: SQS batches of ingress envelopes → the ingest handler.
//!
//! Config (env only): `EDGE_DATABASE_SECRET_ARN` (Secrets Manager / SSM ARN of the database
//! URL; locally `EDGE_DATABASE_URL` or `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 4),
//! `EDGE_SPILL_BUCKET` (S3 bucket of spill/snapshot uploads; without it no upload is granted). The
//! pool is built once per cold start; migrations are not run here (deploy runs
//! `edge-cloud migrate`).

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use edge_functions::aws::db::ThawGuard;
use edge_functions::aws::s3::S3Objects;
use edge_functions::objects::Objects;
use edge_functions::{lambda, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let mut sdk = None;
    let pool = lambda::pool_from_env(&mut sdk, 4).await?;
    let mut deps = Deps::new(pool);
    match S3Objects::from_env(&mut sdk).await {
        Some(objects) => deps = deps.with_objects(Objects::S3(objects)),
        None => tracing::warn!("EDGE_SPILL_BUCKET is not set: url_requests get no grant"),
    }
    let state = Arc::new((deps, ThawGuard::default()));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let state = Arc::clone(&state);
        async move {
            let (deps, thaw) = &*state;
            Ok::<_, lambda_runtime::Error>(lambda::ingest(deps, thaw, event.payload).await)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
