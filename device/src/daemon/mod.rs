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
//! 1. a batch's id and bytes (and, for telemetry, its `batch_seq` and cursor) go into
//!    `state.db`'s outbox in one transaction committed with an fsync (`synchronous=FULL`)
//!    before its first publish, so a power cut never rebuilds a published `batch_seq` under a
//!    new id;
//! 2. on PUBACK the table's cursor moves and acknowledged journal rows are deleted, then the
//!    outbox row is removed — a crash in between re-sends an identical batch, which the cloud
//!    deduplicates by `batch_id`;
//! 3. after a restart every outbox row is published again before new journal entries;
//! 4. a control's effect and handled id are committed (fsynced) before its ack (`controls`).
//!
//! Which journal entries are read next (read positions, catch-up, the resume rule) is decided
//! by the sans-IO [`Reader`]; the daemon performs the reads it plans.
//!
//! Spill (protocol §7, see `spill`): a change too large for one message is fixed as a spill
//! entry (id + zstd JSON Lines object) and its table reads nothing further until the cloud's
//! `upload_result` says `committed` (reliability §2); then the cursor move and the outbox
//! removal commit in one state.db transaction and the table catches up from the spilled change.
//!
//! Rooms: this file holds the loop, start-up and the MQTT event handlers; `drain` the hot path
//! (journal read → batches fixed into the outbox → handed to the client), `controls` the
//! control handlers, `uploads` the spill uploads, `blocked` the tables the device blocked
//! itself (an undecodable entry: only that table stops; `unblock_table`), `observe` what the
//! metrics need from the loop (the oldest-pending marker, the connection flag).

mod blocked;
mod controls;
mod drain;
mod observe;
mod supervise;
mod uploads;

pub use supervise::run_supervised;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use edge_protocol::topic::{topic, TopicKind};
use thiserror::Error;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::batcher::SchemaAnnouncer;
use crate::capture::journal::DELETE_CHUNK_ROWS;
use crate::capture::{Capture, CaptureError, SystemIds};
use crate::control_store;
use crate::mqtt::{self, MqttError, MqttEvent, Publisher};
use crate::outbox::{Acked, BatchKind, Outbox, Tracked};
use crate::outbox_store;
use crate::rate::{RateLimits, TokenBucket};
use crate::reader::Reader;
use crate::settings::Settings;
use crate::spill::{PutError, Spill, SpillError};
use crate::state::{StateDb, StateError};

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
    /// The metrics endpoint's thread could not be started.
    #[error("config key `observability.metrics_listen`: cannot start the metrics thread: {0}")]
    Metrics(std::io::Error),
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
    /// `edge_agent_mqtt_connected`, read by the metrics endpoint's thread (`metrics::serve`).
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        control_store::init(&state)?;
        crate::metrics::marker::init(&state)?;
        if !settings.security.signed_control {
            warn!(
                "security.signed_control = false (security.allow_unsigned_control = true): \
                controls are NOT authenticated; anyone who can publish on this device's control \
                topic can pause its tables. Dev only."
            );
        }
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
            connected: Default::default(),
        })
    }

    /// Shares `flag` as the daemon's connection state (the metrics endpoint reads it).
    pub fn with_connected_flag(
        mut self,
        flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Daemon {
        self.connected = flag;
        self
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
                self.observe_pending()?;
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
        while (self.outbox.inflight() > 0 || self.finalizing()) && self.outbox.is_connected() {
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
        self.set_connected(false);
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

    /// [`Daemon::in_state_transaction`] committed without an fsync
    /// ([`StateDb::set_commit_fsync`]); FULL again afterwards, whatever `f` returned.
    fn relaxed_state_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Daemon) -> Result<T, DaemonError>,
    ) -> Result<T, DaemonError> {
        self.state.set_commit_fsync(false)?;
        let result = self.in_state_transaction(f);
        self.state.set_commit_fsync(true)?;
        result
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

    fn snapshot_step(&mut self) -> Result<bool, DaemonError> {
        let tables = self.capture.tables_needing_snapshot(&self.state)?;
        let Some(table) = tables.into_iter().find(|t| !self.reader.is_paused(t)) else {
            return Ok(false);
        };
        let chunk_rows = self.capture.config().snapshot_chunk_rows;
        let step = self
            .capture
            .snapshot_step(&self.state, &table, chunk_rows)?;
        Ok(step.rows > 0 || !step.done)
    }

    /// The negotiation message of every connect (edge-policies §0).
    fn send_hello(&mut self, client: &Publisher) -> Result<(), DaemonError> {
        let hello = crate::wire_options::hello(&self.state)?;
        let payload = serde_json::to_vec(&hello)?;
        match client.publish(TopicKind::IngestRequest, payload) {
            Ok(()) => self.outbox.handed_other(),
            Err(e) => {
                warn!(error = %e, "could not queue the hello; sent again on the next connect")
            }
        }
        Ok(())
    }

    fn on_mqtt(&mut self, ev: MqttEvent, client: &Publisher) -> Result<(), DaemonError> {
        match ev {
            MqttEvent::Connected { session_present } => {
                self.set_connected(true);
                self.outbox.on_connack(session_present);
                self.send_hello(client)?;
                self.announce_blocks(client)?;
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
                self.set_connected(false);
                self.outbox.on_disconnect(fresh_pending);
            }
            MqttEvent::OutgoingPublish(pkid) => self.outbox.on_outgoing_publish(pkid),
            MqttEvent::AwaitAck(pkid) => self.outbox.on_await_ack(pkid),
            MqttEvent::PubAck(pkid) => match self.outbox.on_puback(pkid) {
                // Applied at the end of the turn, together with the turn's other PUBACKs.
                Some(Acked::Batch(t)) => self.acked.push(t),
                Some(Acked::Finalize(id)) => {
                    // The broker has the finalize; the rows leave the journal only on the
                    // cloud's `upload_result` committed (reliability §2).
                    fail::fail_point!("agent-finalize-acked");
                    if let Some(s) = self.spills.get_mut(&id) {
                        debug!(table = %s.table, batch_id = %id, "finalize acknowledged: waiting for its upload_result");
                        s.on_finalize_acked(Instant::now());
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
        // A full disk under state.db at this commit (the fault suite's disk-full fault hit
        // exactly here); `return` fails it with SQLITE_FULL (tests only, see `fail`).
        fail::fail_point!("agent-commit-acks-disk-full", |_| Err(DaemonError::State(
            StateError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("injected: database or disk is full".into()),
            ))
        )));
        let acked = std::mem::take(&mut self.acked);
        // No fsync for this commit (state.db is FULL otherwise): lost at a power cut, it only
        // brings the outbox rows back, re-sent with identical ids and bytes (deduplicated).
        // The journal rows deleted below are covered by the outbox rows' own bytes.
        let moved = self.relaxed_state_transaction(|d| d.record_acks(&acked))?;
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
                // The acknowledged history (scripts/chaos.sh checks every change up to here).
                info!(table = %t.table, epoch = %t.epoch, batch_id = %t.batch_id,
                    first_seq = t.first_seq, last_seq = t.last_seq, "batch acknowledged");
                // A batch of an earlier epoch leaves the cursor alone: its seqs restarted
                // since, so moving the new epoch's cursor to them could skip new entries.
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
            outbox_store::remove_acked(&self.state, t.batch_id)?;
        }
        outbox_store::set_last_ack_at(&self.state, &now_rfc3339())?;
        Ok(moved)
    }
}
