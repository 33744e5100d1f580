//! The cloud's metric contract (observability.md §2), as data: the family names exactly as the
//! spec writes them, the histogram's buckets, and every label value as a closed set — so a
//! label can never carry an unbounded value (a rejection code the list does not know is
//! `other`). The registry (`edge_functions::metrics`) and the EMF encoder ([`crate::emf`]) use
//! only these; the duration flags' parser ([`parse_duration`]) lives here too.

use std::time::Duration;

use edge_protocol::topic::TopicKind;

use crate::intake::StagingReason;

/// Counter names as exposed (prometheus-client appends `_total` itself: the registry strips
/// it before registering).
pub mod counter {
    pub const BATCHES: &str = "edge_batches_total";
    pub const BATCHES_REJECTED: &str = "edge_batches_rejected_total";
    pub const STALE_JOURNAL_EPOCHS: &str = "edge_stale_journal_epochs_total";
    pub const TENANT_FIELDS_STRIPPED: &str = "edge_tenant_fields_stripped_total";
    pub const ROWS_MATERIALIZED: &str = "edge_rows_materialized_total";
    pub const ROWS_STAGED: &str = "edge_rows_staged_total";
    pub const MATERIALIZATION_FAILURES: &str = "edge_materialization_failures_total";
    pub const CONTROLS_PUBLISHED: &str = "edge_controls_published_total";
    pub const DEAD_LETTERS: &str = "edge_dead_letters_total";

    /// Every counter of §2.
    pub const ALL: [&str; 9] = [
        BATCHES,
        BATCHES_REJECTED,
        STALE_JOURNAL_EPOCHS,
        TENANT_FIELDS_STRIPPED,
        ROWS_MATERIALIZED,
        ROWS_STAGED,
        MATERIALIZATION_FAILURES,
        CONTROLS_PUBLISHED,
        DEAD_LETTERS,
    ];
}

/// The one histogram: per envelope (ingest), chunk (replay), run (sweep), request (api).
pub const HANDLER_DURATION: &str = "edge_handler_duration_seconds";

/// `edge_handler_duration_seconds`'s buckets, exactly as §2 lists them.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Gauge names.
pub mod gauge {
    pub const LINEAGES: &str = "edge_lineages";
    pub const STAGED_ROWS: &str = "edge_staged_rows";
    pub const STAGED_BYTES: &str = "edge_staged_bytes";
    pub const MIRROR_LAG_SECONDS_MAX: &str = "edge_mirror_lag_seconds_max";
    pub const DEVICES_SILENT: &str = "edge_devices_silent";
    pub const SCHEMA_REVIEWS_OPEN: &str = "edge_schema_reviews_open";
    pub const REPLAY_INTENTS_OPEN: &str = "edge_replay_intents_open";
    pub const REPLAY_INTENTS_FAILED: &str = "edge_replay_intents_failed";
    pub const CONTROLS_PENDING: &str = "edge_controls_pending";
    pub const DEAD_LETTERS_OPEN: &str = "edge_dead_letters_open";
    pub const LINEAGE_STAGED_ROWS: &str = "edge_lineage_staged_rows";
    pub const LINEAGE_STAGED_BYTES: &str = "edge_lineage_staged_bytes";
    pub const LINEAGE_MIRROR_LAG_SECONDS: &str = "edge_lineage_mirror_lag_seconds";
    pub const LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS: &str =
        "edge_lineage_last_batch_timestamp_seconds";
    pub const LINEAGE_PAUSED: &str = "edge_lineage_paused";
    pub const LINEAGE_SERIES_DROPPED: &str = "edge_metrics_lineage_series_dropped";

    /// Every gauge of §2.
    pub const ALL: [&str; 16] = [
        LINEAGES,
        STAGED_ROWS,
        STAGED_BYTES,
        MIRROR_LAG_SECONDS_MAX,
        DEVICES_SILENT,
        SCHEMA_REVIEWS_OPEN,
        REPLAY_INTENTS_OPEN,
        REPLAY_INTENTS_FAILED,
        CONTROLS_PENDING,
        DEAD_LETTERS_OPEN,
        LINEAGE_STAGED_ROWS,
        LINEAGE_STAGED_BYTES,
        LINEAGE_MIRROR_LAG_SECONDS,
        LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS,
        LINEAGE_PAUSED,
        LINEAGE_SERIES_DROPPED,
    ];
}

/// The pause reason / review status label of "nothing" (§2: `none`).
pub const NONE: &str = "none";
/// The label value of anything outside a closed set.
pub const OTHER: &str = "other";

