//! Snapshots: every existing row of a table enqueued as `insert` entries in the journal.
//!
//! Each chunk is one short `INSERT INTO __omega_journal … SELECT … FROM <table>` inside a
//! `BEGIN IMMEDIATE` transaction, so it is atomic with respect to the application's writes: a
//! change committed before the chunk has a smaller commit_seq and the chunk carries its result; a
//! change after the chunk gets a larger commit_seq than the snapshot rows. Replaying in commit
//! order therefore always converges on the live table — nothing written during a snapshot is lost
//! or reordered after it. Between chunks the application writes freely.
//!
//! Chunks walk the table by rowid (rowid tables, even with a NULL in a non-integer key) or by the
//! primary key as a row value (WITHOUT ROWID tables, whose keys are NOT NULL).

//! ## Marked runs (edge-policies §5)
//! When the cloud granted `snapshot_markers` ([`crate::wire_options`]) a snapshot is a *run*
//! with a `snapshot_id` (UUIDv7) kept in the cursor beside the position. Each chunk's
//! transaction appends, above the rows it reserved, a journal marker ([`OP_SNAPSHOT_MARKER`],
//! [`Marker::Chunk`]) naming the run, the chunk number and the chunk's first seq; the reader
//! ([`super::journal`]) gives those rows the chunk's snapshot fields and skips the marker. The
//! first chunk's lowest reserved seq is the run's `snapshot_start_seq`. After the last chunk an
//! end marker ([`Marker::End`]: chunk count, row count, `complete`) becomes the run's end-marker
//! batch. A run replaced by a newer snapshot of the table (a restore, a retention drop, a
//! rebuild or `edge-agent snapshot` while it runs: `StateDb::set_needs_snapshot` keeps it as
//! `abort`) gets an `aborted` end marker first. Without the grant no marker is written and the
//! snapshot is exactly the unmarked one above.
//!
//! A crash mid-run continues the same run: the cursor (position, next chunk, rows) is written
//! after each chunk's commit, and when the process died between that commit and the cursor
//! write, the chunk's marker — still in the journal, it carries the chunk's last position — is
//! found and the run goes on after it. Only if that marker was already acknowledged and deleted
//! is the chunk read again under the same number (duplicate images: harmless, the cloud dedups
//! by version).

use edge_protocol::value::SqlValue;
use edge_protocol::wire::{SnapshotEnd, SnapshotFields};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, OptionalExtension, TransactionBehavior};
use tracing::info;
use uuid::Uuid;

use super::codec::{from_sql, to_sql};
use super::ident::quote_ident;
use super::triggers::{row_image_expr, OP_INSERT, OP_SNAPSHOT_MARKER};
use super::{Capture, CaptureError};
use crate::state::{counter, StateDb};

/// Rows per snapshot chunk by default (edge-policies §5 `snapshot_chunk_rows`): a few
/// milliseconds of write lock on a gateway.
pub const DEFAULT_CHUNK_ROWS: usize = crate::settings::DEFAULT_SNAPSHOT_CHUNK_ROWS;

/// Progress of one [`Capture::snapshot_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStep {
    /// Rows enqueued by this step.
    pub rows: usize,
    /// The snapshot is complete (`needs_snapshot` cleared).
    pub done: bool,
}

/// A position in a table's snapshot order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Position {
    Rowid(i64),
    Key(Vec<SqlValue>),
}

/// A marked run's progress (edge-policies §5), kept in the cursor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Run {
    pub snapshot_id: Uuid,
    /// The first chunk's lowest reserved seq; `None` until a chunk or the end marker is written.
    #[serde(default)]
    pub start_seq: Option<i64>,
    /// The number the next chunk gets (= chunks written so far).
    #[serde(default)]
    pub next_chunk: i64,
    /// Rows written so far.
    #[serde(default)]
    pub rows: i64,
}

