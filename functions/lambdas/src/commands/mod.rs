//! The subcommands of `edge-cloud`, the local runner (cloud.md §12): `migrate`, `devices`,
//! `pki`, `run`, `dead-letters`, `token`. The binary parses [`Cli`] and calls [`execute`];
//! each flag is also read from the environment (clap), so what a command gets is its whole
//! configuration.
//!
//! # Layout
//! - this file — the flags ([`Cli`]) and the dispatch
//! - [`devices`] — register a device (with a local certificate), or provision it in AWS IoT
//! - [`pki`] — the local certificate authority of the broker and the service identity
//! - [`run`] — the local stack: MQTT runner, sweep and replay loops, the HTTP listener
//! - [`spill_store`] — the runner's spill directory identity and presence: runners of one
//!   database share one object store
//! - [`dead_letters`] — list and retry parked ingress messages
//! - [`token`] — signed development tokens for the HTTP API

pub mod dead_letters;
pub mod devices;
pub mod pki;
pub mod run;
pub mod spill_store;
pub mod token;

use clap::{Parser, Subcommand};
use edge_cloud_store::{migrate::migrate, pool, StoreError};
use uuid::Uuid;

use self::dead_letters::DeadLettersCommand;
use self::devices::DevicesCommand;
use self::pki::PkiCommand;
use crate::api::auth::AuthError;
use crate::api::claims::{self, ClaimMapping};
use crate::aws::AwsError;
use crate::env::{EnvError, RunnerSettings, Secret};
use crate::metrics::settings;
use crate::pki::PkiError;
use crate::runner::{MqttSettings, RunnerError};

/// A command failed; the binary prints it with its causes and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One line naming the failure (TLS refused, certificate not trusted, …): no `#[source]`,
    /// so `anyhow` prints no "Caused by" chain of tokio-postgres's vaguer texts.
    #[error(
        "connecting to the database: {}",
        edge_cloud_store::connect::describe_pool_error(.0)
    )]
    Connect(deadpool_postgres::PoolError),
    #[error(transparent)]
    Topic(#[from] edge_protocol::topic::TopicError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(transparent)]
    MetricsListen(#[from] crate::metrics::serve::BindError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("clock before 1970")]
    Clock(#[source] std::time::SystemTimeError),
    #[error("ttl {ttl:?}: expected e.g. 1h")]
    TtlNumber {
        ttl: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// The command refused its input or its outcome (the message says why).
    #[error("{0}")]
    Refused(String),
}

#[derive(Parser, Debug)]
#[command(name = "edge-cloud", about = "edge-sync cloud side on one machine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply the database migrations (idempotent).
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// TimescaleDB only: compress telemetry chunks older than this (12h, 7d, 4w, off).
        #[arg(long, env = "EDGE_TS_TELEMETRY_COMPRESS_AFTER", default_value = edge_cloud_core::timescale::DEFAULT_TELEMETRY_COMPRESS_AFTER)]
        telemetry_compress_after: String,
        /// TimescaleDB only: drop telemetry chunks older than this (off keeps everything).
        #[arg(long, env = "EDGE_TS_TELEMETRY_RETENTION", default_value = "off")]
        telemetry_retention: String,
        /// TimescaleDB only: compress ledger (edge_export_segments) chunks older than this.
        #[arg(long, env = "EDGE_TS_LEDGER_COMPRESS_AFTER", default_value = "off")]
        ledger_compress_after: String,
        /// TimescaleDB only: drop ledger chunks older than this — a duplicate of an older batch
        /// is then not recognised as one (docs/deploy.md "TimescaleDB").
        #[arg(long, env = "EDGE_TS_LEDGER_RETENTION", default_value = "off")]
        ledger_retention: String,
    },
    /// Device registry.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// The local stack's certificate authority (mosquitto stands in for IoT Core).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Subscribe as the service identity, ingest, publish controls.
    Run {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "EDGE_MQTT_URL")]
        mqtt_url: String,
        #[arg(long, env = "EDGE_MQTT_CA")]
        ca: std::path::PathBuf,
        #[arg(long, env = "EDGE_MQTT_CERT")]
        cert: std::path::PathBuf,
        #[arg(long, env = "EDGE_MQTT_KEY")]
        key: std::path::PathBuf,
        /// MQTT client id; unique per runner process (the share group splits the load).
        #[arg(long, env = "EDGE_MQTT_CLIENT_ID", default_value = "edge-service")]
        client_id: String,
        #[arg(long, env = "EDGE_DB_POOL_SIZE", default_value_t = 8)]
        pool_size: usize,
        /// Where the HTTP API listens.
        #[arg(
            long = "http",
            env = "EDGE_HTTP_LISTEN",
            default_value = "127.0.0.1:8080"
        )]
        http: std::net::SocketAddr,
        /// HS256 secret the API verifies Bearer tokens with.
        #[arg(long, env = "EDGE_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// RS256 JWKS (JSON file) the API verifies Bearer tokens with.
        #[arg(long, env = "EDGE_JWT_JWKS_FILE")]
        jwt_jwks_file: Option<std::path::PathBuf>,
        /// Which token claims hold org, projects and permissions (boxed: the flags are parsed
        /// once, the enum stays small).
        #[command(flatten)]
        jwt_claims: Box<JwtClaimArgs>,
        /// Directory of uploaded spill/snapshot objects (protocol §7).
        #[arg(long, env = "EDGE_SPILL_DIR", default_value = "edge-spill")]
        spill_dir: std::path::PathBuf,
        /// Base URL devices reach the HTTP listener at, for upload URLs (default
        /// `http://<--http>`).
        #[arg(long, env = "EDGE_SPILL_URL")]
        spill_url: Option<String>,
        /// Key of the upload URL signatures; random per start when unset (URLs granted before
        /// a restart then get 403 and the device asks again). Set it when several runners
        /// share the directory.
        #[arg(long, env = "EDGE_SPILL_SECRET", hide_env_values = true)]
        spill_secret: Option<String>,
        /// Most connections the HTTP listener serves at once; more wait to be accepted.
        #[arg(long, env = "EDGE_HTTP_MAX_CONNECTIONS", default_value_t = 256)]
        http_max_connections: usize,
        /// A request's whole header must arrive within this many milliseconds.
        #[arg(long, env = "EDGE_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
        http_header_timeout_ms: u64,
        /// Longest pause (milliseconds) between two pieces of a request body.
        #[arg(long, env = "EDGE_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
        http_body_timeout_ms: u64,
        /// Split the device messages with the other runners of this MQTT share group
        /// (`$share/GROUP/…`) instead of every runner taking every message. With mosquitto 2.0.11
        /// a broker restart then drops what devices publish before the runners reconnect (see
        /// docs/reliability.md "Several runners").
        #[arg(long, env = "EDGE_RUNNER_SHARE_GROUP")]
        share_group: Option<String>,
        /// The metrics listener and collector (observability.md §1).
        #[command(flatten)]
        metrics: Box<MetricsArgs>,
    },
    /// Ingress messages whose handling failed permanently, parked instead of dropped.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Print a signed development token for the HTTP API (HS256 with EDGE_JWT_SECRET).
    Token {
        #[arg(long)]
        org: Uuid,
        #[arg(long)]
        project: Vec<Uuid>,
        /// e.g. PROJECT_CAN_MANAGE_DEVICES; repeatable.
        #[arg(long)]
        permission: Vec<String>,
        /// Lifetime: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value = "dev")]
        subject: String,
        #[arg(long, env = "EDGE_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
    },
}

