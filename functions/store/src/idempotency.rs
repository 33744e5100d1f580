//! Idempotency keys of the API's mutations: the stored response of a key, and storing one.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A stored API response for an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: i32,
    pub body: serde_json::Value,
}

/// The response stored under (org, key), if any.
pub async fn stored_response<C: GenericClient + Sync>(
    c: &C,
    org_id: Uuid,
    key: &str,
) -> Result<Option<StoredResponse>, StoreError> {
    let row = c
        .query_opt_unnamed(
            "SELECT request_hash, response_status, response_body FROM edge_idempotency_keys \
             WHERE org_id = $1 AND idempotency_key = $2",
            &[&org_id, &key],
        )
        .await?;
    Ok(row.map(|r| StoredResponse {
        request_hash: r.get(0),
        status: r.get(1),
        body: r.get(2),
    }))
}

/// Stores a response under (org, key); false when another request stored one first (the
/// caller then answers with that one).
pub async fn store_response<C: GenericClient + Sync>(
    c: &C,
    org_id: Uuid,
    key: &str,
    method: &str,
    path: &str,
    stored: &StoredResponse,
) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            "INSERT INTO edge_idempotency_keys (org_id, idempotency_key, method, path, \
                 request_hash, response_status, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &org_id,
                &key,
                &method,
                &path,
                &stored.request_hash,
                &stored.status,
                &stored.body,
            ],
        )
        .await?;
    Ok(n == 1)
}
