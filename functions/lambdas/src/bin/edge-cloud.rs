//! `edge-cloud` — the local runner (cloud.md §12): `migrate`, `devices create`, `run`.
//!
//! Thin: parses flags (each also read from the environment), builds the pool once and calls the
//! library. `token` and the HTTP API arrive with the API issue; `--ca-dir` certificate issuing
//! with the provisioning work.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_functions::api::auth::{mint, AuthConfig, Claims};
use edge_functions::api::Api;
use edge_functions::aws::iot::{provision, ProvisionRequest};
use edge_functions::pki::LocalCa;
use edge_functions::runner::{run, MqttSettings};
use edge_functions::objects::local::{self as spill_http, LocalObjects};
use edge_functions::env::Objects;
use edge_functions::store::registry::{create_device, Device};
use edge_functions::store::{migrate::migrate, pool};
use edge_functions::Deps;
use rand::RngCore as _;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "edge-cloud", about = "edge-sync cloud side on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the database migrations (idempotent).
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
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

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Register a device (random ids for those not given); prints its ids as JSON.
    Create {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        slug: String,
        #[arg(long)]
        org: Option<Uuid>,
        #[arg(long)]
        project: Option<Uuid>,
        #[arg(long)]
        fleet: Option<Uuid>,
        /// Also issue NAME.crt/NAME.key signed by the CA in DIR (ca.crt/ca.key, created when
        /// missing) and write the control-signing key to NAME.control-key.
        #[arg(long, env = "EDGE_CA_DIR")]
        ca_dir: Option<std::path::PathBuf>,
    },
    /// Provision a device in AWS IoT Core: create the thing, an active certificate + key pair,
    /// attach the device policy (the stack's DevicePolicyName output) and the thing principal,
    /// write NAME.crt/NAME.key/NAME.control-key to --out-dir, then register the device.
    /// Credentials and region come from the standard AWS environment/profile chain.
    ProvisionAws {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        name: String,
        #[arg(long, env = "EDGE_TOPIC_SLUG")]
        slug: String,
        #[arg(long, env = "EDGE_IOT_POLICY_NAME")]
        policy_name: String,
        #[arg(long)]
        org: Option<Uuid>,
        #[arg(long)]
        project: Option<Uuid>,
        #[arg(long)]
        fleet: Option<Uuid>,
        #[arg(long, default_value = ".")]
        out_dir: std::path::PathBuf,
    },
}

/// A fresh control-signing key. It is a printable token: the agent reads it from
/// OMEGA_AUTH_TOKEN and both sides key HMAC-SHA256 with the token's bytes.
fn new_control_key() -> Vec<u8> {
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    hex::encode(random).into_bytes()
}

