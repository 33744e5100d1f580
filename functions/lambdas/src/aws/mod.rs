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
    #[error("{service}: {message}")]
    Service {
        service: &'static str,
        message: String,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] edge_cloud_store::StoreError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl AwsError {
    /// SDK errors print only their variant name with `Display`; the source chain carries the
    /// service's code and message, which is what an operator needs in the log.
    pub(crate) fn service(service: &'static str, e: impl std::error::Error) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        AwsError::Service { service, message }
    }
}
