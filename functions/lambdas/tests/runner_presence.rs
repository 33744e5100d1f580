//! Issue 13 (reliability.md §2, last bullet): several runners of one database share one object
//! store. A runner refuses to start with a local spill directory that a live runner of the same
//! database does not share; with the same directory both run.
#![allow(clippy::unwrap_used)]

mod common;
mod runner_process;

use std::time::Duration;

use edge_e2e::{Broker, Pki};
use runner_process::RunnerProcess;

#[tokio::test(flavor = "multi_thread")]
async fn runners_with_different_spill_dirs_second_refuses_same_dir_both_run() {
    let env = common::env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let url = env.db.url();
    let shared = dir.path().join("shared-spill");
    let shared_arg = shared.to_str().unwrap().to_owned();
    let first = RunnerProcess::start_with_args(
        &url,
        &broker,
        &pki,
        dir.path(),
        "edge-service-1",
        &[],
        &["--spill-dir", &shared_arg],
    );

    // Another directory: refused, with a message naming the live runner's directory.
    let other = dir.path().join("other-spill");
    let mut second = RunnerProcess::spawn(
        &url,
        &broker,
        &pki,
        dir.path(),
        "edge-service-2",
        &[],
        &["--spill-dir", other.to_str().unwrap()],
    );
    let status = second.wait_exit(Duration::from_secs(30));
    let log = second.log_text();
    let status =
        status.unwrap_or_else(|| panic!("a runner with another spill dir kept running:\n{log}"));
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("refusing to start") && log.contains("shared-spill"),
        "{log}"
    );

    // The same directory: both run.
    let _third = RunnerProcess::start_with_args(
        &url,
        &broker,
        &pki,
        dir.path(),
        "edge-service-3",
        &[],
        &["--spill-dir", &shared_arg],
    );
    drop(first);
}
