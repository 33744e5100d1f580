//! Dead letters (`edge_dead_letters`, migration 0007): ingress messages whose handling failed
//! permanently are parked with their body instead of being dropped, so nothing acknowledged to
//! the transport is lost. Retrying one is safe at any time: the ledger de-duplicates batches,
//! so a message that did get applied after all is only acknowledged again.

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::scope::ts;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// What is parked: how it came, and what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter<'a> {
    /// `sqs` (the ingest Lambda) or `mqtt` (the local runner).
    pub transport: &'a str,
    pub message_id: Option<&'a str>,
    pub topic: Option<&'a str>,
    /// The body as received.
    pub body: &'a str,
    pub error: &'a str,
}

/// A parked message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub transport: String,
    pub message_id: Option<String>,
    pub topic: Option<String>,
    pub body: String,
    pub error: String,
    pub attempts: i32,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    pub resolved_at: Option<String>,
    pub resolution: Option<String>,
}

/// Parks a message; returns its id.
pub async fn park<C: GenericClient + Sync>(
    c: &C,
    d: &NewDeadLetter<'_>,
) -> Result<i64, StoreError> {
    let row = c
        .query_one_unnamed(
            "INSERT INTO edge_dead_letters (transport, message_id, topic, body, error) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&d.transport, &d.message_id, &d.topic, &d.body, &d.error],
        )
        .await?;
    Ok(row.get(0))
}

const COLUMNS: &str = "id, transport, message_id, topic, body, error, attempts, created_at, \
                       updated_at, resolved_at, resolution";

fn from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        transport: r.get(1),
        message_id: r.get(2),
        topic: r.get(3),
        body: r.get(4),
        error: r.get(5),
        attempts: r.get(6),
        created_at: ts(r.get(7)),
        updated_at: ts(r.get(8)),
        resolved_at: r.get::<_, Option<time::OffsetDateTime>>(9).map(ts),
        resolution: r.get(10),
    }
}

/// Parked messages in arrival order after `after_id`: only open ones unless `include_resolved`.
pub async fn list<C: GenericClient + Sync>(
    c: &C,
    include_resolved: bool,
    after_id: i64,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = c
        .query_unnamed(
            &format!(
                "SELECT {COLUMNS} FROM edge_dead_letters \
                 WHERE id > $1 AND ($2 OR resolved_at IS NULL) ORDER BY id LIMIT $3"
            ),
            &[&after_id, &include_resolved, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// One parked message.
pub async fn get<C: GenericClient + Sync>(
    c: &C,
    id: i64,
) -> Result<Option<DeadLetter>, StoreError> {
    let row = c
        .query_opt_unnamed(
            &format!("SELECT {COLUMNS} FROM edge_dead_letters WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// A retry went through: the row is kept, marked with what the handler answered.
pub async fn resolve<C: GenericClient + Sync>(
    c: &C,
    id: i64,
    resolution: &str,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_dead_letters SET resolved_at = now(), updated_at = now(), \
         attempts = attempts + 1, resolution = $2 WHERE id = $1",
        &[&id, &resolution],
    )
    .await?;
    Ok(())
}

/// A retry failed again: the newest error is kept.
pub async fn retry_failed<C: GenericClient + Sync>(
    c: &C,
    id: i64,
    error: &str,
) -> Result<(), StoreError> {
    c.execute_unnamed(
        "UPDATE edge_dead_letters SET updated_at = now(), attempts = attempts + 1, error = $2 \
         WHERE id = $1",
        &[&id, &error],
    )
    .await?;
    Ok(())
}

/// Open dead letters (for status output and alarms).
pub async fn open_count<C: GenericClient + Sync>(c: &C) -> Result<i64, StoreError> {
    let row = c
        .query_one_unnamed(
            "SELECT count(*) FROM edge_dead_letters WHERE resolved_at IS NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
