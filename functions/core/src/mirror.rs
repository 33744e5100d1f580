//! Mirror tables (cloud.md §6): column types, DDL text, per-value fitness and the set-based,
//! version-guarded upsert plan.
//!
//! Design: a batch becomes one `INSERT … SELECT FROM unnest(<one typed array per column>) …
//! ON CONFLICT (device_id, pk) DO UPDATE … WHERE stored version < incoming version`. Because
//! `ON CONFLICT` cannot touch a row twice in one statement, [`plan_upserts`] first reduces the
//! batch to the newest change per primary key. Deletes are tombstones (`_edge_deleted = true`),
//! so a late, older insert cannot resurrect a row; with the version guard, applying any
//! permutation of any multiset of batches yields the same table.

use std::collections::HashMap;
use std::fmt::Write as _;

use edge_protocol::batch::{Op, RowChange};
use edge_protocol::fingerprint::{Affinity, SchemaColumns};
use edge_protocol::ids::CommitPosition;
use edge_protocol::value::SqlValue;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::naming::{mirror_column_names, mirror_table_name, quote_ident};

/// PostgreSQL type of a mirror column, from the SQLite affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorType {
    Bigint,
    DoublePrecision,
    Text,
    Bytea,
    Numeric,
}

impl MirrorType {
    /// INTEGER→bigint, REAL→double precision, TEXT→text, BLOB→bytea, NUMERIC→numeric.
    pub fn from_affinity(a: Affinity) -> MirrorType {
        match a {
            Affinity::Integer => MirrorType::Bigint,
            Affinity::Real => MirrorType::DoublePrecision,
            Affinity::Text => MirrorType::Text,
            Affinity::Blob => MirrorType::Bytea,
            Affinity::Numeric => MirrorType::Numeric,
        }
    }

    /// The SQL spelling (also what `edge_column_bindings.mirror_type` stores).
    pub fn sql(&self) -> &'static str {
        match self {
            MirrorType::Bigint => "bigint",
            MirrorType::DoublePrecision => "double precision",
            MirrorType::Text => "text",
            MirrorType::Bytea => "bytea",
            MirrorType::Numeric => "numeric",
        }
    }

    pub fn from_sql(s: &str) -> Option<MirrorType> {
        [
            MirrorType::Bigint,
            MirrorType::DoublePrecision,
            MirrorType::Text,
            MirrorType::Bytea,
            MirrorType::Numeric,
        ]
        .into_iter()
        .find(|t| t.sql() == s)
    }

    /// Array type of the `unnest` parameter carrying this column. Numeric travels as text and
    /// is cast in SQL, so its exact decimal spelling is what PostgreSQL parses.
    fn param_array_type(&self) -> &'static str {
        match self {
            MirrorType::Bigint => "bigint[]",
            MirrorType::DoublePrecision => "double precision[]",
            MirrorType::Text | MirrorType::Numeric => "text[]",
            MirrorType::Bytea => "bytea[]",
        }
    }
}

/// One business column of a mirror table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorColumn {
    /// Name in the device's table (key in `row`/`pk`).
    pub source_name: String,
    /// Name in the mirror table (fitted, never a platform column name).
    pub name: String,
    pub ty: MirrorType,
    /// 0 = not in the primary key, else 1-based position.
    pub pk_ordinal: i64,
}

/// A mirror table: its name and business columns (platform columns are implied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorTable {
    pub name: String,
    pub columns: Vec<MirrorColumn>,
}

impl MirrorTable {
    /// Every column of `schema` mirrored (the dev-path approval and the default proposal).
    pub fn for_schema(device_id: &Uuid, schema: &SchemaColumns) -> MirrorTable {
        let names = mirror_column_names(schema.columns.iter().map(|c| c.name.as_str()));
        let columns = schema
            .columns
            .iter()
            .zip(names)
            .map(|(c, name)| MirrorColumn {
                source_name: c.name.clone(),
                name,
                ty: MirrorType::from_affinity(c.decl_type_affinity),
                pk_ordinal: c.pk_ordinal,
            })
            .collect();
        MirrorTable {
            name: mirror_table_name(device_id, &schema.table_name),
            columns,
        }
    }

