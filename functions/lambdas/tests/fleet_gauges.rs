//! The fleet's gauges (observability.md §2) read from PostgreSQL: a hand-built fleet of two
//! projects (and a third with only a device) where every family has a known value — the
//! silence boundaries (just under / just over `silent_after`, over 24 h), a device-paused
//! lineage left out of silence, the reviews of both scopes, replay intents, unacked controls,
//! dead letters — and the lineage cap: the worst N in the §4 order, the rest counted as
//! dropped. Then the runner's collector loop over that fleet: fresh values after a change,
//! a failed read that does not stop it, and `edge-cloud run` serving the collected gauges.
#![allow(clippy::unwrap_used)]

mod runner_process;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use edge_e2e::{Broker, Pki, TestDatabase};
use edge_functions::collector::{collector_loop, gauge_emf_lines};
use edge_functions::env::MetricsSettings;
use edge_functions::store::health::{
    read_fleet_gauges, ControlCount, FleetGauges, LineageCount, ProjectStaged, ReviewCount,
};
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

/// The instant every gauge is measured at.
const G: OffsetDateTime = datetime!(2026-12-01 12:00:00 UTC);
const SILENT_AFTER: Duration = Duration::from_secs(900);

struct Fleet {
    db: TestDatabase,
    pool: deadpool_postgres::Pool,
    client: tokio_postgres::Client,
    a: Uuid,
    b: Uuid,
    c: Uuid,
}

fn ago(secs: i64) -> OffsetDateTime {
    G - time::Duration::seconds(secs)
}

/// One lineage, every health column given.
struct L {
    table: &'static str,
    status: &'static str,
    pause_reason: Option<&'static str>,
    device_pause_reason: Option<&'static str>,
    staged: (i64, i64),
    created_ago: i64,
    last_batch_ago: Option<i64>,
    materialized_ago: Option<i64>,
}

impl L {
    fn active(table: &'static str) -> L {
        L {
            table,
            status: "active",
            pause_reason: None,
            device_pause_reason: None,
            staged: (0, 0),
            created_ago: 3600,
            last_batch_ago: None,
            materialized_ago: None,
        }
    }
}

impl Fleet {
    async fn device(&self, name: &str, project: Uuid) -> Uuid {
        let d = Device {
            device_id: Uuid::now_v7(),
            device_name: name.into(),
            org_id: project,
            project_id: project,
            fleet_id: project,
            topic_slug: "acme".into(),
            control_key: vec![7; 32],
        };
        let c = self.pool.get().await.unwrap();
        assert!(create_device(&**c, &d).await.unwrap());
        d.device_id
    }

