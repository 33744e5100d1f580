//! The one HTTP accept loop of the local runner (its API and the object-store PUT endpoint)
//! and of the tests that serve the router over TCP: hyper HTTP/1, a task per connection, with
//! the bounds of reliability.md §7 ([`HttpLimits`]):
//!
//! - at most `max_connections` connections are served at once: the next one is not accepted
//!   (it waits in the listen backlog) until one closes;
//! - a client must send a request's whole header within `header_timeout` (hyper's
//!   `header_read_timeout`), or the connection is closed — a slowloris client holds nothing;
//! - while a request body is read, each chunk must arrive within `body_timeout` of the previous
//!   one, or the read fails (the handler answers 408 / the upload is dropped).
//!
//! Body size limits are the routes' own (the API's 10 MiB in [`crate::api::local`], an
//! upload's object limit in [`crate::objects::local`]); both refuse a declared length over the
//! limit before reading and stop reading as soon as it is crossed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;

use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt as _};

/// Bounds of the listener (environment: `EDGE_HTTP_MAX_CONNECTIONS`,
/// `EDGE_HTTP_HEADER_TIMEOUT_MS`, `EDGE_HTTP_BODY_TIMEOUT_MS`; docs/deploy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The body read timed out (no data for [`HttpLimits::body_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("request body: no data for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Serves `service` on `listener` with the default [`HttpLimits`] until `shutdown` resolves.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    serve_with(service, listener, HttpLimits::default(), shutdown).await
}

/// Serves `service` on `listener` within `limits` until `shutdown` resolves (then stops
/// accepting and lets the open connections finish their requests).
pub async fn serve_with<S>(
    service: S,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot first: over the cap, the next connection stays in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let body_timeout = limits.body_timeout;
            let handler = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let req = req.map(|b| Body::new(IdleTimeoutBody::new(b, body_timeout)));
                service.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "HTTP connection ended");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// A request body whose every frame must arrive within `timeout` of asking for it.
struct IdleTimeoutBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.sleep = None;
                        Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
