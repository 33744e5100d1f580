//! AWS IoT Core: the data-plane control publisher and device provisioning.

use std::path::{Path, PathBuf};

use aws_config::SdkConfig;
use aws_sdk_iotdataplane::primitives::Blob;
use deadpool_postgres::Pool;
use edge_cloud_store::registry::{create_device, device_by_name, Device};

use super::AwsError;
use crate::control_publisher::{ControlPublisher, PublishError};

/// The account's ATS data endpoint (`xxxx-ats.iot.REGION.amazonaws.com`).
pub async fn data_endpoint(sdk: &SdkConfig) -> Result<String, AwsError> {
    let out = aws_sdk_iot::Client::new(sdk)
        .describe_endpoint()
        .endpoint_type("iot:Data-ATS")
        .send()
        .await
        .map_err(|e| AwsError::service("iot:DescribeEndpoint", e))?;
    out.endpoint_address()
        .map(str::to_owned)
        .ok_or_else(|| AwsError::Config("DescribeEndpoint returned no address".into()))
}

/// Controls over the IoT data plane's HTTPS `Publish` at QoS 1: IoT Core queues the message
/// in the device's persistent session while it is offline. No MQTT connection to keep alive
/// across Lambda freezes, and the permission is plain IAM (`iot:Publish` on control topics).
#[derive(Debug, Clone)]
pub struct IotDataPublisher {
    client: aws_sdk_iotdataplane::Client,
}

impl IotDataPublisher {
    /// `endpoint` is the host from [`data_endpoint`] (or `EDGE_IOT_DATA_ENDPOINT`); the data
    /// plane has no regional default host, hence the explicit URL. A full `https://` or
    /// `http://` URL is taken as is (e.g. a local stand-in such as moto).
    pub fn new(sdk: &SdkConfig, endpoint: &str) -> Self {
        let url = if endpoint.starts_with("https://") || endpoint.starts_with("http://") {
            endpoint.to_owned()
        } else {
            format!("https://{endpoint}")
        };
        let conf = aws_sdk_iotdataplane::config::Builder::from(sdk)
            .endpoint_url(url)
            .build();
        IotDataPublisher {
            client: aws_sdk_iotdataplane::Client::from_conf(conf),
        }
    }
}

impl ControlPublisher for IotDataPublisher {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish()
            .topic(topic)
            .qos(1)
            .payload(Blob::new(payload))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| PublishError::Aws(AwsError::service("iot:Publish", e).to_string()))
    }
}

/// What `edge-cloud devices provision-aws` asks for.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub device: Device,
    pub policy_name: String,
    /// Where NAME.crt, NAME.key and NAME.control-key are written.
    pub out_dir: PathBuf,
}

/// What was created.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provisioned {
    pub thing_name: String,
    pub certificate_arn: String,
    pub certificate_id: String,
    pub endpoint: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub control_key_file: PathBuf,
}

/// Creates the thing, a certificate + key pair (active), attaches the device policy to the
/// certificate and the certificate to the thing (the policy's `IsAttached` condition and
/// `${iot:Connection.Thing.ThingName}` depend on that), writes the files and registers the
/// device. The registry is checked first so a duplicate name creates nothing in AWS; the row is
/// written last, so a failed AWS step leaves no device that can never connect.
pub async fn provision(
    sdk: &SdkConfig,
    pool: &Pool,
    req: &ProvisionRequest,
) -> Result<Provisioned, AwsError> {
    let name = req.device.device_name.clone();
    {
        let c = pool
            .get()
            .await
            .map_err(edge_cloud_store::StoreError::from)?;
        if device_by_name(&**c, &name).await?.is_some() {
            return Err(AwsError::Config(format!(
                "device {name:?} is already registered"
            )));
        }
    }
    let iot = aws_sdk_iot::Client::new(sdk);
    // CreateThing is idempotent for an existing thing with the same (empty) attributes.
    iot.create_thing()
        .thing_name(&name)
        .send()
        .await
        .map_err(|e| AwsError::service("iot:CreateThing", e))?;
    let cert = iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .map_err(|e| AwsError::service("iot:CreateKeysAndCertificate", e))?;
    let (Some(arn), Some(id), Some(pem), Some(key)) = (
        cert.certificate_arn(),
        cert.certificate_id(),
        cert.certificate_pem(),
        cert.key_pair().and_then(|k| k.private_key()),
    ) else {
        return Err(AwsError::Config(
            "CreateKeysAndCertificate returned no certificate".into(),
        ));
    };
    iot.attach_policy()
        .policy_name(&req.policy_name)
        .target(arn)
        .send()
        .await
        .map_err(|e| AwsError::service("iot:AttachPolicy", e))?;
    iot.attach_thing_principal()
        .thing_name(&name)
        .principal(arn)
        .send()
        .await
        .map_err(|e| AwsError::service("iot:AttachThingPrincipal", e))?;
    let endpoint = data_endpoint(sdk).await?;

    // The private key exists only in this response: write it before anything else can fail.
    let files = write_identity(&req.out_dir, &name, pem, key, &req.device.control_key)?;
    let c = pool
        .get()
        .await
        .map_err(edge_cloud_store::StoreError::from)?;
    if !create_device(&**c, &req.device).await? {
        return Err(AwsError::Config(format!(
            "device {name:?} was registered concurrently"
        )));
    }
    Ok(Provisioned {
        thing_name: name,
        certificate_arn: arn.to_owned(),
        certificate_id: id.to_owned(),
        endpoint,
        cert_file: files.0,
        key_file: files.1,
        control_key_file: files.2,
    })
}

/// NAME.crt, NAME.key and NAME.control-key in `dir`; the secrets readable by the owner only.
pub fn write_identity(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
    control_key: &[u8],
) -> Result<(PathBuf, PathBuf, PathBuf), AwsError> {
    std::fs::create_dir_all(dir).map_err(|e| AwsError::Io(dir.display().to_string(), e))?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let control = dir.join(format!("{name}.control-key"));
    write_file(&cert, cert_pem.as_bytes(), 0o644)?;
    write_file(&key, key_pem.as_bytes(), 0o600)?;
    write_file(&control, control_key, 0o600)?;
    Ok((cert, key, control))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AwsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |e| AwsError::Io(path.display().to_string(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn identity_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, ck) = write_identity(dir.path(), "gw-07", "CERT", "KEY", b"abc").unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "CERT");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&k), 0o600);
        assert_eq!(mode(&ck), 0o600);
        // A second provisioning of the same name must not clobber a live key.
        assert!(write_identity(dir.path(), "gw-07", "C2", "K2", b"x").is_err());
        assert_eq!(std::fs::read_to_string(&k).unwrap(), "KEY");
    }
}
