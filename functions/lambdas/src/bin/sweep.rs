//! The `sweep` Lambda (EventBridge schedule): resume sweep + (re-)publication of pending
//! controls.
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

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::aws::db::ThawGuard;
use edge_functions::aws::iot::{data_endpoint, IotDataPublisher};
use edge_functions::control_publisher::{ControlPublisher, MqttPublisher, NoPublisher};
use edge_functions::runner::{mqtt_options, MqttSettings};
use edge_functions::{lambda, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

async fn serve<P: ControlPublisher + 'static>(deps: Deps, publisher: P) -> anyhow::Result<()> {
    let state = Arc::new((deps, ThawGuard::default(), publisher));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let state = Arc::clone(&state);
        async move {
            let (deps, thaw, publisher) = &*state;
            Ok::<_, lambda_runtime::Error>(
                lambda::sweep(deps, thaw, publisher, &event.payload).await,
            )
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
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
            serve(deps, IotDataPublisher::new(&sdk, &endpoint)).await
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
            serve(deps, publisher).await
        }
        "none" => {
            tracing::warn!("no control transport: controls stay pending until one is configured");
            serve(deps, NoPublisher).await
        }
        other => anyhow::bail!("EDGE_CONTROL_TRANSPORT={other:?}: expected iot-data, mqtt or none"),
    }
}
