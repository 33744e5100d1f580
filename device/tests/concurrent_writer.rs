//! A separate writer *process* keeps committing while the agent reads and deletes acknowledged
//! journal rows: the writer never sees SQLITE_BUSY (it uses an ordinary busy_timeout, as any
//! application sharing a database must), and nothing is lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WRITER_ENV: &str = "EDGE_TEST_WRITER_DB";
const TXNS: i64 = 1500;

/// Child mode: the application's writer.
fn run_writer(path: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut busy = 0;
    for i in 0..TXNS {
        let r = conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             INSERT INTO t VALUES ({i}, 'v{i}', {i});
             UPDATE t SET n = n + 1 WHERE id = {};
             DELETE FROM t WHERE id = {};
             COMMIT;",
            i / 2,
            i - 7
        ));
        if let Err(e) = r {
            let _ = conn.execute_batch("ROLLBACK");
            eprintln!("writer error at txn {i}: {e}");
            busy += 1;
        }
    }
    println!("WRITER_DONE errors={busy}");
    assert_eq!(busy, 0, "the writer saw errors");
}

#[test]
fn writer_process_never_sees_busy_while_agent_deletes_acked_rows() {
    if let Ok(path) = std::env::var(WRITER_ENV) {
        run_writer(&path);
        return;
    }
    let mut env = Env::new();
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER);")
        .unwrap();
    drop(app);
    let mut state = env.state();
    let mut cap = env.capture(&mut state, no_snapshot());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_process_never_sees_busy_while_agent_deletes_acked_rows",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, env.source_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut deleted = 0;
    let mut rounds = 0;
    let status = loop {
        cap.poll(&mut state, &mut env.ids).unwrap();
        let read = read_all(&mut cap, &state);
        seen.extend(changes_of(&read, "t"));
        if let Some(seq) = read.covered.get("t") {
            // Small chunks: many short write transactions racing the writer.
            deleted += cap.ack(&state, "t", *seq, 16).unwrap();
        }
        rounds += 1;
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "writer did not finish in time");
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success() && stdout.contains("WRITER_DONE errors=0"),
        "writer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = read_all(&mut cap, &state);
    seen.extend(changes_of(&read, "t"));
    if let Some(seq) = read.covered.get("t") {
        deleted += cap.ack(&state, "t", *seq, 16).unwrap();
    }
    assert!(
        rounds > 1 && deleted > 0,
        "agent did not interleave ({rounds} rounds)"
    );
    let app = env.app();
    let target = empty_copy(&app, "t");
    replay(&target, "t", &seen);
    assert_eq!(dump(&target, "t"), dump(&app, "t"));
    assert_eq!(journal_rows(&app), 1, "only the floor row remains");
}