/// A snapshot marker as stored in the journal's `row` column (`op` = [`OP_SNAPSHOT_MARKER`],
/// `schema_id` = the table's schema at the time, `pk` NULL).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "marker", rename_all = "snake_case")]
pub(crate) enum Marker {
    /// Above the rows of chunk `chunk`: they are the table's entries with
    /// `first_seq <= commit_seq <` the marker's own seq.
    Chunk {
        snapshot_id: Uuid,
        start_seq: i64,
        chunk: i64,
        first_seq: i64,
        rows: i64,
        /// The chunk's last position: where the run continues after a crash.
        after: Position,
    },
    /// The run's end: `chunks` chunks holding `rows` rows.
    End {
        snapshot_id: Uuid,
        start_seq: i64,
        chunks: i64,
        rows: i64,
        end: SnapshotEnd,
    },
}

impl Marker {
    /// Parses a marker entry's `row` text.
    pub(crate) fn parse(text: Option<&str>) -> Option<Marker> {
        serde_json::from_str(text?).ok()
    }

    fn snapshot_id(&self) -> Uuid {
        match self {
            Marker::Chunk { snapshot_id, .. } | Marker::End { snapshot_id, .. } => *snapshot_id,
        }
    }

    /// The snapshot fields the marker's batch (end) or rows (chunk) carry on the wire.
    pub(crate) fn fields(&self) -> SnapshotFields {
        match self {
            Marker::Chunk {
                snapshot_id,
                start_seq,
                chunk,
                ..
            } => SnapshotFields::chunk(*snapshot_id, *start_seq, *chunk),
            Marker::End {
                snapshot_id,
                start_seq,
                chunks,
                rows,
                end,
            } => SnapshotFields::end(*snapshot_id, *start_seq, *chunks, *rows, *end),
        }
    }
}

/// Where a snapshot continues, persisted as JSON in `state.db`. `end` is the last row that
/// existed when the snapshot started: rows added later are captured by the triggers (installed
/// before any snapshot starts), so the snapshot does not chase a table that keeps growing.
/// `end` is `None` for a table that was empty when the snapshot started. `run` is set for a
/// marked run; `abort` alone is a replaced run still to be ended (`StateDb::set_needs_snapshot`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct SnapshotCursor {
    #[serde(default)]
    after: Option<Position>,
    #[serde(default)]
    end: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<Run>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abort: Option<Run>,
}

/// The name through which a rowid table's rowid can be addressed, unless the application shadowed
/// all three aliases with real columns.
fn rowid_alias(columns: &[String]) -> Option<&'static str> {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|a| !columns.iter().any(|c| c.eq_ignore_ascii_case(a)))
}

impl Capture {
    /// Marks `table` for a snapshot (the `snapshot` command); [`Capture::snapshot_step`] does it.
    pub fn request_snapshot(&self, state: &StateDb, table: &str) -> Result<(), CaptureError> {
        if !self.catalog.rows.contains_key(table) {
            return Err(CaptureError::NotEnrolled {
                table: table.into(),
                strategy: "rows",
            });
        }
        state.set_needs_snapshot(table, true)?;
        Ok(())
    }

    /// Tables with a pending snapshot.
    pub fn tables_needing_snapshot(&self, state: &StateDb) -> Result<Vec<String>, CaptureError> {
        Ok(state
            .tables()?
            .into_iter()
            .filter(|t| t.needs_snapshot && self.catalog.rows.contains_key(&t.table_name))
            .map(|t| t.table_name)
            .collect())
    }

