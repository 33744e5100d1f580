//! One journal row: decoded against the schema it was captured with ([`decode_entry`]), or
//! encoded straight to its wire JSON ([`encode_entry`], the drain's fast path), both giving the
//! same bytes for the same entry.

use edge_protocol::batch::{Op, RowChange};
use edge_protocol::value::{Row, SqlValue};

use super::PendingChange;
use crate::capture::codec::parse_values;
use crate::capture::triggers::{OP_DELETE, OP_INSERT, OP_UPDATE};
use crate::capture::{CaptureError, StoredSchema};

/// A raw journal row.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub commit_seq: i64,
    pub schema_id: i64,
    pub op: i64,
    pub pk: Option<String>,
    pub row: Option<String>,
}

impl RawEntry {
    /// Maps a row of `SELECT commit_seq, schema_id, op, pk, row FROM "__omega_journal"`.
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
        Ok(RawEntry {
            commit_seq: r.get(0)?,
            schema_id: r.get(1)?,
            op: r.get(2)?,
            pk: r.get(3)?,
            row: r.get(4)?,
        })
    }
}

/// A decoded journal row, still under the schema it was captured with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedEntry {
    pub commit_seq: i64,
    pub op: Op,
    pub pk: Row,
    pub row: Option<Row>,
}

/// Decodes one raw entry against its stored schema. Pure.
pub(crate) fn decode_entry(
    raw: &RawEntry,
    schema: &StoredSchema,
) -> Result<DecodedEntry, CaptureError> {
    let seq = raw.commit_seq;
    let bad = |what: String| CaptureError::BadEntry {
        commit_seq: seq,
        what,
    };
    let codec = |source| CaptureError::Codec {
        commit_seq: seq,
        source,
    };
    // A row or key image's values (`missing` names the entry when the image is absent).
    let image = |text: Option<&str>, missing: &str| match text {
        Some(text) => parse_values(text).map_err(codec),
        None => Err(bad(missing.to_owned())),
    };
    match raw.op {
        OP_INSERT | OP_UPDATE => {
            let values = image(raw.row.as_deref(), "insert/update without a row image")?;
            if values.len() != schema.columns.len() {
                return Err(bad(format!(
                    "row image has {} values, schema {} has {} columns",
                    values.len(),
                    schema.schema_id,
                    schema.columns.len()
                )));
            }
            let row: Row = schema.columns.iter().cloned().zip(values).collect();
            let mut pk = Row::new();
            for name in &schema.pk {
                let v = row
                    .get(name)
                    .cloned()
                    .ok_or_else(|| bad(format!("key column {name:?} missing from row")))?;
                pk.insert(name.clone(), v);
            }
            let op = if raw.op == OP_INSERT {
                Op::Insert
            } else {
                Op::Update
            };
            Ok(DecodedEntry {
                commit_seq: seq,
                op,
                pk,
                row: Some(row),
            })
        }
        OP_DELETE => {
            let values = image(raw.pk.as_deref(), "delete without a key")?;
            if values.len() != schema.pk.len() {
                return Err(bad(format!(
                    "key has {} values, schema has {} key columns",
                    values.len(),
                    schema.pk.len()
                )));
            }
            Ok(DecodedEntry {
                commit_seq: seq,
                op: Op::Delete,
                pk: schema.pk.iter().cloned().zip(values).collect(),
                row: None,
            })
        }
        other => Err(bad(format!("unknown op code {other}"))),
    }
}

/// How one schema's entries are written as JSON without building a [`Row`]: key names
/// pre-encoded, and the order of the columns in a `Row` (a `BTreeMap`, sorted by name) — so
/// [`encode_entry`] writes exactly what `serde_json` writes for the [`RowChange`] that
/// [`decode_entry`] builds (a test holds this).
#[derive(Debug)]
pub(crate) struct EntryLayout {
    /// Per column (row-image order): `"name":` as JSON.
    keys: Vec<Vec<u8>>,
    /// Row-image indices of all columns, sorted by name.
    row_sorted: Vec<usize>,
    /// Row-image indices of the key columns, sorted by name (`None` if a key column is not
    /// in the row image: such entries go through `decode_entry`, which names the error).
    pk_in_row_sorted: Option<Vec<usize>>,
    /// Key-order indices of the key columns, sorted by name (for a delete's key image), and
    /// their `"name":` as JSON.
    pk_sorted: Vec<usize>,
    pk_keys: Vec<Vec<u8>>,
}

