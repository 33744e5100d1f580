//! Schema fingerprint and `schema_hash` (spec §8).
//!
//! The fingerprint is what `PRAGMA table_info` says about each column, reduced to what changes
//! how a row must be materialized: name, affinity, primary-key position, NOT NULL. Columns are
//! sorted by name so reordering columns in `CREATE TABLE` does not look like a schema change.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::canonical::canonical_json;

/// SQLite column affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The wire spelling (`"INTEGER"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Affinity::Integer => "INTEGER",
            Affinity::Text => "TEXT",
            Affinity::Blob => "BLOB",
            Affinity::Real => "REAL",
            Affinity::Numeric => "NUMERIC",
        }
    }

    /// Parses the wire spelling (exact, upper case).
    pub fn from_wire(s: &str) -> Option<Affinity> {
        match s {
            "INTEGER" => Some(Affinity::Integer),
            "TEXT" => Some(Affinity::Text),
            "BLOB" => Some(Affinity::Blob),
            "REAL" => Some(Affinity::Real),
            "NUMERIC" => Some(Affinity::Numeric),
            _ => None,
        }
    }
}

impl std::fmt::Display for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQLite's affinity rules (datatype3 §3.1), checked in SQLite's order: `INT` first, so
/// `"CHARINT"` is INTEGER and `"FLOATING POINT"` is INTEGER too (it contains "INT").
pub fn affinity(declared_type: &str) -> Affinity {
    let upper = declared_type.to_ascii_uppercase();
    if upper.contains("INT") {
        Affinity::Integer
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        Affinity::Text
    } else if upper.contains("BLOB") || upper.trim().is_empty() {
        Affinity::Blob
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// One column of the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnFingerprint {
    pub name: String,
    pub decl_type_affinity: Affinity,
    /// `table_info.pk`: 0 when not part of the primary key, else the 1-based position in it.
    pub pk_ordinal: i64,
    pub not_null: bool,
}

impl ColumnFingerprint {
    /// Builds a column from `PRAGMA table_info` fields (`type`, `notnull`, `pk`).
    pub fn from_table_info(
        name: impl Into<String>,
        decl_type: &str,
        notnull: i64,
        pk: i64,
    ) -> Self {
        ColumnFingerprint {
            name: name.into(),
            decl_type_affinity: affinity(decl_type),
            pk_ordinal: pk,
            not_null: notnull == 1,
        }
    }
}

/// The fingerprint document `{"table_name": …, "columns": [...]}`; columns always sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RawSchemaColumns")]
pub struct SchemaColumns {
    pub table_name: String,
    pub columns: Vec<ColumnFingerprint>,
}

/// Deserialization goes through `new` so a decoded fingerprint is sorted like a built one.
#[derive(Deserialize)]
struct RawSchemaColumns {
    table_name: String,
    columns: Vec<ColumnFingerprint>,
}

impl From<RawSchemaColumns> for SchemaColumns {
    fn from(raw: RawSchemaColumns) -> Self {
        SchemaColumns::new(raw.table_name, raw.columns)
    }
}

impl SchemaColumns {
    /// Sorts the columns by name, byte order (the hash must not depend on table column order).
    pub fn new(table_name: impl Into<String>, mut columns: Vec<ColumnFingerprint>) -> Self {
        columns.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        SchemaColumns {
            table_name: table_name.into(),
            columns,
        }
    }

    /// Canonical JSON of the fingerprint (sorted keys, no whitespace): the hashed text.
    pub fn canonical_json(&self) -> String {
        canonical_json(&self.to_json())
    }

    /// Lowercase hex SHA-256 of [`SchemaColumns::canonical_json`].
    pub fn schema_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// Names of the primary-key columns in key order (`pk_ordinal` 1, 2, …).
    pub fn primary_key(&self) -> Vec<&str> {
        let mut pk: Vec<&ColumnFingerprint> =
            self.columns.iter().filter(|c| c.pk_ordinal > 0).collect();
        pk.sort_by_key(|c| c.pk_ordinal);
        pk.into_iter().map(|c| c.name.as_str()).collect()
    }

    fn to_json(&self) -> Value {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "decl_type_affinity": c.decl_type_affinity.as_str(),
                    "pk_ordinal": c.pk_ordinal,
                    "not_null": c.not_null,
                })
            })
            .collect();
        json!({"table_name": self.table_name, "columns": columns})
    }
}

