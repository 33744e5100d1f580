//! The fleet's gauges on a clock (observability.md §1, §2): the runner's collector loop reads
//! them from PostgreSQL every `--metrics-interval` and hands them to a sink (the metrics
//! registry's `set_gauges`), so a scrape reads the cache and never the database; the sweep
//! Lambda reads them once per run and writes them as EMF lines.
//!
//! A failed read is a warning, never the end of the runner: the sink is not called, so the
//! registry keeps the last values until a read succeeds again.

use std::time::Duration;

use deadpool_postgres::Pool;
use edge_cloud_store::health::{read_fleet_gauges, FleetGauges};
use edge_cloud_store::StoreError;
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;

/// `--metrics-silent-after` / `EDGE_METRICS_SILENT_AFTER` when unset.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(15 * 60);
/// `--metrics-lineage-cap` of the runner when unset.
pub const RUNNER_LINEAGE_CAP: usize = 500;
/// `EDGE_METRICS_LINEAGE_CAP` of the Lambdas when unset: every EMF dimension combination is a
/// billed CloudWatch metric.
pub const LAMBDA_LINEAGE_CAP: usize = 100;
/// The shortest collection interval: tokio's interval refuses zero, and a tighter loop would
/// only load the database.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What a read of the gauges depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaugeSettings {
    /// A device is silent once its newest batch is this old (up to 24 h).
    pub silent_after: Duration,
    /// How many lineages get their own `edge_lineage_*` series (the worst, §4 order).
    pub lineage_cap: usize,
}

/// A `EDGE_METRICS_*` variable that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {expected}")]
pub struct GaugeSettingsError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl GaugeSettings {
    /// The Lambdas' settings: `EDGE_METRICS_SILENT_AFTER` (a duration such as `15m`, `90s`;
    /// default 15m) and `EDGE_METRICS_LINEAGE_CAP` (default [`LAMBDA_LINEAGE_CAP`]).
    pub fn from_env() -> Result<GaugeSettings, GaugeSettingsError> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self::from_values(
            var("EDGE_METRICS_SILENT_AFTER").as_deref(),
            var("EDGE_METRICS_LINEAGE_CAP").as_deref(),
        )
    }

    /// [`GaugeSettings::from_env`] over the variables' values. Pure.
    pub fn from_values(
        silent_after: Option<&str>,
        lineage_cap: Option<&str>,
    ) -> Result<GaugeSettings, GaugeSettingsError> {
        let silent_after = match silent_after {
            None => DEFAULT_SILENT_AFTER,
            Some(v) => crate::commands::token::parse_ttl(v)
                .map(Duration::from_secs)
                .map_err(|_| GaugeSettingsError {
                    var: "EDGE_METRICS_SILENT_AFTER",
                    value: v.to_owned(),
                    expected: "a duration such as 90s, 15m or 1h",
                })?,
        };
        let lineage_cap = match lineage_cap {
            None => LAMBDA_LINEAGE_CAP,
            Some(v) => v.trim().parse().map_err(|_| GaugeSettingsError {
                var: "EDGE_METRICS_LINEAGE_CAP",
                value: v.to_owned(),
                expected: "a number of lineages (0 or more)",
            })?,
        };
        Ok(GaugeSettings {
            silent_after,
            lineage_cap,
        })
    }
}

/// Every gauge of §2 at `now`, over one pooled connection.
pub async fn read_gauges(
    pool: &Pool,
    settings: GaugeSettings,
    now: OffsetDateTime,
) -> Result<FleetGauges, StoreError> {
    let c = pool.get().await?;
    read_fleet_gauges(&**c, now, settings.silent_after, settings.lineage_cap).await
}

/// The runner's collector: every `interval` (the first read at once, so the gauges have values
/// right after start-up) reads the gauges and calls `sink` with them (in the runner
/// `deps.metrics.set_gauges`). Runs until the task is aborted; a failed read logs a warning
/// and keeps the sink's last values.
pub async fn collector_loop<S>(pool: Pool, interval: Duration, settings: GaugeSettings, mut sink: S)
where
    S: FnMut(&FleetGauges) + Send,
{
    let mut tick = tokio::time::interval(interval.max(MIN_INTERVAL));
    // A slow read delays the next one instead of firing a burst to catch up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match read_gauges(&pool, settings, OffsetDateTime::now_utc()).await {
            Ok(gauges) => {
                if failing {
                    tracing::info!("metrics collector: reading the fleet gauges again");
                    failing = false;
                }
                sink(&gauges);
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "metrics collector: reading the fleet gauges failed; /metrics keeps the \
                     last values"
                );
                failing = true;
            }
        }
    }
}

/// The sweep Lambda's gauges (observability.md §2: "the sweep also writes the gauges each
/// minute"): reads them at `now` and prints on stdout every line `encode` makes of them
/// (`encode(gauges, timestamp_ms, lineage_cap)`: the EMF encoder's `gauge_lines`). Returns the
/// number of lines written. A failed read is logged and writes nothing: a missing minute is
/// what the `TreatMissingData: breaching` alarm is for.
pub async fn write_gauge_lines<E, L>(
    pool: &Pool,
    settings: GaugeSettings,
    now: OffsetDateTime,
    encode: E,
) -> usize
where
    E: FnOnce(&FleetGauges, i64, usize) -> Vec<L>,
    L: std::fmt::Display,
{
    match read_gauges(pool, settings, now).await {
        Ok(gauges) => {
            let ts_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let lines = encode(&gauges, ts_ms, settings.lineage_cap);
            for line in &lines {
                println!("{line}");
            }
            lines.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "sweep: reading the fleet gauges failed; no gauge EMF");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_settings_default_and_parse() {
        assert_eq!(
            GaugeSettings::from_values(None, None).ok(),
            Some(GaugeSettings {
                silent_after: DEFAULT_SILENT_AFTER,
                lineage_cap: LAMBDA_LINEAGE_CAP
            })
        );
        assert_eq!(
            GaugeSettings::from_values(Some("2s"), Some(" 7 ")).ok(),
            Some(GaugeSettings {
                silent_after: Duration::from_secs(2),
                lineage_cap: 7
            })
        );
        let bad = GaugeSettings::from_values(Some("soon"), None);
        assert!(matches!(bad, Err(e) if e.var == "EDGE_METRICS_SILENT_AFTER"));
        let bad = GaugeSettings::from_values(None, Some("-1"));
        assert!(matches!(bad, Err(e) if e.var == "EDGE_METRICS_LINEAGE_CAP"));
    }
}
