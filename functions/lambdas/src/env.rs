//! The composition root (DESIGN.md "Config"): every binary reads its configuration here, once —
//! raw environment → typed, validated settings ([`LambdaSettings`], [`RunnerSettings`]), secrets
//! in the redacting [`Secret`] — and builds from them the one [`Deps`] its handlers share, and
//! the one tracing set-up ([`init_tracing`]).
//!
//! The "configured" enums live here too: the trait of each port is not object-safe (its methods
//! are `async`), so what the environment chose at cold start is an enum over the backends —
//! [`Objects`], [`ConfiguredPublisher`], [`ConfiguredForwarder`]. Keeping them out of the
//! ports' modules keeps the AWS adapters (in [`crate::aws`]) pointing at the ports, never back.
//!
//! Each Lambda reads only its own variables (a setting another Lambda needs never fails it):
//! - all: `EDGE_DATABASE_SECRET_ARN` (locally `EDGE_DATABASE_URL` / `DATABASE_URL`),
//!   `EDGE_DATABASE_HOST` / `_PORT` / `_NAME` (complete a JSON secret, e.g. RDS's managed
//!   master secret, which holds only the credentials),
//!   `EDGE_DB_POOL_SIZE` (default 4 for `ingest`/`api`, 2 for `sweep`/`replay`);
//! - `ingest`: `EDGE_SPILL_BUCKET`;
//! - `api`: `EDGE_JWT_SECRET_ARN` (locally `EDGE_JWT_SECRET`), `EDGE_JWT_JWKS` /
//!   `EDGE_JWT_JWKS_FILE`, `EDGE_JWT_ISSUER` / `EDGE_JWT_AUDIENCE`, the claim mapping
//!   `EDGE_JWT_CLAIM_ORG` / `EDGE_JWT_CLAIM_PROJECTS` / `EDGE_JWT_CLAIM_PERMISSIONS` /
//!   `EDGE_JWT_SCOPE_PREFIX` (`api::claims`), `EDGE_REPLAY_QUEUE_URL`;
//! - `sweep`: `EDGE_CONTROL_TRANSPORT` (+ `EDGE_IOT_DATA_ENDPOINT` or the `EDGE_MQTT_*` set),
//!   `EDGE_EVENT_BUS_NAME`, `EDGE_EVENT_SOURCE`, `EDGE_REPLAY_QUEUE_URL`;
//! - `replay`: `EDGE_REPLAY_CHUNK`;
//! - `sweep` (it writes the gauges): the metrics settings `EDGE_METRICS_INTERVAL` (15s),
//!   `EDGE_METRICS_SILENT_AFTER` (15m), `EDGE_METRICS_LINEAGE_CAP` (100 in a Lambda: each EMF
//!   dimension combination is a billed metric) — [`MetricsSettings`], the same variables as
//!   `edge-cloud run`'s flags; the other Lambdas keep the defaults.

use std::path::PathBuf;

use deadpool_postgres::Pool;
use edge_cloud_store::forwarding::ForwardEvent;
use time::OffsetDateTime;

use crate::api::auth::{AuthConfig, AuthError};
use crate::api::claims::{ClaimMapping, ORG_VAR, PERMISSIONS_VAR, PROJECTS_VAR, SCOPE_PREFIX_VAR};
use crate::api::Api;
use crate::aws::config::LazySdk;
use crate::aws::db::lambda_pool;
use crate::aws::eventbridge::{EventBridgeForwarder, DEFAULT_SOURCE};
use crate::aws::iot::{data_endpoint, IotDataPublisher};
use crate::aws::replay_queue::SqsReplayQueue;
use crate::aws::s3::S3Objects;
pub use crate::aws::secrets::Secret;
use crate::aws::secrets::{database_url_from_secret_with, DatabaseDefaults, SecretSource};
use crate::aws::AwsError;
use crate::control_publisher::{ControlPublisher, MqttPublisher, NoPublisher, PublishError};
use crate::events::{EventForwarder, ForwardError, LogForwarder};
pub use crate::metrics::settings::MetricsSettings;
use crate::objects::local::LocalObjects;
use crate::objects::{ObjectError, ObjectReader, ObjectStore};
use crate::replay::DEFAULT_CHUNK;
use crate::replay_trigger::ReplayTrigger;
use crate::runner::{mqtt_options, MqttSettings, RunnerError};
use crate::Deps;

