//! Issue 13 defect 1 (reliability.md §1): while PostgreSQL is unreachable the local runner
//! retries without a limit — it never "gives up on message" — and PUBACKs only after the
//! outcome is committed. The outage here outlasts the old give-up time (8 retries, ~51 s).
//!
//! A test binary of its own: the outage stops the process's whole private cluster.
#![allow(clippy::unwrap_used)]

mod common;
mod runner_process;

use std::time::{Duration, Instant};

use common::{device_state, ins, row_batch};
use edge_e2e::{Broker, Pki, PostgresOutage, TestClient};
use runner_process::RunnerProcess;

/// Longer than the old code's retries (200 ms × (2 + 4 + … + 64) + 2 × 12.8 s ≈ 50.8 s).
const OUTAGE: Duration = Duration::from_secs(54);

#[tokio::test(flavor = "multi_thread")]
async fn runner_puback_before_handle_postgres_outage_longer_than_the_old_give_up_loses_nothing() {
    let env = common::env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let url = env.db.url();
    let runner = RunnerProcess::start(&url, &broker, &pki, dir.path(), "edge-service", &[]);

    let outage = PostgresOutage::begin(&env.db).await.unwrap();
    let device = pki.device(common::DEVICE);
    let mut gw = TestClient::connect(broker.mqtt_options(common::DEVICE, &device))
        .await
        .unwrap();
    let batch = row_batch(
        env.id(),
        env.id(),
        &device_state(),
        true,
        &[ins(1, 1, "auto", 20.5), ins(2, 2, "manual", 18.0)],
    );
    gw.publish(
        &format!("{}/{}/sync/rows/batch", common::SLUG, common::DEVICE),
        batch.to_string(),
    )
    .await;
    // The runner has the message and fails against the stopped database.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runner.log_text().contains("retrying") {
        assert!(
            Instant::now() < deadline,
            "no retry:\n{}",
            runner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_failure = Instant::now();
    // The fault itself lasts a fixed time: longer than the old limit.
    tokio::time::sleep(OUTAGE.saturating_sub(first_failure.elapsed())).await;
    outage.end(&env.db).await.unwrap();

    let pg = env.db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged: i64 = pg
            .query_one("SELECT count(*) FROM edge_staged_rows", &[])
            .await
            .unwrap()
            .get(0);
        if staged == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch published during the outage was lost (staged rows: {staged}); runner \
             log:\n{}",
            runner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.disconnect().await;
}
