//! End to end: the runner's `/metrics` (observability.md §1, §2) while a real agent syncs a
//! real SQLite file through mosquitto into PostgreSQL. Families are there before the first
//! batch; then values move: new tables wait for schema review (`edge_lineage_paused{…,
//! reason="schema_review"} 1`, rows staged, reviews open, `edge_batches_total{status=
//! "staged"}`), the lineage cap (3 tables, cap 2: two series, one dropped), approval replays
//! the backlog (staged → 0, lineages active), a live batch materializes, and once the agent stops the device turns silent after
//! `--metrics-silent-after` (2 s here) while its lag grows — and back when it syncs again.
//!
//! The listener and the collector are started exactly as `edge-cloud run` starts them
//! (`metrics::serve`, `collector::spawn_runner_collector`) beside the in-process runner of the
//! harness. Every step polls the scrape; nothing sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{approve, Stack, DEADLINE, DEVICE};
use edge_functions::collector::spawn_runner_collector;
use edge_functions::env::MetricsSettings;
use edge_functions::metrics::serve;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TABLES: [&str; 3] = ["alpha", "beta", "gamma"];
const ROWS_PER_TABLE: i64 = 5;

/// `GET /metrics` → the body (panics on anything but 200).
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// A sample line: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Every sample line of a scrape.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value.parse().ok()?))
        })
        .collect()
}

/// The samples of `name` whose labels include every pair of `labels`.
fn matching(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .collect()
}

/// The one sample of `name` with `labels` (None when absent).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = matching(text, name, labels);
    assert!(found.len() <= 1, "{name} {labels:?} is ambiguous:\n{text}");
    found.first().copied()
}

/// The sum over every sample of `name` with `labels` (counters split by further labels).
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(text, name, labels).iter().sum()
}