    /// Primary-key columns in key order.
    pub fn pk_columns(&self) -> Vec<&MirrorColumn> {
        let mut pk: Vec<&MirrorColumn> = self.columns.iter().filter(|c| c.pk_ordinal > 0).collect();
        pk.sort_by_key(|c| c.pk_ordinal);
        pk
    }

    /// Whether an existing mirror's primary key (its columns in key order, `device_id` first,
    /// as PostgreSQL reports them) differs from this table's. `None` when they agree or the
    /// table does not exist yet (`existing` empty). The upsert's `ON CONFLICT` target is this
    /// table's key, so a mismatch would fail every batch with 42P10 (reliability.md §4).
    pub fn primary_key_change(&self, existing: &[String]) -> Option<String> {
        if existing.is_empty() {
            return None;
        }
        let wanted: Vec<&str> = std::iter::once("device_id")
            .chain(self.pk_columns().into_iter().map(|c| c.name.as_str()))
            .collect();
        if existing
            .iter()
            .map(String::as_str)
            .eq(wanted.iter().copied())
        {
            return None;
        }
        Some(format!(
            "the approved schema's primary key ({}) differs from mirror {:?}'s ({}): the \
             lineage stays paused and its rows stay staged. To proceed, reject this review and \
             restore the table's primary key on the device, or approve into a new mirror table \
             (a new lineage, or a re-snapshot into a new table version once available)",
            wanted[1..].join(", "),
            self.name,
            existing[1..].join(", ")
        ))
    }

    /// `CREATE TABLE IF NOT EXISTS` with the platform columns. Business columns are nullable
    /// (tombstones carry only the key; SQLite's NOT NULL is not ours to enforce).
    pub fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    \"device_id\" uuid NOT NULL",
            quote_ident(&self.name)
        );
        for c in &self.columns {
            let _ = write!(sql, ",\n    {} {}", quote_ident(&c.name), c.ty.sql());
            if c.pk_ordinal > 0 {
                sql.push_str(" NOT NULL");
            }
        }
        sql.push_str(
            ",\n    \"_edge_epoch\" uuid NOT NULL,\n    \"_edge_commit_seq\" bigint NOT NULL,\n    \
             \"_edge_deleted\" boolean NOT NULL DEFAULT false,\n    \
             \"created_at\" timestamptz NOT NULL DEFAULT now(),\n    \
             \"updated_at\" timestamptz NOT NULL DEFAULT now(),\n    PRIMARY KEY (\"device_id\"",
        );
        for c in self.pk_columns() {
            let _ = write!(sql, ", {}", quote_ident(&c.name));
        }
        sql.push_str(")\n)");
        sql
    }

    /// `ALTER TABLE … ADD COLUMN IF NOT EXISTS` for columns approved after the table existed.
    pub fn add_columns_sql(&self, existing: &[String]) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| !existing.contains(&c.name))
            .map(|c| {
                format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                    quote_ident(&self.name),
                    quote_ident(&c.name),
                    c.ty.sql()
                )
            })
            .collect()
    }

    /// The version-guarded upsert. Parameters: `$1` device_id (uuid), then one array per
    /// business column (in `columns` order), then epochs (uuid[]), seqs (bigint[]), deleted
    /// (boolean[]) — exactly the arrays of an [`UpsertPlan`].
    pub fn upsert_sql(&self) -> String {
        self.guarded_upsert_sql(Guard::Newer)
    }

    /// [`Self::upsert_sql`] with the given version guard.
    pub fn guarded_upsert_sql(&self, guard: Guard) -> String {
        let n = self.columns.len();
        let mut targets = String::from("\"device_id\"");
        let mut selects = String::from("$1::uuid");
        let mut arrays = String::new();
        let mut aliases = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            let _ = write!(targets, ", {}", quote_ident(&c.name));
            let cast = if c.ty == MirrorType::Numeric {
                "::numeric"
            } else {
                ""
            };
            let _ = write!(selects, ", r.c{i}{cast}");
            let _ = write!(arrays, "${}::{}, ", i + 2, c.ty.param_array_type());
            let _ = write!(aliases, "c{i}, ");
        }
        targets.push_str(", \"_edge_epoch\", \"_edge_commit_seq\", \"_edge_deleted\"");
        selects.push_str(", r.e, r.s, r.d");
        let _ = write!(
            arrays,
            "${}::uuid[], ${}::bigint[], ${}::boolean[]",
            n + 2,
            n + 3,
            n + 4
        );
        aliases.push_str("e, s, d");
        let mut conflict = String::from("\"device_id\"");
        for c in self.pk_columns() {
            let _ = write!(conflict, ", {}", quote_ident(&c.name));
        }
        let mut sets = String::new();
        for c in self.columns.iter().filter(|c| c.pk_ordinal == 0) {
            let q = quote_ident(&c.name);
            let _ = write!(sets, "{q} = EXCLUDED.{q}, ");
        }
        sets.push_str(
            "\"_edge_epoch\" = EXCLUDED.\"_edge_epoch\", \
             \"_edge_commit_seq\" = EXCLUDED.\"_edge_commit_seq\", \
             \"_edge_deleted\" = EXCLUDED.\"_edge_deleted\", \"updated_at\" = now()",
        );
        format!(
            "INSERT INTO {table} AS m ({targets})\n\
             SELECT {selects}\n\
             FROM unnest({arrays}) AS r({aliases})\n\
             ON CONFLICT ({conflict}) DO UPDATE SET {sets}\n\
             WHERE (m.\"_edge_epoch\", m.\"_edge_commit_seq\") \
             {op} (EXCLUDED.\"_edge_epoch\", EXCLUDED.\"_edge_commit_seq\")",
            table = quote_ident(&self.name),
            op = match guard {
                Guard::Newer => "<",
                Guard::NewerOrSame => "<=",
            },
        )
    }
}

