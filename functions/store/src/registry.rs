//! Device registry: device name (the session identity) → ids, topic slug, control key.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// A registered device.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: Uuid,
    pub device_name: String,
    pub org_id: Uuid,
    pub project_id: Uuid,
    pub fleet_id: Uuid,
    pub topic_slug: String,
    /// HMAC key for signed controls.
    pub control_key: Vec<u8>,
}

/// The control key is a secret: never in logs.
impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("device_id", &self.device_id)
            .field("device_name", &self.device_name)
            .field("org_id", &self.org_id)
            .field("project_id", &self.project_id)
            .field("fleet_id", &self.fleet_id)
            .field("topic_slug", &self.topic_slug)
            .field("control_key", &"<redacted>")
            .finish()
    }
}

const COLUMNS: &str =
    "device_id, device_name, org_id, project_id, fleet_id, topic_slug, control_key";

fn from_row(r: &tokio_postgres::Row) -> Device {
    Device {
        device_id: r.get(0),
        device_name: r.get(1),
        org_id: r.get(2),
        project_id: r.get(3),
        fleet_id: r.get(4),
        topic_slug: r.get(5),
        control_key: r.get(6),
    }
}

/// Registers a device. Returns false (and changes nothing) when the name is already taken.
pub async fn create_device<C: GenericClient + Sync>(c: &C, d: &Device) -> Result<bool, StoreError> {
    let n = c
        .execute_unnamed(
            &format!(
                "INSERT INTO edge_devices ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &d.device_id,
                &d.device_name,
                &d.org_id,
                &d.project_id,
                &d.fleet_id,
                &d.topic_slug,
                &d.control_key,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Resolves a session identity.
pub async fn device_by_name<C: GenericClient + Sync>(
    c: &C,
    name: &str,
) -> Result<Option<Device>, StoreError> {
    let row = c
        .query_opt_unnamed(
            &format!("SELECT {COLUMNS} FROM edge_devices WHERE device_name = $1"),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Looks a device up by id.
pub async fn device_by_id<C: GenericClient + Sync>(
    c: &C,
    id: Uuid,
) -> Result<Option<Device>, StoreError> {
    let row = c
        .query_opt_unnamed(
            &format!("SELECT {COLUMNS} FROM edge_devices WHERE device_id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}
