//! The only networked module: rumqttc over rustls (ring) with mTLS from PEM files.
//!
//! [`spawn`] starts one task that owns rumqttc's `EventLoop` and does nothing but poll it,
//! because `EventLoop::poll` is not documented as cancel-safe and must therefore never be a
//! branch of the daemon's `select!`. The task runs on its own OS thread (with a one-thread
//! runtime of its own): the daemon does its SQLite work synchronously, and on a shared
//! single-thread runtime a long journal read or delete kept the socket unread and PUBACKs
//! unprocessed for its whole duration (measured: the broker dropped the agent mid-drain). The task forwards what the publisher needs as
//! [`MqttEvent`]s, subscribes to the control topic at QoS 1 on **every** CONNACK (a broker that
//! lost the session also lost the subscription), and sleeps an exponential backoff with full
//! jitter between failed connection attempts so a fleet does not reconnect in lock-step.
//!
//! Publishing is `AsyncClient::try_publish` on a bounded channel: it never waits, so nothing on
//! the capture path can block on the network; a full channel simply leaves the batch waiting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request, TlsConfiguration,
    Transport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use edge_protocol::topic::{topic, TopicKind};

use crate::settings::ConnectionSettings;

/// Errors loading TLS material (each names the config key).
#[derive(Debug, Error)]
pub enum MqttError {
    #[error("config key `{key}`: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {path}: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("starting the MQTT thread: {0}")]
    Thread(std::io::Error),
}

/// What the publisher hears from the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    Connected {
        session_present: bool,
    },
    /// The connection failed or dropped. `fresh_pending`: publishes without a packet id that
    /// rumqttc holds for the next connection (see `outbox`).
    Disconnected {
        fresh_pending: usize,
        error: String,
    },
    OutgoingPublish(u16),
    AwaitAck(u16),
    PubAck(u16),
    /// A message on the control topic.
    Control(Vec<u8>),
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|source| MqttError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(key: &'static str, path: &Path, message: impl Into<String>) -> MqttError {
    MqttError::Pem {
        key,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// CA certificates from `connection.ca_cert_path`.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    load_certs("connection.ca_cert_path", path)
}

/// The device certificate chain from `connection.client_cert_path`.
pub fn load_client_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    load_certs("connection.client_cert_path", path)
}

/// The PEM certificates of config key `key` (at least one).
fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let bytes = read(key, path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(key, path, "contains no PEM certificate"));
    }
    Ok(certs)
}

/// The device key from `connection.client_key_path` (PKCS#8, SEC1 or PKCS#1 PEM).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, MqttError> {
    const KEY: &str = "connection.client_key_path";
    let bytes = read(KEY, path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| pem_err(KEY, path, format!("not PEM: {e}")))?
        .ok_or_else(|| pem_err(KEY, path, "contains no PEM private key"))
}

/// The rustls client configuration: the configured CA only (no system roots), the device's
/// certificate for client authentication, ring as the provider (no aws-lc-rs in the binary).
pub fn tls_config(c: &ConnectionSettings) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    for cert in load_ca(&c.ca_cert_path)? {
        roots
            .add(cert)
            .map_err(|e| pem_err("connection.ca_cert_path", &c.ca_cert_path, e.to_string()))?;
    }
    let chain = load_client_certs(&c.client_cert_path)?;
    let key = load_key(&c.client_key_path)?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                pem_err(
                    "connection.client_cert_path",
                    &c.client_cert_path,
                    format!("certificate/key pair not usable for TLS client auth: {e}"),
                )
            })?;
    Ok(Arc::new(config))
}

