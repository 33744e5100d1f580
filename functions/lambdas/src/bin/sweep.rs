//! The `sweep` Lambda (EventBridge schedule): resume sweep + (re-)publication of pending
//! controls + governance events forwarded to EventBridge.
//!
//! Config (env only, read by [`edge_functions::env`]): `EDGE_DATABASE_SECRET_ARN` (locally
//! `EDGE_DATABASE_URL` / `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 2), and the control
//! transport `EDGE_CONTROL_TRANSPORT`:
//! - `iot-data` — the IoT data plane's `Publish` (QoS 1), host from `EDGE_IOT_DATA_ENDPOINT`
//!   or, when empty, `iot:DescribeEndpoint` at cold start (the SAM/terraform default);
//! - `mqtt` — an MQTT connection with a service certificate (`EDGE_MQTT_URL`, `EDGE_MQTT_CA`,
//!   `EDGE_MQTT_CERT`, `EDGE_MQTT_KEY`, `EDGE_MQTT_CLIENT_ID` default `edge-sweep`), e.g.
//!   mosquitto under `cargo lambda watch`;
//! - unset — `mqtt` when `EDGE_MQTT_URL` is set, else none: controls stay pending (and
//!   visible) until a transport is configured.
//!
//! Event forwarding: `EDGE_EVENT_BUS_NAME` (bus name or ARN; `default` is the account's
//! default bus) sends every governance event to EventBridge with source `EDGE_EVENT_SOURCE`
//! (default `edge-sync`); unset, events are written to the log. Replay: `EDGE_REPLAY_QUEUE_URL`
//! gets a message whenever the sweep resumed lineages, so their backlog replays at once.
//!
//! Metrics: each run ends with the fleet's gauges as EMF lines (observability.md §2) —
//! `EDGE_METRICS_SILENT_AFTER` (default 15m), `EDGE_METRICS_LINEAGE_CAP` (default 100).

use std::sync::Arc;

use edge_functions::aws::db::ThawGuard;
use edge_functions::env::{init_tracing, Lambda, LambdaSettings, LogOutput};
use edge_functions::lambda;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Lambda);
    let settings = LambdaSettings::from_env(Lambda::Sweep)?;
    let deps = settings.deps().await?;
    let state = Arc::new((deps, ThawGuard::default(), settings.metrics));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let state = Arc::clone(&state);
        async move {
            let (deps, thaw, metrics) = &*state;
            let (publisher, forwarder, replay) = (&deps.publisher, &deps.forwarder, &deps.replay);
            let report = lambda::sweep(
                deps,
                thaw,
                publisher,
                forwarder,
                replay,
                metrics,
                &event.payload,
            )
            .await;
            Ok::<_, lambda_runtime::Error>(report)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
