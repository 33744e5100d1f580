//! The router on the local runner's listener (and tests of the wire, the benchmark): the same
//! router the `api` Lambda serves, behind the body limit API Gateway enforces in AWS.
//! (Connection cap and read timeouts: the accept loop, [`crate::http`].)

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;

use super::Api;

/// Largest request body accepted locally (API Gateway's own limit is 10 MB).
const MAX_BODY: usize = 10 << 20;

/// The API's router with the local body limit (reliability.md §7), enforced before anything
/// else — before the body is buffered and before authentication: a declared
/// `Content-Length` over [`MAX_BODY`] is `413 body_too_large` at once, without reading; an
/// undeclared (chunked) body is read only up to the limit and refused as soon as it crosses
/// it. A body that stalls past the listener's body timeout is `408 body_timeout`; one that
/// breaks off, `400 body_unreadable`.
pub fn router(api: Arc<Api>) -> Router {
    super::router(api).layer(middleware::from_fn(limit_body))
}

fn refusal(status: StatusCode, body: &'static [u8]) -> Response {
    let mut r = Response::new(Body::from(Bytes::from_static(body)));
    *r.status_mut() = status;
    r
}

fn too_large() -> Response {
    refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        br#"{"ok":0,"error":{"code":"body_too_large","message":"request body over 10 MiB"}}"#,
    )
}

async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let cause = e.into_inner();
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(cause.as_ref());
            while let Some(err) = source {
                if err.is::<http_body_util::LengthLimitError>() {
                    return too_large();
                }
                if err.is::<crate::http::BodyTimeout>() {
                    return refusal(
                        StatusCode::REQUEST_TIMEOUT,
                        br#"{"ok":0,"error":{"code":"body_timeout","message":"request body stalled"}}"#,
                    );
                }
                source = err.source();
            }
            return refusal(
                StatusCode::BAD_REQUEST,
                br#"{"ok":0,"error":{"code":"body_unreadable","message":"request body broke off"}}"#,
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Serves the API alone on `listener` until `shutdown` resolves.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http::serve(super::service(router(api)), listener, shutdown).await
}