/// MQTT options per protocol §1: client id = device name, persistent session, packet size
/// raised to the payload limit (plus topic/header room), a request channel big enough for the
/// publisher's in-flight window.
pub fn options(
    c: &ConnectionSettings,
    tls: Option<Arc<ClientConfig>>,
    max_payload_bytes: usize,
    max_inflight: usize,
) -> MqttOptions {
    let mut o = MqttOptions::new(c.device_name.clone(), c.server.host.clone(), c.server.port);
    o.set_keep_alive(c.keep_alive)
        .set_clean_session(c.clean_session)
        .set_max_packet_size(max_payload_bytes + 4096, max_payload_bytes + 4096)
        // rumqttc's own window only needs to exceed ours; a wide packet-id space makes a fresh
        // id colliding with a still-unacked one (after a reconnect) practically impossible.
        .set_inflight(512)
        .set_request_channel_capacity(max_inflight * 2 + 64);
    if let Some(tls) = tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    }
    o
}

/// Exponential backoff with full jitter. Pure (`random` in `[0, 1)`).
pub fn backoff(attempt: u32, min: Duration, max: Duration, random: f64) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jittered = exp.as_secs_f64() * (0.5 + random / 2.0);
    Duration::from_secs_f64(jittered).max(min / 2)
}

/// A running connection.
#[derive(Debug)]
pub struct Connection {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<MqttEvent>,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A connection dropped without [`Connection::abort`] (the daemon ended with an error and is
/// started over, `daemon::run_supervised`) stops its thread too: a second session under the
/// same client id would take the new one's place at the broker, back and forth.
impl Drop for Connection {
    fn drop(&mut self) {
        self.abort();
    }
}

impl Connection {
    /// Stops the event-loop thread (after a DISCONNECT was given a moment to go out).
    pub fn abort(&mut self) {
        // `notify_one` stores a permit, so a stop sent before the thread waits is not lost.
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The one way the daemon publishes: QoS 1, not retained, on `<root>/<kind>` — and never
/// waiting (`try_publish` on the client's bounded channel; a full channel is an error the
/// caller answers by trying again later).
#[derive(Debug, Clone)]
pub struct Publisher {
    client: AsyncClient,
    root: String,
}

impl Publisher {
    pub fn new(client: AsyncClient, root: String) -> Publisher {
        Publisher { client, root }
    }

    /// Hands `payload` to the client for the topic of `kind`.
    pub fn publish(&self, kind: TopicKind, payload: Vec<u8>) -> Result<(), rumqttc::ClientError> {
        self.client
            .try_publish(topic(&self.root, kind), QoS::AtLeastOnce, false, payload)
    }

    /// Asks the client to send DISCONNECT (never waits).
    pub fn disconnect(&self) -> Result<(), rumqttc::ClientError> {
        self.client.try_disconnect()
    }
}

/// Stack of the MQTT thread: rumqttc + rustls need far less than the 2 MiB default, and a
/// gateway's memory is precious.
const MQTT_THREAD_STACK: usize = 512 * 1024;

/// Starts the connection task.
pub fn spawn(
    options: MqttOptions,
    control_topic: String,
    reconnect_min: Duration,
    reconnect_max: Duration,
) -> Result<Connection, MqttError> {
    let capacity = options.request_channel_capacity();
    let (client, eventloop) = AsyncClient::new(options, capacity);
    let (tx, events) = mpsc::unbounded_channel();
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let driver_client = client.clone();
    let thread = std::thread::Builder::new()
        .name("mqtt".into())
        .stack_size(MQTT_THREAD_STACK)
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    // The daemon sees a connection that never comes up, and says why.
                    let _ = tx.send(MqttEvent::Disconnected {
                        fresh_pending: 0,
                        error: format!("cannot start the MQTT runtime: {e}"),
                    });
                    return;
                }
            };
            rt.block_on(async move {
                tokio::select! {
                    () = drive(eventloop, driver_client, tx, control_topic, reconnect_min, reconnect_max) => {}
                    () = stopped.notified() => {}
                }
            });
        })
        .map_err(MqttError::Thread)?;
    Ok(Connection {
        client,
        events,
        stop,
        thread: Some(thread),
    })
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<MqttEvent>,
    control_topic: String,
    min: Duration,
    max: Duration,
) {
    let mut attempt: u32 = 0;
    // Set once our own DISCONNECT went out: the broker closing the socket after it is the
    // normal end of a graceful shutdown, not a lost connection (it used to be logged as one,
    // "Connection closed by peer abruptly", and read as the broker dropping the agent).
    let mut closing = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                attempt = 0;
                info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                if let Err(e) = client.try_subscribe(control_topic.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "could not queue the control subscription");
                }
                MqttEvent::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => MqttEvent::PubAck(ack.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic != control_topic {
                    continue;
                }
                MqttEvent::Control(p.payload.to_vec())
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    warn!(topic = %control_topic, "broker refused the control subscription");
                }
                continue;
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => MqttEvent::OutgoingPublish(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => MqttEvent::AwaitAck(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                closing = true;
                continue;
            }
            Ok(_) => continue,
            Err(e) if closing => {
                info!(reason = %e, "connection closed after our DISCONNECT");
                let _ = tx.send(MqttEvent::Disconnected {
                    fresh_pending: 0,
                    error: e.to_string(),
                });
                return;
            }
            Err(e) => {
                let fresh_pending = eventloop
                    .pending
                    .iter()
                    .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0 && p.qos != QoS::AtMostOnce))
                    .count();
                let error = e.to_string();
                let _ = tx.send(MqttEvent::Disconnected {
                    fresh_pending,
                    error: error.clone(),
                });
                if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                    return;
                }
                let wait = backoff(attempt, min, max, fastrand::f64());
                attempt = attempt.saturating_add(1);
                warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// `notAfter` of a DER certificate as unix seconds, by walking just enough DER to reach the
