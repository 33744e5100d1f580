//! The drain, the hot path: journal read → batches fixed into the outbox → handed to the
//! client within `max_inflight` and the token bucket. Tables behind a spill or blocked by the
//! device ([`crate::blocks`], see `daemon/blocked.rs`) are not read.

use std::time::{Duration, Instant};

use edge_protocol::schema::SchemaObservation;
use edge_protocol::telemetry::{TelemetryBatch, TelemetryRow};
use edge_protocol::topic::TopicKind;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::{now_rfc3339, Daemon, DaemonError};
use crate::batcher::build_batches;
use crate::capture::journal::{PendingRead, Undecodable};
use crate::capture::CaptureError;
use crate::mqtt::Publisher;
use crate::outbox::{BatchKind, Tracked};
use crate::outbox_store;
use crate::reader::cut_at_spill;
use crate::spill::{self, Spill};
use crate::state::counter;

impl Daemon {
    /// Reads the journal into new fixed batches, first catching up with a schema change that
    /// happened since the last poll (see [`CaptureError::SchemaChanged`]).
    pub(super) fn flush(&mut self, client: &Publisher) -> Result<(), DaemonError> {
        // A schema change lands between poll and read at most a few times in a row (each
        // retry re-fingerprints first); the bound only guards against a pathological loop.
        for _ in 0..3 {
            let catch_up = self.reader.catch_up_checkpoint();
            match self.flush_once(client) {
                Err(DaemonError::Capture(CaptureError::SchemaChanged)) => {
                    // Nothing was fixed: restore what the aborted read had consumed.
                    self.reader.restore_catch_up(catch_up);
                    self.poll_capture()?;
                }
                other => return other,
            }
        }
        self.reader.note_backlog();
        Ok(())
    }

