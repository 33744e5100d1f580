//! `edge-functions` — the cloud handlers and the binaries that host them.
//!
//! A handler is `async fn handle(&Deps, Event) -> Result<Outcome, HandlerError>`: decode, call
//! [`edge_cloud_core`], call [`edge_cloud_store`]. The same handlers run in AWS Lambda (`ingest`
//! binary, later `api`, `replay`, `sweep`) and in the local runner `edge-cloud`, which plays IoT
//! Core's rule engine against mosquitto.
//!
//! # Layout
//! - [`api`] — the HTTP API router (cloud.md §10), the `api` Lambda and the runner's listener
//! - [`aws`] — SDK config (rustls + ring), secrets by ARN, the Lambda pool, IoT publish/provision
//! - [`lambda`] — what each Lambda does with one event (the bins and the fixture tests call it)
//! - [`ingest`] — ingress + intake + materialization of one envelope ([`ingest::handle`])
//! - [`spill`] — spill/snapshot uploads (protocol §7): grants, the object store (S3 or a local
//!   directory behind the runner's HTTP PUT), finalize through the row intake
//! - [`sqs`] — an SQS batch of envelopes → partial batch failures (the `ingest` Lambda)
//! - [`pki`] — the local stack's certificate authority (mosquitto stands in for IoT Core)
//! - [`replay`] — the replay worker: drains open replay intents chunk by chunk (cloud.md §8)
//! - [`sweep`] — resume sweep + control (re-)publication (cloud.md §7) + event forwarding
//! - [`events`] — the event forwarder hook (cloud.md §11): trait, log forwarder, cursor loop
//! - [`control_publisher`] — the [`control_publisher::ControlPublisher`] trait, MQTT implementation
//! - [`http`] — the one HTTP accept loop (the runner's API and object-store PUT endpoint)
//! - [`runner`] — the local runner's MQTT loop (mosquitto in place of IoT Core + SQS)
//! - [`HandlerError`] — the one place that decides retryable vs permanent
//! - `src/bin/*` — thin binaries: parse config, build clients once, call the library

pub mod api;
pub mod aws;
pub mod control_publisher;
pub mod dead_letter;
pub mod events;
pub mod http;
pub mod ingest;
pub mod lambda;
pub mod pki;
pub mod replay;
pub mod replay_trigger;
pub mod runner;
pub mod spill;
pub mod sqs;
pub mod sweep;

pub use edge_cloud_store as store;

/// What every handler needs, built once per process.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: deadpool_postgres::Pool,
    /// Where spill/snapshot objects are uploaded (protocol §7); without one, `url_request`s
    /// get no grant (`spill_not_configured`).
    pub objects: Option<std::sync::Arc<spill::Objects>>,
}

impl Deps {
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Deps {
            pool,
            objects: None,
        }
    }

    /// The same, with an object store for spill uploads.
    pub fn with_objects(mut self, objects: spill::Objects) -> Self {
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
    Object(spill::ObjectError),
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
