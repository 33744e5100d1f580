//! The local runner's MQTT side (cloud.md §12): plays IoT Core's topic rule against mosquitto.
//!
//! It subscribes as the service identity with plain persistent subscriptions, builds the same [`IngressEnvelope`] the AWS rule builds and
//! calls the same [`crate::ingest::handle`]. Acks are manual (reliability.md §1): a PUBLISH is
//! PUBACKed, in arrival order, only once its outcome is committed; a retryable failure is
//! retried in place with backoff, without a limit, before the next message is taken (the broker
//! redelivers unacked QoS 1 messages to a restarted runner). Beside it run the sweep loop (resume sweep; pending controls
//! (re-)published until acked) and the replay loop — the same code as the `sweep` and `replay`
//! Lambdas.
//!
//! Identity: MQTT does not tell a subscriber who published. The broker's ACL
//! (`pattern write +/%u/sync/...` with `use_identity_as_username`) only lets a device publish
//! under its own name, so the topic's device segment *is* the session identity — the runner
//! uses it as `client_id`, exactly what `clientid()` gives the AWS rule.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use edge_cloud_core::ingress::IngressEnvelope;
use edge_cloud_store::dead_letters::NewDeadLetter;
use edge_protocol::topic::{parse_topic, TopicKind};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};

use crate::control_publisher::MqttPublisher;
use crate::dead_letter;
use crate::ingest::handle;
use crate::Deps;

/// Certificate CN of the service identity (the broker's ACL lets it read every device topic and
/// write every control topic).
pub const SERVICE_IDENTITY: &str = "edge-service";

/// The share group runners join when asked to split the load (`--share-group edge-cloud`).
///
/// Not the default, because mosquitto 2.0.11 (Debian 12) restores a persistent session's
/// `$share/…` subscription from its persistence file only when the client subscribes again:
/// a device's message published between a broker restart and the runner's reconnect matches no
/// subscriber and is dropped, although the device got its PUBACK (docs/reliability.md
/// "Several runners"). A plain subscription is restored with the session. Several runners
/// without a share group each take every message; the ledger makes every second copy a no-op.
pub const SHARE_GROUP: &str = "edge-cloud";

/// Errors that stop the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("MQTT: {0}")]
    Mqtt(Box<rumqttc::ClientError>),
    #[error("TLS material {path}: {message}")]
    Tls { path: String, message: String },
    #[error("MQTT URL {0:?}: expected mqtts://HOST:PORT")]
    Url(String),
}

impl From<rumqttc::ClientError> for RunnerError {
    fn from(e: rumqttc::ClientError) -> Self {
        RunnerError::Mqtt(Box::new(e))
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtts://HOST:PORT`
    pub url: String,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// MQTT client id (the certificate CN is what the broker authorizes).
    pub client_id: String,
    /// `$share/{group}/…` subscriptions instead of plain ones (see [`SHARE_GROUP`]).
    pub share_group: Option<String>,
}

fn tls_err(path: &std::path::Path, message: impl ToString) -> RunnerError {
    RunnerError::Tls {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// rumqttc options with mTLS (ring provider only, as everywhere in the workspace).
pub fn mqtt_options(s: &MqttSettings) -> Result<MqttOptions, RunnerError> {
    let rest = s
        .url
        .strip_prefix("mqtts://")
        .ok_or_else(|| RunnerError::Url(s.url.clone()))?;
    let (host, port) = rest
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .ok_or_else(|| RunnerError::Url(s.url.clone()))?;
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| tls_err(p, e));
    let ca_pem = read(&s.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots
            .add(cert.map_err(|e| tls_err(&s.ca, e))?)
            .map_err(|e| tls_err(&s.ca, e))?;
    }
    let cert_pem = read(&s.cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&s.cert, e))?;
    let key_pem = read(&s.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| tls_err(&s.key, e))?
        .ok_or_else(|| tls_err(&s.key, "no private key"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(&s.ca, e))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| tls_err(&s.cert, e))?;
    let mut options = MqttOptions::new(&s.client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(600 * 1024, 600 * 1024)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    Ok(options)
}

/// Subscriptions: every device → cloud topic of every device, shared across runners.
pub fn subscriptions(share_group: Option<&str>) -> Vec<String> {
    TopicKind::ALL
        .into_iter()
        .filter(TopicKind::is_device_to_cloud)
        .map(|k| match share_group {
            Some(group) => format!("$share/{group}/+/+/{}", k.suffix()),
            None => format!("+/+/{}", k.suffix()),
        })
        .collect()
}

/// Builds the envelope the AWS rule would build for a publish on `topic`.
pub fn envelope_for(topic: &str, payload: &[u8], received_at_ms: i64) -> IngressEnvelope {
    let client_id = parse_topic(topic)
        .map(|t| t.device_name)
        .unwrap_or_default();
    IngressEnvelope {
        topic: topic.to_owned(),
        principal: client_id.clone(),
        client_id,
        received_at_ms,
        payload_b64: base64::engine::general_purpose::STANDARD.encode(payload),
    }
}

fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// Crash window between receiving a PUBLISH and committing its outcome: the failpoint
/// `runner_after_receive` (tests only; `FAILPOINTS=runner_after_receive=return`) aborts the
/// process there, like a kill -9.
fn after_receive() {
    fail::fail_point!("runner_after_receive", |_| std::process::abort());
}

/// Backoff before retry `attempt` (1, 2, …) of a message: 200 ms doubling up to 5 s, for as
/// long as it takes (reliability.md §1: the runner never gives up on a message).
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5)).min(MAX_BACKOFF)
}

