//! Everything that talks to AWS APIs: the SDK configuration, secrets by ARN, the database pool
//! as the Lambdas use it, the IoT data-plane control publisher and device provisioning.
//!
//! The rest of the crate never sees an SDK type: handlers take a [`crate::Deps`] and a
//! [`crate::control_publisher::ControlPublisher`], whatever is behind them.
//!
//! # Layout
//! - [`config`] — one `SdkConfig` per process, HTTPS over rustls + ring (no aws-lc-rs)
//! - [`secrets`] — Secrets Manager / SSM look-ups by ARN, with env fallbacks for local runs
//! - [`db`] — the Lambda pool: verified recycling, stale connections dropped after a thaw
//! - [`iot`] — [`iot::IotDataPublisher`] (QoS 1 `Publish`) and [`iot::provision`]
//! - [`eventbridge`] — [`eventbridge::EventBridgeForwarder`], the sweep's event forwarder
//! - [`s3`] — [`s3::S3Objects`]: presigned S3 PUT URLs and GetObject (the spill object store)
//! - [`replay_queue`] — [`replay_queue::SqsReplayQueue`], the nudge after an approval

pub mod config;
pub mod db;
pub mod eventbridge;
pub mod iot;
pub mod replay_queue;
pub mod s3;
pub mod secrets;

/// An AWS call (or its configuration) failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The service answered with an error, or could not be reached. Printed as
    /// `s3:GetObject: access_denied (AccessDenied, HTTP 403): …` — the [`ServiceOutcome`]
    /// first, so a log search for one outcome finds it whatever the service.
    #[error("{service}: {}{message}", outcome_prefix(*outcome, code.as_deref(), *status))]
    Service {
        service: &'static str,
        outcome: ServiceOutcome,
        /// The service's error code (`NoSuchKey`, `ThrottlingException`, …) when it sent one.
        code: Option<String>,
        /// The HTTP status when a response arrived.
        status: Option<u16>,
        message: String,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] edge_cloud_store::StoreError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// What kind of failure a service error is, named the same for every service (the SDK has
/// already retried throttling and transient errors with its standard retry policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// `ThrottlingException`, `SlowDown`, HTTP 429, …: the service asks to slow down.
    Throttled,
    /// `AccessDenied*` or HTTP 403: the role lacks a permission (or its credentials were
    /// refused).
    AccessDenied,
    /// `NoSuchKey`, `ResourceNotFoundException`, `ParameterNotFound`, HTTP 404, …
    NotFound,
    /// No response at all (DNS, connect, TLS, timeout).
    Unreachable,
    /// Anything else the service answered.
    Failed,
}

impl ServiceOutcome {
    /// The name in log lines and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOutcome::Throttled => "throttled",
            ServiceOutcome::AccessDenied => "access_denied",
            ServiceOutcome::NotFound => "not_found",
            ServiceOutcome::Unreachable => "unreachable",
            ServiceOutcome::Failed => "failed",
        }
    }

    /// The outcome of a service error code and HTTP status (either may be missing: a JSON
    /// service answering an error body it cannot parse still has a status).
    pub fn classify(code: Option<&str>, status: Option<u16>) -> Self {
        const THROTTLING: &[&str] = &[
            "Throttling",
            "ThrottlingException",
            "ThrottledException",
            "RequestThrottledException",
            "TooManyRequestsException",
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
            "RequestThrottled",
            "SlowDown",
            "LimitExceededException",
        ];
        const DENIED: &[&str] = &[
            "AccessDenied",
            "AccessDeniedException",
            "UnauthorizedOperation",
            "AuthorizationError",
        ];
        const NOT_FOUND: &[&str] = &[
            "NoSuchKey",
            "NoSuchBucket",
            "NotFound",
            "ResourceNotFoundException",
            "ParameterNotFound",
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        ];
        match (code, status) {
            (Some(c), _) if THROTTLING.contains(&c) => ServiceOutcome::Throttled,
            (Some(c), _) if DENIED.contains(&c) => ServiceOutcome::AccessDenied,
            (Some(c), _) if NOT_FOUND.contains(&c) => ServiceOutcome::NotFound,
            (_, Some(429)) => ServiceOutcome::Throttled,
            (_, Some(403)) => ServiceOutcome::AccessDenied,
            (_, Some(404)) => ServiceOutcome::NotFound,
            _ => ServiceOutcome::Failed,
        }
    }
}

fn outcome_prefix(outcome: ServiceOutcome, code: Option<&str>, status: Option<u16>) -> String {
    let detail = match (code, status) {
        (Some(c), Some(s)) => format!(" ({c}, HTTP {s})"),
        (Some(c), None) => format!(" ({c})"),
        (None, Some(s)) => format!(" (HTTP {s})"),
        (None, None) => String::new(),
    };
    format!("{}{detail}: ", outcome.as_str())
}

/// The SDK's error and raw response types; every `aws-sdk-*` crate re-exports the same
/// `aws-smithy-runtime-api` types, SQS's are named here.
type SdkError<E> = aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>;

impl AwsError {
    /// SDK errors print only their variant name with `Display`; the source chain carries the
    /// service's code and message, which is what an operator needs in the log.
    pub(crate) fn service<E>(service: &'static str, e: SdkError<E>) -> Self
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_sqs::error::ProvideErrorMetadata as _;
        let code = e.code().map(str::to_owned);
        let status = e.raw_response().map(|r| r.status().as_u16());
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        let outcome = match &e {
            aws_sdk_sqs::error::SdkError::DispatchFailure(_)
            | aws_sdk_sqs::error::SdkError::TimeoutError(_) => ServiceOutcome::Unreachable,
            _ => ServiceOutcome::classify(code.as_deref(), status),
        };
        AwsError::Service {
            service,
            outcome,
            code,
            status,
            message,
        }
    }

    /// The outcome of a service error; `None` for configuration, store and file errors.
    pub fn outcome(&self) -> Option<ServiceOutcome> {
        match self {
            AwsError::Service { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_named_by_code_then_status() {
        use ServiceOutcome::*;
        let c = ServiceOutcome::classify;
        assert_eq!(c(Some("ThrottlingException"), Some(400)), Throttled);
        assert_eq!(c(Some("SlowDown"), Some(503)), Throttled);
        assert_eq!(c(None, Some(429)), Throttled);
        assert_eq!(c(Some("AccessDeniedException"), Some(400)), AccessDenied);
        assert_eq!(c(None, Some(403)), AccessDenied);
        assert_eq!(c(Some("NoSuchKey"), Some(404)), NotFound);
        assert_eq!(c(Some("ParameterNotFound"), Some(400)), NotFound);
        assert_eq!(c(None, None), Failed);
        assert_eq!(c(Some("InternalError"), Some(500)), Failed);
        assert_eq!(
            outcome_prefix(AccessDenied, Some("AccessDenied"), Some(403)),
            "access_denied (AccessDenied, HTTP 403): "
        );
    }
}
