//! Issue 15 items 1–2 (observability.md §1, §2): the cloud's metrics registry — every family of
//! §2 with HELP and TYPE from start-up, the histogram's buckets, counters that move after a
//! real batch against PostgreSQL, gauges replaced by a snapshot, EMF lines as the EMF
//! specification requires them, and the runner's own `/metrics` listener (the API listener
//! answers 404 there; a bind failure names `--metrics`; bad flag values name their flag).
#![allow(clippy::unwrap_used)]

mod common;
mod runner_process;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use edge_e2e::{Broker, Pki};
use edge_functions::metrics::emf::gauge_lines;
use edge_functions::metrics::CloudMetrics;
use edge_functions::store::health::{FleetGauges, LineageCount, LineageHealth};
use runner_process::RunnerProcess;
use serde_json::{json, Value};
use uuid::Uuid;

/// §2's names, written out as the spec writes them (not taken from the code's constants).
const COUNTERS: [&str; 9] = [
    "edge_batches_total",
    "edge_batches_rejected_total",
    "edge_stale_journal_epochs_total",
    "edge_tenant_fields_stripped_total",
    "edge_rows_materialized_total",
    "edge_rows_staged_total",
    "edge_materialization_failures_total",
    "edge_controls_published_total",
    "edge_dead_letters_total",
];
const GAUGES: [&str; 16] = [
    "edge_lineages",
    "edge_staged_rows",
    "edge_staged_bytes",
    "edge_mirror_lag_seconds_max",
    "edge_devices_silent",
    "edge_schema_reviews_open",
    "edge_replay_intents_open",
    "edge_replay_intents_failed",
    "edge_controls_pending",
    "edge_dead_letters_open",
    "edge_lineage_staged_rows",
    "edge_lineage_staged_bytes",
    "edge_lineage_mirror_lag_seconds",
    "edge_lineage_last_batch_timestamp_seconds",
    "edge_lineage_paused",
    "edge_metrics_lineage_series_dropped",
];

fn assert_every_family(text: &str) {
    let families = COUNTERS
        .iter()
        .map(|n| (*n, "counter"))
        .chain(GAUGES.iter().map(|n| (*n, "gauge")))
        .chain([("edge_handler_duration_seconds", "histogram")]);
    for (name, kind) in families {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no HELP for {name}:\n{text}"
        );
        assert!(
            text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
            "no TYPE {kind} for {name}:\n{text}"
        );
    }
}

/// The value of the sample `name{labels}` (labels as exposed, e.g. `kind="rows",status="staged"`).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn exposition_at_start_up_has_every_family_with_help_and_type() {
    let text = CloudMetrics::new().encode();
    assert_every_family(&text);
    // The label-less counters read 0 before anything happened.
    assert_eq!(
        sample(&text, "edge_stale_journal_epochs_total", ""),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "edge_tenant_fields_stripped_total", ""),
        Some(0.0)
    );
}

#[test]
fn the_histogram_has_exactly_the_spec_buckets() {
    let m = CloudMetrics::new();
    m.observe(edge_cloud_core::metrics::Handler::Api, Instant::now());
    let text = m.encode();
    let les: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("edge_handler_duration_seconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        les,
        [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
            "+Inf"
        ]
    );
    assert!(
        text.contains("edge_handler_duration_seconds_count{handler=\"api\"} 1"),
        "{text}"
    );
}

fn lineage(project: Uuid, device: &str, paused: bool) -> LineageHealth {
    LineageHealth {
        project_id: project,
        device: device.into(),
        source_table: "device_state".into(),
        staged_rows: 3,
        staged_bytes: 300,
        mirror_lag_seconds: 42,
        last_batch_timestamp_seconds: Some(1_767_225_600),
        paused,
        pause_reason: paused.then(|| "circuit_breaker".to_owned()),
    }
}

