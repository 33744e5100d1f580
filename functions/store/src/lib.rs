//! `edge-cloud-store` — PostgreSQL (TimescaleDB when available) for the cloud side.
//!
//! Owns the versioned SQL migrations, the connection pool and every set-based statement the
//! handlers run. Unique violations become "duplicate" here, so redelivery reads as success.
//! The decisions it executes live in [`edge_cloud_core`]; nothing here decides policy.
//!
//! # Layout
//! - [`migrate`] — embedded, versioned migrations (`migrations/*.sql`), `schema_migrations`
//! - [`connect`] — how we connect: the URL's `sslmode`/`sslrootcert` (libpq semantics), the
//!   rustls (ring) connector, one-line connection errors
//! - [`pool`] — the deadpool-postgres pool over [`connect`]
//! - [`timescale`] — the hypertables' compression/retention policies, applied by `migrate`
//! - [`unnamed`] — [`unnamed::UnnamedStatements`]: every statement as one unnamed Parse/Bind/
//!   Execute/Sync round trip, safe behind RDS Proxy and pgbouncer in transaction mode
//! - [`error`] — [`StoreError`] with the transient/permanent split by SQLSTATE, [`OpError`] of
//!   the API's operations, [`ResetError`] of reset-materialization
//! - [`scope`] — the tenant [`scope::Scope`], [`scope::Page`] and timestamp text
//! - [`registry`] — devices: session identity → tenant ids, topic slug, control key
//! - [`ledger`] — the segment ledger `edge_export_segments` (dedup on device + batch)
//! - [`lineage`] — lineages, schema versions, intake's reviews, bindings, watermarks, the sync
//!   health intake keeps on the lineage (`Received`), events, lineage deletion
//! - [`policy`] — the one reader and writer of the project policy (`edge_replication_policy`)
//! - [`staging`] — staged rows with their lineage counters
//! - [`mirror`] — mirror DDL execution, version-guarded upserts, telemetry values, control acks
//! - [`drain`] — staged-row materialization: chunked drains, misfits, replay intents to open
//! - [`replay`] — the replay worker's resumable, one-chunk-per-transaction intents (cloud.md §8)
//! - [`controls`] — signed pause/resume controls, pending until acked, due for (re-)publication
//! - [`backpressure`] — caps, circuit breaker, resume and reset-materialization (cloud.md §7)
//! - [`sweep`] — the scheduled resume sweep
//! - [`spill`] — spill/snapshot uploads (`edge_spill_uploads`) and their `url_grant` controls
//! - [`forwarding`] — the event forwarding cursor (cloud.md §11)
//! - [`health`] — the fleet's gauges (observability.md §2) as data, and their one reader
//!   ([`health::read_fleet_gauges`]: two statements, the capped lineages in [`read::fleet`]'s order)
//! - [`dead_letters`] — messages no handler could take, kept for the operator
//! - [`presence`] — live runners and the identity of their spill directories (one object store
//!   per database)
//! - [`snapshot_runs`] — re-snapshot runs and their chunks, the ghost-row sweep, batches of a
//!   stale journal epoch (edge-policies §5, reliability.md §5)
//! - [`device_block`] — a table the device blocked itself, on its lineage; the operator's
//!   `unblock_table` control; a skipped entry's `skipped_by_operator` dead letter
//! - [`review`] — review transitions of both kinds (claim, reject, approve); per-device approval
//! - [`approval`] — the steps of applying an approval plan, shared by both kinds of review
//! - [`coalesce`] — registry coalescing: intake and adoption, registry reviews, consolidation
//! - [`read`] — the HTTP API's scoped reads (lineages, rows, reviews, registry, events, fleet
//!   health with the lag and worst-first order)
//! - [`idempotency`] — stored responses of the API's idempotency keys
//!
//! Every function takes a [`tokio_postgres::GenericClient`] (`+ Sync`), so the handler decides
//! the transaction boundaries, and sends its statements through
//! [`unnamed::UnnamedStatements`] (never a named prepared statement: RDS Proxy and pgbouncer in
//! transaction mode, `scripts/check-unnamed.sh`).

pub mod approval;
pub mod backpressure;
pub mod coalesce;
pub mod connect;
pub mod controls;
pub mod dead_letters;
pub mod device_block;
pub mod drain;
pub mod error;
pub mod forwarding;
pub mod health;
pub mod idempotency;
pub mod ledger;
pub mod lineage;
pub mod migrate;
pub mod mirror;
pub mod policy;
pub mod pool;
pub mod presence;
pub mod read;
pub mod registry;
pub mod replay;
pub mod review;
pub mod scope;
pub mod snapshot_runs;
pub mod spill;
pub mod staging;
pub mod sweep;
pub mod timescale;
pub mod unnamed;
pub mod wire_options;

pub use edge_cloud_core as core;
pub use error::{OpError, ResetError, StoreError};
pub use tokio_postgres;
