//! Ingest on real PostgreSQL: rejection codes, dedup, classification, staging, materialization
//! edge cases, control acks, the SQS batch shape.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_cloud_core::classify::SchemaClass;
use edge_cloud_core::ingress::{admit, envelope};
use edge_functions::ingest::{intake, Outcome};
use edge_protocol::fingerprint::SchemaColumns;
use edge_protocol::validate::RejectionCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn accepted(o: &Outcome) -> (SchemaClass, i64, i64, i64) {
    match o {
        Outcome::Accepted {
            class,
            materialized,
            staged,
            failed,
            ..
        } => (*class, *materialized, *staged, *failed),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn rejected(o: &Outcome) -> RejectionCode {
    match o {
        Outcome::Rejected { code, .. } => *code,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let e = env().await;
    let mut c = e.deps.pool.get().await.unwrap();
    let again = edge_functions::store::migrate::migrate(&mut c)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM schema_migrations").await,
        i64::try_from(edge_functions::store::migrate::MIGRATIONS.len()).unwrap()
    );
    // Plain PostgreSQL here: no hypertables, and everything still works.
    assert!(!edge_functions::store::migrate::hypertables_enabled(&c)
        .await
        .unwrap());
}

#[tokio::test]
async fn every_rejection_code_is_recorded_in_the_ledger() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    let good = |id: Uuid| row_batch(id, epoch, &s, true, &[ins(1, 1, "heat", 20.5)]);
    let mut seen = Vec::new();
    let mut check = |o: Outcome, want: RejectionCode| {
        assert_eq!(rejected(&o), want);
        seen.push(want);
    };

    // Forbidden tenant fields that reach the worker (ingress bypassed).
    let mut v = good(e.id());
    v["org_id"] = json!("someone-else");
    let env_ = envelope("acme/gw-07/sync/rows/batch", DEVICE, 1, b"{}");
    let mut admitted = admit(&env_).unwrap();
    admitted.payload = v.to_string().into_bytes();
    check(
        intake(&e.deps, admitted).await.unwrap(),
        RejectionCode::EnvelopeUnstrippedTenantFields,
    );
    // ...while through ingress they are stripped, counted and the batch is accepted.
    v["batch_id"] = json!(e.id().to_string());
    let o = e.rows(&v).await;
    accepted(&o);
    assert_eq!(
        e.scalar_i64("SELECT sum(stripped_tenant_fields)::bigint FROM edge_export_segments")
            .await,
        1
    );

    let mut v = good(e.id());
    v["format_version"] = json!(0);
    check(e.rows(&v).await, RejectionCode::InvalidFormatVersion);
    let mut v = good(e.id());
    v["format_version"] = json!(2);
    check(e.rows(&v).await, RejectionCode::UnsupportedFormatVersion);
    let mut v = good(e.id());
    v["batch_id"] = json!("not-a-uuid");
    check(e.rows(&v).await, RejectionCode::InvalidBatchId);
    let many: Vec<Change> = (1..=4097).map(|i| ins(i, i, "m", 1.0)).collect();
    check(
        e.rows(&row_batch(e.id(), epoch, &s, false, &many)).await,
        RejectionCode::BatchTooManyRows,
    );
    let mut v = telemetry_batch(e.id(), 1, &[1.0, 2.0]);
    v["row_count"] = json!(3);
    check(
        e.send("sync/telemetry/batch", v.to_string().as_bytes())
            .await,
        RejectionCode::RowCountMismatch,
    );
    let mut v = telemetry_batch(e.id(), 1, &[1.0, 2.0]);
    v["cursor_end_ts"] = json!("2026-04-28T10:00:00Z");
    check(
        e.send("sync/telemetry/batch", v.to_string().as_bytes())
            .await,
        RejectionCode::CursorTimestampMismatch,
    );
    let mut v = telemetry_batch(e.id(), 1, &[1.0]);
    v["rows"][0]["row_id"] = json!("bad id!");
    check(
        e.send("sync/telemetry/batch", v.to_string().as_bytes())
            .await,
        RejectionCode::InvalidRowId,
    );
    let text = good(e.id()).to_string().replace("20.5", "1e999");
    check(
        e.send("sync/rows/batch", text.as_bytes()).await,
        RejectionCode::InvalidNumberEncoding,
    );
    // Telemetry sequencing.
    let t1 = telemetry_batch(e.id(), 5, &[1.0]);
    accepted(
        &e.send("sync/telemetry/batch", t1.to_string().as_bytes())
            .await,
    );
    check(
        e.send(
            "sync/telemetry/batch",
            telemetry_batch(e.id(), 5, &[2.0]).to_string().as_bytes(),
        )
        .await,
        RejectionCode::DuplicateBatchSeq,
    );
    check(
        e.send(
            "sync/telemetry/batch",
            telemetry_batch(e.id(), 3, &[2.0]).to_string().as_bytes(),
        )
        .await,
        RejectionCode::StaleBatchSeq,
    );
    // Redelivering the accepted one is a duplicate, not a sequencing error.
    assert!(matches!(
        e.send("sync/telemetry/batch", t1.to_string().as_bytes())
            .await,
        Outcome::Duplicate { .. }
    ));
    check(
        e.send("sync/rows/batch", b"{not json").await,
        RejectionCode::MalformedJson,
    );
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(600 * 1024));
    check(
        e.send("sync/rows/batch", big.as_bytes()).await,
        RejectionCode::PayloadTooLarge,
    );
    let mut v = good(e.id());
    v["schema_hash"] = json!("XYZ");
    check(e.rows(&v).await, RejectionCode::InvalidSchemaHash);
    let mut v = good(e.id());
    v["rows"][0]["op"] = json!("upsert");
    check(e.rows(&v).await, RejectionCode::InvalidRow);
    let mut v = good(e.id());
    v["source_table"] = json!("device\u{0}state");
    check(e.rows(&v).await, RejectionCode::InvalidIdentifier);
    // An end marker that still carries rows (edge-policies §5).
    let mut v = good(e.id());
    v["snapshot_id"] = json!(e.id().to_string());
    v["snapshot_start_seq"] = v["first_commit_seq"].clone();
    v["snapshot_chunk"] = json!(1);
    v["snapshot_chunk_count"] = json!(1);
    v["snapshot_row_count"] = json!(1);
    v["snapshot_end"] = json!("complete");
    check(e.rows(&v).await, RejectionCode::InvalidSnapshot);
    check(
        e.send_as(
            "ghost",
            "sync/rows/batch",
            good(e.id()).to_string().as_bytes(),
        )
        .await,
        RejectionCode::UnknownDevice,
    );

    let codes: Vec<String> = e
        .client
        .query(
            "SELECT DISTINCT rejection_code FROM edge_export_segments WHERE status = 'rejected'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for code in RejectionCode::ALL {
        assert!(seen.contains(&code), "not exercised: {code}");
        assert!(
            codes.contains(&code.as_str().to_owned()),
            "not in ledger: {code}"
        );
    }
    // The same bad bytes again: still one ledger row.
    let before = e
        .scalar_i64("SELECT count(*) FROM edge_export_segments")
        .await;
    e.send("sync/rows/batch", b"{not json").await;
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments")
            .await,
        before
    );
}

