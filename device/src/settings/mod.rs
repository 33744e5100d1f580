//! Agent settings: the TOML file of agent.md §5 plus `OMEGA_*` environment overrides, validated
//! once into [`Settings`] (raw → validated, the way ripgrep's low/high-level args work).
//!
//! # Environment overrides
//! Every key can be overridden. The public design's names are kept:
//!
//! | env | key |
//! |---|---|
//! | `OMEGA_MQTT_BROKER_URL` | `connection.server_url` |
//! | `OMEGA_DEVICE_ID` | `connection.device_name` |
//! | `OMEGA_ROOT_TOPIC` | `connection.root_topic` |
//! | `OMEGA_TLS_CA_PATH` | `connection.ca_cert_path` |
//! | `OMEGA_TLS_CERT_PATH` | `connection.client_cert_path` |
//! | `OMEGA_TLS_KEY_PATH` | `connection.client_key_path` |
//! | `OMEGA_SOURCE_DB_PATH` | `sqlite-replication.source_db_path` |
//! | `OMEGA_STATE_DB_PATH` | `sqlite-replication.state_db_path` |
//! | `OMEGA_AUTH_TOKEN` | the control signing key (env only: secrets stay out of files) |
//!
//! Generic rule for every other key: `OMEGA_` + section + `_` + key, upper-cased, `-` → `_`
//! (`OMEGA_CONNECTION_KEEP_ALIVE`, `OMEGA_SQLITE_REPLICATION_FLUSH_INTERVAL`,
//! `OMEGA_SECURITY_SIGNED_CONTROL`, `OMEGA_OBSERVABILITY_METRICS_LISTEN`). `table_strategies` is overridden as a whole with an inline
//! TOML table: `OMEGA_SQLITE_REPLICATION_TABLE_STRATEGIES='{ temps = { strategy = "telemetry",
//! ts_column = "ts" } }'`. A design-name variable wins over the generic one.
//!
//! Every error names the key (and the variable when the value came from the environment), so a
//! bad deployment fails with one line an operator can act on.
//!
//! Rooms: this file holds the validated types; `capture` what the capture layer is configured
//! with (per-table strategies, retention); `read` the TOML tree + environment → [`Settings`].

mod capture;
mod read;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use capture::{
    CaptureConfig, Strategy, TableConfig, DEFAULT_LOCAL_RETENTION_BYTES,
    DEFAULT_SNAPSHOT_CHUNK_ROWS,
};
pub use read::{parse_broker_url, parse_duration};

/// The one error of settings: which key, and what is wrong with it.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`{origin}: {message}")]
    Key {
        key: String,
        /// ` (from env VAR)` when the value came from the environment.
        origin: String,
        message: String,
    },
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
    /// The key material, for HMAC only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `mqtts://` (mTLS) or, with the dev flag, plaintext `mqtt://`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `[connection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub server: BrokerUrl,
    pub device_name: String,
    pub root_topic: String,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub ca_cert_path: PathBuf,
    pub client_cert_path: PathBuf,
    pub client_key_path: PathBuf,
    /// Dev only: permit `mqtt://` without TLS.
    pub allow_plaintext: bool,
    /// First reconnect delay; doubles up to `reconnect_max` (with jitter).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// `[sqlite-replication]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    pub source_db_path: PathBuf,
    pub state_db_path: PathBuf,
    pub flush_interval: Duration,
    pub max_payload_bytes: usize,
    pub max_inflight: usize,
    /// Flush `low_latency_debounce` after a change instead of waiting for `flush_interval`.
    pub low_latency: bool,
    pub low_latency_debounce: Duration,
    /// The IoT Core per-connection token bucket (off only for benchmarks/local brokers).
    pub rate_limit: bool,
    pub max_publishes_per_sec: u32,
    pub max_bytes_per_sec: u64,
    pub capture: CaptureConfig,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Controls must carry a valid HMAC signature. Default **true** (reliability.md §7).
    pub signed_control: bool,
    /// The explicit opt-out needed to run with `signed_control = false` (the agent then logs a
    /// warning at every start).
    pub allow_unsigned_control: bool,
    /// From `OMEGA_AUTH_TOKEN`; required when `signed_control` is on.
    pub control_key: Option<Secret>,
}

