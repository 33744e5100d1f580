//! `edge-agent` — the gateway daemon.
//!
//! Captures every change of an application's SQLite database with triggers into a journal,
//! batches it per the wire contract in [`edge_protocol`] and publishes it over MQTT with mTLS.
//! Nothing in the application's write path waits on the network.
//!
//! # Layout
//! - `capture/` — discovery, trigger SQL (pure), journal access, fingerprints, snapshots
//! - `state` — state.db: cursors, epoch, outbox, batch_seq, pauses, handled controls
//! - `outbox` — sans-IO publish state machine (pending → inflight → acked)
//! - `mqtt` — rumqttc + rustls mTLS, the only networked module
//! - `daemon` — wiring, the one select! loop, shutdown
//!
//! Filled by the two edge-agent issues.

pub use edge_protocol as protocol;
