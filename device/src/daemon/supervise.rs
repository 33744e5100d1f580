//! The daemon under its own supervision: a storage failure (state.db or source.db — disk full,
//! an I/O error, a lock held past the busy timeout) does not end the process. The daemon stops,
//! waits with backoff and starts over from what state.db committed, exactly as after a
//! restart; every other error still ends the run.
//!
//! Why not leave it to the service manager: a full disk lasts minutes, and an agent that exits
//! on it depends on being restarted — the packaged unit restarts it (`Restart=on-failure`,
//! `RestartSec=5s`), a container without a restart policy or a hand-started agent stays down.
//! Storage running out is the device's environment, not bad data; the agent rides it out.
//! Starting over in-process is what a restart does (the fault suite's kill -9 proves a restart
//! from state.db loses nothing), without leaving the process.

use std::future::Future;
use std::time::{Duration, Instant};

use rusqlite::ErrorCode;
use tracing::{error, info};

use super::{Daemon, DaemonError};
use crate::capture::CaptureError;
use crate::settings::Settings;
use crate::state::StateError;

/// First pause after a storage failure; doubled up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between two starts.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A run this long resets the pause to [`FIRST_PAUSE`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl DaemonError {
    /// The storage under state.db or source.db failed for now: worth starting over from
    /// state.db after a pause.
    pub fn is_storage_unavailable(&self) -> bool {
        let sqlite = match self {
            DaemonError::State(StateError::Sqlite(e))
            | DaemonError::Capture(CaptureError::Sqlite(e))
            | DaemonError::Capture(CaptureError::State(StateError::Sqlite(e))) => e,
            _ => return false,
        };
        matches!(
            sqlite.sqlite_error_code(),
            Some(
                ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
            )
        )
    }
}

/// The pause before the next start, after a run of `ran` that followed a pause of `last`.
fn next_pause(last: Option<Duration>, ran: Duration) -> Duration {
    match last {
        Some(p) if ran < HEALTHY_RUN => (p * 2).min(MAX_PAUSE),
        _ => FIRST_PAUSE,
    }
}

/// Opens and runs the daemon until `shutdown`, starting it over after a storage failure
/// (module docs). Returns the first error that is not one.
pub async fn run_supervised(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    tokio::pin!(shutdown);
    // The metrics endpoint outlives the daemon's restarts: started once, after the first open
    // brought state.db's layout up to date, it keeps serving what the files say while the
    // daemon starts over.
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut metrics = settings.observability.metrics_listen;
    let mut pause: Option<Duration> = None;
    let mut starts: u64 = 0;
    loop {
        let started = Instant::now();
        let result = match Daemon::open(settings.clone()) {
            Ok(daemon) => {
                if let Some(addr) = metrics.take() {
                    start_metrics(addr, &settings, &connected)?;
                }
                daemon
                    .with_connected_flag(connected.clone())
                    .run(&mut shutdown)
                    .await
            }
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_storage_unavailable() => e,
            Err(e) => return Err(e),
        };
        starts += 1;
        let p = next_pause(pause, started.elapsed());
        pause = Some(p);
        error!(error = %e, retry_in_ms = p.as_millis() as u64, starts,
            "storage failed: the agent starts over from state.db after a pause");
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(p) => {}
        }
        info!(starts, "starting over after a storage failure");
    }
}

/// Starts the metrics endpoint's thread (`metrics::serve`).
fn start_metrics(
    addr: std::net::SocketAddr,
    settings: &Settings,
    connected: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), DaemonError> {
    let r = &settings.replication;
    crate::metrics::serve::spawn(
        addr,
        crate::metrics::serve::Scrape {
            state_db: r.state_db_path.clone(),
            source_db: r.source_db_path.clone(),
            device: settings.connection.device_name.clone(),
            connected: connected.clone(),
        },
    )
    .map_err(DaemonError::Metrics)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sqlite(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn storage_failures_are_told_from_the_rest() {
        let full = DaemonError::State(StateError::Sqlite(sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert!(full.is_storage_unavailable());
        let io = DaemonError::Capture(CaptureError::Sqlite(sqlite(rusqlite::ffi::SQLITE_IOERR)));
        assert!(io.is_storage_unavailable());
        let nested = DaemonError::Capture(CaptureError::State(StateError::Sqlite(sqlite(
            rusqlite::ffi::SQLITE_BUSY,
        ))));
        assert!(nested.is_storage_unavailable());
        let corrupt = DaemonError::State(StateError::Sqlite(sqlite(rusqlite::ffi::SQLITE_CORRUPT)));
        assert!(!corrupt.is_storage_unavailable());
        let bad = DaemonError::State(StateError::Corrupt {
            what: "x",
            value: "y".into(),
        });
        assert!(!bad.is_storage_unavailable());
    }

    #[test]
    fn pauses_double_to_the_cap_and_reset_after_a_healthy_run() {
        let quick = Duration::from_secs(1);
        let mut p = next_pause(None, quick);
        assert_eq!(p, FIRST_PAUSE);
        for _ in 0..10 {
            p = next_pause(Some(p), quick);
        }
        assert_eq!(p, MAX_PAUSE);
        assert_eq!(next_pause(Some(p), HEALTHY_RUN), FIRST_PAUSE);
    }
}