#[tokio::test]
async fn duplicate_batch_is_a_noop() {
    let e = env().await;
    let epoch = e.id();
    let b = row_batch(
        e.id(),
        epoch,
        &device_state(),
        true,
        &[ins(1, 1, "heat", 20.5)],
    );
    accepted(&e.rows(&b).await);
    let staged = e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await;
    assert!(matches!(e.rows(&b).await, Outcome::Duplicate { .. }));
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        staged
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments")
            .await,
        1
    );
    assert_eq!(
        e.scalar_i64("SELECT staged_row_count FROM edge_table_lineages")
            .await,
        1
    );
}

async fn diff_of(e: &Env, hash: &str) -> Value {
    e.client
        .query_one(
            "SELECT diff FROM edge_schema_reviews WHERE schema_hash = $1",
            &[&hash],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_class_is_reached_with_its_diff() {
    let e = env().await;
    let epoch = e.id();
    let base = device_state();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };

    // First schema: ambiguous, every column added, staged, lineage paused, review queued.
    let (class, m, st, _) = accepted(
        &e.rows(&row_batch(
            e.id(),
            epoch,
            &base,
            true,
            &[ins(next(), 1, "heat", 20.5)],
        ))
        .await,
    );
    assert_eq!((class, m, st), (SchemaClass::Ambiguous, 0, 1));
    assert_eq!(
        diff_of(&e, &base.schema_hash()).await["added"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_table_lineages WHERE status = 'paused' AND pause_reason = 'schema_review'").await,
        1
    );
    let report = e.approve("device_state").await;
    assert_eq!(report.replay.drained, 1);

    // Approved hash: compatible_mapped, materialized.
    let (class, m, st, _) = accepted(
        &e.rows(&row_batch(
            e.id(),
            epoch,
            &base,
            false,
            &[ins(next(), 2, "cool", 19.0)],
        ))
        .await,
    );
    assert_eq!((class, m, st), (SchemaClass::CompatibleMapped, 1, 0));
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_mirror_0000d007_device_state WHERE NOT _edge_deleted"
        )
        .await,
        2
    );

    // A nullable column added: compatible_additive; production default stages.
    let additive = SchemaColumns::new(
        "device_state",
        [base.columns.clone(), vec![col("note", "TEXT", 0, 0)]].concat(),
    );
    let row = json!({"id": 3, "mode": "off", "setpoint": 1.0, "note": "n"});
    let (class, m, st, _) = accepted(
        &e.rows(&row_batch(
            e.id(),
            epoch,
            &additive,
            true,
            &[(next(), "insert", json!({"id": 3}), row.clone())],
        ))
        .await,
    );
    assert_eq!((class, m, st), (SchemaClass::CompatibleAdditive, 0, 1));
    assert_eq!(
        diff_of(&e, &additive.schema_hash()).await["added"][0]["name"],
        "note"
    );

    // With allow_additive_continue the bound columns keep materializing (new e2e lineage).
    let e2 = env().await;
    edge_functions::store::policy::set_allow_additive_continue(
        &e2.client,
        e2.device.org_id,
        e2.device.project_id,
        true,
    )
    .await
    .unwrap();
    accepted(
        &e2.rows(&row_batch(
            e2.id(),
            epoch,
            &base,
            true,
            &[ins(1, 1, "heat", 20.5)],
        ))
        .await,
    );
    e2.approve("device_state").await;
    let (class, m, st, _) = accepted(
        &e2.rows(&row_batch(
            e2.id(),
            epoch,
            &additive,
            true,
            &[(2, "insert", json!({"id": 3}), row)],
        ))
        .await,
    );
    // … and its full image is staged for the review (reliability.md §4).
    assert_eq!((class, m, st), (SchemaClass::CompatibleAdditive, 1, 1));
    assert_eq!(
        e2.scalar_i64("SELECT count(*) FROM edge_schema_reviews WHERE state = 'queued'")
            .await,
        1
    );

    // Breaking: dropped, retyped, PK changed (on the first env, approved = base).
    let dropped = SchemaColumns::new(
        "device_state",
        vec![col("id", "INTEGER", 1, 1), col("mode", "TEXT", 0, 0)],
    );
    let retyped = SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "INTEGER", 0, 0),
            col("setpoint", "REAL", 0, 0),
        ],
    );
    let pk = SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 1, 2),
            col("setpoint", "REAL", 0, 0),
        ],
    );
    for (schema, key) in [
        (&dropped, "removed"),
        (&retyped, "retyped"),
        (&pk, "pk_changed"),
    ] {
        let (class, _, st, _) = accepted(
            &e.rows(&row_batch(
                e.id(),
                epoch,
                schema,
                true,
                &[(next(), "delete", json!({"id": 1}), Value::Null)],
            ))
            .await,
        );
        assert_eq!((class, st), (SchemaClass::Breaking, 1));
        let diff = diff_of(&e, &schema.schema_hash()).await;
        assert_eq!(diff[key].as_array().unwrap().len(), 1, "{key}: {diff}");
    }

    // Unknown: a hash never seen, without schema_columns.
    let mut v = row_batch(e.id(), epoch, &base, false, &[ins(next(), 9, "x", 1.0)]);
    v["schema_hash"] = json!("b".repeat(64));
    let (class, _, st, _) = accepted(&e.rows(&v).await);
    assert_eq!((class, st), (SchemaClass::Unknown, 1));

    let classes: Vec<String> = e
        .client
        .query(
            "SELECT DISTINCT classification FROM edge_schema_versions",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in ["ambiguous", "compatible_additive", "breaking", "unknown"] {
        assert!(
            classes.contains(&c.to_owned()),
            "{c} not recorded: {classes:?}"
        );
    }
}