/// `[observability]` (observability.md §1, §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservabilitySettings {
    /// `metrics_listen`: where `edge-agent run` serves `GET /metrics`; `None` (unset, or
    /// `"off"`) serves nothing. A non-loopback address is allowed but warned about (no auth).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Validated agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub connection: ConnectionSettings,
    pub replication: ReplicationSettings,
    pub security: SecuritySettings,
    pub observability: ObservabilitySettings,
}

/// Design-name environment variables → key path.
pub const NAMED_ENV: [(&str, &str, &str); 8] = [
    ("OMEGA_MQTT_BROKER_URL", "connection", "server_url"),
    ("OMEGA_DEVICE_ID", "connection", "device_name"),
    ("OMEGA_ROOT_TOPIC", "connection", "root_topic"),
    ("OMEGA_TLS_CA_PATH", "connection", "ca_cert_path"),
    ("OMEGA_TLS_CERT_PATH", "connection", "client_cert_path"),
    ("OMEGA_TLS_KEY_PATH", "connection", "client_key_path"),
    (
        "OMEGA_SOURCE_DB_PATH",
        "sqlite-replication",
        "source_db_path",
    ),
    ("OMEGA_STATE_DB_PATH", "sqlite-replication", "state_db_path"),
];

/// Env variable holding the control signing key.
pub const AUTH_TOKEN_ENV: &str = "OMEGA_AUTH_TOKEN";

/// The generic variable for `section.key`.
pub fn generic_env_name(section: &str, key: &str) -> String {
    format!("OMEGA_{section}_{key}")
        .to_ascii_uppercase()
        .replace('-', "_")
}

impl Settings {
    /// Reads `path`, applies the process environment and validates.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("OMEGA_"))
            .collect();
        Settings::from_parts(&text, path, &env)
    }
    /// Parses TOML `text` (named `path` in errors) with environment `env`. Pure.
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingsError> {
        read::settings(text, path, env)
    }

    /// The capture layer's configuration.
    pub fn capture_config(&self) -> CaptureConfig {
        self.replication.capture.clone()
    }
}

/// The example configuration shipped in `packaging/` (also used by `check` smoke tests).
pub const EXAMPLE_TOML: &str = include_str!("../../packaging/edge-agent.example.toml");
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = r#"
[connection]
server_url = "mqtts://broker.example:8883"
device_name = "gw-07"
root_topic = "acme-prod/gw-07"
ca_cert_path = "/etc/ca.pem"
client_cert_path = "/etc/device.crt"
client_key_path = "/etc/device.key"

