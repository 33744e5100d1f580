//! The TOML tree + `OMEGA_*` environment → validated [`Settings`]: unknown keys rejected, env
//! values merged in (remembering where each came from, for error messages), every key parsed
//! and range-checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::{
    generic_env_name, BrokerUrl, CaptureConfig, ConnectionSettings, ObservabilitySettings,
    ReplicationSettings, Secret, SecuritySettings, Settings, SettingsError, Strategy, TableConfig,
    AUTH_TOKEN_ENV, DEFAULT_LOCAL_RETENTION_BYTES, DEFAULT_SNAPSHOT_CHUNK_ROWS, NAMED_ENV,
};

const CONNECTION_KEYS: &[&str] = &[
    "server_url",
    "device_name",
    "root_topic",
    "keep_alive",
    "clean_session",
    "ca_cert_path",
    "client_cert_path",
    "client_key_path",
    "allow_plaintext",
    "reconnect_min",
    "reconnect_max",
];
const REPLICATION_KEYS: &[&str] = &[
    "source_db_path",
    "state_db_path",
    "flush_interval",
    "max_payload_bytes",
    "local_retention_bytes",
    "snapshot_on_first_run",
    "snapshot_chunk_rows",
    "app_sqlite_has_json1",
    "max_inflight",
    "low_latency",
    "low_latency_debounce",
    "rate_limit",
    "max_publishes_per_sec",
    "max_bytes_per_sec",
    "table_strategies",
];
const SECURITY_KEYS: &[&str] = &["signed_control", "allow_unsigned_control"];
const OBSERVABILITY_KEYS: &[&str] = &["metrics_listen"];
const SECTIONS: &[(&str, &[&str])] = &[
    ("connection", CONNECTION_KEYS),
    ("sqlite-replication", REPLICATION_KEYS),
    ("security", SECURITY_KEYS),
    ("observability", OBSERVABILITY_KEYS),
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn of(&self, key: &str) -> String {
        self.0
            .get(key)
            .map(|var| format!(" (from env {var})"))
            .unwrap_or_default()
    }
}

fn key_error(origins: &Origins, key: &str, message: impl Into<String>) -> SettingsError {
    SettingsError::Key {
        key: key.to_owned(),
        origin: origins.of(key),
        message: message.into(),
    }
}

/// Parses TOML `text` (named `path` in errors) with environment `env` into settings. Pure.
pub(super) fn settings(
    text: &str,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Settings, SettingsError> {
    let mut root: Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_owned(),
        })?;
    let mut origins = Origins::default();
    // Reject unknown sections/keys: a typo would otherwise silently fall back to a default.
    for (section, value) in &root {
        let Some((_, keys)) = SECTIONS.iter().find(|(s, _)| s == section) else {
            return Err(key_error(&origins, section, "unknown section"));
        };
        let Value::Table(table) = value else {
            return Err(key_error(&origins, section, "must be a table ([section])"));
        };
        for key in table.keys() {
            if !keys.contains(&key.as_str()) {
                return Err(key_error(
                    &origins,
                    &format!("{section}.{key}"),
                    format!("unknown key (known: {})", keys.join(", ")),
                ));
            }
        }
    }
    apply_env(&mut root, env, &mut origins)?;
    let r = Reader {
        root: &root,
        origins: &origins,
    };
    let connection = read_connection(&r)?;
    let replication = read_replication(&r)?;
    // On by default (reliability.md §7); off only with an explicit second key.
    let signed_control = r.bool("security", "signed_control")?.unwrap_or(true);
    let allow_unsigned_control = r
        .bool("security", "allow_unsigned_control")?
        .unwrap_or(false);
    if !signed_control && !allow_unsigned_control {
        return Err(key_error(
            &origins,
            "security.signed_control",
            "is false, which accepts unsigned pause/resume/upload controls from anyone who can \
             publish on the control topic; set security.allow_unsigned_control = true as well \
             to run so (dev only)",
        ));
    }
    let control_key = env
        .get(AUTH_TOKEN_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| Secret::new(v.as_bytes().to_vec()));
    if signed_control && control_key.is_none() {
        return Err(key_error(
            &origins,
            "security.signed_control",
            format!("is true but {AUTH_TOKEN_ENV} (the control key) is not set"),
        ));
    }
    Ok(Settings {
        connection,
        replication,
        security: SecuritySettings {
            signed_control,
            allow_unsigned_control,
            control_key,
        },
        observability: ObservabilitySettings {
            metrics_listen: read_metrics_listen(&r)?,
        },
    })
}