#[tokio::test]
async fn staged_rows_are_unique_under_redelivery() {
    let e = env().await;
    let epoch = e.id();
    let rows = [ins(1, 1, "heat", 20.5), ins(2, 2, "cool", 19.0), del(3, 1)];
    accepted(
        &e.rows(&row_batch(e.id(), epoch, &device_state(), true, &rows))
            .await,
    );
    // The same journal rows re-batched under new batch ids (agent restart before PUBACK).
    for _ in 0..3 {
        let (_, _, staged, _) = accepted(
            &e.rows(&row_batch(e.id(), epoch, &device_state(), true, &rows))
                .await,
        );
        assert_eq!(staged, 0);
    }
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        3
    );
    assert_eq!(
        e.scalar_i64("SELECT staged_row_count FROM edge_table_lineages")
            .await,
        3
    );
    let report = e.approve("device_state").await;
    assert_eq!(report.replay.drained, 3);
    assert_eq!(
        e.scalar_i64("SELECT staged_row_count + staged_bytes FROM edge_table_lineages")
            .await,
        0
    );
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_mirror_0000d007_device_state WHERE NOT _edge_deleted"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn hostile_names_materialize_without_injection() {
    let e = env().await;
    e.client
        .batch_execute("CREATE TABLE x (v int)")
        .await
        .unwrap();
    let long = "l".repeat(70);
    let long2 = format!("{}2", "l".repeat(69));
    let table = "\"; DROP TABLE x; --";
    let schema = SchemaColumns::new(
        table,
        vec![
            col("a\"b", "INTEGER", 1, 1),
            col("with space", "TEXT", 0, 0),
            col("ünïcødé ✓", "REAL", 0, 0),
            col(&long, "TEXT", 0, 0),
            col(&long2, "TEXT", 0, 0),
            col("created_at", "TEXT", 0, 0),
            col("'); DELETE FROM edge_devices; --", "BLOB", 0, 0),
        ],
    );
    let row = json!({
        "a\"b": 1, "with space": "s", "ünïcødé ✓": 1.5, long.clone(): "L1", long2.clone(): "L2",
        "created_at": "yesterday", "'); DELETE FROM edge_devices; --": {"$base64": "AP8="}
    });
    let b = row_batch(
        e.id(),
        e.id(),
        &schema,
        true,
        &[(1, "insert", json!({"a\"b": 1}), row)],
    );
    accepted(&e.rows(&b).await);
    let report = e.approve(table).await;
    assert_eq!(report.replay.drained, 1);
    let mirror = report.mirror_table.unwrap();
    assert!(mirror.len() <= 63);
    let rows = e
        .client
        .query(
            &format!(
                "SELECT \"with space\", \"ünïcødé ✓\", \"created_at_src\" FROM {}",
                edge_cloud_core::naming::quote_ident(&mirror)
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "s");
    assert_eq!(rows[0].get::<_, f64>(1), 1.5);
    assert_eq!(rows[0].get::<_, String>(2), "yesterday");
    // Nothing was dropped or deleted, and both long names got distinct columns.
    assert_eq!(e.scalar_i64("SELECT count(*) FROM x").await, 0);
    assert_eq!(e.scalar_i64("SELECT count(*) FROM edge_devices").await, 1);
    let cols = e
        .scalar_i64(&format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = '{}'",
            mirror.replace('\'', "''")
        ))
        .await;
    assert_eq!(cols, 7 + 6);
}

