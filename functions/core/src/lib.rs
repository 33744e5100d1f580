//! `edge-cloud-core` — the pure decisions of the cloud side.
//!
//! Everything here is a function from data to data: no tokio, no PostgreSQL, no clock or
//! randomness except as arguments. The store and the handlers call into it; the wire types it
//! works on come from [`edge_protocol`] and are never redefined here.
//!
//! # Layout
//! - [`ingress`] — the ingress envelope and its checks (cloud.md §1)
//! - [`intake`] — routing after classification, ledger ids, staging keys (cloud.md §2, §4)
//! - [`naming`] — the one identifier-quoting function and the 63-byte name rule
//! - [`classify`] — classification of a batch's schema against the approved one, with a
//!   readable diff (cloud.md §3)
//! - [`mirror`] — mirror column types, DDL text, value fitness and the set-based,
//!   version-guarded upsert plan (cloud.md §6)
//! - [`review`] — review transitions and approval column-action validation (cloud.md §5)
//! - [`telemetry`] — telemetry values into `telemetry_data_point_value` columns
//! - [`backpressure`] — caps, circuit breaker, resume sweep and reset decisions (cloud.md §7)
//! - [`replay`] — how a replay intent advances chunk by chunk (cloud.md §8)
//! - [`staged_json`] — the internal encoding of staged values PostgreSQL cannot store (NUL)
//! - [`coalesce`] — registry scope, shared mirror names, consolidation SQL (cloud.md §9)
//! - [`policy`] — the project policy: fields, production defaults, patch rules
//! - [`spill`] — spill/snapshot uploads: batch header, finalize checks, upload tokens,
//!   chunk bounds, named outcomes (protocol §7)
//! - [`timescale`] — TimescaleDB compression/retention policies: which table may have which,
//!   parsed ages, the statements that reach them
//! - [`metrics`] — the metric contract (observability.md §2): family names, buckets, closed
//!   label sets (unknown code → `other`), the `--metrics-*` duration parser
//! - [`emf`] — CloudWatch Embedded Metric Format lines (the Lambdas' metrics on stdout)

pub mod backpressure;
pub mod classify;
pub mod coalesce;
pub mod emf;
pub mod ingress;
pub mod intake;
pub mod metrics;
pub mod mirror;
pub mod naming;
pub mod policy;
pub mod replay;
pub mod review;
pub mod spill;
pub mod staged_json;
pub mod telemetry;
pub mod timescale;

pub use edge_protocol as protocol;