[sqlite-replication]
source_db_path = "/var/lib/app/source.db"
state_db_path = "/var/lib/edge-agent/state.db"
"#;

    fn load_raw(text: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_parts(text, Path::new("agent.toml"), &env)
    }

    /// Like a deployment: the control key is in the environment unless the test says
    /// otherwise (a `[security]` section or its own `OMEGA_AUTH_TOKEN`).
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut env = env.to_vec();
        if !text.contains("[security]") && !env.iter().any(|(k, _)| *k == AUTH_TOKEN_ENV) {
            env.push((AUTH_TOKEN_ENV, "k"));
        }
        load_raw(text, &env)
    }

    /// Defect 16 (reliability.md §7): `signed_control` is on unless explicitly turned off with
    /// `allow_unsigned_control = true`; otherwise a config error names the key.
    #[test]
    fn signed_control_defaults_to_true_and_off_needs_allow_unsigned_control() {
        let e = load_raw(MINIMAL, &[]).unwrap_err().to_string();
        assert!(
            e.contains("`security.signed_control`") && e.contains("OMEGA_AUTH_TOKEN"),
            "{e}"
        );
        let s = load_raw(MINIMAL, &[("OMEGA_AUTH_TOKEN", "k")]).unwrap();
        assert!(s.security.signed_control && !s.security.allow_unsigned_control);
        let off = format!("{MINIMAL}\n[security]\nsigned_control = false\n");
        let e = load_raw(&off, &[]).unwrap_err().to_string();
        assert!(
            e.contains("`security.signed_control`") && e.contains("allow_unsigned_control"),
            "{e}"
        );
        let s = load_raw(&format!("{off}allow_unsigned_control = true\n"), &[]).unwrap();
        assert!(!s.security.signed_control && s.security.allow_unsigned_control);
        let s = load_raw(&off, &[("OMEGA_SECURITY_ALLOW_UNSIGNED_CONTROL", "true")]).unwrap();
        assert!(!s.security.signed_control);
    }

    fn error(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = load(MINIMAL, &[]).unwrap();
        assert_eq!(s.connection.server.port, 8883);
        assert!(s.connection.server.tls);
        assert_eq!(s.connection.keep_alive, Duration::from_secs(30));
        assert!(!s.connection.clean_session);
        assert_eq!(s.replication.flush_interval, Duration::from_secs(5));
        assert_eq!(s.replication.max_payload_bytes, 131_072);
        assert_eq!(s.replication.max_inflight, 32);
        assert!(s.replication.rate_limit);
        assert_eq!(s.replication.capture.local_retention_bytes, 268_435_456);
        assert!(s.replication.capture.snapshot_on_first_run);
        assert_eq!(s.replication.capture.snapshot_chunk_rows, 1000);
        assert!(s.security.signed_control);
    }

    #[test]
    fn snapshot_chunk_rows_is_read_and_must_be_positive() {
        let with = |v: &str| {
            MINIMAL.replace(
                "[sqlite-replication]",
                &format!("[sqlite-replication]\nsnapshot_chunk_rows = {v}"),
            )
        };
        let s = load(&with("7"), &[]).unwrap();
        assert_eq!(s.replication.capture.snapshot_chunk_rows, 7);
        let e = load(&with("0"), &[]).unwrap_err().to_string();
        assert!(e.contains("snapshot_chunk_rows"), "{e}");
    }

    #[test]
    fn metrics_listen_is_off_unless_set_and_a_bad_address_names_the_key() {
        assert_eq!(
            load(MINIMAL, &[]).unwrap().observability.metrics_listen,
            None
        );
        let with = |v: &str| format!("{MINIMAL}\n[observability]\nmetrics_listen = {v}\n");
        let s = load(&with("\"127.0.0.1:9464\""), &[]).unwrap();
        assert_eq!(
            s.observability.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            load(&with("\"off\""), &[])
                .unwrap()
                .observability
                .metrics_listen,
            None
        );
        let s = load(
            MINIMAL,
            &[("OMEGA_OBSERVABILITY_METRICS_LISTEN", "[::1]:9500")],
        )
        .unwrap();
        assert_eq!(
            s.observability.metrics_listen,
            Some("[::1]:9500".parse().unwrap())
        );
        for bad in [
            "\"localhost:9464\"",
            "\"127.0.0.1\"",
            "\"127.0.0.1:0\"",
            "9464",
        ] {
            let e = load(&with(bad), &[]).unwrap_err().to_string();
            assert!(
                e.contains("config key `observability.metrics_listen`"),
                "{bad}: {e}"
            );
        }
        let e = load(MINIMAL, &[("OMEGA_OBSERVABILITY_METRICS_LISTEN", "nope")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "observability.metrics_listen` (from env OMEGA_OBSERVABILITY_METRICS_LISTEN)"
            ),
            "{e}"
        );
        let e = load(
            &format!("{MINIMAL}\n[observability]\nlisten = \"x\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("observability.listen"), "{e}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let s = load(EXAMPLE_TOML, &[("OMEGA_AUTH_TOKEN", "k")]).unwrap();
        let t = s.replication.capture.table("sensor_readings");
        assert_eq!(t.strategy, Strategy::Telemetry);
        assert_eq!(t.ts_column.as_deref(), Some("recorded_at"));
        assert!(s.security.signed_control);
        assert_eq!(s.security.control_key.unwrap().expose(), b"k");
    }

    #[test]
    fn environment_overrides_named_and_generic() {
        let s = load(
            MINIMAL,
            &[
                ("OMEGA_MQTT_BROKER_URL", "mqtts://other:9999"),
                ("OMEGA_DEVICE_ID", "gw-08"),
                ("OMEGA_ROOT_TOPIC", "/gw-08"),
                ("OMEGA_STATE_DB_PATH", "/tmp/s.db"),
                ("OMEGA_CONNECTION_KEEP_ALIVE", "45s"),
                ("OMEGA_SQLITE_REPLICATION_FLUSH_INTERVAL", "250ms"),
                ("OMEGA_SQLITE_REPLICATION_MAX_INFLIGHT", "7"),
                (
                    "OMEGA_SQLITE_REPLICATION_TABLE_STRATEGIES",
                    r#"{ temps = { strategy = "telemetry", ts_column = "ts" }, junk = { strategy = "ignore" } }"#,
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.connection.server.host, "other");
        assert_eq!(s.connection.server.port, 9999);
        assert_eq!(s.connection.device_name, "gw-08");
        assert_eq!(s.connection.root_topic, "/gw-08");
        assert_eq!(s.replication.state_db_path, PathBuf::from("/tmp/s.db"));
        assert_eq!(s.connection.keep_alive, Duration::from_secs(45));
        assert_eq!(s.replication.flush_interval, Duration::from_millis(250));
        assert_eq!(s.replication.max_inflight, 7);
        assert_eq!(
            s.replication.capture.table("junk").strategy,
            Strategy::Ignore
        );
    }

    #[test]
    fn errors_name_the_key_and_the_variable() {
        let plain = MINIMAL.replace("mqtts://broker.example:8883", "mqtt://broker.example");
        let e = error(&plain, &[]);
        assert!(
            e.contains("`connection.server_url`") && e.contains("plaintext"),
            "{e}"
        );
        // The dev flag allows it.
        let dev = plain.replace("[connection]", "[connection]\nallow_plaintext = true");
        assert!(!load(&dev, &[]).unwrap().connection.server.tls);

        let e = error(MINIMAL, &[("OMEGA_CONNECTION_KEEP_ALIVE", "soon")]);
        assert!(
            e.contains("`connection.keep_alive` (from env OMEGA_CONNECTION_KEEP_ALIVE)"),
            "{e}"
        );
        let e = error(
            &format!("{MINIMAL}\n[sqlite-replication.table_strategies.t]\nstrategy = \"stream\"\n"),
            &[],
        );
        assert!(
            e.contains("`sqlite-replication.table_strategies.t.strategy`")
                && e.contains("unknown table strategy"),
            "{e}"
        );
        let e = error(&MINIMAL.replace("device_name = \"gw-07\"\n", ""), &[]);
        assert!(e.contains("`connection.device_name`: is required"), "{e}");
        let e = error(
            &MINIMAL
                .replace("keep_alive", "x")
                .replace("[connection]", "[connection]\nkeepalive = 3"),
            &[],
        );
        assert!(e.contains("`connection.keepalive`: unknown key"), "{e}");
        let e = error(&MINIMAL.replace("acme-prod/gw-07", "acme-prod/gw-99"), &[]);
        assert!(e.contains("`connection.root_topic`"), "{e}");
        let e = error(
            &format!("{MINIMAL}\n[security]\nsigned_control = true\n"),
            &[],
        );
        assert!(e.contains("OMEGA_AUTH_TOKEN"), "{e}");
        let e = error("[connection\n", &[]);
        assert!(e.contains("not valid TOML"), "{e}");
        let e = error(
            &format!(
                "{MINIMAL}\n[sqlite-replication.table_strategies.t]\nstrategy = \"telemetry\"\n"
            ),
            &[],
        );
        assert!(e.contains("ts_column") && e.contains("required"), "{e}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = load(
            &format!("{MINIMAL}\n[security]\nsigned_control = true\n"),
            &[("OMEGA_AUTH_TOKEN", "super-secret")],
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("super-secret"));
    }

    #[test]
    fn durations_and_urls() {
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        let u = parse_broker_url("mqtts://a-ats.iot.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        assert!(parse_broker_url("https://x").is_err());
        assert!(parse_broker_url("mqtts://x:0").is_err());
        assert!(parse_broker_url("mqtts://").is_err());
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883").unwrap().port,
            1883
        );
    }
}
