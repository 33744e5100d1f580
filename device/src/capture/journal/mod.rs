//! Reading, acknowledging and measuring `__omega_journal` — the API the publisher uses.
//!
//! Reading turns journal rows into protocol [`RowChange`]s grouped by (table, schema_hash), each
//! with its encoded size so the publisher can cut batches under `max_payload_bytes`. Entries
//! captured under a schema hash that is no longer the table's current one (e.g. written by the old
//! triggers between an `ALTER TABLE ADD COLUMN` and the agent noticing it) are re-read from the
//! live row, so the new column's value is not lost (agent.md §1.4).
//!
//! Acknowledging (`ack`) moves the table's cursor in `state.db` first, then deletes the
//! acknowledged rows in small `BEGIN IMMEDIATE` transactions so the application's writer only
//! ever queues briefly behind the agent (never sees SQLITE_BUSY given any reasonable
//! busy_timeout). One journal row's decoding and wire encoding is `entry`'s; what is still
//! pending per table (the metrics' journal gauges) is `pending`'s.

use std::collections::{BTreeMap, BTreeSet};

use edge_protocol::batch::{Op, RowChange};
use edge_protocol::fingerprint::SchemaColumns;
use edge_protocol::wire::SnapshotFields;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter};
use tracing::{debug, error};

mod ack;
mod entry;
mod pending;

pub use ack::is_busy;
pub(crate) use entry::{decode_entry, RawEntry};
use entry::{encode_change, encode_entry, DecodedEntry, EntryLayout};
pub use pending::{oldest_pending_seq, pending_stats, PendingStats};

use super::codec::to_sql;
use super::ident::quote_ident;
use super::snapshot::Marker;
use super::triggers::{row_image_expr, OP_INSERT, OP_SNAPSHOT_MARKER, OP_UPDATE};
use super::{Capture, CaptureError, RowsEntry, StoredSchema};
use crate::blocks;
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
///
/// With `snapshot_markers` granted, the rows of one snapshot chunk form their own group
/// (`snapshot` = the chunk's fields; never mixed with live changes), and a run's end marker is
/// a group without changes whose `end_marker_seq` is the marker's own journal seq (what its
/// acknowledgement covers) and whose `snapshot` holds the end fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeGroup {
    pub table: String,
    pub schema_hash: String,
    pub schema_columns: SchemaColumns,
    pub changes: Vec<PendingChange>,
    pub snapshot: Option<SnapshotFields>,
    pub end_marker_seq: Option<i64>,
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
    /// Entries that cannot be decoded (at most one per table: nothing of that table after it
    /// is in this read). The caller blocks the table ([`crate::blocks`]).
    pub undecodable: Vec<Undecodable>,
    /// Entries naming a `schema_id` the agent has no schema for, as (commit_seq, schema_id):
    /// written by hand or left by a damaged `__omega_schemas`. Skipped; the caller logs and
    /// counts them.
    pub unknown_schema: Vec<(i64, i64)>,
}

/// A journal entry the reader cannot decode: it blocks only its table (reliability.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub table: String,
    pub commit_seq: i64,
    /// Why (the decoder's message).
    pub error: String,
    /// The journal row as stored, as a JSON object (`commit_seq`, `schema_id`, `op`, `pk`,
    /// `row`, `source_table`): the bytes an operator's skip sends to the cloud's dead letter.
    pub entry: Vec<u8>,
}

/// True for errors of one entry's data (it cannot be decoded or encoded), as opposed to the
/// database or the state store failing.
fn is_data_error(e: &CaptureError) -> bool {
    matches!(
        e,
        CaptureError::Codec { .. } | CaptureError::BadEntry { .. }
    )
}

/// A journal row as stored, as a JSON object (see [`Undecodable::entry`]).
fn entry_json(raw: &RawEntry, table: &str) -> Vec<u8> {
    serde_json::json!({
        "commit_seq": raw.commit_seq,
        "schema_id": raw.schema_id,
        "op": raw.op,
        "pk": raw.pk,
        "row": raw.row,
        "source_table": table,
    })
    .to_string()
    .into_bytes()
}