    /// Reads the journal (and telemetry tables) into new fixed batches.
    fn flush_once(&mut self, client: &Publisher) -> Result<(), DaemonError> {
        let max_payload = self.settings.replication.max_payload_bytes;
        let blocked = self.held_tables()?;
        let mut reads = Vec::new();
        for table in self.reader.catch_up_tables(&blocked) {
            let acked = self.state.last_acked(&table)?;
            let catalog = &self.capture.catalog().rows;
            let Some(plan) = self.reader.catch_up_read(&table, acked, catalog.keys()) else {
                continue;
            };
            let mut read = self.capture.read_pending(&self.state, &plan.options)?;
            self.reader.catch_up_done(&plan, &mut read);
            reads.push(read);
        }
        let read = self
            .capture
            .read_pending(&self.state, &self.reader.global_read(&blocked))?;
        self.reader.global_done(&read);
        reads.push(read);
        // An entry the reader cannot decode blocks only its table (reliability.md §6): the
        // entries of the table before it are fixed as usual, nothing after it is read until an
        // operator retries or skips it, and every other table reads on.
        let undecodable: Vec<Undecodable> = reads
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.undecodable))
            .collect();
        // One state.db transaction for everything fixed by this flush (one fsync, not one per
        // batch); rolled back as a whole on error so nothing half-fixed is left behind.
        let mut new = Vec::new();
        let mut new_spills = Vec::new();
        let newly_blocked = self.in_state_transaction(|d| {
            d.fix_all(client, reads, max_payload, &mut new, &mut new_spills)?;
            d.block_undecodable(&undecodable)
        })?;
        for table in newly_blocked {
            self.announce_block(&table, client)?;
        }
        for t in new {
            debug!(table = %t.table, batch_id = %t.batch_id, bytes = t.bytes, "batch fixed");
            self.outbox.add(t);
        }
        for s in new_spills {
            self.spills.insert(s.batch_id, s);
        }
        Ok(())
    }

    fn fix_all(
        &mut self,
        client: &Publisher,
        reads: Vec<PendingRead>,
        max_payload: usize,
        new: &mut Vec<Tracked>,
        new_spills: &mut Vec<Spill>,
    ) -> Result<(), DaemonError> {
        let mut blocked = self.held_tables()?;
        for read in reads {
            for mut group in read.groups {
                if blocked.contains(&group.table) {
                    continue;
                }
                self.reader.drop_fixed(&mut group);
                // An end-marker group (edge-policies §5) has no changes but is a batch.
                if group.changes.is_empty() && group.end_marker_seq.is_none() {
                    continue;
                }
                let with_schema = self.announcer.needs(&group.table, &group.schema_hash);
                let built = build_batches(
                    &mut group,
                    self.epoch,
                    with_schema,
                    max_payload,
                    &mut Uuid::now_v7,
                )?;
                if with_schema {
                    self.announcer.record(&group.table, &group.schema_hash);
                    let obs = SchemaObservation::new(group.schema_columns.clone(), now_rfc3339());
                    let payload = serde_json::to_vec(&obs)?;
                    if self.outbox.is_connected()
                        && client.publish(TopicKind::SchemaObserve, payload).is_ok()
                    {
                        self.outbox.handed_other();
                    }
                }
                let (batches, spilled) = cut_at_spill(built);
                for b in batches {
                    let t = outbox_store::fix_rows(&self.state, self.epoch, b)?;
                    self.reader.mark_fixed(&t.table, t.last_seq);
                    new.push(t);
                }
                if let Some(change) = spilled {
                    if let Err(e) = spill::check_line(&change.json) {
                        // Never uploaded only to be refused (reliability §2): the table holds
                        // here, the row stays in the journal, an operator decides.
                        error!(table = %group.table, commit_seq = change.commit_seq,
                            reason = crate::blocks::SPILL_ROW_TOO_LARGE, error = %e,
                            "row over the cloud's per-line limit: table blocked, nothing deleted");
                        let detail = e.to_string();
                        crate::blocks::block(
                            &self.state,
                            &crate::blocks::NewBlock {
                                table: &group.table,
                                reason: crate::blocks::SPILL_ROW_TOO_LARGE,
                                commit_seq: change.commit_seq,
                                detail: Some(&detail),
                                entry: Some(change.json.as_slice()),
                                at_ms: super::unix_ms(),
                            },
                        )?;
                        blocked.insert(group.table.clone());
                        let mut held = Spill::new(
                            Uuid::now_v7(),
                            group.table.clone(),
                            change.commit_seq,
                            Instant::now(),
                        );
                        held.phase = spill::Phase::Blocked;
                        new_spills.push(held);
                        continue;
                    }
                    let object = spill::encode_json(std::slice::from_ref(&change.json))?;
                    let id = Uuid::now_v7();
                    let object_bytes = object.len();
                    info!(table = %group.table, commit_seq = change.commit_seq, batch_id = %id,
                        object_bytes = object.len(),
                        "row larger than max_payload_bytes: sending it as a spill upload");
                    outbox_store::fix_spill(
                        &self.state,
                        self.epoch,
                        id,
                        &group.table,
                        change.commit_seq,
                        object,
                    )?;
                    self.reader.mark_fixed(&group.table, change.commit_seq);
                    blocked.insert(group.table.clone());
                    new_spills.push(
                        Spill::new(id, group.table.clone(), change.commit_seq, Instant::now())
                            .with_header(Some(self.epoch), Some(group.schema_hash.clone()))
                            .with_length(object_bytes),
                    );
                }
            }
        }
        let telemetry: Vec<String> = self.capture.catalog().telemetry.keys().cloned().collect();
        for table in telemetry {
            if self.reader.is_paused(&table) || self.outbox.has_telemetry_for(&table) {
                continue;
            }
            if let Some(t) = self.fix_telemetry(&table, max_payload)? {
                new.push(t);
            }
        }
        Ok(())
    }

    fn fix_telemetry(
        &mut self,
        table: &str,
        max_payload: usize,
    ) -> Result<Option<Tracked>, DaemonError> {
        let Some(info) = self.capture.catalog().telemetry.get(table).cloned() else {
            return Ok(None);
        };
        let mut progress = self.state.telemetry_progress(table)?;
        let read = self.capture.read_telemetry(
            table,
            progress.cursor.as_ref(),
            edge_protocol::limits::MAX_ROWS_PER_BATCH,
        )?;
        for s in &read.skipped {
            warn!(table, rowid = s.rowid, reason = %s.reason, "telemetry row skipped");
        }
        if !read.skipped.is_empty() {
            self.state.bump_counter(
                counter::TELEMETRY_SKIPPED,
                table,
                read.skipped.len() as i64,
            )?;
        }
        if read.records.is_empty() {
            if let Some(c) = read.next_cursor {
                progress.cursor = Some(c);
                self.state.set_telemetry_progress(table, &progress)?;
            }
            return Ok(None);
        }
        let mut records = read.records;
        let batch_seq = progress.batch_seq + 1;
        let id = Uuid::now_v7();
        loop {
            let rows = records
                .iter()
                .map(|r| TelemetryRow {
                    ts: r.ts.clone(),
                    row_id: Some(r.rowid.to_string()),
                    fields: r.fields.clone(),
                })
                .collect();
            let batch = TelemetryBatch::new(id, batch_seq, table, info.schema_hash.clone(), rows);
            let payload = serde_json::to_vec(&batch)?;
            if payload.len() > max_payload && records.len() > 1 {
                let keep = records.len() / 2;
                records.truncate(keep);
                continue;
            }
            let Some(last) = records.last() else {
                return Ok(None);
            };
            progress.batch_seq = batch_seq;
            progress.cursor = Some(last.cursor.clone());
            let tracked = outbox_store::fix_telemetry(
                &self.state,
                self.epoch,
                id,
                (table, batch_seq),
                records.len(),
                payload,
            )?;
            self.state.set_telemetry_progress(table, &progress)?;
            return Ok(Some(tracked));
        }
    }

    /// Hands waiting batches to the client; returns when the token bucket allows the next one.
    pub(super) fn pump(&mut self, client: &Publisher) -> Result<Option<Instant>, DaemonError> {
        let max = self.settings.replication.max_inflight;
        loop {
            let paused = self.reader.paused();
            let Some(id) = self.outbox.next_to_send(max, &|t| paused.contains(t)) else {
                return Ok(None);
            };
            let Some(t) = self.outbox.get(&id).cloned() else {
                return Ok(None);
            };
            let now = Instant::now();
            if let Err(wait) = self.bucket.try_take(now, t.bytes) {
                return Ok(Some(now + wait));
            }
            let Some(payload) = outbox_store::payload(&self.state, id)? else {
                warn!(batch_id = %id, "outbox row vanished; dropping the in-memory entry");
                self.outbox.unhand_last(id);
                continue;
            };
            let kind = match t.kind {
                BatchKind::Rows => TopicKind::RowsBatch,
                BatchKind::Telemetry => TopicKind::TelemetryBatch,
            };
            match client.publish(kind, payload) {
                Ok(()) => {
                    if t.attempts > 0 {
                        info!(batch_id = %id, table = %t.table, "re-publishing batch (same id and bytes)");
                    }
                    self.outbox.handed(id);
                }
                Err(_) => return Ok(Some(now + Duration::from_millis(5))),
            }
        }
    }
}