/// The configuration could not be read or the dependencies not built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Mqtt(#[from] RunnerError),
    #[error("{var}")]
    Number {
        var: &'static str,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("{var} is not set")]
    NotSet {
        var: &'static str,
        #[source]
        source: std::env::VarError,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::settings::SettingsError),
    #[error("EDGE_CONTROL_TRANSPORT={0:?}: expected iot-data, mqtt or none")]
    Transport(String),
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// JSON lines without timestamps (CloudWatch stamps them); level from `RUST_LOG`.
    Lambda,
    /// Human-readable lines; level from `RUST_LOG`, else `info`.
    Terminal,
}

/// The one tracing set-up of every binary.
pub fn init_tracing(output: LogOutput) {
    use tracing_subscriber::EnvFilter;
    match output {
        LogOutput::Lambda => tracing_subscriber::fmt()
            .json()
            .with_env_filter(EnvFilter::from_default_env())
            .without_time()
            .init(),
        LogOutput::Terminal => tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            )
            .init(),
    }
}

/// Which Lambda a process hosts (what it reads from the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lambda {
    Ingest,
    Api,
    Sweep,
    Replay,
}

impl Lambda {
    fn default_pool_size(self) -> usize {
        match self {
            Lambda::Ingest | Lambda::Api => 4,
            Lambda::Sweep | Lambda::Replay => 2,
        }
    }
}

/// How the sweep publishes controls (`EDGE_CONTROL_TRANSPORT`).
#[derive(Debug, Clone)]
pub enum ControlTransport {
    /// The IoT data plane; the host from `EDGE_IOT_DATA_ENDPOINT`, or `iot:DescribeEndpoint`.
    IotData { endpoint: Option<String> },
    /// An MQTT connection with a service certificate.
    Mqtt(MqttSettings),
    /// None yet: controls stay pending (and visible).
    None,
}

/// A Lambda's configuration, read and validated once at cold start.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    pub lambda: Lambda,
    pub database: SecretSource,
    /// What completes a JSON database secret without host / port / database name.
    pub database_defaults: DatabaseDefaults,
    pub pool_size: usize,
    /// `ingest`: the bucket of spill/snapshot objects; without one no upload is granted.
    pub spill_bucket: Option<String>,
    /// `api`, `sweep`: the replay queue nudged after work that opens replay intents.
    pub replay_queue_url: Option<String>,
    /// `api`: the HS256 key of tokens that bypass the gateway's authorizer.
    pub jwt_secret: Option<SecretSource>,
    /// `api`: an RS256 JWKS (JSON) for the same.
    pub jwks: Option<String>,
    /// `api`: which claims hold org, projects and permissions (whoever verified the token).
    pub claim_mapping: ClaimMapping,
    /// `sweep`: the EventBridge bus (name or ARN) and source; unset, events are logged.
    pub event_bus: Option<String>,
    pub event_source: String,
    /// `sweep`
    pub control: ControlTransport,
    /// `replay`: rows per chunk.
    pub replay_chunk: i64,
    /// The metrics collector's settings (the sweep writes the gauges each minute).
    pub metrics: MetricsSettings,
}

/// Set and not blank.
fn non_empty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// `arn_var` when set (fetched later), else the first set of `fallback_vars` as the value.
fn secret_source(arn_var: &str, fallback_vars: &[&str]) -> Option<SecretSource> {
    if let Some(arn) = non_empty(arn_var) {
        return Some(SecretSource::Arn(arn));
    }
    fallback_vars
        .iter()
        .find_map(|v| non_empty(v))
        .map(|v| SecretSource::Value(Secret::new(v)))
}

fn required(var: &'static str) -> Result<String, EnvError> {
    std::env::var(var).map_err(|source| EnvError::NotSet { var, source })
}

