//! `edge-protocol` — the wire contract between the edge agent (`device/`) and the cloud handlers
//! (`functions/`), format_version 1.
//!
//! `shared/spec/protocol.md` is the normative text; this crate is its single Rust implementation,
//! so both sides agree by construction rather than by convention. It holds data and pure functions
//! only: no I/O, no clocks, no randomness (time and random bytes come in as arguments), so every
//! rule here is unit-testable and the same code runs on an ARM gateway and in a Lambda.
//!
//! Decoding a device payload goes through [`validate`]: it never panics and maps every bad input to
//! a named [`validate::RejectionCode`] (spec §9). Encoding is plain `serde_json` on the types.
//!
//! # Layout
//!
//! - [`limits`] — protocol and deployment limits (rows per batch, payload sizes, format version).
//! - [`value`] — [`value::SqlValue`], the JSON encoding of SQLite values (§2), and [`value::Row`].
//! - [`canonical`] — canonical JSON (sorted keys, no whitespace) used for hashing and signing.
//! - [`fingerprint`] — schema fingerprint, affinity rules and `schema_hash` (§8).
//! - [`batch`] — row batches published on `sync/rows/batch` (§3).
//! - [`telemetry`] — telemetry batches published on `sync/telemetry/batch` (§4).
//! - [`schema`] — advisory schema observations on `sync/schema/observe` (§5).
//! - [`control`] — control envelopes, acks, upload requests and their HMAC signatures (§6, §7).
//! - [`topic`] — MQTT topic names: building and parsing (§1).
//! - [`ids`] — UUIDv7 helpers and the `(journal_epoch, commit_seq)` total order.
//! - [`tenant`] — the forbidden tenant fields and how ingress strips them (§2).
//! - [`timestamp`] — RFC 3339 parsing/formatting shared by every timestamp field.
//! - [`validate`] — decoders for device payloads with named rejection codes (§9), and the pure
//!   telemetry sequencing decision (§4).

pub mod batch;
pub mod canonical;
pub mod control;
pub mod fingerprint;
pub mod ids;
pub mod limits;
pub mod schema;
pub mod telemetry;
pub mod tenant;
pub mod timestamp;
pub mod topic;
pub mod validate;
pub mod value;
pub mod wire;