#[tokio::test]
async fn type_mismatch_is_staged_as_materialization_failed() {
    let e = env().await;
    let epoch = e.id();
    let s = device_state();
    accepted(
        &e.rows(&row_batch(
            e.id(),
            epoch,
            &s,
            true,
            &[ins(1, 1, "heat", 20.5)],
        ))
        .await,
    );
    e.approve("device_state").await;
    let bad = (
        3,
        "insert",
        json!({"id": 3}),
        json!({"id": 3, "mode": "x", "setpoint": "not a number"}),
    );
    let b = row_batch(e.id(), epoch, &s, false, &[ins(2, 2, "cool", 19.0), bad]);
    let (_, materialized, staged, failed) = accepted(&e.rows(&b).await);
    assert_eq!((materialized, staged, failed), (1, 1, 1));
    let r = e
        .client
        .query_one(
            "SELECT staging_reason, error, \"row\" FROM edge_staged_rows",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "materialization_failed");
    assert!(r.get::<_, String>(1).contains("setpoint"));
    assert_eq!(r.get::<_, Value>(2)["setpoint"], "not a number");
    // The batch also materialized a row, so the breaker's streak ends with it
    // (reliability.md §4, §6: core::backpressure::streak_ends); the misfit stays staged.
    assert_eq!(
        e.scalar_i64("SELECT materialization_failure_count::bigint FROM edge_table_lineages")
            .await,
        0
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_mirror_0000d007_device_state")
            .await,
        2
    );
    // Redelivery does not count the failure twice.
    assert!(matches!(e.rows(&b).await, Outcome::Duplicate { .. }));
    let b2 = row_batch(
        e.id(),
        epoch,
        &s,
        false,
        &[(
            3,
            "insert",
            json!({"id": 3}),
            json!({"id": 3, "mode": "x", "setpoint": "not a number"}),
        )],
    );
    accepted(&e.rows(&b2).await);
    // Nothing of b2 materialized, but its one row was already staged: not counted again.
    assert_eq!(
        e.scalar_i64("SELECT materialization_failure_count::bigint FROM edge_table_lineages")
            .await,
        0
    );
}

