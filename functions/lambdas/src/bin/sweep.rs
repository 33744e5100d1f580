//! The `sweep` Lambda (EventBridge schedule): resume sweep + (re-)publication of pending
//! controls + governance events forwarded to EventBridge.
//!
//! Config (env only): `EDGE_DATABASE_SECRET_ARN` (locally `EDGE_DATABASE_URL` /
//! `DATABASE_URL`), `EDGE_DB_POOL_SIZE` (default 2), and the control transport
//! `EDGE_CONTROL_TRANSPORT`:
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

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::aws::db::ThawGuard;
use edge_functions::aws::eventbridge::{EventBridgeForwarder, DEFAULT_SOURCE};
use edge_functions::aws::iot::{data_endpoint, IotDataPublisher};
use edge_functions::aws::replay_queue::SqsReplayQueue;
use edge_functions::control_publisher::{ControlPublisher, MqttPublisher, NoPublisher};
use edge_functions::events::{ConfiguredForwarder, LogForwarder};
use edge_functions::replay_trigger::ReplayTrigger;
use edge_functions::runner::{mqtt_options, MqttSettings};
use edge_functions::{lambda, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

/// What every sweep invocation needs besides the control publisher.
struct Outputs {
    forwarder: ConfiguredForwarder,
    replay: ReplayTrigger,
}

async fn serve<P: ControlPublisher + 'static>(
    deps: Deps,
    publisher: P,
    out: Outputs,
) -> anyhow::Result<()> {
    let state = Arc::new((deps, ThawGuard::default(), publisher, out));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let state = Arc::clone(&state);
        async move {
            let (deps, thaw, publisher, out) = &*state;
            Ok::<_, lambda_runtime::Error>(
                lambda::sweep(
                    deps,
                    thaw,
                    publisher,
                    &out.forwarder,
                    &out.replay,
                    &event.payload,
                )
                .await,
            )
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

fn non_empty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let mut sdk = None;
    let deps = Deps::new(lambda::pool_from_env(&mut sdk, 2).await?);
    let bus = non_empty("EDGE_EVENT_BUS_NAME");
    let queue = non_empty("EDGE_REPLAY_QUEUE_URL");
    if sdk.is_none() && (bus.is_some() || queue.is_some()) {
        sdk = Some(edge_functions::aws::config::load().await);
    }
    let out = Outputs {
        forwarder: match (&bus, &sdk) {
            (Some(bus), Some(sdk)) => {
                let source =
                    non_empty("EDGE_EVENT_SOURCE").unwrap_or_else(|| DEFAULT_SOURCE.to_owned());
                tracing::info!(%bus, %source, "forwarding governance events to EventBridge");
                ConfiguredForwarder::EventBridge(EventBridgeForwarder::new(sdk, bus, source))
            }
            _ => ConfiguredForwarder::Log(LogForwarder),
        },
        replay: match (&queue, &sdk) {
            (Some(url), Some(sdk)) => ReplayTrigger::Sqs(SqsReplayQueue::new(sdk, url)),
            _ => ReplayTrigger::Polling,
        },
    };
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let transport = match std::env::var("EDGE_CONTROL_TRANSPORT") {
        Ok(t) if !t.is_empty() => t,
        _ if std::env::var("EDGE_MQTT_URL").is_ok() => "mqtt".to_owned(),
        _ => "none".to_owned(),
    };
    match transport.as_str() {
        "iot-data" => {
            let sdk = match sdk {
                Some(s) => s,
                None => edge_functions::aws::config::load().await,
            };
            let endpoint = match std::env::var("EDGE_IOT_DATA_ENDPOINT") {
                Ok(e) if !e.is_empty() => e,
                _ => data_endpoint(&sdk).await?,
            };
            serve(deps, IotDataPublisher::new(&sdk, &endpoint), out).await
        }
        "mqtt" => {
            let settings = MqttSettings {
                url: var("EDGE_MQTT_URL")?,
                ca: var("EDGE_MQTT_CA")?.into(),
                cert: var("EDGE_MQTT_CERT")?.into(),
                key: var("EDGE_MQTT_KEY")?.into(),
                client_id: std::env::var("EDGE_MQTT_CLIENT_ID")
                    .unwrap_or_else(|_| "edge-sweep".to_owned()),
            };
            let (publisher, _events) = MqttPublisher::spawn(mqtt_options(&settings)?);
            serve(deps, publisher, out).await
        }
        "none" => {
            tracing::warn!("no control transport: controls stay pending until one is configured");
            serve(deps, NoPublisher, out).await
        }
        other => anyhow::bail!("EDGE_CONTROL_TRANSPORT={other:?}: expected iot-data, mqtt or none"),
    }
}
