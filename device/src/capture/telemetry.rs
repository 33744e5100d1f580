//! The `telemetry` strategy: append-only time-series tables read by cursor, without triggers
//! (agent.md §2, protocol §4).
//!
//! Rows are read in `(ts_column, rowid)` order after the persisted cursor, so rows sharing a
//! timestamp are neither skipped nor repeated. Accepted `ts_column` values ([`ts_to_rfc3339`]):
//! - TEXT: RFC 3339 with any offset, or `YYYY-MM-DD HH:MM:SS[.fff]` / `YYYY-MM-DDTHH:MM:SS[.fff]`
//!   without an offset, taken as UTC (what SQLite's `datetime()` writes);
//! - INTEGER: unix seconds, or unix milliseconds when the magnitude is ≥ 10^11 (10^11 seconds is
//!   the year 5138, 10^11 ms is 1973, so the ranges do not overlap for real data);
//! - REAL: unix seconds with a fraction.
//!
//! A row whose timestamp is none of these cannot be published (the cloud requires RFC 3339); it is
//! reported in [`TelemetryRead::skipped`] and the cursor moves past it, so one bad row never stalls
//! the table. The publisher logs and counts it.

use edge_protocol::value::{Row, SqlValue};
use rusqlite::params_from_iter;
use rusqlite::types::Value;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::codec::{from_sql, to_sql};
use super::ident::quote_ident;
use super::{Capture, CaptureError};
use crate::state::TelemetryCursor;

/// Integer timestamps at or above this magnitude are milliseconds.
pub const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// One telemetry row ready for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRecord {
    pub rowid: i64,
    /// RFC 3339 UTC.
    pub ts: String,
    pub fields: Row,
    /// The cursor to persist once this row is published.
    pub cursor: TelemetryCursor,
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    pub rowid: i64,
    pub reason: String,
}

/// Result of [`Capture::read_telemetry`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryRead {
    pub records: Vec<TelemetryRecord>,
    pub skipped: Vec<SkippedRow>,
    /// Cursor after everything returned (records and skipped rows); `None` when nothing was read.
    pub next_cursor: Option<TelemetryCursor>,
}

fn from_unix_nanos(nanos: i128) -> Result<String, String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| e.to_string())?;
    edge_protocol::timestamp::format(t).map_err(|e| e.to_string())
}

/// Converts a `ts_column` value to RFC 3339 UTC (rules in the module docs). Pure.
pub fn ts_to_rfc3339(v: &SqlValue) -> Result<String, String> {
    match v {
        SqlValue::Integer(i) => {
            let nanos = if i.unsigned_abs() >= MILLIS_THRESHOLD as u64 {
                i128::from(*i) * 1_000_000
            } else {
                i128::from(*i) * 1_000_000_000
            };
            from_unix_nanos(nanos)
        }
        SqlValue::Real(f) if f.is_finite() => {
            let micros = (f * 1_000_000.0).round();
            if micros.abs() > 1e17 {
                return Err(format!("timestamp {f} out of range"));
            }
            from_unix_nanos(micros as i128 * 1000)
        }
        SqlValue::Text(s) => {
            if let Ok(t) = edge_protocol::timestamp::parse(s) {
                return edge_protocol::timestamp::format(t).map_err(|e| e.to_string());
            }
            let normalized: String = s
                .trim()
                .char_indices()
                .map(|(i, c)| if i == 10 && c == 'T' { ' ' } else { c })
                .collect();
            let fmt = format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            PrimitiveDateTime::parse(&normalized, &fmt)
                .map_err(|_| format!("unrecognised timestamp text {s:?}"))
                .and_then(|p| {
                    edge_protocol::timestamp::format(p.assume_utc()).map_err(|e| e.to_string())
                })
        }
        other => Err(format!(
            "timestamp of storage class {} is not supported",
            other.storage_class()
        )),
    }
}

