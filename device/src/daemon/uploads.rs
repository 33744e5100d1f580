//! Spill uploads (protocol §7) as the loop drives them: `url_grant` → PUT off the loop →
//! `url_request` / `finalize` when due → `upload_result` (reliability §2): `committed` moves
//! the cursor and removes the outbox entry in one state.db transaction, then deletes the
//! journal rows; `failed` uploads again (retryable) or blocks the table.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use edge_protocol::control::{IngestRequest, RequestKind, SegmentKind};
use edge_protocol::topic::TopicKind;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::{now_rfc3339, Daemon, DaemonError};
use crate::capture::journal::DELETE_CHUNK_ROWS;
use crate::mqtt::Publisher;
use crate::outbox_store;
use crate::spill::{self, Due, PutError};

impl Daemon {
    /// Tables with a spill in progress.
    pub(super) fn spill_tables(&self) -> BTreeSet<String> {
        self.spills.values().map(|s| s.table.clone()).collect()
    }

    /// Whether a `finalize` was handed to the client and not yet PUBACKed (shutdown waits
    /// for it, bounded, so a restart does not need to send it again).
    pub(super) fn finalizing(&self) -> bool {
        self.spills
            .values()
            .any(|s| s.phase == spill::Phase::Finalizing)
    }

    /// `upload_result` (reliability §2). `failure` is `(code, retryable)`; `None` = committed.
    pub(super) fn on_upload_result(
        &mut self,
        table: &str,
        batch_id: Uuid,
        failure: Option<&(String, bool)>,
    ) -> Result<(), DaemonError> {
        let Some(s) = self.spills.get_mut(&batch_id) else {
            info!(%table, %batch_id, "upload_result for no spill in progress (already finished?): ignored");
            return Ok(());
        };
        match failure {
            None => self.commit_spill(batch_id),
            Some((code, true)) => {
                warn!(table = %s.table, %batch_id, %code, "upload failed in the cloud (retryable): uploading again");
                s.on_result_failed(true, Instant::now());
                Ok(())
            }
            Some((code, false)) => {
                error!(table = %s.table, %batch_id, %code, commit_seq = s.commit_seq,
                    "upload refused by the cloud (not retryable): table blocked, its rows stay in the journal");
                s.on_result_failed(false, Instant::now());
                let (table, commit_seq) = (s.table.clone(), s.commit_seq);
                let reason = crate::blocks::upload_failed(code);
                crate::blocks::block(
                    &self.state,
                    &crate::blocks::NewBlock {
                        table: &table,
                        reason: &reason,
                        commit_seq,
                        detail: Some(code.as_str()),
                        entry: None,
                        at_ms: super::unix_ms(),
                    },
                )?;
                Ok(())
            }
        }
    }

    /// `committed`: the cursor passes the spilled change and the outbox entry goes, in one
    /// state.db transaction (a crash leaves both or neither); then the journal rows are deleted
    /// and the table reads on.
    fn commit_spill(&mut self, batch_id: Uuid) -> Result<(), DaemonError> {
        let Some(s) = self.spills.remove(&batch_id) else {
            return Ok(());
        };
        info!(table = %s.table, %batch_id, commit_seq = s.commit_seq,
            "spill committed by the cloud: the table reads on");
        let epoch = outbox_store::epoch(&self.state, batch_id)?.unwrap_or(self.epoch);
        let moved = self.in_state_transaction(|d| {
            let moved = d
                .state
                .set_last_acked_in_epoch(&s.table, s.commit_seq, epoch)?;
            fail::fail_point!("agent-spill-acked-before-outbox-remove");
            outbox_store::remove_acked(&d.state, batch_id)?;
            outbox_store::set_last_ack_at(&d.state, &now_rfc3339())?;
            Ok(moved)
        })?;
        if moved {
            // The acknowledged history (scripts/chaos.sh): the spilled rows leave the journal.
            info!(table = %s.table, %batch_id, last_seq = s.commit_seq, "batch acknowledged");
            self.capture
                .delete_acked(&self.state, &s.table, DELETE_CHUNK_ROWS)?;
        } else {
            info!(table = %s.table, %epoch, current = %self.epoch, up_to = s.commit_seq,
                "committed spill of an earlier journal epoch: cursor left alone");
        }
        if !self.spills.values().any(|o| o.table == s.table) {
            self.reader.unblock(s.table);
        }
        Ok(())
    }

