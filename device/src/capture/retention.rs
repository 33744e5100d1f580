//! Local retention (agent.md §4): bound the journal to `local_retention_bytes`.
//!
//! When the journal is over the bound, tables are handled one at a time — paused tables first
//! (they are why the journal grows), then the largest — first by coalescing pending entries to
//! the latest one per primary key (the mirror only needs the latest state), and only if that is
//! not enough by dropping the table's pending entries and marking it `needs_snapshot` (the
//! snapshot re-sends every live row when publishing resumes; deletes in the dropped range are the
//! one thing a snapshot cannot carry). Every step is logged and counted in `state.db`.
//!
//! The decisions ([`retention_order`], [`coalesce_plan`]) are pure functions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracing::warn;

use edge_protocol::value::Row;

use super::journal::{decode_entry, RawEntry, ENTRY_OVERHEAD_BYTES};
use super::triggers::OP_SNAPSHOT_MARKER;
use super::{Capture, CaptureError};
use crate::state::{counter, StateDb};

/// Journal usage of one table, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUsage {
    pub table: String,
    pub bytes: u64,
    pub paused: bool,
}

/// The tables to act on, in order, when `total` exceeds `limit` (empty otherwise): paused tables
/// first, then by size, largest first; ties by name for determinism.
pub fn retention_order(limit: u64, usage: &[TableUsage]) -> Vec<String> {
    let total: u64 = usage.iter().map(|u| u.bytes).sum();
    if total <= limit {
        return Vec::new();
    }
    let mut order: Vec<&TableUsage> = usage.iter().filter(|u| u.bytes > 0).collect();
    order.sort_by(|a, b| {
        b.paused
            .cmp(&a.paused)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.table.cmp(&b.table))
    });
    order.into_iter().map(|u| u.table.clone()).collect()
}

/// Given a table's pending entries as (commit_seq, key) in commit order, the commit_seqs made
/// redundant by a later entry for the same key. Keeping the last entry per key keeps its op too:
/// a final delete stays a delete, a final insert/update carries the full latest row.
pub fn coalesce_plan(entries: &[(i64, String)]) -> Vec<i64> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for (seq, key) in entries {
        let e = latest.entry(key.as_str()).or_insert(*seq);
        *e = (*e).max(*seq);
    }
    let keep: BTreeSet<i64> = latest.values().copied().collect();
    entries
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !keep.contains(s))
        .collect()
}

/// What [`Capture::enforce_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Journal bytes before (an upper bound when the scan was skipped, see
    /// [`Capture::enforce_retention`]).
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Entries removed by coalescing, per table.
    pub coalesced: BTreeMap<String, usize>,
    /// Entries dropped (table marked needs_snapshot), per table.
    pub dropped: BTreeMap<String, usize>,
}

impl Capture {
    fn usage(&self, state: &StateDb) -> Result<Vec<TableUsage>, CaptureError> {
        let paused = state.paused_tables()?;
        Ok(self
            .journal_stats()?
            .into_iter()
            .map(|s| TableUsage {
                paused: paused.contains(&s.table),
                table: s.table,
                bytes: s.bytes,
            })
            .collect())
    }