/// `kind` of a batch: rows, telemetry or spill (the ledger's kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    Rows,
    Telemetry,
    Spill,
}

impl BatchKind {
    pub const ALL: [BatchKind; 3] = [BatchKind::Rows, BatchKind::Telemetry, BatchKind::Spill];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchKind::Rows => "rows",
            BatchKind::Telemetry => "telemetry",
            BatchKind::Spill => "spill",
        }
    }

    /// The kind of what arrived on a topic: the ledger records a payload of any other device
    /// topic (a schema observation that failed validation, …) under `rows`.
    pub fn of_topic(kind: TopicKind) -> BatchKind {
        match kind {
            TopicKind::TelemetryBatch => BatchKind::Telemetry,
            TopicKind::IngestRequest => BatchKind::Spill,
            _ => BatchKind::Rows,
        }
    }

    /// A lineage's `kind` column (`rows` / `telemetry`).
    pub fn of_lineage(kind: &str) -> BatchKind {
        if kind == "telemetry" {
            BatchKind::Telemetry
        } else {
            BatchKind::Rows
        }
    }
}

/// `status` of `edge_batches_total`: the ledger outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Materialized,
    Staged,
    Duplicate,
    Rejected,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Materialized => "materialized",
            BatchStatus::Staged => "staged",
            BatchStatus::Duplicate => "duplicate",
            BatchStatus::Rejected => "rejected",
        }
    }
}

/// `path` of `edge_rows_materialized_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowPath {
    Live,
    Replay,
}

impl RowPath {
    pub fn as_str(self) -> &'static str {
        match self {
            RowPath::Live => "live",
            RowPath::Replay => "replay",
        }
    }
}

/// `class` of `edge_materialization_failures_total`: a write PostgreSQL refused for good
/// (rows staged as misfits) or one that failed for now (the batch or chunk is retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    Permanent,
    Transient,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Permanent => "permanent",
            FailureClass::Transient => "transient",
        }
    }
}

/// `attempt` of `edge_controls_published_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attempt {
    First,
    Retry,
}

impl Attempt {
    /// From the control's attempt count including this one (1 = the first publish).
    pub fn of_attempts(attempts: i32) -> Attempt {
        if attempts <= 1 {
            Attempt::First
        } else {
            Attempt::Retry
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::First => "first",
            Attempt::Retry => "retry",
        }
    }
}

/// `transport` of `edge_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Mqtt,
    Sqs,
}

impl Transport {
    /// A dead letter's `transport` column; `None` for anything but a message transport
    /// (operator skips are resolved at once and are not "parked").
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "mqtt" => Some(Transport::Mqtt),
            "sqs" => Some(Transport::Sqs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Sqs => "sqs",
        }
    }
}

/// `handler` of `edge_handler_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    Ingest,
    Replay,
    Sweep,
    Api,
}

impl Handler {
    pub const ALL: [Handler; 4] = [
        Handler::Ingest,
        Handler::Replay,
        Handler::Sweep,
        Handler::Api,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Ingest => "ingest",
            Handler::Replay => "replay",
            Handler::Sweep => "sweep",
            Handler::Api => "api",
        }
    }
}

/// `reason` of `edge_rows_staged_total` ([`StagingReason::as_str`] are the spec's values).
pub fn staging_label(reason: StagingReason) -> &'static str {
    reason.as_str()
}

/// Rows staged by one batch (or chunk), per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagedByReason {
    pub schema_review: i64,
    pub lineage_paused: i64,
    pub materialization_failed: i64,
}

impl StagedByReason {
    pub fn add(&mut self, reason: StagingReason, rows: i64) {
        match reason {
            StagingReason::SchemaReview => self.schema_review += rows,
            StagingReason::LineagePaused => self.lineage_paused += rows,
            StagingReason::MaterializationFailed => self.materialization_failed += rows,
        }
    }

    pub fn merge(&mut self, other: StagedByReason) {
        self.schema_review += other.schema_review;
        self.lineage_paused += other.lineage_paused;
        self.materialization_failed += other.materialization_failed;
    }

    /// (reason, rows) for every reason.
    pub fn iter(&self) -> [(StagingReason, i64); 3] {
        [
            (StagingReason::SchemaReview, self.schema_review),
            (StagingReason::LineagePaused, self.lineage_paused),
            (
                StagingReason::MaterializationFailed,
                self.materialization_failed,
            ),
        ]
    }
}

