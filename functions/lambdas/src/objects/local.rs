//! The local object store: a directory, written through the runner's HTTP PUT endpoint.
//!
//! It behaves like an S3 presigned URL so the agent cannot tell the difference: the URL
//! `{base}/{key}?expires={unix}&signature={hex}` carries an HMAC over (key, expiry) keyed by
//! the runner's secret; a forged or expired URL gets 403, a body over 1 GiB 413 (refused from
//! `Content-Length` before reading when the client sends it, otherwise as soon as the limit is
//! crossed). The body streams to a temporary file that is renamed into place only when
//! complete, so a reader never sees half an object and a repeated PUT replaces it atomically.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use edge_cloud_core::spill::{is_object_key, sign_upload, verify_upload, MAX_OBJECT_BYTES};
use http_body_util::BodyExt as _;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use super::{ObjectError, ObjectReader, ObjectStore};
use crate::api::Api;
use crate::http::HttpLimits;

/// Objects in `dir`, uploaded through URLs under `base_url`, signed with `secret`.
#[derive(Clone)]
pub struct LocalObjects {
    dir: PathBuf,
    base_url: String,
    secret: Vec<u8>,
    max_bytes: u64,
}

impl std::fmt::Debug for LocalObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalObjects")
            .field("dir", &self.dir)
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl LocalObjects {
    /// `base_url` is how devices reach the runner's HTTP listener (e.g. `http://10.0.0.5:8080`).
    pub fn new(dir: impl Into<PathBuf>, base_url: &str, secret: Vec<u8>) -> Self {
        LocalObjects {
            dir: dir.into(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret,
            max_bytes: MAX_OBJECT_BYTES,
        }
    }

    /// A lower size limit than the protocol's 1 GiB (tests of the limit; small deployments).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes.min(MAX_OBJECT_BYTES);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The signed URL of `key` valid until `expires_unix`, for any length up to the limit (what
    /// a grant for a request without `content_length` carries).
    pub fn url(&self, key: &str, expires_unix: i64) -> String {
        self.signed_url(key, expires_unix, None)
    }

    /// The signed URL of `key` valid until `expires_unix`, for exactly `length` bytes when
    /// given (the length is signed: the endpoint refuses any other Content-Length).
    pub fn signed_url(&self, key: &str, expires_unix: i64, length: Option<u64>) -> String {
        let length_param = length.map(|n| format!("&length={n}")).unwrap_or_default();
        format!(
            "{}/{key}?expires={expires_unix}{length_param}&signature={}",
            self.base_url,
            sign_upload(&self.secret, key, expires_unix, length)
        )
    }
}

impl ObjectStore for LocalObjects {
    async fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
        content_length: Option<u64>,
    ) -> Result<String, ObjectError> {
        Ok(self.signed_url(key, expires_at.unix_timestamp(), content_length))
    }

    async fn discard(&self, key: &str) -> Result<(), ObjectError> {
        if !is_object_key(key) {
            return Ok(());
        }
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ObjectError::Unavailable(format!("{key}: {e}"))),
        }
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, ObjectError> {
        if !is_object_key(key) {
            return Ok(None);
        }
        match std::fs::File::open(self.path_of(key)) {
            Ok(f) => {
                let size = f.metadata().ok().map(|m| m.len());
                Ok(Some(ObjectReader {
                    size,
                    body: Box::new(f),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ObjectError::Unavailable(format!("{key}: {e}"))),
        }
    }
}

fn reply(status: StatusCode, message: &str) -> Response {
    let mut r = Response::new(Body::from(format!("{message}\n")));
    *r.status_mut() = status;
    r
}

/// Answers one request under `/spill/`: a PUT with a valid token stores the object.
pub async fn serve_upload(objects: &LocalObjects, req: Request, now_unix: i64) -> Response {
    if req.method() != Method::PUT {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "upload URLs take PUT only");
    }
    let key = req.uri().path().trim_start_matches('/').to_owned();
    if !is_object_key(&key) {
        return reply(StatusCode::NOT_FOUND, "no such upload");
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(expires), Some(signature)) = (
        param("expires").and_then(|e| e.parse::<i64>().ok()),
        param("signature"),
    ) else {
        return reply(StatusCode::FORBIDDEN, "upload URL is not signed");
    };
    let signed_length = match param("length").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return reply(StatusCode::FORBIDDEN, "upload URL is not signed"),
    };
    if let Err(e) = verify_upload(
        &objects.secret,
        &key,
        expires,
        signed_length,
        signature,
        now_unix,
    ) {
        tracing::warn!(%key, error = %e, "upload refused");
        return reply(StatusCode::FORBIDDEN, &e.to_string());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > objects.max_bytes) {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "object over the size limit");
    }
    if let Some(n) = signed_length {
        // As S3 with a signed content-length (reliability §7): that length or nothing.
        match declared {
            None => {
                return reply(
                    StatusCode::LENGTH_REQUIRED,
                    &format!("upload URL is for {n} bytes: send Content-Length"),
                )
            }
            Some(d) if d != n => {
                return reply(
                    StatusCode::FORBIDDEN,
                    &format!("upload URL is for {n} bytes, Content-Length is {d}"),
                )
            }
            Some(_) => {}
        }
    }
    match store(objects, &key, req.into_body(), signed_length).await {
        Ok(bytes) => {
            tracing::info!(%key, bytes, "spill object stored");
            reply(StatusCode::OK, "stored")
        }
        Err(StoreFailure::TooLarge) => {
            reply(StatusCode::PAYLOAD_TOO_LARGE, "object over the size limit")
        }
        Err(StoreFailure::Body(e)) => reply(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        Err(StoreFailure::LengthMismatch { signed, got }) => reply(
            StatusCode::BAD_REQUEST,
            &format!("upload URL is for {signed} bytes, the body had {got}"),
        ),
        Err(StoreFailure::Io(e)) => {
            tracing::error!(%key, error = %e, "spill object could not be written");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "object could not be written",
            )
        }
    }
}