#[derive(Subcommand, Debug)]
enum DeadLettersCommand {
    /// List parked messages (open ones unless --all), oldest first.
    List {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Include resolved dead letters.
        #[arg(long)]
        all: bool,
        /// One JSON object per line, bodies included.
        #[arg(long)]
        json: bool,
    },
    /// Feed parked messages through the ingest handler again (after fixing the cause);
    /// duplicates are harmless. Exits non-zero when any retry failed again.
    Retry {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Only this dead letter (default: every open one).
        #[arg(long)]
        id: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create (or reuse) the CA in DIR and issue the broker's server certificate
    /// (server.crt/server.key for localhost, 127.0.0.1, ::1) and the service identity
    /// (edge-service.crt/key) the runner connects with.
    Init {
        #[arg(long, env = "EDGE_CA_DIR")]
        ca_dir: std::path::PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let p = pool::connect(&database_url, 1)?;
            let mut c = p.get().await.context("connecting to the database")?;
            let applied = migrate(&mut c).await?;
            tracing::info!(?applied, "migrations applied");
        }
        Command::Devices {
            command:
                DevicesCommand::Create {
                    database_url,
                    name,
                    slug,
                    org,
                    project,
                    fleet,
                    ca_dir,
                },
        } => {
            edge_protocol::topic::validate_device_name(&name)?;
            edge_protocol::topic::validate_slug(&slug)?;
            let key = new_control_key();
            let device = Device {
                device_id: Uuid::now_v7(),
                device_name: name,
                org_id: org.unwrap_or_else(Uuid::now_v7),
                project_id: project.unwrap_or_else(Uuid::now_v7),
                fleet_id: fleet.unwrap_or_else(Uuid::now_v7),
                topic_slug: slug,
                control_key: key.clone(),
            };
            // Issue the certificate before registering, so a bad name or CA directory leaves
            // no half-provisioned device behind.
            let issued = match &ca_dir {
                Some(dir) => {
                    let ca = LocalCa::open_or_create(dir)?;
                    let identity = ca.issue_client(&device.device_name)?;
                    let key_file = dir.join(format!("{}.control-key", device.device_name));
                    std::fs::write(&key_file, &key)
                        .with_context(|| format!("writing {}", key_file.display()))?;
                    Some((ca.cert_path(), identity, key_file))
                }
                None => None,
            };
            let p = pool::connect(&database_url, 1)?;
            let c = p.get().await.context("connecting to the database")?;
            if !create_device(&**c, &device).await? {
                anyhow::bail!("device {:?} already exists", device.device_name);
            }
            println!(
                "{}",
                serde_json::json!({
                    "device_name": device.device_name,
                    "device_id": device.device_id,
                    "org_id": device.org_id,
                    "project_id": device.project_id,
                    "fleet_id": device.fleet_id,
                    "topic_slug": device.topic_slug,
                    "control_key": String::from_utf8_lossy(&device.control_key),
                    "ca_cert": issued.as_ref().map(|(ca, _, _)| ca),
                    "cert": issued.as_ref().map(|(_, id, _)| &id.cert_path),
                    "key": issued.as_ref().map(|(_, id, _)| &id.key_path),
                    "control_key_file": issued.as_ref().map(|(_, _, k)| k),
                })
            );
        }
        Command::Devices {
            command:
                DevicesCommand::ProvisionAws {
                    database_url,
                    name,
                    slug,
                    policy_name,
                    org,
                    project,
                    fleet,
                    out_dir,
                },
        } => {
            edge_protocol::topic::validate_device_name(&name)?;
            edge_protocol::topic::validate_slug(&slug)?;
            anyhow::ensure!(
                !slug.is_empty(),
                "--slug is required: the IoT policy only allows {{slug}}/{{thing}}/sync/..."
            );
            let req = ProvisionRequest {
                device: Device {
                    device_id: Uuid::now_v7(),
                    device_name: name,
                    org_id: org.unwrap_or_else(Uuid::now_v7),
                    project_id: project.unwrap_or_else(Uuid::now_v7),
                    fleet_id: fleet.unwrap_or_else(Uuid::now_v7),
                    topic_slug: slug,
                    control_key: new_control_key(),
                },
                policy_name,
                out_dir,
            };
            let sdk = edge_functions::aws::config::load().await;
            let p = pool::connect(&database_url, 1)?;
            let done = provision(&sdk, &p, &req).await?;
            let d = &req.device;
            println!(
                "{}",
                serde_json::json!({
                    "device_name": d.device_name,
                    "device_id": d.device_id,
                    "org_id": d.org_id,
                    "project_id": d.project_id,
                    "fleet_id": d.fleet_id,
                    "topic_slug": d.topic_slug,
                    "thing_name": done.thing_name,
                    "certificate_arn": done.certificate_arn,
                    "mqtt_url": format!("mqtts://{}:8883", done.endpoint),
                    "cert": done.cert_file,
                    "key": done.key_file,
                    "control_key_file": done.control_key_file,
                    "ca_cert": "AmazonRootCA1.pem (see docs/deploy.md)",
                })
            );
        }
        Command::Pki {
            command:
                PkiCommand::Init {
                    ca_dir,
                    server_names,
                },
        } => {
            let ca = LocalCa::open_or_create(&ca_dir)?;
            let mut names = vec!["localhost", "127.0.0.1", "::1"];
            names.extend(server_names.iter().map(String::as_str));
            let server = ca.issue_server(&names)?;
            let service = ca.issue_client(edge_functions::runner::SERVICE_IDENTITY)?;
            println!(
                "{}",
                serde_json::json!({
                    "ca_cert": ca.cert_path(),
                    "server_cert": server.cert_path,
                    "server_key": server.key_path,
                    "service_cert": service.cert_path,
                    "service_key": service.key_path,
                })
            );
        }
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
            spill_dir,
            spill_url,
            spill_secret,
        } => {
            let p = pool::connect(&database_url, pool_size)?;
            {
                let mut c = p.get().await.context("connecting to the database")?;
                migrate(&mut c).await?;
            }
            std::fs::create_dir_all(&spill_dir)
                .with_context(|| format!("creating the spill directory {}", spill_dir.display()))?;
            let secret = match spill_secret {
                Some(s) if !s.is_empty() => s.into_bytes(),
                _ => new_control_key(),
            };
            let objects = LocalObjects::new(
                spill_dir,
                &spill_url.unwrap_or_else(|| format!("http://{http}")),
                secret,
            );
            let deps = Deps::new(p.clone()).with_objects(Objects::Local(objects.clone()));
            let api_task = serve_api(p, objects, http, jwt_secret, jwt_jwks_file).await?;
            let settings = MqttSettings {
                url: mqtt_url,
                ca,
                cert,
                key,
                client_id,
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            };
            let result = run(deps, settings, shutdown).await;
            api_task.abort();
            result?;
        }
        Command::DeadLetters { command } => dead_letters_command(command).await?,
        Command::Token {
            org,
            project,
            permission,
            ttl,
            subject,
            jwt_secret,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("clock before 1970")?
                .as_secs();
            let claims = Claims {
                sub: subject,
                org_id: org,
                projects: project,
                permissions: permission,
                exp: now + parse_ttl(&ttl)?,
                iat: now,
            };
            println!("{}", mint(jwt_secret.as_bytes(), &claims)?);
        }
    }
    Ok(())
}

