//! TimescaleDB compression and retention policies for the hypertables (issue 14, docs/deploy.md
//! "TimescaleDB"): what the operator asked for, parsed and checked, and the statements that move
//! a database's current policies to it. Pure: the store reads the current state and runs the plan.
//!
//! Which tables may have which policy is a decision about data, not configuration:
//! - `telemetry_data_point_value` — readings, written once: compression and retention both fine.
//! - `edge_export_segments` — the ledger. Compression is allowed (TimescaleDB ≥ 2.11 updates and
//!   de-duplicates into compressed chunks, slower), off by default because staged batches update
//!   their ledger rows when they are replayed, possibly weeks later. Retention is allowed but off:
//!   a duplicate of a batch older than it is no longer recognised as one (the mirror's version
//!   check still keeps an older row image from overwriting a newer one).
//! - `edge_staged_rows` — rows waiting for review leave the table when they are replayed; dropping a
//!   chunk would lose them, compressing it would slow every replay. Never given a policy.

use std::fmt;

/// A policy age: a whole number of hours, days or weeks, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyAge {
    hours: u32,
}

/// Longest age accepted (about 100 years): beyond that a policy means nothing.
const MAX_HOURS: u64 = 24 * 366 * 100;

impl PolicyAge {
    /// `"off"` → `None`; `"12h"`, `"7d"`, `"4w"` → the age.
    pub fn parse(text: &str) -> Result<Option<Self>, PolicyError> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let bad = || PolicyError::BadAge(text.to_string());
        let (number, unit) = t.split_at(t.len().saturating_sub(1));
        let n: u64 = number.parse().map_err(|_| bad())?;
        let hours = match unit {
            "h" => n,
            "d" => n.saturating_mul(24),
            "w" => n.saturating_mul(24 * 7),
            _ => return Err(bad()),
        };
        if hours == 0 || hours > MAX_HOURS {
            return Err(bad());
        }
        let hours = u32::try_from(hours).map_err(|_| bad())?;
        Ok(Some(Self { hours }))
    }

    pub fn seconds(self) -> i64 {
        i64::from(self.hours) * 3600
    }

    /// A PostgreSQL interval literal (`'168 hours'`), safe to splice: digits only.
    pub fn interval_sql(self) -> String {
        format!("INTERVAL '{} hours'", self.hours)
    }
}

impl fmt::Display for PolicyAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hours % (24 * 7) == 0 {
            write!(f, "{}w", self.hours / (24 * 7))
        } else if self.hours % 24 == 0 {
            write!(f, "{}d", self.hours / 24)
        } else {
            write!(f, "{}h", self.hours)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy age {0:?}: expected off or a whole number of hours, days or weeks (12h, 7d, 4w) up to 100 years")]
    BadAge(String),
    #[error("compression of {table} after {compress} is not earlier than its retention {retention}: chunks would be dropped before they are compressed")]
    CompressAfterRetention {
        table: &'static str,
        compress: PolicyAge,
        retention: PolicyAge,
    },
}

/// One hypertable's wanted policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablePolicy {
    pub compress_after: Option<PolicyAge>,
    pub drop_after: Option<PolicyAge>,
}

/// What `edge-cloud migrate` applies when TimescaleDB is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub telemetry: TablePolicy,
    pub ledger: TablePolicy,
}

/// The defaults: telemetry compressed after 7 days, nothing dropped, the ledger left alone.
pub const DEFAULT_TELEMETRY_COMPRESS_AFTER: &str = "7d";

impl Default for Policies {
    fn default() -> Self {
        Self {
            telemetry: TablePolicy {
                compress_after: Some(PolicyAge { hours: 24 * 7 }),
                drop_after: None,
            },
            ledger: TablePolicy {
                compress_after: None,
                drop_after: None,
            },
        }
    }
}

/// A hypertable the policies apply to, with how TimescaleDB must segment and order its compressed
/// chunks: every column of the table's primary key must be one or the other, or TimescaleDB
/// refuses compression (it could not enforce the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hypertable {
    pub name: &'static str,
    pub segment_by: &'static str,
    pub order_by: &'static str,
}

pub const TELEMETRY: Hypertable = Hypertable {
    name: "telemetry_data_point_value",
    segment_by: "data_point_id",
    order_by: "ts DESC, batch_id, row_index",
};

pub const LEDGER: Hypertable = Hypertable {
    name: "edge_export_segments",
    segment_by: "device_id",
    order_by: "batch_time DESC, batch_id",
};

impl Policies {
    /// Checks each table's pair (compression must come before retention).
    pub fn checked(self) -> Result<Self, PolicyError> {
        for (table, p) in self.tables() {
            if let (Some(c), Some(r)) = (p.compress_after, p.drop_after) {
                if c.hours >= r.hours {
                    return Err(PolicyError::CompressAfterRetention {
                        table: table.name,
                        compress: c,
                        retention: r,
                    });
                }
            }
        }
        Ok(self)
    }

    pub fn tables(&self) -> [(Hypertable, TablePolicy); 2] {
        [(TELEMETRY, self.telemetry), (LEDGER, self.ledger)]
    }
}