fn json_key(name: &str) -> Vec<u8> {
    let mut k = serde_json::to_vec(name).unwrap_or_default();
    k.push(b':');
    k
}

impl EntryLayout {
    pub(crate) fn new(schema: &StoredSchema) -> EntryLayout {
        let mut row_sorted: Vec<usize> = (0..schema.columns.len()).collect();
        row_sorted.sort_by(|a, b| schema.columns[*a].cmp(&schema.columns[*b]));
        let mut pk_sorted: Vec<usize> = (0..schema.pk.len()).collect();
        pk_sorted.sort_by(|a, b| schema.pk[*a].cmp(&schema.pk[*b]));
        let pk_in_row_sorted = pk_sorted
            .iter()
            .map(|k| schema.columns.iter().position(|c| *c == schema.pk[*k]))
            .collect();
        EntryLayout {
            keys: schema.columns.iter().map(|c| json_key(c)).collect(),
            row_sorted,
            pk_in_row_sorted,
            pk_sorted,
            pk_keys: schema.pk.iter().map(|c| json_key(c)).collect(),
        }
    }
}

/// Writes `{"k":v,...}` for the given (key, value) index pairs.
fn write_object<'a>(
    out: &mut Vec<u8>,
    pairs: impl Iterator<Item = (&'a [u8], &'a SqlValue)>,
) -> Result<(), serde_json::Error> {
    out.push(b'{');
    for (i, (key, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, value)?;
    }
    out.push(b'}');
    Ok(())
}

/// Encodes one raw entry straight to its wire JSON (see [`EntryLayout`]). Entries this fast
/// path does not cover — and every malformed entry, so errors read the same — go through
/// [`decode_entry`]; `None` means "use that".
pub(crate) fn encode_entry(
    raw: &RawEntry,
    schema: &StoredSchema,
    layout: &EntryLayout,
) -> Option<PendingChange> {
    let (op, text) = match raw.op {
        OP_INSERT => (Op::Insert, raw.row.as_deref()?),
        OP_UPDATE => (Op::Update, raw.row.as_deref()?),
        OP_DELETE => (Op::Delete, raw.pk.as_deref()?),
        _ => return None,
    };
    let values = parse_values(text).ok()?;
    let mut out = Vec::with_capacity(text.len() * 2 + 64);
    out.extend_from_slice(b"{\"commit_seq\":");
    let written = (|| -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut out, &raw.commit_seq)?;
        out.extend_from_slice(b",\"op\":");
        serde_json::to_writer(&mut out, &op)?;
        out.extend_from_slice(b",\"pk\":");
        Ok(())
    })();
    written.ok()?;
    if op == Op::Delete {
        if values.len() != schema.pk.len() {
            return None;
        }
        let pairs = layout
            .pk_sorted
            .iter()
            .map(|i| (layout.pk_keys[*i].as_slice(), &values[*i]));
        write_object(&mut out, pairs).ok()?;
        out.extend_from_slice(b",\"row\":null}");
    } else {
        if values.len() != schema.columns.len() {
            return None;
        }
        let pk = layout.pk_in_row_sorted.as_ref()?;
        let pairs = pk.iter().map(|i| (layout.keys[*i].as_slice(), &values[*i]));
        write_object(&mut out, pairs).ok()?;
        out.extend_from_slice(b",\"row\":");
        let pairs = layout
            .row_sorted
            .iter()
            .map(|i| (layout.keys[*i].as_slice(), &values[*i]));
        write_object(&mut out, pairs).ok()?;
        out.push(b'}');
    }
    Some(PendingChange {
        commit_seq: raw.commit_seq,
        json: out,
    })
}

