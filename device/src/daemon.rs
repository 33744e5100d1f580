//! The daemon: one `select!` loop wiring capture, outbox, controls and the MQTT connection.
//!
//! Each turn handles whichever came first — shutdown, an MQTT event, or the next timer — then
//! does the cheap bookkeeping that is due: schema-drift poll, snapshot chunk, retention, a
//! journal read into new outbox batches (every `flush_interval`, shortly after a change in
//! low-latency mode, or continuously while a backlog drains), and handing waiting batches to the
//! MQTT client within `max_inflight` and the token bucket. All SQLite work is short and local;
//! the MQTT client is only ever given work with [`Publisher::publish`], which never waits, so
//! the loop never waits on the network.
//!
//! Durability order (why a crash at any point loses nothing):
//! 1. a batch's id and bytes go into `state.db`'s outbox before its first publish;
//! 2. on PUBACK the table's cursor moves and acknowledged journal rows are deleted, then the
//!    outbox row is removed — a crash in between re-sends an identical batch, which the cloud
//!    deduplicates by `batch_id`;
//! 3. after a restart every outbox row is published again before new journal entries.
//!
//! Which journal entries are read next (read positions, catch-up, the resume rule) is decided
//! by the sans-IO [`Reader`](crate::reader::Reader); the daemon performs the reads it plans.
//!
//! Spill (protocol §7, see `spill`): a change too large for one message is fixed as a spill
//! entry (id + zstd JSON Lines object) and its table reads nothing further until `finalize` is
//! acknowledged; then the table catches up from the spilled change.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use edge_protocol::control::{IngestAck, IngestRequest, RequestKind, SegmentKind};
use edge_protocol::schema::SchemaObservation;
use edge_protocol::telemetry::{TelemetryBatch, TelemetryRow};
use edge_protocol::topic::{topic, TopicKind};
use thiserror::Error;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::batcher::{build_batches, SchemaAnnouncer};
use crate::capture::journal::DELETE_CHUNK_ROWS;
use crate::capture::{Capture, CaptureError, SystemIds};
use crate::control::{decide, ControlAction, ControlDecision, ControlFacts};
use crate::mqtt::{self, MqttError, MqttEvent, Publisher};
use crate::outbox::{Acked, BatchKind, Outbox, Tracked};
use crate::outbox_store;
use crate::rate::{RateLimits, TokenBucket};
use crate::reader::{cut_at_spill, Reader};
use crate::settings::Settings;
use crate::spill::{self, Due, PutError, Spill, SpillError};
use crate::state::{counter, StateDb, StateError};

/// How often drift/snapshots are checked at most (when flush_interval is longer).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often local retention is enforced (a scan of the journal).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(30);
/// MQTT events handled in one loop turn at most (after the one that woke it): enough to take a
/// whole in-flight window of PUBACKs at once, bounded so timers and flushes still get turns.
pub const EVENT_BURST: usize = 256;
/// How long shutdown waits for in-flight acknowledgements.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Batch(#[from] crate::batcher::BatchError),
    #[error(transparent)]
    Spill(#[from] SpillError),
}

fn now_rfc3339() -> String {
    edge_protocol::timestamp::format(time::OffsetDateTime::now_utc()).unwrap_or_default()
}

fn unix_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// The publisher's state.
#[derive(Debug)]
pub struct Daemon {
    settings: Settings,
    state: StateDb,
    capture: Capture,
    outbox: Outbox,
    announcer: SchemaAnnouncer,
    bucket: TokenBucket,
    epoch: Uuid,
    reader: Reader,
    /// Spills in progress by batch id; their tables read nothing further until they finish.
    spills: BTreeMap<Uuid, Spill>,
    spill_results: tokio::sync::mpsc::UnboundedSender<(Uuid, Result<(), PutError>)>,
    spill_results_rx: Option<tokio::sync::mpsc::UnboundedReceiver<(Uuid, Result<(), PutError>)>>,
    root: String,
    data_version: i64,
    /// Batches PUBACKed in this loop turn, applied together by [`Daemon::commit_acks`].
    acked: Vec<Tracked>,
}

