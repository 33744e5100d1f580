//! The metrics settings of a process (observability.md §1): `edge-cloud run`'s flags
//! (`crate::commands::MetricsArgs`) or, in a Lambda, the same `EDGE_METRICS_*` variables.

/// A metrics variable that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct SettingsError {
    pub var: &'static str,
    pub message: String,
}

/// Set and not blank.
fn non_empty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The metrics settings of a process (observability.md §1): flags of `edge-cloud run`
/// (`--metrics`, `--metrics-interval`, `--metrics-silent-after`, `--metrics-lineage-cap`),
/// `EDGE_METRICS_*` variables in the Lambdas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The runner's `/metrics` listener; `None` = off (always, in a Lambda: EMF instead).
    pub listen: Option<std::net::SocketAddr>,
    /// How often the collector reads the gauges from PostgreSQL.
    pub interval: std::time::Duration,
    /// A device is silent when its newest batch is older than this (and younger than 24 h).
    pub silent_after: std::time::Duration,
    /// The most lineages with `edge_lineage_*` series.
    pub lineage_cap: usize,
}

/// `--metrics`' default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";
/// `--metrics-interval`'s default.
pub const DEFAULT_METRICS_INTERVAL: &str = "15s";
/// `--metrics-silent-after`'s default.
pub const DEFAULT_METRICS_SILENT_AFTER: &str = "15m";
/// `--metrics-lineage-cap`'s default in the runner, and in a Lambda.
pub const DEFAULT_RUNNER_LINEAGE_CAP: usize = 500;
pub const DEFAULT_LAMBDA_LINEAGE_CAP: usize = 100;

impl MetricsSettings {
    /// A Lambda's defaults (no listener, lineage cap 100).
    pub fn lambda_default() -> Self {
        MetricsSettings {
            listen: None,
            interval: std::time::Duration::from_secs(15),
            silent_after: std::time::Duration::from_secs(15 * 60),
            lineage_cap: DEFAULT_LAMBDA_LINEAGE_CAP,
        }
    }

    /// A Lambda's: `EDGE_METRICS_INTERVAL`, `EDGE_METRICS_SILENT_AFTER`,
    /// `EDGE_METRICS_LINEAGE_CAP`, each with its default when unset or blank.
    pub fn lambda_from_env() -> Result<Self, SettingsError> {
        let duration = |var: &'static str, default: &str| {
            let text = non_empty(var).unwrap_or_else(|| default.to_owned());
            edge_cloud_core::metrics::parse_duration(&text)
                .map_err(|message| SettingsError { var, message })
        };
        let var = "EDGE_METRICS_LINEAGE_CAP";
        let lineage_cap = match non_empty(var) {
            Some(v) => v.trim().parse().map_err(|e| SettingsError {
                var,
                message: format!("{v:?}: {e}"),
            })?,
            None => DEFAULT_LAMBDA_LINEAGE_CAP,
        };
        Ok(MetricsSettings {
            listen: None,
            interval: duration("EDGE_METRICS_INTERVAL", DEFAULT_METRICS_INTERVAL)?,
            silent_after: duration("EDGE_METRICS_SILENT_AFTER", DEFAULT_METRICS_SILENT_AFTER)?,
            lineage_cap,
        })
    }
}
