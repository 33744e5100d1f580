//! Controls from the cloud (protocol §6, reliability.md §1, §7): decided by `control`, then —
//! for a control to execute — its effect, its handled id and its family's `issued_at` are
//! committed in **one** state.db transaction, then it is acked, then the in-memory side of the
//! effect (the reader's pause set, a spill's upload) follows. A crash at any point either loses
//! the whole control (not acked: the cloud re-sends it) or keeps it whole (a redelivery finds
//! the handled id and is acked again, not re-executed); never an ack without the effect.
//!
//! Adding a control kind: decode it into a [`ControlAction`] in `control::decide`, map its kind
//! to its family in `ControlKind::family` (protocol crate), write its durable effect in
//! [`Daemon::save_control_effect`] (it runs inside the open transaction: use `self.state`'s
//! connection, open no transaction of your own) and its in-memory effect, if any, in
//! [`Daemon::enact_control`] (after the ack; on a restart it must be re-derivable from
//! state.db).
//!
//! `device_unknown` is the one unsigned control: it only sets what `status` shows and logs a
//! warning; it is never acked and never changes publishing.

use edge_protocol::control::{ControlKind, DeviceUnknown, IngestAck};
use edge_protocol::topic::TopicKind;
use tracing::{info, warn};
use uuid::Uuid;

use super::{unix_ms, Daemon, DaemonError};
use crate::control::{decide, ControlAction, ControlDecision, ControlFacts};
use crate::control_store;
use crate::mqtt::Publisher;

/// The state.db counter of controls with `outcome` ([`crate::state::counter::CONTROLS_PREFIX`]).
pub(super) fn control_counter(outcome: &str) -> String {
    format!("{}{outcome}", crate::state::counter::CONTROLS_PREFIX)
}

impl Daemon {
    pub(super) fn on_control(
        &mut self,
        bytes: &[u8],
        client: &Publisher,
    ) -> Result<(), DaemonError> {
        match edge_protocol::validate::decode_device_unknown(bytes) {
            Ok(Some(notice)) => return self.on_device_unknown(&notice),
            Ok(None) => {}
            Err(rejection) => {
                warn!(code = %rejection.code, "malformed device_unknown ignored");
                return Ok(());
            }
        }
        let envelope = match edge_protocol::validate::decode_control_envelope(bytes) {
            Ok(e) => e,
            Err(rejection) => {
                warn!(code = %rejection.code, "malformed control ignored");
                return Ok(());
            }
        };
        let id = envelope.control_id;
        // Staleness per table and control family (reliability.md §1); `wire` is per device,
        // under its own key.
        let family = envelope.control_kind.family();
        let table = if envelope.control_kind == ControlKind::SetWireOptions {
            crate::wire_options::WIRE_FAMILY_KEY.to_owned()
        } else {
            envelope.source_table.clone().unwrap_or_default()
        };
        let facts = ControlFacts {
            handled: self.state.is_control_handled(&id.to_string())?,
            last_applied_issued_at: match family {
                Some(f) => control_store::last_applied(&self.state, &table, f)?,
                None => None,
            },
        };
        let key = self
            .settings
            .security
            .signed_control
            .then(|| {
                self.settings
                    .security
                    .control_key
                    .as_ref()
                    .map(|k| k.expose())
            })
            .flatten();
        let decision = if self.settings.security.signed_control && key.is_none() {
            ControlDecision::Reject("signed_control is on but no control key is configured".into())
        } else {
            decide(&envelope, key, &facts)
        };
        let kind = envelope.control_kind.as_str();
        // Counted where it is decided; an applied control counts inside its effect's
        // transaction (below, and `on_unblock`), the others here before the (non-)ack.
        match decision.outcome() {
            Some(outcome) if outcome != crate::control::outcome::APPLIED => {
                self.count_control(kind, outcome)?
            }
            _ => {}
        }
        let action = match decision {
            ControlDecision::Reject(why) => {
                warn!(control_id = %id, kind = envelope.control_kind.as_str(), reason = %why, "control rejected (not acked)");
                return Ok(());
            }
            ControlDecision::AckOnly(why) => {
                info!(control_id = %id, reason = %why, "control acked, not executed");
                if envelope.control_kind == ControlKind::UnblockTable {
                    // A redelivered skip is acked with its entry again.
                    self.ack_unblock(id, client)?;
                } else {
                    self.ack_control(id, client)?;
                }
                return Ok(());
            }
            ControlDecision::Execute(ControlAction::Unblock {
                table,
                action,
                commit_seq,
            }) => {
                // Effect and handled id in one transaction, then the ack (reliability.md §1).
                return self.on_unblock(
                    id,
                    envelope.issued_at.as_deref(),
                    &table,
                    action,
                    commit_seq,
                    client,
                );
            }
            ControlDecision::Execute(action) => action,
        };
        // 1. Effect + handled id + the family's issued_at: one transaction (reliability §1).
        let issued_at = envelope.issued_at.clone();
        self.in_state_transaction(|d| {
            d.save_control_effect(&action)?;
            d.state.mark_control_handled(&id.to_string(), unix_ms())?;
            d.state
                .bump_counter(&control_counter(crate::control::outcome::APPLIED), kind, 1)?;
            if let (Some(family), Some(issued)) = (family, &issued_at) {
                if !table.is_empty() {
                    control_store::set_last_applied(&d.state, &table, family, issued)?;
                }
            }
            Ok(())
        })?;
        // 2. Only now the ack.
        self.ack_control(id, client)?;
        // Crash window of reliability.md §1: the ack is out (the effect is saved before it).
        fail::fail_point!("agent-control-after-ack");
        // 3. The in-memory side, re-derived from state.db after a restart.
        self.enact_control(&action)
    }

