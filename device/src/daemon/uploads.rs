//! Spill uploads (protocol §7) as the loop drives them: `url_grant` → PUT off the loop →
//! `url_request` / `finalize` when due.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use edge_protocol::control::{IngestRequest, RequestKind, SegmentKind};
use edge_protocol::topic::TopicKind;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{Daemon, DaemonError};
use crate::mqtt::Publisher;
use crate::outbox_store;
use crate::spill::{self, Due, PutError};

impl Daemon {
    /// Tables with a spill in progress.
    pub(super) fn spill_tables(&self) -> BTreeSet<String> {
        self.spills.values().map(|s| s.table.clone()).collect()
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
