//! `edge-functions` — the cloud handlers and the binaries that host them.
//!
//! A handler is `async fn handle(&Deps, Event) -> Result<Outcome, HandlerError>`: decode, call
//! [`edge_cloud_core`], call [`edge_cloud_store`]. The same handlers run in AWS Lambda (the
//! `ingest`, `api`, `replay` and `sweep` binaries) and in the local runner `edge-cloud`, which
//! plays IoT Core's rule engine against mosquitto. Every binary builds its [`Deps`] once, in
//! [`env`].
//!
//! # Layout
//! - [`env`] — the composition root: settings read once, the one [`Deps`], tracing set-up
//! - [`api`] — the HTTP API router (cloud.md §10), the `api` Lambda and the runner's listener
//! - [`aws`] — everything on the AWS SDK: config (rustls + ring), secrets by ARN, the Lambda
//!   pool, IoT publish/provision, S3 objects, EventBridge, the replay queue
//! - [`lambda`] — what each Lambda does with one event (the bins and the fixture tests call it)
//! - [`ingest`] — ingress + intake + materialization of one envelope ([`ingest::handle`]),
//!   spill/snapshot upload grants and finalize ([`ingest::upload`], protocol §7)
//! - [`objects`] — the object store of uploads (S3, or a local directory behind the runner's
//!   HTTP PUT)
//! - [`sqs`] — an SQS batch of envelopes → partial batch failures (the `ingest` Lambda)
//! - [`dead_letter`] — parking permanently failed ingress messages, and retrying them
//! - [`pki`] — the local stack's certificate authority (mosquitto stands in for IoT Core)
//! - [`replay`] — the replay worker: drains open replay intents chunk by chunk (cloud.md §8)
//! - [`metrics`] — the one owner of the cloud's metric families (observability.md §2): the
//!   registry, the counters' call sites, gauges from a snapshot, EMF lines, the runner's
//!   `/metrics` listener
//! - [`replay_trigger`] — nudging the replay worker after work that opened replay intents
//! - [`collector`] — the fleet's gauges on a clock: the runner's collector loop (into the
//!   metrics registry), the sweep Lambda's gauge EMF lines
//! - [`sweep`] — resume sweep + control (re-)publication (cloud.md §7) + event forwarding
//! - [`events`] — the event forwarder hook (cloud.md §11): trait, log forwarder, cursor loop
//! - [`control_publisher`] — the [`control_publisher::ControlPublisher`] trait, MQTT implementation
//! - [`http`] — the one HTTP accept loop (the runner's API and object-store PUT endpoint), with
//!   its connection cap and header/body read timeouts ([`http::HttpLimits`])
//! - [`runner`] — the local runner's MQTT loop (mosquitto in place of IoT Core + SQS)
//! - [`commands`] — the `edge-cloud` subcommands (flags and what each does)
//! - [`HandlerError`] — the one place that decides retryable vs permanent
//! - `src/bin/*` — glue: tracing, settings → [`Deps`] (or the parsed flags), call the library

pub mod api;
pub mod aws;
pub mod collector;
pub mod commands;
pub mod control_publisher;
pub mod dead_letter;
pub mod env;
pub mod events;
pub mod http;
pub mod ingest;
pub mod lambda;
pub mod metrics;
pub mod objects;
pub mod pki;
pub mod replay;
pub mod replay_trigger;
pub mod runner;
pub mod sqs;
pub mod sweep;

pub use edge_cloud_store as store;

/// What every handler needs, built once per process by [`env`] (the composition root).
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: deadpool_postgres::Pool,
    /// Where spill/snapshot objects are uploaded (protocol §7); without one, `url_request`s
    /// get no grant (`spill_not_configured`).
    pub objects: Option<std::sync::Arc<env::Objects>>,
    /// How the sweep publishes controls (the runner publishes through its own connection).
    pub publisher: env::ConfiguredPublisher,
    /// Where the sweep forwards governance events.
    pub forwarder: env::ConfiguredForwarder,
    /// How replay intents opened by this process get a worker.
    pub replay: replay_trigger::ReplayTrigger,
    /// How the API verifies tokens.
    pub auth: api::auth::AuthConfig,
    /// Throttle of the `device_unknown` notices ingest publishes through `publisher`.
    pub device_unknown: std::sync::Arc<control_publisher::DeviceUnknownThrottle>,
    /// The process's metric families (observability.md §2).
    pub metrics: std::sync::Arc<metrics::CloudMetrics>,
}

impl Deps {
    /// Over `pool` alone: no object store, no control transport, events to the log, replay
    /// by polling, an API that refuses every token.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Deps {
            pool,
            objects: None,
            publisher: env::ConfiguredPublisher::None(control_publisher::NoPublisher),
            forwarder: env::ConfiguredForwarder::Log(events::LogForwarder),
            replay: replay_trigger::ReplayTrigger::Polling,
            auth: api::auth::AuthConfig::default(),
            device_unknown: std::sync::Arc::default(),
            metrics: std::sync::Arc::default(),
        }
    }

    /// The same, with an object store for spill uploads.
    pub fn with_objects(mut self, objects: env::Objects) -> Self {
        self.objects = Some(std::sync::Arc::new(objects));
        self
    }
}

/// A handler failure (rejections are not failures: they are [`ingest::Outcome::Rejected`]).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Store(#[from] edge_cloud_store::StoreError),
    #[error(transparent)]
    Object(objects::ObjectError),
}

impl HandlerError {
    /// The single retry decision. Retryable: the database is unreachable, restarting or
    /// overloaded, or the transaction lost a deadlock/serialization race — the same envelope
    /// will succeed later, and redelivery is harmless because intake is idempotent. Everything
    /// else is permanent: retrying identical input cannot help, so it is logged and not
    /// redelivered (SQS's redrive policy still parks anything that keeps failing in the DLQ).
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Store(e) => e.is_transient(),
            // The object store was unreachable mid-request: the same envelope can succeed.
            HandlerError::Object(e) => e.is_retryable(),
        }
    }
}