    /// The durable part of a control's effect. Runs inside the transaction that also records
    /// the handled id: no transaction of its own, no I/O but state.db.
    fn save_control_effect(&mut self, action: &ControlAction) -> Result<(), DaemonError> {
        match action {
            ControlAction::Pause {
                table,
                watermark,
                issued_at,
            } => self
                .state
                .set_paused(table, *watermark, issued_at.as_deref())?,
            ControlAction::Resume { table, .. } => self.state.clear_paused(table)?,
            // The spill's phase lives in memory (a restart asks for a new URL, and a finalized
            // batch's `url_request` is answered with its `upload_result` again).
            ControlAction::UrlGrant { .. } | ControlAction::UploadResult { .. } => {}
            // `on_unblock` saves it with the handled id in its own transaction.
            ControlAction::Unblock { .. } => {}
            ControlAction::SetWireOptions { options } => {
                crate::wire_options::store(&self.state, options)?
            }
        }
        Ok(())
    }

    /// The in-memory part of a control's effect, after the commit and the ack.
    fn enact_control(&mut self, action: &ControlAction) -> Result<(), DaemonError> {
        match action {
            ControlAction::Pause {
                table, watermark, ..
            } => {
                info!(%table, watermark, "pause_lineage: table paused, journaling continues");
                self.reader.pause(table);
            }
            ControlAction::Resume {
                table, watermark, ..
            } => {
                let acked = self.state.last_acked(table)?;
                info!(%table, watermark, acked, "resume_lineage: publishing again from the acknowledged cursor");
                self.reader.resume(table);
            }
            ControlAction::UrlGrant {
                table,
                batch_id,
                url,
                expires_at,
                segment_kind,
            } => self.on_grant(table, *batch_id, *segment_kind, url, expires_at.as_deref())?,
            ControlAction::UploadResult {
                table,
                batch_id,
                failure,
            } => self.on_upload_result(table, *batch_id, failure.as_ref())?,
            // Handled in `on_unblock`, before the ack.
            ControlAction::Unblock { .. } => {}
            ControlAction::SetWireOptions { options } => {
                info!(features = ?options.features, "set_wire_options applied");
            }
        }
        Ok(())
    }

    /// `device_unknown` (reliability.md §7): unsigned, so it only reaches `status` and the log.
    fn on_device_unknown(&mut self, notice: &DeviceUnknown) -> Result<(), DaemonError> {
        warn!(reason = %notice.reason, issued_at = %notice.issued_at,
            "the cloud does not know this device (device_unknown): check its registration and root_topic; publishing goes on");
        control_store::set_device_unknown(&self.state, notice)?;
        Ok(())
    }

    /// Counts a control that was not applied (`controls_<outcome>`, kind in `table_name`),
    /// committed without an fsync: a counter lost at a power cut is no reason for one fsync
    /// per forged or re-sent control.
    fn count_control(&mut self, kind: &str, outcome: &str) -> Result<(), DaemonError> {
        self.state.set_commit_fsync(false)?;
        let counted = self.state.bump_counter(&control_counter(outcome), kind, 1);
        self.state.set_commit_fsync(true)?;
        Ok(counted?)
    }

    fn ack_control(&mut self, id: Uuid, client: &Publisher) -> Result<(), DaemonError> {
        let payload = serde_json::to_vec(&IngestAck::new(id))?;
        match client.publish(TopicKind::IngestAck, payload) {
            Ok(()) => self.outbox.handed_other(),
            Err(e) => {
                warn!(control_id = %id, error = %e, "could not queue the control ack; the cloud will re-send")
            }
        }
        Ok(())
    }
}
