//! Telemetry values (cloud.md §6): how a SQLite value lands in `telemetry_data_point_value`.

use edge_protocol::value::SqlValue;

/// The three value columns of a data-point value; exactly one is set for a non-NULL value.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPointValue {
    pub numeric: Option<f64>,
    pub text: Option<String>,
    pub json: Option<serde_json::Value>,
}

/// Numbers go to `value_numeric` (±inf included, double precision holds them), text to
/// `value_text` (unless it holds NUL, which PostgreSQL text cannot: then JSON), blobs and
/// NULL-bearing oddities to `value_json` in their wire form. `None` for NULL: no row.
pub fn data_point_value(v: &SqlValue) -> Option<DataPointValue> {
    let empty = DataPointValue {
        numeric: None,
        text: None,
        json: None,
    };
    match v {
        SqlValue::Null => None,
        #[allow(clippy::cast_precision_loss)]
        SqlValue::Integer(i) => Some(DataPointValue {
            numeric: Some(*i as f64),
            ..empty
        }),
        SqlValue::Real(f) => Some(DataPointValue {
            numeric: Some(*f),
            ..empty
        }),
        SqlValue::Text(s) if !s.contains('\0') => Some(DataPointValue {
            text: Some(s.clone()),
            ..empty
        }),
        other => Some(DataPointValue {
            json: Some(other.to_json()),
            ..empty
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_columns() {
        assert_eq!(data_point_value(&SqlValue::Null), None);
        assert_eq!(
            data_point_value(&SqlValue::Integer(3)).and_then(|v| v.numeric),
            Some(3.0)
        );
        assert_eq!(
            data_point_value(&SqlValue::Text("on".into())).and_then(|v| v.text),
            Some("on".into())
        );
        assert!(data_point_value(&SqlValue::Blob(vec![1]))
            .and_then(|v| v.json)
            .is_some());
    }
}
