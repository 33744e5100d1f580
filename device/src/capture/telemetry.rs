//! The `telemetry` strategy: append-only time-series tables read by cursor, without triggers
//! (agent.md §2, protocol §4).
//!
//! Rows are read in append order — by rowid, after a persisted high-water mark — not in timestamp
//! order (reliability.md §5): the timestamp is payload, so late, backfilled or clock-corrected
//! readings (an older timestamp, appended after the cursor moved) are still read. Rowids can go
//! back: after `DELETE FROM t` the next rowid restarts, and VACUUM renumbers implicit rowids of a
//! table without an index. The cursor therefore also remembers a digest of the row at the mark
//! and of the table's first row; `max(rowid) < mark`, or either row still there but different,
//! is a reset: the reader starts again from the first row (already-sent rows may go again, under
//! a new `batch_seq`: nothing is lost, at worst a reading is stored twice). `AUTOINCREMENT` on an
//! `INTEGER PRIMARY KEY` makes rowids never go back (docs/capture.md recommends it). A table
//! without a usable rowid (WITHOUT ROWID, or all of `rowid`/`_rowid_`/`oid` shadowed by columns)
//! is refused for telemetry. A cursor saved before this rule (`(ts, rowid)`) is converted at its
//! first read to the largest mark below which that order had read every row.
//!
//! Accepted `ts_column` values ([`ts_to_rfc3339`]):
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
use rusqlite::types::Value;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use rusqlite::OptionalExtension;
use tracing::warn;

use super::codec::{from_sql, to_sql};
use super::ident::quote_ident;
use super::{Capture, CaptureError};
use crate::state::{RowCheck, TelemetryCursor};

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
    /// Cursor after everything returned (records and skipped rows); `None` when nothing was read
    /// (and the cursor needs no change).
    pub next_cursor: Option<TelemetryCursor>,
    /// The rowids went back (module docs): this read started again from the first row.
    pub reset: bool,
}

/// FNV-1a 64 of a row's read values (ts + fields), as hex: tells a reused rowid apart.
fn digest(values: &[Value]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for v in values {
        match v {
            Value::Null => eat(b"n"),
            Value::Integer(i) => {
                eat(b"i");
                eat(&i.to_le_bytes());
            }
            Value::Real(f) => {
                eat(b"r");
                eat(&f.to_bits().to_le_bytes());
            }
            Value::Text(t) => {
                eat(b"t");
                eat(&(t.len() as u64).to_le_bytes());
                eat(t.as_bytes());
            }
            Value::Blob(b) => {
                eat(b"b");
                eat(&(b.len() as u64).to_le_bytes());
                eat(b);
            }
        }
    }
    format!("{h:016x}")
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
        let qt = quote_ident(table);
        let columns = format!("{alias}, {ts}{select_fields}");
        let width = 1 + t.fields.len();
        let values_of = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, Vec<Value>)> {
            let rowid: i64 = r.get(0)?;
            let values = (1..=width)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((rowid, values))
        };
        // The row at `rowid` now, as a check (`None`: no such row).
        let check_at = |rowid: i64| -> Result<Option<RowCheck>, CaptureError> {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("SELECT {columns} FROM {qt} WHERE {alias} = ?1"))?;
            Ok(stmt
                .query_row([rowid], values_of)
                .optional()?
                .map(|(rowid, v)| RowCheck {
                    rowid,
                    digest: digest(&v),
                    schema_hash: Some(t.schema_hash.clone()),
                }))
        };
        let changed = |c: &Option<RowCheck>| -> Result<bool, CaptureError> {
            Ok(match c {
                // Digests taken under other columns are not comparable.
                Some(c) if c.schema_hash.as_deref() == Some(t.schema_hash.as_str()) => {
                    check_at(c.rowid)?.is_some_and(|now| now.digest != c.digest)
                }
                Some(_) => false,
                None => false,
            })
        };
        let mut out = TelemetryRead::default();
        let mut mark = 0;
        if let Some(c) = after {
            let max: i64 = self.conn.query_row(
                &format!("SELECT coalesce(max({alias}), 0) FROM {qt}"),
                [],
                |r| r.get(0),
            )?;
            mark = match &c.legacy_ts {
                // Every row before the first one after the old `(ts, rowid)` cursor was read.
                Some(old_ts) => self
                    .conn
                    .query_row(
                        &format!(
                            "SELECT min({alias}) - 1 FROM {qt} WHERE ({ts}, {alias}) > (?1, ?2)"
                        ),
                        rusqlite::params![to_sql(old_ts), c.rowid],
                        |r| r.get::<_, Option<i64>>(0),
                    )?
                    .unwrap_or(max),
                None => c.rowid,
            };
            if max < mark || changed(&c.check)? || changed(&c.first)? {
                warn!(
                    table,
                    mark,
                    max_rowid = max,
                    "telemetry rowids went back (DELETE FROM / VACUUM renumbering); re-reading \
                     the table from its first row (use AUTOINCREMENT to avoid this)"
                );
                out.reset = true;
                mark = 0;
            }
        }
        let limit = i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX);
        let sql =
            format!("SELECT {columns} FROM {qt} WHERE {alias} > ?1 ORDER BY {alias} LIMIT ?2");
        let first = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {columns} FROM {qt} ORDER BY {alias} LIMIT 1"
            ))?;
            stmt.query_row([], values_of)
                .optional()?
                .map(|(rowid, v)| RowCheck {
                    rowid,
                    digest: digest(&v),
                    schema_hash: Some(t.schema_hash.clone()),
                })
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params![mark, limit])?;
        while let Some(r) = rows.next()? {
            let (rowid, values) = values_of(r)?;
            let cursor = TelemetryCursor {
                rowid,
                check: Some(RowCheck {
                    rowid,
                    digest: digest(&values),
                    schema_hash: Some(t.schema_hash.clone()),
                }),
                first: first.clone(),
                legacy_ts: None,
            };
            out.next_cursor = Some(cursor.clone());
            let mut values = values.into_iter().map(from_sql);
            let ts_value = values.next().unwrap_or(SqlValue::Null);
            match ts_to_rfc3339(&ts_value) {
                Ok(ts) => {
                    let fields: Row = t.fields.iter().cloned().zip(values).collect();
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
        if out.next_cursor.is_none() && (out.reset || after.is_some_and(|c| c.legacy_ts.is_some()))
        {
            // Nothing to read, but the mark moved (reset to the start, or a converted cursor).
            out.next_cursor = Some(TelemetryCursor {
                rowid: mark,
                check: check_at(mark)?,
                first,
                legacy_ts: None,
            });
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
