//! Discovery of user tables and the enrolment decision (agent.md §1.1–1.2, protocol §8).
//!
//! Reading the schema is I/O ([`list_user_tables`]); deciding what to do with a table is the pure
//! function [`enrol`], so every rule (exclusions, explicit-PK requirement, include_columns) has a
//! unit test without a database.

use edge_protocol::fingerprint::{ColumnFingerprint, SchemaColumns};
use rusqlite::Connection;

use crate::settings::{Strategy, TableConfig};

use super::CaptureError;

/// One column from `PRAGMA table_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub decl_type: String,
    pub not_null: bool,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk_ordinal: i64,
}

/// One user table as SQLite describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    pub without_rowid: bool,
    pub strict: bool,
}

impl TableInfo {
    /// Primary-key column names in key order.
    pub fn primary_key(&self) -> Vec<String> {
        let mut pk: Vec<&ColumnInfo> = self.columns.iter().filter(|c| c.pk_ordinal > 0).collect();
        pk.sort_by_key(|c| c.pk_ordinal);
        pk.into_iter().map(|c| c.name.clone()).collect()
    }

    fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A `rows` table ready for triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsTable {
    pub info: TableInfo,
    /// Captured columns in table order (= order of values in the journal's row image).
    pub captured: Vec<ColumnInfo>,
    /// Primary-key column names in key order.
    pub pk: Vec<String>,
    /// Fingerprint of the captured columns (protocol §8).
    pub schema: SchemaColumns,
    pub schema_hash: String,
}

/// A `telemetry` table ready for the cursor reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryTable {
    pub name: String,
    pub ts_column: String,
    /// Columns published as `fields`, in table order.
    pub fields: Vec<String>,
    /// Fingerprint of `ts_column` + `fields`.
    pub schema: SchemaColumns,
    pub schema_hash: String,
}

/// What the agent does with one discovered table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolment {
    Rows(RowsTable),
    Telemetry(TelemetryTable),
    /// `strategy = "ignore"`.
    Ignored,
    /// Would be captured but cannot be; the reason is shown in logs and `status`.
    NotEnrolled {
        reason: String,
    },
}

/// True for names the agent never captures: SQLite's own tables and the agent's bookkeeping.
pub fn is_internal_table(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("sqlite_") || name.starts_with("__omega_")
}

/// All ordinary tables of the `main` schema, excluding internal, virtual and shadow tables.
pub fn list_user_tables(conn: &Connection) -> Result<Vec<TableInfo>, CaptureError> {
    let mut stmt = conn.prepare(
        "SELECT name, wr, strict FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         ORDER BY name",
    )?;
    let listed = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, i64>(2)? != 0,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut tables = Vec::new();
    for (name, without_rowid, strict) in listed {
        if is_internal_table(&name) {
            continue;
        }
        let columns = table_columns(conn, &name)?;
        tables.push(TableInfo {
            name,
            columns,
            without_rowid,
            strict,
        });
    }
    Ok(tables)
}

