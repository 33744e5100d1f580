//! Pending controls: what the runner (or the sweep Lambda) must (re-)publish until acked.

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::StoreError;

/// A control due for (re-)publication.
#[derive(Debug, Clone)]
pub struct DueControl {
    pub control_id: Uuid,
    /// `{slug}/{device}/sync/ingest/control`
    pub topic: String,
    /// The stored signed envelope, byte-identical on every attempt.
    pub payload: Vec<u8>,
}

/// Claims up to `limit` due controls and schedules their next attempt with exponential
/// backoff (5 s · 2^attempts, at most 5 min), in one statement so concurrent publishers do
/// not double-send (`SKIP LOCKED`).
pub async fn due_controls(pool: &Pool, limit: i64) -> Result<Vec<DueControl>, StoreError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "WITH due AS ( \
                 SELECT control_id FROM edge_pending_controls \
                 WHERE status = 'pending' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE edge_pending_controls p SET attempts = p.attempts + 1, \
                 next_attempt_at = now() + least(interval '5 seconds' * power(2, p.attempts), \
                                                 interval '5 minutes') \
             FROM due, edge_devices d \
             WHERE p.control_id = due.control_id AND d.device_id = p.device_id \
             RETURNING p.control_id, d.topic_slug, d.device_name, p.envelope::text",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let slug: String = r.get(1);
            let name: String = r.get(2);
            let text: String = r.get(3);
            DueControl {
                control_id: r.get(0),
                topic: format!("{slug}/{name}/sync/ingest/control"),
                payload: text.into_bytes(),
            }
        })
        .collect())
}
