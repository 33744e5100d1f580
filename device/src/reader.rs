//! The read planner (sans-IO): which journal entries the daemon reads next, so that no entry is
//! passed over and none is fixed into the outbox twice.
//!
//! One global read position (`read_pos`) feeds the steady state; `fixed` holds, per table, the
//! highest `commit_seq` already fixed into the outbox (row batch or spill). A table that was
//! skipped while the global position moved on — paused, blocked behind a spill upload, or every
//! table right after a restart — is read again from `max(acknowledged cursor, fixed)`
//! ("catch-up") up to the global position before it rejoins the global read.
//!
//! Resume rule (protocol §6, "from `server_watermark + 1`"): a resumed table continues after its
//! own acknowledged cursor (and after what is already fixed in the outbox, which is sent anyway).
//! Entries at or below the cursor had their PUBACK, so the cloud has them (or has them queued)
//! and they are deleted locally; entries after the cursor that are `<= server_watermark` are sent
//! again and deduplicated by the cloud; every entry after `server_watermark` is either fixed in
//! the outbox or still in the journal and is therefore sent, in commit order.
//!
//! The planner does no I/O: the daemon asks it for [`ReadOptions`], performs the journal read
//! and hands the [`PendingRead`] back. The tables blocked by a spill upload are the daemon's
//! (they live with the spills) and are passed in.

use std::collections::{BTreeMap, BTreeSet};

use crate::batcher::{Built, BuiltBatch};
use crate::capture::journal::{ChangeGroup, PendingChange, PendingRead, ReadOptions};

/// Journal entries examined per read: one full batch's worth of rows (4,096). Decoded entries
/// are the largest transient allocation of a drain (16,384 of them put peak RSS near 68 MiB);
/// a continuous drain simply reads more often.
pub const READ_MAX_ENTRIES: usize = 4_096;

/// Read positions of the journal (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reader {
    read_pos: i64,
    backlog: bool,
    /// Tables to read from their own position up to `read_pos` before they rejoin the global
    /// read (after a resume, a finished spill, or a restart).
    catch_up: BTreeSet<String>,
    /// Per table, the highest commit_seq fixed into the outbox (row batch or spill).
    fixed: BTreeMap<String, i64>,
    paused: BTreeSet<String>,
}

/// A catch-up read of one table, from [`Reader::catch_up_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpRead {
    pub table: String,
    pub options: ReadOptions,
}

impl Reader {
    /// The planner after a (re)start: `fixed` from the outbox rows of the current epoch,
    /// `tables` every captured rows table, `paused` the tables paused in state.db.
    ///
    /// The global read restarts at the highest position fixed; every table catches up from its
    /// own position first, so entries of a table that was behind (paused, behind a spill,
    /// catching up) when the agent stopped are not passed over.
    pub fn new(
        fixed: BTreeMap<String, i64>,
        tables: impl IntoIterator<Item = String>,
        paused: BTreeSet<String>,
    ) -> Reader {
        Reader {
            read_pos: fixed.values().copied().max().unwrap_or(0),
            backlog: true,
            catch_up: tables.into_iter().collect(),
            fixed,
            paused,
        }
    }

    /// The global read position: the highest `commit_seq` examined by the global read.
    pub fn read_pos(&self) -> i64 {
        self.read_pos
    }

    /// Whether more is known to be waiting (read again without waiting for the flush timer).
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Something new is to be read (a snapshot chunk, a schema change retried).
    pub fn note_backlog(&mut self) {
        self.backlog = true;
    }

    /// Tables paused by `pause_lineage`.
    pub fn paused(&self) -> &BTreeSet<String> {
        &self.paused
    }

    pub fn is_paused(&self, table: &str) -> bool {
        self.paused.contains(table)
    }

    /// `pause_lineage`: the table reads (and publishes) nothing until resumed.
    pub fn pause(&mut self, table: &str) {
        self.paused.insert(table.to_owned());
    }

    /// `resume_lineage`: the table catches up from its acknowledged cursor. Behind a spill the
    /// table stays blocked; the spill's finalize starts the catch-up again.
    pub fn resume(&mut self, table: &str) {
        self.paused.remove(table);
        self.catch_up.insert(table.to_owned());
        self.backlog = true;
    }

    /// The last spill of `table` was finalized: the table catches up from the spilled change.
    pub fn unblock(&mut self, table: String) {
        self.catch_up.insert(table);
        self.backlog = true;
    }