    pub(super) fn on_grant(
        &mut self,
        table: &str,
        batch_id: Uuid,
        segment_kind: SegmentKind,
        url: &str,
        expires_at: Option<&str>,
    ) -> Result<(), DaemonError> {
        let Some(s) = self.spills.get_mut(&batch_id) else {
            info!(%table, %batch_id, "url_grant for no spill in progress (already finished?): ignored");
            return Ok(());
        };
        if segment_kind != SegmentKind::PayloadSpill {
            warn!(%table, %batch_id, kind = segment_kind.as_str(), "url_grant of an unexpected segment kind: ignored");
            return Ok(());
        }
        let expired = spill::is_expired(expires_at, time::OffsetDateTime::now_utc());
        if expired {
            warn!(%table, %batch_id, "url_grant already expired: asking again");
        }
        if !s.on_grant(expired, Instant::now()) {
            return Ok(());
        }
        let Some(object) = outbox_store::payload(&self.state, batch_id)? else {
            warn!(%batch_id, "spill object vanished from the outbox; dropping the spill");
            self.spills.remove(&batch_id);
            return Ok(());
        };
        let url = url.to_owned();
        let results = self.spill_results.clone();
        debug!(%batch_id, bytes = object.len(), "spill upload started");
        tokio::task::spawn_blocking(move || {
            let result = spill::put(&url, &object, spill::PUT_TIMEOUT);
            // The daemon may have stopped meanwhile; nothing to report to then.
            let _ = results.send((batch_id, result));
        });
        Ok(())
    }

    pub(super) fn on_put_result(&mut self, id: Uuid, result: Result<(), PutError>) {
        let Some(s) = self.spills.get_mut(&id) else {
            return;
        };
        match &result {
            Ok(()) => info!(table = %s.table, batch_id = %id, "spill object uploaded"),
            Err(e) => {
                warn!(table = %s.table, batch_id = %id, error = %e, "spill upload failed: will ask for a new URL")
            }
        }
        s.on_put(result.is_ok(), Instant::now());
    }

    /// Publishes due spill requests (`url_request`, `finalize`); returns the next wake-up.
    pub(super) fn pump_spills(
        &mut self,
        client: &Publisher,
    ) -> Result<Option<Instant>, DaemonError> {
        if !self.outbox.is_connected() {
            return Ok(None);
        }
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let ids: Vec<Uuid> = self.spills.keys().copied().collect();
        for id in ids {
            let Some(s) = self.spills.get(&id) else {
                continue;
            };
            let due = s.due(now);
            // A paused table asks for nothing new; an upload already granted completes.
            if due == Some(Due::Request) && self.reader.is_paused(&s.table) {
                continue;
            }
            let Some(due) = due else {
                if let Some(w) = s.wake_at() {
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                }
                continue;
            };
            let kind = match due {
                Due::Request => RequestKind::UrlRequest,
                Due::Finalize => RequestKind::Finalize,
            };
            let mut request =
                IngestRequest::new(kind, s.table.clone(), SegmentKind::PayloadSpill, id);
            request.journal_epoch = s.journal_epoch;
            request.schema_hash = s.schema_hash.clone();
            request.content_length = s.content_length;
            let payload = serde_json::to_vec(&request)?;
            if client.publish(TopicKind::IngestRequest, payload).is_err() {
                // Client queue full: try again shortly.
                return Ok(Some(now + Duration::from_millis(5)));
            }
            let Some(s) = self.spills.get_mut(&id) else {
                continue;
            };
            match due {
                Due::Request => {
                    debug!(table = %s.table, batch_id = %id, "url_request sent");
                    self.outbox.handed_other();
                    s.phase = spill::Phase::Requested { at: now };
                    let w = now + spill::REQUEST_RETRY;
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                }
                Due::Finalize => {
                    debug!(table = %s.table, batch_id = %id, "finalize sent");
                    self.outbox.handed_finalize(id);
                    s.phase = spill::Phase::Finalizing;
                }
            }
        }
        Ok(wake)
    }
}