/// The version guard of an upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Live batches: only a strictly newer `(epoch, seq)` overwrites.
    Newer,
    /// Drains of staged rows: the same version overwrites too. A staged row whose version is
    /// already in the mirror was materialized with fewer columns (`allow_additive_continue`
    /// stages the full image while the old columns materialize, reliability.md §4); its
    /// replay under the new bindings fills the new columns. Any other staged row was never
    /// written, so for it the two guards agree.
    NewerOrSame,
}

/// A value converted to its mirror column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitted {
    Null,
    Int(i64),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// Decimal text, cast to numeric by PostgreSQL.
    Numeric(String),
}

/// Why a value does not fit its column: a permanent, per-row error (the row is staged as
/// `materialization_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column:?}: {storage_class} value does not fit {ty}{detail}")]
pub struct Misfit {
    pub column: String,
    pub storage_class: &'static str,
    pub ty: &'static str,
    pub detail: &'static str,
}

/// Converts one SQLite value to the column's type without losing information, or says why
/// not. SQLite's affinity already converts lossless cases on store, so what remains mismatched
/// (text in an INTEGER column, a fraction in an INTEGER column, a blob in a TEXT column) is data
/// the mirror cannot represent faithfully.
pub fn fit_value(column: &MirrorColumn, value: &SqlValue) -> Result<Fitted, Misfit> {
    let misfit = |detail: &'static str| Misfit {
        column: column.source_name.clone(),
        storage_class: value.storage_class(),
        ty: column.ty.sql(),
        detail,
    };
    match (column.ty, value) {
        (_, SqlValue::Null) if column.pk_ordinal > 0 => Err(misfit(" (primary key is NULL)")),
        (_, SqlValue::Null) => Ok(Fitted::Null),
        (MirrorType::Bigint, SqlValue::Integer(i)) => Ok(Fitted::Int(*i)),
        (MirrorType::Bigint, SqlValue::Real(f))
            if f.fract() == 0.0
                && *f >= -9.223_372_036_854_776e18
                && *f < 9.223_372_036_854_776e18 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Ok(Fitted::Int(*f as i64))
        }
        (MirrorType::DoublePrecision, SqlValue::Real(f)) => Ok(Fitted::Double(*f)),
        // A REAL column's value is a double whatever its JSON spelling (reliability.md §6):
        // SQLite's REAL affinity stores every number as a double, so an integer spelling
        // (`1152921504606847000`, jsonb's rendering of 2^60) is that double's decimal form and
        // converts to the nearest double — exactly the value the device holds.
        (MirrorType::DoublePrecision, SqlValue::Integer(i)) =>
        {
            #[allow(clippy::cast_precision_loss)]
            Ok(Fitted::Double(*i as f64))
        }
        (MirrorType::Text, SqlValue::Text(s)) if s.contains('\0') => {
            Err(misfit(" (PostgreSQL text cannot hold NUL)"))
        }
        (MirrorType::Text, SqlValue::Text(s)) => Ok(Fitted::Text(s.clone())),
        (MirrorType::Bytea, SqlValue::Blob(b)) => Ok(Fitted::Bytes(b.clone())),
        (MirrorType::Numeric, SqlValue::Integer(i)) => Ok(Fitted::Numeric(i.to_string())),
        (MirrorType::Numeric, SqlValue::Real(f)) if f.is_finite() => {
            // Display of f64 is the shortest exact round-trip spelling, never exponent form.
            Ok(Fitted::Numeric(f.to_string()))
        }
        _ => Err(misfit("")),
    }
}

