//! Defect 11's reader half (reliability.md §6): a journal entry the reader cannot decode blocks
//! only its table — the read goes on for every other table and returns the entry (commit_seq,
//! bytes) for the daemon to block — and an entry an operator skipped is read as no change.
#![allow(clippy::unwrap_used)]

mod common;

use common::{changes_of, no_snapshot, read_all, Env};
use edge_agent::blocks::{self, NewBlock, Unblock, UNDECODABLE_JOURNAL_ENTRY};

fn setup(env: &mut Env) -> (edge_agent::state::StateDb, edge_agent::capture::Capture) {
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE bad (id INTEGER PRIMARY KEY, v REAL);",
    )
    .unwrap();
    let mut state = env.state();
    let capture = env.capture(&mut state, no_snapshot());
    (state, capture)
}

/// Writes `bad` row `id` and breaks its journal entry in the same transaction; its commit_seq.
fn undecodable(app: &rusqlite::Connection, id: i64) -> i64 {
    app.execute_batch(&format!(
        "BEGIN; INSERT INTO bad VALUES ({id}, 1.5);
         UPDATE __omega_journal SET row = '[{id},' WHERE commit_seq =
             (SELECT max(commit_seq) FROM __omega_journal); COMMIT;"
    ))
    .unwrap();
    app.query_row("SELECT max(commit_seq) FROM __omega_journal", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn undecodable_journal_entry_blocks_only_its_table_in_the_read() {
    let mut env = Env::new();
    let (state, mut capture) = setup(&mut env);
    let app = env.app();
    app.execute_batch("INSERT INTO good VALUES (1, 'a'); INSERT INTO bad VALUES (1, 0.5);")
        .unwrap();
    let seq = undecodable(&app, 2);
    app.execute_batch("INSERT INTO bad VALUES (3, 3.5); INSERT INTO good VALUES (2, 'b');")
        .unwrap();

    let read = read_all(&mut capture, &state);
    // The other table reads everything; the broken one up to its entry, nothing after it.
    assert_eq!(changes_of(&read, "good").len(), 2);
    let bad: Vec<i64> = changes_of(&read, "bad")
        .iter()
        .map(|c| c.commit_seq)
        .collect();
    assert!(bad.iter().all(|s| *s < seq), "{bad:?} vs {seq}");
    assert_eq!(bad.len(), 1);
    assert_eq!(read.undecodable.len(), 1);
    let u = &read.undecodable[0];
    assert_eq!((u.table.as_str(), u.commit_seq), ("bad", seq));
    let entry: serde_json::Value = serde_json::from_slice(&u.entry).unwrap();
    assert_eq!(entry["row"], "[2,");
    assert_eq!(entry["commit_seq"], seq);
}

#[test]
fn an_entry_skipped_by_an_operator_is_read_as_no_change() {
    let mut env = Env::new();
    let (state, mut capture) = setup(&mut env);
    let app = env.app();
    let seq = undecodable(&app, 2);
    app.execute_batch("INSERT INTO bad VALUES (3, 3.5);")
        .unwrap();
    let u = read_all(&mut capture, &state).undecodable.remove(0);
    blocks::block(
        &state,
        &NewBlock {
            table: &u.table,
            reason: UNDECODABLE_JOURNAL_ENTRY,
            commit_seq: u.commit_seq,
            detail: Some(&u.error),
            entry: Some(&u.entry),
            at_ms: 1,
        },
    )
    .unwrap();
    let epoch = state.journal_epoch().unwrap().unwrap().to_string();
    blocks::unblock(&state, "bad", Unblock::Skip { commit_seq: seq }, &epoch, 2).unwrap();
    let read = read_all(&mut capture, &state);
    assert!(read.undecodable.is_empty());
    let bad: Vec<i64> = changes_of(&read, "bad")
        .iter()
        .map(|c| c.commit_seq)
        .collect();
    assert_eq!(bad, vec![seq + 1]);
}

/// Reliability §6 (the agent never stops on bad data): a journal entry naming a `schema_id` the
/// agent has no schema for has no table to block. It used to end the read with an error — the
/// daemon's loop returned it and the agent exited, again at every start. Now it is skipped and
/// counted; every table reads on.
#[test]
fn journal_entry_of_an_unknown_schema_is_skipped_and_counted_not_fatal() {
    let mut env = Env::new();
    let (state, mut capture) = setup(&mut env);
    let app = env.app();
    app.execute_batch(
        "INSERT INTO good VALUES (1, 'a');
         INSERT INTO __omega_journal(schema_id, op, pk, row) VALUES (987654, 1, NULL, '[1]');
         INSERT INTO good VALUES (2, 'b'); INSERT INTO bad VALUES (1, 0.5);",
    )
    .unwrap();
    let read = read_all(&mut capture, &state);
    assert_eq!(changes_of(&read, "good").len(), 2);
    assert_eq!(changes_of(&read, "bad").len(), 1);
    assert_eq!(read.unknown_schema.len(), 1);
    assert_eq!(read.unknown_schema[0].1, 987654);
    assert!(read.undecodable.is_empty());
    let counted: i64 = state
        .conn()
        .query_row(
            "SELECT value FROM counters WHERE name = 'journal_unknown_schema_entries'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, 1);
}
