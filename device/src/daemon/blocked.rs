//! Tables the device blocked itself ([`crate::blocks`], reliability.md §2 "Blocked tables", §6):
//! blocking a table at an entry the reader cannot decode, reporting the block in a schema
//! observation (`blocked_reason`, `blocked_commit_seq`; re-sent at every connect while the block
//! lasts, and once without them when it ends), and the operator's `unblock_table` (`retry` |
//! `skip`), whose effect and handled id are committed in one state.db transaction before the
//! ack; the ack of a skip carries the dropped entry for the cloud's `skipped_by_operator` dead
//! letter.

use std::collections::BTreeSet;

use edge_protocol::control::{IngestAck, SkippedEntry, UnblockAction};
use edge_protocol::schema::SchemaObservation;
use edge_protocol::topic::TopicKind;
use tracing::{info, warn};
use uuid::Uuid;

use super::{now_rfc3339, unix_ms, Daemon, DaemonError};
use crate::blocks::{self, NewBlock, Unblock, UnblockOutcome, UNDECODABLE_JOURNAL_ENTRY};
use crate::capture::journal::Undecodable;
use crate::mqtt::Publisher;

impl Daemon {
    /// Tables that read nothing now: behind a spill upload, or blocked by the device.
    pub(super) fn held_tables(&self) -> Result<BTreeSet<String>, DaemonError> {
        let mut held = self.spill_tables();
        held.extend(blocks::tables(&self.state)?);
        Ok(held)
    }

    /// Blocks the tables of `undecodable` (inside the flush's state.db transaction); returns the
    /// tables blocked now.
    pub(super) fn block_undecodable(
        &mut self,
        undecodable: &[Undecodable],
    ) -> Result<Vec<String>, DaemonError> {
        let mut blocked = Vec::new();
        for u in undecodable {
            let new = blocks::block(
                &self.state,
                &NewBlock {
                    table: &u.table,
                    reason: UNDECODABLE_JOURNAL_ENTRY,
                    commit_seq: u.commit_seq,
                    detail: Some(&u.error),
                    entry: Some(&u.entry),
                    at_ms: unix_ms(),
                },
            )?;
            if new {
                warn!(table = %u.table, commit_seq = u.commit_seq, error = %u.error,
                    "journal entry cannot be decoded: table blocked (the other tables go on); \
                     an operator retries or skips it (edgectl lineages unblock)");
                blocked.push(u.table.clone());
            }
        }
        Ok(blocked)
    }

    /// Publishes `table`'s schema observation, with its block when it has one.
    pub(super) fn announce_block(
        &mut self,
        table: &str,
        client: &Publisher,
    ) -> Result<(), DaemonError> {
        let Some(entry) = self.capture.catalog().rows.get(table) else {
            return Ok(());
        };
        let mut obs = SchemaObservation::new(entry.table.schema.clone(), now_rfc3339());
        if let Some(b) = blocks::get(&self.state, table)? {
            obs = obs.blocked(b.reason, b.commit_seq);
        }
        let payload = serde_json::to_vec(&obs)?;
        if self.outbox.is_connected() && client.publish(TopicKind::SchemaObserve, payload).is_ok() {
            self.outbox.handed_other();
        }
        Ok(())
    }

    /// After a (re)connect: every block is reported again (observations are not retried).
    pub(super) fn announce_blocks(&mut self, client: &Publisher) -> Result<(), DaemonError> {
        for table in blocks::tables(&self.state)? {
            self.announce_block(&table, client)?;
        }
        Ok(())
    }

    /// `unblock_table`: the decision and the control's handled id in one state.db
    /// transaction, then the ack (carrying the entry on a skip), then the table reads again.
    pub(super) fn on_unblock(
        &mut self,
        control_id: Uuid,
        issued_at: Option<&str>,
        table: &str,
        action: UnblockAction,
        commit_seq: i64,
        client: &Publisher,
    ) -> Result<(), DaemonError> {
        let decision = match action {
            UnblockAction::Retry => Unblock::Retry,
            UnblockAction::Skip => Unblock::Skip { commit_seq },
        };
        let epoch = self.epoch.to_string();
        let id = control_id.to_string();
        let outcome = self.in_state_transaction(|d| {
            let outcome = blocks::unblock(&d.state, table, decision, &epoch, unix_ms())?;
            if let UnblockOutcome::Skipped(b) = &outcome {
                blocks::remember_skip_ack(&d.state, &id, b)?;
            }
            d.state.mark_control_handled(&id, unix_ms())?;
            d.state.bump_counter(
                &super::controls::control_counter(crate::control::outcome::APPLIED),
                edge_protocol::control::ControlKind::UnblockTable.as_str(),
                1,
            )?;
            if let Some(issued) = issued_at {
                crate::control_store::set_last_applied(
                    &d.state,
                    table,
                    edge_protocol::control::ControlFamily::Block,
                    issued,
                )?;
            }
            Ok(outcome)
        })?;
        match &outcome {
            UnblockOutcome::NotBlocked => {
                info!(%table, "unblock_table: the table is not blocked; nothing to do");
            }
            UnblockOutcome::SeqMismatch { blocked_seq } => {
                warn!(%table, commit_seq, blocked_seq,
                    "unblock_table skip names another entry than the blocking one; nothing done");
            }
            UnblockOutcome::Retried(b) => {
                info!(%table, commit_seq = b.commit_seq, reason = %b.reason,
                    "unblock_table retry: the table reads again from its acknowledged cursor");
            }
            UnblockOutcome::Skipped(b) => {
                warn!(%table, commit_seq = b.commit_seq, reason = %b.reason,
                    "unblock_table skip: the entry is dropped (kept by the cloud as a dead letter)");
            }
        }
        self.ack_unblock(control_id, client)?;
        if matches!(
            outcome,
            UnblockOutcome::Retried(_) | UnblockOutcome::Skipped(_)
        ) {
            self.reader.unblock(table.to_owned());
            self.announce_block(table, client)?;
        }
        Ok(())
    }

    /// Acks an `unblock_table` (first time or redelivered): a skip's ack carries its entry.
    pub(super) fn ack_unblock(
        &mut self,
        control_id: Uuid,
        client: &Publisher,
    ) -> Result<(), DaemonError> {
        let mut ack = IngestAck::new(control_id);
        if let Some(b) = blocks::skip_ack(&self.state, &control_id.to_string())? {
            ack = ack.with_skipped(SkippedEntry {
                source_table: b.table,
                commit_seq: b.commit_seq,
                entry: String::from_utf8_lossy(b.entry.as_deref().unwrap_or_default()).into_owned(),
            });
        }
        let payload = serde_json::to_vec(&ack)?;
        match client.publish(TopicKind::IngestAck, payload) {
            Ok(()) => self.outbox.handed_other(),
            Err(e) => {
                warn!(control_id = %control_id, error = %e, "could not queue the control ack; the cloud will re-send")
            }
        }
        Ok(())
    }
}
