//! The `ingest` Lambda's event: an SQS batch whose bodies are ingress envelopes. Retryable
//! failures become partial batch failures (only those messages are redelivered); permanent
//! ones are logged and acknowledged.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use edge_cloud_core::ingress::parse_envelope;

use crate::ingest::{handle, Outcome};
use crate::Deps;

/// Handles every record in order; returns the records SQS must redeliver.
pub async fn handle_sqs(deps: &Deps, event: SqsEvent) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or_default();
        let result = match parse_envelope(body) {
            Ok(envelope) => handle(deps, envelope).await,
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e, "SQS body is not an envelope; dropped");
                Ok(Outcome::Dropped {
                    reason: e.to_string(),
                })
            }
        };
        if let Err(e) = result {
            if e.is_retryable() {
                tracing::warn!(message_id = %id, error = %e, "retryable failure; SQS will redeliver");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failures.push(failure);
            } else {
                tracing::error!(message_id = %id, error = %e, "permanent failure; not retried");
            }
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}
