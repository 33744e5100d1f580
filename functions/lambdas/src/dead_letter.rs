//! Messages whose handling failed permanently are parked in `edge_dead_letters` instead of
//! being dropped (the transport has no further use for them: SQS would only redeliver them
//! until its own DLQ, the MQTT broker has already been acknowledged). Parking is part of
//! handling: if even the parking write fails, the caller treats the message as retryable, so
//! the transport keeps it.
//!
//! [`retry`] feeds a parked body through [`crate::ingest::handle`] again once the cause is
//! fixed (`edge-cloud dead-letters retry`); the ledger de-duplicates, so retrying a message
//! that was in fact applied is harmless.

use edge_cloud_core::ingress::parse_envelope;
use edge_cloud_store::dead_letters::{self, DeadLetter, NewDeadLetter};
use edge_cloud_store::StoreError;

use crate::ingest::handle;
use crate::Deps;

/// The `transport` of messages from the ingest Lambda's SQS event.
pub const SQS: &str = "sqs";
/// The `transport` of messages the local runner received from mosquitto.
pub const MQTT: &str = "mqtt";

/// An error with its sources (`tokio_postgres::Error` displays as "db error" and keeps the
/// server's message in its source), for the dead letter's `error` column.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Parks a message; the id of its dead letter.
pub async fn park(deps: &Deps, letter: &NewDeadLetter<'_>) -> Result<i64, StoreError> {
    let c = deps.pool.get().await?;
    let id = dead_letters::park(&**c, letter).await?;
    deps.metrics.dead_letter_parked(letter.transport);
    tracing::error!(
        dead_letter_id = id,
        transport = letter.transport,
        message_id = ?letter.message_id,
        topic = ?letter.topic,
        error = letter.error,
        "permanent failure: message parked as a dead letter (edge-cloud dead-letters retry)"
    );
    Ok(id)
}

/// What a retry of one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Handled; the dead letter is resolved with the handler's outcome.
    Resolved(String),
    /// Failed again (the error is stored on the dead letter, which stays open).
    Failed(String),
    /// Already resolved earlier; nothing done.
    AlreadyResolved,
    NotFound,
}

/// Retries one dead letter.
pub async fn retry(deps: &Deps, id: i64) -> Result<RetryOutcome, StoreError> {
    let c = deps.pool.get().await?;
    let Some(letter) = dead_letters::get(&**c, id).await? else {
        return Ok(RetryOutcome::NotFound);
    };
    if letter.resolved_at.is_some() {
        return Ok(RetryOutcome::AlreadyResolved);
    }
    drop(c);
    let result = match parse_envelope(&letter.body) {
        Ok(envelope) => handle(deps, envelope)
            .await
            .map(|outcome| format!("{outcome:?}"))
            .map_err(|e| describe(&e)),
        Err(e) => Err(format!("not an ingress envelope: {e}")),
    };
    let c = deps.pool.get().await?;
    Ok(match result {
        Ok(outcome) => {
            dead_letters::resolve(&**c, id, &outcome).await?;
            RetryOutcome::Resolved(outcome)
        }
        Err(error) => {
            dead_letters::retry_failed(&**c, id, &error).await?;
            RetryOutcome::Failed(error)
        }
    })
}

/// Retries every open dead letter in arrival order; `(id, outcome)` per letter.
pub async fn retry_open(deps: &Deps) -> Result<Vec<(i64, RetryOutcome)>, StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page: Vec<DeadLetter> = {
            let c = deps.pool.get().await?;
            dead_letters::list(&**c, false, after, 100).await?
        };
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.id;
        for letter in page {
            out.push((letter.id, retry(deps, letter.id).await?));
        }
    }
}