/// What one journal entry produces.
enum Produced {
    /// A change under the schema it was captured with, or (`Some`) under the current one.
    Change(PendingChange, Option<(String, SchemaColumns)>),
    /// Re-read from the live row under the current schema.
    Refreshed(PendingChange, (String, SchemaColumns)),
    /// The row no longer exists (a later delete covers it).
    Gone,
    /// The table is no longer captured.
    Nothing,
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
        // Snapshot fields only once the cloud granted them (edge-policies §0): without the grant
        // markers are skipped like any marker and chunk rows travel as plain inserts.
        let marked = crate::wire_options::snapshot_markers(state)?;
        let (raws, markers) =
            self.raw_entries(opts.after_seq, opts.max_entries, &skip_ids, marked)?;
        // Chunk markers above the rows read: (table, first_seq, marker seq, fields).
        let chunks: Vec<(String, i64, i64, SnapshotFields)> = markers
            .iter()
            .filter_map(|m| {
                let table = self
                    .stored_schema(m.schema_id)
                    .ok()
                    .flatten()?
                    .table
                    .clone();
                match Marker::parse(m.row.as_deref())? {
                    c @ Marker::Chunk { first_seq, .. } => {
                        Some((table, first_seq, m.commit_seq, c.fields()))
                    }
                    Marker::End { .. } => None,
                }
            })
            .collect();
        let skipped = match state.journal_epoch()? {
            Some(epoch) => blocks::skipped(state, &epoch.to_string())?,
            None => BTreeMap::new(),
        };
        // Tables stopped at an undecodable entry in this read.
        let mut stopped: BTreeSet<String> = BTreeSet::new();
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
                    let Some(s) = self.stored_schema(raw.schema_id)?.cloned() else {
                        // No schema, so no table to block (reliability §6: bad data never
                        // stops the agent): counted and left in the journal, which a later
                        // schema row could still explain.
                        out.unknown_schema.push((raw.commit_seq, raw.schema_id));
                        continue;
                    };
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
            if raw.commit_seq <= acked.get(&schema.table).copied().unwrap_or(0)
                || stopped.contains(&schema.table)
            {
                continue;
            }
            match out.covered.get_mut(&schema.table) {
                Some(c) => *c = raw.commit_seq,
                None => {
                    out.covered.insert(schema.table.clone(), raw.commit_seq);
                }
            }
            if raw.op == OP_SNAPSHOT_MARKER {
                // Never a row on the wire, never a block: a chunk marker only delimits rows
                // (found above), an end marker becomes its run's end-marker batch.
                if let (true, Some(end @ Marker::End { .. })) =
                    (marked, Marker::parse(raw.row.as_deref()))
                {
                    let (schema_hash, schema_columns) = self.current_schema_of(schema);
                    out.groups.push(ChangeGroup {
                        table: schema.table.clone(),
                        schema_hash,
                        schema_columns,
                        changes: Vec::new(),
                        snapshot: Some(end.fields()),
                        end_marker_seq: Some(raw.commit_seq),
                    });
                }
                continue;
            }
            if skipped
                .get(&schema.table)
                .is_some_and(|seqs| seqs.contains(&raw.commit_seq))
            {
                // Skipped by an operator (`unblock_table` skip): no change; a later
                // acknowledgement of the table deletes it with the rest.
                continue;
            }
            let (pending, under_current) = match self.pending_of(&raw, schema, layout) {
                Ok(Produced::Change(pending, under_current)) => (pending, under_current),
                Ok(Produced::Refreshed(pending, current)) => {
                    out.refreshed += 1;
                    (pending, Some(current))
                }
                Ok(Produced::Gone) => {
                    out.superseded += 1;
                    continue;
                }
                Ok(Produced::Nothing) => continue,
                Err(e) if is_data_error(&e) => {
                    // Blocks only this table (reliability.md §6): nothing of it after this
                    // entry is read now; the other tables read on.
                    stopped.insert(schema.table.clone());
                    if let Some(c) = out.covered.get_mut(&schema.table) {
                        *c = raw.commit_seq - 1;
                    }
                    out.undecodable.push(Undecodable {
                        table: schema.table.clone(),
                        commit_seq: raw.commit_seq,
                        error: e.to_string(),
                        entry: entry_json(&raw, &schema.table),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let hash = under_current
                .as_ref()
                .map_or(schema.schema_hash.as_str(), |(h, _)| h.as_str());
            let snapshot = chunks
                .iter()
                .find(|(t, first, marker, _)| {
                    *t == schema.table && *first <= raw.commit_seq && raw.commit_seq < *marker
                })
                .map(|(_, _, _, f)| f.clone());
            // The group of this table, hash and chunk — unless a group of the table with other
            // snapshot fields (another chunk, live changes, an end marker) came after it: a
            // chunk's batches never mix with live changes and keep their order.
            let idx = out
                .groups
                .iter()
                .rposition(|g| {
                    g.table == schema.table
                        && g.schema_hash == hash
                        && g.snapshot == snapshot
                        && g.end_marker_seq.is_none()
                })
                .filter(|&i| {
                    out.groups[i + 1..]
                        .iter()
                        .filter(|g| g.table == schema.table)
                        .all(|g| g.snapshot == snapshot && g.end_marker_seq.is_none())
                });
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
                        snapshot,
                        end_marker_seq: None,
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
        if let Some(&(commit_seq, schema_id)) = out.unknown_schema.first() {
            error!(
                entries = out.unknown_schema.len(),
                commit_seq,
                schema_id,
                "journal entries of an unknown schema_id skipped (no table to send them under)"
            );
            state.bump_counter(
                counter::UNKNOWN_SCHEMA_ENTRIES,
                "",
                out.unknown_schema.len() as i64,
            )?;
        }
        Ok(out)
    }

    /// The change one journal entry produces (decoded, refreshed or straight from its text).
    fn pending_of(
        &self,
        raw: &RawEntry,
        schema: &StoredSchema,
        layout: &EntryLayout,
    ) -> Result<Produced, CaptureError> {
        let outdated = self
            .catalog
            .rows
            .get(&schema.table)
            .is_some_and(|cur| cur.table.schema_hash != schema.schema_hash);
        if outdated {
            let decoded = decode_entry(raw, schema)?;
            let Some(cur) = self.catalog.rows.get(&schema.table).cloned() else {
                return Ok(Produced::Nothing);
            };
            return Ok(match self.refresh(&cur, schema, decoded)? {
                Refreshed::Current(change) => Produced::Refreshed(
                    encode_change(&change)?,
                    (cur.table.schema_hash.clone(), cur.table.schema.clone()),
                ),
                Refreshed::Gone => Produced::Gone,
                Refreshed::AsCaptured(change) => Produced::Change(encode_change(&change)?, None),
            });
        }
        if let Some(pending) = encode_entry(raw, schema, layout) {
            // The common case: straight from the journal's text to the wire's.
            return Ok(Produced::Change(pending, None));
        }
        let decoded = decode_entry(raw, schema)?;
        let change = RowChange {
            commit_seq: decoded.commit_seq,
            op: decoded.op,
            pk: decoded.pk,
            row: decoded.row,
        };
        Ok(Produced::Change(encode_change(&change)?, None))
    }

    /// The table's current hash and columns when it is still enrolled (the end marker goes
    /// under the hash its chunks were refreshed to), else the marker's own.
    fn current_schema_of(&self, schema: &StoredSchema) -> (String, SchemaColumns) {
        match self.catalog.rows.get(&schema.table) {
            Some(cur) => (cur.table.schema_hash.clone(), cur.table.schema.clone()),
            None => (schema.schema_hash.clone(), schema.schema_columns.clone()),
        }
    }

    /// Journal entries after `after_seq` (at most `max_entries`) and, when `with_markers`, the
    /// snapshot chunk markers after `after_seq` whose rows may be among them — from one read
    /// snapshot, so every row read has its marker (they commit together).
    pub(crate) fn raw_entries(
        &self,
        after_seq: i64,
        max_entries: usize,
        skip_schema_ids: &[i64],
        with_markers: bool,
    ) -> Result<(Vec<RawEntry>, Vec<RawEntry>), CaptureError> {
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
                .query_map(params![after_seq, limit], RawEntry::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let mut markers = Vec::new();
        if let (true, Some(last)) = (with_markers, rows.last().map(|r| r.commit_seq)) {
            // Through the partial index on markers; markers come in seq order, and a chunk
            // marker whose first row lies beyond the last entry read ends the walk.
            let mut stmt = snapshot.prepare(&format!(
                "SELECT commit_seq, schema_id, op, pk, row FROM \"__omega_journal\" \
                 WHERE op = {OP_SNAPSHOT_MARKER} AND commit_seq > ?1 ORDER BY commit_seq"
            ))?;
            let mut found = stmt.query(params![after_seq])?;
            while let Some(r) = found.next()? {
                let m = RawEntry::from_row(r)?;
                if m.commit_seq > last {
                    match Marker::parse(m.row.as_deref()) {
                        Some(Marker::Chunk { first_seq, .. }) if first_seq <= last => {}
                        _ => break,
                    }
                }
                markers.push(m);
            }
        }
        snapshot.commit()?;
        Ok((rows, markers))
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

    /// Per-table journal size (one scan of the journal; for retention and `status`).
    pub fn journal_stats(&self) -> Result<Vec<TableJournalStats>, CaptureError> {
        Ok(journal_stats(&self.conn)?)
    }
}

/// Per-table journal size of the source database on `conn` (one scan of the journal), for a
/// reader that does not attach ([`Capture::journal_stats`] for one that does).
pub fn journal_stats(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<TableJournalStats>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT s.table_name, count(*), \
         sum(coalesce(length(j.row), 0) + coalesce(length(j.pk), 0) + {ENTRY_OVERHEAD_BYTES}), \
         min(j.commit_seq), max(j.commit_seq) \
         FROM \"__omega_journal\" j JOIN \"__omega_schemas\" s ON s.schema_id = j.schema_id \
         GROUP BY s.table_name ORDER BY s.table_name"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok(TableJournalStats {
            table: r.get(0)?,
            entries: r.get::<_, i64>(1)?.max(0) as u64,
            bytes: r.get::<_, i64>(2)?.max(0) as u64,
            oldest_seq: r.get(3)?,
            newest_seq: r.get(4)?,
        })
    })?;
    rows.collect()
}

enum Refreshed {
    Current(RowChange),
    AsCaptured(RowChange),
    Gone,
}
