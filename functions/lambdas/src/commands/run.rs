//! `edge-cloud run`: the local stack on one machine — the MQTT runner (ingest), the sweep and
//! replay loops beside it, and one HTTP listener with the governance API and the spill upload
//! endpoint (`PUT /spill/...`, protocol §7), and the metrics listener (`--metrics`,
//! observability.md §1) on its own address with the gauge collector loop behind it.

use std::sync::Arc;

use edge_cloud_store::{migrate::migrate, pool};

use super::devices::new_control_key;
use super::CommandError;
use crate::collector::spawn_runner_collector;
use crate::env::{self, RunnerSettings};
use crate::metrics;
use crate::objects::local::{self as spill_http, LocalObjects};
use crate::runner::run;
use crate::Deps;

/// Migrates, then runs until Ctrl-C.
pub async fn execute(settings: RunnerSettings) -> Result<(), CommandError> {
    // First: a metrics address that cannot be bound stops start-up, naming `--metrics`.
    let metrics_listener = match settings.metrics.listen {
        Some(addr) => Some(metrics::serve::bind(addr).await?),
        None => None,
    };
    let p = pool::connect(settings.database_url.expose(), settings.pool_size)?;
    {
        let mut c = p.get().await.map_err(CommandError::Connect)?;
        migrate(&mut c).await?;
    }
    let spill_dir = &settings.spill_dir;
    std::fs::create_dir_all(spill_dir).map_err(|source| CommandError::Io {
        what: format!("creating the spill directory {}", spill_dir.display()),
        source,
    })?;
    // Runners of one database share one object store (reliability.md §2).
    let presence = super::spill_store::register(&p, spill_dir).await?;
    let heartbeat = tokio::spawn(super::spill_store::heartbeat_loop(
        p.clone(),
        presence.clone(),
    ));
    let secret = match &settings.spill_secret {
        Some(s) if !s.expose().is_empty() => s.expose().as_bytes().to_vec(),
        _ => new_control_key(),
    };
    let base_url = match &settings.spill_url {
        Some(url) => url.clone(),
        None => format!("http://{}", settings.http),
    };
    let objects = LocalObjects::new(spill_dir, &base_url, secret);
    let deps = settings.deps(p.clone(), objects.clone())?;
    let api_task = serve_api(&deps, objects, settings.http, settings.http_limits).await?;
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics listening (GET /metrics)");
        }
        metrics::serve::spawn(listener, Arc::clone(&deps.metrics))
    });
    // With metrics on, the gauges come from the collector's reads; a scrape reads its cache.
    let collector_task = settings
        .metrics
        .listen
        .map(|_| spawn_runner_collector(p.clone(), settings.metrics, Arc::clone(&deps.metrics)));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let result = run(deps, settings.mqtt.clone(), shutdown).await;
    api_task.abort();
    for task in [metrics_task, collector_task].into_iter().flatten() {
        task.abort();
    }
    heartbeat.abort();
    super::spill_store::deregister(&p, &presence).await;
    Ok(result?)
}

/// Starts the HTTP API on `addr` (cloud.md §12: the runner serves it on localhost), with the
/// spill upload endpoint (`PUT /spill/...`, protocol §7) on the same listener.
async fn serve_api(
    deps: &Deps,
    objects: LocalObjects,
    addr: std::net::SocketAddr,
    limits: crate::http::HttpLimits,
) -> Result<tokio::task::JoinHandle<()>, CommandError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Io {
            what: format!("binding the HTTP API to {addr}"),
            source,
        })?;
    tracing::info!(%addr, ?limits, "HTTP API listening");
    let api = Arc::new(env::api(deps));
    Ok(tokio::spawn(async move {
        let objects = Arc::new(objects);
        if let Err(e) =
            spill_http::serve_limited(objects, Some(api), listener, limits, std::future::pending())
                .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    }))
}
