//! Backpressure, circuit breaker, resume sweep and reset-materialization on real PostgreSQL,
//! with controls delivered over a real mosquitto by the local runner.
#![allow(clippy::unwrap_used)]

mod approval;
mod common;

use std::time::Duration;

use approval::approve_with_intent;
use common::*;
use edge_cloud_core::backpressure::ResetRefusal;
use edge_e2e::{wait_for, Broker, Pki, TestClient};
use edge_functions::ingest::Outcome;
use edge_functions::runner::{run, MqttSettings};
use edge_functions::store::backpressure::reset_materialization;
use edge_functions::store::error::ResetError;
use edge_protocol::control::{verify, ControlEnvelope, ControlKind};
use edge_protocol::fingerprint::SchemaColumns;
use serde_json::{json, Value};
use uuid::Uuid;

const KEY: [u8; 32] = [7; 32];
const DEADLINE: Duration = Duration::from_secs(30);

fn poison(seq: i64, id: i64) -> Change {
    (
        seq,
        "insert",
        json!({"id": id}),
        json!({"id": id, "mode": "bad", "setpoint": "n/a"}),
    )
}

async fn lineage_state(e: &Env, table: &str) -> (String, Option<String>, Option<String>, i32) {
    let r = e
        .client
        .query_one(
            "SELECT status, pause_reason, device_pause_reason, materialization_failure_count \
             FROM edge_table_lineages WHERE source_table = $1",
            &[&table],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

async fn reset(
    e: &Env,
    table: &str,
) -> Result<edge_functions::store::backpressure::ResetReport, ResetError> {
    let lineage = e.lineage_id(table).await;
    let mut c = e.deps.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let r = reset_materialization(&*tx, lineage, time::OffsetDateTime::now_utc()).await;
    tx.commit().await.unwrap();
    r
}

async fn pending_controls(e: &Env) -> Vec<ControlEnvelope> {
    e.client
        .query(
            "SELECT envelope FROM edge_pending_controls WHERE status = 'pending' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_value(r.get::<_, Value>(0)).unwrap())
        .collect()
}

#[tokio::test]
async fn circuit_breaker_trips_on_five_failures_in_a_row_and_reset_resumes_after_the_fix() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    e.rows(&row_batch(
        e.id(),
        epoch,
        &s,
        true,
        &[ins(1, 1, "heat", 20.5)],
    ))
    .await;
    e.approve("device_state").await;

    // Four failures, then a clean batch: the streak ends, nothing trips.
    let four: Vec<Change> = (2..=5).map(|q| poison(q, q)).collect();
    e.rows(&row_batch(e.id(), epoch, &s, false, &four)).await;
    assert_eq!(lineage_state(&e, "device_state").await.3, 4);
    e.rows(&row_batch(
        e.id(),
        epoch,
        &s,
        false,
        &[ins(6, 6, "cool", 18.0)],
    ))
    .await;
    assert_eq!(
        lineage_state(&e, "device_state").await,
        ("active".into(), None, None, 0)
    );
    assert!(pending_controls(&e).await.is_empty());

    // Five in a row (across two batches) trip the breaker.
    let three: Vec<Change> = (7..=9).map(|q| poison(q, q)).collect();
    e.rows(&row_batch(e.id(), epoch, &s, false, &three)).await;
    assert!(pending_controls(&e).await.is_empty());
    let two: Vec<Change> = (10..=11).map(|q| poison(q, q)).collect();
    e.rows(&row_batch(e.id(), epoch, &s, false, &two)).await;
    let cb = Some("circuit_breaker".to_owned());
    assert_eq!(
        lineage_state(&e, "device_state").await,
        ("paused".into(), cb.clone(), cb.clone(), 5)
    );
    let controls = pending_controls(&e).await;
    assert_eq!(controls.len(), 1);
    let pause = &controls[0];
    verify(pause, &KEY).unwrap();
    assert_eq!(pause.control_kind, ControlKind::PauseLineage);
    assert_eq!(pause.source_table.as_deref(), Some("device_state"));
    assert_eq!(pause.server_watermark, Some(11));
    assert!(pause.reason.as_deref().unwrap().contains("circuit breaker"));
    assert!(pause.issued_at.is_some());
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_events WHERE event_type = \
             'integration.edge_table_lineage.ingestion_paused.v1' \
             AND payload->>'reason' = 'circuit_breaker'"
        )
        .await,
        1
    );
    // While paused, even good rows stage (lineage_paused); no second control.
    let o = e
        .rows(&row_batch(
            e.id(),
            epoch,
            &s,
            false,
            &[ins(12, 12, "auto", 21.0)],
        ))
        .await;
    assert!(matches!(
        o,
        Outcome::Accepted {
            staged: 1,
            materialized: 0,
            ..
        }
    ));
    assert_eq!(pending_controls(&e).await.len(), 1);

    // A review open for the lineage refuses the reset (409).
    let review = Uuid::now_v7();
    let lineage = e.lineage_id("device_state").await;
    e.client
        .execute(
            "INSERT INTO edge_schema_reviews (id, lineage_id, schema_hash, classification) \
             VALUES ($1, $2, 'h', 'ambiguous')",
            &[&review, &lineage],
        )
        .await
        .unwrap();
    assert!(matches!(
        reset(&e, "device_state").await,
        Err(ResetError::Refused(ResetRefusal::ReviewOpen))
    ));
    e.client
        .execute("DELETE FROM edge_schema_reviews WHERE id = $1", &[&review])
        .await
        .unwrap();

    // Reset before the fix: all nine failed rows (the earlier streak's four too) fail again and
    // the lineage stays blocked, but the good row held behind the pause is materialized.
    let r = reset(&e, "device_state").await.unwrap();
    assert_eq!(
        (r.resumed, r.staged_row_count, r.status.as_str()),
        (false, 9, "paused")
    );
    assert_eq!(pending_controls(&e).await.len(), 1, "no second pause");

    // The fix: the operator stops projecting the poisoned column.
    e.client
        .execute(
            "UPDATE edge_column_bindings SET action = 'ignore' \
             WHERE source_column_name = 'setpoint'",
            &[],
        )
        .await
        .unwrap();
    let r = reset(&e, "device_state").await.unwrap();
    assert_eq!(r.lineage_id, lineage);
    assert_eq!(
        (r.resumed, r.staged_row_count, r.status.as_str()),
        (true, 0, "active")
    );
    assert_eq!(
        lineage_state(&e, "device_state").await,
        ("active".into(), None, None, 0)
    );
    let controls = pending_controls(&e).await;
    assert_eq!(controls.len(), 1, "the resume supersedes the unacked pause");
    let resume = &controls[0];
    verify(resume, &KEY).unwrap();
    assert_eq!(resume.control_kind, ControlKind::ResumeLineage);
    assert_eq!(resume.server_watermark, Some(12));
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_mirror_0000d007_device_state \
             WHERE NOT _edge_deleted AND mode = 'bad'"
        )
        .await,
        9,
        "all nine poisoned rows are materialized after the fix"
    );
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_events WHERE event_type = \
             'integration.edge_table_lineage.ingestion_resumed.v1'"
        )
        .await,
        1
    );
    // Nothing is blocked any more: 409.
    assert!(matches!(
        reset(&e, "device_state").await,
        Err(ResetError::Refused(ResetRefusal::NotBlocked))
    ));
}

