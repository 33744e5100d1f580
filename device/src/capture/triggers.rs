//! Trigger SQL, generated as a pure function of a [`CapturePlan`].
//!
//! The triggers run inside the *application's* transactions, on the application's connection, so
//! they may only use SQLite built-ins and must never fail on any value the table can hold. The
//! journal row is kept small because its cost is paid on every application write (agent.md §1):
//! - `schema_id` is a small integer naming (table, schema_hash, column order) in `__omega_schemas`,
//!   instead of repeating table name and hash text in every row;
//! - `op` is an integer ([`OP_INSERT`], [`OP_UPDATE`], [`OP_DELETE`]);
//! - `row` is a `json_array` of the captured values in the schema's column order (no keys);
//! - `pk` is stored only for deletes (for inserts/updates it is derivable from `row`).
//!
//! `json_array` raises "JSON cannot hold BLOB values" for a blob argument, which would fail the
//! application's write; every column that can hold a blob is therefore wrapped so a blob becomes
//! `{"$hex":"…"}`, which the reader turns into the wire's `{"$base64":…}` marker.

use super::ident::{quote_ident, quote_literal};

/// Journal `op` code of an insert.
pub const OP_INSERT: i64 = 1;
/// Journal `op` code of an update that kept the primary key.
pub const OP_UPDATE: i64 = 2;
/// Journal `op` code of a delete (also the first half of a primary-key-changing update).
pub const OP_DELETE: i64 = 3;

/// Prefix of every trigger the agent owns; anything else is the application's.
pub const TRIGGER_PREFIX: &str = "__omega_trg_";

/// Marker key the triggers use for BLOB values inside the journal's row image.
pub const HEX_MARKER: &str = "$hex";

/// One captured column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedColumn {
    pub name: String,
    /// False only where SQLite guarantees no blob can be stored (typed STRICT columns), so the
    /// `typeof` guard is skipped there.
    pub may_hold_blob: bool,
}

/// Everything trigger generation needs about one enrolled `rows` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePlan {
    pub table: String,
    /// Stable small id of the table name (`__omega_tables`), used in trigger names so hostile
    /// table names never reach an identifier we construct.
    pub table_id: i64,
    /// `__omega_schemas.schema_id` baked into the triggers.
    pub schema_id: i64,
    /// Captured columns in table order: the order of values in the row image.
    pub columns: Vec<PlannedColumn>,
    /// Primary-key column names in key order (`table_info.pk` 1, 2, …).
    pub pk: Vec<String>,
}

/// Name and full `CREATE TRIGGER` text of one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSql {
    pub name: String,
    pub sql: String,
}

/// The name of trigger `kind` (`ins`, `upd`, `pkc`, `del`) of table id `table_id`.
pub fn trigger_name(table_id: i64, kind: &str) -> String {
    format!("{TRIGGER_PREFIX}{table_id}_{kind}")
}

/// One value of the row image; `source` is `NEW`, `OLD` or a quoted table alias.
fn value_expr(source: &str, column: &PlannedColumn) -> String {
    let col = format!("{source}.{}", quote_ident(&column.name));
    if column.may_hold_blob {
        format!(
            "CASE WHEN typeof({col})='blob' THEN json_object({}, hex({col})) ELSE {col} END",
            quote_literal(HEX_MARKER)
        )
    } else {
        col
    }
}

/// The row-image expression (a `json_array` of the captured columns in table order).
pub fn row_image_expr(plan: &CapturePlan, source: &str) -> String {
    let values: Vec<String> = plan.columns.iter().map(|c| value_expr(source, c)).collect();
    format!("json_array({})", values.join(", "))
}

/// The key expression (a `json_array` of the primary-key columns in key order).
pub fn pk_expr(plan: &CapturePlan, source: &str) -> String {
    let values: Vec<String> = plan
        .pk
        .iter()
        .map(|name| {
            let may_hold_blob = plan
                .columns
                .iter()
                .find(|c| &c.name == name)
                .is_none_or(|c| c.may_hold_blob);
            value_expr(
                source,
                &PlannedColumn {
                    name: name.clone(),
                    may_hold_blob,
                },
            )
        })
        .collect();
    format!("json_array({})", values.join(", "))
}