    /// Enqueues the next chunk of `table`'s snapshot.
    pub fn snapshot_step(
        &mut self,
        state: &StateDb,
        table: &str,
        chunk_rows: usize,
    ) -> Result<SnapshotStep, CaptureError> {
        let entry =
            self.catalog
                .rows
                .get(table)
                .cloned()
                .ok_or_else(|| CaptureError::NotEnrolled {
                    table: table.into(),
                    strategy: "rows",
                })?;
        let stored: Option<SnapshotCursor> = state
            .table(table)?
            .and_then(|t| t.snapshot_cursor)
            .and_then(|c| serde_json::from_str(&c).ok());
        // A replaced run still to be ended, and the cursor of the run under way (if started).
        let (abort, started) = match stored {
            Some(c) if c.end.is_none() && c.run.is_none() => (c.abort, None),
            Some(c) => (None, Some(c)),
            None => (None, None),
        };
        let marked = crate::wire_options::snapshot_markers(state)?;
        let schema_ids = self.schema_ids_of(table);
        let plan = entry.plan();
        let qt = quote_ident(&plan.table);
        let image = row_image_expr(&plan, "s");
        let limit = i64::try_from(chunk_rows.max(1)).unwrap_or(i64::MAX);
        let all_columns: Vec<String> = entry
            .table
            .info
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let alias = if entry.table.info.without_rowid {
            None
        } else {
            rowid_alias(&all_columns)
        };
        let key_cols: Vec<String> = plan.pk.iter().map(|c| quote_ident(c)).collect();
        // Ordering expression: the rowid alias, or the key columns as a row value.
        let (order, order_desc, order_tuple) = match alias {
            Some(a) => (format!("s.{a}"), format!("s.{a} DESC"), format!("s.{a}")),
            None => {
                let cols: Vec<String> = key_cols.iter().map(|c| format!("s.{c}")).collect();
                let desc: Vec<String> = cols.iter().map(|c| format!("{c} DESC")).collect();
                (
                    cols.join(", "),
                    desc.join(", "),
                    format!("({})", cols.join(", ")),
                )
            }
        };
        let width = if alias.is_some() { 1 } else { key_cols.len() };
        let read_position = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Position> {
            if alias.is_some() {
                Ok(Position::Rowid(r.get(0)?))
            } else {
                (0..width)
                    .map(|i| r.get::<_, Value>(i).map(from_sql))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(Position::Key)
            }
        };
        let binds_of = |p: &Position| -> Vec<Value> {
            match p {
                Position::Rowid(r) => vec![Value::Integer(*r)],
                Position::Key(k) => k.iter().map(to_sql).collect(),
            }
        };
        let marks = |from: usize| -> String {
            let m: Vec<String> = (from..from + width).map(|i| format!("?{i}")).collect();
            if width == 1 {
                m.join("")
            } else {
                format!("({})", m.join(", "))
            }
        };
        let schema_id = entry.schema_id;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(old) = &abort {
            if let Some(start_seq) = old.start_seq {
                // The replaced run told the cloud it started: end it as `aborted` (no sweep).
                put_marker(
                    &tx,
                    schema_id,
                    &Marker::End {
                        snapshot_id: old.snapshot_id,
                        start_seq,
                        chunks: old.next_chunk,
                        rows: old.rows,
                        end: SnapshotEnd::Aborted,
                    },
                )?;
                info!(table, snapshot_id = %old.snapshot_id, "replaced snapshot run aborted");
            }
        }
        let mut cursor = match started {
            Some(c) => Some(c),
            None => {
                let end = tx
                    .query_row(
                        &format!("SELECT {order} FROM {qt} AS s ORDER BY {order_desc} LIMIT 1"),
                        [],
                        read_position,
                    )
                    .optional()?;
                let run = marked.then(|| Run {
                    snapshot_id: Uuid::now_v7(),
                    start_seq: None,
                    next_chunk: 0,
                    rows: 0,
                });
                // An empty table needs a cursor only to send a marked run's end marker.
                (end.is_some() || run.is_some()).then_some(SnapshotCursor {
                    after: None,
                    end,
                    run,
                    abort: None,
                })
            }
        };
        let mut finished_before = false;
        if let Some(c) = cursor.as_mut() {
            finished_before = recover_run(&tx, &schema_ids, c)?;
        }
        let mut rows = 0;
        let mut done = true;
        if let (Some(c), false) = (cursor.as_mut(), finished_before) {
            let chunk_end = match &c.end {
                None => None,
                Some(end) => {
                    let mut binds = binds_of(end);
                    let mut cond = format!("{order_tuple} <= {}", marks(1));
                    if let Some(after) = &c.after {
                        cond.push_str(&format!(" AND {order_tuple} > {}", marks(width + 1)));
                        binds.extend(binds_of(after));
                    }
                    // The last position of this chunk, then the chunk itself up to it.
                    let hi = {
                        let mut stmt = tx.prepare(&format!(
                            "SELECT * FROM (SELECT {order} FROM {qt} AS s WHERE {cond} ORDER BY \
                             {order} LIMIT {limit}) AS s ORDER BY {order_desc} LIMIT 1"
                        ))?;
                        let mut found = stmt.query(params_from_iter(binds.clone()))?;
                        match found.next()? {
                            Some(r) => Some(read_position(r)?),
                            None => None,
                        }
                    };
                    hi.map(|hi| (hi, cond, binds))
                }
            };
            let below = max_seq(&tx)?;
            match chunk_end {
                Some((hi, cond, mut binds)) => {
                    let n_binds = binds.len();
                    binds.extend(binds_of(&hi));
                    let n = tx.execute(
                        &format!(
                            "INSERT INTO \"__omega_journal\"(schema_id, op, pk, row) \
                             SELECT {schema_id}, {OP_INSERT}, NULL, {image} FROM {qt} AS s \
                             WHERE {cond} AND {order_tuple} <= {} ORDER BY {order}",
                            marks(n_binds + 1)
                        ),
                        params_from_iter(binds),
                    )?;
                    if let Some(run) = c.run.as_mut() {
                        // The rows took `below + 1 ..= below + n` (rowid = max + 1); the marker
                        // goes above them in the same transaction.
                        let first_seq = below + 1;
                        let start_seq = *run.start_seq.get_or_insert(first_seq);
                        let n = i64::try_from(n).unwrap_or(i64::MAX);
                        put_marker(
                            &tx,
                            schema_id,
                            &Marker::Chunk {
                                snapshot_id: run.snapshot_id,
                                start_seq,
                                chunk: run.next_chunk,
                                first_seq,
                                rows: n,
                                after: hi.clone(),
                            },
                        )?;
                        run.next_chunk += 1;
                        run.rows += n;
                    }
                    c.after = Some(hi);
                    rows = n;
                    done = false;
                }
                None => {
                    if let Some(run) = c.run.as_mut() {
                        let start_seq = *run.start_seq.get_or_insert(below + 1);
                        put_marker(
                            &tx,
                            schema_id,
                            &Marker::End {
                                snapshot_id: run.snapshot_id,
                                start_seq,
                                chunks: run.next_chunk,
                                rows: run.rows,
                                end: SnapshotEnd::Complete,
                            },
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        state.bump_counter(counter::SNAPSHOT_ROWS, table, rows as i64)?;
        match cursor {
            Some(c) if !done => {
                let text = serde_json::to_string(&c).ok();
                state.set_snapshot_cursor(table, text.as_deref())?;
                Ok(SnapshotStep { rows, done: false })
            }
            _ => {
                state.set_needs_snapshot(table, false)?;
                info!(table, "snapshot complete");
                Ok(SnapshotStep { rows, done: true })
            }
        }
    }

    /// Runs `table`'s snapshot to completion (the `snapshot --table` command). Returns the rows
    /// enqueued.
    pub fn run_snapshot(
        &mut self,
        state: &StateDb,
        table: &str,
        chunk_rows: usize,
    ) -> Result<usize, CaptureError> {
        let needs = state.table(table)?.is_some_and(|t| t.needs_snapshot);
        if !needs {
            self.request_snapshot(state, table)?;
        }
        let mut total = 0;
        loop {
            let step = self.snapshot_step(state, table, chunk_rows)?;
            total += step.rows;
            if step.done {
                return Ok(total);
            }
        }
    }
}

/// Highest commit_seq in the journal (0 when empty), inside the chunk's transaction.
fn max_seq(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT coalesce(max(commit_seq), 0) FROM \"__omega_journal\"",
        [],
        |r| r.get(0),
    )
}

/// Appends `marker` to the journal (above everything in it).
fn put_marker(
    tx: &rusqlite::Transaction<'_>,
    schema_id: i64,
    marker: &Marker,
) -> Result<(), CaptureError> {
    let text = serde_json::to_string(marker).map_err(|e| CaptureError::BadEntry {
        commit_seq: 0,
        what: format!("encoding a snapshot marker: {e}"),
    })?;
    tx.execute(
        &format!(
            "INSERT INTO \"__omega_journal\"(schema_id, op, pk, row) \
             VALUES(?1, {OP_SNAPSHOT_MARKER}, NULL, ?2)"
        ),
        params![schema_id, text],
    )?;
    Ok(())
}

/// A crash between a chunk's commit and the cursor write left the cursor one chunk behind its
/// run: the newest marker of the run still in the journal says how far it really got. Moves
/// `cursor` there; true when the run's end marker is already written (nothing left to do).
fn recover_run(
    tx: &rusqlite::Transaction<'_>,
    schema_ids: &[i64],
    cursor: &mut SnapshotCursor,
) -> Result<bool, CaptureError> {
    let Some(run) = cursor.run.as_mut() else {
        return Ok(false);
    };
    if schema_ids.is_empty() {
        return Ok(false);
    }
    let ids: Vec<String> = schema_ids.iter().map(i64::to_string).collect();
    // The partial index on markers keeps this a walk over markers only.
    let mut stmt = tx.prepare(&format!(
        "SELECT row FROM \"__omega_journal\" WHERE op = {OP_SNAPSHOT_MARKER} \
         AND schema_id IN ({}) ORDER BY commit_seq DESC",
        ids.join(",")
    ))?;
    let mut found = stmt.query([])?;
    while let Some(r) = found.next()? {
        let text: Option<String> = r.get(0)?;
        let Some(marker) = Marker::parse(text.as_deref()) else {
            continue;
        };
        if marker.snapshot_id() != run.snapshot_id {
            continue;
        }
        match marker {
            Marker::End { .. } => return Ok(true),
            Marker::Chunk {
                start_seq,
                chunk,
                rows,
                after,
                ..
            } => {
                if chunk >= run.next_chunk {
                    info!(snapshot_id = %run.snapshot_id, chunk,
                        "snapshot chunk committed before a crash: continuing after it");
                    run.start_seq = Some(start_seq);
                    run.next_chunk = chunk + 1;
                    run.rows += rows;
                    cursor.after = Some(after);
                }
                return Ok(false);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rowid_alias_avoids_shadowing_columns() {
        assert_eq!(rowid_alias(&["a".into()]), Some("rowid"));
        assert_eq!(rowid_alias(&["ROWID".into()]), Some("_rowid_"));
        assert_eq!(
            rowid_alias(&["rowid".into(), "_rowid_".into(), "oid".into()]),
            None
        );
    }

    #[test]
    fn cursor_round_trips_through_json() {
        let c = SnapshotCursor {
            after: Some(Position::Key(vec![
                SqlValue::Text("a".into()),
                SqlValue::Integer(2),
            ])),
            end: Some(Position::Rowid(3)),
            run: None,
            abort: None,
        };
        let text = serde_json::to_string(&c).unwrap();
        let back: SnapshotCursor = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        // A cursor written before marked runs existed still reads.
        let old: SnapshotCursor =
            serde_json::from_str(r#"{"after":null,"end":{"Rowid":9}}"#).unwrap();
        assert_eq!(old.end, Some(Position::Rowid(9)));
        assert!(old.run.is_none());
    }

    #[test]
    fn markers_round_trip_and_give_the_wire_fields() {
        let id = Uuid::now_v7();
        let chunk = Marker::Chunk {
            snapshot_id: id,
            start_seq: 5,
            chunk: 2,
            first_seq: 30,
            rows: 10,
            after: Position::Rowid(40),
        };
        let text = serde_json::to_string(&chunk).unwrap();
        assert_eq!(Marker::parse(Some(&text)), Some(chunk.clone()));
        assert_eq!(chunk.fields(), SnapshotFields::chunk(id, 5, 2));
        let end = Marker::End {
            snapshot_id: id,
            start_seq: 5,
            chunks: 3,
            rows: 25,
            end: SnapshotEnd::Complete,
        };
        assert_eq!(
            end.fields(),
            SnapshotFields::end(id, 5, 3, 25, SnapshotEnd::Complete)
        );
        assert_eq!(Marker::parse(Some("[1,2]")), None);
        assert_eq!(Marker::parse(None), None);
    }
}
