//! The oldest-pending marker (observability.md §3): per table, the `commit_seq` of its oldest
//! unacknowledged journal entry and when the agent first saw that entry as the oldest. Journal
//! rows carry no time of their own, and adding one would put a clock call on the application's
//! write path (the triggers); the daemon's poll notes instead, at most once a poll interval,
//! when the oldest entry changes ([`observe`]), and `edge_agent_oldest_pending_age_seconds` is
//! now − `first_seen_at_ms`.
//!
//! The age is a lower bound: an entry written while the agent was down is first seen when it
//! starts. A lost marker (power cut: it commits without an fsync) only restarts the age.

use std::collections::BTreeMap;

use rusqlite::params;

use crate::state::{StateDb, StateError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pending_marker (
    table_name TEXT PRIMARY KEY,
    commit_seq INTEGER NOT NULL,
    first_seen_at_ms INTEGER NOT NULL
);
";

/// Creates the marker table (idempotent).
pub fn init(state: &StateDb) -> Result<(), StateError> {
    state.conn().execute_batch(SCHEMA)?;
    Ok(())
}

/// Table → (`commit_seq`, `first_seen_at_ms`). Empty on a state.db from before the table.
pub fn list(state: &StateDb) -> Result<BTreeMap<String, (i64, i64)>, StateError> {
    let exists: bool = state.conn().query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'pending_marker'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let mut stmt = state
        .conn()
        .prepare_cached("SELECT table_name, commit_seq, first_seen_at_ms FROM pending_marker")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
}

/// What changes between the markers `known` and the oldest pending entry per table `oldest`
/// observed at `now_ms`. Pure. A table whose oldest entry is the same keeps its time; a new
/// oldest entry is seen now; a table with none (or no longer observed) loses its marker.
pub fn plan(
    known: &BTreeMap<String, (i64, i64)>,
    oldest: &BTreeMap<String, Option<i64>>,
    now_ms: i64,
) -> Vec<(String, Option<(i64, i64)>)> {
    let mut changes = Vec::new();
    for (table, seq) in oldest {
        match (seq, known.get(table)) {
            (Some(seq), Some((known_seq, _))) if known_seq == seq => {}
            (Some(seq), _) => changes.push((table.clone(), Some((*seq, now_ms)))),
            (None, Some(_)) => changes.push((table.clone(), None)),
            (None, None) => {}
        }
    }
    for table in known.keys() {
        if !oldest.contains_key(table) {
            changes.push((table.clone(), None));
        }
    }
    changes
}

/// Applies [`plan`]'s changes (the caller holds the transaction).
pub fn apply(state: &StateDb, changes: &[(String, Option<(i64, i64)>)]) -> Result<(), StateError> {
    for (table, marker) in changes {
        match marker {
            Some((seq, at)) => state
                .conn()
                .prepare_cached(
                    "INSERT INTO pending_marker(table_name, commit_seq, first_seen_at_ms) \
                     VALUES(?1, ?2, ?3) ON CONFLICT(table_name) DO UPDATE SET \
                     commit_seq = excluded.commit_seq, first_seen_at_ms = excluded.first_seen_at_ms",
                )?
                .execute(params![table, seq, at])?,
            None => state
                .conn()
                .prepare_cached("DELETE FROM pending_marker WHERE table_name = ?1")?
                .execute([table])?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_sighting_of_an_oldest_entry_is_kept_until_it_changes() {
        let s = StateDb::open_in_memory().unwrap();
        init(&s).unwrap();
        let oldest = BTreeMap::from([("a".to_owned(), Some(5)), ("b".to_owned(), None)]);
        apply(&s, &plan(&list(&s).unwrap(), &oldest, 1_000)).unwrap();
        assert_eq!(
            list(&s).unwrap(),
            BTreeMap::from([("a".to_owned(), (5, 1_000))])
        );
        // Same oldest entry later: nothing changes (the age grows).
        assert!(plan(&list(&s).unwrap(), &oldest, 9_000).is_empty());
        // Acked up to 5: the next oldest is first seen now.
        let oldest = BTreeMap::from([("a".to_owned(), Some(9))]);
        apply(&s, &plan(&list(&s).unwrap(), &oldest, 10_000)).unwrap();
        assert_eq!(list(&s).unwrap()["a"], (9, 10_000));
        // Drained, or no longer observed: the marker goes.
        apply(&s, &plan(&list(&s).unwrap(), &BTreeMap::new(), 11_000)).unwrap();
        assert!(list(&s).unwrap().is_empty());
    }
}