/// One hypertable's policies as the database has them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CurrentPolicy {
    pub is_hypertable: bool,
    pub compression_enabled: bool,
    /// Seconds of the compression policy's `compress_after`, when there is one.
    pub compress_after_s: Option<i64>,
    /// Seconds of the retention policy's `drop_after`, when there is one.
    pub drop_after_s: Option<i64>,
}

/// The statements that move `current` to `wanted` for one table; empty when nothing changes.
/// Turning compression off removes the policy only: chunks already compressed stay so (see
/// TimescaleDB's `decompress_chunk` to undo them).
pub fn plan(table: Hypertable, wanted: TablePolicy, current: CurrentPolicy) -> Vec<String> {
    let mut sql = Vec::new();
    if !current.is_hypertable {
        return sql;
    }
    let t = table.name;
    if current.compress_after_s != wanted.compress_after.map(PolicyAge::seconds) {
        if current.compress_after_s.is_some() {
            sql.push(format!(
                "SELECT remove_compression_policy('{t}', if_exists => true)"
            ));
        }
        if let Some(age) = wanted.compress_after {
            if !current.compression_enabled {
                sql.push(format!(
                    "ALTER TABLE {t} SET (timescaledb.compress, \
                     timescaledb.compress_segmentby = '{}', timescaledb.compress_orderby = '{}')",
                    table.segment_by, table.order_by
                ));
            }
            sql.push(format!(
                "SELECT add_compression_policy('{t}', compress_after => {})",
                age.interval_sql()
            ));
        }
    }
    if current.drop_after_s != wanted.drop_after.map(PolicyAge::seconds) {
        if current.drop_after_s.is_some() {
            sql.push(format!(
                "SELECT remove_retention_policy('{t}', if_exists => true)"
            ));
        }
        if let Some(age) = wanted.drop_after {
            sql.push(format!(
                "SELECT add_retention_policy('{t}', drop_after => {})",
                age.interval_sql()
            ));
        }
    }
    sql
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn age(s: &str) -> PolicyAge {
        PolicyAge::parse(s).unwrap().unwrap()
    }

    #[test]
    fn ages_parse_and_print() {
        assert_eq!(PolicyAge::parse("off").unwrap(), None);
        assert_eq!(age("12h").seconds(), 12 * 3600);
        assert_eq!(age("7d").to_string(), "1w");
        assert_eq!(age("36h").to_string(), "36h");
        assert_eq!(age("2d").interval_sql(), "INTERVAL '48 hours'");
        for bad in ["", "7", "d", "0d", "-1d", "7 days", "1y", "999999w", "1.5d"] {
            assert!(
                matches!(PolicyAge::parse(bad), Err(PolicyError::BadAge(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn compression_must_come_before_retention() {
        let mut p = Policies::default();
        p.telemetry.drop_after = Some(age("7d"));
        let e = p.checked().unwrap_err();
        assert!(e.to_string().contains("telemetry_data_point_value"), "{e}");
        p.telemetry.drop_after = Some(age("30d"));
        assert!(p.checked().is_ok());
    }

    #[test]
    fn a_fresh_hypertable_gets_compression_enabled_then_the_policies() {
        let wanted = TablePolicy {
            compress_after: Some(age("7d")),
            drop_after: Some(age("52w")),
        };
        let now = CurrentPolicy {
            is_hypertable: true,
            ..Default::default()
        };
        let sql = plan(TELEMETRY, wanted, now);
        assert_eq!(sql.len(), 3, "{sql:#?}");
        assert!(
            sql[0].starts_with("ALTER TABLE telemetry_data_point_value SET (timescaledb.compress")
        );
        assert!(sql[0].contains("compress_segmentby = 'data_point_id'"));
        assert!(sql[1].contains("add_compression_policy('telemetry_data_point_value', compress_after => INTERVAL '168 hours')"));
        assert!(sql[2].contains("add_retention_policy('telemetry_data_point_value', drop_after => INTERVAL '8736 hours')"));
    }

    #[test]
    fn the_same_policies_again_change_nothing_and_a_new_age_replaces_the_old() {
        let wanted = TablePolicy {
            compress_after: Some(age("7d")),
            drop_after: None,
        };
        let now = CurrentPolicy {
            is_hypertable: true,
            compression_enabled: true,
            compress_after_s: Some(7 * 86_400),
            drop_after_s: None,
        };
        assert!(plan(TELEMETRY, wanted, now).is_empty());
        let sql = plan(
            TELEMETRY,
            TablePolicy {
                compress_after: Some(age("3d")),
                drop_after: None,
            },
            now,
        );
        assert_eq!(
            sql,
            [
                "SELECT remove_compression_policy('telemetry_data_point_value', if_exists => true)",
                "SELECT add_compression_policy('telemetry_data_point_value', compress_after => INTERVAL '72 hours')",
            ]
        );
        let off = plan(
            TELEMETRY,
            TablePolicy {
                compress_after: None,
                drop_after: None,
            },
            now,
        );
        assert_eq!(
            off,
            ["SELECT remove_compression_policy('telemetry_data_point_value', if_exists => true)"]
        );
    }

    #[test]
    fn a_plain_table_gets_no_statements() {
        let sql = plan(
            LEDGER,
            Policies::default().telemetry,
            CurrentPolicy::default(),
        );
        assert!(sql.is_empty());
    }
}