/// Every `code` label value: protocol §9 (`edge_protocol::validate::RejectionCode`), the
/// wire-compression codes of edge-policies §4, the spill outcomes of reliability.md / protocol
/// §7 (`crate::spill::SpillCode`), and [`OTHER`].
pub const CODES: [&str; 37] = [
    "envelope_unstripped_tenant_fields",
    "invalid_format_version",
    "unsupported_format_version",
    "invalid_batch_id",
    "batch_too_many_rows",
    "row_count_mismatch",
    "cursor_timestamp_mismatch",
    "invalid_row_id",
    "invalid_number_encoding",
    "duplicate_batch_seq",
    "stale_batch_seq",
    "malformed_json",
    "payload_too_large",
    "invalid_schema_hash",
    "invalid_row",
    "unknown_device",
    "invalid_identifier",
    "invalid_snapshot",
    "unsupported_content_encoding",
    "invalid_compressed_payload",
    "decompressed_too_large",
    "spill_not_configured",
    "spill_schema_unknown",
    "spill_epoch_unknown",
    "spill_not_requested",
    "spill_request_mismatch",
    "spill_object_missing",
    "spill_object_too_large",
    "spill_object_corrupt",
    "spill_line_too_long",
    "spill_invalid_line",
    "spill_object_empty",
    "spill_out_of_order",
    "spill_store_unavailable",
    "spill_too_many_open_uploads",
    "spill_row_too_large",
    OTHER,
];

/// The `code` label of a rejection code: itself when [`CODES`] knows it, else [`OTHER`].
pub fn code_label(code: &str) -> &'static str {
    CODES.iter().find(|c| **c == code).copied().unwrap_or(OTHER)
}

/// The `kind` label of a published control: the signed kinds of protocol §6 and edge-policies,
/// the unsigned `device_unknown`, else [`OTHER`].
pub fn control_kind_label(kind: &str) -> &'static str {
    const KINDS: [&str; 8] = [
        "pause_lineage",
        "resume_lineage",
        "url_grant",
        "upload_result",
        "set_wire_options",
        "unblock_table",
        "resnapshot_table",
        "device_unknown",
    ];
    KINDS.iter().find(|k| **k == kind).copied().unwrap_or(OTHER)
}

/// A `--metrics-interval`-style duration: a whole number and a unit `s`, `m` or `h` (`15s`,
/// `15m`, `1h`), more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number and a unit, e.g. 15s, 15m, 1h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if seconds == 0 {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::SpillCode;
    use edge_protocol::validate::RejectionCode;

    #[test]
    fn every_protocol_and_spill_code_is_a_label_and_unknown_is_other() {
        for c in RejectionCode::ALL {
            assert_eq!(code_label(c.as_str()), c.as_str());
        }
        for c in [
            SpillCode::NotConfigured,
            SpillCode::SchemaUnknown,
            SpillCode::EpochUnknown,
            SpillCode::NotRequested,
            SpillCode::RequestMismatch,
            SpillCode::ObjectMissing,
            SpillCode::ObjectTooLarge,
            SpillCode::ObjectCorrupt,
            SpillCode::LineTooLong,
            SpillCode::InvalidLine,
            SpillCode::ObjectEmpty,
            SpillCode::OutOfOrder,
            SpillCode::StoreUnavailable,
            SpillCode::TooManyOpenUploads,
        ] {
            assert_eq!(code_label(c.as_str()), c.as_str());
        }
        assert_eq!(code_label("no_such_code"), "other");
        assert_eq!(control_kind_label("url_grant"), "url_grant");
        assert_eq!(control_kind_label("x"), "other");
    }

    #[test]
    fn durations_parse_and_bad_ones_say_why() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "15", "s", "0s", "1d", "-1s", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_attempts() {
        assert_eq!(
            BatchKind::of_topic(TopicKind::IngestRequest),
            BatchKind::Spill
        );
        assert_eq!(
            BatchKind::of_topic(TopicKind::TelemetryBatch),
            BatchKind::Telemetry
        );
        assert_eq!(BatchKind::of_topic(TopicKind::RowsBatch), BatchKind::Rows);
        assert_eq!(Attempt::of_attempts(1), Attempt::First);
        assert_eq!(Attempt::of_attempts(2), Attempt::Retry);
        let mut s = StagedByReason::default();
        s.add(StagingReason::LineagePaused, 3);
        s.merge(s);
        assert_eq!(s.lineage_paused, 6);
    }
}
