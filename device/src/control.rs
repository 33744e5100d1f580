//! Control decisions (protocol §6). Pure: the caller supplies what `state.db` knows.
//!
//! Order of checks, and why:
//! 1. signature (when `signed_control` is on) — a forged or unsigned control is rejected, logged
//!    and **not acked**, so an attacker cannot even learn that the device is listening;
//! 2. already handled (control id persisted) — acked again (the cloud re-sends until it sees the
//!    ack) but not executed twice;
//! 3. stale — older (`issued_at`) than the last control applied for the same table **and the
//!    same control family** (`ControlKind::family`, reliability.md §1): acked, not applied,
//!    because controls may be reordered and an old pause must not undo a newer resume; a control
//!    of another family (a later `url_grant`) never makes a re-sent pause stale;
//! 4. otherwise execute: effect + handled id in one state.db transaction, then the ack
//!    (`daemon::controls`).

use edge_protocol::control::{
    verify, ControlEnvelope, ControlKind, SegmentKind, SignatureError, UnblockAction, UploadOutcome,
};
use uuid::Uuid;

/// What to do with a control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlDecision {
    /// Do not ack, do not execute; log the reason.
    Reject(String),
    /// Ack, but do not execute (duplicate or stale); the reason is for the log.
    AckOnly(String),
    /// Save the effect and the handled id (one transaction), then ack.
    Execute(ControlAction),
}

/// The effect of a control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    Pause {
        table: String,
        watermark: i64,
        issued_at: Option<String>,
    },
    Resume {
        table: String,
        watermark: i64,
        issued_at: Option<String>,
    },
    UrlGrant {
        table: String,
        batch_id: Uuid,
        segment_kind: SegmentKind,
        url: String,
        expires_at: Option<String>,
    },
    /// How the cloud processed a finalized upload (reliability §2).
    UploadResult {
        table: String,
        batch_id: Uuid,
        /// `None` = committed; `Some((code, retryable))` = failed.
        failure: Option<(String, bool)>,
    },
    /// Apply and persist a grant (edge-policies §0).
    SetWireOptions {
        options: edge_protocol::wire::WireOptions,
    },
    /// `unblock_table`: the operator's decision about a table the device blocked.
    Unblock {
        table: String,
        action: UnblockAction,
        commit_seq: i64,
    },
}

/// The `outcome` label of `edge_agent_controls_total` (observability.md §3).
pub mod outcome {
    pub const APPLIED: &str = "applied";
    pub const DUPLICATE: &str = "duplicate";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const STALE: &str = "stale";
}

/// [`ControlDecision::AckOnly`]'s reason for a control id handled before.
pub const ALREADY_HANDLED: &str = "already handled";
/// [`ControlDecision::AckOnly`]'s reason for a control older than its family's last applied.
pub const STALE: &str =
    "stale: issued before the last control of its family applied for this table";

impl ControlDecision {
    /// The control's [`outcome`]: every rejection is one that failed verification (a bad,
    /// missing or unverifiable signature); `None` for a control acked but malformed (missing
    /// fields): none of the four outcomes, it is only logged.
    pub fn outcome(&self) -> Option<&'static str> {
        match self {
            ControlDecision::Reject(_) => Some(outcome::BAD_SIGNATURE),
            ControlDecision::AckOnly(why) if why == ALREADY_HANDLED => Some(outcome::DUPLICATE),
            ControlDecision::AckOnly(why) if why == STALE => Some(outcome::STALE),
            ControlDecision::AckOnly(_) => None,
            ControlDecision::Execute(_) => Some(outcome::APPLIED),
        }
    }
}

/// What `state.db` knows about a control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlFacts {
    /// The control id was handled before.
    pub handled: bool,
    /// `issued_at` of the last control of the same family applied for the control's table.
    pub last_applied_issued_at: Option<String>,
}

