//! A [`FleetGauges`] snapshot as gauge series (observability.md §2): names, labels (`none` for
//! no pause reason, control kinds through their closed set) and values. One mapping, used by
//! the registry ([`super::CloudMetrics::set_gauges`]) and by the sweep's EMF lines
//! ([`super::emf::gauge_lines`]).

use edge_cloud_core::metrics::{control_kind_label, gauge, NONE};
use edge_cloud_store::health::FleetGauges;

/// One gauge sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: i64,
}

fn s(name: &'static str, labels: Vec<(&'static str, String)>, value: i64) -> Series {
    Series {
        name,
        labels,
        value,
    }
}

/// The series of `g`. With `cap`, at most that many lineages get `edge_lineage_*` series (the
/// rest count toward `edge_metrics_lineage_series_dropped`); without, the snapshot's
/// `worst_lineages` are taken as the collector capped them.
pub fn series(g: &FleetGauges, cap: Option<usize>) -> Vec<Series> {
    let mut out = Vec::new();
    let project = |id: &uuid::Uuid| ("project_id", id.to_string());
    for l in &g.lineages {
        out.push(s(
            gauge::LINEAGES,
            vec![
                project(&l.project_id),
                ("status", l.status.clone()),
                (
                    "pause_reason",
                    l.pause_reason.clone().unwrap_or_else(|| NONE.to_owned()),
                ),
            ],
            l.count,
        ));
    }
    for p in &g.staged {
        out.push(s(gauge::STAGED_ROWS, vec![project(&p.project_id)], p.rows));
        out.push(s(
            gauge::STAGED_BYTES,
            vec![project(&p.project_id)],
            p.bytes,
        ));
    }
    let per_project = [
        (gauge::MIRROR_LAG_SECONDS_MAX, &g.mirror_lag_seconds_max),
        (gauge::DEVICES_SILENT, &g.devices_silent),
        (gauge::REPLAY_INTENTS_OPEN, &g.replay_intents_open),
        (gauge::REPLAY_INTENTS_FAILED, &g.replay_intents_failed),
    ];
    for (name, values) in per_project {
        for (id, v) in values {
            out.push(s(name, vec![project(id)], *v));
        }
    }
    for r in &g.schema_reviews_open {
        out.push(s(
            gauge::SCHEMA_REVIEWS_OPEN,
            vec![
                project(&r.project_id),
                ("scope", r.scope.clone()),
                ("status", r.status.clone()),
            ],
            r.count,
        ));
    }
    for c in &g.controls_pending {
        out.push(s(
            gauge::CONTROLS_PENDING,
            vec![
                project(&c.project_id),
                ("kind", control_kind_label(&c.kind).to_owned()),
            ],
            c.count,
        ));
    }
    out.push(s(gauge::DEAD_LETTERS_OPEN, Vec::new(), g.dead_letters_open));
    let kept = cap.map_or(g.worst_lineages.len(), |c| c.min(g.worst_lineages.len()));
    let over = i64::try_from(g.worst_lineages.len() - kept).unwrap_or(i64::MAX);
    for l in &g.worst_lineages[..kept] {
        let labels = vec![
            project(&l.project_id),
            ("device", l.device.clone()),
            ("source_table", l.source_table.clone()),
        ];
        out.push(s(gauge::LINEAGE_STAGED_ROWS, labels.clone(), l.staged_rows));
        out.push(s(
            gauge::LINEAGE_STAGED_BYTES,
            labels.clone(),
            l.staged_bytes,
        ));
        out.push(s(
            gauge::LINEAGE_MIRROR_LAG_SECONDS,
            labels.clone(),
            l.mirror_lag_seconds,
        ));
        if let Some(ts) = l.last_batch_timestamp_seconds {
            out.push(s(
                gauge::LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS,
                labels.clone(),
                ts,
            ));
        }
        let mut paused = labels;
        paused.push((
            "reason",
            l.pause_reason.clone().unwrap_or_else(|| NONE.to_owned()),
        ));
        out.push(s(gauge::LINEAGE_PAUSED, paused, i64::from(l.paused)));
    }
    out.push(s(
        gauge::LINEAGE_SERIES_DROPPED,
        Vec::new(),
        g.lineage_series_dropped.saturating_add(over),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_cloud_store::health::{LineageCount, LineageHealth};
    use uuid::Uuid;

    fn lineage(n: usize) -> LineageHealth {
        LineageHealth {
            project_id: Uuid::nil(),
            device: format!("gw-{n}"),
            source_table: "t".into(),
            staged_rows: 1,
            staged_bytes: 2,
            mirror_lag_seconds: 3,
            last_batch_timestamp_seconds: None,
            paused: n == 0,
            pause_reason: (n == 0).then(|| "circuit_breaker".to_owned()),
        }
    }

    #[test]
    fn none_for_no_pause_reason_and_the_cap_counts_what_it_drops() {
        let g = FleetGauges {
            lineages: vec![LineageCount {
                project_id: Uuid::nil(),
                status: "active".into(),
                pause_reason: None,
                count: 4,
            }],
            worst_lineages: (0..3).map(lineage).collect(),
            lineage_series_dropped: 5,
            ..FleetGauges::default()
        };
        let all = series(&g, Some(2));
        let first = &all[0];
        assert_eq!(first.name, gauge::LINEAGES);
        assert!(first.labels.contains(&("pause_reason", "none".to_owned())));
        let paused: Vec<_> = all
            .iter()
            .filter(|s| s.name == gauge::LINEAGE_PAUSED)
            .collect();
        assert_eq!(paused.len(), 2);
        assert_eq!(paused[0].value, 1);
        assert!(paused[1].labels.contains(&("reason", "none".to_owned())));
        assert!(!all
            .iter()
            .any(|s| s.name == gauge::LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS));
        let dropped = all
            .iter()
            .find(|s| s.name == gauge::LINEAGE_SERIES_DROPPED)
            .map(|s| s.value);
        assert_eq!(dropped, Some(6));
    }
}
