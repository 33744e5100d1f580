//! The fleet's gauges (observability.md §2): what the runner's collector loop and the sweep
//! Lambda read from PostgreSQL every `--metrics-interval` / minute, as plain data. The
//! metrics registry (`edge_functions::metrics`) turns a [`FleetGauges`] into the gauge
//! families; this module only reads.
//!
//! Labels are values the database holds (project ids, statuses, pause reasons, control kinds);
//! the closed-enum mapping (`none` for no pause reason) is applied by the registry.

use uuid::Uuid;

/// Every gauge of §2 at one instant (`generated_at`), over every project.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetGauges {
    /// `edge_lineages`: count per (project_id, status, pause_reason).
    pub lineages: Vec<LineageCount>,
    /// `edge_staged_rows` / `edge_staged_bytes` per project.
    pub staged: Vec<ProjectStaged>,
    /// `edge_mirror_lag_seconds_max` per project (§4 lag, worst lineage).
    pub mirror_lag_seconds_max: Vec<(Uuid, i64)>,
    /// `edge_devices_silent` per project: devices whose newest batch (over lineages not paused
    /// by the device) is between `silent_after` and 24 h old. Every project with a device has
    /// an entry (0 included), so an alarm sees the value drop back.
    pub devices_silent: Vec<(Uuid, i64)>,
    /// `edge_schema_reviews_open` per (project_id, scope device/registry, status).
    pub schema_reviews_open: Vec<ReviewCount>,
    /// `edge_replay_intents_open` (pending + running) per project.
    pub replay_intents_open: Vec<(Uuid, i64)>,
    /// `edge_replay_intents_failed` per project.
    pub replay_intents_failed: Vec<(Uuid, i64)>,
    /// `edge_controls_pending` per (project_id, kind): unacked controls.
    pub controls_pending: Vec<ControlCount>,
    /// `edge_dead_letters_open`: unresolved dead letters.
    pub dead_letters_open: i64,
    /// The worst `lineage_cap` lineages in the §4 order (`read::fleet`), for the capped
    /// `edge_lineage_*` series.
    pub worst_lineages: Vec<LineageHealth>,
    /// `edge_metrics_lineage_series_dropped`: lineages over the cap.
    pub lineage_series_dropped: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageCount {
    pub project_id: Uuid,
    /// `active` / `paused`.
    pub status: String,
    /// The lineage's pause reason; `None` is exported as `none`.
    pub pause_reason: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectStaged {
    pub project_id: Uuid,
    pub rows: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewCount {
    pub project_id: Uuid,
    /// `device` or `registry`.
    pub scope: String,
    /// `queued` or `in_review`.
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlCount {
    pub project_id: Uuid,
    pub kind: String,
    pub count: i64,
}

/// One lineage's series (`edge_lineage_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageHealth {
    pub project_id: Uuid,
    /// The device's name (the `device` label).
    pub device: String,
    pub source_table: String,
    pub staged_rows: i64,
    pub staged_bytes: i64,
    /// §4 lag in whole seconds.
    pub mirror_lag_seconds: i64,
    /// `last_batch_received_at` as Unix seconds; `None` before the first batch (the series is
    /// then not exported).
    pub last_batch_timestamp_seconds: Option<i64>,
    /// `edge_lineage_paused`: 1 when the lineage is paused, with `reason` = its pause reason
    /// (`None` → `none`, also for an active lineage).
    pub paused: bool,
    pub pause_reason: Option<String>,
}
