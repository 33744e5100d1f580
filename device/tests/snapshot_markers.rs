//! Issue 13, defect 10, the device half (edge-policies §5, reliability.md §5): with
//! `snapshot_markers` granted every snapshot runs in marked chunks — a `snapshot_id` per run,
//! each chunk's rows reserved in one `BEGIN IMMEDIATE` with a journal marker above them, the
//! chunk's batches carrying `snapshot_id` / `snapshot_start_seq` / `snapshot_chunk`, then an
//! end-marker batch — so the cloud can sweep ghost rows. Without the grant nothing changes.
//! Real SQLite, the real reader, batcher and wire validation.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_agent::batcher::build_batches;
use edge_agent::capture::journal::{ChangeGroup, PendingRead};
use edge_agent::capture::Capture;
use edge_agent::state::StateDb;
use edge_agent::wire_options;
use edge_protocol::batch::{Op, RowBatch};
use edge_protocol::validate::decode_row_batch;
use edge_protocol::wire::{grant_for, SnapshotEnd};
use uuid::Uuid;

const MARKER_OP: i64 = edge_agent::capture::triggers::OP_SNAPSHOT_MARKER;

fn grant(state: &StateDb) {
    wire_options::store(state, &grant_for(&[])).unwrap();
}

/// Every group as the wire batches the drain would publish, decoded by the cloud's validator.
fn wire_batches(read: &PendingRead, epoch: Uuid) -> Vec<RowBatch> {
    let mut out = Vec::new();
    for g in &read.groups {
        let mut g: ChangeGroup = g.clone();
        let built = build_batches(&mut g, epoch, true, 128 * 1024, &mut Uuid::now_v7).unwrap();
        assert!(built.oversized.is_empty());
        for b in built.batches {
            out.push(decode_row_batch(&b.payload).unwrap());
        }
    }
    out
}

