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
//!
//! ## REALs: exact whatever the application's SQLite (reliability.md §6)
//! The triggers run in the *application's* library, not ours, and `json_array`'s rendering of a
//! REAL depends on its version: 3.40 (Debian 12, Raspberry Pi OS) keeps only 15 significant
//! digits (`0.3333333333333333` → `0.333333333333333`, 2^60 → `1.15292150460685e+18`) and writes
//! ±infinity as `Inf`/`-Inf` (not JSON); 3.54 writes `9.0e+999`. Neither `printf('%.17g')`
//! (`0.30000000000000004` → `0.3` on 3.40) nor `quote(x)` is exact on 3.40: `quote` prints 15
//! digits whenever 3.40's own (imprecise) text-to-double conversion reads them back as `x`, which
//! it wrongly does for about 1 value in 100,000 (`6.4619946647724404` → `6.46199466477244`;
//! measured on 500,000 values). `printf('%!.17e', x)` — 18 significant digits, always with an
//! exponent so the reader tells it from an INTEGER — read back with a correctly rounded parser
//! gave every value back bit for bit on 3.40 and 3.54 (750,000 values, random bit patterns,
//! subnormals and ±1e308 included). So a column that may hold a REAL is written as
//! `json(printf('%!.17e', x))` (a raw JSON number inside the array), and ±infinity as the wire's
//! own marker `{"$real":"inf"}` / `{"$real":"-inf"}` (`abs(x) < 9e999` is false only for them;
//! SQLite stores NaN as NULL). The one thing no SQL function of any version reveals is the sign
//! of a zero: `-0.0`, which SQLite keeps only in a column without REAL/INTEGER/NUMERIC/TEXT
//! affinity (a REAL column stores it as integer 0), is captured as `0.0`.
//!
//! Functions used, all built in since 3.38 (JSON1 before): `json_array`, `json_object`, `json`,
//! `printf`, `hex`, `typeof`, `abs`. Changing this text re-creates every installed trigger at the
//! next schema sync (installed and desired SQL are compared text for text), and the reader keeps
//! decoding the forms older triggers wrote (`codec`).

use super::ident::{quote_ident, quote_literal};

/// Journal `op` code of an insert.
pub const OP_INSERT: i64 = 1;
/// Journal `op` code of an update that kept the primary key.
pub const OP_UPDATE: i64 = 2;
/// Journal `op` code of a delete (also the first half of a primary-key-changing update).
pub const OP_DELETE: i64 = 3;
/// Journal `op` code of a snapshot marker the agent writes itself (never a trigger): a chunk's
/// marker above the rows it reserved, or a run's end marker ([`crate::capture::snapshot`]).
/// Readers skip it: it is never a row on the wire.
pub const OP_SNAPSHOT_MARKER: i64 = 4;

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
    /// False only where SQLite guarantees no REAL can be stored (STRICT INTEGER/TEXT/BLOB
    /// columns); elsewhere a REAL is written exactly (module docs).
    pub may_hold_real: bool,
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

/// Marker key of a non-finite REAL in the row image (the wire's own, protocol §2).
pub const REAL_MARKER: &str = "$real";

/// The exact JSON of a REAL `col` (module docs): 18 significant digits for finite values, the
/// `$real` marker for ±infinity.
fn real_expr(col: &str) -> String {
    let marker = |sign: &str| quote_literal(&format!("{{\"{REAL_MARKER}\":\"{sign}inf\"}}"));
    format!(
        "json(CASE WHEN abs({col}) < 9e999 THEN printf('%!.17e', {col}) WHEN {col} > 0 THEN {} ELSE {} END)",
        marker(""),
        marker("-")
    )
}

/// One value of the row image; `source` is `NEW`, `OLD` or a quoted table alias.
fn value_expr(source: &str, column: &PlannedColumn) -> String {
    let col = format!("{source}.{}", quote_ident(&column.name));
    let blob = || format!("json_object({}, hex({col}))", quote_literal(HEX_MARKER));
    match (column.may_hold_real, column.may_hold_blob) {
        (true, true) => format!(
            "CASE typeof({col}) WHEN 'real' THEN {} WHEN 'blob' THEN {} ELSE {col} END",
            real_expr(&col),
            blob()
        ),
        (true, false) => format!(
            "CASE WHEN typeof({col})='real' THEN {} ELSE {col} END",
            real_expr(&col)
        ),
        (false, true) => format!(
            "CASE WHEN typeof({col})='blob' THEN {} ELSE {col} END",
            blob()
        ),
        (false, false) => col,
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
            let planned = plan.columns.iter().find(|c| &c.name == name);
            value_expr(
                source,
                &PlannedColumn {
                    name: name.clone(),
                    may_hold_blob: planned.is_none_or(|c| c.may_hold_blob),
                    may_hold_real: planned.is_none_or(|c| c.may_hold_real),
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
                    may_hold_real: false,
                },
                PlannedColumn {
                    name: "select".into(),
                    may_hold_blob: true,
                    may_hold_real: false,
                },
                PlannedColumn {
                    name: "r".into(),
                    may_hold_blob: true,
                    may_hold_real: true,
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
        assert!(ins.contains("json_array(NEW.\"id\", CASE WHEN typeof(NEW.\"select\")='blob' THEN json_object('$hex', hex(NEW.\"select\")) ELSE NEW.\"select\" END, "));
        assert!(ins.contains("VALUES (3, 1, NULL,"));
        assert!(ins.contains(
            "CASE typeof(NEW.\"r\") WHEN 'real' THEN json(CASE WHEN abs(NEW.\"r\") < 9e999 \
             THEN printf('%!.17e', NEW.\"r\") WHEN NEW.\"r\" > 0 THEN '{\"$real\":\"inf\"}' \
             ELSE '{\"$real\":\"-inf\"}' END) WHEN 'blob' THEN json_object('$hex', hex(NEW.\"r\")) \
             ELSE NEW.\"r\" END"
        ));
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
