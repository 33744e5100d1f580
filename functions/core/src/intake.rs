//! Intake decisions (cloud.md §2, §4): routing a classified batch, ledger ids for payloads
//! whose `batch_id` is unusable, and the staging keys.

use edge_protocol::canonical::canonical_json;
use edge_protocol::ids::{is_uuid_v7, uuid_v7_unix_ms};
use edge_protocol::value::{row_to_json, Row};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::classify::Disposition;

/// Why rows sit in `edge_staged_rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StagingReason {
    SchemaReview,
    LineagePaused,
    MaterializationFailed,
}

impl StagingReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StagingReason::SchemaReview => "schema_review",
            StagingReason::LineagePaused => "lineage_paused",
            StagingReason::MaterializationFailed => "materialization_failed",
        }
    }
}

/// Which bindings a materialized batch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingsOf {
    /// The batch's own `schema_hash`.
    OwnHash,
    /// The lineage's approved hash (additive change with `allow_additive_continue`).
    ApprovedHash,
}

/// What intake does with a batch after classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakePlan {
    /// `Ok` → materialize with those bindings; `Err` → stage with that reason.
    pub route: Result<BindingsOf, StagingReason>,
    /// Open (or keep) a review for the batch's hash.
    pub open_review: bool,
    /// Pause the lineage with reason `schema_review`.
    pub pause_for_review: bool,
}

/// Routing (cloud.md §2 step 5): an active lineage with bindings materializes; anything else
/// stages. A paused lineage stages even a bound hash (`lineage_paused`), so a backpressure or
/// circuit-breaker pause holds every row until the resume.
pub fn plan_intake(disposition: Disposition, lineage_active: bool) -> IntakePlan {
    match disposition {
        Disposition::MaterializeOwnHash => IntakePlan {
            route: if lineage_active {
                Ok(BindingsOf::OwnHash)
            } else {
                Err(StagingReason::LineagePaused)
            },
            open_review: false,
            pause_for_review: false,
        },
        Disposition::MaterializeApprovedAndReview => IntakePlan {
            route: if lineage_active {
                Ok(BindingsOf::ApprovedHash)
            } else {
                Err(StagingReason::LineagePaused)
            },
            open_review: true,
            pause_for_review: false,
        },
        Disposition::StageAndReview => IntakePlan {
            route: Err(StagingReason::SchemaReview),
            open_review: true,
            pause_for_review: true,
        },
    }
}

/// The ledger key of a payload: its `batch_id` when that is a UUID, else an id derived from
/// the payload bytes (so the same bad bytes are recorded once however often they arrive).
pub fn ledger_batch_id(raw_batch_id: Option<&str>, payload: &[u8]) -> Uuid {
    if let Some(id) = raw_batch_id.and_then(|s| Uuid::try_parse(s).ok()) {
        return id;
    }
    let digest = Sha256::digest(payload);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Milliseconds since the Unix epoch of the ledger's time column: the UUIDv7 timestamp of the
/// batch id, or 0 for ids that carry no time (rejected payloads), so the key stays a pure
/// function of the id.
pub fn ledger_time_ms(batch_id: &Uuid) -> i64 {
    uuid_v7_unix_ms(batch_id).map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Staging time of row-batch rows: the epoch's UUIDv7 time (deterministic per epoch).
pub fn epoch_time_ms(journal_epoch: &Uuid) -> i64 {
    if is_uuid_v7(journal_epoch) {
        ledger_time_ms(journal_epoch)
    } else {
        0
    }
}

/// Canonical text of a primary key: part of the staged-row key.
pub fn pk_key(pk: &Row) -> String {
    canonical_json(&row_to_json(pk))
}

/// Telemetry rows are staged under the nil epoch with `seq = batch_seq * 4096 + index`
/// (at most 4096 rows per batch), unique per lineage.
pub fn telemetry_stage_seq(batch_seq: i64, index: usize) -> i64 {
    let index = i64::try_from(index).unwrap_or(i64::MAX);
    batch_seq
        .saturating_mul(edge_protocol::limits::MAX_ROWS_PER_BATCH as i64)
        .saturating_add(index)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::value::SqlValue;

    #[test]
    fn routing() {
        let p = plan_intake(Disposition::MaterializeOwnHash, true);
        assert_eq!(p.route, Ok(BindingsOf::OwnHash));
        assert!(!p.open_review);
        let p = plan_intake(Disposition::MaterializeOwnHash, false);
        assert_eq!(p.route, Err(StagingReason::LineagePaused));
        let p = plan_intake(Disposition::MaterializeApprovedAndReview, true);
        assert_eq!(p.route, Ok(BindingsOf::ApprovedHash));
        assert!(p.open_review && !p.pause_for_review);
        let p = plan_intake(Disposition::StageAndReview, true);
        assert_eq!(p.route, Err(StagingReason::SchemaReview));
        assert!(p.open_review && p.pause_for_review);
    }

    #[test]
    fn ledger_ids_are_stable() {
        let v7 = "01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70";
        let id = ledger_batch_id(Some(v7), b"x");
        assert_eq!(id.to_string(), v7);
        assert_eq!(ledger_time_ms(&id), 0x0193_9b4e_8c3a);
        let a = ledger_batch_id(Some("garbage"), b"payload");
        assert_eq!(a, ledger_batch_id(None, b"payload"));
        assert_ne!(a, ledger_batch_id(None, b"other"));
        assert_eq!(ledger_time_ms(&a), 0);
    }

    #[test]
    fn pk_keys_are_canonical() {
        let mut pk = Row::new();
        pk.insert("b".into(), SqlValue::Integer(1));
        pk.insert("a".into(), SqlValue::Text("x".into()));
        assert_eq!(pk_key(&pk), r#"{"a":"x","b":1}"#);
        assert_eq!(telemetry_stage_seq(2, 3), 2 * 4096 + 3);
    }
}