fn other_table() -> SchemaColumns {
    SchemaColumns::new(
        "other",
        vec![col("id", "INTEGER", 1, 1), col("v", "TEXT", 0, 0)],
    )
}

fn other_rows(from: i64, n: i64) -> Vec<Change> {
    (from..from + n)
        .map(|q| {
            (
                q,
                "insert",
                json!({"id": q}),
                json!({"id": q, "v": format!("v{q}")}),
            )
        })
        .collect()
}

async fn next_control(device: &mut TestClient, what: &str) -> ControlEnvelope {
    let m = device.expect_message(DEADLINE, what).await;
    assert_eq!(m.topic, format!("{SLUG}/{DEVICE}/sync/ingest/control"));
    let c: ControlEnvelope = serde_json::from_slice(&m.payload).unwrap();
    verify(&c, &KEY).unwrap();
    c
}

#[tokio::test]
async fn backpressure_pauses_the_device_over_mqtt_and_the_sweep_resumes_it_below_the_threshold() {
    let e = env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let service = pki.service();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(
        e.deps.clone(),
        MqttSettings {
            url: format!("mqtts://{}:{}", broker.host(), broker.port()),
            ca: pki.ca().cert_path().to_path_buf(),
            cert: service.cert_path().to_path_buf(),
            key: service.key_path().to_path_buf(),
            client_id: "edge-service".into(),
            share_group: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    // Publishing before the runner subscribed would lose the batch (mosquitto drops it).
    let topics = edge_functions::runner::subscriptions(None).len();
    wait_for(DEADLINE, "the runner's subscriptions", || async {
        broker.subacks_sent_to("edge-service") >= topics
    })
    .await;
    let mut device = TestClient::connect(broker.mqtt_options(DEVICE, &pki.device(DEVICE)))
        .await
        .unwrap();
    device
        .subscribe(&format!("{SLUG}/{DEVICE}/sync/ingest/control"))
        .await;
    let batch_topic = format!("{SLUG}/{DEVICE}/sync/rows/batch");
    let epoch = e.id();

    // Another table of the same device is approved and materializing.
    let other = other_table();
    let b = row_batch(e.id(), epoch, &other, true, &other_rows(1, 10));
    device.publish(&batch_topic, b.to_string()).await;
    wait_for(DEADLINE, "the other table's lineage", || async {
        e.scalar_i64("SELECT count(*) FROM edge_table_lineages WHERE source_table = 'other'")
            .await
            == 1
    })
    .await;
    e.approve("other").await;

    // Caps: 50 rows. device_state is new (staged for review); 75 staged rows cross the cap.
    e.client
        .execute(
            "INSERT INTO edge_replication_policy (project_id, org_id, max_pending_rows_per_lineage) \
             VALUES ($1, $2, 50)",
            &[&e.device.project_id, &e.device.org_id],
        )
        .await
        .unwrap();
    let s = device_state();
    for k in 0..3 {
        let rows: Vec<Change> = (1..=25)
            .map(|i| {
                let q = k * 25 + i;
                ins(q, q, "heat", 20.0)
            })
            .collect();
        let b = row_batch(e.id(), epoch, &s, true, &rows);
        device.publish(&batch_topic, b.to_string()).await;
    }
    let pause = next_control(&mut device, "pause_lineage").await;
    assert_eq!(pause.control_kind, ControlKind::PauseLineage);
    assert_eq!(pause.source_table.as_deref(), Some("device_state"));
    assert_eq!(pause.server_watermark, Some(75));
    assert!(pause.reason.as_deref().unwrap().contains("backpressure"));
    let (status, _, device_pause, _) = lineage_state(&e, "device_state").await;
    assert_eq!(status, "paused");
    assert_eq!(device_pause.as_deref(), Some("volume_backpressure"));
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_events WHERE event_type = \
             'integration.edge_table_lineage.ingestion_paused.v1' \
             AND payload->>'reason' = 'volume_backpressure'"
        )
        .await,
        1
    );

    // Other lineages keep materializing.
    let b = row_batch(e.id(), epoch, &other, false, &other_rows(11, 10));
    device.publish(&batch_topic, b.to_string()).await;
    wait_for(DEADLINE, "the other table keeps materializing", || async {
        e.scalar_i64("SELECT count(*) FROM edge_mirror_0000d007_other")
            .await
            == 20
    })
    .await;

    // Unacked → re-sent (same control, byte-for-byte the same signature).
    let again = next_control(&mut device, "the re-sent pause").await;
    assert_eq!(again, pause);
    let ack = json!({"format_version": 1, "control_id": pause.control_id.to_string()});
    device
        .publish(&format!("{SLUG}/{DEVICE}/sync/ingest/ack"), ack.to_string())
        .await;
    wait_for(DEADLINE, "the pause acked", || async {
        e.scalar_i64("SELECT count(*) FROM edge_pending_controls WHERE status = 'acked'")
            .await
            == 1
    })
    .await;
    // Acked → never re-sent: make it "due" again and let a sweep provably pass (a sentinel
    // control for another device gets sent) — the acked one is not picked up.
    e.client
        .execute(
            "UPDATE edge_pending_controls SET next_attempt_at = now() - interval '1 hour'",
            &[],
        )
        .await
        .unwrap();
    let attempts_before = e
        .scalar_i64("SELECT attempts::bigint FROM edge_pending_controls WHERE status = 'acked'")
        .await;
    let other_device = edge_functions::store::registry::Device {
        device_id: Uuid::now_v7(),
        device_name: "gw-08".into(),
        control_key: vec![8; 32],
        ..e.device.clone()
    };
    edge_functions::store::registry::create_device(&e.client, &other_device)
        .await
        .unwrap();
    let sentinel = Uuid::now_v7();
    e.client
        .execute(
            "INSERT INTO edge_pending_controls (control_id, device_id, control_kind, envelope) \
             VALUES ($1, $2, 'pause_lineage', '{}')",
            &[&sentinel, &other_device.device_id],
        )
        .await
        .unwrap();
    wait_for(DEADLINE, "a sweep after the ack", || async {
        e.scalar_i64("SELECT attempts::bigint FROM edge_pending_controls WHERE status = 'pending'")
            .await
            >= 1
    })
    .await;
    assert_eq!(
        e.scalar_i64("SELECT attempts::bigint FROM edge_pending_controls WHERE status = 'acked'")
            .await,
        attempts_before
    );
    e.client
        .execute(
            "DELETE FROM edge_pending_controls WHERE control_id = $1",
            &[&sentinel],
        )
        .await
        .unwrap();

    // The operator approves; the runner's replay loop drains the backlog; below 80 % of the
    // cap the sweep resumes the device from the watermark.
    approve_with_intent(&e, "device_state").await;
    let resume = next_control(&mut device, "resume_lineage").await;
    assert_eq!(resume.control_kind, ControlKind::ResumeLineage);
    assert_eq!(resume.source_table.as_deref(), Some("device_state"));
    assert_eq!(resume.server_watermark, Some(75));
    assert!(
        edge_protocol::timestamp::parse(resume.issued_at.as_deref().unwrap()).unwrap()
            >= edge_protocol::timestamp::parse(pause.issued_at.as_deref().unwrap()).unwrap()
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        0
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_mirror_0000d007_device_state")
            .await,
        75
    );
    let (status, _, device_pause, _) = lineage_state(&e, "device_state").await;
    assert_eq!((status.as_str(), device_pause), ("active", None));
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_events WHERE event_type = \
             'integration.edge_table_lineage.ingestion_resumed.v1'"
        )
        .await,
        1
    );
    // The device resumes from 76: live rows now materialize directly.
    let b = row_batch(e.id(), epoch, &s, false, &[ins(76, 76, "cool", 17.0)]);
    device.publish(&batch_topic, b.to_string()).await;
    wait_for(DEADLINE, "live rows after the resume", || async {
        e.scalar_i64("SELECT count(*) FROM edge_mirror_0000d007_device_state")
            .await
            == 76
    })
    .await;
    let _ = stop.send(());
    runner.await.unwrap().unwrap();
}