    async fn lineage(&self, device: Uuid, project: Uuid, l: L) -> Uuid {
        let id = Uuid::now_v7();
        self.client
            .execute(
                "INSERT INTO edge_table_lineages (id, org_id, project_id, fleet_id, device_id, \
                     source_table, status, pause_reason, device_pause_reason, staged_row_count, \
                     staged_bytes, created_at, last_batch_received_at, \
                     newest_materialized_source_at) \
                 VALUES ($1, $2, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &id,
                    &project,
                    &device,
                    &l.table,
                    &l.status,
                    &l.pause_reason,
                    &l.device_pause_reason,
                    &l.staged.0,
                    &l.staged.1,
                    &ago(l.created_ago),
                    &l.last_batch_ago.map(ago),
                    &l.materialized_ago.map(ago),
                ],
            )
            .await
            .unwrap();
        id
    }

    async fn review(&self, lineage: Uuid, state: &str) {
        self.client
            .execute(
                "INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, classification, \
                     state) VALUES ($1, $2, $3, 'breaking', $4)",
                &[
                    &Uuid::now_v7(),
                    &lineage,
                    &Uuid::now_v7().to_string(),
                    &state,
                ],
            )
            .await
            .unwrap();
    }

    async fn registry_review(&self, project: Uuid, device: Uuid, state: &str) {
        let registry = Uuid::now_v7();
        self.client
            .execute(
                "INSERT INTO edge_schema_registry (id, org_id, project_id, scope_kind, scope_id, \
                     source_table, schema_hash, classification, origin_device_id) \
                 VALUES ($1, $2, $2, 'project', $2, 'shared', $3, 'breaking', $4)",
                &[&registry, &project, &registry.to_string(), &device],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "INSERT INTO edge_registry_reviews (id, registry_id, org_id, project_id, state) \
                 VALUES ($1, $2, $3, $3, $4)",
                &[&Uuid::now_v7(), &registry, &project, &state],
            )
            .await
            .unwrap();
    }

    async fn intent(&self, lineage: Uuid, status: &str) {
        self.client
            .execute(
                "INSERT INTO edge_replay_intents (id, lineage_id, status, action_kind) \
                 VALUES ($1, $2, $3, 'approve')",
                &[&Uuid::now_v7(), &lineage, &status],
            )
            .await
            .unwrap();
    }

    async fn control(&self, device: Uuid, kind: &str, status: &str) {
        self.client
            .execute(
                "INSERT INTO edge_pending_controls (control_id, device_id, control_kind, \
                     envelope, status) VALUES ($1, $2, $3, '{}'::jsonb, $4)",
                &[&Uuid::now_v7(), &device, &kind, &status],
            )
            .await
            .unwrap();
    }

    async fn dead_letter(&self, resolved: bool) {
        self.client
            .execute(
                "INSERT INTO edge_dead_letters (transport, body, error, resolved_at) \
                 VALUES ('mqtt', '{}', 'boom', CASE WHEN $1 THEN now() END)",
                &[&resolved],
            )
            .await
            .unwrap();
    }

    async fn read(&self, at: OffsetDateTime, cap: usize) -> FleetGauges {
        let c = self.pool.get().await.unwrap();
        read_fleet_gauges(&**c, at, SILENT_AFTER, cap)
            .await
            .unwrap()
    }
}

/// Project A: devices a1…a5 (10 lineages, one paused for review); project B: b1 with a
/// circuit-broken lineage and b2 without lineages; project C: one device, nothing else.
async fn fleet() -> Fleet {
    let db = TestDatabase::create_async().await;
    let pool = pool::connect(&db.url(), 4).unwrap();
    migrate(&mut pool.get().await.unwrap()).await.unwrap();
    let client = db.connect().await;
    // Ordered ids so the expected vectors (ordered by project) read in a fixed order.
    let project = |n: u128| Uuid::from_u128((0x0193_a000_0000_7000_8000_0000_0000 << 16) + n);
    let (a, b, c) = (project(0xa), project(0xb), project(0xc));
    let f = Fleet {
        db,
        pool,
        client,
        a,
        b,
        c,
    };
    let a1 = f.device("a1", a).await;
    let a2 = f.device("a2", a).await;
    let a3 = f.device("a3", a).await;
    let a4 = f.device("a4", a).await;
    let a5 = f.device("a5", a).await;
    let b1 = f.device("b1", b).await;
    f.device("b2", b).await;
    f.device("c1", c).await;

    // a1: recent batch → not silent.
    let a1_t1 = f
        .lineage(
            a1,
            a,
            L {
                last_batch_ago: Some(60),
                materialized_ago: Some(100),
                ..L::active("t1")
            },
        )
        .await;
    let a1_t2 = f
        .lineage(
            a1,
            a,
            L {
                status: "paused",
                pause_reason: Some("schema_review"),
                staged: (5, 500),
                last_batch_ago: Some(899),
                ..L::active("t2")
            },
        )
        .await;
    // a2: newest batch just over the threshold → silent; never materialized, created 2 h ago
    // → the project's worst lag.
    let a2_t1 = f
        .lineage(
            a2,
            a,
            L {
                created_ago: 7200,
                last_batch_ago: Some(901),
                ..L::active("t1")
            },
        )
        .await;
    // a3: just under → not silent; three lineages of equal lag break ties by staged rows,
    // then source table.
    let a3_t1 = f
        .lineage(
            a3,
            a,
            L {
                last_batch_ago: Some(899),
                materialized_ago: Some(200),
                ..L::active("t1")
            },
        )
        .await;
    f.lineage(
        a3,
        a,
        L {
            materialized_ago: Some(200),
            ..L::active("t0")
        },
    )
    .await;
    f.lineage(
        a3,
        a,
        L {
            staged: (1, 10),
            materialized_ago: Some(200),
            ..L::active("t2")
        },
    )
    .await;
    // a4: over 24 h → not silent (gone, not stopped).
    let a4_t1 = f
        .lineage(
            a4,
            a,
            L {
                last_batch_ago: Some(86_401),
                materialized_ago: Some(300),
                ..L::active("t1")
            },
        )
        .await;
    // a5: its newest batch is on a lineage the device paused itself, which does not count:
    // the other lineage's batch is 2000 s old → silent.
    f.lineage(
        a5,
        a,
        L {
            device_pause_reason: Some("volume_backpressure"),
            last_batch_ago: Some(10),
            materialized_ago: Some(400),
            ..L::active("t1")
        },
    )
    .await;
    f.lineage(
        a5,
        a,
        L {
            last_batch_ago: Some(2000),
            materialized_ago: Some(500),
            ..L::active("t2")
        },
    )
    .await;
    let b1_t1 = f
        .lineage(
            b1,
            b,
            L {
                status: "paused",
                pause_reason: Some("circuit_breaker"),
                staged: (7, 70),
                last_batch_ago: Some(30),
                materialized_ago: Some(50),
                ..L::active("t1")
            },
        )
        .await;

    f.review(a1_t2, "queued").await;
    f.review(a1_t1, "approved").await;
    f.review(b1_t1, "in_review").await;
    f.registry_review(a, a1, "queued").await;
    f.registry_review(a, a2, "queued").await;
    f.registry_review(a, a3, "rejected").await;
    f.registry_review(b, b1, "in_review").await;

    f.intent(a1_t1, "pending").await;
    f.intent(a2_t1, "running").await;
    f.intent(a3_t1, "failed").await;
    f.intent(a4_t1, "done").await;

    f.control(a1, "pause", "pending").await;
    f.control(b1, "resume", "pending").await;
    f.control(b1, "resume", "pending").await;
    f.control(b1, "pause", "acked").await;

    f.dead_letter(false).await;
    f.dead_letter(false).await;
    f.dead_letter(true).await;
    f
}

