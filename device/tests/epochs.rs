//! Issue 13, defect 7 (reliability.md §5): a new journal epoch's UUIDv7 is strictly greater than
//! the previous epoch known in state.db, whatever the device's clock says — max(now, previous +
//! 1 ms). A gateway without an RTC that starts before NTP must not write an epoch that sorts
//! below the old one (the mirror's version guard would ignore everything after it).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use edge_agent::capture::{Capture, IdSource};
use edge_agent::state::StateDb;
use edge_protocol::ids::{new_uuid_v7, uuid_v7_unix_ms};
use uuid::Uuid;

/// An injected clock the test sets back.
struct Clock {
    ms: u64,
    n: u8,
}

impl IdSource for Clock {
    fn new_v7(&mut self) -> Uuid {
        self.n = self.n.wrapping_add(1);
        new_uuid_v7(self.ms, [self.n; 10])
    }
    fn new_random(&mut self) -> Uuid {
        self.new_v7()
    }
}

const DAY_MS: u64 = 86_400_000;

#[test]
fn defect_7_new_epoch_with_clock_set_back_sorts_after_the_previous_one() {
    let env = Env::new();
    let app = env.app();
    app.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    let mut state = env.state();
    let mut clock = Clock {
        ms: 1_800_000_000_000,
        n: 0,
    };
    let (mut cap, _) =
        Capture::open(&env.source_path(), no_snapshot(), &mut state, &mut clock).unwrap();
    let first = state.journal_epoch().unwrap().unwrap();
    app.execute_batch("INSERT INTO t VALUES (2, 'b'); INSERT INTO t VALUES (3, 'c');")
        .unwrap();
    cap.poll(&mut state, &mut clock).unwrap();

    // Power cut; the gateway boots with its clock a day behind and the journal was reset
    // (restored from a backup): the poll starts a new epoch.
    clock.ms -= DAY_MS;
    app.execute_batch("DELETE FROM \"__omega_journal\";")
        .unwrap();
    let report = cap.poll(&mut state, &mut clock).unwrap();
    assert!(report.new_epoch.is_some(), "{report:?}");
    let second = state.journal_epoch().unwrap().unwrap();
    assert!(
        second > first,
        "new epoch {second} sorts below the previous {first} (clock set back a day)"
    );
    assert_eq!(
        uuid_v7_unix_ms(&second),
        Some(uuid_v7_unix_ms(&first).unwrap() + 1)
    );

    // And on re-attach (the source file replaced), with the clock still behind.
    drop(cap);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", env.source_path().display()));
    }
    let app = env.app();
    app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let (_cap, report) =
        Capture::open(&env.source_path(), no_snapshot(), &mut state, &mut clock).unwrap();
    assert!(report.new_epoch.is_some(), "{report:?}");
    let third = state.journal_epoch().unwrap().unwrap();
    assert!(third > second, "{third} <= {second}");
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connection]
server_url = "mqtts://127.0.0.1:1"
device_name = "dev-epoch"
root_topic = "acme/dev-epoch"
ca_cert_path = "{d}/ca.crt"
client_cert_path = "{d}/device.crt"
client_key_path = "{d}/device.key"

[sqlite-replication]
source_db_path = "{d}/source.db"
state_db_path = "{d}/state.db"
"#,
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

fn epoch_in(state: &Path) -> Uuid {
    StateDb::open(state)
        .unwrap()
        .journal_epoch()
        .unwrap()
        .unwrap()
}

/// The same with the real binary and the real clock set back by `faketime` (installed by
/// `apt-get install faketime`; the test says so and returns when it is missing).
#[test]
fn defect_7_agent_process_under_faketime_keeps_epochs_increasing() {
    if Command::new("faketime").arg("--version").output().is_err() {
        eprintln!("SKIPPED: faketime is not installed (apt-get install -y faketime)");
        return;
    }
    let env = Env::new();
    let config = write_config(env.dir.path());
    let new_source = || {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", env.source_path().display()));
        }
        env.app()
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
    };
    let agent = |faketime: Option<&str>| {
        let bin = env!("CARGO_BIN_EXE_edge-agent");
        let mut cmd = match faketime {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.arg("-f").arg(offset).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let out = cmd
            .args(["snapshot", "--config", config.to_str().unwrap()])
            // signed_control is on by default (reliability.md §7): the key must be there.
            .env("OMEGA_AUTH_TOKEN", "00".repeat(32))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "edge-agent snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    new_source();
    agent(None);
    let first = epoch_in(&env.state_path());
    // A replaced source database starts a new epoch; the clock is two days behind.
    new_source();
    agent(Some("-2d"));
    let second = epoch_in(&env.state_path());
    assert!(
        second > first,
        "epoch started under faketime -2d: {second} sorts below {first}"
    );
}
