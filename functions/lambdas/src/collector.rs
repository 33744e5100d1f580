//! The fleet's gauges on a clock (observability.md §1, §2): the runner's collector loop reads
//! them from PostgreSQL every `--metrics-interval` and hands them to a sink (the metrics
//! registry's `set_gauges`), so a scrape reads the cache and never the database; the sweep
//! Lambda reads them once per run and writes them as EMF lines. The settings are
//! [`MetricsSettings`] (`--metrics-*` flags, `EDGE_METRICS_*` in a Lambda).
//!
//! A failed read is a warning, never the end of the runner: the sink is not called, so the
//! registry keeps the last values until a read succeeds again.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use edge_cloud_store::health::{read_fleet_gauges, FleetGauges};
use edge_cloud_store::StoreError;
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;

use crate::env::MetricsSettings;
use crate::metrics::emf::gauge_lines;
use crate::metrics::CloudMetrics;

/// The shortest collection interval: tokio's interval refuses zero, and a tighter loop would
/// only load the database.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Every gauge of §2 at `now`, over one pooled connection.
pub async fn read_gauges(
    pool: &Pool,
    settings: &MetricsSettings,
    now: OffsetDateTime,
) -> Result<FleetGauges, StoreError> {
    let c = pool.get().await?;
    read_fleet_gauges(&**c, now, settings.silent_after, settings.lineage_cap).await
}

/// The runner's collector: every `settings.interval` (`--metrics-interval`; the first read at
/// once, so the gauges have values right after start-up) reads the gauges and calls `sink`
/// with them (in the runner `deps.metrics.set_gauges`). Runs until the task is aborted; a
/// failed read logs a warning and keeps the sink's last values.
pub async fn collector_loop<S>(pool: Pool, settings: MetricsSettings, mut sink: S)
where
    S: FnMut(&FleetGauges) + Send,
{
    let mut tick = tokio::time::interval(settings.interval.max(MIN_INTERVAL));
    // A slow read delays the next one instead of firing a burst to catch up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match read_gauges(&pool, &settings, OffsetDateTime::now_utc()).await {
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

/// What `edge-cloud run` starts when metrics are on: [`collector_loop`] feeding `registry`
/// (`set_gauges`), until the task is aborted.
pub fn spawn_runner_collector(
    pool: Pool,
    settings: MetricsSettings,
    registry: Arc<CloudMetrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(collector_loop(pool, settings, move |g| {
        registry.set_gauges(g)
    }))
}

/// The sweep Lambda's gauges (observability.md §2: "the sweep also writes the gauges each
/// minute") as EMF lines at `now`, at most `settings.lineage_cap` lineages with their own
/// series (`EDGE_METRICS_LINEAGE_CAP`, 100).
pub async fn gauge_emf_lines(
    pool: &Pool,
    settings: &MetricsSettings,
    now: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    let gauges = read_gauges(pool, settings, now).await?;
    let ts_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Ok(gauge_lines(&gauges, ts_ms, settings.lineage_cap))
}

/// [`gauge_emf_lines`] printed on stdout (where CloudWatch picks EMF up); returns how many.
/// A failed read is logged and writes nothing: a missing minute is what the alarms'
/// `TreatMissingData: breaching` is for.
pub async fn write_gauge_emf(
    pool: &Pool,
    settings: &MetricsSettings,
    now: OffsetDateTime,
) -> usize {
    match gauge_emf_lines(pool, settings, now).await {
        Ok(lines) => {
            if !lines.is_empty() {
                println!("{}", lines.join("\n"));
            }
            lines.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "sweep: reading the fleet gauges failed; no gauge EMF");
            0
        }
    }
}
