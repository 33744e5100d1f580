//! Issue 13 defect 10 (ghost rows after a re-snapshot) and reliability.md §5 (stale epochs), on
//! the cloud side: the real ingest handler on a real PostgreSQL, batches as a device with
//! `snapshot_markers` granted sends them (edge-policies §0, §5).
#![allow(clippy::unwrap_used)]

mod common;

use common::{device_state, env, ins, row_batch, Change, Env};
use edge_functions::ingest::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

fn chunk(batch: Value, snapshot: Uuid, start: i64, chunk: i64) -> Value {
    let mut b = batch;
    b["snapshot_id"] = snapshot.to_string().into();
    b["snapshot_start_seq"] = start.into();
    b["snapshot_chunk"] = chunk.into();
    b
}

fn end_marker(
    e: &Env,
    epoch: Uuid,
    snapshot: Uuid,
    start: i64,
    n: i64,
    rows: i64,
    how: &str,
) -> Value {
    let mut b = row_batch(e.id(), epoch, &device_state(), false, &[]);
    b["first_commit_seq"] = start.into();
    b["last_commit_seq"] = start.into();
    b["snapshot_id"] = snapshot.to_string().into();
    b["snapshot_start_seq"] = start.into();
    b["snapshot_chunk"] = n.into();
    b["snapshot_chunk_count"] = n.into();
    b["snapshot_row_count"] = rows.into();
    b["snapshot_end"] = how.into();
    b
}

/// Sends one accepted batch of chunk `n` of run `snapshot` (starting at `start`) of `device_state`.
async fn send_chunk(e: &Env, epoch: Uuid, snapshot: Uuid, start: i64, n: i64, rows: &[Change]) {
    accepted(
        &e.rows(&chunk(
            row_batch(e.id(), epoch, &device_state(), false, rows),
            snapshot,
            start,
            n,
        ))
        .await,
    );
}

fn accepted(o: &Outcome) {
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
}