/// True when OLD and NEW have the same key. Binary collation and the storage class are compared
/// too: under a NOCASE key `'a'`→`'A'` is "the same row" to SQLite but a different key to the
/// mirror, so it must travel as delete + insert.
fn same_key_condition(plan: &CapturePlan) -> String {
    let parts: Vec<String> = plan
        .pk
        .iter()
        .map(|name| {
            let q = quote_ident(name);
            format!("OLD.{q} IS NEW.{q} COLLATE BINARY AND typeof(OLD.{q}) = typeof(NEW.{q})")
        })
        .collect();
    parts.join(" AND ")
}

fn journal_insert(schema_id: i64, op: i64, pk: &str, row: &str) -> String {
    format!(
        "INSERT INTO \"__omega_journal\" (schema_id, op, pk, row) VALUES ({schema_id}, {op}, {pk}, {row});"
    )
}

/// The four triggers of one table: insert, same-key update, key-changing update (delete of the
/// old key + insert of the new row) and delete.
pub fn trigger_set(plan: &CapturePlan) -> Vec<TriggerSql> {
    let table = quote_ident(&plan.table);
    let new_row = row_image_expr(plan, "NEW");
    let old_pk = pk_expr(plan, "OLD");
    let same_key = same_key_condition(plan);
    let s = plan.schema_id;
    let make = |kind: &str, event: &str, when: Option<String>, body: String| {
        let name = trigger_name(plan.table_id, kind);
        let when = when.map(|w| format!(" WHEN {w}")).unwrap_or_default();
        TriggerSql {
            sql: format!(
                "CREATE TRIGGER {} AFTER {event} ON {table}{when} BEGIN {body} END",
                quote_ident(&name)
            ),
            name,
        }
    };
    vec![
        make(
            "ins",
            "INSERT",
            None,
            journal_insert(s, OP_INSERT, "NULL", &new_row),
        ),
        make(
            "upd",
            "UPDATE",
            Some(same_key.clone()),
            journal_insert(s, OP_UPDATE, "NULL", &new_row),
        ),
        make(
            "pkc",
            "UPDATE",
            Some(format!("NOT ({same_key})")),
            format!(
                "{} {}",
                journal_insert(s, OP_DELETE, &old_pk, "NULL"),
                journal_insert(s, OP_INSERT, "NULL", &new_row)
            ),
        ),
        make(
            "del",
            "DELETE",
            None,
            journal_insert(s, OP_DELETE, &old_pk, "NULL"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> CapturePlan {
        CapturePlan {
            table: "we\"ird table".into(),
            table_id: 7,
            schema_id: 3,
            columns: vec![
                PlannedColumn {
                    name: "id".into(),
                    may_hold_blob: false,
                },
                PlannedColumn {
                    name: "select".into(),
                    may_hold_blob: true,
                },
            ],
            pk: vec!["id".into()],
        }
    }

    #[test]
    fn names_are_derived_from_ids_not_table_names() {
        let set = trigger_set(&plan());
        let names: Vec<&str> = set.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "__omega_trg_7_ins",
                "__omega_trg_7_upd",
                "__omega_trg_7_pkc",
                "__omega_trg_7_del"
            ]
        );
    }

    #[test]
    fn quotes_identifiers_and_guards_blob_columns() {
        let set = trigger_set(&plan());
        let ins = &set[0].sql;
        assert!(ins.starts_with(
            "CREATE TRIGGER \"__omega_trg_7_ins\" AFTER INSERT ON \"we\"\"ird table\""
        ));
        assert!(ins.contains("json_array(NEW.\"id\", CASE WHEN typeof(NEW.\"select\")='blob' THEN json_object('$hex', hex(NEW.\"select\")) ELSE NEW.\"select\" END)"));
        assert!(ins.contains("VALUES (3, 1, NULL,"));
        let del = &set[3].sql;
        assert!(del.contains("VALUES (3, 3, json_array(OLD.\"id\"), NULL)"));
    }

    #[test]
    fn key_change_is_split_by_when_clauses() {
        let set = trigger_set(&plan());
        assert!(set[1].sql.contains(
            "WHEN OLD.\"id\" IS NEW.\"id\" COLLATE BINARY AND typeof(OLD.\"id\") = typeof(NEW.\"id\")"
        ));
        assert!(set[2].sql.contains("WHEN NOT (OLD.\"id\" IS NEW.\"id\""));
        assert_eq!(set[2].sql.matches("INSERT INTO").count(), 2);
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(trigger_set(&plan()), trigger_set(&plan()));
    }
}