#[tokio::test]
async fn control_acks_mark_pending_controls() {
    let e = env().await;
    let control = Uuid::now_v7();
    e.client
        .execute(
            "INSERT INTO edge_pending_controls (control_id, device_id, control_kind, envelope) \
             VALUES ($1, $2, 'pause_lineage', '{}')",
            &[&control, &e.device.device_id],
        )
        .await
        .unwrap();
    let ack = json!({"format_version": 1, "control_id": control.to_string()});
    let o = e.send("sync/ingest/ack", ack.to_string().as_bytes()).await;
    assert_eq!(
        o,
        Outcome::ControlAcked {
            control_id: control,
            known: true
        }
    );
    let o = e.send("sync/ingest/ack", ack.to_string().as_bytes()).await;
    assert_eq!(
        o,
        Outcome::ControlAcked {
            control_id: control,
            known: false
        }
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_pending_controls WHERE status = 'acked'")
            .await,
        1
    );
}

#[tokio::test]
async fn telemetry_materializes_after_approval() {
    let e = env().await;
    let (class, _, staged, _) = accepted(
        &e.send(
            "sync/telemetry/batch",
            telemetry_batch(e.id(), 1, &[21.5, 22.0])
                .to_string()
                .as_bytes(),
        )
        .await,
    );
    assert_eq!((class, staged), (SchemaClass::Unknown, 2));
    let report = e.approve("temps").await;
    assert_eq!(report.replay.drained, 2);
    let (class, m, _, _) = accepted(
        &e.send(
            "sync/telemetry/batch",
            telemetry_batch(e.id(), 2, &[23.0]).to_string().as_bytes(),
        )
        .await,
    );
    assert_eq!((class, m), (SchemaClass::CompatibleMapped, 1));
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM telemetry_data_point_value")
            .await,
        3
    );
}

/// Reliability §5: after a rowid reset the agent re-reads a telemetry table from the start
/// and sends readings the cloud already has under a new batch id; they are stored once.
#[tokio::test]
async fn telemetry_re_read_after_a_reset_is_stored_once() {
    let e = env().await;
    e.send(
        "sync/telemetry/batch",
        telemetry_batch(e.id(), 1, &[21.5, 22.0])
            .to_string()
            .as_bytes(),
    )
    .await;
    e.approve("temps").await;
    // The re-read: both readings again (same ts, same values) and a new one.
    let (_, m, _, _) = accepted(
        &e.send(
            "sync/telemetry/batch",
            telemetry_batch(e.id(), 2, &[21.5, 22.0, 23.5])
                .to_string()
                .as_bytes(),
        )
        .await,
    );
    assert_eq!(m, 3, "the batch is accepted whole");
    let stored: Vec<(String, f64)> = e
        .client
        .query(
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'HH24:MI:SS'), value_numeric \
             FROM telemetry_data_point_value ORDER BY ts, value_numeric",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("09:00:00".to_owned(), 21.5),
            ("09:00:01".to_owned(), 22.0),
            ("09:00:02".to_owned(), 23.5)
        ]
    );
    // A different value at a stored instant is a reading of its own.
    e.send(
        "sync/telemetry/batch",
        telemetry_batch(e.id(), 3, &[30.0]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM telemetry_data_point_value")
            .await,
        4
    );
}

#[tokio::test]
async fn ingress_drops_identity_mismatch() {
    let e = env().await;
    let env_ = envelope("acme/gw-08/sync/rows/batch", DEVICE, 1, b"{}");
    let o = edge_functions::ingest::handle(&e.deps, env_).await.unwrap();
    assert!(matches!(o, Outcome::Dropped { .. }));
}

#[tokio::test]
async fn sqs_fixture_succeeds_and_database_outage_is_retryable() {
    use aws_lambda_events::event::sqs::SqsEvent;
    let fixture = include_str!("../events/ingest-sqs.json");
    let event: SqsEvent = serde_json::from_str(fixture).unwrap();
    let e = env().await;
    let response = edge_functions::sqs::handle_sqs(&e.deps, event.clone()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments")
            .await,
        1
    );

    // A database that is not there: every record is a retryable failure.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = edge_functions::store::pool::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=2"),
        1,
    )
    .unwrap();
    let response = edge_functions::sqs::handle_sqs(&edge_functions::Deps::new(dead), event).await;
    assert_eq!(response.batch_item_failures.len(), 2);
}
