//! Event forwarding (cloud.md §11): the sweep hands governance events on to a
//! [`EventForwarder`] — EventBridge in AWS (the deployment's implementation), a log line
//! locally ([`LogForwarder`]); [`crate::env::ConfiguredForwarder`] is whichever the environment
//! chose. The cursor lives in PostgreSQL ([`edge_cloud_store::forwarding`]), so every event is
//! forwarded at least once whichever sweep instance runs, and a forwarder failure only delays
//! the feed.

use std::future::Future;

use edge_cloud_store::forwarding::{advance, claim_batch, ForwardEvent};
use edge_cloud_store::StoreError;

use crate::Deps;

/// Why a batch could not be forwarded (the cursor stays; the next sweep retries).
#[derive(Debug, thiserror::Error)]
#[error("event forwarding failed: {0}")]
pub struct ForwardError(pub String);

/// Hands a batch of events (in commit order) to the outside world. Must succeed for the whole
/// batch or fail: the cursor moves past all of it or none.
pub trait EventForwarder: Send + Sync {
    /// The cursor's name in `edge_event_forwarding` (one cursor per destination).
    fn name(&self) -> &str;

    fn forward(
        &self,
        events: &[ForwardEvent],
    ) -> impl Future<Output = Result<(), ForwardError>> + Send;
}

/// The local forwarder: one log line per event (the runner's default, and the hook the lead's
/// demo and drills can watch).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogForwarder;

impl EventForwarder for LogForwarder {
    fn name(&self) -> &str {
        "log"
    }

    async fn forward(&self, events: &[ForwardEvent]) -> Result<(), ForwardError> {
        for e in events {
            tracing::info!(
                event_id = e.id,
                event_type = %e.event_type,
                project_id = %e.project_id,
                subject_id = ?e.subject_id,
                payload = %e.payload,
                "event forwarded"
            );
        }
        Ok(())
    }
}

/// Why forwarding stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// Forwards up to `max_batches` batches of `batch` events; returns how many were forwarded.
/// Each batch is one transaction around the cursor row (see the store module), so a failed or
/// interrupted forward leaves the cursor where it was.
pub async fn forward_events<F: EventForwarder>(
    deps: &Deps,
    forwarder: &F,
    batch: i64,
    max_batches: usize,
) -> Result<usize, ForwardingError> {
    let mut total = 0;
    for _ in 0..max_batches {
        let mut client = deps.pool.get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let Some(b) = claim_batch(&*tx, forwarder.name(), batch).await? else {
            // Another sweep holds the cursor and is forwarding these very events.
            break;
        };
        if b.events.is_empty() {
            break;
        }
        forwarder.forward(&b.events).await?;
        advance(&*tx, forwarder.name(), &b).await?;
        tx.commit().await.map_err(StoreError::from)?;
        total += b.events.len();
        if i64::try_from(b.events.len()).unwrap_or(i64::MAX) < batch {
            break;
        }
    }
    Ok(total)
}
