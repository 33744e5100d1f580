//! The `sweep` Lambda (EventBridge schedule): resume sweep + (re-)publication of pending
//! controls. Controls go out over MQTT when `EDGE_MQTT_URL` (with `EDGE_MQTT_CA`,
//! `EDGE_MQTT_CERT`, `EDGE_MQTT_KEY`) is set — IoT Core speaks MQTT with a service certificate
//! too; without it they stay pending until a transport is configured (the IoT data-plane
//! publisher plugs in behind the same trait).
//!
//! Config (env): `DATABASE_URL`, `EDGE_DB_POOL_SIZE` (default 2), the MQTT variables above,
//! `EDGE_MQTT_CLIENT_ID` (default `edge-sweep`).

use std::sync::Arc;

use anyhow::Context as _;
use edge_functions::control_publisher::{MqttPublisher, NoPublisher};
use edge_functions::runner::{mqtt_options, MqttSettings};
use edge_functions::sweep::{sweep_once, SweepReport};
use edge_functions::{store, Deps};
use lambda_runtime::{service_fn, LambdaEvent};

fn report_json(r: SweepReport) -> serde_json::Value {
    serde_json::json!({"resumed": r.resumed, "published": r.published, "errors": r.errors})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let size = match std::env::var("EDGE_DB_POOL_SIZE") {
        Ok(s) => s.parse().context("EDGE_DB_POOL_SIZE")?,
        Err(_) => 2,
    };
    let deps = Arc::new(Deps::new(store::pool::connect(&url, size)?));
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    if let Ok(mqtt_url) = std::env::var("EDGE_MQTT_URL") {
        let settings = MqttSettings {
            url: mqtt_url,
            ca: var("EDGE_MQTT_CA")?.into(),
            cert: var("EDGE_MQTT_CERT")?.into(),
            key: var("EDGE_MQTT_KEY")?.into(),
            client_id: std::env::var("EDGE_MQTT_CLIENT_ID")
                .unwrap_or_else(|_| "edge-sweep".to_owned()),
        };
        let (publisher, _events) = MqttPublisher::spawn(mqtt_options(&settings)?);
        let publisher = Arc::new(publisher);
        lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
            let (deps, publisher) = (Arc::clone(&deps), Arc::clone(&publisher));
            async move {
                let r = sweep_once(&deps, &*publisher, time::OffsetDateTime::now_utc()).await;
                Ok::<_, lambda_runtime::Error>(report_json(r))
            }
        }))
        .await
    } else {
        tracing::warn!(
            "EDGE_MQTT_URL not set: controls stay pending until a transport is configured"
        );
        lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
            let deps = Arc::clone(&deps);
            async move {
                let r = sweep_once(&deps, &NoPublisher, time::OffsetDateTime::now_utc()).await;
                Ok::<_, lambda_runtime::Error>(report_json(r))
            }
        }))
        .await
    }
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
