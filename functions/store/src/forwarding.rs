//! Event forwarding (cloud.md §11): governance events are written in the transaction that
//! causes them; a forwarder (EventBridge in AWS, a log line locally) hands them on from a
//! cursor kept per forwarder in `edge_event_forwarding`.
//!
//! Delivery is at least once: [`claim_batch`] locks the forwarder's cursor row and reads the
//! next events, the caller forwards them, and [`advance`] moves the cursor in the same
//! transaction before it commits. A crash between forwarding and commit re-sends that batch;
//! nothing is ever skipped, because only events whose transaction is older than every running
//! one are read, in `(xid, id)` order (migration 0005).

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::scope::ts;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// One event to forward.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardEvent {
    pub id: i64,
    pub event_type: String,
    pub org_id: Uuid,
    pub project_id: Uuid,
    pub subject_id: Option<Uuid>,
    pub payload: serde_json::Value,
    /// RFC 3339.
    pub created_at: String,
}

/// The batch read under the cursor lock, and where the cursor goes once it is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub events: Vec<ForwardEvent>,
    /// `(xid, id)` of the last event, as text for the xid (tokio-postgres has no xid8 type).
    pub last: Option<(String, i64)>,
}

/// Locks the forwarder's cursor (creating it at the start of the feed) and reads up to `limit`
/// committed events after it. `None` when another worker holds the cursor: it is forwarding the
/// same events right now. Call inside a transaction and [`advance`] before committing.
pub async fn claim_batch<C: GenericClient + Sync>(
    c: &C,
    forwarder: &str,
    limit: i64,
) -> Result<Option<Batch>, StoreError> {
    c.execute_unnamed(
        "INSERT INTO edge_event_forwarding (forwarder) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&forwarder],
    )
    .await?;
    let Some(cursor) = c
        .query_opt_unnamed(
            "SELECT last_xid::text, last_event_id FROM edge_event_forwarding \
             WHERE forwarder = $1 FOR UPDATE SKIP LOCKED",
            &[&forwarder],
        )
        .await?
    else {
        return Ok(None);
    };
    let (xid, id): (String, i64) = (cursor.get(0), cursor.get(1));
    let rows = c
        .query_unnamed(
            "SELECT id, event_type, org_id, project_id, subject_id, payload, created_at, \
                 xid::text \
             FROM edge_events \
             WHERE (xid, id) > ($1::text::xid8, $2) \
                 AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY xid, id LIMIT $3",
            &[&xid, &id, &limit],
        )
        .await?;
    let last = rows
        .last()
        .map(|r| (r.get::<_, String>(7), r.get::<_, i64>(0)));
    Ok(Some(Batch {
        events: rows
            .iter()
            .map(|r| ForwardEvent {
                id: r.get(0),
                event_type: r.get(1),
                org_id: r.get(2),
                project_id: r.get(3),
                subject_id: r.get(4),
                payload: r.get(5),
                created_at: ts(r.get::<_, OffsetDateTime>(6)),
            })
            .collect(),
        last,
    }))
}

/// Moves the forwarder's cursor past a forwarded batch.
pub async fn advance<C: GenericClient + Sync>(
    c: &C,
    forwarder: &str,
    batch: &Batch,
) -> Result<(), StoreError> {
    let Some((xid, id)) = &batch.last else {
        return Ok(());
    };
    let n = i64::try_from(batch.events.len()).unwrap_or(i64::MAX);
    c.execute_unnamed(
        "UPDATE edge_event_forwarding SET last_xid = $2::text::xid8, last_event_id = $3, \
             forwarded = forwarded + $4, updated_at = now() WHERE forwarder = $1",
        &[&forwarder, xid, id, &n],
    )
    .await?;
    Ok(())
}
