//! The Lambdas' metrics as CloudWatch EMF lines (observability.md §1–§2; the line shape is
//! [`edge_cloud_core::emf`]'s): at the end of each invocation the counters' increments of that
//! invocation (value = increment, `Count`) and the handler durations (a value array in
//! `Seconds`: CloudWatch's percentiles replace the buckets); each minute the sweep's gauges
//! ([`gauge_lines`]). One line per label set, all metrics of that set in it.

use edge_cloud_core::emf::{lines, EmfMetric, EmfValue, Unit};
use edge_cloud_core::metrics::{gauge, Handler, HANDLER_DURATION};
use edge_cloud_store::health::FleetGauges;

use super::gauges::series;

/// At most two labels on any counter of §2, padded.
type Labels = [(&'static str, &'static str); 2];

/// The increments and durations since the last drain.
#[derive(Debug, Default)]
pub struct Tally {
    counts: Vec<(&'static str, Labels, usize, u64)>,
    durations: Vec<(Handler, Vec<f64>)>,
}

impl Tally {
    pub(super) fn add(
        &mut self,
        name: &'static str,
        labels: &[(&'static str, &'static str)],
        n: u64,
    ) {
        let mut padded: Labels = [("", ""); 2];
        let len = labels.len().min(2);
        padded[..len].copy_from_slice(&labels[..len]);
        match self
            .counts
            .iter_mut()
            .find(|(m, l, k, _)| *m == name && *l == padded && *k == len)
        {
            Some(entry) => entry.3 += n,
            None => self.counts.push((name, padded, len, n)),
        }
    }

    pub(super) fn duration(&mut self, handler: Handler, seconds: f64) {
        match self.durations.iter_mut().find(|(h, _)| *h == handler) {
            Some((_, values)) => values.push(seconds),
            None => self.durations.push((handler, vec![seconds])),
        }
    }

    /// The lines of everything tallied, at `timestamp_ms`.
    pub(super) fn lines(&self, timestamp_ms: i64) -> Vec<String> {
        let mut groups: Groups<&[(&'static str, &'static str)]> = Vec::new();
        for (name, labels, len, n) in &self.counts {
            #[allow(clippy::cast_precision_loss)]
            let metric = EmfMetric {
                name,
                unit: Unit::Count,
                value: EmfValue::One(*n as f64),
            };
            group(&mut groups, &labels[..*len], metric);
        }
        let mut out = Vec::new();
        for (dims, metrics) in &groups {
            out.extend(lines(timestamp_ms, dims, metrics));
        }
        for (handler, values) in &self.durations {
            out.extend(lines(
                timestamp_ms,
                &[("handler", handler.as_str())],
                &[EmfMetric {
                    name: HANDLER_DURATION,
                    unit: Unit::Seconds,
                    value: EmfValue::Many(values.clone()),
                }],
            ));
        }
        out
    }
}

/// Metrics by label set, in first-seen order: one line per label set.
type Groups<K> = Vec<(K, Vec<EmfMetric<'static>>)>;

fn group<K: PartialEq>(groups: &mut Groups<K>, labels: K, metric: EmfMetric<'static>) {
    match groups.iter_mut().find(|(l, _)| *l == labels) {
        Some((_, metrics)) => metrics.push(metric),
        None => groups.push((labels, vec![metric])),
    }
}

fn unit_of(name: &str) -> Unit {
    match name {
        gauge::STAGED_BYTES | gauge::LINEAGE_STAGED_BYTES => Unit::Bytes,
        gauge::MIRROR_LAG_SECONDS_MAX | gauge::LINEAGE_MIRROR_LAG_SECONDS => Unit::Seconds,
        gauge::LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS => Unit::None,
        _ => Unit::Count,
    }
}

/// The gauges of `g` as EMF lines at `timestamp_ms`, at most `lineage_cap` lineages with
/// `edge_lineage_*` series (each combination of dimension values is a billed metric; the rest
/// count toward `edge_metrics_lineage_series_dropped`).
pub fn gauge_lines(g: &FleetGauges, timestamp_ms: i64, lineage_cap: usize) -> Vec<String> {
    let all = series(g, Some(lineage_cap));
    let mut groups: Groups<&[(&'static str, String)]> = Vec::new();
    for s in &all {
        #[allow(clippy::cast_precision_loss)]
        let metric = EmfMetric {
            name: s.name,
            unit: unit_of(s.name),
            value: EmfValue::One(s.value as f64),
        };
        group(&mut groups, s.labels.as_slice(), metric);
    }
    let mut out = Vec::new();
    for (labels, metrics) in &groups {
        let dims: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        out.extend(lines(timestamp_ms, &dims, metrics));
    }
    out
}