#[tokio::test]
async fn every_family_has_its_value_over_two_projects() {
    let f = fleet().await;
    let (a, b, c) = (f.a, f.b, f.c);
    let g = f.read(G, 500).await;

    assert_eq!(
        g.lineages,
        vec![
            LineageCount {
                project_id: a,
                status: "active".into(),
                pause_reason: None,
                count: 8
            },
            LineageCount {
                project_id: a,
                status: "paused".into(),
                pause_reason: Some("schema_review".into()),
                count: 1
            },
            LineageCount {
                project_id: b,
                status: "paused".into(),
                pause_reason: Some("circuit_breaker".into()),
                count: 1
            },
        ]
    );
    assert_eq!(
        g.staged,
        vec![
            ProjectStaged {
                project_id: a,
                rows: 6,
                bytes: 510
            },
            ProjectStaged {
                project_id: b,
                rows: 7,
                bytes: 70
            },
        ]
    );
    assert_eq!(g.mirror_lag_seconds_max, vec![(a, 7200), (b, 50)]);
    // a2 (901 s) and a5 (its own-paused lineage left out) are silent; a3 (899 s) is not yet,
    // a4 (over 24 h) no more. Every project with a device has a row.
    assert_eq!(g.devices_silent, vec![(a, 2), (b, 0), (c, 0)]);
    assert_eq!(g.replay_intents_open, vec![(a, 2), (b, 0), (c, 0)]);
    assert_eq!(g.replay_intents_failed, vec![(a, 1), (b, 0), (c, 0)]);
    let review = |project_id, scope: &str, status: &str, count| ReviewCount {
        project_id,
        scope: scope.into(),
        status: status.into(),
        count,
    };
    assert_eq!(
        g.schema_reviews_open,
        vec![
            review(a, "device", "queued", 1),
            review(a, "registry", "queued", 2),
            review(b, "device", "in_review", 1),
            review(b, "registry", "in_review", 1),
        ]
    );
    let control = |project_id, kind: &str, count| ControlCount {
        project_id,
        kind: kind.into(),
        count,
    };
    assert_eq!(
        g.controls_pending,
        vec![control(a, "pause", 1), control(b, "resume", 2)]
    );
    assert_eq!(g.dead_letters_open, 2);
    assert_eq!(g.worst_lineages.len(), 10);
    assert_eq!(g.lineage_series_dropped, 0);
}