enum StoreFailure {
    TooLarge,
    Body(String),
    LengthMismatch { signed: u64, got: u64 },
    Io(std::io::Error),
}

/// Streams `body` to a temporary file beside the object, then renames it into place; a body
/// of another length than `exact` (the URL's signed length) is never stored.
async fn store(
    objects: &LocalObjects,
    key: &str,
    mut body: Body,
    exact: Option<u64>,
) -> Result<u64, StoreFailure> {
    let limit = exact.map_or(objects.max_bytes, |n| n.min(objects.max_bytes));
    let path = objects.path_of(key);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(StoreFailure::Io)?;
    }
    let tmp = path.with_extension(format!("part-{}", uuid::Uuid::now_v7().simple()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(StoreFailure::Io)?;
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| StoreFailure::Body(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                written += data.len() as u64;
                if written > limit {
                    return Err(match exact {
                        Some(signed) if written <= objects.max_bytes => {
                            StoreFailure::LengthMismatch {
                                signed,
                                got: written,
                            }
                        }
                        _ => StoreFailure::TooLarge,
                    });
                }
                file.write_all(&data).await.map_err(StoreFailure::Io)?;
            }
        }
        if let Some(signed) = exact.filter(|&n| n != written) {
            return Err(StoreFailure::LengthMismatch {
                signed,
                got: written,
            });
        }
        file.sync_all().await.map_err(StoreFailure::Io)?;
        Ok(written)
    }
    .await;
    match result {
        Ok(written) => {
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(StoreFailure::Io)?;
            Ok(written)
        }
        Err(e) => {
            // Best effort: a leftover part file is never read (not an object key).
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The upload endpoint as a router: everything under `/spill/` (the handler answers every
/// method itself: 405 for anything but PUT).
pub fn upload_router(objects: Arc<LocalObjects>) -> Router {
    async fn upload(State(objects): State<Arc<LocalObjects>>, req: Request) -> Response {
        serve_upload(&objects, req, now_unix()).await
    }
    Router::new()
        .route("/spill/", any(upload))
        .route("/spill/{*key}", any(upload))
        .with_state(objects)
}

/// Serves the upload endpoint, and the HTTP API beside it when `api` is given (the runner's
/// one listener), until `shutdown` resolves.
pub async fn serve(
    objects: Arc<LocalObjects>,
    api: Option<Arc<Api>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_limited(objects, api, listener, HttpLimits::default(), shutdown).await
}

/// [`serve`] within `limits` (connection cap, header and body read timeouts).
pub async fn serve_limited(
    objects: Arc<LocalObjects>,
    api: Option<Arc<Api>>,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let uploads = upload_router(objects);
    let router = match api {
        Some(api) => uploads.merge(crate::api::local::router(api)),
        None => uploads.fallback(|| async { reply(StatusCode::NOT_FOUND, "not found") }),
    };
    crate::http::serve_with(crate::api::service(router), listener, limits, shutdown).await
}
