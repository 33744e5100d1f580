//! The scheduled sweep's store side (cloud.md §7): which lineages may be resumed, one
//! transaction per lineage so one slow or failing lineage does not hold the others.

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backpressure::{sweep_lineage, Resumed};
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// Lineages paused for volume (their own status or their device's), the sweep's candidates.
pub async fn volume_paused(pool: &Pool, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    let c = pool.get().await?;
    let rows = c
        .query_unnamed(
            "SELECT id FROM edge_table_lineages \
             WHERE device_pause_reason = 'volume_backpressure' \
                 OR pause_reason = 'volume_backpressure' \
             ORDER BY updated_at LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Resumes every candidate whose backlog fell below the threshold; returns what was resumed.
/// A failing lineage is reported and skipped (the next sweep retries it).
pub async fn resume_sweep(
    pool: &Pool,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<(Uuid, Result<Resumed, StoreError>)>, StoreError> {
    let mut out = Vec::new();
    for id in volume_paused(pool, limit).await? {
        let result = async {
            let mut c = pool.get().await?;
            let tx = c.transaction().await?;
            let r = sweep_lineage(&*tx, id, now).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(r)
        }
        .await;
        match result {
            Ok(None) => {}
            Ok(Some(r)) => out.push((id, Ok(r))),
            Err(e) => out.push((id, Err(e))),
        }
    }
    Ok(out)
}
