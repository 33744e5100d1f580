//! Controls from the cloud (protocol §6): decided by `control`, acked first, then a pause, a
//! resume or a spill's URL grant.

use edge_protocol::control::{ControlKind, IngestAck};
use edge_protocol::topic::TopicKind;
use tracing::{info, warn};
use uuid::Uuid;

use super::{unix_ms, Daemon, DaemonError};
use crate::control::{decide, ControlAction, ControlDecision, ControlFacts};
use crate::mqtt::Publisher;
use crate::outbox_store;

impl Daemon {
    pub(super) fn on_control(
        &mut self,
        bytes: &[u8],
        client: &Publisher,
    ) -> Result<(), DaemonError> {
        let envelope = match edge_protocol::validate::decode_control_envelope(bytes) {
            Ok(e) => e,
            Err(rejection) => {
                warn!(code = %rejection.code, "malformed control ignored");
                return Ok(());
            }
        };
        let id = envelope.control_id;
        let table = envelope.source_table.clone().unwrap_or_default();
        let facts = ControlFacts {
            handled: self.state.is_control_handled(&id.to_string())?,
            last_applied_issued_at: outbox_store::last_applied(&self.state, &table)?,
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
        // Ack first (protocol §6), then act; the handled id makes a redelivery ack-only.
        self.ack_control(id, client)?;
        match &action {
            ControlAction::Pause {
                table,
                watermark,
                issued_at,
            } => {
                info!(%table, watermark, "pause_lineage: table paused, journaling continues");
                self.state
                    .set_paused(table, *watermark, issued_at.as_deref())?;
                self.reader.pause(table);
            }
            ControlAction::Resume {
                table, watermark, ..
            } => {
                let acked = self.state.last_acked(table)?;
                info!(%table, watermark, acked, "resume_lineage: publishing again from the acknowledged cursor");
                self.state.clear_paused(table)?;
                self.reader.resume(table);
            }
            ControlAction::UrlGrant {
                table,
                batch_id,
                url,
                expires_at,
                segment_kind,
            } => self.on_grant(table, *batch_id, *segment_kind, url, expires_at.as_deref())?,
            // Handled above, before the ack.
            ControlAction::Unblock { .. } => {}
        }
        self.state
            .mark_control_handled(&id.to_string(), unix_ms())?;
        if let Some(issued) = &envelope.issued_at {
            if !table.is_empty() {
                outbox_store::set_last_applied(&self.state, &table, issued)?;
            }
        }
        Ok(())
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