/// `observability.metrics_listen`: `host:port` with an IP literal (`127.0.0.1:9464`,
/// `[::1]:9464`); unset, empty or `"off"` = no endpoint. No name lookup: the listener binds
/// exactly what is written, and a typo fails here, not at the first scrape.
fn read_metrics_listen(r: &Reader<'_>) -> Result<Option<std::net::SocketAddr>, SettingsError> {
    const S: &str = "observability";
    const K: &str = "metrics_listen";
    let Some(raw) = r.string(S, K)? else {
        return Ok(None);
    };
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match raw.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(Some(addr)),
        Ok(_) => Err(r.err(S, K, "port 0 is not a fixed address to scrape")),
        Err(_) => Err(r.err(
            S,
            K,
            format!("expected an IP address and port like \"127.0.0.1:9464\", or \"off\"; found {raw:?}"),
        )),
    }
}

fn apply_env(
    root: &mut Table,
    env: &BTreeMap<String, String>,
    origins: &mut Origins,
) -> Result<(), SettingsError> {
    let mut set = |section: &str, key: &str, var: &str, value: Value| {
        let entry = root
            .entry(section.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = entry {
            t.insert(key.to_owned(), value);
        }
        origins.0.insert(format!("{section}.{key}"), var.to_owned());
    };
    for (section, keys) in SECTIONS {
        for key in *keys {
            let var = generic_env_name(section, key);
            let Some(raw) = env.get(&var) else { continue };
            let value = if *key == "table_strategies" {
                let doc: Table = format!("v = {raw}").parse().map_err(|e: toml::de::Error| {
                    SettingsError::Key {
                        key: format!("{section}.{key}"),
                        origin: format!(" (from env {var})"),
                        message: format!("not an inline TOML table: {}", e.message()),
                    }
                })?;
                doc.get("v").cloned().unwrap_or(Value::Table(Table::new()))
            } else {
                Value::String(raw.clone())
            };
            set(section, key, &var, value);
        }
    }
    for (var, section, key) in NAMED_ENV {
        if let Some(raw) = env.get(var) {
            set(section, key, var, Value::String(raw.clone()));
        }
    }
    Ok(())
}

/// Typed access to the merged tree; env values arrive as strings and are parsed here.
struct Reader<'a> {
    root: &'a Table,
    origins: &'a Origins,
}

impl Reader<'_> {
    fn raw(&self, section: &str, key: &str) -> Option<&Value> {
        self.root.get(section)?.as_table()?.get(key)
    }

    fn err(&self, section: &str, key: &str, message: impl Into<String>) -> SettingsError {
        key_error(self.origins, &format!("{section}.{key}"), message)
    }

    fn string(&self, section: &str, key: &str) -> Result<Option<String>, SettingsError> {
        match self.raw(section, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(
                section,
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    fn required(&self, section: &str, key: &str) -> Result<String, SettingsError> {
        match self.string(section, key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(self.err(section, key, "is required")),
        }
    }

    fn path(&self, section: &str, key: &str) -> Result<PathBuf, SettingsError> {
        self.required(section, key).map(PathBuf::from)
    }

    fn bool(&self, section: &str, key: &str) -> Result<Option<bool>, SettingsError> {
        match self.raw(section, key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(self.err(section, key, format!("expected true or false, found {s:?}"))),
            },
            Some(other) => Err(self.err(
                section,
                key,
                format!("expected true or false, found {}", other.type_str()),
            )),
        }
    }

    fn uint(&self, section: &str, key: &str, min: u64) -> Result<Option<u64>, SettingsError> {
        let n = match self.raw(section, key) {
            None => return Ok(None),
            Some(Value::Integer(i)) => u64::try_from(*i).ok(),
            Some(Value::String(s)) => s.trim().replace('_', "").parse::<u64>().ok(),
            Some(_) => None,
        };
        match n {
            Some(n) if n >= min => Ok(Some(n)),
            Some(n) => Err(self.err(section, key, format!("must be at least {min}, found {n}"))),
            None => Err(self.err(section, key, "expected a non-negative integer")),
        }
    }

    fn duration(&self, section: &str, key: &str) -> Result<Option<Duration>, SettingsError> {
        match self.raw(section, key) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= 0 => Ok(Some(Duration::from_secs(i.unsigned_abs()))),
            Some(Value::String(s)) => parse_duration(s).map(Some).ok_or_else(|| {
                self.err(
                    section,
                    key,
                    format!("expected a duration like \"5s\", \"100ms\" or \"2m\", found {s:?}"),
                )
            }),
            Some(_) => Err(self.err(section, key, "expected a duration like \"5s\"")),
        }
    }
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`, or a bare number of seconds. Pure.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Parses `mqtts://host[:port]` / `mqtt://host[:port]`. Pure.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (tls, rest, default_port) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest, 8883)
    } else if let Some(rest) = url.strip_prefix("ssl://") {
        (true, rest, 8883)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest, 1883)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        (false, rest, 1883)
    } else {
        return Err(format!(
            "{url:?} must start with mqtts:// (or mqtt:// in development)"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "{url:?} must be scheme://host[:port] with no path or user"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?} has an invalid port {p:?}"))?,
        ),
        _ => (rest, default_port),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(BrokerUrl {
        tls,
        host: host.to_owned(),
        port,
    })
}