#[tokio::test]
async fn silence_moves_with_generated_at() {
    let f = fleet().await;
    // 2 s later a3's 899 s old batch is over the threshold too.
    let g = f.read(G + time::Duration::seconds(2), 500).await;
    assert_eq!(g.devices_silent.first(), Some(&(f.a, 3)));
    // Exactly at the threshold counts as silent (the window is closed at both ends).
    let g = f.read(G + time::Duration::seconds(1), 500).await;
    assert_eq!(g.devices_silent.first(), Some(&(f.a, 3)));
    // 25 h later every batch is over 24 h old: nobody is silent any more.
    let g = f.read(G + time::Duration::hours(25), 500).await;
    assert_eq!(g.devices_silent.first(), Some(&(f.a, 0)));
}

#[tokio::test]
async fn the_cap_keeps_the_worst_lineages_and_counts_the_rest() {
    let f = fleet().await;
    let all = f.read(G, 500).await;
    let order: Vec<(String, String, i64)> = all
        .worst_lineages
        .iter()
        .map(|l| {
            (
                l.device.clone(),
                l.source_table.clone(),
                l.mirror_lag_seconds,
            )
        })
        .collect();
    let expected: Vec<(String, String, i64)> = [
        ("b1", "t1", 50),   // circuit_breaker first
        ("a1", "t2", 3600), // then schema_review
        ("a2", "t1", 7200), // then active by lag desc
        ("a5", "t2", 500),
        ("a5", "t1", 400),
        ("a4", "t1", 300),
        ("a3", "t2", 200), // equal lag: staged rows desc
        ("a3", "t0", 200), // then source table
        ("a3", "t1", 200),
        ("a1", "t1", 100),
    ]
    .iter()
    .map(|(d, t, lag)| (d.to_string(), t.to_string(), *lag))
    .collect();
    assert_eq!(order, expected);

    let capped = f.read(G, 3).await;
    assert_eq!(capped.worst_lineages, all.worst_lineages[..3].to_vec());
    assert_eq!(capped.lineage_series_dropped, 7);
    let b1 = &capped.worst_lineages[0];
    assert_eq!(
        (b1.project_id, b1.staged_rows, b1.staged_bytes),
        (f.b, 7, 70)
    );
    assert!(b1.paused);
    assert_eq!(b1.pause_reason.as_deref(), Some("circuit_breaker"));
    assert_eq!(
        b1.last_batch_timestamp_seconds,
        Some(G.unix_timestamp() - 30)
    );
    let a2 = &capped.worst_lineages[2];
    assert!(!a2.paused);
    assert_eq!(a2.pause_reason, None);

    let none = f.read(G, 0).await;
    assert!(none.worst_lineages.is_empty());
    assert_eq!(none.lineage_series_dropped, 10);
    // Before its first batch a lineage has no last-batch timestamp.
    let a3_t0 = all
        .worst_lineages
        .iter()
        .find(|l| l.device == "a3" && l.source_table == "t0")
        .unwrap();
    assert_eq!(a3_t0.last_batch_timestamp_seconds, None);
}

fn settings(interval: Duration, lineage_cap: usize) -> MetricsSettings {
    MetricsSettings {
        listen: None,
        interval,
        silent_after: SILENT_AFTER,
        lineage_cap,
    }
}

