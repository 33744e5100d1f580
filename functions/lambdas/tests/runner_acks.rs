//! Issue 13 defect 1 (reliability.md §1): the local runner PUBACKs a PUBLISH only after its
//! outcome is committed. A kill -9 of `edge-cloud run` between receiving a batch and committing
//! it loses nothing: the broker redelivers the unacked message to the restarted runner.
#![allow(clippy::unwrap_used)]

mod common;
mod runner_process;

use std::time::Duration;

use common::{device_state, ins, row_batch};
use edge_e2e::{Broker, Pki, TestClient};
use runner_process::RunnerProcess;

const STAGED: &str = "SELECT count(*) FROM edge_staged_rows";

#[tokio::test(flavor = "multi_thread")]
async fn runner_puback_before_handle_kill_between_receive_and_commit_loses_nothing() {
    let env = common::env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let url = env.db.url();

    // The runner dies (abort, like kill -9) right after receiving the first PUBLISH.
    let mut runner = RunnerProcess::start(
        &url,
        &broker,
        &pki,
        dir.path(),
        "edge-service",
        &[("FAILPOINTS", "runner_after_receive=return")],
    );
    let device = pki.device(common::DEVICE);
    let mut gw = TestClient::connect(broker.mqtt_options(common::DEVICE, &device))
        .await
        .unwrap();
    let batch = row_batch(
        env.id(),
        env.id(),
        &device_state(),
        true,
        &[
            ins(1, 1, "auto", 20.5),
            ins(2, 2, "manual", 18.0),
            ins(3, 3, "off", 0.0),
        ],
    );
    // The broker's PUBACK to the device: from here the device may delete the journal rows.
    gw.publish(
        &format!("{}/{}/sync/rows/batch", common::SLUG, common::DEVICE),
        batch.to_string(),
    )
    .await;
    let status = runner
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the failpoint did not fire:\n{}", runner.log_text()));
    assert!(!status.success(), "the runner aborted: {status}");
    assert_eq!(
        env.scalar_i64(STAGED).await,
        0,
        "nothing committed before the crash"
    );

    // Restarted without the failpoint, the runner gets the unacked message again.
    let runner = RunnerProcess::start(&url, &broker, &pki, dir.path(), "edge-service", &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.scalar_i64(STAGED).await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch received before the crash was lost (staged rows: {}); runner log:\n{}",
            env.scalar_i64(STAGED).await,
            runner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.scalar_i64(STAGED).await, 3);
    gw.disconnect().await;
}