/// `edge-cloud run`'s claim mapping flags (docs/deploy.md "Identity provider").
#[derive(Debug, Clone, clap::Args)]
pub struct JwtClaimArgs {
    /// Token claim holding the organization UUID: a claim name (`custom:org_id`) or a dotted
    /// path into nested objects (the whole name is tried first).
    #[arg(long, env = "EDGE_JWT_CLAIM_ORG", default_value = claims::DEFAULT_ORG)]
    pub jwt_claim_org: String,
    /// Token claim holding the project UUIDs (array, or a space/comma-separated string).
    #[arg(long, env = "EDGE_JWT_CLAIM_PROJECTS", default_value = claims::DEFAULT_PROJECTS)]
    pub jwt_claim_projects: String,
    /// Token claim holding the permissions (array, or a scope string like `"a b"`).
    #[arg(
        long,
        env = "EDGE_JWT_CLAIM_PERMISSIONS",
        default_value = claims::DEFAULT_PERMISSIONS
    )]
    pub jwt_claim_permissions: String,
    /// Only permission values starting with this prefix count, with it removed (e.g. `edge/`
    /// for Cognito resource-server scopes `edge/PROJECT_CAN_MANAGE_DEVICES`).
    #[arg(long, env = "EDGE_JWT_SCOPE_PREFIX")]
    pub jwt_scope_prefix: Option<String>,
}

/// `edge-cloud run`'s metrics flags (observability.md §1), each also an `EDGE_METRICS_*`
/// variable.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Where `GET /metrics` (Prometheus text) listens, or `off`; its own listener, no auth:
    /// keep it on loopback (the metrics span every tenant and name devices).
    #[arg(long = "metrics", env = "EDGE_METRICS_LISTEN", default_value = settings::DEFAULT_METRICS_LISTEN, value_parser = parse_listen)]
    pub metrics: MetricsListen,
    /// How often the gauges are read from PostgreSQL (15s, 1m, 1h).
    #[arg(long, env = "EDGE_METRICS_INTERVAL", default_value = settings::DEFAULT_METRICS_INTERVAL, value_parser = edge_cloud_core::metrics::parse_duration)]
    pub metrics_interval: std::time::Duration,
    /// A device counts as silent when its newest batch is older than this (up to 24 h).
    #[arg(long, env = "EDGE_METRICS_SILENT_AFTER", default_value = settings::DEFAULT_METRICS_SILENT_AFTER, value_parser = edge_cloud_core::metrics::parse_duration)]
    pub metrics_silent_after: std::time::Duration,
    /// The most lineages (worst first) with `edge_lineage_*` series.
    #[arg(long, env = "EDGE_METRICS_LINEAGE_CAP", default_value_t = settings::DEFAULT_RUNNER_LINEAGE_CAP)]
    pub metrics_lineage_cap: usize,
}

