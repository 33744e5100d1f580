//! `edge-cloud devices`: register a device — locally, with a certificate from the local CA
//! when asked — or provision it in AWS IoT Core; either prints the device's ids as JSON.

use clap::{Args, Subcommand};
use edge_cloud_store::pool;
use edge_cloud_store::registry::{create_device, Device};
use rand::RngCore as _;
use uuid::Uuid;

use super::CommandError;
use crate::aws::iot::{provision, ProvisionRequest};
use crate::pki::LocalCa;

#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// Register a device (random ids for those not given); prints its ids as JSON.
    Create {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        slug: String,
        #[command(flatten)]
        ids: DeviceIds,
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
        #[command(flatten)]
        ids: DeviceIds,
        #[arg(long, default_value = ".")]
        out_dir: std::path::PathBuf,
    },
}

/// A fresh control-signing key. It is a printable token: the agent reads it from
/// OMEGA_AUTH_TOKEN and both sides key HMAC-SHA256 with the token's bytes.
pub(super) fn new_control_key() -> Vec<u8> {
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    hex::encode(random).into_bytes()
}

/// Runs one `devices` subcommand.
pub async fn execute(command: DevicesCommand) -> Result<(), CommandError> {
    match command {
        DevicesCommand::Create {
            database_url,
            name,
            slug,
            ids,
            ca_dir,
        } => create(&database_url, name, slug, ids, ca_dir).await,
        DevicesCommand::ProvisionAws {
            database_url,
            name,
            slug,
            policy_name,
            ids,
            out_dir,
        } => provision_aws(&database_url, name, slug, policy_name, ids, out_dir).await,
    }
}

/// The tenant ids given on the command line (random ones for the others).
#[derive(Args, Debug)]
pub struct DeviceIds {
    #[arg(long)]
    org: Option<Uuid>,
    #[arg(long)]
    project: Option<Uuid>,
    #[arg(long)]
    fleet: Option<Uuid>,
}

impl DeviceIds {
    fn device(self, name: String, slug: String, control_key: Vec<u8>) -> Device {
        Device {
            device_id: Uuid::now_v7(),
            device_name: name,
            org_id: self.org.unwrap_or_else(Uuid::now_v7),
            project_id: self.project.unwrap_or_else(Uuid::now_v7),
            fleet_id: self.fleet.unwrap_or_else(Uuid::now_v7),
            topic_slug: slug,
            control_key,
        }
    }
}

async fn create(
    database_url: &str,
    name: String,
    slug: String,
    ids: DeviceIds,
    ca_dir: Option<std::path::PathBuf>,
) -> Result<(), CommandError> {
    edge_protocol::topic::validate_registrable_device_name(&name)?;
    edge_protocol::topic::validate_slug(&slug)?;
    let key = new_control_key();
    let device = ids.device(name, slug, key.clone());
    // Issue the certificate before registering, so a bad name or CA directory leaves
    // no half-provisioned device behind.
    let issued = match &ca_dir {
        Some(dir) => {
            // Never overwrite an identity already issued from this CA (another device's, or
            // the runner's own `edge-service`).
            for ext in ["crt", "key", "control-key"] {
                let existing = dir.join(format!("{}.{ext}", device.device_name));
                if existing.exists() {
                    return Err(CommandError::Refused(format!(
                        "{} already exists: device {:?} was issued before; not overwritten",
                        existing.display(),
                        device.device_name
                    )));
                }
            }
            let ca = LocalCa::open_or_create(dir)?;
            let identity = ca.issue_client(&device.device_name)?;
            let key_file = dir.join(format!("{}.control-key", device.device_name));
            std::fs::write(&key_file, &key).map_err(|source| CommandError::Io {
                what: format!("writing {}", key_file.display()),
                source,
            })?;
            Some((ca.cert_path(), identity, key_file))
        }
        None => None,
    };
    let p = pool::connect(database_url, 1)?;
    let c = p.get().await.map_err(CommandError::Connect)?;
    if !create_device(&**c, &device).await? {
        return Err(CommandError::Refused(format!(
            "device {:?} already exists",
            device.device_name
        )));
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
    Ok(())
}

async fn provision_aws(
    database_url: &str,
    name: String,
    slug: String,
    policy_name: String,
    ids: DeviceIds,
    out_dir: std::path::PathBuf,
) -> Result<(), CommandError> {
    edge_protocol::topic::validate_registrable_device_name(&name)?;
    edge_protocol::topic::validate_slug(&slug)?;
    if slug.is_empty() {
        return Err(CommandError::Refused(
            "--slug is required: the IoT policy only allows {slug}/{thing}/sync/...".into(),
        ));
    }
    let req = ProvisionRequest {
        device: ids.device(name, slug, new_control_key()),
        policy_name,
        out_dir,
    };
    let sdk = crate::aws::config::load().await;
    let p = pool::connect(database_url, 1)?;
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
    Ok(())
}
