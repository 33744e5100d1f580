//! The fleet's gauges (observability.md §2): what the runner's collector loop and the sweep
//! Lambda read from PostgreSQL every `--metrics-interval` / minute, as plain data. The
//! metrics registry (`edge_functions::metrics`) turns a [`FleetGauges`] into the gauge
//! families; this module only reads ([`read_fleet_gauges`]: two statements per collection,
//! whatever the fleet's size).
//!
//! Labels are values the database holds (project ids, statuses, pause reasons, control kinds);
//! the closed-enum mapping (`none` for no pause reason) is applied by the registry.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

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

/// `edge_devices_silent` counts a device only while its newest batch is at most this old:
/// older than a day is a device that was retired or unplugged, not one that just stopped.
pub const SILENT_WINDOW_SQL: &str = "interval '24 hours'";

/// Every family but the capped lineage series, as one statement (one round trip per
/// collection, whatever the fleet's size): rows `(family, project_id, a, b, v1, v2, v3)`.
///
/// - `lineages`: a = status, b = pause_reason, v1 = count
/// - `project`: v1 = staged rows, v2 = staged bytes, v3 = max §4 lag (projects with lineages)
/// - `devices`: v1 = silent devices, v2 = replay intents open, v3 = failed (every project with
///   a device, 0 included, so an alarm sees the value drop back)
/// - `reviews`: a = scope (`device`/`registry`), b = state, v1 = count
/// - `controls`: a = control kind, v1 = unacked count
/// - `dead_letters`: v1 = unresolved
///
/// `$1` is generated_at, `$2` the silence threshold in seconds.
fn families_sql() -> String {
    let lag = crate::read::fleet::lag_seconds_sql("$1::timestamptz");
    format!(
        "SELECT 'lineages' AS family, l.project_id, l.status, l.pause_reason, \
                count(*)::bigint, 0::bigint, 0::bigint \
         FROM edge_table_lineages l GROUP BY l.project_id, l.status, l.pause_reason \
         UNION ALL \
         SELECT 'project', l.project_id, NULL::text, NULL::text, \
                sum(l.staged_row_count)::bigint, sum(l.staged_bytes)::bigint, max({lag}) \
         FROM edge_table_lineages l GROUP BY l.project_id \
         UNION ALL \
         SELECT 'devices', p.project_id, NULL::text, NULL::text, p.silent, \
                coalesce(r.open, 0), coalesce(r.failed, 0) \
         FROM (SELECT d.project_id, count(*) FILTER ( \
                       WHERE n.newest <= $1::timestamptz - make_interval(secs => $2::float8) \
                         AND n.newest >= $1::timestamptz - {SILENT_WINDOW_SQL})::bigint AS silent \
               FROM edge_devices d \
               LEFT JOIN (SELECT device_id, max(last_batch_received_at) AS newest \
                          FROM edge_table_lineages WHERE device_pause_reason IS NULL \
                          GROUP BY device_id) n ON n.device_id = d.device_id \
               GROUP BY d.project_id) p \
         LEFT JOIN (SELECT l.project_id, \
                       count(*) FILTER (WHERE i.status IN ('pending', 'running'))::bigint AS open, \
                       count(*) FILTER (WHERE i.status = 'failed')::bigint AS failed \
                    FROM edge_replay_intents i JOIN edge_table_lineages l ON l.id = i.lineage_id \
                    WHERE i.status IN ('pending', 'running', 'failed') \
                    GROUP BY l.project_id) r ON r.project_id = p.project_id \
         UNION ALL \
         SELECT 'reviews', l.project_id, 'device', r.state, count(*)::bigint, 0, 0 \
         FROM edge_schema_reviews r JOIN edge_table_lineages l ON l.id = r.lineage_id \
         WHERE r.state IN ('queued', 'in_review') GROUP BY l.project_id, r.state \
         UNION ALL \
         SELECT 'reviews', project_id, 'registry', state, count(*)::bigint, 0, 0 \
         FROM edge_registry_reviews WHERE state IN ('queued', 'in_review') \
         GROUP BY project_id, state \
         UNION ALL \
         SELECT 'controls', d.project_id, c.control_kind, NULL::text, count(*)::bigint, 0, 0 \
         FROM edge_pending_controls c JOIN edge_devices d ON d.device_id = c.device_id \
         WHERE c.status = 'pending' GROUP BY d.project_id, c.control_kind \
         UNION ALL \
         SELECT 'dead_letters', NULL::uuid, NULL::text, NULL::text, count(*)::bigint, 0, 0 \
         FROM edge_dead_letters WHERE resolved_at IS NULL \
         ORDER BY 1, 2, 3, 4"
    )
}

