//! A mutation's extractor and its transaction.
//!
//! [`Mutation`] checks, in this order: the caller (401/400/403/404), the
//! `PROJECT_CAN_MANAGE_DEVICES` permission (403), the `Idempotency-Key` (400); then it binds the
//! key to a hash of method, path and body. A key already answered is replayed here (the same
//! answer for the same request, `422 idempotency_key_reused` for another), before the body is
//! parsed; otherwise the body is parsed ([`RequestBody`], 400). [`Mutation::commit`] then runs
//! the route in one transaction that also stores its answer under the key, so a retried request
//! gets the stored answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use edge_cloud_store::idempotency::{store_response, stored_response, StoredResponse};
use edge_cloud_store::scope::Scope;
use edge_cloud_store::tokio_postgres::Transaction;

use super::answer::{internal, Answer, ApiError, Success};
use super::auth::MANAGE_DEVICES;
use super::body::RequestBody;
use super::claims::ClaimMapping;
use super::extract::{raw_path, Caller};
use super::Api;

/// A checked mutation request (module docs): its caller, parsed body and idempotency key, and
/// the pooled connection its transaction runs on.
pub struct Mutation<B> {
    pub caller: Caller,
    pub body: B,
    key: String,
    hash: String,
    method: Method,
    path: String,
    client: deadpool_postgres::Object,
}

/// Most permissions a 403 lists back.
const LISTED_PERMISSIONS: usize = 10;

/// The 403 of a caller without [`MANAGE_DEVICES`]: which claim was read, how, and what it held.
fn missing_permission(mapping: &ClaimMapping, caller: &Caller) -> ApiError {
    let held = &caller.claims.permissions;
    let held = if held.is_empty() {
        "nothing".to_owned()
    } else {
        let mut listed = held
            .iter()
            .take(LISTED_PERMISSIONS)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if held.len() > LISTED_PERMISSIONS {
            listed.push_str(", …");
        }
        listed
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this action needs the {MANAGE_DEVICES} permission in the token's claim {}; it holds: \
             {held}",
            mapping.describe_permissions()
        ),
    )
    .with_claim(mapping.permissions_claim())
}

impl<B> std::fmt::Debug for Mutation<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutation")
            .field("scope", &self.caller.scope)
            .field("key", &self.key)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<B: RequestBody + Send> FromRequest<Arc<Api>> for Mutation<B> {
    /// An error, or the stored answer of a replayed key.
    type Rejection = Response;

    async fn from_request(req: Request, api: &Arc<Api>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let caller = Caller::from_request_parts(&mut parts, api)
            .await
            .map_err(IntoResponse::into_response)?;
        if !caller.claims.has(MANAGE_DEVICES) {
            return Err(missing_permission(api.auth.claim_mapping(), &caller).into_response());
        }
        let key = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "missing_idempotency_key",
                    "mutations need an Idempotency-Key header (1-255 characters)",
                )
                .into_response()
            })?
            .to_owned();
        // The body is complete here (the Lambda event carries it; the runner's listener read it
        // under its size limit); a broken one counts as empty, as it always did.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let path = raw_path(&parts);
        let hash = request_hash(&parts.method, &path, &bytes);
        let client = api
            .pool
            .get()
            .await
            .map_err(|e| internal(&e).into_response())?;
        let org = caller.scope.org_id;
        match stored_response(&**client, org, &key).await {
            Ok(Some(stored)) => return Err(check_replay(stored, &hash).into_response()),
            Ok(None) => {}
            Err(e) => return Err(ApiError::from(e).into_response()),
        }
        let body = B::parse(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Mutation {
            caller,
            body,
            key,
            hash,
            method: parts.method,
            path,
            client,
        })
    }
}

/// The future a route returns inside the mutation's transaction.
pub type TxFuture<'t> = Pin<Box<dyn Future<Output = Answer> + Send + 't>>;

impl<B> Mutation<B> {
    /// Runs `route(tx, scope, actor, body)` in a transaction that stores its answer under the
    /// key (client errors too, so the same request gets the same 4xx; server errors are not
    /// stored, so a retry can succeed). `nudge`: the replay worker is nudged with this reason
    /// once the transaction is committed (the route may have opened replay intents).
    pub async fn commit<F>(self, api: &Api, nudge: Option<&'static str>, route: F) -> Answer
    where
        F: for<'t> FnOnce(&'t Transaction<'t>, Scope, &'t str, B) -> TxFuture<'t>,
    {
        let Mutation {
            caller,
            body,
            key,
            hash,
            method,
            path,
            mut client,
        } = self;
        let org = caller.scope.org_id;
        let tx = client.transaction().await?;
        let answer = route(&tx, caller.scope, caller.claims.sub.as_str(), body).await;
        match answer {
            Ok(ok) => {
                let stored = StoredResponse {
                    request_hash: hash.clone(),
                    status: i32::from(ok.status.as_u16()),
                    body: ok.body(),
                };
                if !store_response(&*tx, org, &key, method.as_str(), &path, &stored).await? {
                    // A concurrent request with the same key committed first: its answer wins.
                    tx.rollback().await?;
                    return match stored_response(&**client, org, &key).await? {
                        Some(s) => check_replay(s, &hash),
                        None => Err(internal(&"idempotency key vanished")),
                    };
                }
                tx.commit().await?;
                if let Some(reason) = nudge {
                    api.replay_trigger.nudge(reason).await;
                }
                Ok(ok)
            }
            Err(e) => {
                tx.rollback().await?;
                if e.status.is_client_error() {
                    let stored = StoredResponse {
                        request_hash: hash,
                        status: i32::from(e.status.as_u16()),
                        body: e.body(),
                    };
                    store_response(&**client, org, &key, method.as_str(), &path, &stored).await?;
                }
                Err(e)
            }
        }
    }
}

/// The body hash an idempotency key is bound to: method, path and the body — canonical JSON
/// when it parses (so key order and whitespace do not matter), the raw bytes otherwise.
fn request_hash(method: &Method, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => h.update(v.to_string().as_bytes()),
        Err(_) => h.update(body),
    }
    hex::encode(h.finalize())
}

fn check_replay(stored: StoredResponse, hash: &str) -> Answer {
    if stored.request_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        ));
    }
    replay_stored(stored)
}

fn replay_stored(stored: StoredResponse) -> Answer {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let ok = stored.body.get("ok").and_then(Value::as_i64) == Some(1);
    if ok {
        Ok(Success {
            status,
            data: stored.body.get("data").cloned().unwrap_or(Value::Null),
            meta: stored.body.get("meta").cloned().unwrap_or(json!({})),
        })
    } else {
        let e = stored.body.get("error");
        let msg = e
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let code = e
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("replayed_error");
        Err(ApiError::new(status, code, msg))
    }
}