    /// A new journal epoch: positions of the old one mean nothing.
    pub fn new_epoch(&mut self) {
        self.read_pos = 0;
        self.fixed.clear();
        self.catch_up.clear();
    }

    /// The highest `commit_seq` of `table` fixed into the outbox (0: none).
    pub fn fixed(&self, table: &str) -> i64 {
        self.fixed.get(table).copied().unwrap_or(0)
    }

    /// Records that `table` is fixed up to `seq`.
    pub fn mark_fixed(&mut self, table: &str, seq: i64) {
        match self.fixed.get_mut(table) {
            Some(pos) => *pos = (*pos).max(seq),
            None => {
                self.fixed.insert(table.to_owned(), seq.max(0));
            }
        }
    }

    /// Drops the changes of `group` already fixed into the outbox: after a restart the global
    /// read starts below some tables' fixed positions.
    pub fn drop_fixed(&self, group: &mut ChangeGroup) {
        let done = self.fixed(&group.table);
        group.changes.retain(|c| c.commit_seq > done);
        if group.end_marker_seq.is_some_and(|seq| seq <= done) {
            group.end_marker_seq = None;
        }
    }

    /// The tables catching up this turn: not paused and not `blocked` by a spill upload.
    pub fn catch_up_tables(&self, blocked: &BTreeSet<String>) -> Vec<String> {
        self.catch_up
            .iter()
            .filter(|t| !self.paused.contains(*t) && !blocked.contains(*t))
            .cloned()
            .collect()
    }

    /// The catch-up read of `table`, which continues after `max(acked, fixed)`; `None` when
    /// nothing of the table was passed over — it then simply joins the global read. `tables`
    /// are every captured rows table (the others are skipped).
    pub fn catch_up_read<'a>(
        &mut self,
        table: &str,
        acked: i64,
        tables: impl IntoIterator<Item = &'a String>,
    ) -> Option<CatchUpRead> {
        let after = acked.max(self.fixed(table));
        if after >= self.read_pos {
            self.catch_up.remove(table);
            return None;
        }
        let skip_tables = tables
            .into_iter()
            .filter(|t| t.as_str() != table)
            .cloned()
            .collect();
        Some(CatchUpRead {
            table: table.to_owned(),
            options: ReadOptions {
                after_seq: after,
                max_entries: READ_MAX_ENTRIES,
                skip_tables,
            },
        })
    }

    /// Takes the result of a catch-up read: the table rejoins the global read once it reached
    /// the global position (or read nothing), and entries after the global position are
    /// dropped — they belong to the global read.
    pub fn catch_up_done(&mut self, plan: &CatchUpRead, read: &mut PendingRead) {
        if read.last_seq >= self.read_pos || read.last_seq == plan.options.after_seq {
            self.catch_up.remove(&plan.table);
        }
        let limit = self.read_pos;
        for g in &mut read.groups {
            g.changes.retain(|c| c.commit_seq <= limit);
        }
        read.groups
            .retain(|g| g.table == plan.table && !g.changes.is_empty());
    }

    /// The global read: after `read_pos`, skipping paused, `blocked` and catching-up tables.
    pub fn global_read(&self, blocked: &BTreeSet<String>) -> ReadOptions {
        ReadOptions {
            after_seq: self.read_pos,
            max_entries: READ_MAX_ENTRIES,
            skip_tables: self
                .paused
                .iter()
                .chain(blocked)
                .chain(&self.catch_up)
                .cloned()
                .collect(),
        }
    }

    /// Takes the result of the global read: the position moves to what was examined; a
    /// backlog remains while the read moved on or a table still catches up.
    pub fn global_done(&mut self, read: &PendingRead) {
        self.backlog = read.last_seq > self.read_pos || !self.catch_up.is_empty();
        self.read_pos = read.last_seq;
    }

    /// The catching-up tables, to restore with [`Reader::restore_catch_up`] when a read is
    /// abandoned (a schema change between poll and read: nothing was fixed).
    pub fn catch_up_checkpoint(&self) -> BTreeSet<String> {
        self.catch_up.clone()
    }

    pub fn restore_catch_up(&mut self, checkpoint: BTreeSet<String>) {
        self.catch_up = checkpoint;
    }
}

