//! The fleet's sync health (observability.md §4) on real PostgreSQL: the health columns intake
//! keeps on the lineage (live, staged, replayed after an approval, duplicates, rejections), and
//! `GET …/edge/fleet-health` through the API's router — worst-first order, every filter, paging
//! and total, the 19 fields, `meta.generated_at`, 400/401/403/404 and tenant scope.
#![allow(clippy::unwrap_used)]

mod common;

use common::api::*;
use common::*;
use edge_functions::ingest::Outcome;
use edge_functions::replay::{drain, Budget};
use edge_functions::store::registry::{create_device, Device};
use edge_protocol::ids::uuid_v7_unix_ms;
use lambda_http::http::{Method, StatusCode};
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

impl T {
    /// `GET …/edge/fleet-health?{query}`, expected 200.
    async fn fleet(&self, query: &str) -> Value {
        let (st, v) = self.get(&format!("/edge/fleet-health?{query}")).await;
        assert_eq!(st, StatusCode::OK, "{query}: {v}");
        v
    }

    /// The health columns of a lineage.
    async fn health(&self, lineage: Uuid) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
        let r = self
            .env
            .client
            .query_one(
                "SELECT last_batch_received_at, newest_materialized_source_at \
                 FROM edge_table_lineages WHERE id = $1",
                &[&lineage],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// Sets both health columns to `at` (so an untouched column is recognisable).
    async fn mark(&self, lineage: Uuid, at: OffsetDateTime) {
        self.env
            .client
            .execute(
                "UPDATE edge_table_lineages SET last_batch_received_at = $2, \
                     newest_materialized_source_at = $2 WHERE id = $1",
                &[&lineage, &at],
            )
            .await
            .unwrap();
    }

    /// Claims and approves (every column mirrored) the lineage's open review through the API.
    async fn approve_via_api(&self, lineage: Uuid) {
        let (st, v) = self
            .get(&format!("/edge/schema-reviews?lineage_id={lineage}"))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let review = v["data"][0]["id"].as_str().unwrap().to_owned();
        let (st, v) = self
            .post(&format!("/edge/schema-reviews/{review}/claim"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let version = v["data"]["action_version"].as_i64().unwrap();
        let (st, v) = self
            .post(
                &format!("/edge/schema-reviews/{review}/approve"),
                json!({"action_version": version, "column_actions": [
                    {"source_column_name": "id", "action": "mirror"},
                    {"source_column_name": "mode", "action": "mirror"},
                    {"source_column_name": "setpoint", "action": "mirror"},
                ]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The UUIDv7 time of a batch id (its source time).
fn v7_time(id: Uuid) -> OffsetDateTime {
    let ms = uuid_v7_unix_ms(&id).unwrap();
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
}

fn rfc3339(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn intake_keeps_the_health_columns_of_row_lineages() {
    let t = t().await;
    let s = device_state();
    let epoch = t.env.id();
    // First batch: no approved schema, staged for review — received, nothing materialized.
    let first = t.env.id();
    let out = t
        .env
        .rows(&row_batch(
            first,
            epoch,
            &s,
            true,
            &[ins(1, 1, "heat", 20.5)],
        ))
        .await;
    assert!(
        matches!(out, Outcome::Accepted { staged: 1, .. }),
        "{out:?}"
    );
    let lineage = t.env.lineage_id("device_state").await;
    let (received, source) = t.health(lineage).await;
    assert!(received.is_some(), "an accepted batch is received");
    assert_eq!(source, None, "a staged batch materialized nothing");

    // A second staged batch leaves the source time as it was.
    let second = t.env.id();
    t.env
        .rows(&row_batch(
            second,
            epoch,
            &s,
            true,
            &[ins(2, 2, "cool", 18.0)],
        ))
        .await;
    assert_eq!(t.health(lineage).await.1, None);

    // The approval's replay (the API's approval, then the replay worker) materializes both:
    // the source time is the newest drained batch's.
    t.approve_via_api(lineage).await;
    let r = drain(&t.env.deps, 100, Budget::UNLIMITED).await;
    assert_eq!((r.drained, r.errors), (2, 0), "{r:?}");
    assert_eq!(t.health(lineage).await.1, Some(v7_time(second)));

    // A live batch materializes: both columns move.
    let past = OffsetDateTime::UNIX_EPOCH;
    t.mark(lineage, past).await;
    let third = t.env.id();
    let batch = row_batch(third, epoch, &s, true, &[ins(3, 3, "off", 0.0)]);
    let out = t.env.rows(&batch).await;
    assert!(
        matches!(
            out,
            Outcome::Accepted {
                materialized: 1,
                staged: 0,
                ..
            }
        ),
        "{out:?}"
    );
    let (received, source) = t.health(lineage).await;
    assert!(received.unwrap() > past);
    assert_eq!(source, Some(v7_time(third)));

    // A duplicate touches neither column.
    t.mark(lineage, past).await;
    assert!(matches!(
        t.env.rows(&batch).await,
        Outcome::Duplicate { .. }
    ));
    assert_eq!(t.health(lineage).await, (Some(past), Some(past)));

    // Nor does a rejected batch of the lineage's table.
    let mut bad = row_batch(t.env.id(), epoch, &s, true, &[ins(4, 4, "x", 1.0)]);
    bad["rows"][0]["op"] = json!("upsert");
    assert!(matches!(t.env.rows(&bad).await, Outcome::Rejected { .. }));
    assert_eq!(t.health(lineage).await, (Some(past), Some(past)));

    // An older batch arriving late never moves the source time back.
    t.mark(lineage, v7_time(third)).await;
    let late = edge_protocol::ids::new_uuid_v7(1_700_000_000_000, [9; 10]);
    t.env
        .rows(&row_batch(late, epoch, &s, true, &[ins(5, 5, "late", 1.0)]))
        .await;
    let (received, source) = t.health(lineage).await;
    assert!(received.unwrap() > v7_time(third));
    assert_eq!(source, Some(v7_time(third)));

    // The route shows the columns as the other routes format timestamps.
    let v = t.fleet("").await;
    let row = &v["data"][0];
    assert_eq!(row["lineage_id"], lineage.to_string().as_str());
    assert_eq!(
        rfc3339(row["newest_materialized_source_at"].as_str().unwrap()),
        v7_time(third)
    );
    assert!(row["last_batch_received_at"].is_string(), "{row}");
    let generated = rfc3339(v["meta"]["generated_at"].as_str().unwrap());
    let lag = (generated - v7_time(third)).whole_seconds();
    assert_eq!(row["lag_seconds"], lag, "{row}");
}

#[tokio::test]
async fn intake_keeps_the_health_columns_of_telemetry_lineages() {
    let t = t().await;
    // Unknown schema: staged for review.
    let out = t
        .env
        .send(
            "sync/telemetry/batch",
            telemetry_batch(t.env.id(), 1, &[1.0, 2.0, 3.0])
                .to_string()
                .as_bytes(),
        )
        .await;
    assert!(
        matches!(out, Outcome::Accepted { staged: 3, .. }),
        "{out:?}"
    );
    let lineage = t.env.lineage_id("temps").await;
    let (received, source) = t.health(lineage).await;
    assert!(received.is_some());
    assert_eq!(source, None);

    // Approved (the dev path's replay): the drained rows' newest ts = the cursor end.
    let report = t.env.approve("temps").await;
    assert_eq!(report.replay.drained, 3);
    assert_eq!(
        t.health(lineage).await.1,
        Some(rfc3339("2026-04-28T09:00:02Z"))
    );

    // Live: the batch's cursor_end_ts.
    let mut b = telemetry_batch(t.env.id(), 2, &[4.0, 5.0]);
    b["rows"][0]["ts"] = json!("2026-04-28T10:00:00Z");
    b["rows"][1]["ts"] = json!("2026-04-28T10:00:07.250Z");
    b["cursor_start_ts"] = json!("2026-04-28T10:00:00Z");
    b["cursor_end_ts"] = json!("2026-04-28T10:00:07.250Z");
    let out = t
        .env
        .send("sync/telemetry/batch", b.to_string().as_bytes())
        .await;
    assert!(
        matches!(
            out,
            Outcome::Accepted {
                materialized: 2,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        t.health(lineage).await.1,
        Some(rfc3339("2026-04-28T10:00:07.250Z"))
    );
    // The batch sequence still advances in the same statement.
    assert_eq!(
        t.env
            .scalar_i64(&format!(
                "SELECT last_batch_seq FROM edge_table_lineages WHERE id = '{lineage}'"
            ))
            .await,
        2
    );

    // A rejected telemetry batch (stale batch_seq) and a duplicate touch neither column.
    let past = OffsetDateTime::UNIX_EPOCH;
    t.mark(lineage, past).await;
    let stale = telemetry_batch(t.env.id(), 1, &[9.0]);
    let out = t
        .env
        .send("sync/telemetry/batch", stale.to_string().as_bytes())
        .await;
    assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");
    let out = t
        .env
        .send("sync/telemetry/batch", b.to_string().as_bytes())
        .await;
    assert!(matches!(out, Outcome::Duplicate { .. }), "{out:?}");
    assert_eq!(t.health(lineage).await, (Some(past), Some(past)));
}

/// A device of the env's tenant (or of another, with `scope`).
async fn device(t: &T, name: &str, scope: Option<(Uuid, Uuid)>) -> Device {
    let (org_id, project_id) = scope.unwrap_or((t.env.device.org_id, t.env.device.project_id));
    let d = Device {
        device_id: Uuid::now_v7(),
        device_name: name.into(),
        org_id,
        project_id,
        fleet_id: if scope.is_some() {
            Uuid::now_v7()
        } else {
            t.env.device.fleet_id
        },
        topic_slug: SLUG.into(),
        control_key: vec![7; 32],
    };
    assert!(create_device(&t.env.client, &d).await.unwrap());
    d
}

/// A lineage row as intake and flow control would have left it: `lag` seconds behind now
/// (None: no batch materialized yet, measured from its creation now).
async fn lineage(
    t: &T,
    d: &Device,
    table: &str,
    pause: Option<&str>,
    lag: Option<i64>,
    staged: i64,
) -> Uuid {
    let id = Uuid::now_v7();
    t.env
        .client
        .execute(
            "INSERT INTO edge_table_lineages (id, org_id, project_id, fleet_id, device_id, \
                 source_table, kind, status, pause_reason, staged_row_count, staged_bytes, \
                 newest_materialized_source_at, last_batch_received_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'rows', \
                 CASE WHEN $7::text IS NULL THEN 'active' ELSE 'paused' END, $7, $8::bigint, \
                 $8::bigint * 100, \
                 date_trunc('second', now()) - make_interval(secs => $9::bigint), now(), \
                 now())",
            &[
                &id,
                &d.org_id,
                &d.project_id,
                &d.fleet_id,
                &d.device_id,
                &table,
                &pause,
                &staged,
                &lag,
            ],
        )
        .await
        .unwrap();
    id
}

/// The lineage ids of a page, in order.
fn ids(v: &Value) -> Vec<Uuid> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Uuid::parse_str(r["lineage_id"].as_str().unwrap()).unwrap())
        .collect()
}

const FIELDS: [&str; 19] = [
    "lineage_id",
    "device_id",
    "device_name",
    "fleet_id",
    "source_table",
    "kind",
    "status",
    "pause_reason",
    "device_pause_reason",
    "lag_seconds",
    "newest_materialized_source_at",
    "staged_rows",
    "staged_bytes",
    "materialization_failure_count",
    "open_review_id",
    "last_batch_received_at",
    "last_ack_at",
    "pending_controls",
    "rejections_last_hour",
];

#[tokio::test]
async fn fleet_health_order_filters_paging_and_shapes() {
    let t = t().await;
    let a = device(&t, "gw-a", None).await;
    let b = device(&t, "gw-b", None).await;
    let own = t.env.device.clone();
    // Worst first: the three pause classes, then active by lag, staged rows, device, table.
    let breaker = lineage(&t, &b, "zeta", Some("circuit_breaker"), Some(10), 0).await;
    let volume = lineage(&t, &b, "eta", Some("volume_backpressure"), Some(5000), 7).await;
    let review = lineage(&t, &a, "theta", Some("schema_review"), None, 3).await;
    let oldest = lineage(&t, &own, "iota", None, Some(900), 0).await;
    let backlog = lineage(&t, &own, "kappa", None, Some(300), 20).await;
    let less = lineage(&t, &a, "lambda", None, Some(300), 10).await;
    let tie_a = lineage(&t, &a, "mu", None, Some(60), 5).await;
    let tie_b = lineage(&t, &b, "mu", None, Some(60), 5).await;
    let tie_b2 = lineage(&t, &b, "nu", None, Some(60), 5).await;
    let idle = lineage(&t, &own, "xi", None, None, 0).await;
    let order = vec![
        breaker, volume, review, oldest, backlog, less, tie_a, tie_b, tie_b2, idle,
    ];

    // Extras: an open review, controls (one acked, one pending, one superseded), rejections
    // of (device, table) within the hour and before it.
    let review_id = Uuid::now_v7();
    t.env
        .client
        .execute(
            "INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, classification) \
             VALUES ($1, $2, 'h1', 'breaking')",
            &[&review_id, &review],
        )
        .await
        .unwrap();
    let acked_at = rfc3339("2026-11-30T08:00:00.5Z");
    for (status, acked) in [
        ("acked", Some(acked_at)),
        ("pending", None),
        ("superseded", None),
    ] {
        t.env
            .client
            .execute(
                "INSERT INTO edge_pending_controls (control_id, device_id, lineage_id, \
                     control_kind, envelope, status, acked_at) \
                 VALUES ($1, $2, $3, 'pause_lineage', '{}', $4, $5)",
                &[&Uuid::now_v7(), &b.device_id, &breaker, &status, &acked],
            )
            .await
            .unwrap();
    }
    for (table, ago, status) in [
        ("zeta", "10 minutes", "rejected"),
        ("zeta", "59 minutes", "rejected"),
        ("zeta", "2 hours", "rejected"),
        ("zeta", "1 minute", "materialized"),
        ("other", "1 minute", "rejected"),
    ] {
        t.env
            .client
            .execute(
                &format!(
                    "INSERT INTO edge_export_segments (device_id, batch_id, batch_time, \
                         received_at, device_name, source_table, kind, status) \
                     VALUES ($1, $2, now(), now() - interval '{ago}', 'gw-b', $3, 'rows', $4)"
                ),
                &[&b.device_id, &Uuid::now_v7(), &table, &status],
            )
            .await
            .unwrap();
    }
    // Another tenant's lineages (and another project of the same org) never appear.
    let other_org = Uuid::now_v7();
    let other_project = Uuid::now_v7();
    let stranger = device(&t, "gw-other", Some((other_org, other_project))).await;
    let foreign = lineage(
        &t,
        &stranger,
        "zeta",
        Some("circuit_breaker"),
        Some(99_999),
        9,
    )
    .await;
    let sibling = device(&t, "gw-sibling", Some((own.org_id, Uuid::now_v7()))).await;
    lineage(
        &t,
        &sibling,
        "zeta",
        Some("circuit_breaker"),
        Some(99_999),
        9,
    )
    .await;

    let v = t.fleet("").await;
    assert_eq!(v["ok"], 1);
    assert_eq!(ids(&v), order, "{v:#}");
    let meta = v["meta"].as_object().unwrap();
    assert_eq!(
        (&meta["page"], &meta["limit"], &meta["total"]),
        (&json!(1), &json!(50), &json!(10))
    );
    let generated = rfc3339(meta["generated_at"].as_str().unwrap());
    assert_eq!(generated.nanosecond(), 0, "whole seconds");
    assert!(
        (OffsetDateTime::now_utc() - generated)
            .whole_seconds()
            .abs()
            < 60
    );

    // Shapes: exactly the 19 fields, typed.
    for row in v["data"].as_array().unwrap() {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = FIELDS.to_vec();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want, "{row}");
        for k in [
            "lineage_id",
            "device_id",
            "device_name",
            "fleet_id",
            "source_table",
        ] {
            assert!(row[k].is_string(), "{k}: {row}");
        }
        for k in [
            "lag_seconds",
            "staged_rows",
            "staged_bytes",
            "materialization_failure_count",
            "pending_controls",
            "rejections_last_hour",
        ] {
            assert!(row[k].is_i64(), "{k}: {row}");
        }
        assert_eq!(row["kind"], "rows");
        for k in [
            "pause_reason",
            "device_pause_reason",
            "newest_materialized_source_at",
            "open_review_id",
            "last_batch_received_at",
            "last_ack_at",
        ] {
            assert!(row[k].is_string() || row[k].is_null(), "{k}: {row}");
        }
    }
    let by_id = |id: Uuid| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["lineage_id"] == id.to_string().as_str())
            .unwrap()
            .clone()
    };
    let row = by_id(breaker);
    assert_eq!(row["status"], "paused");
    assert_eq!(row["pause_reason"], "circuit_breaker");
    assert_eq!(row["device_name"], "gw-b");
    assert_eq!(row["pending_controls"], 1);
    assert_eq!(rfc3339(row["last_ack_at"].as_str().unwrap()), acked_at);
    assert_eq!(row["rejections_last_hour"], 2, "{row}");
    assert_eq!(row["open_review_id"], Value::Null);
    let row = by_id(review);
    assert_eq!(row["open_review_id"], review_id.to_string().as_str());
    assert_eq!(row["newest_materialized_source_at"], Value::Null);
    assert_eq!(
        (&row["pending_controls"], &row["last_ack_at"]),
        (&json!(0), &Value::Null)
    );
    let row = by_id(oldest);
    assert_eq!(
        (row["status"].as_str(), &row["pause_reason"]),
        (Some("active"), &Value::Null)
    );
    let lag = row["lag_seconds"].as_i64().unwrap();
    assert!((900..905).contains(&lag), "{row}");
    let source = rfc3339(row["newest_materialized_source_at"].as_str().unwrap());
    assert_eq!((generated - source).whole_seconds(), lag);
    assert_eq!(by_id(backlog)["staged_bytes"], 2000);
    assert!(by_id(idle)["lag_seconds"].as_i64().unwrap() < 5);

    // Filters.
    let cases: Vec<(String, Vec<Uuid>)> = vec![
        ("status=paused".into(), vec![breaker, volume, review]),
        (
            "status=active".into(),
            vec![oldest, backlog, less, tie_a, tie_b, tie_b2, idle],
        ),
        ("pause_reason=volume_backpressure".into(), vec![volume]),
        ("pause_reason=schema_review".into(), vec![review]),
        (
            "pause_reason=none".into(),
            vec![oldest, backlog, less, tie_a, tie_b, tie_b2, idle],
        ),
        (
            "min_lag_seconds=300".into(),
            vec![volume, oldest, backlog, less],
        ),
        ("min_lag_seconds=0".into(), order.clone()),
        // Larger than any lag: nothing, not a 500 (G − m once left the timestamp range;
        // found by schemathesis).
        ("min_lag_seconds=9223372036854775806".into(), vec![]),
        ("min_lag_seconds=10000000000".into(), vec![]),
        (
            format!("device_id={}", a.device_id),
            vec![review, less, tie_a],
        ),
        (
            "device_name=gw-b".into(),
            vec![breaker, volume, tie_b, tie_b2],
        ),
        ("device_name=gw-other".into(), vec![]),
        ("device_name=nobody".into(), vec![]),
        (format!("fleet_id={}", own.fleet_id), order.clone()),
        (format!("fleet_id={}", stranger.fleet_id), vec![]),
        ("source_table=mu".into(), vec![tie_a, tie_b]),
        (
            "status=active&device_name=gw-b&min_lag_seconds=30".into(),
            vec![tie_b, tie_b2],
        ),
    ];
    for (query, want) in cases {
        let v = t.fleet(&query).await;
        assert_eq!(ids(&v), want, "{query}: {v:#}");
        assert_eq!(v["meta"]["total"], want.len(), "{query}");
    }

    // Paging: the same order cut in pages, the total of every match on each.
    let v = t.fleet("limit=3&page=2").await;
    assert_eq!(ids(&v), order[3..6].to_vec());
    assert_eq!(v["meta"]["total"], 10);
    assert_eq!(
        (&v["meta"]["page"], &v["meta"]["limit"]),
        (&json!(2), &json!(3))
    );
    let v = t.fleet("limit=3&page=4").await;
    assert_eq!(ids(&v), order[9..].to_vec());
    let v = t.fleet("limit=3&page=5").await;
    assert_eq!(ids(&v), Vec::<Uuid>::new());
    assert_eq!(
        v["meta"]["total"], 10,
        "past the last page the total is still counted"
    );
    assert!(v["meta"]["generated_at"].is_string());
    let v = t.fleet("limit=500").await;
    assert_eq!(ids(&v), order);

    // Bad filters and pages: 400 with the lists' codes.
    for (query, want) in [
        ("status=stopped", "invalid_parameter"),
        ("pause_reason=paused", "invalid_parameter"),
        ("pause_reason=", "invalid_parameter"),
        ("min_lag_seconds=-1", "invalid_parameter"),
        ("min_lag_seconds=soon", "invalid_parameter"),
        ("device_id=gw-a", "invalid_parameter"),
        ("fleet_id=1", "invalid_parameter"),
        ("limit=501", "invalid_pagination"),
        ("limit=0", "invalid_pagination"),
        ("page=0", "invalid_pagination"),
        ("page=x", "invalid_pagination"),
        ("lineage_id=1", "unknown_parameter"),
    ] {
        let (st, v) = t.get(&format!("/edge/fleet-health?{query}")).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, want),
            "{query}: {v}"
        );
    }

    // Auth as every route: 401 without a valid token, 403 another org's header, 404 a
    // project outside the token; a read-only token reads.
    let rel = "/edge/fleet-health";
    let mut c = t.call(Method::GET, rel);
    c.token = None;
    let (st, v) = t.send(c).await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let mut c = t.call(Method::GET, rel);
    c.token = Some("not.a.jwt");
    assert_eq!(t.send(c).await.0, StatusCode::UNAUTHORIZED);
    let mut c = t.call(Method::GET, rel);
    c.org = Some(Uuid::now_v7().to_string());
    let (st, v) = t.send(c).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "org_mismatch"));
    let mut c = t.call(Method::GET, rel);
    c.org = None;
    assert_eq!(t.send(c).await.0, StatusCode::BAD_REQUEST);
    let narrow = token(own.org_id, vec![Uuid::now_v7()], true);
    let mut c = t.call(Method::GET, rel);
    c.token = Some(&narrow);
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
    let viewer = token(own.org_id, vec![own.project_id], false);
    let mut c = t.call(Method::GET, rel);
    c.token = Some(&viewer);
    let (st, v) = t.send(c).await;
    assert_eq!((st, ids(&v)), (StatusCode::OK, order.clone()));
    let mut c = t.call(Method::POST, rel);
    c.key = Some("k".into());
    assert_eq!(t.send(c).await.0, StatusCode::METHOD_NOT_ALLOWED);

    // The other tenant sees its own lineage only, and none of this project's.
    let other = token(other_org, vec![other_project], false);
    let mut c = t.call(Method::GET, rel);
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    c.path = format!("/core/api/v1/projects/{other_project}{rel}");
    let (st, v) = t.send(c).await;
    assert_eq!((st, ids(&v)), (StatusCode::OK, vec![foreign]), "{v}");
    let mut c = t.call(Method::GET, rel);
    c.token = Some(&other);
    c.org = Some(other_org.to_string());
    assert_eq!(t.send(c).await.0, StatusCode::NOT_FOUND);
}