/// True for 64 lowercase hex digits (the only accepted `schema_hash` spelling).
pub fn is_schema_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_1() -> SchemaColumns {
        // CREATE TABLE device_state (id INTEGER PRIMARY KEY NOT NULL, mode TEXT, setpoint REAL)
        SchemaColumns::new(
            "device_state",
            vec![
                ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
                ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
                ColumnFingerprint::from_table_info("mode", "TEXT", 0, 0),
            ],
        )
    }

    #[test]
    fn test_vector_1() {
        let fp = vector_1();
        assert_eq!(
            fp.canonical_json(),
            r#"{"columns":[{"decl_type_affinity":"INTEGER","name":"id","not_null":true,"pk_ordinal":1},{"decl_type_affinity":"TEXT","name":"mode","not_null":false,"pk_ordinal":0},{"decl_type_affinity":"REAL","name":"setpoint","not_null":false,"pk_ordinal":0}],"table_name":"device_state"}"#
        );
        assert_eq!(
            fp.schema_hash(),
            "2eca4022338318bb748bc0266ee4c9d9188aa84f3782687f9b585d36a9e79530"
        );
    }

    #[test]
    fn test_vector_2() {
        // CREATE TABLE readings (site TEXT NOT NULL, seq INTEGER NOT NULL, payload,
        //   "Value" DECIMAL(10,2), PRIMARY KEY (site, seq)) WITHOUT ROWID
        let fp = SchemaColumns::new(
            "readings",
            vec![
                ColumnFingerprint::from_table_info("site", "TEXT", 1, 1),
                ColumnFingerprint::from_table_info("seq", "INTEGER", 1, 2),
                ColumnFingerprint::from_table_info("payload", "", 0, 0),
                ColumnFingerprint::from_table_info("Value", "DECIMAL(10,2)", 0, 0),
            ],
        );
        let names: Vec<&str> = fp.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Value", "payload", "seq", "site"]);
        assert_eq!(fp.primary_key(), ["site", "seq"]);
        assert_eq!(
            fp.schema_hash(),
            "e586452aace43d93bcfa37663feed3f24ecef832ea9d1891d51488c9aefc0024"
        );
    }

    #[test]
    fn column_order_does_not_change_the_hash_but_types_do() {
        let fp = vector_1();
        let mut reversed = fp.columns.clone();
        reversed.reverse();
        assert_eq!(
            SchemaColumns::new("device_state", reversed).schema_hash(),
            fp.schema_hash()
        );
        let mut retyped = fp.columns.clone();
        retyped[1].decl_type_affinity = Affinity::Blob;
        assert_ne!(
            SchemaColumns::new("device_state", retyped).schema_hash(),
            fp.schema_hash()
        );
    }

    #[test]
    fn affinity_rules_in_sqlite_order() {
        let cases = [
            ("INTEGER", Affinity::Integer),
            ("bigint", Affinity::Integer),
            ("CHARINT", Affinity::Integer),
            ("FLOATING POINT", Affinity::Integer),
            ("VARCHAR(20)", Affinity::Text),
            ("nchar", Affinity::Text),
            ("CLOB", Affinity::Text),
            ("text", Affinity::Text),
            ("BLOB", Affinity::Blob),
            ("", Affinity::Blob),
            ("REAL", Affinity::Real),
            ("double precision", Affinity::Real),
            ("FLOAT", Affinity::Real),
            ("DECIMAL(10,2)", Affinity::Numeric),
            ("BOOLEAN", Affinity::Numeric),
            ("DATETIME", Affinity::Numeric),
            ("STRING", Affinity::Numeric),
        ];
        for (decl, expected) in cases {
            assert_eq!(affinity(decl), expected, "{decl}");
        }
    }

    #[test]
    fn serde_spelling_and_sorting_on_decode() {
        let text = r#"{"table_name":"t","columns":[{"name":"b","decl_type_affinity":"NUMERIC","pk_ordinal":0,"not_null":false},{"name":"a","decl_type_affinity":"BLOB","pk_ordinal":1,"not_null":true}]}"#;
        let fp: SchemaColumns = serde_json::from_str(text).unwrap();
        assert_eq!(fp.columns[0].name, "a");
        assert_eq!(serde_json::to_value(Affinity::Numeric).unwrap(), "NUMERIC");
    }

    #[test]
    fn schema_hash_spelling() {
        assert!(is_schema_hash(&"a".repeat(64)));
        assert!(!is_schema_hash(&"A".repeat(64)));
        assert!(!is_schema_hash(&"a".repeat(63)));
        assert!(!is_schema_hash(&"g".repeat(64)));
    }
}
