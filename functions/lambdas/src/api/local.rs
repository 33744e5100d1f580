//! The router on the local runner's listener (and tests of the wire, the benchmark): the same
//! router the `api` Lambda serves, behind the body limit API Gateway enforces in AWS.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;

use super::Api;

/// Largest request body accepted locally (API Gateway's own limit is 10 MB).
const MAX_BODY: usize = 10 << 20;

/// The API's router with the local body limit: the body is read whole (a broken one counts as
/// empty); over [`MAX_BODY`] it is `413 body_too_large` before anything else.
pub fn router(api: Arc<Api>) -> Router {
    super::router(api).layer(middleware::from_fn(limit_body))
}

async fn limit_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if bytes.len() > MAX_BODY {
        let mut r = Response::new(Body::from(Bytes::from_static(
            br#"{"ok":0,"error":{"code":"body_too_large","message":"request body over 10 MiB"}}"#,
        )));
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return r;
    }
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
