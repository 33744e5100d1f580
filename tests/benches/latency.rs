//! End-to-end latency: from the application's commit to the row being visible in the PostgreSQL
//! mirror, through the real agent, mosquitto (mTLS) and the runner — the whole local stack.
//!
//! A writer commits one row every `EDGE_BENCH_LATENCY_INTERVAL_MS` (default 50 ms) for
//! `EDGE_BENCH_LATENCY_ROWS` rows (default 200), stamping each commit time; a poller watches the
//! mirror every 5 ms and stamps when each row becomes visible. Reported: p50 / p99 / max for the
//! agent with `flush_interval = 1s` and for low-latency mode (flush ~100 ms after a change).
//! The poll granularity (5 ms) bounds the resolution.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{approve, lineage, Stack};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(label: &str, replication: &str, rows: usize, interval: Duration) {
    let mut stack = Stack::start("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT);").await;
    stack.start_agent(replication);
    // Approve the table first so rows materialize directly (no staging in the measurement).
    stack
        .app
        .execute("INSERT INTO t VALUES (0, 'warm-up')", [])
        .unwrap();
    let id = stack.lineage_id("t").await;
    approve(&stack.deps, id).await;
    stack.assert_mirror_converges("t", &["id"]).await;
    let (_, _, mirror) = lineage(&stack.pg, "t").await.unwrap();
    let select = format!(
        "SELECT id FROM \"{}\" WHERE id > $1 ORDER BY id",
        mirror.unwrap()
    );

    let db_path = stack.dir.path().join("source.db");
    let writer = std::thread::spawn(move || {
        let app = rusqlite::Connection::open(db_path).unwrap();
        app.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut committed = BTreeMap::new();
        let start = Instant::now();
        for i in 1..=rows as i64 {
            let due = start + interval * (i as u32);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait); // pacing the load, not synchronisation
            }
            app.execute("INSERT INTO t VALUES (?1, 'x')", [i]).unwrap();
            committed.insert(i, Instant::now());
        }
        committed
    });

    let mut visible: BTreeMap<i64, Instant> = BTreeMap::new();
    let deadline = Instant::now() + interval * rows as u32 + Duration::from_secs(60);
    let mut last = 0i64;
    while (visible.len() < rows) && Instant::now() < deadline {
        for row in stack.pg.query(&select, &[&last]).await.unwrap() {
            let id: i64 = row.get(0);
            visible.entry(id).or_insert_with(Instant::now);
            last = last.max(id);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed = writer.join().unwrap();
    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| visible.get(id).map(|v| v.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    assert_eq!(latencies.len(), rows, "every committed row became visible");
    println!(
        "{label:<28} rows {rows:>5}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    stack.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this binary runs as a
    // small smoke test of the whole path instead.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rows = if smoke {
        20
    } else {
        env_usize("EDGE_BENCH_LATENCY_ROWS", 200)
    };
    let interval = Duration::from_millis(env_usize("EDGE_BENCH_LATENCY_INTERVAL_MS", 50) as u64);
    measure(
        "flush_interval = 1s",
        "flush_interval = \"1s\"\nlow_latency = false",
        rows,
        interval,
    )
    .await;
    measure(
        "low_latency (100 ms debounce)",
        "flush_interval = \"5s\"\nlow_latency = true",
        rows,
        interval,
    )
    .await;
}
