//! The `ingest` Lambda's event: an SQS batch whose bodies are ingress envelopes. Retryable
//! failures become partial batch failures (only those messages are redelivered); permanent
//! ones — a body that is not an envelope, a non-transient handler error — are parked as dead
//! letters with their body ([`crate::dead_letter`]) and acknowledged. A message whose parking
//! fails too is redelivered: nothing is acknowledged without being handled or parked.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use edge_cloud_core::ingress::parse_envelope;
use edge_cloud_store::dead_letters::NewDeadLetter;

use crate::dead_letter::{self, SQS};
use crate::ingest::handle;
use crate::Deps;

/// Handles every record in order; returns the records SQS must redeliver.
pub async fn handle_sqs(deps: &Deps, event: SqsEvent) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or_default();
        let (topic, permanent) = match parse_envelope(body) {
            Ok(envelope) => {
                let topic = envelope.topic.clone();
                match handle(deps, envelope).await {
                    Ok(_) => continue,
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(message_id = %id, error = %e, "retryable failure; SQS will redeliver");
                        failures.push(item_failure(&id));
                        continue;
                    }
                    Err(e) => (
                        Some(topic),
                        format!("handler: {}", dead_letter::describe(&e)),
                    ),
                }
            }
            Err(e) => (None, format!("SQS body is not an ingress envelope: {e}")),
        };
        let letter = NewDeadLetter {
            transport: SQS,
            message_id: Some(&id),
            topic: topic.as_deref(),
            body,
            error: &permanent,
        };
        if let Err(e) = dead_letter::park(deps, &letter).await {
            tracing::error!(message_id = %id, error = %e, failure = %permanent,
                "permanent failure and the dead letter could not be written; SQS will redeliver");
            failures.push(item_failure(&id));
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

fn item_failure(id: &str) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = id.to_owned();
    failure
}
