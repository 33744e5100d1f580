//! The `ingest` Lambda: SQS batches of ingress envelopes → the ingest handler.
//!
//! Config (env only, read by [`edge_functions::env`]): `EDGE_DATABASE_SECRET_ARN` (Secrets
//! Manager / SSM ARN of the database URL; locally `EDGE_DATABASE_URL` or `DATABASE_URL`),
//! `EDGE_DB_POOL_SIZE` (default 4), `EDGE_SPILL_BUCKET` (S3 bucket of spill/snapshot uploads;
//! without it no upload is granted). The pool is built once per cold start; migrations are not
//! run here (deploy runs `edge-cloud migrate`).

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use edge_functions::aws::db::ThawGuard;
use edge_functions::env::{init_tracing, Lambda, LambdaSettings, LogOutput};
use edge_functions::lambda;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Lambda);
    let deps = LambdaSettings::from_env(Lambda::Ingest)?.deps().await?;
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