/// `--metrics`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

fn parse_listen(text: &str) -> Result<MetricsListen, String> {
    if text.trim() == "off" {
        return Ok(MetricsListen(None));
    }
    text.trim()
        .parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|e| format!("{text:?}: expected HOST:PORT (e.g. 127.0.0.1:9465) or off: {e}"))
}

impl MetricsArgs {
    fn settings(&self) -> settings::MetricsSettings {
        settings::MetricsSettings {
            listen: self.metrics.0,
            interval: self.metrics_interval,
            silent_after: self.metrics_silent_after,
            lineage_cap: self.metrics_lineage_cap,
        }
    }
}

/// Runs one parsed command line.
pub async fn execute(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Migrate {
            database_url,
            telemetry_compress_after,
            telemetry_retention,
            ledger_compress_after,
            ledger_retention,
        } => {
            let policies = timescale_policies([
                &telemetry_compress_after,
                &telemetry_retention,
                &ledger_compress_after,
                &ledger_retention,
            ])?;
            let p = pool::connect(&database_url, 1)?;
            let mut c = p.get().await.map_err(CommandError::Connect)?;
            let applied = migrate(&mut c).await?;
            tracing::info!(?applied, "migrations applied");
            let report = edge_cloud_store::timescale::apply(&mut c, &policies).await?;
            println!(
                "{}",
                edge_cloud_store::timescale::describe(&report, &policies)
            );
            // Mirror tables shared before ownership was recorded (reliability.md §3): reported,
            // left as they are.
            for collision in edge_cloud_store::migrate::mirror_collisions(&c).await? {
                println!("mirror table collision (left as it is): {collision}");
            }
        }
        Command::Devices { command } => devices::execute(command).await?,
        Command::Pki { command } => pki::execute(command)?,
        Command::Run {
            database_url,
            mqtt_url,
            ca,
            cert,
            key,
            client_id,
            pool_size,
            http,
            jwt_secret,
            jwt_jwks_file,
            jwt_claims,
            spill_dir,
            spill_url,
            spill_secret,
            http_max_connections,
            http_header_timeout_ms,
            http_body_timeout_ms,
            share_group,
            metrics,
        } => {
            let settings = RunnerSettings {
                database_url: Secret::new(database_url),
                pool_size,
                mqtt: MqttSettings {
                    url: mqtt_url,
                    ca,
                    cert,
                    key,
                    client_id,
                    share_group: share_group.filter(|g| !g.trim().is_empty()),
                },
                http,
                jwt_secret: jwt_secret.map(Secret::new),
                jwt_jwks_file,
                claim_mapping: ClaimMapping::new(
                    &jwt_claims.jwt_claim_org,
                    &jwt_claims.jwt_claim_projects,
                    &jwt_claims.jwt_claim_permissions,
                    jwt_claims.jwt_scope_prefix.as_deref(),
                ),
                spill_dir,
                spill_url,
                spill_secret: spill_secret.map(Secret::new),
                http_limits: crate::http::HttpLimits {
                    max_connections: http_max_connections,
                    header_timeout: std::time::Duration::from_millis(http_header_timeout_ms),
                    body_timeout: std::time::Duration::from_millis(http_body_timeout_ms),
                },
                metrics: metrics.settings(),
            };
            run::execute(settings).await?;
        }
        Command::DeadLetters { command } => dead_letters::execute(command).await?,
        Command::Token {
            org,
            project,
            permission,
            ttl,
            subject,
            jwt_secret,
        } => token::print(org, project, permission, &ttl, subject, &jwt_secret)?,
    }
    Ok(())
}

/// The four `migrate` policy flags (telemetry compress/retention, ledger compress/retention),
/// checked before anything touches the database.
fn timescale_policies(
    ages: [&str; 4],
) -> Result<edge_cloud_core::timescale::Policies, CommandError> {
    use edge_cloud_core::timescale::{Policies, PolicyAge, TablePolicy};
    let parse = |t: &str| PolicyAge::parse(t).map_err(|e| CommandError::Refused(e.to_string()));
    Policies {
        telemetry: TablePolicy {
            compress_after: parse(ages[0])?,
            drop_after: parse(ages[1])?,
        },
        ledger: TablePolicy {
            compress_after: parse(ages[2])?,
            drop_after: parse(ages[3])?,
        },
    }
    .checked()
    .map_err(|e| CommandError::Refused(e.to_string()))
}