/// Live (not tombstoned) ids and modes in the mirror.
async fn live(e: &Env) -> Vec<(i64, String)> {
    let mirror = e.mirror_table().await;
    e.client
        .query(
            &format!("SELECT id, mode FROM \"{mirror}\" WHERE NOT _edge_deleted ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// An approved lineage holding ids 1..=6 of epoch `old` (seqs 1..=6), as before the restore.
async fn before_restore(e: &Env, old: Uuid) {
    let rows: Vec<Change> = (1..=6).map(|i| ins(i, i, "old", 1.0)).collect();
    accepted(
        &e.rows(&row_batch(e.id(), old, &device_state(), true, &rows))
            .await,
    );
    e.approve("device_state").await;
    assert_eq!(live(e).await.len(), 6);
}

#[tokio::test]
async fn ghost_rows_are_swept_after_a_complete_resnapshot_of_a_restored_database() {
    let e = env().await;
    let old = e.id();
    before_restore(&e, old).await;
    // source.db restored from a backup holding ids 1..=3 only: new epoch, re-snapshot from seq 1
    // in two chunks, and a live write between the chunks (id 2 → "live" at seq 3, newer than
    // chunk 1's image of it… which the device took later, at seq 4).
    let new = e.id();
    let snap = e.id();
    send_chunk(&e, new, snap, 1, 0, &[ins(1, 1, "snap", 2.0)]).await;
    accepted(
        &e.rows(&row_batch(
            e.id(),
            new,
            &device_state(),
            false,
            &[ins(2, 9, "live", 3.0)],
        ))
        .await,
    );
    send_chunk(
        &e,
        new,
        snap,
        1,
        1,
        &[ins(3, 2, "snap", 2.0), ins(4, 3, "snap", 2.0)],
    )
    .await;
    // Before the end marker nothing is swept.
    assert_eq!(live(&e).await.len(), 7);
    accepted(
        &e.rows(&end_marker(&e, new, snap, 1, 2, 3, "complete"))
            .await,
    );
    assert_eq!(
        live(&e).await,
        vec![
            (1, "snap".into()),
            (2, "snap".into()),
            (3, "snap".into()),
            (9, "live".into())
        ],
        "rows 4..=6 of the old epoch are ghosts; the live row 9 stays"
    );
    let (state, ghosts): (String, i64) = {
        let r = e
            .client
            .query_one(
                "SELECT state, ghost_rows_deleted FROM edge_snapshot_runs",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((state.as_str(), ghosts), ("swept", 3));
    // A change after the snapshot start that deletes and a later snapshot row are untouched.
    accepted(
        &e.rows(&row_batch(
            e.id(),
            new,
            &device_state(),
            false,
            &[ins(5, 3, "after", 4.0)],
        ))
        .await,
    );
    assert!(live(&e).await.contains(&(3, "after".into())));
}

#[tokio::test]
async fn ghost_rows_are_swept_after_a_retention_drop_resnapshot_in_the_same_epoch() {
    let e = env().await;
    let epoch = e.id();
    before_restore(&e, epoch).await;
    // needs_snapshot after a retention drop: same epoch, snapshot from seq 10; the device still
    // has ids 1 and 5; id 5 changed by a live write at seq 12 after its chunk (seq 11).
    let snap = e.id();
    send_chunk(
        &e,
        epoch,
        snap,
        10,
        0,
        &[ins(10, 1, "snap", 0.0), ins(11, 5, "snap", 0.0)],
    )
    .await;
    accepted(
        &e.rows(&row_batch(
            e.id(),
            epoch,
            &device_state(),
            false,
            &[ins(12, 5, "live", 7.0)],
        ))
        .await,
    );
    accepted(
        &e.rows(&end_marker(&e, epoch, snap, 10, 1, 2, "complete"))
            .await,
    );
    assert_eq!(live(&e).await, vec![(1, "snap".into()), (5, "live".into())]);
}

#[tokio::test]
async fn no_sweep_when_a_chunk_is_missing_or_the_snapshot_was_aborted() {
    let e = env().await;
    let epoch = e.id();
    before_restore(&e, epoch).await;
    // chunk 1 of 2 never arrived
    let snap = e.id();
    send_chunk(&e, epoch, snap, 10, 0, &[ins(10, 1, "snap", 0.0)]).await;
    accepted(
        &e.rows(&end_marker(&e, epoch, snap, 10, 2, 2, "complete"))
            .await,
    );
    assert_eq!(live(&e).await.len(), 6, "missing chunk: no sweep");
    // aborted
    let snap2 = e.id();
    send_chunk(&e, epoch, snap2, 20, 0, &[ins(20, 1, "snap2", 0.0)]).await;
    accepted(
        &e.rows(&end_marker(&e, epoch, snap2, 20, 1, 1, "aborted"))
            .await,
    );
    assert_eq!(live(&e).await.len(), 6, "aborted: no sweep");
    let states: Vec<String> = e
        .client
        .query(
            "SELECT state FROM edge_snapshot_runs ORDER BY snapshot_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, vec!["incomplete", "aborted"]);
}

#[tokio::test]
async fn a_bad_snapshot_marker_is_rejected_invalid_snapshot() {
    let e = env().await;
    let epoch = e.id();
    let mut b = end_marker(&e, epoch, e.id(), 1, 2, 0, "complete");
    b["snapshot_chunk_count"] = 3.into();
    match e.rows(&b).await {
        Outcome::Rejected { code, .. } => assert_eq!(code.as_str(), "invalid_snapshot"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stale_epoch_batch_is_accepted_recorded_and_raises_the_event() {
    let e = env().await;
    let old = e.id();
    let new = e.id();
    accepted(
        &e.rows(&row_batch(
            e.id(),
            new,
            &device_state(),
            true,
            &[ins(1, 1, "new", 0.0)],
        ))
        .await,
    );
    e.approve("device_state").await;
    let stale = e.id();
    accepted(
        &e.rows(&row_batch(
            stale,
            old,
            &device_state(),
            false,
            &[ins(7, 2, "old", 0.0)],
        ))
        .await,
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_events WHERE event_type = 'integration.edge_table_lineage.stale_epoch.v1'").await,
        1
    );
    let recorded: Uuid = e
        .client
        .query_one("SELECT batch_id FROM edge_stale_epoch_batches", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, stale);
    // A batch of the newest epoch raises nothing.
    accepted(
        &e.rows(&row_batch(
            e.id(),
            new,
            &device_state(),
            false,
            &[ins(2, 3, "new", 0.0)],
        ))
        .await,
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_stale_epoch_batches")
            .await,
        1
    );
}

#[tokio::test]
async fn hello_is_answered_with_a_signed_set_wire_options_once() {
    let e = env().await;
    let hello = json!({"format_version":1,"request_kind":"hello","agent_version":"0.1.0",
        "capabilities":[],"granted":{"features":[]}});
    let o = e
        .send("sync/ingest/request", hello.to_string().as_bytes())
        .await;
    assert!(matches!(o, Outcome::Ignored { .. }), "{o:?}");
    let env: Value = e
        .client
        .query_one(
            "SELECT envelope FROM edge_pending_controls WHERE control_kind = 'set_wire_options'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(env["features"], json!(["snapshot_markers"]));
    assert!(
        env.get("content_encodings").is_none(),
        "zstd is not built: not granted"
    );
    let parsed =
        edge_protocol::validate::decode_control_envelope(env.to_string().as_bytes()).unwrap();
    edge_protocol::control::verify(&parsed, &e.device.control_key).unwrap();
    // Already granted → nothing more.
    let granted = json!({"format_version":1,"request_kind":"hello","agent_version":"0.1.0",
        "capabilities":[],"granted":{"features":["snapshot_markers"]}});
    e.send("sync/ingest/request", granted.to_string().as_bytes())
        .await;
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_pending_controls WHERE control_kind = 'set_wire_options'"
        )
        .await,
        1
    );
}

/// A chunk larger than one batch travels in several batches with the same `snapshot_chunk`.
/// When a later one of them has a row that fails to materialize, the run must not sweep: that
/// row's mirror version is still the old one, below the snapshot's start, and the sweep would
/// tombstone a row the device has (the chunk used to be recorded from its first batch only).
#[tokio::test]
async fn a_failed_row_in_a_later_batch_of_a_chunk_stops_the_sweep() {
    let e = env().await;
    let epoch = e.id();
    before_restore(&e, epoch).await;
    let snap = e.id();
    send_chunk(
        &e,
        epoch,
        snap,
        10,
        0,
        &[ins(10, 1, "snap", 0.0), ins(11, 2, "snap", 0.0)],
    )
    .await;
    let unfit: Change = (
        12,
        "insert",
        json!({"id": 3}),
        json!({"id": 3, "mode": "snap", "setpoint": "not a number"}),
    );
    let o = e
        .rows(&chunk(
            row_batch(e.id(), epoch, &device_state(), false, &[unfit]),
            snap,
            10,
            0,
        ))
        .await;
    assert!(
        matches!(o, Outcome::Accepted { failed: 1, .. }),
        "the row is set aside as materialization_failed: {o:?}"
    );
    accepted(
        &e.rows(&end_marker(&e, epoch, snap, 10, 1, 3, "complete"))
            .await,
    );
    let ids: Vec<i64> = live(&e).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 4, 5, 6],
        "no sweep while a chunk row failed"
    );
    let state: String = e
        .client
        .query_one("SELECT state FROM edge_snapshot_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "incomplete");
}