    /// An upper bound on what [`Capture::journal_stats`] would sum, without reading the
    /// journal: the source file's used bytes (every entry's text is stored in it; `length()`
    /// counts characters, never more than the bytes stored) plus [`ENTRY_OVERHEAD_BYTES`] for
    /// every commit_seq between the journal's lowest and highest (at least as many as rows).
    /// All four facts are O(1)/O(log n), where the exact figure is a scan of the whole journal
    /// — seconds for a backlog of a million entries, every [`RETENTION_INTERVAL`] while it
    /// drains.
    ///
    /// [`ENTRY_OVERHEAD_BYTES`]: super::journal::ENTRY_OVERHEAD_BYTES
    /// [`RETENTION_INTERVAL`]: crate::daemon::RETENTION_INTERVAL
    pub fn journal_bytes_upper_bound(&self) -> Result<u64, CaptureError> {
        let pragma = |name: &str| -> Result<i64, CaptureError> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
        };
        let used_pages = pragma("page_count")? - pragma("freelist_count")?;
        let used = used_pages.max(0) as u64 * pragma("page_size")?.max(0) as u64;
        let (lo, hi): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT min(commit_seq), max(commit_seq) FROM \"__omega_journal\"",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let rows = match (lo, hi) {
            (Some(lo), Some(hi)) => (hi - lo + 1).max(0) as u64,
            _ => 0,
        };
        Ok(used.saturating_add(rows.saturating_mul(ENTRY_OVERHEAD_BYTES)))
    }

    /// Enforces `limit` bytes on the journal (see the module docs). When even
    /// [`Capture::journal_bytes_upper_bound`] is within `limit`, the journal is not scanned and
    /// the report carries that bound.
    pub fn enforce_retention(
        &mut self,
        state: &StateDb,
        limit: u64,
        chunk_rows: usize,
    ) -> Result<RetentionReport, CaptureError> {
        let bound = self.journal_bytes_upper_bound()?;
        if bound <= limit {
            return Ok(RetentionReport {
                bytes_before: bound,
                bytes_after: bound,
                ..RetentionReport::default()
            });
        }
        let usage = self.usage(state)?;
        let mut report = RetentionReport {
            bytes_before: usage.iter().map(|u| u.bytes).sum(),
            ..RetentionReport::default()
        };
        report.bytes_after = report.bytes_before;
        let order = retention_order(limit, &usage);
        if order.is_empty() {
            return Ok(report);
        }
        for table in &order {
            let keys = self.pending_keys(state, table)?;
            let redundant = coalesce_plan(&keys);
            if redundant.is_empty() {
                continue;
            }
            let n = self.delete_seqs(&redundant, chunk_rows)?;
            warn!(
                table = %table, removed = n, limit,
                "journal over local_retention_bytes: coalesced pending entries to the latest per key"
            );
            state.bump_counter(counter::RETENTION_COALESCED, table, n as i64)?;
            report.coalesced.insert(table.clone(), n);
            report.bytes_after = self.usage(state)?.iter().map(|u| u.bytes).sum();
            if report.bytes_after <= limit {
                return Ok(report);
            }
        }
        for table in &order {
            let acked = state.last_acked(table)?;
            let ids = self.schema_ids_of(table);
            let n = self.delete_where(&ids, acked, i64::MAX, chunk_rows)?;
            if n == 0 {
                continue;
            }
            warn!(
                table = %table, dropped = n, limit,
                "journal still over local_retention_bytes: dropped the table's pending entries; \
                 it will be re-snapshotted when publishing resumes"
            );
            state.set_needs_snapshot(table, true)?;
            state.bump_counter(counter::RETENTION_DROPPED, table, n as i64)?;
            state.bump_counter(counter::RETENTION_DROPS, table, 1)?;
            report.dropped.insert(table.clone(), n);
            report.bytes_after = self.usage(state)?.iter().map(|u| u.bytes).sum();
            if report.bytes_after <= limit {
                break;
            }
        }
        Ok(report)
    }
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
             WHERE commit_seq > ?1 AND schema_id IN ({}) AND op <> {OP_SNAPSHOT_MARKER} \
             ORDER BY commit_seq",
            list.join(",")
        );
        let raws: Vec<RawEntry> = {
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([acked], RawEntry::from_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            // An entry of an unknown schema has no table and no key (the reader skips it too).
            let Some(schema) = self.stored_schema(raw.schema_id)?.cloned() else {
                continue;
            };
            let d = decode_entry(&raw, &schema)?;
            out.push((d.commit_seq, key_text(&d.pk)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(table: &str, bytes: u64, paused: bool) -> TableUsage {
        TableUsage {
            table: table.into(),
            bytes,
            paused,
        }
    }

    #[test]
    fn nothing_to_do_under_the_limit() {
        assert!(retention_order(100, &[u("a", 50, true), u("b", 50, false)]).is_empty());
    }

    #[test]
    fn paused_first_then_largest() {
        let order = retention_order(10, &[u("a", 5, false), u("b", 50, false), u("c", 1, true)]);
        assert_eq!(order, ["c", "b", "a"]);
    }

    #[test]
    fn coalesce_keeps_latest_per_key() {
        let e = |s: i64, k: &str| (s, k.to_string());
        let plan = coalesce_plan(&[e(1, "a"), e(2, "b"), e(3, "a"), e(4, "a"), e(5, "c")]);
        assert_eq!(plan, [1, 3]);
        assert!(coalesce_plan(&[]).is_empty());
    }
}
