//! mosquitto standing in for AWS IoT Core: mTLS listener, certificate CN as username, and the
//! topic ACL of `spec/protocol.md` §1.
//!
//! The broker runs from `/usr/sbin/mosquitto` (or `mosquitto` on `PATH`) with a config written
//! into its own temp dir, on a free port of 127.0.0.1 that it keeps across
//! [`Broker::restart`], because tests restart it mid-stream and clients must find it again.
//! Persistence is on (in the temp dir), so a graceful restart keeps persistent sessions and their
//! queued QoS 1 messages (`max_queued_messages 0`: none dropped while a subscriber is away),
//! like IoT Core does; [`Broker::kill`] simulates a crash instead.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;

use crate::lifeline::{read_log_tail, Lifeline, LifelineSpec};
use crate::pki::{ClientIdentity, Pki};
use crate::program::find_program;
use crate::{free_port, HarnessError};

// The identities are named where their certificates are issued; the ACL below is written in
// terms of them.
pub use crate::pki::{AUDITOR_USER, SERVICE_USER};

/// Topics under a device's `root_topic` that the device may publish to.
pub const DEVICE_PUBLISH_TOPICS: [&str; 5] = [
    "sync/rows/batch",
    "sync/telemetry/batch",
    "sync/schema/observe",
    "sync/ingest/ack",
    "sync/ingest/request",
];

/// The one topic under a device's `root_topic` that the device may receive.
pub const DEVICE_CONTROL_TOPIC: &str = "sync/ingest/control";

/// How long the broker may take to accept TCP connections after starting.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the broker is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when another process grabbed ours first (first start only).
const PORT_ATTEMPTS: usize = 3;

/// The ACL file: protocol §1, with the username taken from the certificate CN.
///
/// `+` in the first level also matches an empty level, so the slugless root `/gw-07` is covered
/// by the same lines as `acme/gw-07`. Nothing grants any user write access to a device's control
/// topic except the service.
pub fn acl_file_contents() -> String {
    let mut acl = String::from(
        "# Written by edge-e2e (spec/protocol.md §1). Username = client certificate CN.\n\
         # Devices: publish only the device->cloud topics under their own root, receive only\n\
         # their own control topic. `+` also matches the empty level of a slugless root.\n",
    );
    for topic in DEVICE_PUBLISH_TOPICS {
        acl.push_str(&format!("pattern write +/%u/{topic}\n"));
    }
    acl.push_str(&format!("pattern read +/%u/{DEVICE_CONTROL_TOPIC}\n"));
    acl.push_str(&format!(
        "\n# The cloud service: receive everything devices send, publish controls.\n\
         user {SERVICE_USER}\n\
         topic read +/+/sync/#\n\
         topic write +/+/{DEVICE_CONTROL_TOPIC}\n\
         \n# Test-only observer for negative tests: reads everything, writes nothing.\n\
         user {AUDITOR_USER}\n\
         topic read #\n"
    ));
    acl
}

/// A mosquitto broker for one test. Dropping it stops the broker.
#[derive(Debug)]
pub struct Broker {
    pki: Pki,
    dir: TempDir,
    port: u16,
    conf_path: PathBuf,
    log_path: PathBuf,
    program: PathBuf,
    lifeline: Option<Lifeline>,
}

impl Broker {
    /// Starts a broker trusting `pki`'s CA; panics with the broker's log on failure.
    #[track_caller]
    pub fn start(pki: &Pki) -> Broker {
        Broker::try_start(pki).unwrap_or_else(|error| panic!("starting mosquitto: {error}"))
    }

    /// Like [`Broker::start`], returning the error.
    pub fn try_start(pki: &Pki) -> Result<Broker, HarnessError> {
        Broker::try_start_with(pki, "")
    }

    /// Like [`Broker::try_start`], with extra global mosquitto options (one per line, e.g.
    /// `max_queued_messages 10`), written before the listener section.
    pub fn try_start_with(pki: &Pki, extra_config: &str) -> Result<Broker, HarnessError> {
        let program = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .or_else(|| find_program("mosquitto"))
            .ok_or_else(|| HarnessError::MissingProgram("mosquitto".into()))?;
        let dir = tempfile::Builder::new()
            .prefix("edge-e2e-mosquitto-")
            .tempdir()
            .map_err(HarnessError::io("creating the broker directory"))?;
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, acl_file_contents())
            .map_err(HarnessError::io("writing the ACL file"))?;
        let mut broker = Broker {
            pki: pki.clone(),
            conf_path: dir.path().join("mosquitto.conf"),
            log_path: PathBuf::new(),
            dir,
            port: 0,
            program,
            lifeline: None,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            broker.port = free_port()?;
            broker.log_path = broker.dir().join(format!("mosquitto-{}.log", broker.port));
            let conf =
                config_file_contents(pki, broker.dir(), &acl_path, broker.port, extra_config);
            std::fs::write(&broker.conf_path, conf)
                .map_err(HarnessError::io("writing mosquitto.conf"))?;
            match broker.try_start_again() {
                Ok(()) => return Ok(broker),
                Err(error) => {
                    let port_taken = broker.log().contains("in use");
                    last_error = Some(error);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Invalid("mosquitto did not start".into())))
    }

