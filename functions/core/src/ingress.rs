//! Ingress (cloud.md §1): the envelope the IoT rule (or the local runner) builds, and the
//! checks that happen before the worker sees a payload.
//!
//! [`admit`] parses the topic, checks that its device segment is the authenticated session
//! identity, decodes the base64 payload and strips forbidden tenant fields (counting them).
//! Registry resolution (`unknown_device`) needs the database and happens in the handler.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use edge_protocol::tenant::strip_forbidden_fields;
use edge_protocol::topic::{parse_topic, ParsedTopic, TopicError};
use serde::{Deserialize, Serialize};

/// What the IoT rule forwards (`topic()`, `clientid()`, `principal()`, `timestamp()`,
/// `encode(*, 'base64')`) and what the local runner builds from an MQTT publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressEnvelope {
    pub topic: String,
    /// The authenticated session identity (MQTT client id = thing name = certificate CN).
    pub client_id: String,
    /// The broker's principal (certificate id in AWS); informational.
    #[serde(default)]
    pub principal: String,
    pub received_at_ms: i64,
    pub payload_b64: String,
}

/// An envelope that passed ingress: the worker's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub topic: ParsedTopic,
    pub received_at_ms: i64,
    /// The payload after stripping (byte-identical to what arrived when nothing was stripped).
    pub payload: Vec<u8>,
    /// Forbidden tenant fields removed at ingress (protocol §2), sorted.
    pub stripped_fields: Vec<String>,
}

impl Admitted {
    /// The device name, which ingress checked equals the session identity.
    pub fn device_name(&self) -> &str {
        &self.topic.device_name
    }
}

/// Why an envelope never reaches the worker. None of these can be attributed to a registered
/// device's batch, so they are logged and dropped, not retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("envelope is not valid JSON: {0}")]
    Envelope(String),
    #[error("topic: {0}")]
    Topic(#[from] TopicError),
    #[error("topic {topic:?} is not a device → cloud topic")]
    NotDeviceTopic { topic: String },
    #[error("topic device {topic_device:?} is not the session identity {client_id:?}")]
    IdentityMismatch {
        topic_device: String,
        client_id: String,
    },
    #[error("payload_b64 is not base64: {0}")]
    Base64(String),
}

/// Parses an envelope from its JSON text (an SQS message body).
pub fn parse_envelope(body: &str) -> Result<IngressEnvelope, IngressError> {
    serde_json::from_str(body).map_err(|e| IngressError::Envelope(e.to_string()))
}

/// The ingress checks of cloud.md §1, except the registry lookup.
pub fn admit(envelope: &IngressEnvelope) -> Result<Admitted, IngressError> {
    let topic = parse_topic(&envelope.topic)?;
    if !topic.kind.is_device_to_cloud() {
        return Err(IngressError::NotDeviceTopic {
            topic: envelope.topic.clone(),
        });
    }
    if topic.device_name != envelope.client_id {
        return Err(IngressError::IdentityMismatch {
            topic_device: topic.device_name,
            client_id: envelope.client_id.clone(),
        });
    }
    let payload = STANDARD
        .decode(envelope.payload_b64.trim())
        .map_err(|e| IngressError::Base64(e.to_string()))?;
    let (payload, stripped_fields) = strip_tenant_fields(payload);
    Ok(Admitted {
        topic,
        received_at_ms: envelope.received_at_ms,
        payload,
        stripped_fields,
    })
}

/// Removes top-level forbidden tenant fields. The common case (none present) keeps the bytes
/// untouched; a payload that is not a JSON object is left for the decoder to reject.
fn strip_tenant_fields(payload: Vec<u8>) -> (Vec<u8>, Vec<String>) {
    // Cheap pre-check: a field name that never appears cannot be a key.
    let mentions = edge_protocol::tenant::FORBIDDEN_TENANT_FIELDS
        .iter()
        .any(|f| payload.windows(f.len()).any(|w| w == f.as_bytes()));
    if !mentions {
        return (payload, Vec::new());
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return (payload, Vec::new());
    };
    let removed = strip_forbidden_fields(&mut value);
    if removed.is_empty() {
        return (payload, removed);
    }
    match serde_json::to_vec(&value) {
        Ok(bytes) => (bytes, removed),
        Err(_) => (payload, Vec::new()),
    }
}

/// Builds an envelope (the local runner's and the tests' side of the rule).
pub fn envelope(
    topic: &str,
    client_id: &str,
    received_at_ms: i64,
    payload: &[u8],
) -> IngressEnvelope {
    IngressEnvelope {
        topic: topic.to_owned(),
        client_id: client_id.to_owned(),
        principal: client_id.to_owned(),
        received_at_ms,
        payload_b64: STANDARD.encode(payload),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::topic::TopicKind;

    #[test]
    fn admits_a_device_payload() {
        let env = envelope("acme/gw-07/sync/rows/batch", "gw-07", 5, b"{\"a\":1}");
        let admitted = admit(&env).unwrap();
        assert_eq!(admitted.topic.kind, TopicKind::RowsBatch);
        assert_eq!(admitted.device_name(), "gw-07");
        assert_eq!(admitted.payload, b"{\"a\":1}");
        assert!(admitted.stripped_fields.is_empty());
    }

    #[test]
    fn strips_and_counts_tenant_fields() {
        let env = envelope(
            "acme/gw-07/sync/rows/batch",
            "gw-07",
            5,
            br#"{"org_id":"x","device_id":"y","rows":[{"row":{"device_id":1}}]}"#,
        );
        let admitted = admit(&env).unwrap();
        assert_eq!(admitted.stripped_fields, ["device_id", "org_id"]);
        let v: serde_json::Value = serde_json::from_slice(&admitted.payload).unwrap();
        assert_eq!(v, serde_json::json!({"rows":[{"row":{"device_id":1}}]}));
    }

    #[test]
    fn refuses_identity_mismatch_and_bad_input() {
        let env = envelope("acme/gw-08/sync/rows/batch", "gw-07", 5, b"{}");
        assert!(matches!(
            admit(&env),
            Err(IngressError::IdentityMismatch { .. })
        ));
        let env = envelope("acme/gw-07/sync/ingest/control", "gw-07", 5, b"{}");
        assert!(matches!(
            admit(&env),
            Err(IngressError::NotDeviceTopic { .. })
        ));
        let mut env = envelope("acme/gw-07/sync/rows/batch", "gw-07", 5, b"{}");
        env.payload_b64 = "***".into();
        assert!(matches!(admit(&env), Err(IngressError::Base64(_))));
        assert!(parse_envelope("nope").is_err());
        let body = serde_json::to_string(&envelope("a/b/sync/rows/batch", "b", 1, b"x")).unwrap();
        assert_eq!(parse_envelope(&body).unwrap().client_id, "b");
    }
}