/// Longest pause between two attempts at the same message.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` resolves.
///
/// Manual acks (reliability.md §1): the MQTT event loop runs in its own task (keep-alives and
/// reconnects go on while a message waits for the database) and hands each PUBLISH to this
/// loop, which handles one message at a time and PUBACKs it only once its outcome — ledger
/// row or dead letter — is committed. So PUBACKs go out in arrival order, a message is never
/// acked before it is durable, and while PostgreSQL is unreachable no new message is taken:
/// the broker keeps them (its in-flight window is full of unacked ones) in the persistent
/// session. A crash at any point loses nothing: unacked messages are redelivered.
pub async fn run(
    deps: Deps,
    settings: MqttSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunnerError> {
    let mut options = mqtt_options(&settings)?;
    options.set_manual_acks(true);
    let (client, events) = AsyncClient::new(options, 64);
    // What ingest publishes itself (`device_unknown`, reliability.md §7) goes out on the
    // runner's own connection, as the Lambda's goes through the IoT data plane.
    let mut deps = deps;
    deps.publisher = crate::env::ConfiguredPublisher::Mqtt(MqttPublisher::new(client.clone()));
    // Sweep (resume + control re-sends, through the same trait the Lambda uses) and replay run
    // beside the subscription; both are idempotent, so aborting them at shutdown is safe.
    let controls = tokio::spawn(crate::sweep::sweep_loop(
        deps.clone(),
        MqttPublisher::new(client.clone()),
        Duration::from_secs(1),
    ));
    let replay = tokio::spawn(crate::replay::replay_loop(
        deps.clone(),
        crate::replay::DEFAULT_CHUNK,
    ));
    let (received, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_loop(
        client.clone(),
        events,
        received,
        settings.url.clone(),
        settings.share_group.clone(),
    ));
    tokio::pin!(shutdown);
    let result = loop {
        let publish = tokio::select! {
            () = &mut shutdown => break Ok(()),
            p = inbox.recv() => match p {
                Some(p) => p,
                None => break Ok(()),
            },
        };
        after_receive();
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            () = handle_until_committed(&deps, &publish) => {}
        }
        // Only now: the outcome is committed.
        if let Err(e) = client.ack(&publish).await {
            break Err(e.into());
        }
    };
    poller.abort();
    controls.abort();
    replay.abort();
    let _ = client.disconnect().await;
    result
}

/// Drives the MQTT connection: (re)subscribes on every CONNACK and forwards each PUBLISH.
async fn poll_loop(
    client: AsyncClient,
    mut events: EventLoop,
    received: tokio::sync::mpsc::UnboundedSender<Publish>,
    url: String,
    share_group: Option<String>,
) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(%url, "connected; subscribing");
                for topic in subscriptions(share_group.as_deref()) {
                    if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, "subscribing");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if received.send(p).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // rumqttc reconnects on the next poll; back off so a dead broker is not spun on.
                tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Handles one PUBLISH until its outcome is committed: retryable failures (the database or
/// the object store unreachable) are retried with [`retry_backoff`] without a limit; a
/// permanent failure is parked as a dead letter, and writing that is retried the same way.
async fn handle_until_committed(deps: &Deps, p: &Publish) {
    let env = envelope_for(&p.topic, &p.payload, now_ms());
    let mut attempt = 0u32;
    let error = loop {
        match handle(deps, env.clone()).await {
            Ok(outcome) => {
                tracing::info!(topic = %p.topic, ?outcome, "handled");
                return;
            }
            Err(e) if e.is_retryable() => {
                attempt += 1;
                tracing::warn!(topic = %p.topic, error = %e, attempt, "retrying");
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            Err(e) => break e,
        }
    };
    let body = serde_json::to_string(&env).unwrap_or_default();
    let message = format!(
        "handler (attempt {}): {}",
        attempt + 1,
        dead_letter::describe(&error)
    );
    let letter = NewDeadLetter {
        transport: dead_letter::MQTT,
        message_id: None,
        topic: Some(&p.topic),
        body: &body,
        error: &message,
    };
    let mut park_attempt = 0u32;
    while let Err(pe) = dead_letter::park(deps, &letter).await {
        park_attempt += 1;
        tracing::warn!(topic = %p.topic, error = %error, park_error = %pe, attempt = park_attempt,
            "the dead letter could not be written; retrying (the message stays unacked)");
        tokio::time::sleep(retry_backoff(park_attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn envelope_uses_the_topic_identity() {
        let env = envelope_for("acme/gw-07/sync/rows/batch", b"{}", 5);
        assert_eq!(env.client_id, "gw-07");
        assert_eq!(env.payload_b64, "e30=");
        assert!(subscriptions(None).contains(&"+/+/sync/rows/batch".to_owned()));
        assert!(subscriptions(Some(SHARE_GROUP))
            .contains(&"$share/edge-cloud/+/+/sync/rows/batch".to_owned()));
        assert_eq!(subscriptions(None).len(), 5);
    }

    #[test]
    fn retry_backoff_grows_to_a_cap_and_never_ends() {
        assert_eq!(retry_backoff(1), Duration::from_millis(400));
        assert_eq!(retry_backoff(4), Duration::from_millis(3200));
        assert_eq!(retry_backoff(5), MAX_BACKOFF);
        assert_eq!(retry_backoff(u32::MAX), MAX_BACKOFF);
    }
}
