//! Permanent failures are parked, not dropped: an SQS record whose handling fails with a
//! non-transient error (here: the ledger table is missing, as after a botched migration) or
//! whose body is not an envelope becomes a dead letter with its body and is acknowledged; once
//! the cause is fixed, a retry applies it exactly once. If even the dead letter cannot be
//! written, the record is handed back to SQS.
#![allow(clippy::unwrap_used)]

mod common;

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use edge_cloud_core::ingress::envelope;
use edge_functions::dead_letter::{retry, retry_open, RetryOutcome};
use edge_functions::sqs::handle_sqs;
use edge_functions::store::dead_letters::{list, open_count};
use serde_json::json;

fn sqs_event(records: &[(&str, String)]) -> SqsEvent {
    let records: Vec<_> = records
        .iter()
        .map(|(id, body)| json!({"messageId": id, "body": body, "eventSource": "aws:sqs"}))
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn rows_envelope(env: &Env) -> String {
    let batch = row_batch(
        env.id(),
        env.id(),
        &device_state(),
        true,
        &[ins(1, 1, "auto", 21.5), ins(2, 2, "manual", 19.0)],
    );
    let topic = format!("{SLUG}/{DEVICE}/sync/rows/batch");
    serde_json::to_string(&envelope(
        &topic,
        DEVICE,
        1_733_000_000_000,
        batch.to_string().as_bytes(),
    ))
    .unwrap()
}

#[tokio::test]
async fn permanent_failures_are_parked_and_retried_once_fixed() {
    let env = env().await;
    let good = rows_envelope(&env);
    env.client
        .batch_execute("ALTER TABLE edge_export_segments RENAME TO edge_export_segments_away")
        .await
        .unwrap();

    let response = handle_sqs(
        &env.deps,
        sqs_event(&[("m-garbage", "{not an envelope".into()), ("m-rows", good)]),
    )
    .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "both are permanent: parked and acknowledged"
    );
    let c = env.deps.pool.get().await.unwrap();
    let parked = list(&**c, false, 0, 10).await.unwrap();
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0].message_id.as_deref(), Some("m-garbage"));
    assert_eq!(parked[0].transport, "sqs");
    // Counted where they are parked (observability.md §2).
    assert!(
        env.deps
            .metrics
            .encode()
            .contains("edge_dead_letters_total{transport=\"sqs\"} 2"),
        "{}",
        env.deps.metrics.encode()
    );
    assert_eq!(parked[0].topic, None);
    assert_eq!(parked[0].body, "{not an envelope");
    assert!(
        parked[0].error.contains("not an ingress envelope"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[1].message_id.as_deref(), Some("m-rows"));
    assert_eq!(
        parked[1].topic.as_deref(),
        Some("acme/gw-07/sync/rows/batch")
    );
    assert!(
        parked[1].error.contains("edge_export_segments"),
        "{}",
        parked[1].error
    );
    drop(c);

    // The cause is fixed; a retry applies the rows, the garbage stays open.
    env.client
        .batch_execute("ALTER TABLE edge_export_segments_away RENAME TO edge_export_segments")
        .await
        .unwrap();
    let outcomes = retry_open(&env.deps).await.unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(
        matches!(&outcomes[0].1, RetryOutcome::Failed(e) if e.contains("not an ingress envelope")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1].1, RetryOutcome::Resolved(_)),
        "{outcomes:?}"
    );
    let staged = env
        .scalar_i64("SELECT count(*) FROM edge_staged_rows")
        .await;
    let segments = env
        .scalar_i64("SELECT count(*) FROM edge_export_segments")
        .await;
    assert_eq!((staged, segments), (2, 1), "the batch arrived once");

    // A second retry is a no-op; the resolved row stays as the record.
    assert_eq!(
        retry(&env.deps, parked[1].id).await.unwrap(),
        RetryOutcome::AlreadyResolved
    );
    assert_eq!(
        retry(&env.deps, 999_999).await.unwrap(),
        RetryOutcome::NotFound
    );
    let c = env.deps.pool.get().await.unwrap();
    assert_eq!(open_count(&**c).await.unwrap(), 1);
    let all = list(&**c, true, 0, 10).await.unwrap();
    assert_eq!(all[0].attempts, 2, "the garbage was tried twice");
    assert!(all[1].resolved_at.is_some() && all[1].resolution.is_some());
}

#[tokio::test]
async fn a_failure_that_cannot_be_parked_goes_back_to_sqs() {
    let env = env().await;
    let good = rows_envelope(&env);
    env.client
        .batch_execute(
            "ALTER TABLE edge_export_segments RENAME TO edge_export_segments_away; \
             ALTER TABLE edge_dead_letters RENAME TO edge_dead_letters_away;",
        )
        .await
        .unwrap();
    let response = handle_sqs(
        &env.deps,
        sqs_event(&[("m-garbage", "[]".into()), ("m-rows", good)]),
    )
    .await;
    let ids: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        ids,
        ["m-garbage", "m-rows"],
        "nothing acknowledged unparked"
    );
}
