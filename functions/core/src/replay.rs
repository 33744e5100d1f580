//! Replay planning (cloud.md §8): how a replay intent advances after each chunk.
//!
//! The worker drains a lineage's staged rows in `(epoch, commit_seq, pk_key)` order, one bounded
//! chunk per transaction, keyset-paginated by the intent's cursor. Rows only ever get staged
//! *behind* the cursor while the lineage is paused (an active lineage materializes live rows
//! directly), so a pass that reaches the end looks back once: anything drainable behind the
//! cursor starts a new pass instead of being stranded.

/// Status of an `edge_replay_intents` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl IntentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            IntentStatus::Pending => "pending",
            IntentStatus::Running => "running",
            IntentStatus::Done => "done",
            IntentStatus::Failed => "failed",
        }
    }
}

/// What to do after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The chunk was full: there may be more ahead of the cursor.
    Continue,
    /// The pass ended but drainable rows sit behind the cursor: clear the cursor, go again.
    RestartPass,
    /// Nothing drainable is left: the intent is done.
    Done,
}

/// `fetched` rows came back for a chunk of `limit`; `behind` = drainable rows exist at or
/// before the cursor (only asked when the pass ended).
pub fn after_chunk(fetched: usize, limit: usize, behind: bool) -> Step {
    if fetched >= limit {
        Step::Continue
    } else if behind {
        Step::RestartPass
    } else {
        Step::Done
    }
}

/// Attempts after which a permanently failing intent is parked as `failed` (an operator reads
/// `last_error`; transient errors never park it).
pub const MAX_PERMANENT_FAILURES: i32 = 5;

/// Status after a chunk failed: transient errors leave the intent to be retried; permanent
/// ones park it after [`MAX_PERMANENT_FAILURES`].
pub fn after_failure(failure_count: i32, permanent: bool) -> IntentStatus {
    if permanent && failure_count >= MAX_PERMANENT_FAILURES {
        IntentStatus::Failed
    } else {
        IntentStatus::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_chunk_continues_and_a_short_one_ends_the_pass() {
        assert_eq!(after_chunk(500, 500, false), Step::Continue);
        assert_eq!(after_chunk(500, 500, true), Step::Continue);
        assert_eq!(after_chunk(12, 500, false), Step::Done);
        assert_eq!(after_chunk(0, 500, false), Step::Done);
        assert_eq!(after_chunk(0, 500, true), Step::RestartPass);
    }

    #[test]
    fn only_repeated_permanent_failures_park_the_intent() {
        assert_eq!(after_failure(1, true), IntentStatus::Running);
        assert_eq!(after_failure(99, false), IntentStatus::Running);
        assert_eq!(after_failure(5, true), IntentStatus::Failed);
        assert_eq!(IntentStatus::Done.as_str(), "done");
    }
}
