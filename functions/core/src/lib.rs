//! `edge-cloud-core` — the pure decisions of the cloud side.
//!
//! Everything here is a function from data to data: no tokio, no PostgreSQL, no clock or
//! randomness except as arguments. The store and the handlers call into it.
//!
//! # Layout
//! - classification of a batch's schema against a lineage's approved schema (cloud.md §3)
//! - review state transitions and optimistic concurrency (cloud.md §5)
//! - materialization plans and mirror DDL text (cloud.md §6)
//! - backpressure and circuit-breaker decisions (cloud.md §7), replay planning (cloud.md §8)
//!
//! The modules arrive with the cloud-ingest and governance issues; the wire types they work on
//! come from [`edge_protocol`].

pub use edge_protocol as protocol;