impl LambdaSettings {
    /// Reads what `lambda` needs from the process environment.
    pub fn from_env(lambda: Lambda) -> Result<Self, EnvError> {
        let database = secret_source(
            "EDGE_DATABASE_SECRET_ARN",
            &["EDGE_DATABASE_URL", "DATABASE_URL"],
        )
        .ok_or_else(|| {
            AwsError::Config(
                "set EDGE_DATABASE_SECRET_ARN (or EDGE_DATABASE_URL / DATABASE_URL locally)".into(),
            )
        })?;
        let pool_size = match std::env::var("EDGE_DB_POOL_SIZE") {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .map_err(|e| AwsError::Config(format!("EDGE_DB_POOL_SIZE: {e}")))?,
            _ => lambda.default_pool_size(),
        };
        let database_defaults = DatabaseDefaults {
            host: non_empty("EDGE_DATABASE_HOST").map(|v| v.trim().to_owned()),
            port: non_empty("EDGE_DATABASE_PORT").map(|v| v.trim().to_owned()),
            dbname: non_empty("EDGE_DATABASE_NAME").map(|v| v.trim().to_owned()),
        };
        let mut settings = LambdaSettings {
            lambda,
            database,
            database_defaults,
            pool_size,
            spill_bucket: None,
            replay_queue_url: None,
            jwt_secret: None,
            jwks: None,
            claim_mapping: ClaimMapping::default(),
            event_bus: None,
            event_source: DEFAULT_SOURCE.to_owned(),
            control: ControlTransport::None,
            replay_chunk: DEFAULT_CHUNK,
            metrics: MetricsSettings::lambda_default(),
        };
        match lambda {
            Lambda::Ingest => {
                settings.spill_bucket = non_empty("EDGE_SPILL_BUCKET").map(|b| b.trim().to_owned());
            }
            Lambda::Api => {
                settings.jwt_secret = secret_source("EDGE_JWT_SECRET_ARN", &["EDGE_JWT_SECRET"]);
                settings.jwks = match (
                    std::env::var("EDGE_JWT_JWKS"),
                    std::env::var("EDGE_JWT_JWKS_FILE"),
                ) {
                    (Ok(j), _) if !j.is_empty() => Some(j),
                    (_, Ok(f)) if !f.is_empty() => Some(
                        std::fs::read_to_string(&f)
                            .map_err(|source| EnvError::Read { path: f, source })?,
                    ),
                    _ => None,
                };
                settings.claim_mapping = claim_mapping_from_env();
                settings.replay_queue_url = non_empty("EDGE_REPLAY_QUEUE_URL");
            }
            Lambda::Sweep => {
                settings.event_bus = non_empty("EDGE_EVENT_BUS_NAME");
                if let Some(source) = non_empty("EDGE_EVENT_SOURCE") {
                    settings.event_source = source;
                }
                settings.replay_queue_url = non_empty("EDGE_REPLAY_QUEUE_URL");
                settings.control = control_transport()?;
                // The sweep writes the gauges each minute: only it reads the metrics settings.
                settings.metrics = MetricsSettings::lambda_from_env()?;
            }
            Lambda::Replay => {
                if let Ok(s) = std::env::var("EDGE_REPLAY_CHUNK") {
                    settings.replay_chunk = s.parse().map_err(|source| EnvError::Number {
                        var: "EDGE_REPLAY_CHUNK",
                        source,
                    })?;
                }
            }
        }
        Ok(settings)
    }

