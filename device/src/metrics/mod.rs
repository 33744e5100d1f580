//! The agent's sync-health metrics (observability.md §3): one owner for their names, what each
//! sample is, and where it comes from.
//!
//! - [`collect::samples`] builds every sample from the files alone (state.db + source.db), for
//!   both `edge-agent status --json` (`"metrics"`) and `GET /metrics`, so the two always agree;
//!   the endpoint adds the one in-memory fact, `edge_agent_mqtt_connected`.
//! - [`marker`]: when the agent first saw each table's oldest unacknowledged journal entry (the
//!   journal carries no time), kept in state.db by the daemon's poll.
//! - [`serve`]: the `[observability] metrics_listen` listener and the Prometheus text encoding
//!   (prometheus-client), on a thread of its own with its own read-only connections: a scrape
//!   never waits for, or holds up, the daemon's loop.
//!
//! Counters are state.db `counters` rows (see [`crate::state::counter`]), so they survive
//! restarts; gauges are read fresh at each scrape.

pub mod collect;
pub mod marker;
pub mod serve;

use thiserror::Error;

pub use collect::samples;

/// Why the samples could not be read.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("source.db: {0}")]
    Source(#[from] rusqlite::Error),
}

/// Family names (observability.md §3: a contract, exactly as written).
pub mod name {
    pub const JOURNAL_ROWS: &str = "edge_agent_journal_rows";
    pub const JOURNAL_BYTES: &str = "edge_agent_journal_bytes";
    pub const OLDEST_PENDING_AGE: &str = "edge_agent_oldest_pending_age_seconds";
    pub const LAST_ACKED_COMMIT_SEQ: &str = "edge_agent_last_acked_commit_seq";
    pub const UNACKED_BATCHES: &str = "edge_agent_unacked_batches";
    pub const TABLE_PAUSED: &str = "edge_agent_table_paused";
    pub const TABLE_NEEDS_SNAPSHOT: &str = "edge_agent_table_needs_snapshot";
    pub const TABLE_BLOCKED: &str = "edge_agent_table_blocked";
    pub const LAST_ACK_TIMESTAMP: &str = "edge_agent_last_ack_timestamp_seconds";
    pub const MQTT_CONNECTED: &str = "edge_agent_mqtt_connected";
    pub const INFO: &str = "edge_agent_info";
    pub const BATCHES_ACKED: &str = "edge_agent_batches_acked_total";
    pub const ROWS_ACKED: &str = "edge_agent_rows_acked_total";
    pub const RETENTION_DROPPED: &str = "edge_agent_retention_dropped_entries_total";
    pub const CONTROLS: &str = "edge_agent_controls_total";
}

/// Gauge or counter (a counter's name ends in `_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One family: name, `# HELP` text, type.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Gauge,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Counter,
    }
}

/// Every family the endpoint declares from start-up, in exposition order.
pub const FAMILIES: &[Family] = &[
    gauge(
        name::JOURNAL_ROWS,
        "Journal entries not yet acknowledged, per table",
    ),
    gauge(
        name::JOURNAL_BYTES,
        "Bytes of the journal entries not yet acknowledged (as edge-agent status counts them)",
    ),
    gauge(
        name::OLDEST_PENDING_AGE,
        "Seconds since the agent first saw the oldest unacknowledged entry of the table; 0 if none",
    ),
    gauge(
        name::LAST_ACKED_COMMIT_SEQ,
        "Last acknowledged commit_seq of the table (telemetry tables: batch_seq)",
    ),
    gauge(
        name::UNACKED_BATCHES,
        "Outbox batches awaiting their PUBACK",
    ),
    gauge(name::TABLE_PAUSED, "1 while the cloud has the table paused"),
    gauge(
        name::TABLE_NEEDS_SNAPSHOT,
        "1 while the table awaits a snapshot",
    ),
    gauge(
        name::TABLE_BLOCKED,
        "1 while the device blocked the table itself (reason: why; none when not blocked)",
    ),
    gauge(
        name::LAST_ACK_TIMESTAMP,
        "Unix time of the last acknowledgement; 0 if none yet",
    ),
    gauge(name::MQTT_CONNECTED, "1 while connected to the broker"),
    gauge(
        name::INFO,
        "The device, agent version and journal epoch; always 1",
    ),
    counter(
        name::BATCHES_ACKED,
        "Batches acknowledged by the broker (spills: committed by the cloud)",
    ),
    counter(name::ROWS_ACKED, "Rows of the acknowledged batches"),
    counter(
        name::RETENTION_DROPPED,
        "Journal entries local retention dropped to stay under local_retention_bytes",
    ),
    counter(
        name::CONTROLS,
        "Controls received, by kind and outcome (applied, duplicate, bad_signature, stale)",
    ),
];

/// One sample: a family's name, its labels in order, its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub name: &'static str,
    #[serde(serialize_with = "labels_as_object")]
    pub labels: Vec<(&'static str, String)>,
    pub value: i64,
}

impl Sample {
    fn new(name: &'static str, labels: Vec<(&'static str, String)>, value: i64) -> Sample {
        Sample {
            name,
            labels,
            value,
        }
    }
}

/// `status --json` shows labels as an object: `{"table":"a"}`.
fn labels_as_object<S: serde::Serializer>(
    labels: &[(&'static str, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(labels.len()))?;
    for (k, v) in labels {
        map.serialize_entry(k, v)?;
    }
    map.end()
}
