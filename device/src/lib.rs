//! `edge-agent` — the gateway daemon.
//!
//! Captures every change of an application's SQLite database with triggers into a journal,
//! batches it per the wire contract in [`edge_protocol`] and publishes it over MQTT with mTLS.
//! Nothing in the application's write path waits on the network: the triggers only append to a
//! local table inside the application's own transaction.
//!
//! The capture half (this crate's [`capture`] and [`state`]) is a library the publisher drives:
//! [`capture::Capture::open`] attaches to `source.db`, [`capture::Capture::poll`] follows schema
//! drift and file replacement each cycle, [`capture::Capture::read_pending`] yields protocol
//! [`RowChange`](edge_protocol::batch::RowChange)s grouped per table with their encoded sizes,
//! [`capture::Capture::ack`] records an acknowledgement and deletes the acknowledged journal rows.
//! Snapshots, local retention and the telemetry reader hang off the same type. See
//! `docs/capture.md` for the journal layout and the supported migrations.
//!
//! # Layout
//! - [`settings`] — TOML + `OMEGA_*` env → validated [`settings::Settings`] (errors name the key);
//!   [`settings::CaptureConfig`]: table strategies, include_columns, ts_column,
//!   snapshot_on_first_run, snapshot_chunk_rows, local_retention_bytes
//! - [`capture`] — discovery ([`capture::schema`]), trigger SQL ([`capture::triggers`], pure),
//!   identifier quoting ([`capture::ident`]), journal reading / acking ([`capture::journal`]),
//!   snapshots, marked runs and their journal markers ([`capture::snapshot`]), retention ([`capture::retention`]), telemetry reader
//!   ([`capture::telemetry`])
//! - [`state`] — state.db: epoch, instance id, cursors, schema hashes, snapshot flags, pauses,
//!   handled controls, telemetry progress, the one `meta` table; `state::counters` (what the
//!   agent counts, kept across restarts: `status` and the `_total` metrics)
//! - [`blocks`] — tables the device blocked itself (undecodable entry, row too large, upload
//!   refused): reason + `commit_seq` + the entry's bytes, the operator's retry / skip (state.db)
//! - [`reader`] — the read planner: read positions, catch-up, tables blocked by a spill (pure)
//! - [`batcher`] — journal change groups → row batches under the payload/row limits (pure)
//! - [`outbox`] — sans-IO publish state machine, pkid ↔ batch mapping across reconnects (pure);
//!   [`outbox_store`] — the outbox's state.db tables (fixed batches, `last_ack_at`) and their
//!   in-place migration
//! - [`control`] — control decisions: signature, duplicate, stale per table and family (pure);
//!   [`control_store`] — the last applied `issued_at` per table and control family, the last
//!   `device_unknown` (state.db, with its migration); [`rate`] — token bucket
//! - [`mqtt`] — rumqttc + rustls mTLS, the MQTT side, and the one [`mqtt::Publisher::publish`];
//!   [`daemon`] — the select! loop and its handlers (drain, controls, uploads), started over
//!   in-process after a storage failure (`daemon::run_supervised`)
//! - [`spill`] — protocol §7 uploads: zstd JSON Lines objects, the per-spill state machine
//!   (pure) and the blocking HTTP PUT (ureq + rustls) run off the loop
//! - [`metrics`] — the sync-health metrics (observability.md §3): the samples from state.db +
//!   source.db ([`metrics::collect`], shared by `status --json` and the endpoint), the
//!   oldest-pending marker ([`metrics::marker`]), the `GET /metrics` listener thread
//!   ([`metrics::serve`], prometheus-client text)
//! - [`status`] — the `status` and `check` commands (the source database read-only; `check` also
//!   proves this user may write it, its directory and the state directory)

pub mod batcher;
pub mod blocks;
pub mod capture;
pub mod control;
pub mod control_store;
pub mod daemon;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod outbox_store;
pub mod rate;
pub mod reader;
pub mod settings;
pub mod spill;
pub mod state;
pub mod status;
pub mod wire_options;

pub use edge_protocol as protocol;
