//! Publishing controls to devices (protocol §6) behind one trait: MQTT here (the local runner
//! against mosquitto, or any MQTT endpoint with a service certificate) and the AWS IoT data
//! plane ([`crate::aws::iot::IotDataPublisher`]).
//!
//! Delivery is at-least-once by construction: a control stays `pending` in
//! `edge_pending_controls` and is re-published on the store's backoff schedule until the
//! device's ack marks it `acked` (the ingest handler does that), so a lost publish only costs a
//! retry. The device deduplicates by `control_id`.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;
use edge_cloud_store::controls::due_controls;
use edge_cloud_store::StoreError;
use rumqttc::{AsyncClient, QoS};

/// A publish that did not reach the transport.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MQTT publish: {0}")]
    Mqtt(String),
    #[error("no control transport configured")]
    Unconfigured,
    #[error("IoT data-plane publish: {0}")]
    Aws(String),
}

/// Publishes one control payload on a device's control topic with QoS 1.
pub trait ControlPublisher: Send + Sync {
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// QoS 1 publishes through a rumqttc client whose event loop someone polls (the runner's
/// loop, or [`MqttPublisher::spawn`]).
#[derive(Debug, Clone)]
pub struct MqttPublisher {
    client: AsyncClient,
}

impl MqttPublisher {
    pub fn new(client: AsyncClient) -> Self {
        MqttPublisher { client }
    }

    /// A publisher with its own connection; the returned task polls the event loop (rumqttc
    /// reconnects on the next poll after an error) until aborted.
    pub fn spawn(options: rumqttc::MqttOptions) -> (Self, tokio::task::JoinHandle<()>) {
        let (client, mut events) = AsyncClient::new(options, 64);
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = events.poll().await {
                    tracing::warn!(error = %e, "control publisher connection; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        (MqttPublisher { client }, task)
    }
}

impl ControlPublisher for MqttPublisher {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| PublishError::Mqtt(e.to_string()))
    }
}

/// For a deployment without a control transport yet: every publish fails, so controls stay
/// pending (and visible) instead of being marked as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPublisher;

impl ControlPublisher for NoPublisher {
    async fn publish(&self, _topic: &str, _payload: Vec<u8>) -> Result<(), PublishError> {
        Err(PublishError::Unconfigured)
    }
}

/// Publishes up to `limit` due pending controls; returns how many reached the transport. The
/// store already scheduled each one's next attempt (exponential backoff), so a failed publish
/// is simply retried then.
pub async fn publish_due<P: ControlPublisher>(
    pool: &Pool,
    publisher: &P,
    limit: i64,
) -> Result<usize, StoreError> {
    let mut sent = 0;
    for c in due_controls(pool, limit).await? {
        match publisher.publish(&c.topic, c.payload).await {
            Ok(()) => sent += 1,
            Err(e) => {
                tracing::warn!(error = %e, control_id = %c.control_id, topic = %c.topic,
                    "control publish failed; will retry");
            }
        }
    }
    Ok(sent)
}
