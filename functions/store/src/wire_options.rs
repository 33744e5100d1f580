//! `set_wire_options` (edge-policies §0): the grant answering a device's `hello`, queued as a
//! signed pending control like the others (re-sent until acked).

use edge_protocol::control::{sign_in_place, ControlEnvelope, ControlKind};
use edge_protocol::wire::WireOptions;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::registry::Device;
use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// Queues a signed `set_wire_options` for `device`; an older unacked one is superseded (the
/// newest grant decides). Returns the control id.
pub async fn issue_wire_options<C: GenericClient + Sync>(
    c: &C,
    device: &Device,
    options: &WireOptions,
    now: OffsetDateTime,
    control_id: Uuid,
) -> Result<Uuid, StoreError> {
    let issued_at = edge_protocol::timestamp::format(now)
        .map_err(|e| StoreError::Corrupt(format!("issued_at: {e}")))?;
    let mut envelope = ControlEnvelope::set_wire_options(control_id, options, issued_at);
    sign_in_place(&mut envelope, &device.control_key);
    let json = serde_json::to_value(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let kind = ControlKind::SetWireOptions.as_str();
    c.execute_unnamed(
        "UPDATE edge_pending_controls SET status = 'superseded' \
         WHERE device_id = $1 AND status = 'pending' AND control_kind = $2",
        &[&device.device_id, &kind],
    )
    .await?;
    c.execute_unnamed(
        "INSERT INTO edge_pending_controls (control_id, device_id, control_kind, envelope) \
         VALUES ($1, $2, $3, $4)",
        &[&control_id, &device.device_id, &kind, &json],
    )
    .await?;
    Ok(control_id)
}