/// Starts the HTTP API on `addr` (cloud.md §12: the runner serves it on localhost), with the
/// spill upload endpoint (`PUT /spill/...`, protocol §7) on the same listener.
async fn serve_api(
    pool: deadpool_postgres::Pool,
    objects: LocalObjects,
    addr: std::net::SocketAddr,
    secret: Option<String>,
    jwks: Option<std::path::PathBuf>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut auth = match secret {
        Some(s) if !s.is_empty() => AuthConfig::hs256(s.into_bytes()),
        _ => AuthConfig::default(),
    };
    if let Some(f) = jwks {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {f:?}"))?;
        auth = auth.with_jwks_json(&text)?;
    }
    // Optional: tokens must then carry exactly this `iss` / this `aud`.
    auth = auth.with_expected_claims_from_env();
    if !auth.is_configured() {
        tracing::warn!("no EDGE_JWT_SECRET or JWKS: every API request will be refused (401)");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP API to {addr}"))?;
    tracing::info!(%addr, "HTTP API listening");
    let api = std::sync::Arc::new(Api::new(pool, auth));
    Ok(tokio::spawn(async move {
        let objects = std::sync::Arc::new(objects);
        if let Err(e) =
            spill_http::serve(objects, Some(api), listener, std::future::pending()).await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    }))
}

async fn dead_letters_command(command: DeadLettersCommand) -> anyhow::Result<()> {
    use edge_functions::dead_letter::{retry, retry_open, RetryOutcome};
    use edge_functions::store::dead_letters::list;
    match command {
        DeadLettersCommand::List {
            database_url,
            all,
            json,
        } => {
            let p = pool::connect(&database_url, 1)?;
            let c = p.get().await.context("connecting to the database")?;
            let mut after = 0;
            let mut shown = 0;
            loop {
                let page = list(&**c, all, after, 500).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for d in &page {
                    shown += 1;
                    if json {
                        println!("{}", serde_json::to_string(d)?);
                    } else {
                        println!(
                            "{:>6}  {}  {:<4}  {}  attempts={}  {}{}",
                            d.id,
                            d.created_at,
                            d.transport,
                            d.topic.as_deref().unwrap_or("-"),
                            d.attempts,
                            d.error,
                            d.resolution
                                .as_deref()
                                .map(|r| format!("  [resolved: {r}]"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            if !json {
                eprintln!("{shown} dead letter(s)");
            }
        }
        DeadLettersCommand::Retry { database_url, id } => {
            let deps = Deps::new(pool::connect(&database_url, 2)?);
            let outcomes = match id {
                Some(id) => vec![(id, retry(&deps, id).await?)],
                None => retry_open(&deps).await?,
            };
            let mut failed = 0;
            for (id, outcome) in &outcomes {
                match outcome {
                    RetryOutcome::Resolved(o) => println!("{id}: resolved ({o})"),
                    RetryOutcome::Failed(e) => {
                        failed += 1;
                        println!("{id}: failed again: {e}");
                    }
                    RetryOutcome::AlreadyResolved => println!("{id}: already resolved"),
                    RetryOutcome::NotFound => {
                        failed += 1;
                        println!("{id}: no such dead letter");
                    }
                }
            }
            eprintln!("{} retried, {failed} failed", outcomes.len());
            if failed > 0 {
                anyhow::bail!("{failed} dead letter(s) still failing");
            }
        }
    }
    Ok(())
}

/// `90s`, `30m`, `1h`, `7d` → seconds.
fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("ttl {s:?}: expected e.g. 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("ttl {s:?}: unit must be s, m, h or d"),
    };
    Ok(n * mult)
}