/// The next value the sink receives that satisfies `done` (10 s at most).
async fn sink_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<FleetGauges>,
    what: &str,
    done: impl Fn(&FleetGauges) -> bool,
) -> FleetGauges {
    let wait = async {
        loop {
            let g = rx.recv().await.expect("the collector loop ended");
            if done(&g) {
                return g;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("the sink never saw {what}"))
}

#[tokio::test]
async fn the_collector_loop_hands_fresh_values_to_the_sink_and_outlives_a_failed_read() {
    let f = fleet().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(collector_loop(
        f.pool.clone(),
        settings(Duration::from_millis(100), 3),
        move |g: &FleetGauges| {
            let _ = tx.send(g.clone());
        },
    ));
    let first = sink_until(&mut rx, "the fleet", |g| g.dead_letters_open == 2).await;
    assert_eq!(first.worst_lineages.len(), 3);
    assert_eq!(first.lineage_series_dropped, 7);

    f.dead_letter(false).await;
    sink_until(&mut rx, "a new dead letter", |g| g.dead_letters_open == 3).await;

    // The reads fail while the table is away: the sink keeps its last values (a read already
    // in flight when the rename took its lock may still deliver them). Six intervals of
    // failures is a window for an absence, not a wait for a condition.
    f.client
        .batch_execute("ALTER TABLE edge_dead_letters RENAME TO edge_dead_letters_away")
        .await
        .unwrap();
    f.client
        .batch_execute(
            "INSERT INTO edge_dead_letters_away (transport, body, error) VALUES ('sqs', '{}', 'x')",
        )
        .await
        .unwrap();
    let window = tokio::time::Instant::now() + Duration::from_millis(600);
    while let Ok(Some(g)) = tokio::time::timeout_at(window, rx.recv()).await {
        assert_eq!(g.dead_letters_open, 3, "no value from a failed read");
    }
    assert!(!task.is_finished(), "a failed read does not end the loop");
    // Once the reads succeed again the loop picks up what changed meanwhile.
    f.client
        .batch_execute("ALTER TABLE edge_dead_letters_away RENAME TO edge_dead_letters")
        .await
        .unwrap();
    sink_until(&mut rx, "the value after the outage", |g| {
        g.dead_letters_open == 4
    })
    .await;
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test]
async fn the_sweep_writes_the_gauges_as_emf_with_the_lambda_cap() {
    let f = fleet().await;
    let lines = gauge_emf_lines(&f.pool, &settings(Duration::from_secs(60), 2), G)
        .await
        .unwrap();
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let value_of = |name: &str, project: Option<Uuid>| {
        docs.iter()
            .find(|d| {
                d.get(name).is_some() && project.is_none_or(|p| d["project_id"] == p.to_string())
            })
            .map(|d| d[name].clone())
    };
    assert_eq!(
        docs.first().unwrap()["_aws"]["Timestamp"],
        G.unix_timestamp() * 1000
    );
    assert_eq!(value_of("edge_devices_silent", Some(f.a)), Some(2.into()));
    assert_eq!(value_of("edge_devices_silent", Some(f.c)), Some(0.into()));
    assert_eq!(value_of("edge_dead_letters_open", None), Some(2.into()));
    assert_eq!(
        value_of("edge_metrics_lineage_series_dropped", None),
        Some(8.into())
    );
    let lineage_series = docs
        .iter()
        .filter(|d| d.get("edge_lineage_staged_rows").is_some())
        .count();
    assert_eq!(lineage_series, 2, "the cap of 2: {lines:#?}");
}

/// `GET /metrics` of a listener → the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_cloud_run_serves_the_collected_gauges() {
    let f = fleet().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let runner = runner_process::RunnerProcess::start_with_args(
        &f.db.url(),
        &broker,
        &pki,
        dir.path(),
        "edge-service",
        &[],
        &["--metrics-interval", "1s", "--metrics-lineage-cap", "3"],
    );
    let metrics = runner.metrics.unwrap();
    let text = edge_e2e::wait_for_some(Duration::from_secs(30), "the collected gauges", || async {
        let text = scrape(metrics);
        text.contains("edge_dead_letters_open 2").then_some(text)
    })
    .await;
    assert!(
        text.contains("edge_metrics_lineage_series_dropped 7"),
        "the cap of 3 over 10 lineages:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "edge_lineage_paused{{project_id=\"{}\",device=\"b1\",source_table=\"t1\",reason=\"circuit_breaker\"}} 1",
            f.b
        )),
        "{text}"
    );
    // The next collection shows what changed.
    f.dead_letter(false).await;
    edge_e2e::wait_for(Duration::from_secs(30), "the new dead letter", || async {
        scrape(metrics).contains("edge_dead_letters_open 3")
    })
    .await;
}