#[test]
fn set_gauges_replaces_every_series_from_one_snapshot() {
    let m = CloudMetrics::new();
    let (p1, p2) = (Uuid::now_v7(), Uuid::now_v7());
    m.set_gauges(&FleetGauges {
        lineages: vec![LineageCount {
            project_id: p1,
            status: "active".into(),
            pause_reason: None,
            count: 2,
        }],
        devices_silent: vec![(p1, 1)],
        worst_lineages: vec![lineage(p1, "gw-01", true)],
        dead_letters_open: 4,
        ..FleetGauges::default()
    });
    let text = m.encode();
    let l1 = format!("project_id=\"{p1}\",status=\"active\",pause_reason=\"none\"");
    assert_eq!(sample(&text, "edge_lineages", &l1), Some(2.0), "{text}");
    let dev1 = format!("project_id=\"{p1}\",device=\"gw-01\",source_table=\"device_state\"");
    assert_eq!(
        sample(
            &text,
            "edge_lineage_paused",
            &format!("{dev1},reason=\"circuit_breaker\"")
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "edge_dead_letters_open", ""), Some(4.0));

    // The next snapshot: gw-01 left the worst N, p1 emptied; nothing of them stays.
    m.set_gauges(&FleetGauges {
        devices_silent: vec![(p2, 0)],
        worst_lineages: vec![lineage(p2, "gw-02", false)],
        lineage_series_dropped: 7,
        ..FleetGauges::default()
    });
    let text = m.encode();
    assert!(!text.contains(&p1.to_string()), "{text}");
    let dev2 = format!("project_id=\"{p2}\",device=\"gw-02\",source_table=\"device_state\"");
    assert_eq!(
        sample(
            &text,
            "edge_lineage_paused",
            &format!("{dev2},reason=\"none\"")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "edge_metrics_lineage_series_dropped", ""),
        Some(7.0)
    );
    assert_every_family(&text);
}

#[tokio::test]
async fn counters_move_after_real_batches() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let batch = row_batch(e.id(), epoch, &s, true, &[ins(1, 1, "heat", 20.5)]);
    // A new table: its first batch is staged for schema review.
    let first = e.rows(&batch).await;
    assert!(
        matches!(first, edge_functions::ingest::Outcome::Accepted { .. }),
        "{first:?}"
    );
    // The same batch again: a duplicate.
    e.rows(&batch).await;
    // Tenant fields are stripped at ingress (counted) and the batch is accepted.
    let mut tenant = row_batch(e.id(), epoch, &s, true, &[ins(2, 2, "cool", 18.0)]);
    tenant["org_id"] = json!("someone-else");
    e.rows(&tenant).await;
    // A rejection.
    let mut bad = row_batch(e.id(), epoch, &s, true, &[ins(3, 3, "x", 1.0)]);
    bad["format_version"] = json!(99);
    e.rows(&bad).await;
    // After approval, a batch materializes.
    e.approve("device_state").await;
    let live = row_batch(e.id(), epoch, &s, true, &[ins(4, 4, "auto", 21.0)]);
    e.rows(&live).await;
    // A newer journal epoch, then a batch of the old one: a stale epoch (reliability §5).
    let newer = e.id();
    e.rows(&row_batch(
        e.id(),
        newer,
        &s,
        false,
        &[ins(1, 5, "new", 1.0)],
    ))
    .await;
    e.rows(&row_batch(
        e.id(),
        epoch,
        &s,
        false,
        &[ins(5, 6, "old", 1.0)],
    ))
    .await;

    let text = e.deps.metrics.encode();
    assert_every_family(&text);
    let rows = |status: &str| {
        sample(
            &text,
            "edge_batches_total",
            &format!("kind=\"rows\",status=\"{status}\""),
        )
    };
    assert_eq!(rows("staged"), Some(2.0), "{text}");
    assert_eq!(rows("duplicate"), Some(1.0), "{text}");
    assert_eq!(rows("rejected"), Some(1.0), "{text}");
    assert_eq!(rows("materialized"), Some(3.0), "{text}");
    let rejected_code = text
        .lines()
        .find(|l| l.starts_with("edge_batches_rejected_total{kind=\"rows\",code=\""))
        .unwrap_or_else(|| panic!("no rejection counted:\n{text}"));
    assert!(rejected_code.ends_with(" 1"), "{rejected_code}");
    assert!(
        rejected_code.contains("code=\"unsupported_format_version\"")
            || rejected_code.contains("code=\"invalid_format_version\""),
        "{rejected_code}"
    );
    assert_eq!(
        sample(&text, "edge_rows_staged_total", "reason=\"schema_review\""),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "edge_rows_materialized_total",
            "kind=\"rows\",path=\"live\""
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_tenant_fields_stripped_total", ""),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "edge_stale_journal_epochs_total", ""),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("edge_handler_duration_seconds_count{handler=\"ingest\"} 7"),
        "{text}"
    );
}

