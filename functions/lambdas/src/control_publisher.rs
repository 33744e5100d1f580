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

use crate::metrics::CloudMetrics;

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

/// Publishes up to `limit` due pending controls; returns how many reached the transport (each
/// counted in `edge_controls_published_total`). The store already scheduled each one's next
/// attempt (exponential backoff), so a failed publish is simply retried then.
pub async fn publish_due<P: ControlPublisher>(
    pool: &Pool,
    publisher: &P,
    limit: i64,
    metrics: &CloudMetrics,
) -> Result<usize, StoreError> {
    let mut sent = 0;
    for c in due_controls(pool, limit).await? {
        match publisher.publish(&c.topic, c.payload).await {
            Ok(()) => {
                sent += 1;
                metrics.control_published(&c.kind, c.attempts);
            }
            Err(e) => {
                tracing::warn!(error = %e, control_id = %c.control_id, topic = %c.topic,
                    "control publish failed; will retry");
            }
        }
    }
    Ok(sent)
}

/// How often at most one identity (topic root) is told `device_unknown` (reliability.md §7): a
/// flood of batches from an unknown device costs one control per interval, not one per batch.
pub const DEVICE_UNKNOWN_INTERVAL_MS: i64 = 60_000;
/// Identities remembered by the throttle at most; past that, expired entries are dropped first
/// and then the oldest, so an attacker cycling identities cannot grow memory without bound.
pub const DEVICE_UNKNOWN_MAX_TRACKED: usize = 10_000;
/// A `device_unknown` publish never holds up ingest longer than this.
pub const DEVICE_UNKNOWN_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-process throttle of `device_unknown` notices, by topic root. In-memory on purpose: the
/// notice is advisory (unsigned, changes only the agent's `status`), so each Lambda instance
/// or runner throttling on its own is enough, and no table is written for unknown identities.
#[derive(Debug, Default)]
pub struct DeviceUnknownThrottle {
    last_sent_ms: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl DeviceUnknownThrottle {
    /// Whether a notice to `root` may go out at `now_ms`; if so, it is recorded as sent.
    pub fn admit(&self, root: &str, now_ms: i64) -> bool {
        let mut last = match self.last_sent_ms.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(at) = last.get(root) {
            if now_ms - at < DEVICE_UNKNOWN_INTERVAL_MS {
                return false;
            }
        }
        if last.len() >= DEVICE_UNKNOWN_MAX_TRACKED {
            last.retain(|_, at| now_ms - *at < DEVICE_UNKNOWN_INTERVAL_MS);
            if last.len() >= DEVICE_UNKNOWN_MAX_TRACKED {
                if let Some(oldest) = last
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
                {
                    last.remove(&oldest);
                }
            }
        }
        last.insert(root.to_owned(), now_ms);
        true
    }
}

/// Publishes `{control_kind:"device_unknown", reason, issued_at}` on `root`'s control topic
/// unless the throttle says one went out recently. Best effort: returns whether it reached the
/// transport (a failure is logged; the device's next batch after the interval tries again).
pub async fn publish_device_unknown<P: ControlPublisher>(
    publisher: &P,
    throttle: &DeviceUnknownThrottle,
    root: &str,
    reason: &str,
    now: time::OffsetDateTime,
) -> bool {
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    if !throttle.admit(root, now_ms) {
        return false;
    }
    let issued_at = edge_protocol::timestamp::format(now).unwrap_or_default();
    let notice = edge_protocol::control::DeviceUnknown::new(reason, issued_at);
    let payload = match serde_json::to_vec(&notice) {
        Ok(p) => p,
        Err(_) => return false,
    };
    let topic = edge_protocol::topic::topic(root, edge_protocol::topic::TopicKind::IngestControl);
    match tokio::time::timeout(
        DEVICE_UNKNOWN_PUBLISH_TIMEOUT,
        publisher.publish(&topic, payload),
    )
    .await
    {
        Ok(Ok(())) => {
            tracing::warn!(%topic, reason, "device_unknown published");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(%topic, reason, error = %e, "device_unknown not published");
            false
        }
        Err(_) => {
            tracing::warn!(%topic, reason, "device_unknown publish timed out");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_unknown_is_throttled_per_root_and_memory_is_bounded() {
        let t = DeviceUnknownThrottle::default();
        assert!(t.admit("acme/gw-99", 0));
        assert!(!t.admit("acme/gw-99", DEVICE_UNKNOWN_INTERVAL_MS - 1));
        assert!(t.admit("acme/gw-98", 1));
        assert!(t.admit("acme/gw-99", DEVICE_UNKNOWN_INTERVAL_MS));
        for i in 0..(DEVICE_UNKNOWN_MAX_TRACKED + 50) {
            assert!(t.admit(&format!("x/d{i}"), DEVICE_UNKNOWN_INTERVAL_MS + 2));
        }
        let len = t.last_sent_ms.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len <= DEVICE_UNKNOWN_MAX_TRACKED, "{len}");
    }
}
