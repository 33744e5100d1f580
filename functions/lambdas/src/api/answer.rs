//! What every route answers: the envelope `{"ok":1,"data":…,"meta":…}` on success,
//! `{"ok":0,"error":{"code","message"}}` on error (plus `claim`, the token claim at fault, on
//! the answers about one), always `Content-Type: application/json`.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

use edge_cloud_store::error::OpError;

/// An error answer: status, machine-readable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// The token claim at fault (as configured, e.g. `custom:org_id`), when the answer is
    /// about one.
    pub claim: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            claim: None,
        }
    }

    /// Names the token claim the answer is about.
    pub fn with_claim(mut self, claim: impl Into<String>) -> Self {
        self.claim = Some(claim.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// A route that exists, asked with a method it does not take (the router adds `Allow`).
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    pub(crate) fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(claim) = &self.claim {
            error["claim"] = json!(claim);
        }
        json!({"ok": 0, "error": error})
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(what) => ApiError::not_found(what),
            OpError::Invalid { code, message } => ApiError::bad_request(code, message),
            OpError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            OpError::Store(e) => internal(&e),
        }
    }
}

impl From<edge_cloud_store::StoreError> for ApiError {
    fn from(e: edge_cloud_store::StoreError) -> Self {
        internal(&e)
    }
}

impl From<edge_cloud_store::tokio_postgres::Error> for ApiError {
    fn from(e: edge_cloud_store::tokio_postgres::Error) -> Self {
        internal(&e)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        internal(&e)
    }
}

/// Database trouble: logged in full, answered without internals.
pub(crate) fn internal(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "api request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the request can be retried",
    )
}

/// A success answer: status, `data`, `meta`.
#[derive(Debug, Clone)]
pub struct Success {
    pub status: StatusCode,
    pub data: Value,
    pub meta: Value,
}

impl Success {
    pub fn data(data: impl Serialize) -> Self {
        Success {
            status: StatusCode::OK,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            meta: json!({}),
        }
    }

    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = meta;
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!({"ok": 1, "data": self.data, "meta": self.meta})
    }
}

/// What a route function returns.
pub type Answer = Result<Success, ApiError>;

/// `body` as JSON with `status`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

impl IntoResponse for Success {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}
