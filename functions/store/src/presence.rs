//! Runner presence (reliability.md §2): every live `edge-cloud run` of a database, with the
//! identity of its local spill directory and a heartbeat (`edge_runner_presence`). Runners of
//! one database must share one object store: [`register`] refuses a runner whose directory is
//! not the one a live runner uses.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A live runner with another spill directory.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherStore {
    pub runner_id: Uuid,
    pub spill_dir_id: Uuid,
    pub spill_dir: String,
    pub host: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
}

/// Registers `runner_id` with spill directory `spill_dir_id` unless a runner whose heartbeat
/// is younger than `live_within_s` seconds uses another directory (then that one is returned
/// and nothing is written). Rows older than that are removed on the way. Run it in a
/// transaction: the table lock makes two starting runners decide one after the other.
pub async fn register(
    c: &(impl GenericClient + Sync),
    runner_id: Uuid,
    spill_dir_id: Uuid,
    spill_dir: &str,
    host: &str,
    live_within_s: f64,
) -> Result<Option<OtherStore>, StoreError> {
    c.batch_execute("LOCK TABLE edge_runner_presence IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    c.execute_unnamed(
        "DELETE FROM edge_runner_presence \
         WHERE heartbeat_at < now() - make_interval(secs => $1)",
        &[&live_within_s],
    )
    .await?;
    let other = c
        .query_opt_unnamed(
            "SELECT runner_id, spill_dir_id, spill_dir, host, \
                    extract(epoch FROM now() - heartbeat_at)::float8 \
             FROM edge_runner_presence \
             WHERE spill_dir_id <> $1 AND runner_id <> $2 \
             ORDER BY heartbeat_at DESC LIMIT 1",
            &[&spill_dir_id, &runner_id],
        )
        .await?;
    if let Some(r) = other {
        return Ok(Some(OtherStore {
            runner_id: r.get(0),
            spill_dir_id: r.get(1),
            spill_dir: r.get(2),
            host: r.get(3),
            heartbeat_age_s: r.get(4),
        }));
    }
    c.execute_unnamed(
        "INSERT INTO edge_runner_presence (runner_id, spill_dir_id, spill_dir, host) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (runner_id) DO UPDATE SET spill_dir_id = EXCLUDED.spill_dir_id, \
             spill_dir = EXCLUDED.spill_dir, host = EXCLUDED.host, heartbeat_at = now()",
        &[&runner_id, &spill_dir_id, &spill_dir, &host],
    )
    .await?;
    Ok(None)
}

/// Refreshes the heartbeat of `runner_id` (re-inserting the row if it was swept meanwhile).
pub async fn heartbeat(
    c: &(impl GenericClient + Sync),
    runner_id: Uuid,
    spill_dir_id: Uuid,
    spill_dir: &str,
    host: &str,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_runner_presence (runner_id, spill_dir_id, spill_dir, host) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (runner_id) DO UPDATE SET heartbeat_at = now()",
        &[&runner_id, &spill_dir_id, &spill_dir, &host],
    )
    .await?;
    Ok(())
}

/// Removes `runner_id` (a clean shutdown).
pub async fn deregister(
    c: &(impl GenericClient + Sync),
    runner_id: Uuid,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "DELETE FROM edge_runner_presence WHERE runner_id = $1",
        &[&runner_id],
    )
    .await?;
    Ok(())
}