/// One typed parameter array of an [`UpsertPlan`].
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    Bigint(Vec<Option<i64>>),
    Double(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
    Bytea(Vec<Option<Vec<u8>>>),
    /// Decimal text, cast to numeric in SQL.
    Numeric(Vec<Option<String>>),
}

impl ColumnValues {
    fn new(ty: MirrorType, capacity: usize) -> ColumnValues {
        match ty {
            MirrorType::Bigint => ColumnValues::Bigint(Vec::with_capacity(capacity)),
            MirrorType::DoublePrecision => ColumnValues::Double(Vec::with_capacity(capacity)),
            MirrorType::Text => ColumnValues::Text(Vec::with_capacity(capacity)),
            MirrorType::Bytea => ColumnValues::Bytea(Vec::with_capacity(capacity)),
            MirrorType::Numeric => ColumnValues::Numeric(Vec::with_capacity(capacity)),
        }
    }

    /// Appends a fitted value; `fit_value` produced it for this column's type, so the variants
    /// always agree (a mismatch would be a bug here, and is pushed as NULL rather than panic).
    fn push(&mut self, v: Fitted) {
        match (self, v) {
            (ColumnValues::Bigint(col), Fitted::Int(i)) => col.push(Some(i)),
            (ColumnValues::Double(col), Fitted::Double(f)) => col.push(Some(f)),
            (ColumnValues::Text(col), Fitted::Text(s)) => col.push(Some(s)),
            (ColumnValues::Bytea(col), Fitted::Bytes(b)) => col.push(Some(b)),
            (ColumnValues::Numeric(col), Fitted::Numeric(s)) => col.push(Some(s)),
            (ColumnValues::Bigint(col), _) => col.push(None),
            (ColumnValues::Double(col), _) => col.push(None),
            (ColumnValues::Text(col), _) | (ColumnValues::Numeric(col), _) => col.push(None),
            (ColumnValues::Bytea(col), _) => col.push(None),
        }
    }
}

/// A change that cannot be materialized (permanent): stage it as `materialization_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFailure {
    /// Index of the change in the input.
    pub index: usize,
    pub error: String,
}