/// validity field (no X.509 crate in the device binary for one date).
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | usize::from(*b.get(2 + i)?);
            }
            (len, 2 + n)
        };
        let body = b.get(hdr..hdr.checked_add(len)?)?;
        let rest = b.get(hdr + len..)?;
        Some((tag, body, rest))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    rest = r;
    if tag == 0xa0 {
        let (_, _, r) = tlv(rest)?; // serialNumber
        rest = r;
    }
    let (_, _, r) = tlv(rest)?; // signature algorithm
    let (_, _, r) = tlv(r)?; // issuer
    let (_, validity, _) = tlv(r)?;
    let (_, _, r) = tlv(validity)?; // notBefore
    let (tag, text, _) = tlv(r)?;
    let text = std::str::from_utf8(text).ok()?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(text.get(0..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(0..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let month = u8::try_from(digits(rest.get(0..2)?)?).ok()?;
    let day = u8::try_from(digits(rest.get(2..4)?)?).ok()?;
    let hour = u8::try_from(digits(rest.get(4..6)?)?).ok()?;
    let minute = u8::try_from(digits(rest.get(6..8)?)?).ok()?;
    let second = u8::try_from(digits(rest.get(8..10)?)?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(year).ok()?,
        time::Month::try_from(month).ok()?,
        day,
    )
    .ok()?;
    let t = date.with_hms(hour, minute, second).ok()?.assume_utc();
    Some(t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let min = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        assert!(backoff(0, min, max, 0.0) >= Duration::from_millis(250));
        assert!(backoff(0, min, max, 0.99) <= min);
        assert!(backoff(3, min, max, 0.99) <= Duration::from_secs(4));
        assert!(backoff(3, min, max, 0.0) >= Duration::from_secs(2));
        assert!(backoff(30, min, max, 0.99) <= max);
    }

    #[test]
    fn reads_not_after_from_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["gw".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let expected = time::macros::datetime!(2031-07-09 0:00 UTC).unix_timestamp();
        assert_eq!(cert_not_after(cert.der()), Some(expected));
        params.not_after = rcgen::date_time_ymd(2060, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let expected = time::macros::datetime!(2060-01-02 0:00 UTC).unix_timestamp();
        assert_eq!(cert_not_after(cert.der()), Some(expected));
        assert_eq!(cert_not_after(b"junk"), None);
    }
}
