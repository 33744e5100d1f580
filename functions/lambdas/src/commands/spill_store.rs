//! One object store per database (reliability.md §2): `edge-cloud run` refuses to start with a
//! local spill directory that another live runner of the same database does not share.
//!
//! A directory's identity is a random id in its marker file `.edge-spill-id` (written on first
//! use), so two paths to one shared mount are the same store and two look-alike paths on two
//! machines are not. At start the runner registers (runner id, directory id, heartbeat) in
//! `edge_runner_presence`; a live runner — heartbeat younger than [`LIVE_WITHIN`] — with another
//! directory id makes it refuse with a message naming both directories. A heartbeat task keeps
//! the row fresh every [`HEARTBEAT`]; a clean shutdown removes it (a killed runner's row ages out).

use std::path::Path;
use std::time::Duration;

use deadpool_postgres::Pool;
use edge_cloud_store::presence::{self, OtherStore};
use uuid::Uuid;

use super::CommandError;

/// The marker file in the spill directory.
pub const MARKER_FILE: &str = ".edge-spill-id";
/// How often a runner refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A runner is live while its heartbeat is younger than this.
pub const LIVE_WITHIN: Duration = Duration::from_secs(20);

/// This runner's presence row.
#[derive(Debug, Clone)]
pub struct Presence {
    pub runner_id: Uuid,
    pub dir_id: Uuid,
    pub dir: String,
    pub host: String,
}

/// The directory's id, from its marker file (created with a fresh id when missing).
pub fn spill_dir_id(dir: &Path) -> Result<Uuid, CommandError> {
    let marker = dir.join(MARKER_FILE);
    let io = |what: &str, source| CommandError::Io {
        what: format!("{what} {}", marker.display()),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut f) => {
            use std::io::Write as _;
            let id = Uuid::now_v7();
            f.write_all(id.to_string().as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io("writing", e))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&marker).map_err(|e| io("reading", e))?;
            Uuid::parse_str(text.trim()).map_err(|_| {
                CommandError::Refused(format!(
                    "{} does not hold a spill directory id (a UUID); remove it to start afresh",
                    marker.display()
                ))
            })
        }
        Err(e) => Err(io("creating", e)),
    }
}

fn refusal(me: &Presence, other: &OtherStore) -> CommandError {
    CommandError::Refused(format!(
        "refusing to start: runner {} (host {:?}, heartbeat {:.0} s ago) of this database uses the \
         spill directory {:?} (id {}), not {:?} (id {}). Runners of one database must share one \
         object store: give every runner the same directory (a shared mount) with --spill-dir, \
         or stop the other runner first",
        other.runner_id,
        other.host,
        other.heartbeat_age_s,
        other.spill_dir,
        other.spill_dir_id,
        me.dir,
        me.dir_id
    ))
}

/// Registers this runner, or refuses (another live runner, another directory).
pub async fn register(pool: &Pool, dir: &Path) -> Result<Presence, CommandError> {
    let me = Presence {
        runner_id: Uuid::now_v7(),
        dir_id: spill_dir_id(dir)?,
        dir: dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
    };
    let mut c = pool.get().await.map_err(CommandError::Connect)?;
    let tx = c
        .transaction()
        .await
        .map_err(edge_cloud_store::StoreError::from)?;
    let other = presence::register(
        &*tx,
        me.runner_id,
        me.dir_id,
        &me.dir,
        &me.host,
        LIVE_WITHIN.as_secs_f64(),
    )
    .await?;
    tx.commit()
        .await
        .map_err(edge_cloud_store::StoreError::from)?;
    match other {
        Some(other) => Err(refusal(&me, &other)),
        None => {
            tracing::info!(runner_id = %me.runner_id, spill_dir = %me.dir, spill_dir_id = %me.dir_id,
                "registered in edge_runner_presence");
            Ok(me)
        }
    }
}

/// Refreshes the heartbeat until aborted; a failed refresh is logged and retried.
pub async fn heartbeat_loop(pool: Pool, me: Presence) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let result = match pool.get().await {
            Ok(c) => presence::heartbeat(&**c, me.runner_id, me.dir_id, &me.dir, &me.host)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "runner heartbeat failed; retrying");
        }
    }
}

/// Removes this runner's row (clean shutdown); best effort.
pub async fn deregister(pool: &Pool, me: &Presence) {
    if let Ok(c) = pool.get().await {
        if let Err(e) = presence::deregister(&**c, me.runner_id).await {
            tracing::warn!(error = %e, "removing the runner's presence row");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_marker_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = spill_dir_id(dir.path()).unwrap();
        assert_eq!(spill_dir_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(spill_dir_id(other.path()).unwrap(), first);
        std::fs::write(dir.path().join(MARKER_FILE), "junk").unwrap();
        assert!(matches!(
            spill_dir_id(dir.path()),
            Err(CommandError::Refused(_))
        ));
    }
}