/// The parameters of one [`MirrorTable::upsert_sql`] execution plus what did not go in.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertPlan {
    /// One array per business column, in table column order.
    pub columns: Vec<ColumnValues>,
    pub epochs: Vec<Uuid>,
    pub seqs: Vec<i64>,
    pub deleted: Vec<bool>,
    /// Input indexes of the rows in the arrays, in array order.
    pub applied_indexes: Vec<usize>,
    pub failures: Vec<RowFailure>,
    /// Changes dropped because a newer change of the same key is in the same input.
    pub superseded: usize,
}

impl UpsertPlan {
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }
}

/// Key of a fitted primary key, equal exactly when PostgreSQL would consider the keys equal
/// (-0.0 and 0.0 are the same double there).
fn key_part(out: &mut String, v: &Fitted) {
    match v {
        Fitted::Null => out.push('N'),
        Fitted::Int(i) => {
            let _ = write!(out, "I{i}");
        }
        Fitted::Double(f) => {
            let f = if *f == 0.0 { 0.0 } else { *f };
            let _ = write!(out, "D{}", f.to_bits());
        }
        Fitted::Text(s) | Fitted::Numeric(s) => {
            let _ = write!(out, "T{}:{s}", s.len());
        }
        Fitted::Bytes(b) => {
            let _ = write!(out, "B{}:{}", b.len(), hex::encode(b));
        }
    }
    out.push('|');
}

