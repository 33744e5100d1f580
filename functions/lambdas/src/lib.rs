//! `edge-functions` — the cloud handlers and the binaries that host them.
//!
//! A handler is `async fn handle(&Deps, Event) -> Result<Outcome, HandlerError>`: decode, call
//! [`edge_cloud_core`], call [`edge_cloud_store`]. The same handlers run in AWS Lambda (`ingest`,
//! `api`, `replay`, `sweep` binaries) and in the local runner `edge-cloud`, which plays IoT Core's
//! rule engine against mosquitto.
//!
//! # Layout
//! - `src/bin/*` — thin binaries: parse config, build clients once, call the library
//!
//! Filled by the cloud-ingest, governance and deployment issues.

pub use edge_cloud_store as store;
