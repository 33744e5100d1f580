//! CloudWatch Embedded Metric Format (observability.md §1–§2): how a Lambda's metrics reach
//! CloudWatch — one JSON line on stdout per label set, which CloudWatch Logs turns into metrics
//! of namespace [`NAMESPACE`]. Pure: the caller brings the timestamp and writes the lines.
//!
//! The shape follows the EMF specification: a top-level `_aws` object with an integer
//! `Timestamp` (ms) and `CloudWatchMetrics` = [{`Namespace`, `Dimensions`, `Metrics`}]; every
//! dimension names a top-level string member, every metric a top-level number (or array of
//! numbers, at most [`MAX_VALUES`] of them). `Dimensions` is the label set plus `[]`, so each
//! metric is also published without dimensions (the alarms of §5 read that aggregate).

use serde_json::{Map, Value};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "EdgeSync";
/// Values in one metric's array (the EMF limit).
pub const MAX_VALUES: usize = 100;
/// Dimensions in one dimension set (the EMF limit).
pub const MAX_DIMENSIONS: usize = 30;
/// Metrics in one directive (the EMF limit).
pub const MAX_METRICS: usize = 100;
/// Longest dimension value CloudWatch takes.
const MAX_DIMENSION_VALUE: usize = 1024;

/// The unit of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    Bytes,
    None,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
            Unit::None => "None",
        }
    }
}

/// A metric's value in one line: one number, or several (a distribution: CloudWatch computes
/// its percentiles).
#[derive(Debug, Clone, PartialEq)]
pub enum EmfValue {
    One(f64),
    Many(Vec<f64>),
}

/// One metric of a line.
#[derive(Debug, Clone, PartialEq)]
pub struct EmfMetric<'a> {
    pub name: &'a str,
    pub unit: Unit,
    pub value: EmfValue,
}

/// A dimension value as CloudWatch accepts it: printable ASCII (anything else becomes `_`),
/// not blank, at most 1,024 characters.
pub fn dimension_value(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(MAX_DIMENSION_VALUE)
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.trim().is_empty() {
        out = crate::metrics::NONE.to_owned();
    }
    out
}

/// One EMF line at `timestamp_ms` for the label set `dimensions` (at most
/// [`MAX_DIMENSIONS`]; names as given, values through [`dimension_value`]) carrying `metrics`
/// (at most [`MAX_METRICS`], each array at most [`MAX_VALUES`] values: the caller splits —
/// [`lines`] does).
pub fn line(timestamp_ms: i64, dimensions: &[(&str, &str)], metrics: &[EmfMetric<'_>]) -> String {
    let names: Vec<Value> = dimensions
        .iter()
        .take(MAX_DIMENSIONS)
        .map(|(k, _)| Value::from(*k))
        .collect();
    let sets = if names.is_empty() {
        vec![Value::Array(Vec::new())]
    } else {
        vec![Value::Array(names), Value::Array(Vec::new())]
    };
    let directive = serde_json::json!({
        "Namespace": NAMESPACE,
        "Dimensions": sets,
        "Metrics": metrics.iter().map(|m| serde_json::json!({"Name": m.name, "Unit": m.unit.as_str()}))
            .collect::<Vec<_>>(),
    });
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        serde_json::json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": [directive]}),
    );
    for (k, v) in dimensions.iter().take(MAX_DIMENSIONS) {
        root.insert((*k).to_owned(), Value::from(dimension_value(v)));
    }
    for m in metrics {
        let value = match &m.value {
            EmfValue::One(v) => number(*v),
            EmfValue::Many(vs) => Value::Array(vs.iter().map(|v| number(*v)).collect()),
        };
        root.insert(m.name.to_owned(), value);
    }
    Value::Object(root).to_string()
}

/// The lines of one label set: [`line()`]s of at most [`MAX_METRICS`] metrics each, a metric
/// with more than [`MAX_VALUES`] values spread over several lines.
pub fn lines(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    metrics: &[EmfMetric<'_>],
) -> Vec<String> {
    let mut singles: Vec<EmfMetric<'_>> = Vec::new();
    let mut out = Vec::new();
    for m in metrics {
        match &m.value {
            EmfValue::Many(vs) if vs.len() > MAX_VALUES => {
                for part in vs.chunks(MAX_VALUES) {
                    let piece = EmfMetric {
                        name: m.name,
                        unit: m.unit,
                        value: EmfValue::Many(part.to_vec()),
                    };
                    out.push(line(timestamp_ms, dimensions, &[piece]));
                }
            }
            _ => singles.push(m.clone()),
        }
    }
    for group in singles.chunks(MAX_METRICS) {
        out.push(line(timestamp_ms, dimensions, group));
    }
    out
}

/// A JSON number (a non-finite value, which JSON cannot hold, becomes 0).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        // Whole numbers as integers: `2`, not `2.0`, as §2's example shows.
        #[allow(clippy::cast_possible_truncation)]
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::from(0), Value::Number)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_spec_example_shape() {
        let l = line(
            1_767_225_600_000,
            &[("project_id", "p1")],
            &[EmfMetric {
                name: "edge_devices_silent",
                unit: Unit::Count,
                value: EmfValue::One(2.0),
            }],
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"_aws":{"Timestamp":1_767_225_600_000_i64,"CloudWatchMetrics":[
                {"Namespace":"EdgeSync","Dimensions":[["project_id"],[]],
                 "Metrics":[{"Name":"edge_devices_silent","Unit":"Count"}]}]},
                "project_id":"p1","edge_devices_silent":2})
        );
    }

    #[test]
    fn long_arrays_are_split_and_values_cleaned() {
        let values: Vec<f64> = (0..250).map(|i| f64::from(i) / 1000.0).collect();
        let ls = lines(
            1,
            &[("handler", "ingest")],
            &[EmfMetric {
                name: "d",
                unit: Unit::Seconds,
                value: EmfValue::Many(values),
            }],
        );
        assert_eq!(ls.len(), 3);
        assert_eq!(dimension_value("gw-ü\n"), "gw-__");
        assert_eq!(dimension_value("  "), "none");
    }
}