/// The worst `$2` lineages in the §4 order ([`crate::read::fleet`], the one owner of it), at
/// generated_at `$1`, with what their series need.
fn worst_lineages_sql() -> String {
    let at = "$1::timestamptz";
    format!(
        "SELECT l.project_id, d.device_name, l.source_table, l.staged_row_count, \
                l.staged_bytes, {lag}, \
                floor(extract(epoch FROM l.last_batch_received_at))::bigint, \
                l.status = 'paused', \
                CASE WHEN l.status = 'paused' THEN l.pause_reason END \
         FROM edge_table_lineages l JOIN edge_devices d ON d.device_id = l.device_id \
         ORDER BY {order} LIMIT $2",
        lag = crate::read::fleet::lag_seconds_sql(at),
        order = crate::read::fleet::worst_first_order_sql(),
    )
}

/// Every gauge of §2 over all projects at `generated_at` (cut to the whole second, as
/// `GET …/fleet-health`): two statements (the families, the
/// worst `lineage_cap` lineages). `silent_after` is `--metrics-silent-after`; a device is
/// silent when its newest batch over the lineages it has not paused itself is between
/// `silent_after` and 24 h old (a device that never sent a batch is not silent: it never
/// started). The counts of reviews and controls list the label sets that have any.
pub async fn read_fleet_gauges<C: GenericClient + Sync>(
    c: &C,
    generated_at: OffsetDateTime,
    silent_after: Duration,
    lineage_cap: usize,
) -> Result<FleetGauges, StoreError> {
    // Whole seconds, as the fleet route: the worst-first order is then exactly lag desc.
    let generated_at = crate::read::fleet::generated_at(generated_at);
    let silent_secs = silent_after.as_secs_f64();
    let rows = c
        .query_unnamed(&families_sql(), &[&generated_at, &silent_secs])
        .await?;
    let mut g = FleetGauges::default();
    let mut total_lineages: i64 = 0;
    for r in &rows {
        let family: &str = r.get(0);
        let project: Option<Uuid> = r.get(1);
        let a: Option<String> = r.get(2);
        let b: Option<String> = r.get(3);
        let (v1, v2, v3): (i64, i64, i64) = (r.get(4), r.get(5), r.get(6));
        let project_id = || {
            project
                .ok_or_else(|| StoreError::Corrupt(format!("fleet gauge {family} without project")))
        };
        match family {
            "lineages" => {
                total_lineages += v1;
                g.lineages.push(LineageCount {
                    project_id: project_id()?,
                    status: a.unwrap_or_default(),
                    pause_reason: b,
                    count: v1,
                });
            }
            "project" => {
                let project_id = project_id()?;
                g.staged.push(ProjectStaged {
                    project_id,
                    rows: v1,
                    bytes: v2,
                });
                g.mirror_lag_seconds_max.push((project_id, v3));
            }
            "devices" => {
                let project_id = project_id()?;
                g.devices_silent.push((project_id, v1));
                g.replay_intents_open.push((project_id, v2));
                g.replay_intents_failed.push((project_id, v3));
            }
            "reviews" => g.schema_reviews_open.push(ReviewCount {
                project_id: project_id()?,
                scope: a.unwrap_or_default(),
                status: b.unwrap_or_default(),
                count: v1,
            }),
            "controls" => g.controls_pending.push(ControlCount {
                project_id: project_id()?,
                kind: a.unwrap_or_default(),
                count: v1,
            }),
            "dead_letters" => g.dead_letters_open = v1,
            other => return Err(StoreError::Corrupt(format!("fleet gauge family {other}"))),
        }
    }
    let cap = i64::try_from(lineage_cap).unwrap_or(i64::MAX);
    let worst = c
        .query_unnamed(&worst_lineages_sql(), &[&generated_at, &cap])
        .await?;
    g.worst_lineages = worst
        .iter()
        .map(|r| LineageHealth {
            project_id: r.get(0),
            device: r.get(1),
            source_table: r.get(2),
            staged_rows: r.get(3),
            staged_bytes: r.get(4),
            mirror_lag_seconds: r.get(5),
            last_batch_timestamp_seconds: r.get(6),
            paused: r.get(7),
            pause_reason: r.get(8),
        })
        .collect();
    g.lineage_series_dropped = (total_lineages - cap).max(0);
    Ok(g)
}
