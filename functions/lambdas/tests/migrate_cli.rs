//! `edge-cloud migrate` as an operator runs it (issue 14, docs/deploy.md "TimescaleDB"): on plain
//! PostgreSQL it migrates, says in one line that no TimescaleDB policies apply, and is idempotent;
//! a bad policy age is refused before the database is touched, naming the value. (TimescaleDB
//! itself is not installable on this machine — no Debian package, no registry access — so the
//! policy statements are checked by `edge_cloud_core::timescale`'s unit tests, not executed.)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use edge_e2e::TestDatabase;

fn edge_cloud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("EDGE_TS_TELEMETRY_COMPRESS_AFTER")
        .env_remove("EDGE_TS_TELEMETRY_RETENTION")
        .output()
        .unwrap()
}

#[test]
fn migrate_on_plain_postgres_reports_no_timescale_policies_and_is_idempotent() {
    let db = TestDatabase::create();
    let url = db.url();
    for _ in 0..2 {
        let out = edge_cloud(&["migrate", "--database-url", &url]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains("timescaledb not installed: plain tables"),
            "{stdout}"
        );
    }
}

#[test]
fn migrate_refuses_a_bad_policy_age_before_touching_the_database() {
    // An address nothing listens on: a refusal must come before any connection attempt.
    let url = "postgres://edge@127.0.0.1:1/edge";
    let out = edge_cloud(&[
        "migrate",
        "--database-url",
        url,
        "--telemetry-retention",
        "90 days",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("policy age \"90 days\""), "{stderr}");
    let out = edge_cloud(&[
        "migrate",
        "--database-url",
        url,
        "--telemetry-compress-after",
        "30d",
        "--telemetry-retention",
        "7d",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is not earlier than its retention"),
        "{stderr}"
    );
}
