//! Telemetry sequencing (spec §4): the pure decision of whether a telemetry batch is new,
//! a redelivery, a duplicate or stale, given what the cloud's ledger already accepted.

use uuid::Uuid;

use super::rejection::{reject, Rejection, RejectionCode};

/// Outcome of sequencing a telemetry batch against what the cloud already accepted for its
/// `(device, source_table)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TelemetrySequence {
    /// New batch in order: stage it and advance the watermark.
    Accept,
    /// Redelivery of an accepted batch (same `batch_id`): succeed without doing anything.
    AlreadyAccepted,
    /// A different `batch_id` reuses an accepted `batch_seq` → `duplicate_batch_seq`.
    Duplicate,
    /// `batch_seq` below the last accepted one and not accepted before → `stale_batch_seq`.
    Stale,
}

impl TelemetrySequence {
    /// The rejection for `Duplicate` / `Stale`; `None` for the two success outcomes.
    pub fn rejection(&self, batch_seq: i64, last_accepted_seq: Option<i64>) -> Option<Rejection> {
        let last = last_accepted_seq.map_or_else(|| "none".to_owned(), |s| s.to_string());
        match self {
            TelemetrySequence::Accept | TelemetrySequence::AlreadyAccepted => None,
            TelemetrySequence::Duplicate => Some(reject(
                RejectionCode::DuplicateBatchSeq,
                format!("batch_seq {batch_seq} was already accepted under another batch_id"),
            )),
            TelemetrySequence::Stale => Some(reject(
                RejectionCode::StaleBatchSeq,
                format!("batch_seq {batch_seq} is below the last accepted {last}"),
            )),
        }
    }
}

/// The pure sequencing decision of spec §4.
///
/// Inputs, all for this batch's `(device, source_table)`:
/// - `last_accepted_seq` / `last_batch_id`: the highest accepted `batch_seq` and its `batch_id`
///   (`None` before the first batch);
/// - `seq_already_accepted`: the ledger holds an accepted batch with this `batch_seq`.
///
/// Callers that dedupe on `batch_id` first (the batch ledger) never get here for an older
/// redelivery; for them `last_batch_id` only matters for the newest batch. Decision, in order:
/// 1. `batch_id == last_batch_id` → `AlreadyAccepted` (whatever `seq_already_accepted` says);
/// 2. `seq_already_accepted`, or `batch_seq == last_accepted_seq` → `Duplicate`;
/// 3. `batch_seq < last_accepted_seq` → `Stale`;
/// 4. otherwise → `Accept` (gaps above the watermark are accepted: the device may have been
///    re-provisioned or pruned; ordering, not contiguity, is what the spec asks for).
pub fn classify_telemetry_sequence(
    last_accepted_seq: Option<i64>,
    last_batch_id: Option<Uuid>,
    batch_seq: i64,
    batch_id: Uuid,
    seq_already_accepted: bool,
) -> TelemetrySequence {
    if last_batch_id == Some(batch_id) {
        return TelemetrySequence::AlreadyAccepted;
    }
    if seq_already_accepted || last_accepted_seq == Some(batch_seq) {
        return TelemetrySequence::Duplicate;
    }
    match last_accepted_seq {
        Some(last) if batch_seq < last => TelemetrySequence::Stale,
        _ => TelemetrySequence::Accept,
    }
}

/// [`classify_telemetry_sequence`] as a `Result`: `Ok(Accept | AlreadyAccepted)`, or the
/// `duplicate_batch_seq` / `stale_batch_seq` rejection.
pub fn check_telemetry_sequence(
    last_accepted_seq: Option<i64>,
    last_batch_id: Option<Uuid>,
    batch_seq: i64,
    batch_id: Uuid,
    seq_already_accepted: bool,
) -> Result<TelemetrySequence, Rejection> {
    let outcome = classify_telemetry_sequence(
        last_accepted_seq,
        last_batch_id,
        batch_seq,
        batch_id,
        seq_already_accepted,
    );
    match outcome.rejection(batch_seq, last_accepted_seq) {
        Some(rejection) => Err(rejection),
        None => Ok(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_uuid_v7;

    fn id(n: u64) -> Uuid {
        new_uuid_v7(n, [n as u8; 10])
    }

    #[test]
    fn sequencing_first_and_next_batches_are_accepted() {
        assert_eq!(
            check_telemetry_sequence(None, None, 1, id(1), false),
            Ok(TelemetrySequence::Accept)
        );
        assert_eq!(
            check_telemetry_sequence(Some(41), Some(id(41)), 42, id(42), false),
            Ok(TelemetrySequence::Accept)
        );
        assert_eq!(
            check_telemetry_sequence(Some(41), Some(id(41)), 50, id(50), false),
            Ok(TelemetrySequence::Accept)
        );
    }

    #[test]
    fn sequencing_same_batch_id_is_a_no_op() {
        assert_eq!(
            check_telemetry_sequence(Some(42), Some(id(42)), 42, id(42), true),
            Ok(TelemetrySequence::AlreadyAccepted)
        );
    }

    #[test]
    fn sequencing_duplicate_batch_seq() {
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 42, id(99), true).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
        // Even without the ledger flag, reusing the last seq is a duplicate.
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 42, id(99), false).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
        // An older seq taken by another batch is a duplicate, not stale.
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 40, id(99), true).unwrap_err();
        assert_eq!(err.code, RejectionCode::DuplicateBatchSeq);
    }

    #[test]
    fn sequencing_stale_batch_seq() {
        let err = check_telemetry_sequence(Some(42), Some(id(42)), 41, id(99), false).unwrap_err();
        assert_eq!(err.code, RejectionCode::StaleBatchSeq);
        assert_eq!(
            classify_telemetry_sequence(Some(42), Some(id(42)), 41, id(99), false),
            TelemetrySequence::Stale
        );
    }
}
