//! Reading, acknowledging and measuring `__omega_journal` — the API the publisher uses.
//!
//! Reading turns journal rows into protocol [`RowChange`]s grouped by (table, schema_hash), each
//! with its encoded size so the publisher can cut batches under `max_payload_bytes`. Entries
//! captured under a schema hash that is no longer the table's current one (e.g. written by the old
//! triggers between an `ALTER TABLE ADD COLUMN` and the agent noticing it) are re-read from the
//! live row, so the new column's value is not lost (agent.md §1.4).
//!
//! Acknowledging moves the table's cursor in `state.db` first, then deletes the acknowledged rows
//! in small `BEGIN IMMEDIATE` transactions so the application's writer only ever queues briefly
//! behind the agent (never sees SQLITE_BUSY given any reasonable busy_timeout).

use std::collections::{BTreeMap, BTreeSet};

use edge_protocol::batch::{Op, RowChange};
use edge_protocol::fingerprint::SchemaColumns;
use edge_protocol::value::{Row, SqlValue};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, TransactionBehavior};
use tracing::debug;

use super::codec::parse_values;
use super::ident::quote_ident;
use super::triggers::{row_image_expr, OP_DELETE, OP_INSERT, OP_UPDATE};
use super::{Capture, CaptureError, RowsEntry, StoredSchema};
use crate::state::{counter, StateDb};

/// Rows deleted per transaction when acknowledging: small enough that one transaction holds the
/// write lock for about a millisecond on a gateway.
pub const DELETE_CHUNK_ROWS: usize = 256;

/// Approximate fixed cost of one journal row beyond its JSON text (rowid, ints, record header),
/// used by [`Capture::journal_stats`].
pub const ENTRY_OVERHEAD_BYTES: u64 = 16;

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Only entries with `commit_seq > after_seq` (a read-ahead position: entries already fixed
    /// in the outbox are not read again). Per-table acknowledged cursors always apply as well.
    pub after_seq: i64,
    /// Upper bound on journal rows examined in this call.
    pub max_entries: usize,
    /// Tables not to read (paused). Pass `after_seq = 0` after a resume to pick them up again.
    pub skip_tables: BTreeSet<String>,
}

/// One change, already encoded as it goes on the wire.
///
/// Encoded once, when read: a decoded [`RowChange`] (two maps with a `String` per column) is
/// several times larger than its JSON, and the batcher needs the JSON anyway — holding decoded
/// changes for a whole read, then cloning and encoding them again, was most of a drain's
/// memory and a large share of its CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    pub commit_seq: i64,
    /// `serde_json` of the [`RowChange`]: one element of a batch's `rows` array.
    pub json: Vec<u8>,
}

impl PendingChange {
    /// Encodes `change`.
    pub fn new(change: &RowChange) -> Result<PendingChange, serde_json::Error> {
        Ok(PendingChange {
            commit_seq: change.commit_seq,
            json: serde_json::to_vec(change)?,
        })
    }

    /// Encoded size: the change's share of a batch's `rows` array (plus a comma).
    pub fn bytes(&self) -> usize {
        self.json.len()
    }

    /// The change decoded again (for inspection; the publisher only moves the bytes).
    pub fn change(&self) -> Result<RowChange, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }
}

/// Consecutive changes of one table under one schema hash (one batch's worth, or more).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeGroup {
    pub table: String,
    pub schema_hash: String,
    pub schema_columns: SchemaColumns,
    pub changes: Vec<PendingChange>,
}

impl ChangeGroup {
    /// Sum of the changes' encoded sizes.
    pub fn bytes(&self) -> usize {
        self.changes.iter().map(PendingChange::bytes).sum()
    }
}

/// Result of [`Capture::read_pending`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingRead {
    /// Groups in order of their first `commit_seq`; within a table, groups are in commit order.
    pub groups: Vec<ChangeGroup>,
    /// Per table, the highest commit_seq examined. Entries that produce no change (a refreshed
    /// entry whose row is gone — a later delete covers it) are covered by this: acknowledge the
    /// table up to it once everything before it is acknowledged.
    pub covered: BTreeMap<String, i64>,
    /// Highest commit_seq examined; the next call's `after_seq`.
    pub last_seq: i64,
    /// Entries re-read from the live row because they were captured under an older hash.
    pub refreshed: usize,
    /// Entries whose row no longer exists (nothing to send for them).
    pub superseded: usize,
}