/// Polls the scrape until `done` holds; returns that scrape. On timeout the panic shows the
/// last scrape.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let last = std::sync::Mutex::new(String::new());
    let found = edge_e2e::wait::try_wait_for_some(DEADLINE, what, || async {
        let text = scrape(addr).await;
        if done(&text) {
            return Some(text);
        }
        *last.lock().unwrap() = text;
        None
    })
    .await;
    found.unwrap_or_else(|e| panic!("/metrics: {e}; last scrape:\n{}", last.lock().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runner_metrics_follow_a_real_agent() {
    let schema: String = TABLES
        .iter()
        .map(|t| {
            let rows: Vec<String> = (1..=ROWS_PER_TABLE)
                .map(|i| format!("({i}, 'v{i}')"))
                .collect();
            format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY NOT NULL, v TEXT);\n\
                 INSERT INTO {t} VALUES {};\n",
                rows.join(", ")
            )
        })
        .collect();
    let mut stack = Stack::start(&schema).await;
    let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve::spawn(listener, Arc::clone(&stack.deps.metrics));
    let settings = MetricsSettings {
        listen: Some(addr),
        interval: Duration::from_millis(200),
        silent_after: Duration::from_secs(2),
        lineage_cap: 2,
    };
    let collector = spawn_runner_collector(
        stack.deps.pool.clone(),
        settings,
        Arc::clone(&stack.deps.metrics),
    );
    let project = stack.device.project_id.to_string();
    let p = project.as_str();

    // --- every family from start-up, before any batch --------------------------------------
    let text = scrape(addr).await;
    for family in [
        "edge_batches_total",
        "edge_rows_staged_total",
        "edge_lineages",
        "edge_staged_rows",
        "edge_mirror_lag_seconds_max",
        "edge_devices_silent",
        "edge_schema_reviews_open",
        "edge_lineage_paused",
        "edge_metrics_lineage_series_dropped",
    ] {
        let kind = if family.ends_with("_total") {
            format!("# TYPE {family} counter")
        } else {
            format!("# TYPE {family} gauge")
        };
        assert!(text.contains(&kind), "{kind} missing:\n{text}");
    }

    // --- new tables wait for review: staged, paused, capped ---------------------------------
    stack.start_agent("");
    let staged_total = (ROWS_PER_TABLE * TABLES.len() as i64) as f64;
    let text = scrape_until(
        addr,
        "three lineages paused for review, all rows staged",
        |t| {
            value(
                t,
                "edge_lineages",
                &[
                    ("project_id", p),
                    ("status", "paused"),
                    ("pause_reason", "schema_review"),
                ],
            ) == Some(3.0)
                && value(t, "edge_staged_rows", &[("project_id", p)]) == Some(staged_total)
        },
    )
    .await;
    assert!(
        total(
            &text,
            "edge_batches_total",
            &[("kind", "rows"), ("status", "staged")]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        total(
            &text,
            "edge_rows_staged_total",
            &[("reason", "schema_review")]
        ) >= staged_total,
        "{text}"
    );
    assert!(value(&text, "edge_staged_bytes", &[("project_id", p)]).unwrap() > 0.0);
    assert_eq!(
        value(
            &text,
            "edge_schema_reviews_open",
            &[("project_id", p), ("scope", "device"), ("status", "queued")]
        ),
        Some(3.0)
    );
    // The cap: 3 lineages, 2 series per lineage family, 1 dropped.
    assert_eq!(
        value(&text, "edge_metrics_lineage_series_dropped", &[]),
        Some(1.0)
    );
    let paused = matching(
        &text,
        "edge_lineage_paused",
        &[
            ("project_id", p),
            ("device", DEVICE),
            ("reason", "schema_review"),
        ],
    );
    assert_eq!(paused, vec![1.0, 1.0], "{text}");
    for family in [
        "edge_lineage_staged_rows",
        "edge_lineage_staged_bytes",
        "edge_lineage_mirror_lag_seconds",
        "edge_lineage_last_batch_timestamp_seconds",
    ] {
        assert_eq!(
            matching(&text, family, &[("project_id", p)]).len(),
            2,
            "{family}:\n{text}"
        );
    }
    assert_eq!(
        matching(&text, "edge_lineage_staged_rows", &[("device", DEVICE)]),
        vec![ROWS_PER_TABLE as f64; 2]
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    for last in matching(&text, "edge_lineage_last_batch_timestamp_seconds", &[]) {
        assert!(
            (now - last).abs() < 120.0,
            "a recent batch: {last} vs {now}"
        );
    }

    // --- approval replays the backlog --------------------------------------------------------
    for table in TABLES {
        let id = stack.lineage_id(table).await;
        approve(&stack.deps, id).await;
    }
    let text = scrape_until(addr, "every lineage active and nothing staged", |t| {
        value(
            t,
            "edge_lineages",
            &[
                ("project_id", p),
                ("status", "active"),
                ("pause_reason", "none"),
            ],
        ) == Some(3.0)
            && value(t, "edge_staged_rows", &[("project_id", p)]) == Some(0.0)
    })
    .await;
    assert_eq!(
        matching(&text, "edge_lineage_paused", &[("reason", "none")]),
        vec![0.0, 0.0],
        "{text}"
    );
    assert!(
        matching(&text, "edge_schema_reviews_open", &[("project_id", p)])
            .iter()
            .all(|v| *v == 0.0)
    );

    // --- a live batch materializes ------------------------------------------------------------
    let live_before = total(
        &text,
        "edge_batches_total",
        &[("kind", "rows"), ("status", "materialized")],
    );
    stack
        .app
        .execute("INSERT INTO alpha VALUES (100, 'live')", [])
        .unwrap();
    let text = scrape_until(addr, "a live batch materialized", |t| {
        total(
            t,
            "edge_batches_total",
            &[("kind", "rows"), ("status", "materialized")],
        ) > live_before
    })
    .await;
    assert!(
        total(
            &text,
            "edge_rows_materialized_total",
            &[("kind", "rows"), ("path", "live")]
        ) >= 1.0,
        "{text}"
    );

    // --- the agent stops: the device turns silent, its lag grows ------------------------------
    stack.stop_agent().await;
    let text = scrape_until(addr, "the stopped device silent", |t| {
        value(t, "edge_devices_silent", &[("project_id", p)]) == Some(1.0)
    })
    .await;
    assert!(
        value(&text, "edge_mirror_lag_seconds_max", &[("project_id", p)]).unwrap() >= 2.0,
        "at least the silence threshold behind:\n{text}"
    );

    // --- and back once it syncs again ---------------------------------------------------------
    stack.start_agent("");
    stack
        .app
        .execute("INSERT INTO beta VALUES (100, 'back')", [])
        .unwrap();
    scrape_until(addr, "the device no longer silent", |t| {
        value(t, "edge_devices_silent", &[("project_id", p)]) == Some(0.0)
    })
    .await;

    collector.abort();
    server.abort();
    stack.stop().await;
}