fn markers_in_journal(app: &rusqlite::Connection) -> i64 {
    app.query_row(
        &format!("SELECT count(*) FROM \"__omega_journal\" WHERE op = {MARKER_OP}"),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn table_with_rows(env: &Env, n: i64) -> rusqlite::Connection {
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    for i in 1..=n {
        app.execute("INSERT INTO t VALUES (?1, 'r')", [i]).unwrap();
    }
    app
}

fn open(env: &mut Env, state: &mut StateDb) -> Capture {
    env.capture(state, no_snapshot())
}

/// A table `t` with `rows` rows, captured, and (when `granted`) `snapshot_markers` granted.
struct Setup {
    _env: Env,
    app: rusqlite::Connection,
    state: StateDb,
    cap: Capture,
}

fn setup(rows: i64, granted: bool) -> Setup {
    let mut env = Env::new();
    let app = table_with_rows(&env, rows);
    let mut state = env.state();
    let cap = open(&mut env, &mut state);
    if granted {
        grant(&state);
    }
    Setup {
        _env: env,
        app,
        state,
        cap,
    }
}

#[test]
fn defect_10_marked_chunks_carry_fields_and_end_with_a_complete_marker() {
    let Setup {
        app,
        state,
        mut cap,
        _env,
    } = setup(7, true);
    cap.request_snapshot(&state, "t").unwrap();
    // Chunk 0, then a live write between chunks (a later seq: it wins), then the rest.
    assert_eq!(cap.snapshot_step(&state, "t", 3).unwrap().rows, 3);
    app.execute_batch("UPDATE t SET v = 'live' WHERE id = 6; DELETE FROM t WHERE id = 5;")
        .unwrap();
    while !cap.snapshot_step(&state, "t", 3).unwrap().done {}
    assert_eq!(
        markers_in_journal(&app),
        3,
        "two chunk markers and the end marker"
    );

    let read = read_all(&mut cap, &state);
    let epoch = state.journal_epoch().unwrap().unwrap();
    let batches = wire_batches(&read, epoch);
    let chunk_batches: Vec<&RowBatch> = batches
        .iter()
        .filter(|b| b.snapshot.as_ref().is_some_and(|f| !f.is_end()))
        .collect();
    let live: Vec<&RowBatch> = batches.iter().filter(|b| b.snapshot.is_none()).collect();
    let ends: Vec<&RowBatch> = batches
        .iter()
        .filter(|b| b.snapshot.as_ref().is_some_and(|f| f.is_end()))
        .collect();
    // Chunks 0 (ids 1-3) and 1 (4, 6 as updated live, 7; 5 was deleted before its chunk).
    let numbers: Vec<i64> = chunk_batches
        .iter()
        .map(|b| b.snapshot.as_ref().unwrap().snapshot_chunk)
        .collect();
    assert_eq!(numbers, [0, 1]);
    let f0 = chunk_batches[0].snapshot.clone().unwrap();
    assert_eq!(f0.snapshot_start_seq, chunk_batches[0].first_commit_seq);
    for b in &chunk_batches {
        let f = b.snapshot.as_ref().unwrap();
        assert_eq!(f.snapshot_id, f0.snapshot_id);
        assert_eq!(f.snapshot_start_seq, f0.snapshot_start_seq);
        assert!(b.rows.iter().all(|r| r.op == Op::Insert));
    }
    let rows: usize = chunk_batches.iter().map(|b| b.rows.len()).sum();
    assert_eq!(rows, 6, "7 rows at start, one deleted before its chunk");
    // The live changes travel on their own, never inside a chunk.
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].rows.len(), 2);
    assert!(live[0].first_commit_seq > chunk_batches[0].last_commit_seq);
    assert!(live[0].last_commit_seq < chunk_batches[1].first_commit_seq);
    // The end marker: rows [], first/last = start, N chunks, the rows written.
    assert_eq!(ends.len(), 1);
    let end = ends[0];
    let ef = end.snapshot.as_ref().unwrap();
    assert!(end.rows.is_empty());
    assert_eq!(end.first_commit_seq, ef.snapshot_start_seq);
    assert_eq!(end.last_commit_seq, ef.snapshot_start_seq);
    assert_eq!(ef.snapshot_id, f0.snapshot_id);
    assert_eq!(ef.snapshot_chunk, 2);
    assert_eq!(ef.snapshot_chunk_count, Some(2));
    assert_eq!(ef.snapshot_row_count, Some(6));
    assert_eq!(ef.snapshot_end, Some(SnapshotEnd::Complete));
    // The end marker is the last thing of the table and no marker is ever a row.
    assert_eq!(batches.last().unwrap(), end);
    let seqs: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.commit_seq))
        .collect();
    assert_eq!(seqs.len(), 8);

    // Replaying what went out gives the live table.
    let target = empty_copy(&app, "t");
    replay(&target, "t", &changes_of(&read, "t"));
    assert_eq!(dump(&target, "t"), dump(&app, "t"));

    // Acknowledging up to the end marker (the batch's journal seq) deletes every marker with
    // the rows except the journal's floor row.
    let end_seq = read.groups.last().unwrap().end_marker_seq.unwrap();
    cap.ack(&state, "t", end_seq, 256).unwrap();
    assert_eq!(journal_rows(&app), 1);
    assert!(read_all(&mut cap, &state).groups.is_empty());
    assert!(!state.table("t").unwrap().unwrap().needs_snapshot);
}

