//! The runner's metrics listener (observability.md §1): `GET /metrics` → 200 with the registry
//! in the Prometheus text format 0.0.4, no auth; anything else 404. Its own listener
//! (`--metrics`, default loopback), never the API's: the API listener also serves devices and
//! is exposed, while the metrics span every tenant and name devices.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::net::TcpListener;

use super::CloudMetrics;

/// The metrics listener could not be bound (start-up stops; the message names the flag).
#[derive(Debug, thiserror::Error)]
#[error("--metrics {addr}: cannot listen: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for [`spawn`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The listener's router: one route, everything else 404.
pub fn router(metrics: Arc<CloudMetrics>) -> Router {
    Router::new().fallback(answer).with_state(metrics)
}

async fn answer(State(metrics): State<Arc<CloudMetrics>>, req: Request) -> Response {
    let scrape = req.uri().path() == "/metrics"
        && (req.method() == Method::GET || req.method() == Method::HEAD);
    let mut response = if scrape {
        let mut r = Response::new(Body::from(metrics.encode()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        r
    } else {
        let mut r = Response::new(Body::from("not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    if req.method() == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

/// Serves `/metrics` on `listener` (the runner's accept loop and its limits) until aborted.
pub fn spawn(listener: TcpListener, metrics: Arc<CloudMetrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(router(metrics), listener, std::future::pending()).await
        {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    })
}
