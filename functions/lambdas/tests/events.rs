//! Event forwarding (cloud.md §11) on real PostgreSQL: each event is handed on once per
//! forwarder cursor, a failed forward leaves the cursor (the batch is sent again), and an event
//! whose transaction commits late is neither skipped nor overtaken.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;

use common::*;
use edge_functions::events::{forward_events, EventForwarder, ForwardError};
use edge_functions::store::forwarding::ForwardEvent;

#[derive(Default)]
struct Collect {
    seen: Mutex<Vec<i64>>,
    fail: bool,
}

impl EventForwarder for Collect {
    fn name(&self) -> &str {
        "test"
    }

    async fn forward(&self, events: &[ForwardEvent]) -> Result<(), ForwardError> {
        if self.fail {
            return Err(ForwardError("bus unavailable".into()));
        }
        self.seen
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.id));
        Ok(())
    }
}

async fn insert_event(c: &tokio_postgres::Client, env: &Env, kind: &str) {
    c.execute(
        "INSERT INTO edge_events (event_type, org_id, project_id) VALUES ($1, $2, $3)",
        &[&kind, &env.device.org_id, &env.device.project_id],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn events_are_forwarded_at_least_once_in_commit_order() {
    let env = env().await;
    // A first table opens a review: one queued event, written with the staging.
    let b = row_batch(
        env.id(),
        env.id(),
        &device_state(),
        true,
        &[ins(1, 1, "heat", 20.5)],
    );
    env.rows(&b).await;
    let total = env.scalar_i64("SELECT count(*) FROM edge_events").await;
    assert!(total >= 1);

    // A failing destination keeps the cursor where it was.
    let failing = Collect {
        fail: true,
        ..Collect::default()
    };
    assert!(forward_events(&env.deps, &failing, 2, 10).await.is_err());

    let f = Collect::default();
    let n = forward_events(&env.deps, &f, 2, 10).await.unwrap();
    assert_eq!(n as i64, total, "batches of 2 until the feed is drained");
    assert_eq!(forward_events(&env.deps, &f, 2, 10).await.unwrap(), 0);

    // An event whose transaction is still open holds back everything after it...
    let late = env.db.connect().await;
    late.batch_execute("BEGIN").await.unwrap();
    insert_event(&late, &env, "late").await;
    insert_event(&env.client, &env, "early").await;
    assert_eq!(forward_events(&env.deps, &f, 100, 10).await.unwrap(), 0);
    // ...and once it commits, both go, the late one first (its transaction is older).
    late.batch_execute("COMMIT").await.unwrap();
    assert_eq!(forward_events(&env.deps, &f, 100, 10).await.unwrap(), 2);
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len() as i64, total + 2);
    let mut dedup = seen.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "each event once: {seen:?}");
    let order: Vec<String> = env
        .client
        .query(
            "SELECT event_type FROM edge_events WHERE id = ANY($1) ORDER BY array_position($1, id)",
            &[&seen[seen.len() - 2..].to_vec()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["late", "early"]);
    let forwarded = env
        .scalar_i64("SELECT forwarded FROM edge_event_forwarding WHERE forwarder = 'test'")
        .await;
    assert_eq!(forwarded, total + 2);
}