#[test]
fn defect_10_without_the_grant_snapshots_stay_unmarked() {
    let Setup {
        app,
        state,
        mut cap,
        _env,
    } = setup(7, false);
    cap.run_snapshot(&state, "t", 3).unwrap();
    assert_eq!(markers_in_journal(&app), 0);
    let read = read_all(&mut cap, &state);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    assert!(batches.iter().all(|b| b.snapshot.is_none()));
    for g in &read.groups {
        let mut g = g.clone();
        let built =
            build_batches(&mut g, Uuid::now_v7(), true, 128 * 1024, &mut Uuid::now_v7).unwrap();
        for b in built.batches {
            let text = String::from_utf8(b.payload).unwrap();
            assert!(!text.contains("snapshot_"), "{text}");
        }
    }
    assert_eq!(changes_of(&read, "t").len(), 7);

    // Markers written while granted are skipped, never sent, once the grant is gone.
    grant(&state);
    cap.run_snapshot(&state, "t", 3).unwrap();
    assert_eq!(markers_in_journal(&app), 4);
    wire_options::store(&state, &Default::default()).unwrap();
    let read = read_all(&mut cap, &state);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    assert!(batches.iter().all(|b| b.snapshot.is_none()));
    assert_eq!(changes_of(&read, "t").len(), 14);
}

#[test]
fn defect_10_an_empty_table_ends_a_run_with_zero_chunks() {
    let Setup {
        app,
        state,
        mut cap,
        _env,
    } = setup(0, true);
    cap.run_snapshot(&state, "t", 3).unwrap();
    let read = read_all(&mut cap, &state);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    assert_eq!(batches.len(), 1);
    let f = batches[0].snapshot.as_ref().unwrap();
    assert_eq!(f.snapshot_chunk_count, Some(0));
    assert_eq!(f.snapshot_row_count, Some(0));
    assert_eq!(markers_in_journal(&app), 1);
}

#[test]
fn defect_10_a_newer_snapshot_aborts_the_running_one() {
    let Setup {
        app: _app,
        state,
        mut cap,
        _env,
    } = setup(7, true);
    cap.request_snapshot(&state, "t").unwrap();
    cap.snapshot_step(&state, "t", 3).unwrap();
    // A retention drop / rebuild / `edge-agent snapshot` while it runs.
    cap.request_snapshot(&state, "t").unwrap();
    while !cap.snapshot_step(&state, "t", 3).unwrap().done {}
    let read = read_all(&mut cap, &state);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    let ends: Vec<_> = batches
        .iter()
        .filter_map(|b| b.snapshot.clone().filter(|f| f.is_end()))
        .collect();
    assert_eq!(ends.len(), 2);
    let first_run = batches[0].snapshot.clone().unwrap();
    assert_eq!(ends[0].snapshot_id, first_run.snapshot_id);
    assert_eq!(ends[0].snapshot_end, Some(SnapshotEnd::Aborted));
    assert_eq!(ends[0].snapshot_chunk_count, Some(1));
    assert_eq!(ends[0].snapshot_row_count, Some(3));
    assert_ne!(ends[1].snapshot_id, first_run.snapshot_id);
    assert_eq!(ends[1].snapshot_end, Some(SnapshotEnd::Complete));
    assert_eq!(ends[1].snapshot_chunk_count, Some(3));
    assert_eq!(ends[1].snapshot_row_count, Some(7));
    // Every chunk of the new run starts at or above its own start seq.
    for b in batches.iter().filter(|b| {
        b.snapshot
            .as_ref()
            .is_some_and(|f| f.snapshot_id == ends[1].snapshot_id && !f.is_end())
    }) {
        assert!(b.first_commit_seq >= ends[1].snapshot_start_seq);
    }
}