    /// Fetches the secrets and builds the clients (connections open lazily on first use).
    pub async fn deps(&self) -> Result<Deps, EnvError> {
        let mut sdk = LazySdk::default();
        let url = database_url_from_secret_with(
            &self.database.resolve(&mut sdk).await?,
            &self.database_defaults,
        )?;
        let mut deps = Deps::new(lambda_pool(url.expose(), self.pool_size)?);
        // A Lambda's counters leave as EMF lines at the end of each invocation.
        deps.metrics = std::sync::Arc::new(crate::metrics::CloudMetrics::with_emf());
        if self.lambda == Lambda::Api {
            let mut auth = match &self.jwt_secret {
                Some(s) => {
                    AuthConfig::hs256(s.resolve(&mut sdk).await?.expose().as_bytes().to_vec())
                }
                None => AuthConfig::default(),
            };
            if let Some(j) = &self.jwks {
                auth = auth.with_jwks_json(j)?;
            }
            // Optional: tokens that bypass the gateway must then carry exactly this `iss` / `aud`.
            auth = auth.with_expected_claims_from_env();
            // API Gateway's JWT authorizer verified the token when its claims are present.
            auth.trust_gateway_claims = true;
            deps.auth = auth.with_claim_mapping(self.claim_mapping.clone());
        }
        match &self.spill_bucket {
            Some(bucket) => {
                let s3 = S3Objects::new(sdk.get().await, bucket);
                deps = deps.with_objects(Objects::S3(s3));
            }
            None if self.lambda == Lambda::Ingest => {
                tracing::warn!("EDGE_SPILL_BUCKET is not set: url_requests get no grant");
            }
            None => {}
        }
        if let Some(bus) = &self.event_bus {
            let source = &self.event_source;
            tracing::info!(%bus, %source, "forwarding governance events to EventBridge");
            deps.forwarder = ConfiguredForwarder::EventBridge(EventBridgeForwarder::new(
                sdk.get().await,
                bus,
                source,
            ));
        }
        if let Some(url) = &self.replay_queue_url {
            deps.replay = ReplayTrigger::Sqs(SqsReplayQueue::new(sdk.get().await, url));
        }
        deps.publisher = match &self.control {
            ControlTransport::IotData { endpoint } => {
                let sdk = sdk.get().await;
                let endpoint = match endpoint {
                    Some(e) => e.clone(),
                    None => data_endpoint(sdk).await?,
                };
                ConfiguredPublisher::IotData(IotDataPublisher::new(sdk, &endpoint))
            }
            ControlTransport::Mqtt(settings) => {
                // The connection task runs for the life of the process.
                let (publisher, _connection) = MqttPublisher::spawn(mqtt_options(settings)?);
                ConfiguredPublisher::Mqtt(publisher)
            }
            ControlTransport::None => {
                if self.lambda == Lambda::Sweep {
                    tracing::warn!(
                        "no control transport: controls stay pending until one is configured"
                    );
                }
                ConfiguredPublisher::None(NoPublisher)
            }
        };
        Ok(deps)
    }
}

/// `EDGE_JWT_CLAIM_ORG`, `…_PROJECTS`, `…_PERMISSIONS`, `EDGE_JWT_SCOPE_PREFIX`; unset or
/// blank, the defaults (`org_id`, `projects`, `permissions`, no prefix).
fn claim_mapping_from_env() -> ClaimMapping {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    ClaimMapping::new(
        &var(ORG_VAR),
        &var(PROJECTS_VAR),
        &var(PERMISSIONS_VAR),
        non_empty(SCOPE_PREFIX_VAR).as_deref(),
    )
}

/// `EDGE_CONTROL_TRANSPORT`: `iot-data`, `mqtt` or `none`; unset, `mqtt` when `EDGE_MQTT_URL`
/// is set, else `none`.
fn control_transport() -> Result<ControlTransport, EnvError> {
    let transport = match std::env::var("EDGE_CONTROL_TRANSPORT") {
        Ok(t) if !t.is_empty() => t,
        _ if std::env::var("EDGE_MQTT_URL").is_ok() => "mqtt".to_owned(),
        _ => "none".to_owned(),
    };
    match transport.as_str() {
        "iot-data" => Ok(ControlTransport::IotData {
            endpoint: std::env::var("EDGE_IOT_DATA_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty()),
        }),
        "mqtt" => Ok(ControlTransport::Mqtt(MqttSettings {
            url: required("EDGE_MQTT_URL")?,
            ca: required("EDGE_MQTT_CA")?.into(),
            cert: required("EDGE_MQTT_CERT")?.into(),
            key: required("EDGE_MQTT_KEY")?.into(),
            client_id: std::env::var("EDGE_MQTT_CLIENT_ID")
                .unwrap_or_else(|_| "edge-sweep".to_owned()),
            share_group: None,
        })),
        "none" => Ok(ControlTransport::None),
        other => Err(EnvError::Transport(other.to_owned())),
    }
}

/// `edge-cloud run`'s configuration: its flags, each also read from the environment (clap).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub database_url: Secret,
    pub pool_size: usize,
    pub mqtt: MqttSettings,
    /// Where the HTTP API (and the upload endpoint) listens.
    pub http: std::net::SocketAddr,
    pub jwt_secret: Option<Secret>,
    pub jwt_jwks_file: Option<PathBuf>,
    /// Which claims hold org, projects and permissions.
    pub claim_mapping: ClaimMapping,
    pub spill_dir: PathBuf,
    /// How devices reach the listener, for upload URLs (default `http://<http>`).
    pub spill_url: Option<String>,
    /// The key of upload URL signatures (random per start when unset).
    pub spill_secret: Option<Secret>,
    /// Connection cap and read timeouts of the HTTP listener (reliability.md §7).
    pub http_limits: crate::http::HttpLimits,
    /// `/metrics` listener and collector settings.
    pub metrics: MetricsSettings,
}

