//! Serving the router on a TCP listener (the local runner, tests of the wire, the benchmark).
//!
//! hyper's HTTP/1 connection is turned into the `lambda_http::Request` the Lambda runtime would
//! have built, so [`super::handle`] is the very same code in both places.

use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::Body;
use tokio::net::TcpListener;

use super::{handle, Api};

/// Largest request body accepted locally (API Gateway's own limit is 10 MB).
const MAX_BODY: usize = 10 << 20;

/// Converts a hyper request and answers it with [`handle`].
pub async fn serve_one(
    api: &Api,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let response = if bytes.len() > MAX_BODY {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(
            br#"{"ok":0,"error":{"code":"body_too_large","message":"request body over 10 MiB"}}"#,
        )));
        *r.status_mut() = hyper::StatusCode::PAYLOAD_TOO_LARGE;
        return Ok(r);
    } else {
        let body = if bytes.is_empty() {
            Body::Empty
        } else {
            match String::from_utf8(bytes.to_vec()) {
                Ok(t) => Body::Text(t),
                Err(e) => Body::Binary(e.into_bytes()),
            }
        };
        handle(api, lambda_http::Request::from_parts(parts, body)).await
    };
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    Ok(hyper::Response::from_parts(parts, Full::new(bytes)))
}

/// Accepts connections until `shutdown` resolves; each connection is served on its own task.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and similar: log and keep accepting.
                        tracing::warn!(error = %e, "api accept failed");
                        continue;
                    }
                };
                let api = api.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let api = api.clone();
                        async move { serve_one(&api, req).await }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "api connection ended");
                    }
                });
            }
        }
    }
}