/// Turns changes (each with its `(journal_epoch, commit_seq)`) into the arrays of one upsert:
/// every value fitted to its column (misfits become [`RowFailure`]s), then reduced to the
/// newest change per primary key (ties: the later input wins, as a PK change's delete + insert
/// share nothing but order).
pub fn plan_upserts<'a>(
    table: &MirrorTable,
    changes: impl IntoIterator<Item = (CommitPosition, &'a RowChange)>,
) -> UpsertPlan {
    struct Candidate {
        position: CommitPosition,
        deleted: bool,
        values: Result<Vec<Fitted>, String>,
    }
    let pk_cols: Vec<usize> = {
        let mut idx: Vec<usize> = (0..table.columns.len())
            .filter(|i| table.columns[*i].pk_ordinal > 0)
            .collect();
        idx.sort_by_key(|i| table.columns[*i].pk_ordinal);
        idx
    };
    let mut failures = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut newest: HashMap<String, usize> = HashMap::new();
    let mut superseded = 0;
    for (index, (position, change)) in changes.into_iter().enumerate() {
        // The key first: without it the change cannot even be ordered against others.
        let mut key = String::new();
        let mut pk_error = None;
        for &c in &pk_cols {
            let col = &table.columns[c];
            match change.pk.get(&col.source_name) {
                None => {
                    pk_error = Some(format!("primary key column {:?} missing", col.source_name));
                    break;
                }
                Some(v) => match fit_value(col, v) {
                    Ok(f) => key_part(&mut key, &f),
                    Err(e) => {
                        pk_error = Some(e.to_string());
                        break;
                    }
                },
            }
        }
        if let Some(error) = pk_error {
            failures.push(RowFailure { index, error });
            candidates.push(Candidate {
                position,
                deleted: false,
                values: Err(String::new()),
            });
            continue;
        }
        let deleted = change.op == Op::Delete;
        let values = table
            .columns
            .iter()
            .map(|col| {
                let source = if deleted || col.pk_ordinal > 0 {
                    change.pk.get(&col.source_name)
                } else {
                    change.row.as_ref().and_then(|r| r.get(&col.source_name))
                };
                match source {
                    None if deleted => Ok(Fitted::Null),
                    None => Ok(Fitted::Null),
                    Some(v) => fit_value(col, v),
                }
            })
            .collect::<Result<Vec<Fitted>, Misfit>>()
            .map_err(|e| e.to_string());
        candidates.push(Candidate {
            position,
            deleted,
            values,
        });
        match newest.get(&key) {
            Some(&prev) if candidates[prev].position > position => superseded += 1,
            Some(_) => {
                superseded += 1;
                newest.insert(key, index);
            }
            None => {
                newest.insert(key, index);
            }
        }
    }
    let mut winners: Vec<usize> = newest.into_values().collect();
    winners.sort_unstable();
    let mut plan = UpsertPlan {
        columns: table
            .columns
            .iter()
            .map(|c| ColumnValues::new(c.ty, winners.len()))
            .collect(),
        epochs: Vec::with_capacity(winners.len()),
        seqs: Vec::with_capacity(winners.len()),
        deleted: Vec::with_capacity(winners.len()),
        applied_indexes: Vec::with_capacity(winners.len()),
        failures,
        superseded,
    };
    for index in winners {
        let Some(candidate) = candidates.get_mut(index) else {
            continue;
        };
        match std::mem::replace(&mut candidate.values, Err(String::new())) {
            Err(error) => plan.failures.push(RowFailure { index, error }),
            Ok(values) => {
                for (col, v) in plan.columns.iter_mut().zip(values) {
                    col.push(v);
                }
                plan.epochs.push(candidate.position.journal_epoch);
                plan.seqs.push(candidate.position.commit_seq);
                plan.deleted.push(candidate.deleted);
                plan.applied_indexes.push(index);
            }
        }
    }
    plan.failures.sort_by_key(|f| f.index);
    plan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::fingerprint::ColumnFingerprint;
    use edge_protocol::value::Row;

    fn schema() -> SchemaColumns {
        SchemaColumns::new(
            "device_state",
            vec![
                ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
                ColumnFingerprint::from_table_info("mode", "TEXT", 0, 0),
                ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
                ColumnFingerprint::from_table_info("price", "DECIMAL(10,2)", 0, 0),
                ColumnFingerprint::from_table_info("created_at", "TEXT", 0, 0),
            ],
        )
    }

    fn device() -> Uuid {
        Uuid::parse_str("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70").unwrap()
    }

    fn pos(seq: i64) -> CommitPosition {
        CommitPosition::new(device(), seq)
    }

    fn change(seq: i64, op: Op, id: i64, mode: Option<SqlValue>) -> RowChange {
        let mut pk = Row::new();
        pk.insert("id".into(), SqlValue::Integer(id));
        let row = mode.map(|m| {
            let mut r = pk.clone();
            r.insert("mode".into(), m);
            r
        });
        RowChange {
            commit_seq: seq,
            op,
            pk,
            row,
        }
    }

    #[test]
    fn ddl_quotes_everything_and_renames_platform_columns() {
        let t = MirrorTable::for_schema(&device(), &schema());
        assert_eq!(t.name, "edge_mirror_4d5e6f70_device_state");
        let ddl = t.create_sql();
        assert!(ddl.contains("\"id\" bigint NOT NULL"), "{ddl}");
        assert!(ddl.contains("\"setpoint\" double precision"), "{ddl}");
        assert!(ddl.contains("\"price\" numeric"), "{ddl}");
        assert!(ddl.contains("\"created_at_src\" text"), "{ddl}");
        assert!(ddl.contains("PRIMARY KEY (\"device_id\", \"id\")"), "{ddl}");
        let hostile = SchemaColumns::new(
            "\"; DROP TABLE x; --",
            vec![ColumnFingerprint::from_table_info("a\"b", "INTEGER", 1, 1)],
        );
        let t = MirrorTable::for_schema(&device(), &hostile);
        let ddl = t.create_sql();
        assert!(
            ddl.contains("\"edge_mirror_4d5e6f70_\"\"; DROP TABLE x; --\""),
            "{ddl}"
        );
        assert!(ddl.contains("\"a\"\"b\" bigint"), "{ddl}");
        assert!(t.upsert_sql().contains("\"a\"\"b\""));
    }

    #[test]
    fn upsert_sql_has_one_array_per_column_and_the_version_guard() {
        let t = MirrorTable::for_schema(&device(), &schema());
        let sql = t.upsert_sql();
        assert!(sql.contains("$3::bigint[]"), "{sql}");
        assert!(sql.contains("r.c3::numeric"), "{sql}");
        assert!(sql.contains("$9::boolean[]"), "{sql}");
        assert!(sql.contains("ON CONFLICT (\"device_id\", \"id\")"), "{sql}");
        assert!(sql.contains("< (EXCLUDED.\"_edge_epoch\", EXCLUDED.\"_edge_commit_seq\")"));
    }

    #[test]
    fn fitness_rules() {
        let col = |ty, pk| MirrorColumn {
            source_name: "c".into(),
            name: "c".into(),
            ty,
            pk_ordinal: pk,
        };
        use MirrorType::*;
        assert_eq!(
            fit_value(&col(Bigint, 0), &SqlValue::Integer(5)),
            Ok(Fitted::Int(5))
        );
        assert!(fit_value(&col(Bigint, 0), &SqlValue::Text("x".into())).is_err());
        assert!(fit_value(&col(Bigint, 0), &SqlValue::Real(1.5)).is_err());
        assert!(fit_value(&col(Bigint, 1), &SqlValue::Null).is_err());
        assert_eq!(
            fit_value(&col(Bigint, 0), &SqlValue::Null),
            Ok(Fitted::Null)
        );
        assert_eq!(
            fit_value(&col(DoublePrecision, 0), &SqlValue::Real(f64::INFINITY)),
            Ok(Fitted::Double(f64::INFINITY))
        );
        // A REAL column's value is a double whatever its JSON spelling (reliability.md §6).
        assert_eq!(
            fit_value(&col(DoublePrecision, 0), &SqlValue::Integer(i64::MAX)),
            Ok(Fitted::Double(i64::MAX as f64))
        );
        assert!(fit_value(&col(Text, 0), &SqlValue::Text("a\0b".into())).is_err());
        assert!(fit_value(&col(Text, 0), &SqlValue::Blob(vec![1])).is_err());
        assert!(fit_value(&col(Bytea, 0), &SqlValue::Text("x".into())).is_err());
        assert_eq!(
            fit_value(&col(Numeric, 0), &SqlValue::Real(0.1)),
            Ok(Fitted::Numeric("0.1".into()))
        );
        assert!(fit_value(&col(Numeric, 0), &SqlValue::Real(f64::INFINITY)).is_err());
        let err = fit_value(&col(Bigint, 0), &SqlValue::Text("x".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"c\": TEXT value does not fit bigint"
        );
    }

    #[test]
    fn plan_keeps_the_newest_change_per_key() {
        let t = MirrorTable::for_schema(&device(), &schema());
        let changes = [
            change(3, Op::Update, 1, Some("cool".into())),
            change(1, Op::Insert, 1, Some("heat".into())),
            change(2, Op::Insert, 2, Some("off".into())),
            change(4, Op::Delete, 2, None),
            change(5, Op::Insert, 3, Some(SqlValue::Integer(7))),
        ];
        let plan = plan_upserts(&t, changes.iter().map(|c| (pos(c.commit_seq), c)));
        assert_eq!(plan.applied_indexes, [0, 3]);
        assert_eq!(plan.seqs, [3, 4]);
        assert_eq!(plan.deleted, [false, true]);
        assert_eq!(plan.superseded, 2);
        assert_eq!(plan.failures.len(), 1);
        assert_eq!(plan.failures[0].index, 4);
        assert_eq!(
            plan.columns[2],
            ColumnValues::Text(vec![Some("cool".into()), None])
        );
    }

    #[test]
    fn plan_fails_rows_without_a_usable_key() {
        let t = MirrorTable::for_schema(&device(), &schema());
        let mut bad = change(1, Op::Insert, 1, Some("x".into()));
        bad.pk.insert("id".into(), SqlValue::Text("one".into()));
        let mut missing = change(2, Op::Insert, 1, Some("x".into()));
        missing.pk.clear();
        let changes = [bad, missing];
        let plan = plan_upserts(&t, changes.iter().map(|c| (pos(c.commit_seq), c)));
        assert!(plan.is_empty());
        assert_eq!(plan.failures.len(), 2);
    }
}