impl RunnerSettings {
    /// The runner's dependencies over `pool`, with `objects` as the upload store. Controls are
    /// published by the runner's own MQTT connection, so the publisher stays unset here.
    pub fn deps(&self, pool: Pool, objects: LocalObjects) -> Result<Deps, EnvError> {
        let mut auth = match &self.jwt_secret {
            Some(s) if !s.expose().is_empty() => AuthConfig::hs256(s.expose().as_bytes().to_vec()),
            _ => AuthConfig::default(),
        };
        if let Some(f) = &self.jwt_jwks_file {
            let text = std::fs::read_to_string(f).map_err(|source| EnvError::Read {
                path: format!("{f:?}"),
                source,
            })?;
            auth = auth.with_jwks_json(&text)?;
        }
        // Optional: tokens must then carry exactly this `iss` / this `aud`.
        auth = auth.with_expected_claims_from_env();
        if !auth.is_configured() {
            tracing::warn!("no EDGE_JWT_SECRET or JWKS: every API request will be refused (401)");
        }
        let mut deps = Deps::new(pool).with_objects(Objects::Local(objects));
        deps.auth = auth.with_claim_mapping(self.claim_mapping.clone());
        Ok(deps)
    }
}

/// The governance API over the same dependencies.
pub fn api(deps: &Deps) -> Api {
    Api::new(deps.pool.clone(), deps.auth.clone())
        .with_replay_trigger(deps.replay.clone())
        .with_metrics(std::sync::Arc::clone(&deps.metrics))
}

/// The configured object store (S3 in AWS, a directory locally).
#[derive(Debug)]
pub enum Objects {
    Local(LocalObjects),
    S3(S3Objects),
}

impl ObjectStore for Objects {
    async fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
        content_length: Option<u64>,
    ) -> Result<String, ObjectError> {
        match self {
            Objects::Local(o) => o.presign_put(key, expires_at, content_length).await,
            Objects::S3(o) => o.presign_put(key, expires_at, content_length).await,
        }
    }

    async fn discard(&self, key: &str) -> Result<(), ObjectError> {
        match self {
            Objects::Local(o) => o.discard(key).await,
            Objects::S3(o) => o.discard(key).await,
        }
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, ObjectError> {
        match self {
            Objects::Local(o) => o.open(key).await,
            Objects::S3(o) => o.open(key).await,
        }
    }
}

/// The configured control transport.
#[derive(Debug, Clone)]
pub enum ConfiguredPublisher {
    Mqtt(MqttPublisher),
    IotData(IotDataPublisher),
    None(NoPublisher),
}

impl ControlPublisher for ConfiguredPublisher {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        match self {
            ConfiguredPublisher::Mqtt(p) => p.publish(topic, payload).await,
            ConfiguredPublisher::IotData(p) => p.publish(topic, payload).await,
            ConfiguredPublisher::None(p) => p.publish(topic, payload).await,
        }
    }
}

/// The configured event forwarder (EventBridge in AWS, the log locally).
#[derive(Debug, Clone)]
pub enum ConfiguredForwarder {
    Log(LogForwarder),
    EventBridge(EventBridgeForwarder),
}

impl EventForwarder for ConfiguredForwarder {
    fn name(&self) -> &str {
        match self {
            ConfiguredForwarder::Log(f) => f.name(),
            ConfiguredForwarder::EventBridge(f) => f.name(),
        }
    }

    async fn forward(&self, events: &[ForwardEvent]) -> Result<(), ForwardError> {
        match self {
            ConfiguredForwarder::Log(f) => f.forward(events).await,
            ConfiguredForwarder::EventBridge(f) => f.forward(events).await,
        }
    }
}
