//! Starting the replay worker right after something opened a replay intent (an approval, a
//! consolidation, a reset or a sweep resume), instead of waiting for the next schedule tick.
//!
//! In AWS that is one SQS message on the replay queue (`EDGE_REPLAY_QUEUE_URL`), which invokes
//! the `replay` Lambda; the message body only says why — the worker reads the open intents
//! from the database. The EventBridge schedule stays as the backstop, so a lost or failed
//! nudge only delays the replay to the next tick: nudging never fails the request that caused
//! it. The local runner needs no nudge: its replay loop polls every second.

use crate::aws::replay_queue::SqsReplayQueue;

/// How intents opened by this process get a worker.
#[derive(Debug, Clone, Default)]
pub enum ReplayTrigger {
    /// Nothing to do here: a polling loop (local runner) or the schedule picks intents up.
    #[default]
    Polling,
    /// One message on the replay queue per nudge.
    Sqs(SqsReplayQueue),
}

impl ReplayTrigger {
    /// Asks for a replay run now; failures are logged, never returned (see module docs).
    pub async fn nudge(&self, reason: &str) {
        match self {
            ReplayTrigger::Polling => {}
            ReplayTrigger::Sqs(q) => match q.send(reason).await {
                Ok(()) => tracing::info!(reason, "replay queue nudged"),
                Err(e) => tracing::warn!(
                    reason,
                    error = %e,
                    "could not nudge the replay queue; the schedule will start the replay"
                ),
            },
        }
    }
}