/// Decides. `key` is `Some` exactly when signed controls are on.
pub fn decide(
    envelope: &ControlEnvelope,
    key: Option<&[u8]>,
    facts: &ControlFacts,
) -> ControlDecision {
    if let Some(key) = key {
        if let Err(e) = verify(envelope, key) {
            let why = match e {
                SignatureError::Missing => "unsigned control while signed_control is on",
                SignatureError::Malformed => "malformed control signature",
                SignatureError::Mismatch => "control signature does not verify",
            };
            return ControlDecision::Reject(why.to_owned());
        }
    }
    if facts.handled {
        return ControlDecision::AckOnly(ALREADY_HANDLED.into());
    }
    if let (Some(new), Some(last)) = (&envelope.issued_at, &facts.last_applied_issued_at) {
        if let (Ok(new), Ok(last)) = (
            edge_protocol::timestamp::parse(new),
            edge_protocol::timestamp::parse(last),
        ) {
            if new < last {
                return ControlDecision::AckOnly(STALE.into());
            }
        }
    }
    let table = envelope.source_table.clone().unwrap_or_default();
    let action = match envelope.control_kind {
        ControlKind::PauseLineage | ControlKind::ResumeLineage => {
            let Some(watermark) = envelope.server_watermark else {
                return ControlDecision::AckOnly("lineage control without server_watermark".into());
            };
            if table.is_empty() {
                return ControlDecision::AckOnly("lineage control without source_table".into());
            }
            if envelope.control_kind == ControlKind::PauseLineage {
                ControlAction::Pause {
                    table,
                    watermark,
                    issued_at: envelope.issued_at.clone(),
                }
            } else {
                ControlAction::Resume {
                    table,
                    watermark,
                    issued_at: envelope.issued_at.clone(),
                }
            }
        }
        ControlKind::SetWireOptions => ControlAction::SetWireOptions {
            options: envelope.wire_options(),
        },
        ControlKind::UrlGrant => match (
            envelope.batch_id,
            envelope.segment_kind,
            envelope.presigned_url.clone(),
        ) {
            (Some(batch_id), Some(segment_kind), Some(url)) => ControlAction::UrlGrant {
                table,
                batch_id,
                segment_kind,
                url,
                expires_at: envelope.presigned_url_expires_at.clone(),
            },
            _ => {
                return ControlDecision::AckOnly(
                    "url_grant without batch_id/segment_kind/presigned_url".into(),
                )
            }
        },
        ControlKind::UploadResult => match (envelope.batch_id, envelope.outcome) {
            (Some(batch_id), Some(UploadOutcome::Committed)) => ControlAction::UploadResult {
                table,
                batch_id,
                failure: None,
            },
            (Some(batch_id), Some(UploadOutcome::Failed)) => ControlAction::UploadResult {
                table,
                batch_id,
                failure: Some((
                    envelope.code.clone().unwrap_or_default(),
                    envelope.retryable.unwrap_or(false),
                )),
            },
            _ => return ControlDecision::AckOnly("upload_result without batch_id/outcome".into()),
        },
        ControlKind::UnblockTable => match (envelope.action, envelope.commit_seq) {
            (Some(action), Some(commit_seq)) if !table.is_empty() => ControlAction::Unblock {
                table,
                action,
                commit_seq,
            },
            _ => {
                return ControlDecision::AckOnly(
                    "unblock_table without source_table/action/commit_seq".into(),
                )
            }
        },
    };
    ControlDecision::Execute(action)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::control::sign_in_place;

    fn pause(issued: &str) -> ControlEnvelope {
        ControlEnvelope::pause_lineage(
            edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [1; 10]),
            "t",
            41,
            "backpressure",
            issued,
        )
    }

    #[test]
    fn signature_is_required_when_on() {
        let key = b"k".as_slice();
        let mut c = pause("2026-01-01T00:00:00Z");
        assert!(matches!(
            decide(&c, Some(key), &ControlFacts::default()),
            ControlDecision::Reject(_)
        ));
        sign_in_place(&mut c, b"other");
        assert!(matches!(
            decide(&c, Some(key), &ControlFacts::default()),
            ControlDecision::Reject(_)
        ));
        sign_in_place(&mut c, key);
        assert_eq!(
            decide(&c, Some(key), &ControlFacts::default()),
            ControlDecision::Execute(ControlAction::Pause {
                table: "t".into(),
                watermark: 41,
                issued_at: Some("2026-01-01T00:00:00Z".into()),
            })
        );
        // Tampering after signing is caught.
        c.server_watermark = Some(1);
        assert!(matches!(
            decide(&c, Some(key), &ControlFacts::default()),
            ControlDecision::Reject(_)
        ));
        // Unsigned is fine when signed controls are off.
        assert!(matches!(
            decide(
                &pause("2026-01-01T00:00:00Z"),
                None,
                &ControlFacts::default()
            ),
            ControlDecision::Execute(_)
        ));
    }

    #[test]
    fn duplicates_and_stale_controls_are_acked_not_executed() {
        let c = pause("2026-01-01T00:00:00Z");
        let handled = ControlFacts {
            handled: true,
            ..ControlFacts::default()
        };
        assert!(matches!(
            decide(&c, None, &handled),
            ControlDecision::AckOnly(_)
        ));
        let newer = ControlFacts {
            handled: false,
            last_applied_issued_at: Some("2026-01-01T00:00:01Z".into()),
        };
        assert!(matches!(
            decide(&c, None, &newer),
            ControlDecision::AckOnly(_)
        ));
        let older = ControlFacts {
            handled: false,
            last_applied_issued_at: Some("2025-12-31T23:59:59Z".into()),
        };
        assert!(matches!(
            decide(&c, None, &older),
            ControlDecision::Execute(_)
        ));
    }

    #[test]
    fn unblock_table_executes_the_operators_decision() {
        let c = ControlEnvelope::unblock_table(
            edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [3; 10]),
            "t",
            UnblockAction::Skip,
            17,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            decide(&c, None, &ControlFacts::default()),
            ControlDecision::Execute(ControlAction::Unblock {
                table: "t".into(),
                action: UnblockAction::Skip,
                commit_seq: 17,
            })
        );
        let mut incomplete = c;
        incomplete.commit_seq = None;
        assert!(matches!(
            decide(&incomplete, None, &ControlFacts::default()),
            ControlDecision::AckOnly(_)
        ));
    }
}
