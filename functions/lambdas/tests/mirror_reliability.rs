//! Issue 13, the cloud side of reliability.md §3, §4, §6 (defects 4, 5, 6, 12): mirror tables
//! have one owner, approvals never wedge, additive reviews backfill, a REAL is a double
//! whatever its spelling. Real PostgreSQL; approvals through the store's review transitions
//! (what the approve route runs).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_cloud_core::review::{ColumnAction, ColumnActionKind};
use edge_functions::store::error::OpError;
use edge_functions::store::read::reviews::DeviceReview;
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::review::{approve, claim, ApprovalOutcome};
use edge_functions::store::scope::Scope;
use edge_protocol::fingerprint::SchemaColumns;
use serde_json::json;
use uuid::Uuid;

/// A device of another org whose UUIDv7 was minted in the same minute as the env's device:
/// the same first 8 hex digits (`0193a000`), different random bits.
const OTHER: &str = "gw-08";

async fn other_org_device(e: &Env) -> Device {
    let d = Device {
        device_id: Uuid::parse_str("0193a000-0001-7000-8000-0000000000b2").unwrap(),
        device_name: OTHER.into(),
        org_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        fleet_id: Uuid::now_v7(),
        topic_slug: SLUG.into(),
        control_key: vec![8; 32],
    };
    let c = e.deps.pool.get().await.unwrap();
    assert!(create_device(&**c, &d).await.unwrap());
    d
}

/// `device_state` as the other tenant has it: a different extra column.
fn other_state() -> SchemaColumns {
    SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 0, 0),
            col("secret", "TEXT", 0, 0),
        ],
    )
}

/// Stages one row of `schema` from `device` (opens the lineage and its review).
async fn stage(e: &Env, device: &str, schema: &SchemaColumns) {
    let mut row = serde_json::Map::new();
    for c in &schema.columns {
        row.insert(
            c.name.clone(),
            if c.pk_ordinal > 0 {
                json!(1)
            } else {
                json!(null)
            },
        );
    }
    let b = row_batch(
        e.id(),
        e.id(),
        schema,
        true,
        &[(
            1,
            "insert",
            json!({"id": 1}),
            serde_json::Value::Object(row),
        )],
    );
    let out = e
        .send_as(device, "sync/rows/batch", b.to_string().as_bytes())
        .await;
    assert!(
        matches!(out, edge_functions::ingest::Outcome::Accepted { .. }),
        "{out:?}"
    );
}

async fn lineage_of(e: &Env, device: Uuid, table: &str) -> Uuid {
    e.client
        .query_one(
            "SELECT id FROM edge_table_lineages WHERE device_id = $1 AND source_table = $2",
            &[&device, &table],
        )
        .await
        .unwrap()
        .get(0)
}

/// Claims and approves the lineage's open review of `schema`, every column mirrored, into
/// `mirror` when given.
async fn approve_all(
    e: &Env,
    scope: Scope,
    lineage: Uuid,
    schema: &SchemaColumns,
    mirror: Option<&str>,
) -> Result<ApprovalOutcome, OpError> {
    let review: Uuid = e
        .client
        .query_one(
            "SELECT id FROM edge_schema_reviews \
             WHERE lineage_id = $1 AND schema_hash = $2 AND state = 'queued'",
            &[&lineage, &schema.schema_hash()],
        )
        .await
        .unwrap()
        .get(0);
    let mut c = e.deps.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let v = claim::<DeviceReview, _>(&*tx, scope, review, "op", None)
        .await
        .unwrap();
    let actions: Vec<ColumnAction> = schema
        .columns
        .iter()
        .map(|c| ColumnAction {
            source_column_name: c.name.clone(),
            action: ColumnActionKind::Mirror,
            mirror_column_name: None,
            mirror_table_name: mirror.map(str::to_owned),
            device_data_point_id: None,
        })
        .collect();
    let out = approve::<DeviceReview, _>(
        &*tx,
        scope,
        review,
        "op",
        v.action_version,
        &actions,
        Uuid::now_v7,
    )
    .await;
    if out.is_ok() {
        tx.commit().await.unwrap();
    }
    out
}