pub(super) fn encode_change(change: &RowChange) -> Result<PendingChange, CaptureError> {
    PendingChange::new(change).map_err(|e| CaptureError::BadEntry {
        commit_seq: change.commit_seq,
        what: format!("cannot encode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_protocol::fingerprint::SchemaColumns;

    fn schema() -> StoredSchema {
        StoredSchema {
            schema_id: 1,
            table: "t".into(),
            schema_hash: "h".into(),
            columns: vec!["id".into(), "v".into()],
            pk: vec!["id".into()],
            schema_columns: SchemaColumns::new("t", vec![]),
        }
    }

    #[test]
    fn decodes_each_op_and_names_bad_entries() {
        let raw = |op, pk: Option<&str>, row: Option<&str>| RawEntry {
            commit_seq: 5,
            schema_id: 1,
            op,
            pk: pk.map(str::to_owned),
            row: row.map(str::to_owned),
        };
        let ins = decode_entry(&raw(OP_INSERT, None, Some("[1,\"x\"]")), &schema()).unwrap();
        assert_eq!(ins.op, Op::Insert);
        assert_eq!(ins.pk.get("id"), Some(&SqlValue::Integer(1)));
        let del = decode_entry(&raw(OP_DELETE, Some("[1]"), None), &schema()).unwrap();
        assert_eq!(del.op, Op::Delete);
        assert!(del.row.is_none());
        assert!(decode_entry(&raw(OP_INSERT, None, Some("[1]")), &schema()).is_err());
        assert!(decode_entry(&raw(9, None, Some("[1,2]")), &schema()).is_err());
        assert!(decode_entry(&raw(OP_DELETE, None, None), &schema()).is_err());
    }

    /// The fast path writes byte for byte what serde writes for the decoded change, including
    /// unsorted and awkward column names, composite keys, markers and escapes.
    #[test]
    fn encoded_entries_equal_serde_of_the_decoded_change() {
        let schema = StoredSchema {
            schema_id: 1,
            table: "t".into(),
            schema_hash: "h".into(),
            columns: vec![
                "zeta".into(),
                "id".into(),
                "Ä \"q\"".into(),
                "b".into(),
                "a".into(),
                "select".into(),
            ],
            pk: vec!["zeta".into(), "b".into()],
            schema_columns: SchemaColumns::new("t", vec![]),
        };
        let layout = EntryLayout::new(&schema);
        let raw = |op, pk: Option<&str>, row: Option<&str>| RawEntry {
            commit_seq: 9_007_199_254_740_993,
            schema_id: 1,
            op,
            pk: pk.map(str::to_owned),
            row: row.map(str::to_owned),
        };
        let row =
            r#"["k\"\n\u00e9", -9223372036854775808, 1.5e-7, {"$hex":"00ff"}, 9.0e+999, null]"#;
        let cases = [
            raw(OP_INSERT, None, Some(row)),
            raw(
                OP_UPDATE,
                None,
                Some(r#"["x",1,-9.0e+999,2,1.0,"\ud83d\ude00"]"#),
            ),
            raw(OP_DELETE, Some(r#"["k",7]"#), None),
        ];
        for r in &cases {
            let d = decode_entry(r, &schema).unwrap();
            let expected = serde_json::to_vec(&RowChange {
                commit_seq: d.commit_seq,
                op: d.op,
                pk: d.pk,
                row: d.row,
            })
            .unwrap();
            let fast = encode_entry(r, &schema, &layout).unwrap();
            assert_eq!(
                String::from_utf8(fast.json.clone()).unwrap(),
                String::from_utf8(expected).unwrap()
            );
            assert_eq!(fast.commit_seq, r.commit_seq);
        }
        // Malformed entries take the slow path, which names the problem.
        assert!(encode_entry(&raw(OP_INSERT, None, Some("[1]")), &schema, &layout).is_none());
        assert!(encode_entry(&raw(9, None, Some(row)), &schema, &layout).is_none());
        assert!(encode_entry(&raw(OP_DELETE, None, None), &schema, &layout).is_none());
    }
}