/// Journal size of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableJournalStats {
    pub table: String,
    pub entries: u64,
    /// Approximate stored bytes (JSON text + [`ENTRY_OVERHEAD_BYTES`] per row).
    pub bytes: u64,
    pub oldest_seq: i64,
    pub newest_seq: i64,
}

/// Converts a decoded SQLite value to a bindable one.
pub(crate) fn to_sql(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(*i),
        SqlValue::Real(f) => Value::Real(*f),
        SqlValue::Text(s) => Value::Text(s.clone()),
        SqlValue::Blob(b) => Value::Blob(b.clone()),
    }
}

/// Converts a value read from SQLite.
pub(crate) fn from_sql(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(f) => SqlValue::Real(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
    }
}

/// A raw journal row.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub commit_seq: i64,
    pub schema_id: i64,
    pub op: i64,
    pub pk: Option<String>,
    pub row: Option<String>,
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
    match raw.op {
        OP_INSERT | OP_UPDATE => {
            let text = raw
                .row
                .as_deref()
                .ok_or_else(|| bad("insert/update without a row image".into()))?;
            let values = parse_values(text).map_err(codec)?;
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
            let text = raw
                .pk
                .as_deref()
                .ok_or_else(|| bad("delete without a key".into()))?;
            let values = parse_values(text).map_err(codec)?;
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

fn encode_change(change: &RowChange) -> Result<PendingChange, CaptureError> {
    PendingChange::new(change).map_err(|e| CaptureError::BadEntry {
        commit_seq: change.commit_seq,
        what: format!("cannot encode: {e}"),
    })
}

/// `PRAGMA synchronous=NORMAL` on the agent's source connection while it deletes acknowledged
/// journal rows, restored afterwards. Losing such a delete to a power cut is harmless (the rows
/// are at or below the acknowledged cursor: the reader skips them and the next ack deletes
/// them), while an fsync per 256-row transaction was most of a backlog drain's wall-clock time.
/// Everything else the agent writes to the source keeps the connection's normal setting
/// ([`restore_sync`] afterwards, on every path).
fn relax_sync(conn: &rusqlite::Connection) -> Option<i64> {
    let previous = conn
        .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
        .ok()
        .filter(|p| *p > 1);
    if previous.is_some() {
        let _ = conn.execute_batch("PRAGMA synchronous=NORMAL");
    }
    previous
}

fn restore_sync(conn: &rusqlite::Connection, previous: Option<i64>) {
    if let Some(p) = previous {
        let _ = conn.pragma_update(None, "synchronous", p);
    }
}

/// True for SQLITE_BUSY / SQLITE_LOCKED: another connection held the lock past busy_timeout.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Capture {
    /// Reads pending journal entries (after `opts.after_seq` and after each table's acknowledged
    /// cursor), decoded, refreshed where the hash is outdated, grouped per (table, hash).
    pub fn read_pending(
        &mut self,
        state: &StateDb,
        opts: &ReadOptions,
    ) -> Result<PendingRead, CaptureError> {
        let acked = state.acked_cursors()?;
        let skip_ids: Vec<i64> = opts
            .skip_tables
            .iter()
            .flat_map(|t| self.schema_ids_of(t))
            .collect();
        let raws = self.raw_entries(opts.after_seq, opts.max_entries, &skip_ids)?;
        let mut out = PendingRead {
            last_seq: opts.after_seq,
            ..PendingRead::default()
        };
        // Per entry only the change itself is built: schemas are shared through a per-read
        // cache, and hash/columns are cloned once per group, not once per entry (these clones
        // were most of the reader's CPU in a backlog drain).
        let mut schemas: BTreeMap<i64, std::rc::Rc<(StoredSchema, EntryLayout)>> = BTreeMap::new();
        for raw in raws {
            out.last_seq = out.last_seq.max(raw.commit_seq);
            let cached = match schemas.get(&raw.schema_id) {
                Some(s) => s.clone(),
                None => {
                    let s = self.stored_schema(raw.schema_id)?.cloned().ok_or(
                        CaptureError::UnknownSchema {
                            commit_seq: raw.commit_seq,
                            schema_id: raw.schema_id,
                        },
                    )?;
                    let layout = EntryLayout::new(&s);
                    let s = std::rc::Rc::new((s, layout));
                    schemas.insert(raw.schema_id, s.clone());
                    s
                }
            };
            let (schema, layout) = (&cached.0, &cached.1);
            if opts.skip_tables.contains(&schema.table) {
                continue;
            }
            if raw.commit_seq <= acked.get(&schema.table).copied().unwrap_or(0) {
                continue;
            }
            match out.covered.get_mut(&schema.table) {
                Some(c) => *c = raw.commit_seq,
                None => {
                    out.covered.insert(schema.table.clone(), raw.commit_seq);
                }
            }
            let outdated = self
                .catalog
                .rows
                .get(&schema.table)
                .is_some_and(|cur| cur.table.schema_hash != schema.schema_hash);
            // `None`: under the schema it was captured with.
            let (pending, under_current) = if outdated {
                let decoded = decode_entry(&raw, schema)?;
                let Some(cur) = self.catalog.rows.get(&schema.table).cloned() else {
                    continue;
                };
                match self.refresh(&cur, schema, decoded)? {
                    Refreshed::Current(change) => {
                        out.refreshed += 1;
                        (
                            encode_change(&change)?,
                            Some((cur.table.schema_hash.clone(), cur.table.schema.clone())),
                        )
                    }
                    Refreshed::Gone => {
                        out.superseded += 1;
                        continue;
                    }
                    Refreshed::AsCaptured(change) => (encode_change(&change)?, None),
                }
            } else if let Some(pending) = encode_entry(&raw, schema, layout) {
                // The common case: straight from the journal's text to the wire's.
                (pending, None)
            } else {
                let decoded = decode_entry(&raw, schema)?;
                let change = RowChange {
                    commit_seq: decoded.commit_seq,
                    op: decoded.op,
                    pk: decoded.pk,
                    row: decoded.row,
                };
                (encode_change(&change)?, None)
            };
            let hash = under_current
                .as_ref()
                .map_or(schema.schema_hash.as_str(), |(h, _)| h.as_str());
            let idx = out
                .groups
                .iter()
                .rposition(|g| g.table == schema.table && g.schema_hash == hash);
            let idx = match idx {
                Some(i) => i,
                None => {
                    let (schema_hash, schema_columns) = under_current.unwrap_or_else(|| {
                        (schema.schema_hash.clone(), schema.schema_columns.clone())
                    });
                    out.groups.push(ChangeGroup {
                        table: schema.table.clone(),
                        schema_hash,
                        schema_columns,
                        changes: Vec::new(),
                    });
                    out.groups.len() - 1
                }
            };
            if let Some(g) = out.groups.get_mut(idx) {
                g.changes.push(pending);
            }
        }
        if out.refreshed > 0 {
            debug!(
                refreshed = out.refreshed,
                "entries re-read under the current schema"
            );
            state.bump_counter(counter::REFRESHED_ENTRIES, "", out.refreshed as i64)?;
        }
        Ok(out)
    }

    pub(crate) fn raw_entries(
        &self,
        after_seq: i64,
        max_entries: usize,
        skip_schema_ids: &[i64],
    ) -> Result<Vec<RawEntry>, CaptureError> {
        let skip = if skip_schema_ids.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = skip_schema_ids.iter().map(i64::to_string).collect();
            format!(" AND schema_id NOT IN ({})", ids.join(","))
        };
        let sql = format!(
            "SELECT commit_seq, schema_id, op, pk, row FROM \"__omega_journal\" \
             WHERE commit_seq > ?1{skip} ORDER BY commit_seq LIMIT ?2"
        );
        // One read snapshot for the schema check and the entries: if the schema is the one we
        // fingerprinted at the last poll, every entry in this snapshot whose hash differs from
        // the current one is recognisably outdated and gets refreshed. Without the snapshot an
        // ALTER TABLE between poll and read would let entries captured by the old triggers
        // after the ALTER pass as current, losing the new columns' values.
        let snapshot = self.conn.unchecked_transaction()?;
        let version: i64 = snapshot.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if Some(version) != self.schema_version {
            return Err(CaptureError::SchemaChanged);
        }
        let rows = {
            let mut stmt = snapshot.prepare(&sql)?;
            let limit = i64::try_from(max_entries).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![after_seq, limit], |r| {
                    Ok(RawEntry {
                        commit_seq: r.get(0)?,
                        schema_id: r.get(1)?,
                        op: r.get(2)?,
                        pk: r.get(3)?,
                        row: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        snapshot.commit()?;
        Ok(rows)
    }

    /// Re-reads the live row for an entry captured under an outdated schema.
    fn refresh(
        &self,
        current: &RowsEntry,
        captured: &StoredSchema,
        entry: DecodedEntry,
    ) -> Result<Refreshed, CaptureError> {
        let as_captured = |e: DecodedEntry| RowChange {
            commit_seq: e.commit_seq,
            op: e.op,
            pk: e.pk,
            row: e.row,
        };
        // The key must mean the same thing in both schemas, otherwise the entry can only be
        // published as it was captured (with its own hash and schema_columns).
        if current.table.pk != captured.pk {
            return Ok(Refreshed::AsCaptured(as_captured(entry)));
        }
        if entry.op == Op::Delete {
            return Ok(Refreshed::Current(as_captured(entry)));
        }
        let plan = current.plan();
        let cond: Vec<String> = plan
            .pk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("s.{} IS ?{}", quote_ident(c), i + 1))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} AS s WHERE {}",
            row_image_expr(&plan, "s"),
            quote_ident(&plan.table),
            cond.join(" AND ")
        );
        let keys: Vec<Value> = plan
            .pk
            .iter()
            .map(|c| entry.pk.get(c).map(to_sql).unwrap_or(Value::Null))
            .collect();
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params_from_iter(keys))?;
        let Some(r) = rows.next()? else {
            return Ok(Refreshed::Gone);
        };
        let text: String = r.get(0)?;
        let schema = StoredSchema {
            schema_id: current.schema_id,
            table: plan.table.clone(),
            schema_hash: current.table.schema_hash.clone(),
            columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
            pk: plan.pk.clone(),
            schema_columns: current.table.schema.clone(),
        };
        let fresh = decode_entry(
            &RawEntry {
                commit_seq: entry.commit_seq,
                schema_id: current.schema_id,
                op: if entry.op == Op::Insert {
                    OP_INSERT
                } else {
                    OP_UPDATE
                },
                pk: None,
                row: Some(text),
            },
            &schema,
        )?;
        Ok(Refreshed::Current(as_captured(fresh)))
    }

    /// Records `table` as acknowledged through `up_to_seq` and deletes its journal rows up to
    /// there, in transactions of at most `chunk_rows` rows. Returns the number deleted. If the
    /// application keeps the write lock past the busy timeout, deletion stops early (the
    /// application wins) and the remainder goes with a later `ack` / [`Capture::delete_acked`].
    pub fn ack(
        &mut self,
        state: &StateDb,
        table: &str,
        up_to_seq: i64,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        // Cursor first: if we crash before the delete, the rows are skipped by the reader and
        // removed by the next ack; the opposite order could re-send nothing but lose the cursor.
        state.set_last_acked(table, up_to_seq)?;
        self.delete_acked(state, table, chunk_rows)
    }

    /// [`Capture::ack`] for a batch fixed in journal epoch `epoch`: when that is no longer the
    /// current epoch, neither the cursor moves nor anything is deleted (`None`) — the batch's
    /// commit_seqs belong to a journal that was reset, and the new epoch's seqs restart.
    pub fn ack_in_epoch(
        &mut self,
        state: &StateDb,
        epoch: uuid::Uuid,
        table: &str,
        up_to_seq: i64,
        chunk_rows: usize,
    ) -> Result<Option<usize>, CaptureError> {
        if !state.set_last_acked_in_epoch(table, up_to_seq, epoch)? {
            return Ok(None);
        }
        self.delete_acked(state, table, chunk_rows).map(Some)
    }

    /// Deletes rows of `table` at or below its acknowledged cursor, in small transactions.
    pub fn delete_acked(
        &mut self,
        state: &StateDb,
        table: &str,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let up_to = state.last_acked(table)?;
        let ids = self.schema_ids_of(table);
        self.delete_where(&ids, 0, up_to, chunk_rows)
    }

    /// Deletes journal rows of the given schema ids with `lo < commit_seq <= hi`, never the row
    /// holding the journal's maximum (the floor that keeps commit_seq from repeating).
    pub(crate) fn delete_where(
        &mut self,
        schema_ids: &[i64],
        lo: i64,
        hi: i64,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        if schema_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = schema_ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "DELETE FROM \"__omega_journal\" WHERE commit_seq IN (SELECT commit_seq FROM \
             \"__omega_journal\" WHERE commit_seq > ?1 AND commit_seq <= ?2 AND schema_id IN ({}) \
             AND commit_seq < (SELECT max(commit_seq) FROM \"__omega_journal\") \
             ORDER BY commit_seq LIMIT ?3)",
            ids.join(",")
        );
        let chunk = i64::try_from(chunk_rows.max(1)).unwrap_or(i64::MAX);
        let previous = relax_sync(&self.conn);
        let result = self.delete_where_chunks(&sql, lo, hi, chunk);
        restore_sync(&self.conn, previous);
        result
    }

    fn delete_where_chunks(
        &mut self,
        sql: &str,
        lo: i64,
        hi: i64,
        chunk: i64,
    ) -> Result<usize, CaptureError> {
        let mut total = 0;
        loop {
            let step = (|| -> rusqlite::Result<usize> {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(sql, params![lo, hi, chunk])?;
                tx.commit()?;
                Ok(n)
            })();
            match step {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if is_busy(&e) => {
                    // The application held the write lock for the whole busy_timeout. The
                    // acknowledged cursor is already recorded, so the rest of the range is
                    // deleted on a later call; the application's writes take precedence.
                    debug!(deleted = total, "journal deletion deferred: database busy");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    /// Deletes the given commit_seqs (never the journal maximum), in small transactions.
    pub(crate) fn delete_seqs(
        &mut self,
        seqs: &[i64],
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let previous = relax_sync(&self.conn);
        let result = self.delete_seq_chunks(seqs, chunk_rows);
        restore_sync(&self.conn, previous);
        result
    }

    fn delete_seq_chunks(
        &mut self,
        seqs: &[i64],
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let mut total = 0;
        for chunk in seqs.chunks(chunk_rows.max(1)) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let sql = format!(
                "DELETE FROM \"__omega_journal\" WHERE commit_seq IN ({}) AND commit_seq < \
                 (SELECT max(commit_seq) FROM \"__omega_journal\")",
                list.join(",")
            );
            let step = (|| -> rusqlite::Result<usize> {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(&sql, [])?;
                tx.commit()?;
                Ok(n)
            })();
            match step {
                Ok(n) => total += n,
                // Same as in `delete_where`: redundant entries can be removed next time.
                Err(e) if is_busy(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    /// Per-table journal size (one scan of the journal; for `status` and retention).
    pub fn journal_stats(&self) -> Result<Vec<TableJournalStats>, CaptureError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT s.table_name, count(*), \
             sum(coalesce(length(j.row), 0) + coalesce(length(j.pk), 0) + {ENTRY_OVERHEAD_BYTES}), \
             min(j.commit_seq), max(j.commit_seq) \
             FROM \"__omega_journal\" j JOIN \"__omega_schemas\" s ON s.schema_id = j.schema_id \
             GROUP BY s.table_name ORDER BY s.table_name"
        ))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TableJournalStats {
                    table: r.get(0)?,
                    entries: r.get::<_, i64>(1)?.max(0) as u64,
                    bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    oldest_seq: r.get(3)?,
                    newest_seq: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

enum Refreshed {
    Current(RowChange),
    AsCaptured(RowChange),
    Gone,
}

/// Used by retention: every pending entry of one table as (commit_seq, key text).
pub(crate) fn key_text(pk: &Row) -> String {
    edge_protocol::value::row_to_json(pk).to_string()
}

impl Capture {
    /// Pending (unacknowledged) entries of `table` decoded to (commit_seq, key text).
    pub(crate) fn pending_keys(
        &mut self,
        state: &StateDb,
        table: &str,
    ) -> Result<Vec<(i64, String)>, CaptureError> {
        let acked = state.last_acked(table)?;
        let ids = self.schema_ids_of(table);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT commit_seq, schema_id, op, pk, row FROM \"__omega_journal\" \
             WHERE commit_seq > ?1 AND schema_id IN ({}) ORDER BY commit_seq",
            list.join(",")
        );
        let raws: Vec<RawEntry> = {
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([acked], |r| {
                Ok(RawEntry {
                    commit_seq: r.get(0)?,
                    schema_id: r.get(1)?,
                    op: r.get(2)?,
                    pk: r.get(3)?,
                    row: r.get(4)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let schema =
                self.stored_schema(raw.schema_id)?
                    .cloned()
                    .ok_or(CaptureError::UnknownSchema {
                        commit_seq: raw.commit_seq,
                        schema_id: raw.schema_id,
                    })?;
            let d = decode_entry(&raw, &schema)?;
            out.push((d.commit_seq, key_text(&d.pk)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