fn scope_of(d: &Device) -> Scope {
    Scope {
        org_id: d.org_id,
        project_id: d.project_id,
    }
}

async fn columns_of(e: &Env, table: &str) -> Vec<String> {
    e.client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(quote_ident($1)) \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn conflict_code(r: Result<ApprovalOutcome, OpError>) -> String {
    match r {
        Err(OpError::Conflict { code, .. }) => code.to_owned(),
        Err(other) => format!("other error: {other}"),
        Ok(out) => format!("accepted into {:?}", out.mirror_table_name),
    }
}

#[tokio::test]
async fn defect4_devices_registered_in_the_same_minute_get_distinct_mirror_tables() {
    let e = env().await;
    let b = other_org_device(&e).await;
    stage(&e, DEVICE, &device_state()).await;
    stage(&e, OTHER, &other_state()).await;
    let la = lineage_of(&e, e.device.device_id, "device_state").await;
    let lb = lineage_of(&e, b.device_id, "device_state").await;

    let a = approve_all(&e, scope_of(&e.device), la, &device_state(), None)
        .await
        .unwrap();
    let a_table = a.mirror_table_name.unwrap();
    let a_columns = columns_of(&e, &a_table).await;
    let bo = approve_all(&e, scope_of(&b), lb, &other_state(), None)
        .await
        .unwrap();
    let b_table = bo.mirror_table_name.unwrap();
    assert_ne!(
        a_table, b_table,
        "two tenants' devices share one mirror table"
    );
    assert_eq!(
        columns_of(&e, &a_table).await,
        a_columns,
        "tenant B's approval ALTERed tenant A's table"
    );
    assert!(!columns_of(&e, &a_table)
        .await
        .contains(&"secret".to_owned()));
    assert!(columns_of(&e, &b_table)
        .await
        .contains(&"secret".to_owned()));
    // device8 is the UUID's last 8 hex digits.
    assert_eq!(a_table, "edge_mirror_0000d007_device_state");
    assert_eq!(b_table, "edge_mirror_000000b2_device_state");
    let owners = e
        .scalar_i64("SELECT count(*) FROM edge_mirror_tables WHERE lineage_id IS NOT NULL")
        .await;
    assert_eq!(owners, 2);
}

#[tokio::test]
async fn defect4_cross_org_mirror_table_name_is_409_mirror_table_not_owned() {
    let e = env().await;
    let b = other_org_device(&e).await;
    stage(&e, DEVICE, &device_state()).await;
    stage(&e, OTHER, &device_state()).await;
    let la = lineage_of(&e, e.device.device_id, "device_state").await;
    let lb = lineage_of(&e, b.device_id, "device_state").await;
    let a = approve_all(&e, scope_of(&e.device), la, &device_state(), None)
        .await
        .unwrap();
    let a_table = a.mirror_table_name.unwrap();
    let r = approve_all(&e, scope_of(&b), lb, &device_state(), Some(&a_table)).await;
    assert_eq!(conflict_code(r), "mirror_table_not_owned");
    let bound = e
        .scalar_i64("SELECT count(*) FROM edge_column_bindings WHERE mirror_table_name IS NOT NULL")
        .await;
    assert_eq!(bound, 3, "only tenant A's bindings point at the table");
}

#[tokio::test]
async fn defect4_same_project_other_lineage_is_409_mirror_table_in_use() {
    let e = env().await;
    stage(&e, DEVICE, &device_state()).await;
    let copy = SchemaColumns::new("device_state_copy", device_state().columns.clone());
    stage(&e, DEVICE, &copy).await;
    let la = lineage_of(&e, e.device.device_id, "device_state").await;
    let lc = lineage_of(&e, e.device.device_id, "device_state_copy").await;
    let a = approve_all(&e, scope_of(&e.device), la, &device_state(), None)
        .await
        .unwrap();
    let a_table = a.mirror_table_name.unwrap();
    let r = approve_all(&e, scope_of(&e.device), lc, &copy, Some(&a_table)).await;
    assert_eq!(conflict_code(r), "mirror_table_in_use");
    // Its own default name is free.
    let c = approve_all(&e, scope_of(&e.device), lc, &copy, None)
        .await
        .unwrap();
    assert_eq!(
        c.mirror_table_name.as_deref(),
        Some("edge_mirror_0000d007_device_state_copy")
    );
}

#[tokio::test]
async fn defect4_fitted_name_owned_elsewhere_gets_a_numbered_suffix() {
    let e = env().await;
    let b = other_org_device(&e).await;
    stage(&e, DEVICE, &device_state()).await;
    let la = lineage_of(&e, e.device.device_id, "device_state").await;
    // Another org's lineage already owns this device's first candidate name.
    let taken = "edge_mirror_0000d007_device_state";
    e.client
        .execute(
            "INSERT INTO edge_mirror_tables (table_name, org_id, project_id, lineage_id) \
             VALUES ($1, $2, $3, $4)",
            &[&taken, &b.org_id, &b.project_id, &Uuid::now_v7()],
        )
        .await
        .unwrap();
    let a = approve_all(&e, scope_of(&e.device), la, &device_state(), None)
        .await
        .unwrap();
    assert_eq!(
        a.mirror_table_name.as_deref(),
        Some("edge_mirror_0000d007_device_state_2")
    );
}

#[tokio::test]
async fn defect4_migration_records_owners_and_reports_collisions() {
    let e = env().await;
    let b = other_org_device(&e).await;
    stage(&e, DEVICE, &device_state()).await;
    stage(&e, OTHER, &device_state()).await;
    let la = lineage_of(&e, e.device.device_id, "device_state").await;
    let lb = lineage_of(&e, b.device_id, "device_state").await;
    // A database from before the migration: both lineages write the table the old device8
    // (first 8 hex digits) named, A first.
    let old = "edge_mirror_0193a000_device_state";
    e.client
        .batch_execute(&format!(
            "DROP TABLE edge_mirror_tables; DELETE FROM schema_migrations WHERE version = 10; \
             UPDATE edge_table_lineages SET mirror_table_name = '{old}', \
                 created_at = now() - interval '1 day' WHERE id = '{la}'; \
             UPDATE edge_table_lineages SET mirror_table_name = '{old}' WHERE id = '{lb}'; \
             UPDATE edge_table_lineages SET mirror_table_name = 'edge_mirror_solo' \
                 WHERE source_table = 'nothing'"
        ))
        .await
        .unwrap();
    let mut c = e.db.connect().await;
    let applied = edge_functions::store::migrate::migrate(&mut c)
        .await
        .unwrap();
    assert_eq!(applied, vec![10]);
    let owner: Uuid = e
        .client
        .query_one(
            "SELECT lineage_id FROM edge_mirror_tables WHERE table_name = $1",
            &[&old],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, la, "the earliest lineage owns the existing table");
    let collisions = edge_functions::store::migrate::mirror_collisions(&c)
        .await
        .unwrap();
    assert_eq!(collisions.len(), 1, "{collisions:?}");
    assert_eq!(collisions[0].table_name, old);
    assert!(collisions[0].owner.contains(&la.to_string()));
    assert!(collisions[0].others[0].contains(&lb.to_string()));
    assert!(collisions[0].to_string().contains("also named by"));
    // Left as it is: both lineages keep their table name …
    let names = e
        .scalar_i64(&format!(
            "SELECT count(*) FROM edge_table_lineages WHERE mirror_table_name = '{old}'"
        ))
        .await;
    assert_eq!(names, 2);
}

async fn lineage_row(e: &Env, lineage: Uuid) -> (String, Option<String>, i64, Option<String>) {
    let r = e
        .client
        .query_one(
            "SELECT status, pause_reason, staged_row_count, materialization_last_error \
             FROM edge_table_lineages WHERE id = $1",
            &[&lineage],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

async fn replay(e: &Env, lineage: Uuid) {
    let c = e.deps.pool.get().await.unwrap();
    edge_functions::store::drain::replay_staged(&**c, lineage, e.device.device_id, 100)
        .await
        .unwrap();
}

fn accepted_counts(out: &edge_functions::ingest::Outcome) -> (i64, i64, i64) {
    match out {
        edge_functions::ingest::Outcome::Accepted {
            materialized,
            staged,
            failed,
            ..
        } => (*materialized, *staged, *failed),
        other => panic!("not accepted: {other:?}"),
    }
}

/// Defect 5 (reliability.md §4): a primary key that changed is refused up front, not
/// accepted and then failed batch after batch (42P10).
#[tokio::test]
async fn defect5_approving_a_changed_primary_key_is_409_mirror_primary_key_changed() {
    let e = env().await;
    stage(&e, DEVICE, &device_state()).await;
    let l = lineage_of(&e, e.device.device_id, "device_state").await;
    approve_all(&e, scope_of(&e.device), l, &device_state(), None)
        .await
        .unwrap();
    replay(&e, l).await;
    let pk = SchemaColumns::new(
        "device_state",
        vec![
            col("id", "INTEGER", 1, 1),
            col("mode", "TEXT", 1, 2),
            col("setpoint", "REAL", 0, 0),
        ],
    );
    let b = row_batch(
        e.id(),
        e.id(),
        &pk,
        true,
        &[(
            2,
            "insert",
            json!({"id": 2, "mode": "heat"}),
            json!({"id": 2, "mode": "heat", "setpoint": 1.5}),
        )],
    );
    accepted_counts(&e.rows(&b).await);
    let before = lineage_row(&e, l).await;
    assert_eq!(before.0, "paused");
    let r = approve_all(&e, scope_of(&e.device), l, &pk, None).await;
    let message = match &r {
        Err(OpError::Conflict { message, .. }) => message.clone(),
        _ => String::new(),
    };
    assert_eq!(conflict_code(r), "mirror_primary_key_changed");
    assert!(message.contains("To proceed"), "{message}");
    let after = lineage_row(&e, l).await;
    assert_eq!(after.0, "paused", "the lineage stays paused");
    assert_eq!(after.2, before.2, "rows stay staged");
}

/// Defect 5, second rule (reliability.md §4): a permanent write error that fails every row of
/// a batch (here 42P10: the mirror's key is gone) trips the breaker with the error text.
#[tokio::test]
async fn defect5_a_permanent_error_of_every_row_trips_the_breaker_not_dead_letters() {
    let e = env().await;
    stage(&e, DEVICE, &device_state()).await;
    let l = lineage_of(&e, e.device.device_id, "device_state").await;
    let out = approve_all(&e, scope_of(&e.device), l, &device_state(), None)
        .await
        .unwrap();
    replay(&e, l).await;
    let table = out.mirror_table_name.unwrap();
    e.client
        .batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"))
        .await
        .unwrap();
    for i in 0..5 {
        let b = row_batch(
            e.id(),
            e.id(),
            &device_state(),
            true,
            &[ins(10 + i, 10 + i, "heat", 1.0)],
        );
        let topic = format!("{SLUG}/{DEVICE}/sync/rows/batch");
        let r = edge_functions::ingest::handle(
            &e.deps,
            edge_cloud_core::ingress::envelope(
                &topic,
                DEVICE,
                1_733_000_000_000,
                b.to_string().as_bytes(),
            ),
        )
        .await;
        let r = r.unwrap_or_else(|err| panic!("batch {i} failed instead of staging: {err}"));
        assert_eq!(accepted_counts(&r).2, 1, "batch {i}");
    }
    let (status, reason, staged, last_error) = lineage_row(&e, l).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("paused", Some("circuit_breaker"))
    );
    assert_eq!(staged, 5);
    assert!(last_error.unwrap_or_default().contains("42P10"));
    let dead = e.scalar_i64("SELECT count(*) FROM edge_dead_letters").await;
    assert_eq!(dead, 0);
}

/// Defect 6 (reliability.md §4): with allow_additive_continue the old columns keep
/// materializing and the full images are staged; approving the new column replays them.
#[tokio::test]
async fn defect6_allow_additive_continue_backfills_the_new_column_on_approval() {
    let e = env().await;
    edge_functions::store::policy::set_allow_additive_continue(
        &e.client,
        e.device.org_id,
        e.device.project_id,
        true,
    )
    .await
    .unwrap();
    stage(&e, DEVICE, &device_state()).await;
    let l = lineage_of(&e, e.device.device_id, "device_state").await;
    let out = approve_all(&e, scope_of(&e.device), l, &device_state(), None)
        .await
        .unwrap();
    replay(&e, l).await;
    let table = out.mirror_table_name.unwrap();
    let additive = SchemaColumns::new(
        "device_state",
        [
            device_state().columns.clone(),
            vec![col("note", "TEXT", 0, 0)],
        ]
        .concat(),
    );
    let b = row_batch(
        e.id(),
        e.id(),
        &additive,
        true,
        &[(
            2,
            "insert",
            json!({"id": 3}),
            json!({"id": 3, "mode": "off", "setpoint": 1.0, "note": "written during review"}),
        )],
    );
    let (m, st, _) = accepted_counts(&e.rows(&b).await);
    assert_eq!(m, 1, "the old columns keep materializing");
    assert_eq!(st, 1, "the full row image is staged for the review");
    let reason: String = e
        .client
        .query_one(
            "SELECT staging_reason FROM edge_staged_rows WHERE schema_hash = $1",
            &[&additive.schema_hash()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "schema_review");
    approve_all(&e, scope_of(&e.device), l, &additive, None)
        .await
        .unwrap();
    replay(&e, l).await;
    let note: Option<String> = e
        .client
        .query_one(&format!("SELECT note FROM {table} WHERE id = 3"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note.as_deref(), Some("written during review"));
    assert_eq!(lineage_row(&e, l).await.2, 0, "nothing left staged");
}

/// `vals(id INTEGER PRIMARY KEY, r REAL, i INTEGER)`.
fn vals(table: &str) -> SchemaColumns {
    SchemaColumns::new(
        table,
        vec![
            col("id", "INTEGER", 1, 1),
            col("r", "REAL", 0, 0),
            col("i", "INTEGER", 0, 0),
        ],
    )
}

/// The REAL edges: (id, JSON spelling of r, the double the mirror must hold).
fn real_edges() -> Vec<(i64, &'static str, f64)> {
    vec![
        (1, "9007199254740993", 9_007_199_254_740_992.0), // 2^53+1 → nearest double
        (2, "1152921504606847000", 1_152_921_504_606_846_976.0), // 2^60, snapshot spelling
        (3, "1.15292150460685e+18", 1.152_921_504_606_85e18), // 3.40 trigger spelling
        (4, "9.223372036854776e18", 9_223_372_036_854_775_808.0), // 2^63
        (5, "1e308", 1e308),
        (6, "-1e308", -1e308),
        (7, "-0.0", -0.0),
        (8, "5e-324", 5e-324), // smallest subnormal
        (
            9,
            "2.2250738585072009e-308",
            f64::from_bits(0x000f_ffff_ffff_ffff),
        ), // largest subnormal
        (10, "7", 7.0),        // an integer spelling in a REAL column
        (11, "-9223372036854775808", -9_223_372_036_854_775_808.0),
    ]
}

/// Rows of [`vals`] with `r` spelled as given and an integral REAL in the INTEGER column.
fn real_rows() -> Vec<Change> {
    real_edges()
        .into_iter()
        .map(|(id, r, _)| {
            let row: serde_json::Value =
                serde_json::from_str(&format!(r#"{{"id": {id}, "r": {r}, "i": 5.0}}"#)).unwrap();
            (id, "insert", json!({"id": id}), row)
        })
        .collect()
}

async fn check_reals(e: &Env, table: &str, path: &str) {
    let rows = e
        .client
        .query(&format!("SELECT id, r, i FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        real_edges().len(),
        "{path}: every edge row materialized"
    );
    for ((id, spelled, want), r) in real_edges().into_iter().zip(&rows) {
        assert_eq!(r.get::<_, i64>(0), id);
        let got: f64 = r.get(1);
        // jsonb (the staging store) has no negative zero: replay keeps the value, not the sign.
        let same = if want == 0.0 && path == "replay" {
            got == 0.0
        } else {
            got.to_bits() == want.to_bits()
        };
        assert!(
            same,
            "{path}: r spelled {spelled} is {got:e}, want {want:e}"
        );
        assert_eq!(
            r.get::<_, Option<i64>>(2),
            Some(5),
            "{path}: integral REAL in INTEGER"
        );
    }
}

/// Defect 12 (reliability.md §6): a REAL column's value is a double whatever its JSON
/// spelling, on the live path and on replay; no refusal, no breaker, no pause.
#[tokio::test]
async fn defect12_real_edges_materialize_on_the_live_path_and_on_replay() {
    let e = env().await;
    // Replay: staged for review (through jsonb), then approved and drained.
    let replayed = vals("replayed");
    let b = row_batch(e.id(), e.id(), &replayed, true, &real_rows());
    accepted_counts(&e.rows(&b).await);
    let lr = lineage_of(&e, e.device.device_id, "replayed").await;
    let out = approve_all(&e, scope_of(&e.device), lr, &replayed, None)
        .await
        .unwrap();
    replay(&e, lr).await;
    check_reals(&e, &out.mirror_table_name.unwrap(), "replay").await;
    let (status, _, staged, error) = lineage_row(&e, lr).await;
    assert_eq!((status.as_str(), staged), ("active", 0), "{error:?}");

    // Live: approved first, then the batch.
    let live = vals("live");
    stage(&e, DEVICE, &live).await;
    let ll = lineage_of(&e, e.device.device_id, "live").await;
    let out = approve_all(&e, scope_of(&e.device), ll, &live, None)
        .await
        .unwrap();
    replay(&e, ll).await;
    let table = out.mirror_table_name.unwrap();
    e.client
        .batch_execute(&format!("DELETE FROM {table}"))
        .await
        .unwrap();
    let b = row_batch(e.id(), e.id(), &live, true, &real_rows());
    let (m, _, failed) = accepted_counts(&e.rows(&b).await);
    assert_eq!((m, failed), (11, 0));
    check_reals(&e, &table, "live").await;
    assert_eq!(lineage_row(&e, ll).await.0, "active");
}

/// Defect 12, the breaker rule (reliability.md §4, §6): unfit rows in batches that also
/// materialize rows are staged as `materialization_failed` without pausing; batches where
/// nothing fits (systemic) trip the breaker after `breaker_failures` rows.
#[tokio::test]
async fn defect12_unfit_rows_are_staged_without_pausing_healthy_traffic() {
    let e = env().await;
    let t = vals("mixed");
    stage(&e, DEVICE, &t).await;
    let l = lineage_of(&e, e.device.device_id, "mixed").await;
    approve_all(&e, scope_of(&e.device), l, &t, None)
        .await
        .unwrap();
    replay(&e, l).await;
    // 6 unfit rows (a fraction / a REAL beyond i64 in the INTEGER column) among 4 good ones.
    let rows: Vec<Change> = (1..=10)
        .map(|id| {
            let i = match id {
                1..=3 => json!(9.5),
                4..=6 => json!(1e19),
                _ => json!(id),
            };
            (
                id,
                "insert",
                json!({"id": id}),
                json!({"id": id, "r": 1.0, "i": i}),
            )
        })
        .collect();
    let (m, _, failed) =
        accepted_counts(&e.rows(&row_batch(e.id(), e.id(), &t, true, &rows)).await);
    assert_eq!((m, failed), (4, 6));
    let (status, reason, staged, error) = lineage_row(&e, l).await;
    assert_eq!(
        (status.as_str(), reason, staged),
        ("active", None, 6),
        "a few unfit rows paused healthy traffic"
    );
    assert!(error.unwrap_or_default().contains("does not fit bigint"));
    // Systemic: 5 batches in which nothing fits trip the breaker.
    for id in 20..25 {
        let rows = vec![(
            id,
            "insert",
            json!({"id": id}),
            json!({"id": id, "r": 1.0, "i": 0.5}),
        )];
        accepted_counts(&e.rows(&row_batch(e.id(), e.id(), &t, true, &rows)).await);
    }
    let (status, reason, _, _) = lineage_row(&e, l).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("paused", Some("circuit_breaker"))
    );
}

/// One insert of `device_state` + `added col` at commit_seq = id, setpoint id + 0.5.
fn with_added(
    epoch: Uuid,
    schema: &SchemaColumns,
    id: i64,
    mode: &str,
    added: &str,
) -> serde_json::Value {
    row_batch(
        Uuid::now_v7(),
        epoch,
        schema,
        true,
        &[(
            id,
            "insert",
            json!({"id": id}),
            json!({"id": id, "mode": mode, "setpoint": id as f64 + 0.5, "added col": added}),
        )],
    )
}

/// Found by the soak (docs/reliability.md §6): two reviews of one lineage queued at once (the
/// application ran an ADD COLUMN before the first review was decided), approved newest first.
/// Approving the older schema must bind its backlog, not move the lineage's approved schema
/// back: the newer column stays bound, the rows keep filling it.
#[tokio::test]
async fn approving_an_older_review_after_a_newer_one_keeps_the_newer_schema_approved() {
    let e = env().await;
    let old = device_state();
    let new = SchemaColumns::new(
        "device_state",
        [old.columns.clone(), vec![col("added col", "TEXT", 0, 0)]].concat(),
    );
    let epoch = e.id();
    let b = row_batch(Uuid::now_v7(), epoch, &old, true, &[ins(1, 1, "on", 1.5)]);
    e.rows(&b).await;
    e.rows(&with_added(epoch, &new, 2, "off", "during review"))
        .await;
    let l = lineage_of(&e, e.device.device_id, "device_state").await;
    let queued = e
        .scalar_i64("SELECT count(*) FROM edge_schema_reviews WHERE state = 'queued'")
        .await;
    assert_eq!(queued, 2, "one review per schema");

    let out = approve_all(&e, scope_of(&e.device), l, &new, None)
        .await
        .unwrap();
    replay(&e, l).await;
    approve_all(&e, scope_of(&e.device), l, &old, None)
        .await
        .unwrap();
    replay(&e, l).await;
    let table = out.mirror_table_name.unwrap();

    let approved: Option<String> = e
        .client
        .query_one(
            "SELECT approved_schema_hash FROM edge_table_lineages WHERE id = $1",
            &[&l],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        approved.as_deref(),
        Some(new.schema_hash().as_str()),
        "the device is on the newer schema: it stays the approved one"
    );
    // A later row of the newer schema fills the newer column.
    let (m, st, f) = accepted_counts(&e.rows(&with_added(epoch, &new, 3, "on", "after")).await);
    assert_eq!((m, st, f), (1, 0, 0));
    let rows = e
        .client
        .query(
            &format!("SELECT id, mode, \"added col\" FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Some("on".into()), None),
            (2, Some("off".into()), Some("during review".into())),
            (3, Some("on".into()), Some("after".into())),
        ]
    );
    let (status, _, staged, _) = lineage_row(&e, l).await;
    assert_eq!((status.as_str(), staged), ("active", 0));
}
