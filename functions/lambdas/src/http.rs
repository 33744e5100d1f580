//! The one HTTP accept loop of the local runner (its API and the object-store PUT endpoint)
//! and of the tests that serve the router over TCP: `axum::serve`, HTTP/1, a task per
//! connection.

use std::convert::Infallible;
use std::future::Future;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tower::make::Shared;
use tower::Service;

/// Serves `service` on `listener` until `shutdown` resolves (then stops accepting and lets the
/// open connections finish their requests).
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    axum::serve(listener, Shared::new(service))
        .with_graceful_shutdown(shutdown)
        .await
}
