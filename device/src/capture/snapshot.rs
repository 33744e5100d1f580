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

use edge_protocol::value::SqlValue;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension, TransactionBehavior};
use tracing::info;

use super::codec::{from_sql, to_sql};
use super::ident::quote_ident;
use super::triggers::{row_image_expr, OP_INSERT};
use super::{Capture, CaptureError};
use crate::state::{counter, StateDb};

/// Rows per snapshot chunk by default: a few milliseconds of write lock on a gateway.
pub const DEFAULT_CHUNK_ROWS: usize = 500;

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
enum Position {
    Rowid(i64),
    Key(Vec<SqlValue>),
}

/// Where a snapshot continues, persisted as JSON in `state.db`. `end` is the last row that
/// existed when the snapshot started: rows added later are captured by the triggers (installed
/// before any snapshot starts), so the snapshot does not chase a table that keeps growing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SnapshotCursor {
    after: Option<Position>,
    end: Position,
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
        let cursor: Option<SnapshotCursor> = state
            .table(table)?
            .and_then(|t| t.snapshot_cursor)
            .and_then(|c| serde_json::from_str(&c).ok());
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cursor = match cursor {
            Some(c) => Some(c),
            None => tx
                .query_row(
                    &format!("SELECT {order} FROM {qt} AS s ORDER BY {order_desc} LIMIT 1"),
                    [],
                    read_position,
                )
                .optional()?
                .map(|end| SnapshotCursor { after: None, end }),
        };
        let (rows, next) = match cursor {
            None => (0, None),
            Some(cursor) => {
                let mut binds = binds_of(&cursor.end);
                let mut cond = format!("{order_tuple} <= {}", marks(1));
                if let Some(after) = &cursor.after {
                    cond.push_str(&format!(" AND {order_tuple} > {}", marks(width + 1)));
                    binds.extend(binds_of(after));
                }
                // The last position of this chunk, then the chunk itself up to it.
                let chunk_end = {
                    let mut stmt = tx.prepare(&format!(
                        "SELECT * FROM (SELECT {order} FROM {qt} AS s WHERE {cond} ORDER BY {order} \
                         LIMIT {limit}) AS s ORDER BY {order_desc} LIMIT 1"
                    ))?;
                    let mut rows = stmt.query(params_from_iter(binds.clone()))?;
                    match rows.next()? {
                        Some(r) => Some(read_position(r)?),
                        None => None,
                    }
                };
                match chunk_end {
                    None => (0, None),
                    Some(hi) => {
                        let n_binds = binds.len();
                        binds.extend(binds_of(&hi));
                        let n = tx.execute(
                            &format!(
                                "INSERT INTO \"__omega_journal\"(schema_id, op, pk, row) \
                                 SELECT {}, {OP_INSERT}, NULL, {image} FROM {qt} AS s \
                                 WHERE {cond} AND {order_tuple} <= {} ORDER BY {order}",
                                entry.schema_id,
                                marks(n_binds + 1)
                            ),
                            params_from_iter(binds),
                        )?;
                        (
                            n,
                            Some(SnapshotCursor {
                                after: Some(hi),
                                end: cursor.end,
                            }),
                        )
                    }
                }
            }
        };
        tx.commit()?;
        state.bump_counter(counter::SNAPSHOT_ROWS, table, rows as i64)?;
        match next {
            Some(c) => {
                let text = serde_json::to_string(&c).ok();
                state.set_snapshot_cursor(table, text.as_deref())?;
                Ok(SnapshotStep { rows, done: false })
            }
            None => {
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
            end: Position::Rowid(3),
        };
        let text = serde_json::to_string(&c).unwrap();
        let back: SnapshotCursor = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
