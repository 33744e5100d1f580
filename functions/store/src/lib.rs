//! `edge-cloud-store` — PostgreSQL (TimescaleDB when available) for the cloud side.
//!
//! Owns the versioned SQL migrations, the connection pool and every set-based statement the
//! handlers run. Unique violations become "duplicate" here, so redelivery reads as success.
//! The decisions it executes live in [`edge_cloud_core`]; nothing here decides policy.
//!
//! # Layout
//! - [`migrate`] — embedded, versioned migrations (`migrations/*.sql`), `schema_migrations`
//! - [`registry`] — devices: session identity → tenant ids, topic slug, control key
//! - [`ledger`] — the segment ledger `edge_export_segments` (dedup on device + batch)
//! - [`lineage`] — lineages, schema versions, reviews, bindings, policy, watermarks, events
//! - [`staging`] — staged rows with their lineage counters
//! - [`mirror`] — mirror DDL execution, version-guarded upserts, telemetry values, control acks
//! - [`approve`] — the dev approval path and the staged-row replay
//! - [`controls`] — signed pause/resume controls, pending until acked, due for (re-)publication
//! - [`backpressure`] — caps, circuit breaker, resume and reset-materialization (cloud.md §7)
//! - [`replay`] — the replay worker's chunked, resumable drain of staged rows (cloud.md §8)
//! - [`sweep`] — the scheduled resume sweep
//! - [`spill`] — spill/snapshot uploads (`edge_spill_uploads`) and their `url_grant` controls
//! - [`forwarding`] — the event forwarding cursor (cloud.md §11)
//! - [`coalesce`] — registry coalescing: registry reviews, shared mirrors, consolidation (§9)
//! - [`query`] — the HTTP API's scoped reads (lineages, staged/mirror rows, reviews, events)
//! - [`review`] — review claim/approve/reject, lineage deletion, policy, idempotency keys
//! - [`pool`] — the deadpool-postgres pool
//! - [`error`] — [`StoreError`] and the transient/permanent split by SQLSTATE
//!
//! Every function takes a [`tokio_postgres::GenericClient`], so the handler decides the
//! transaction boundaries.

pub mod approve;
pub mod backpressure;
pub mod coalesce;
pub mod controls;
pub mod dead_letters;
pub mod error;
pub mod forwarding;
pub mod ledger;
pub mod lineage;
pub mod migrate;
pub mod mirror;
pub mod pool;
pub mod query;
pub mod registry;
pub mod replay;
pub mod review;
pub mod spill;
pub mod staging;
pub mod sweep;

pub use edge_cloud_core as core;
pub use error::StoreError;
pub use tokio_postgres;