    /// Always `127.0.0.1` (the listener binds only there; the server certificate covers it).
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The listener's port; stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The PKI the broker trusts.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The broker's scratch directory (config, ACL, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the generated `mosquitto.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// The end of the broker's log (connections, ACL denials), for assertions and debugging.
    pub fn log(&self) -> String {
        read_log_tail(&self.log_path)
    }

    /// How many SUBACKs the broker has sent to `client_id` (from its whole log). A test that
    /// publishes right after starting a subscriber waits on this first: mosquitto acknowledges
    /// and drops a QoS 1 publish nobody has subscribed to yet, where IoT Core's rules always
    /// exist.
    pub fn subacks_sent_to(&self, client_id: &str) -> usize {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let needle = format!("Sending SUBACK to {client_id}");
        log.lines().filter(|l| l.ends_with(&needle)).count()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.lifeline
            .as_mut()
            .is_some_and(|lifeline| lifeline.exited().is_none())
    }

    /// Stops the broker gracefully (it saves persistent sessions). No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            lifeline.stop(STOP_DEADLINE);
        }
    }

    /// Kills the broker with `SIGKILL`, as a crash would: in-memory state since the last
    /// autosave is lost. No-op when stopped.
    pub fn kill(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            lifeline.kill_hard();
        }
    }

    /// Starts the broker again on the same port after [`Broker::stop`] / [`Broker::kill`];
    /// panics with the broker's log on failure.
    #[track_caller]
    pub fn start_again(&mut self) {
        if let Err(error) = self.try_start_again() {
            panic!("restarting mosquitto on port {}: {error}", self.port);
        }
    }

    /// Like [`Broker::start_again`], returning the error. No-op when running.
    pub fn try_start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Ok(());
        }
        let mut lifeline = Lifeline::spawn(LifelineSpec {
            what: "mosquitto".into(),
            stop_signal: "TERM",
            log: self.log_path.clone(),
            cleanup_dir: None, // the TempDir owns the directory
            run_as: Vec::new(),
            cwd: self
                .conf_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            command: vec![
                self.program.clone().into_os_string(),
                "-c".into(),
                self.conf_path.clone().into_os_string(),
            ],
        })?;
        let started = Instant::now();
        let addr = self.addr();
        let mut exited = None;
        // Readiness = the listener accepts TCP; it only opens after config, certificates and
        // ACL have loaded.
        let ready = crate::wait::try_wait_until(READY_DEADLINE, "mosquitto to listen", || {
            if let Some(status) = lifeline.exited() {
                exited = Some(status);
                return true;
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if let Some(status) = exited {
            return Err(lifeline.exited_error(status));
        }
        if let Err(error) = ready {
            lifeline.kill_hard();
            return Err(HarnessError::Timeout {
                what: format!("mosquitto to listen on {addr}; log:\n{}", self.log()),
                waited: match error {
                    HarnessError::Timeout { waited, .. } => waited,
                    _ => started.elapsed(),
                },
            });
        }
        self.lifeline = Some(lifeline);
        Ok(())
    }

    /// Graceful stop, then start on the same port.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A rustls client config trusting the broker's CA, authenticating with `identity` if
    /// given. Uses the ring provider explicitly: with both ring and aws-lc-rs in the build,
    /// rustls cannot pick a process default and `ClientConfig::builder()` would panic.
    pub fn tls_config(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<Arc<ClientConfig>, HarnessError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.pki.ca().cert_der().clone())?;
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => {
                builder.with_client_auth_cert(vec![identity.cert_der()], identity.key_der())?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// rumqttc options for `client_id` authenticating with `identity`'s certificate.
    ///
    /// Defaults: clean session, 5 s keep-alive. Adjust with the usual setters, e.g.
    /// `options.set_clean_session(false)` for a device's persistent session.
    #[track_caller]
    pub fn mqtt_options(&self, client_id: &str, identity: &ClientIdentity) -> MqttOptions {
        self.options(client_id, Some(identity))
    }

    /// rumqttc options that present no client certificate (the broker must refuse them).
    #[track_caller]
    pub fn mqtt_options_without_cert(&self, client_id: &str) -> MqttOptions {
        self.options(client_id, None)
    }

    #[track_caller]
    fn options(&self, client_id: &str, identity: Option<&ClientIdentity>) -> MqttOptions {
        let tls = self
            .tls_config(identity)
            .unwrap_or_else(|error| panic!("TLS config for MQTT client {client_id}: {error}"));
        let mut options = MqttOptions::new(client_id, self.host(), self.port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        options
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_file_contents(
    pki: &Pki,
    dir: &Path,
    acl_path: &Path,
    port: u16,
    extra_config: &str,
) -> String {
    let server = pki.server();
    format!(
        "# Written by edge-e2e.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # Sessions and queued messages survive a graceful restart, as with IoT Core.\n\
         persistence true\n\
         persistence_location {dir}/\n\
         # No cap on a persistent session's queue: the default (1,000) silently drops the rest\n\
         # while a subscriber is away (reliability.md §1).\n\
         max_queued_messages 0\n\
         # The files live in a root-only temp dir; do not switch to the `mosquitto` user.\n\
         user root\n\
         log_dest stderr\n\
         # Everything, including \"Denied PUBLISH\" lines: the log is small and per test.\n\
         log_type all\n\
         connection_messages true\n\
         {extra_config}\n\
         listener {port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        acl = acl_path.display(),
        dir = dir.display(),
        ca = pki.ca().cert_path().display(),
        cert = server.cert_path().display(),
        key = server.key_path().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_grants_devices_only_their_own_topics() {
        let acl = acl_file_contents();
        assert!(acl.contains("pattern write +/%u/sync/rows/batch\n"));
        assert!(acl.contains("pattern read +/%u/sync/ingest/control\n"));
        assert!(!acl.contains("pattern write +/%u/sync/ingest/control"));
        assert!(acl.contains("user edge-service\ntopic read +/+/sync/#\n"));
        assert!(acl.contains("user edge-audit\ntopic read #\n"));
    }
}