#[test]
fn defect_10_a_crash_before_the_cursor_write_continues_the_same_run() {
    let Setup {
        app,
        mut state,
        mut cap,
        _env: mut env,
    } = setup(7, true);
    cap.request_snapshot(&state, "t").unwrap();
    cap.snapshot_step(&state, "t", 3).unwrap();
    let before = state.table("t").unwrap().unwrap().snapshot_cursor;
    cap.snapshot_step(&state, "t", 3).unwrap();
    // The process died after chunk 1's commit, before its cursor reached state.db.
    state.set_snapshot_cursor("t", before.as_deref()).unwrap();
    drop(cap);
    let mut cap = open(&mut env, &mut state);
    while !cap.snapshot_step(&state, "t", 3).unwrap().done {}
    let read = read_all(&mut cap, &state);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    let chunks: Vec<i64> = batches
        .iter()
        .filter_map(|b| b.snapshot.as_ref().filter(|f| !f.is_end()))
        .map(|f| f.snapshot_chunk)
        .collect();
    assert_eq!(chunks, [0, 1, 2], "no chunk read twice, none skipped");
    let end = batches.last().unwrap().snapshot.clone().unwrap();
    assert_eq!(end.snapshot_chunk_count, Some(3));
    assert_eq!(end.snapshot_row_count, Some(7));
    let ids: std::collections::BTreeSet<Uuid> = batches
        .iter()
        .filter_map(|b| b.snapshot.as_ref().map(|f| f.snapshot_id))
        .collect();
    assert_eq!(ids.len(), 1, "one run");
    assert_eq!(changes_of(&read, "t").len(), 7);
    // And a crash right after the end marker's commit does not write a second one.
    let mut env2 = Env::new();
    let app2 = table_with_rows(&env2, 2);
    let mut state2 = env2.state();
    let mut cap2 = open(&mut env2, &mut state2);
    grant(&state2);
    cap2.request_snapshot(&state2, "t").unwrap();
    cap2.snapshot_step(&state2, "t", 5).unwrap();
    let before = state2.table("t").unwrap().unwrap().snapshot_cursor;
    assert!(cap2.snapshot_step(&state2, "t", 5).unwrap().done);
    state2.set_needs_snapshot("t", true).unwrap();
    state2.set_snapshot_cursor("t", before.as_deref()).unwrap();
    assert!(cap2.snapshot_step(&state2, "t", 5).unwrap().done);
    assert_eq!(
        markers_in_journal(&app2),
        2,
        "one chunk marker, one end marker"
    );
    drop(app);
}

#[test]
fn defect_10_markers_never_trip_retention_or_block_a_table() {
    let Setup {
        app,
        state,
        mut cap,
        _env,
    } = setup(20, true);
    cap.run_snapshot(&state, "t", 4).unwrap();
    app.execute_batch("UPDATE t SET v = 'x' WHERE id <= 10;")
        .unwrap();
    // Coalescing reads every pending entry's key: markers are not entries of a key.
    let report = cap.enforce_retention(&state, 1, 256).unwrap();
    assert!(report.dropped.contains_key("t"), "{report:?}");
    assert!(state.table("t").unwrap().unwrap().needs_snapshot);
    cap.run_snapshot(&state, "t", 4).unwrap();
    let read = read_all(&mut cap, &state);
    assert!(read.undecodable.is_empty(), "{:?}", read.undecodable);
    let batches = wire_batches(&read, state.journal_epoch().unwrap().unwrap());
    let end = batches.last().unwrap().snapshot.clone().unwrap();
    assert_eq!(end.snapshot_end, Some(SnapshotEnd::Complete));
    assert_eq!(end.snapshot_row_count, Some(20));

    // An undecodable chunk row blocks its table at that row; the markers around it never do.
    let bad: i64 = app
        .query_row(
            &format!(
                "SELECT min(commit_seq) FROM \"__omega_journal\" WHERE op <> {MARKER_OP} \
                 AND commit_seq > (SELECT min(commit_seq) FROM \"__omega_journal\" \
                 WHERE op = {MARKER_OP} AND commit_seq > ?1)"
            ),
            [read.groups[0].changes[0].commit_seq],
            |r| r.get(0),
        )
        .unwrap();
    app.execute(
        "UPDATE \"__omega_journal\" SET row = '[\"not a row' WHERE commit_seq = ?1",
        [bad],
    )
    .unwrap();
    let read = read_all(&mut cap, &state);
    assert_eq!(read.undecodable.len(), 1);
    assert_eq!(read.undecodable[0].commit_seq, bad);
}