/// What of a group's batches is fixed now: the first oversized change becomes a spill, and the
/// batches after it are not fixed now (the table reads on from the spill once its finalize is
/// acknowledged), so no later PUBACK can move the cursor past a change the cloud does not have.
pub fn cut_at_spill(built: Built) -> (Vec<BuiltBatch>, Option<PendingChange>) {
    let spilled = built.oversized.into_iter().min_by_key(|c| c.commit_seq);
    let mut batches = built.batches;
    if let Some(stop_at) = spilled.as_ref().map(|c| c.commit_seq) {
        batches.retain(|b| b.last_seq <= stop_at);
    }
    (batches, spilled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_protocol::fingerprint::SchemaColumns;

    fn tables(names: &[&str]) -> Vec<String> {
        names.iter().map(|t| (*t).to_owned()).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        tables(names).into_iter().collect()
    }

    fn change(seq: i64) -> PendingChange {
        PendingChange {
            commit_seq: seq,
            json: b"{}".to_vec(),
        }
    }

    fn group(table: &str, seqs: &[i64]) -> ChangeGroup {
        ChangeGroup {
            table: table.into(),
            schema_hash: "h".into(),
            schema_columns: SchemaColumns::new(table, Vec::new()),
            changes: seqs.iter().copied().map(change).collect(),
            snapshot: None,
            end_marker_seq: None,
        }
    }

    fn read(last_seq: i64, groups: Vec<ChangeGroup>) -> PendingRead {
        PendingRead {
            groups,
            last_seq,
            ..PendingRead::default()
        }
    }

    fn seqs(read: &PendingRead) -> Vec<(String, Vec<i64>)> {
        read.groups
            .iter()
            .map(|g| {
                (
                    g.table.clone(),
                    g.changes.iter().map(|c| c.commit_seq).collect(),
                )
            })
            .collect()
    }

    /// A reader in the steady state: nothing to catch up, global position at `pos`.
    fn steady(pos: i64) -> Reader {
        let mut r = Reader::new(BTreeMap::new(), Vec::new(), BTreeSet::new());
        r.global_done(&read(pos, Vec::new()));
        r
    }

    #[test]
    fn a_restart_reads_on_from_the_highest_fixed_position_and_every_table_catches_up() {
        let fixed = BTreeMap::from([("a".to_owned(), 40), ("b".to_owned(), 90)]);
        let mut r = Reader::new(fixed, tables(&["a", "b", "c"]), BTreeSet::new());
        assert_eq!(r.read_pos(), 90);
        assert!(r.has_backlog());
        assert_eq!(
            r.catch_up_tables(&BTreeSet::new()),
            tables(&["a", "b", "c"])
        );
        let all = tables(&["a", "b", "c"]);
        // `b` is fixed up to the global position: it joins the global read at once.
        assert!(r.catch_up_read("b", 10, &all).is_none());
        // `a` continues after what is fixed, `c` after its acknowledged cursor.
        let a = r.catch_up_read("a", 10, &all).unwrap();
        assert_eq!(a.options.after_seq, 40);
        assert_eq!(a.options.max_entries, READ_MAX_ENTRIES);
        assert_eq!(a.options.skip_tables, set(&["b", "c"]));
        let c = r.catch_up_read("c", 7, &all).unwrap();
        assert_eq!(c.options.after_seq, 7);
        // Catching-up tables stay out of the global read.
        let global = r.global_read(&BTreeSet::new());
        assert_eq!(global.after_seq, 90);
        assert_eq!(global.skip_tables, set(&["a", "c"]));
    }

    #[test]
    fn a_catch_up_read_keeps_its_own_table_up_to_the_global_position() {
        let mut r = Reader::new(
            BTreeMap::from([("u".to_owned(), 50)]),
            tables(&["t", "u"]),
            BTreeSet::new(),
        );
        let plan = r.catch_up_read("t", 10, &tables(&["t", "u"])).unwrap();
        let mut got = read(60, vec![group("t", &[20, 45, 55]), group("u", &[30])]);
        r.catch_up_done(&plan, &mut got);
        assert_eq!(seqs(&got), vec![("t".to_owned(), vec![20, 45])]);
        // It reached the global position: it rejoins the global read.
        assert!(!r
            .catch_up_tables(&BTreeSet::new())
            .contains(&"t".to_owned()));
    }

    #[test]
    fn a_catch_up_read_short_of_the_global_position_goes_on_next_turn() {
        let mut r = Reader::new(
            BTreeMap::from([("u".to_owned(), 500)]),
            tables(&["t"]),
            BTreeSet::new(),
        );
        let plan = r.catch_up_read("t", 0, &tables(&["t"])).unwrap();
        let mut got = read(100, vec![group("t", &[1, 100])]);
        r.catch_up_done(&plan, &mut got);
        assert_eq!(seqs(&got), vec![("t".to_owned(), vec![1, 100])]);
        assert_eq!(r.catch_up_tables(&BTreeSet::new()), tables(&["t"]));
        // A read that examined nothing also ends the catch-up.
        let plan = r.catch_up_read("t", 100, &tables(&["t"])).unwrap();
        r.catch_up_done(&plan, &mut read(100, Vec::new()));
        assert!(r.catch_up_tables(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_global_read_moves_on_and_reports_a_backlog_while_it_does() {
        let mut r = steady(0);
        assert!(!r.has_backlog());
        r.global_done(&read(4_096, Vec::new()));
        assert!(r.has_backlog(), "the read moved: more may wait");
        assert_eq!(r.global_read(&BTreeSet::new()).after_seq, 4_096);
        r.global_done(&read(4_096, Vec::new()));
        assert!(!r.has_backlog());
    }

    #[test]
    fn paused_and_blocked_tables_are_skipped_and_catch_up_when_they_return() {
        let mut r = steady(100);
        r.pause("p");
        assert!(r.is_paused("p"));
        let blocked = set(&["s"]);
        assert_eq!(r.global_read(&blocked).skip_tables, set(&["p", "s"]));
        r.resume("p");
        assert!(!r.is_paused("p"));
        assert!(r.has_backlog());
        // Blocked by a spill, a resumed table still waits for the spill's finalize.
        r.resume("s");
        assert_eq!(r.catch_up_tables(&blocked), tables(&["p"]));
        r.unblock("s".into());
        assert_eq!(r.catch_up_tables(&BTreeSet::new()), tables(&["p", "s"]));
        assert_eq!(
            r.global_read(&BTreeSet::new()).skip_tables,
            set(&["p", "s"])
        );
    }

    #[test]
    fn what_is_fixed_is_not_fixed_twice() {
        let mut r = steady(0);
        r.mark_fixed("t", 20);
        r.mark_fixed("t", 10);
        assert_eq!(r.fixed("t"), 20);
        assert_eq!(r.fixed("u"), 0);
        let mut g = group("t", &[15, 20, 21]);
        r.drop_fixed(&mut g);
        assert_eq!(g.changes, vec![change(21)]);
    }

    #[test]
    fn a_new_epoch_forgets_every_position() {
        let mut r = Reader::new(
            BTreeMap::from([("t".to_owned(), 50)]),
            tables(&["t"]),
            BTreeSet::new(),
        );
        r.new_epoch();
        assert_eq!(r.read_pos(), 0);
        assert_eq!(r.fixed("t"), 0);
        assert!(r.catch_up_tables(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn an_abandoned_read_restores_the_catch_up() {
        let mut r = Reader::new(BTreeMap::new(), tables(&["t"]), BTreeSet::new());
        r.global_done(&read(10, Vec::new()));
        let saved = r.catch_up_checkpoint();
        assert!(r.catch_up_read("t", 10, &tables(&["t"])).is_none());
        assert!(r.catch_up_tables(&BTreeSet::new()).is_empty());
        r.restore_catch_up(saved);
        assert_eq!(r.catch_up_tables(&BTreeSet::new()), tables(&["t"]));
    }

    fn batch(first_seq: i64, last_seq: i64) -> BuiltBatch {
        BuiltBatch {
            batch_id: uuid::Uuid::nil(),
            table: "t".into(),
            first_seq,
            last_seq,
            rows: 1,
            payload: Vec::new(),
        }
    }

    #[test]
    fn batches_after_the_first_spilled_change_wait_for_its_finalize() {
        let built = Built {
            batches: vec![batch(1, 4), batch(6, 9), batch(11, 12)],
            oversized: vec![change(10), change(5)],
        };
        let (batches, spilled) = cut_at_spill(built);
        assert_eq!(spilled, Some(change(5)));
        assert_eq!(batches, vec![batch(1, 4)]);
        let (batches, spilled) = cut_at_spill(Built {
            batches: vec![batch(1, 4)],
            oversized: Vec::new(),
        });
        assert_eq!((batches.len(), spilled), (1, None));
    }
}