/// Checks `line` against the EMF specification's rules (the root `_aws` metadata, directives,
/// dimension sets naming top-level strings, metric values numbers or ≤ 100 numbers).
fn assert_emf(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let root = v.as_object().unwrap();
    let aws = root["_aws"].as_object().unwrap();
    assert!(
        aws["Timestamp"].is_i64() || aws["Timestamp"].is_u64(),
        "{line}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert!(!directives.is_empty());
    for d in directives {
        assert_eq!(d["Namespace"], "EdgeSync", "{line}");
        let sets = d["Dimensions"].as_array().unwrap();
        assert!(
            sets.iter().any(|s| s.as_array().unwrap().is_empty()),
            "no [] set: {line}"
        );
        for set in sets {
            let set = set.as_array().unwrap();
            assert!(set.len() <= 30, "{line}");
            for dim in set {
                let name = dim.as_str().unwrap();
                let member = root.get(name).unwrap_or_else(|| panic!("{name}: {line}"));
                assert!(member.is_string(), "{line}");
                assert!(!member.as_str().unwrap().trim().is_empty(), "{line}");
            }
        }
        let metrics = d["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= 100, "{line}");
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(m["Unit"].is_string(), "{line}");
            match &root[name] {
                Value::Number(_) => {}
                Value::Array(values) => {
                    assert!(!values.is_empty() && values.len() <= 100, "{line}");
                    assert!(values.iter().all(Value::is_number), "{line}");
                }
                other => panic!("{name} = {other}: {line}"),
            }
        }
    }
    v
}

#[test]
fn emf_lines_parse_as_the_spec_requires_and_drain_the_invocation() {
    let m = CloudMetrics::with_emf();
    m.control_published("url_grant", 1);
    m.control_published("url_grant", 1);
    m.control_published("pause_lineage", 3);
    m.dead_letter_parked("sqs");
    for _ in 0..150 {
        m.observe(edge_cloud_core::metrics::Handler::Ingest, Instant::now());
    }
    let lines = m.emf_lines(1_767_225_600_000);
    let parsed: Vec<Value> = lines.iter().map(|l| assert_emf(l)).collect();
    let first = parsed
        .iter()
        .find(|v| v["kind"] == "url_grant")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(first["attempt"], "first");
    assert_eq!(first["edge_controls_published_total"], 2);
    assert_eq!(
        first["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["kind", "attempt"], []])
    );
    assert_eq!(first["_aws"]["Timestamp"], 1_767_225_600_000_i64);
    let retry = parsed
        .iter()
        .find(|v| v["kind"] == "pause_lineage")
        .unwrap();
    assert_eq!(retry["attempt"], "retry");
    let durations: usize = parsed
        .iter()
        .filter(|v| v["handler"] == "ingest")
        .map(|v| {
            assert_eq!(
                v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
                json!({"Name": "edge_handler_duration_seconds", "Unit": "Seconds"})
            );
            v["edge_handler_duration_seconds"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(durations, 150);
    // Drained: the next invocation starts from nothing.
    assert!(m.emf_lines(1).is_empty());
    // Without a tally (the runner) there are none.
    assert!(CloudMetrics::new().emf_lines(1).is_empty());
}

#[test]
fn gauge_emf_lines_follow_the_spec_example_and_honour_the_cap() {
    let p = Uuid::now_v7();
    let g = FleetGauges {
        devices_silent: vec![(p, 2)],
        worst_lineages: (0..5)
            .map(|i| lineage(p, &format!("gw-{i}"), false))
            .collect(),
        lineage_series_dropped: 10,
        dead_letters_open: 1,
        ..FleetGauges::default()
    };
    let lines = gauge_lines(&g, 1_767_225_600_000, 3);
    let parsed: Vec<Value> = lines.iter().map(|l| assert_emf(l)).collect();
    let silent = parsed
        .iter()
        .find(|v| v.get("edge_devices_silent").is_some())
        .unwrap();
    assert_eq!(silent["project_id"], p.to_string());
    assert_eq!(silent["edge_devices_silent"], 2);
    assert_eq!(
        silent["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["project_id"], []])
    );
    let devices: std::collections::BTreeSet<&str> = parsed
        .iter()
        .filter_map(|v| v.get("device")?.as_str())
        .collect();
    assert_eq!(devices.len(), 3, "{lines:#?}");
    let dropped = parsed
        .iter()
        .find_map(|v| v.get("edge_metrics_lineage_series_dropped"))
        .unwrap();
    assert_eq!(dropped, &json!(12));
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_serves_metrics_on_its_own_listener_and_the_api_listener_404s() {
    let e = env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let runner = RunnerProcess::start(&e.db.url(), &broker, &pki, dir.path(), "edge-service", &[]);
    let metrics = runner.metrics.unwrap();
    let (status, head, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_every_family(&body);
    // The sweep loop runs beside the subscription: its runs are timed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = get(metrics, "/metrics");
        if body.contains("edge_handler_duration_seconds_count{handler=\"sweep\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "no sweep timed:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(metrics, "/other").0, 404);
    assert_eq!(get(metrics, "/").0, 404);
    // The API listener has no /metrics.
    let (status, _, body) = get(runner.http, "/metrics");
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_address_that_cannot_be_bound_stops_start_up_naming_the_flag() {
    let e = env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut runner = RunnerProcess::spawn(
        &e.db.url(),
        &broker,
        &pki,
        dir.path(),
        "edge-service",
        &[],
        &["--metrics", &addr],
    );
    let status = runner.wait_exit(Duration::from_secs(30));
    let log = runner.log_text();
    let status = status.unwrap_or_else(|| panic!("the runner kept running:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains("--metrics") && log.contains(&addr), "{log}");
}

#[test]
fn bad_metrics_flag_values_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--metrics-interval", "15x"),
        ("--metrics-silent-after", "0m"),
        ("--metrics", "nowhere"),
        ("--metrics-lineage-cap", "many"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
            .args([
                "run",
                "--database-url",
                "postgres://unused",
                "--mqtt-url",
                "mqtts://127.0.0.1:1",
                "--ca",
                "x",
                "--cert",
                "x",
                "--key",
                "x",
                flag,
                value,
            ])
            .env_remove("EDGE_METRICS_LISTEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

/// A transport that takes every publish.
struct Delivered;

impl edge_functions::control_publisher::ControlPublisher for Delivered {
    async fn publish(
        &self,
        _topic: &str,
        _payload: Vec<u8>,
    ) -> Result<(), edge_functions::control_publisher::PublishError> {
        Ok(())
    }
}

#[tokio::test]
async fn controls_published_are_counted_first_then_retry() {
    let e = env().await;
    // A `hello` gets a signed `set_wire_options`, pending until acked.
    let hello = json!({"format_version":1,"request_kind":"hello","agent_version":"0.1.0",
        "capabilities":[],"granted":{"features":[]}});
    e.send("sync/ingest/request", hello.to_string().as_bytes())
        .await;
    let sweep =
        || edge_functions::sweep::sweep_once(&e.deps, &Delivered, time::OffsetDateTime::now_utc());
    assert_eq!(sweep().await.published, 1);
    // Not acked: due again, re-sent as a retry.
    e.client
        .execute(
            "UPDATE edge_pending_controls SET next_attempt_at = now()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sweep().await.published, 1);
    let text = e.deps.metrics.encode();
    for attempt in ["first", "retry"] {
        assert_eq!(
            sample(
                &text,
                "edge_controls_published_total",
                &format!("kind=\"set_wire_options\",attempt=\"{attempt}\"")
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert!(
        text.contains("edge_handler_duration_seconds_count{handler=\"sweep\"} 2"),
        "{text}"
    );
}