fn read_connection(r: &Reader<'_>) -> Result<ConnectionSettings, SettingsError> {
    const S: &str = "connection";
    let allow_plaintext = r.bool(S, "allow_plaintext")?.unwrap_or(false);
    let server =
        parse_broker_url(&r.required(S, "server_url")?).map_err(|m| r.err(S, "server_url", m))?;
    if !server.tls && !allow_plaintext {
        return Err(r.err(
            S,
            "server_url",
            "plaintext mqtt:// is refused; use mqtts:// (or set connection.allow_plaintext = true in development)",
        ));
    }
    let device_name = r.required(S, "device_name")?;
    edge_protocol::topic::validate_device_name(&device_name)
        .map_err(|e| r.err(S, "device_name", e.to_string()))?;
    let root_topic = match r.string(S, "root_topic")? {
        Some(root) => {
            validate_root_topic(&root, &device_name).map_err(|m| r.err(S, "root_topic", m))?;
            root
        }
        None => edge_protocol::topic::root_topic("", &device_name),
    };
    let keep_alive = r
        .duration(S, "keep_alive")?
        .unwrap_or(Duration::from_secs(30));
    if keep_alive < Duration::from_secs(5) || keep_alive > Duration::from_secs(1200) {
        // rumqttc refuses keep-alives under 5 s; IoT Core allows at most 1200 s.
        return Err(r.err(S, "keep_alive", "must be between 5s and 1200s"));
    }
    let clean_session = r.bool(S, "clean_session")?.unwrap_or(false);
    let reconnect_min = r
        .duration(S, "reconnect_min")?
        .unwrap_or(Duration::from_millis(500));
    let reconnect_max = r
        .duration(S, "reconnect_max")?
        .unwrap_or(Duration::from_secs(60));
    if reconnect_min.is_zero() || reconnect_max < reconnect_min {
        return Err(r.err(S, "reconnect_max", "must be at least reconnect_min (> 0)"));
    }
    Ok(ConnectionSettings {
        server,
        device_name,
        root_topic,
        keep_alive,
        clean_session,
        ca_cert_path: r.path(S, "ca_cert_path")?,
        client_cert_path: r.path(S, "client_cert_path")?,
        client_key_path: r.path(S, "client_key_path")?,
        allow_plaintext,
        reconnect_min,
        reconnect_max,
    })
}

