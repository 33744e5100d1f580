//! `edge-cloud-store` — PostgreSQL (TimescaleDB when available) for the cloud side.
//!
//! Owns the versioned SQL migrations, the connection pool and every set-based statement the
//! handlers run. Unique violations become "duplicate" here, so redelivery reads as success.
//!
//! # Layout
//! - migrations (applied by the `migrate` step, idempotent)
//! - segment ledger, lineages, schema versions and reviews, staged rows, mirrors, controls
//!
//! Filled by the cloud-ingest issue; the decisions it executes live in [`edge_cloud_core`].

pub use edge_cloud_core as core;
