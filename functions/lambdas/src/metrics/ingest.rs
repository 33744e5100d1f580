//! What one handled envelope adds to the ingest counters (observability.md §2): a pure function
//! of its [`Outcome`], so the mapping is in one place and tested without a database.
//!
//! - `Accepted` → `edge_batches_total{status=materialized|staged}` (the ledger status), rows
//!   materialized (`path=live`), rows staged by reason, a permanent materialization failure
//!   when rows were refused by the mirror, a stale journal epoch when one was recorded;
//! - `Duplicate` → `status=duplicate`; `Rejected` → `status=rejected` and
//!   `edge_batches_rejected_total{code}`;
//! - `SpillFailed` (a finalize whose object could not be taken) → `status=rejected` with its
//!   spill code, kind `spill`: nothing of it was kept, as for a rejection;
//! - everything else (acks, schema observations, upload grants, ingress drops) is no batch.

use edge_cloud_core::metrics::{BatchStatus, StagedByReason};

use crate::ingest::Outcome;

/// The increments of one envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestIncrements {
    /// `edge_batches_total`'s status, when the envelope was a batch.
    pub status: Option<BatchStatus>,
    /// The rejection code (`edge_batches_rejected_total`; mapped to its closed set later).
    pub code: Option<&'static str>,
    pub rows_materialized: i64,
    pub staged: StagedByReason,
    /// `edge_materialization_failures_total{class=permanent}` += 1.
    pub permanent_failure: bool,
    /// `edge_stale_journal_epochs_total` += 1.
    pub stale_epoch: bool,
    /// `edge_tenant_fields_stripped_total` += 1.
    pub tenant_fields_stripped: bool,
}

/// The increments of `outcome`; `stripped` = ingress stripped tenant fields of its payload.
pub fn increments(outcome: &Outcome, stripped: bool) -> IngestIncrements {
    let mut inc = IngestIncrements {
        tenant_fields_stripped: stripped,
        ..IngestIncrements::default()
    };
    match outcome {
        Outcome::Accepted {
            materialized,
            failed,
            tally,
            ..
        } => {
            inc.status = Some(if tally.staged_status {
                BatchStatus::Staged
            } else {
                BatchStatus::Materialized
            });
            inc.rows_materialized = *materialized;
            inc.staged = tally.staged_by;
            inc.permanent_failure = *failed > 0;
            inc.stale_epoch = tally.stale_epoch;
        }
        Outcome::Duplicate { .. } => inc.status = Some(BatchStatus::Duplicate),
        Outcome::Rejected { code, .. } => {
            inc.status = Some(BatchStatus::Rejected);
            inc.code = Some(code.as_str());
        }
        Outcome::SpillFailed { code, .. } => {
            inc.status = Some(BatchStatus::Rejected);
            inc.code = Some(code.as_str());
        }
        Outcome::ControlAcked { .. }
        | Outcome::SchemaObserved { .. }
        | Outcome::Ignored { .. }
        | Outcome::UploadGranted { .. }
        | Outcome::UploadNotGranted { .. }
        | Outcome::Dropped { .. } => {}
    }
    inc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::outcome::Tally;
    use edge_cloud_core::classify::SchemaClass;
    use edge_cloud_core::intake::StagingReason;
    use edge_cloud_core::spill::SpillCode;
    use edge_protocol::validate::RejectionCode;
    use uuid::Uuid;

    #[test]
    fn outcomes_map_to_their_counters() {
        let mut staged_by = StagedByReason::default();
        staged_by.add(StagingReason::MaterializationFailed, 2);
        let accepted = Outcome::Accepted {
            lineage_id: Uuid::nil(),
            batch_id: Uuid::nil(),
            class: SchemaClass::CompatibleMapped,
            materialized: 5,
            staged: 2,
            failed: 2,
            tally: Tally {
                staged_status: false,
                staged_by,
                stale_epoch: true,
            },
        };
        let inc = increments(&accepted, true);
        assert_eq!(inc.status, Some(BatchStatus::Materialized));
        assert_eq!(inc.rows_materialized, 5);
        assert_eq!(inc.staged.materialization_failed, 2);
        assert!(inc.permanent_failure && inc.stale_epoch && inc.tenant_fields_stripped);

        let rejected = Outcome::Rejected {
            code: RejectionCode::InvalidRow,
            message: String::new(),
        };
        let inc = increments(&rejected, false);
        assert_eq!(
            (inc.status, inc.code),
            (Some(BatchStatus::Rejected), Some("invalid_row"))
        );
        let spill = Outcome::SpillFailed {
            batch_id: Uuid::nil(),
            code: SpillCode::ObjectMissing,
            message: String::new(),
        };
        assert_eq!(increments(&spill, false).code, Some("spill_object_missing"));
        let dup = Outcome::Duplicate {
            batch_id: Uuid::nil(),
        };
        assert_eq!(increments(&dup, false).status, Some(BatchStatus::Duplicate));
        let ack = Outcome::ControlAcked {
            control_id: Uuid::nil(),
            known: true,
        };
        assert_eq!(increments(&ack, false), IngestIncrements::default());
    }
}