/// `root_topic` must be `{slug}/{device_name}`: the broker ACL only lets a device publish under
/// a root whose second level is its own name.
fn validate_root_topic(root: &str, device_name: &str) -> Result<(), String> {
    let Some((slug, name)) = root.split_once('/') else {
        return Err(format!(
            "{root:?} must be \"{{slug}}/{device_name}\" or \"/{device_name}\""
        ));
    };
    if name != device_name {
        return Err(format!(
            "{root:?} must end with the device name {device_name:?} (the broker ACL allows only its own root)"
        ));
    }
    if !slug.is_empty() {
        edge_protocol::topic::validate_slug(slug).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn read_replication(r: &Reader<'_>) -> Result<ReplicationSettings, SettingsError> {
    const S: &str = "sqlite-replication";
    use edge_protocol::limits::{
        IOT_CORE_MAX_PAYLOAD_BYTES, MAX_ROWS_PER_BATCH, PROTOCOL_MAX_PAYLOAD_BYTES,
    };
    let _ = MAX_ROWS_PER_BATCH;
    let flush_interval = r
        .duration(S, "flush_interval")?
        .unwrap_or(Duration::from_secs(5));
    if flush_interval < Duration::from_millis(10) {
        return Err(r.err(S, "flush_interval", "must be at least 10ms"));
    }
    let max_payload_bytes = r
        .uint(S, "max_payload_bytes", 4096)?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(IOT_CORE_MAX_PAYLOAD_BYTES);
    if max_payload_bytes > PROTOCOL_MAX_PAYLOAD_BYTES {
        return Err(r.err(
            S,
            "max_payload_bytes",
            format!("must be at most {PROTOCOL_MAX_PAYLOAD_BYTES} (protocol limit; AWS IoT Core allows {IOT_CORE_MAX_PAYLOAD_BYTES})"),
        ));
    }
    let max_inflight = r.uint(S, "max_inflight", 1)?.unwrap_or(32);
    if max_inflight > 100 {
        return Err(r.err(
            S,
            "max_inflight",
            "must be at most 100 (AWS IoT Core's limit)",
        ));
    }
    let mut tables = BTreeMap::new();
    match r.raw(S, "table_strategies") {
        None => {}
        Some(Value::Table(t)) => {
            for (name, v) in t {
                tables.insert(name.clone(), read_table_strategy(r, name, v)?);
            }
        }
        Some(_) => return Err(r.err(S, "table_strategies", "must be a table")),
    }
    let capture = CaptureConfig {
        tables,
        snapshot_on_first_run: r.bool(S, "snapshot_on_first_run")?.unwrap_or(true),
        app_sqlite_has_json1: r.bool(S, "app_sqlite_has_json1")?.unwrap_or(false),
        local_retention_bytes: r
            .uint(S, "local_retention_bytes", 1024 * 1024)?
            .unwrap_or(DEFAULT_LOCAL_RETENTION_BYTES),
        snapshot_chunk_rows: r
            .uint(S, "snapshot_chunk_rows", 1)?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .unwrap_or(DEFAULT_SNAPSHOT_CHUNK_ROWS),
    };
    Ok(ReplicationSettings {
        source_db_path: r.path(S, "source_db_path")?,
        state_db_path: r.path(S, "state_db_path")?,
        flush_interval,
        max_payload_bytes,
        max_inflight: usize::try_from(max_inflight).unwrap_or(100),
        low_latency: r.bool(S, "low_latency")?.unwrap_or(false),
        low_latency_debounce: r
            .duration(S, "low_latency_debounce")?
            .unwrap_or(Duration::from_millis(100)),
        rate_limit: r.bool(S, "rate_limit")?.unwrap_or(true),
        max_publishes_per_sec: r
            .uint(S, "max_publishes_per_sec", 1)?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(100),
        max_bytes_per_sec: r.uint(S, "max_bytes_per_sec", 1024)?.unwrap_or(512 * 1024),
        capture,
    })
}

fn read_table_strategy(
    r: &Reader<'_>,
    table: &str,
    v: &Value,
) -> Result<TableConfig, SettingsError> {
    let base = format!("sqlite-replication.table_strategies.{table}");
    let err = |key: &str, m: String| key_error(r.origins, &format!("{base}{key}"), m);
    let Value::Table(t) = v else {
        return Err(err("", "must be a table".into()));
    };
    for key in t.keys() {
        if !["strategy", "include_columns", "ts_column"].contains(&key.as_str()) {
            return Err(err(
                &format!(".{key}"),
                "unknown key (known: strategy, include_columns, ts_column)".into(),
            ));
        }
    }
    let strategy = match t.get("strategy") {
        None => Strategy::Rows,
        Some(Value::String(s)) => Strategy::parse(s).ok_or_else(|| {
            err(
                ".strategy",
                format!("unknown table strategy {s:?} (expected rows, telemetry or ignore)"),
            )
        })?,
        Some(_) => return Err(err(".strategy", "expected a string".into())),
    };
    let include_columns = match t.get("include_columns") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(".include_columns", "expected a list of column names".into()))?,
        ),
        Some(_) => {
            return Err(err(
                ".include_columns",
                "expected a list of column names".into(),
            ))
        }
    };
    let ts_column = match t.get("ts_column") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => return Err(err(".ts_column", "expected a column name".into())),
    };
    if strategy == Strategy::Telemetry && ts_column.is_none() {
        return Err(err(
            ".ts_column",
            "is required for strategy = \"telemetry\"".into(),
        ));
    }
    Ok(TableConfig {
        strategy,
        include_columns,
        ts_column,
    })
}