impl Capture {
    /// Reads up to `max_rows` rows of telemetry table `table` after `after`.
    pub fn read_telemetry(
        &self,
        table: &str,
        after: Option<&TelemetryCursor>,
        max_rows: usize,
    ) -> Result<TelemetryRead, CaptureError> {
        let t = self
            .catalog
            .telemetry
            .get(table)
            .ok_or_else(|| CaptureError::NotEnrolled {
                table: table.into(),
                strategy: "telemetry",
            })?;
        let ts = quote_ident(&t.ts_column);
        // `rowid` can be shadowed by a real column; pick an alias that is not.
        let cols = super::schema::table_columns(&self.conn, table)?;
        let alias = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !cols.iter().any(|c| c.name.eq_ignore_ascii_case(a)))
            .ok_or_else(|| CaptureError::NotEnrolled {
                table: table.into(),
                strategy: "telemetry (rowid is shadowed by columns)",
            })?;
        let fields: Vec<String> = t.fields.iter().map(|f| quote_ident(f)).collect();
        let select_fields = if fields.is_empty() {
            String::new()
        } else {
            format!(", {}", fields.join(", "))
        };
        let (cond, mut binds) = match after {
            Some(c) => (
                format!("WHERE ({ts}, {alias}) > (?1, ?2)"),
                vec![to_sql(&c.ts), Value::Integer(c.rowid)],
            ),
            None => (String::new(), Vec::new()),
        };
        binds.push(Value::Integer(
            i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX),
        ));
        let sql = format!(
            "SELECT {alias}, {ts}{select_fields} FROM {} {cond} ORDER BY {ts}, {alias} LIMIT ?{}",
            quote_ident(table),
            binds.len()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params_from_iter(binds))?;
        let mut out = TelemetryRead::default();
        while let Some(r) = rows.next()? {
            let rowid: i64 = r.get(0)?;
            let ts_value = from_sql(r.get::<_, Value>(1)?);
            let cursor = TelemetryCursor {
                ts: ts_value.clone(),
                rowid,
            };
            out.next_cursor = Some(cursor.clone());
            match ts_to_rfc3339(&ts_value) {
                Ok(ts) => {
                    let mut fields = Row::new();
                    for (i, name) in t.fields.iter().enumerate() {
                        fields.insert(name.clone(), from_sql(r.get::<_, Value>(i + 2)?));
                    }
                    out.records.push(TelemetryRecord {
                        rowid,
                        ts,
                        fields,
                        cursor,
                    });
                }
                Err(reason) => out.skipped.push(SkippedRow { rowid, reason }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_timestamp_forms() {
        let z = "2026-04-28T09:00:01Z";
        assert_eq!(ts_to_rfc3339(&SqlValue::Text(z.into())).unwrap(), z);
        assert_eq!(
            ts_to_rfc3339(&SqlValue::Text("2026-04-28T11:00:01+02:00".into())).unwrap(),
            z
        );
        assert_eq!(
            ts_to_rfc3339(&SqlValue::Text("2026-04-28 09:00:01".into())).unwrap(),
            z
        );
        assert_eq!(
            ts_to_rfc3339(&SqlValue::Text("2026-04-28T09:00:01.250".into())).unwrap(),
            "2026-04-28T09:00:01.25Z"
        );
        assert_eq!(ts_to_rfc3339(&SqlValue::Integer(1_777_366_801)).unwrap(), z);
        assert_eq!(
            ts_to_rfc3339(&SqlValue::Integer(1_777_366_801_500)).unwrap(),
            "2026-04-28T09:00:01.5Z"
        );
        assert_eq!(
            ts_to_rfc3339(&SqlValue::Real(1_777_366_801.5)).unwrap(),
            "2026-04-28T09:00:01.5Z"
        );
    }

    #[test]
    fn rejects_other_values_with_a_reason() {
        assert!(ts_to_rfc3339(&SqlValue::Null).is_err());
        assert!(ts_to_rfc3339(&SqlValue::Blob(vec![1])).is_err());
        assert!(ts_to_rfc3339(&SqlValue::Text("yesterday".into())).is_err());
        assert!(ts_to_rfc3339(&SqlValue::Real(f64::INFINITY)).is_err());
        assert!(ts_to_rfc3339(&SqlValue::Integer(i64::MAX)).is_err());
    }
}