impl Daemon {
    /// Opens state.db and source.db (installing triggers) and loads the outbox.
    pub fn open(settings: Settings) -> Result<Daemon, DaemonError> {
        let r = &settings.replication;
        if let Some(dir) = r.state_db_path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StateError::Corrupt {
                    what: "state directory",
                    value: format!("{}: {e}", dir.display()),
                })?;
            }
        }
        let mut state = StateDb::open(&r.state_db_path)?;
        outbox_store::init(&state)?;
        let (capture, report) = Capture::open(
            &r.source_db_path,
            settings.capture_config(),
            &mut state,
            &mut SystemIds,
        )?;
        if let Some(reason) = &report.new_epoch {
            info!(%reason, "journal epoch started");
        }
        let epoch = state.journal_epoch()?.unwrap_or_else(Uuid::now_v7);
        let restored = outbox_store::restore(&state, epoch, Instant::now())?;
        if !restored.outbox.is_empty() {
            info!(
                batches = restored.outbox.len(),
                "re-publishing batches fixed before the restart"
            );
        }
        if !restored.spills.is_empty() {
            info!(
                spills = restored.spills.len(),
                "resuming spill uploads fixed before the restart"
            );
        }
        let reader = Reader::new(
            restored.fixed,
            capture.catalog().rows.keys().cloned(),
            state.paused_tables()?,
        );
        let limits = r.rate_limit.then_some(RateLimits {
            publishes_per_sec: r.max_publishes_per_sec,
            bytes_per_sec: r.max_bytes_per_sec,
        });
        let root = settings.connection.root_topic.clone();
        let (spill_tx, spill_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Daemon {
            bucket: TokenBucket::new(limits, Instant::now()),
            settings,
            state,
            capture,
            outbox: restored.outbox,
            announcer: SchemaAnnouncer::default(),
            epoch,
            reader,
            spills: restored.spills,
            spill_results: spill_tx,
            spill_results_rx: Some(spill_rx),
            root,
            data_version: 0,
            acked: Vec::new(),
        })
    }

    /// Runs until `shutdown` completes, then drains in-flight acks briefly and disconnects.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let c = &self.settings.connection;
        let tls = if c.server.tls {
            Some(mqtt::tls_config(c)?)
        } else {
            None
        };
        let options = mqtt::options(
            c,
            tls,
            self.settings.replication.max_payload_bytes,
            self.settings.replication.max_inflight,
        );
        let mut conn = mqtt::spawn(
            options,
            topic(&self.root, TopicKind::IngestControl),
            c.reconnect_min,
            c.reconnect_max,
        )?;
        let client = Publisher::new(conn.client.clone(), self.root.clone());
        let r = self.settings.replication.clone();
        let poll_every = if r.low_latency {
            r.low_latency_debounce.min(POLL_INTERVAL)
        } else {
            r.flush_interval.min(POLL_INTERVAL)
        };
        let start = Instant::now();
        let mut next_flush = start;
        let mut next_poll = start;
        let mut next_retention = start;
        let mut rate_wake: Option<Instant> = None;
        let mut spill_wake: Option<Instant> = None;
        // `run` consumes the daemon, so the receiver is always there; the fallback (a closed
        // channel, whose branch `select!` disables) only avoids an unwrap.
        let mut spill_results = self
            .spill_results_rx
            .take()
            .unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1);
        tokio::pin!(shutdown);
        info!(device = %self.settings.connection.device_name, root = %self.root, "agent running");
        loop {
            let mut wake = next_flush.min(next_poll);
            if let Some(w) = rate_wake {
                wake = wake.min(w);
            }
            if let Some(w) = spill_wake {
                wake = wake.min(w);
            }
            if self.reader.has_backlog() && self.has_room() {
                wake = Instant::now();
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                ev = conn.events.recv() => match ev {
                    Some(ev) => {
                        self.on_mqtt(ev, &client)?;
                        // Whatever else already arrived joins this turn, so a burst of
                        // PUBACKs shares one state.db transaction and one journal deletion.
                        for _ in 0..EVENT_BURST {
                            let Ok(ev) = conn.events.try_recv() else { break };
                            self.on_mqtt(ev, &client)?;
                        }
                    }
                    None => break,
                },
                Some((id, result)) = spill_results.recv() => self.on_put_result(id, result),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            self.commit_acks()?;
            let now = Instant::now();
            if now >= next_poll {
                next_poll = now + poll_every;
                self.poll_capture()?;
                if self.snapshot_step()? {
                    self.reader.note_backlog();
                }
                if r.low_latency {
                    let v: i64 = self
                        .capture
                        .conn()
                        .query_row("PRAGMA data_version", [], |row| row.get(0))
                        .map_err(CaptureError::from)?;
                    if v != self.data_version {
                        self.data_version = v;
                        next_flush = next_flush.min(now + r.low_latency_debounce);
                    }
                }
            }
            if now >= next_retention {
                next_retention = now + RETENTION_INTERVAL;
                self.capture.enforce_retention(
                    &self.state,
                    r.capture.local_retention_bytes,
                    DELETE_CHUNK_ROWS,
                )?;
            }
            let due = now >= next_flush;
            if (due || self.reader.has_backlog()) && self.has_room() {
                self.flush(&client)?;
                if due {
                    next_flush = now + r.flush_interval;
                }
            }
            rate_wake = self.pump(&client)?;
            spill_wake = self.pump_spills(&client)?;
        }
        info!(
            inflight = self.outbox.inflight(),
            "shutting down: waiting briefly for in-flight acks"
        );
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.outbox.inflight() > 0 && self.outbox.is_connected() {
            match tokio::time::timeout_at(deadline, conn.events.recv()).await {
                Ok(Some(ev)) => {
                    self.on_mqtt(ev, &client)?;
                    self.commit_acks()?;
                }
                _ => break,
            }
        }
        let _ = client.disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = conn.events.recv().await {
                if matches!(ev, MqttEvent::Disconnected { .. }) {
                    break;
                }
            }
        })
        .await;
        conn.abort();
        info!("stopped");
        Ok(())
    }

    /// Runs `f` in one state.db transaction (`BEGIN IMMEDIATE` … `COMMIT`), rolled back as a
    /// whole when `f` fails.
    fn in_state_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Daemon) -> Result<T, DaemonError>,
    ) -> Result<T, DaemonError> {
        self.state
            .conn()
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(StateError::from)?;
        match f(self) {
            Ok(value) => {
                self.state
                    .conn()
                    .execute_batch("COMMIT")
                    .map_err(StateError::from)?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.state.conn().execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn has_room(&self) -> bool {
        self.outbox.waiting() < self.settings.replication.max_inflight.max(4)
    }

    /// One capture poll: a replaced file, schema drift, a reset journal.
    fn poll_capture(&mut self) -> Result<(), DaemonError> {
        let report = self.capture.poll(&mut self.state, &mut SystemIds)?;
        if report.new_epoch.is_some() {
            self.epoch = self.state.journal_epoch()?.unwrap_or(self.epoch);
            self.reader.new_epoch();
        }
        Ok(())
    }

    /// Reads the journal into new fixed batches, first catching up with a schema change that
    /// happened since the last poll (see [`CaptureError::SchemaChanged`]).
    fn flush(&mut self, client: &Publisher) -> Result<(), DaemonError> {
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

    fn snapshot_step(&mut self) -> Result<bool, DaemonError> {
        let tables = self.capture.tables_needing_snapshot(&self.state)?;
        let Some(table) = tables.into_iter().find(|t| !self.reader.is_paused(t)) else {
            return Ok(false);
        };
        let step = self.capture.snapshot_step(
            &self.state,
            &table,
            crate::capture::snapshot::DEFAULT_CHUNK_ROWS,
        )?;
        Ok(step.rows > 0 || !step.done)
    }

    /// Reads the journal (and telemetry tables) into new fixed batches.
    fn flush_once(&mut self, client: &Publisher) -> Result<(), DaemonError> {
        let max_payload = self.settings.replication.max_payload_bytes;
        let blocked = self.spill_tables();
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
        // One state.db transaction for everything fixed by this flush (one fsync, not one per
        // batch); rolled back as a whole on error so nothing half-fixed is left behind.
        let mut new = Vec::new();
        let mut new_spills = Vec::new();
        self.in_state_transaction(|d| {
            d.fix_all(client, reads, max_payload, &mut new, &mut new_spills)
        })?;
        for t in new {
            debug!(table = %t.table, batch_id = %t.batch_id, bytes = t.bytes, "batch fixed");
            self.outbox.add(t);
        }
        for s in new_spills {
            self.spills.insert(s.batch_id, s);
        }
        Ok(())
    }

    /// Tables with a spill in progress.
    fn spill_tables(&self) -> BTreeSet<String> {
        self.spills.values().map(|s| s.table.clone()).collect()
    }

    fn fix_all(
        &mut self,
        client: &Publisher,
        reads: Vec<crate::capture::journal::PendingRead>,
        max_payload: usize,
        new: &mut Vec<Tracked>,
        new_spills: &mut Vec<Spill>,
    ) -> Result<(), DaemonError> {
        let mut blocked = self.spill_tables();
        for read in reads {
            for mut group in read.groups {
                if blocked.contains(&group.table) {
                    continue;
                }
                self.reader.drop_fixed(&mut group);
                if group.changes.is_empty() {
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
                    let object = spill::encode_json(std::slice::from_ref(&change.json))?;
                    let id = Uuid::now_v7();
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
                            .with_header(Some(self.epoch), Some(group.schema_hash.clone())),
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
                table,
                batch_seq,
                payload,
            )?;
            self.state.set_telemetry_progress(table, &progress)?;
            return Ok(Some(tracked));
        }
    }

    /// Hands waiting batches to the client; returns when the token bucket allows the next one.
    fn pump(&mut self, client: &Publisher) -> Result<Option<Instant>, DaemonError> {
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

    fn on_mqtt(&mut self, ev: MqttEvent, client: &Publisher) -> Result<(), DaemonError> {
        match ev {
            MqttEvent::Connected { session_present } => {
                self.outbox.on_connack(session_present);
                if !session_present {
                    let now = Instant::now();
                    for s in self.spills.values_mut() {
                        s.on_session_lost(now);
                    }
                }
            }
            MqttEvent::Disconnected {
                fresh_pending,
                error,
            } => {
                debug!(%error, fresh_pending, "disconnected");
                self.outbox.on_disconnect(fresh_pending);
            }
            MqttEvent::OutgoingPublish(pkid) => self.outbox.on_outgoing_publish(pkid),
            MqttEvent::AwaitAck(pkid) => self.outbox.on_await_ack(pkid),
            MqttEvent::PubAck(pkid) => match self.outbox.on_puback(pkid) {
                // Applied at the end of the turn, together with the turn's other PUBACKs.
                Some(Acked::Batch(t)) => self.acked.push(t),
                Some(Acked::Finalize(id)) => {
                    // A duplicate finalize (re-sent after a lost session) finds nothing left.
                    if let Some(s) = self.spills.remove(&id) {
                        info!(table = %s.table, batch_id = %id, commit_seq = s.commit_seq,
                            "spill finalized: the table reads on");
                        let epoch = outbox_store::epoch(&self.state, id)?.unwrap_or(self.epoch);
                        self.ack_rows(epoch, &s.table, s.commit_seq)?;
                        outbox_store::remove(&self.state, id)?;
                        outbox_store::set_last_ack_at(&self.state, &now_rfc3339())?;
                        if !self.spills.values().any(|o| o.table == s.table) {
                            self.reader.unblock(s.table);
                        }
                    }
                }
                None => {}
            },
            MqttEvent::Control(bytes) => self.on_control(&bytes, client)?,
        }
        Ok(())
    }

    /// Applies the PUBACKs collected this turn: every cursor move, outbox removal and the
    /// `last_ack_at` stamp in one state.db transaction (one commit per turn instead of three
    /// per batch), then one journal deletion per table up to its new cursor.
    ///
    /// Durability order is kept: cursor and outbox row change atomically (a crash leaves either
    /// the batch still fixed — re-sent identically — or the cursor past it), and journal rows
    /// are deleted only after the cursor that covers them is committed; a crash before the
    /// deletion leaves rows the reader skips and the next ack deletes.
    fn commit_acks(&mut self) -> Result<(), DaemonError> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let acked = std::mem::take(&mut self.acked);
        let moved = self.in_state_transaction(|d| d.record_acks(&acked))?;
        for table in moved {
            self.capture
                .delete_acked(&self.state, &table, DELETE_CHUNK_ROWS)?;
        }
        Ok(())
    }

    /// The state.db part of [`Daemon::commit_acks`]; returns the tables whose cursor moved.
    fn record_acks(&mut self, acked: &[Tracked]) -> Result<BTreeSet<String>, DaemonError> {
        let mut moved = BTreeSet::new();
        for t in acked {
            if t.kind == BatchKind::Rows {
                // See `ack_rows`: a batch of an earlier epoch leaves the cursor alone.
                if self
                    .state
                    .set_last_acked_in_epoch(&t.table, t.last_seq, t.epoch)?
                {
                    moved.insert(t.table.clone());
                } else {
                    info!(table = %t.table, epoch = %t.epoch, current = %self.epoch, up_to = t.last_seq,
                        "acknowledged batch of an earlier journal epoch: cursor left alone");
                }
            }
            outbox_store::remove(&self.state, t.batch_id)?;
        }
        outbox_store::set_last_ack_at(&self.state, &now_rfc3339())?;
        Ok(moved)
    }

    /// Moves `table`'s cursor after a PUBACK — unless the batch was fixed in an earlier journal
    /// epoch: its seqs restarted since, so moving the new epoch's cursor to them could skip
    /// (and delete) new entries. The cloud has the old batch anyway; nothing else to do.
    fn ack_rows(&mut self, epoch: Uuid, table: &str, up_to: i64) -> Result<(), DaemonError> {
        let acked =
            self.capture
                .ack_in_epoch(&self.state, epoch, table, up_to, DELETE_CHUNK_ROWS)?;
        if acked.is_none() {
            info!(%table, %epoch, current = %self.epoch, up_to,
                "acknowledged batch of an earlier journal epoch: cursor left alone");
        }
        Ok(())
    }

    fn on_control(&mut self, bytes: &[u8], client: &Publisher) -> Result<(), DaemonError> {
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
                self.ack_control(id, client)?;
                return Ok(());
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

    fn on_grant(
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

    fn on_put_result(&mut self, id: Uuid, result: Result<(), PutError>) {
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
    fn pump_spills(&mut self, client: &Publisher) -> Result<Option<Instant>, DaemonError> {
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