/// `PRAGMA table_info` of one table, through the table-valued form so the name is a bound
/// parameter rather than spliced SQL.
pub fn table_columns(conn: &Connection, table: &str) -> Result<Vec<ColumnInfo>, CaptureError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let cols = stmt
        .query_map([table], |r| {
            Ok(ColumnInfo {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                not_null: r.get::<_, i64>(2)? != 0,
                pk_ordinal: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cols)
}

/// Fingerprint of a set of columns of `table` (protocol §8).
pub fn fingerprint(table: &str, columns: &[ColumnInfo]) -> SchemaColumns {
    SchemaColumns::new(
        table,
        columns
            .iter()
            .map(|c| {
                ColumnFingerprint::from_table_info(
                    c.name.clone(),
                    &c.decl_type,
                    i64::from(c.not_null),
                    c.pk_ordinal,
                )
            })
            .collect(),
    )
}

/// `NotEnrolled` when `include_columns` names a column the table does not have.
fn refuse_unknown_columns(info: &TableInfo, cfg: &TableConfig) -> Option<Enrolment> {
    let include = cfg.include_columns.as_ref()?;
    let unknown: Vec<&str> = include
        .iter()
        .filter(|n| info.column(n).is_none())
        .map(String::as_str)
        .collect();
    (!unknown.is_empty()).then(|| Enrolment::NotEnrolled {
        reason: format!("include_columns names unknown column(s): {unknown:?}"),
    })
}

/// Decides how `info` is captured under `cfg`. Pure.
pub fn enrol(info: &TableInfo, cfg: &TableConfig) -> Enrolment {
    match cfg.strategy {
        Strategy::Ignore => Enrolment::Ignored,
        Strategy::Rows => enrol_rows(info, cfg),
        Strategy::Telemetry => enrol_telemetry(info, cfg),
    }
}

fn enrol_rows(info: &TableInfo, cfg: &TableConfig) -> Enrolment {
    let pk = info.primary_key();
    if pk.is_empty() {
        return Enrolment::NotEnrolled {
            reason: "no explicit PRIMARY KEY: rowids are not stable keys (add a PRIMARY KEY, or \
                     configure strategy = \"telemetry\" or \"ignore\")"
                .into(),
        };
    }
    if let Some(refused) = refuse_unknown_columns(info, cfg) {
        return refused;
    }
    let captured: Vec<ColumnInfo> = match &cfg.include_columns {
        None => info.columns.clone(),
        Some(include) => info
            .columns
            .iter()
            .filter(|c| c.pk_ordinal > 0 || include.contains(&c.name))
            .cloned()
            .collect(),
    };
    let schema = fingerprint(&info.name, &captured);
    let schema_hash = schema.schema_hash();
    Enrolment::Rows(RowsTable {
        info: info.clone(),
        captured,
        pk,
        schema,
        schema_hash,
    })
}

fn enrol_telemetry(info: &TableInfo, cfg: &TableConfig) -> Enrolment {
    if info.without_rowid {
        return Enrolment::NotEnrolled {
            reason: "telemetry is read in append order by rowid (a high-water mark); this \
                     table is WITHOUT ROWID and has none — use an ordinary table, ideally with \
                     an INTEGER PRIMARY KEY AUTOINCREMENT"
                .into(),
        };
    }
    let Some(ts_column) = cfg.ts_column.clone() else {
        return Enrolment::NotEnrolled {
            reason: "strategy = \"telemetry\" needs ts_column".into(),
        };
    };
    let Some(ts_info) = info.column(&ts_column) else {
        return Enrolment::NotEnrolled {
            reason: format!("ts_column {ts_column:?} is not a column of the table"),
        };
    };
    if let Some(refused) = refuse_unknown_columns(info, cfg) {
        return refused;
    }
    let fields: Vec<String> = match &cfg.include_columns {
        None => info
            .columns
            .iter()
            .filter(|c| c.name != ts_column)
            .map(|c| c.name.clone())
            .collect(),
        Some(include) => info
            .columns
            .iter()
            .filter(|c| include.contains(&c.name) && c.name != ts_column)
            .map(|c| c.name.clone())
            .collect(),
    };
    let mut cols = vec![ts_info.clone()];
    cols.extend(
        info.columns
            .iter()
            .filter(|c| fields.contains(&c.name))
            .cloned(),
    );
    let schema = fingerprint(&info.name, &cols);
    let schema_hash = schema.schema_hash();
    Enrolment::Telemetry(TelemetryTable {
        name: info.name.clone(),
        ts_column,
        fields,
        schema,
        schema_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, pk: i64) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            decl_type: ty.into(),
            not_null: pk > 0,
            pk_ordinal: pk,
        }
    }

    fn table(cols: Vec<ColumnInfo>) -> TableInfo {
        TableInfo {
            name: "device_state".into(),
            columns: cols,
            without_rowid: false,
            strict: false,
        }
    }

    #[test]
    fn internal_tables_are_excluded() {
        assert!(is_internal_table("sqlite_sequence"));
        assert!(is_internal_table("SQLITE_stat1"));
        assert!(is_internal_table("__omega_journal"));
        assert!(!is_internal_table("omega"));
        assert!(!is_internal_table("my sqlite_table"));
    }

    #[test]
    fn rowid_only_tables_are_not_enrolled_with_a_reason() {
        let t = table(vec![col("a", "TEXT", 0)]);
        match enrol(&t, &TableConfig::default()) {
            Enrolment::NotEnrolled { reason } => assert!(reason.contains("PRIMARY KEY")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fingerprint_matches_protocol_vector() {
        let mut id = col("id", "INTEGER", 1);
        id.not_null = true;
        let t = table(vec![id, col("mode", "TEXT", 0), col("setpoint", "REAL", 0)]);
        let Enrolment::Rows(rows) = enrol(&t, &TableConfig::default()) else {
            panic!("not enrolled")
        };
        assert_eq!(
            rows.schema_hash,
            "2eca4022338318bb748bc0266ee4c9d9188aa84f3782687f9b585d36a9e79530"
        );
    }

    #[test]
    fn include_columns_keeps_the_key_and_rejects_unknown_names() {
        let t = table(vec![
            col("id", "INTEGER", 1),
            col("a", "TEXT", 0),
            col("b", "REAL", 0),
        ]);
        let cfg = TableConfig {
            include_columns: Some(vec!["b".into()]),
            ..TableConfig::default()
        };
        let Enrolment::Rows(rows) = enrol(&t, &cfg) else {
            panic!("not enrolled")
        };
        let names: Vec<&str> = rows.captured.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "b"]);
        let bad = TableConfig {
            include_columns: Some(vec!["nope".into()]),
            ..TableConfig::default()
        };
        assert!(matches!(enrol(&t, &bad), Enrolment::NotEnrolled { .. }));
    }

    #[test]
    fn telemetry_needs_ts_column_and_rowid() {
        let t = table(vec![col("ts", "INTEGER", 0), col("v", "REAL", 0)]);
        let cfg = TableConfig {
            strategy: Strategy::Telemetry,
            include_columns: None,
            ts_column: Some("ts".into()),
        };
        let Enrolment::Telemetry(tt) = enrol(&t, &cfg) else {
            panic!("not enrolled")
        };
        assert_eq!(tt.fields, ["v"]);
        let missing = TableConfig {
            ts_column: None,
            ..cfg.clone()
        };
        assert!(matches!(enrol(&t, &missing), Enrolment::NotEnrolled { .. }));
        let mut wr = t.clone();
        wr.without_rowid = true;
        assert!(matches!(enrol(&wr, &cfg), Enrolment::NotEnrolled { .. }));
        assert!(matches!(
            enrol(
                &t,
                &TableConfig {
                    strategy: Strategy::Ignore,
                    ..cfg
                }
            ),
            Enrolment::Ignored
        ));
    }
}
