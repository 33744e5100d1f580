//! `edge-console` — the operator console `edgectl`: a CLI and a ratatui terminal UI over the
//! cloud's HTTP API (cloud.md §10). It never talks to the database directly.
//!
//! # Layout
//! - [`client`] — the HTTP API client: connection settings (flags > `EDGECTL_*` env), one
//!   request with the envelope decoded, errors as console.md §3 prints them, exit codes
//! - [`unblock`] — `edgectl lineages unblock ID --retry | --skip SEQ` (reliability.md §2)
//!
//! Only the verbs above exist so far; profiles, the other verbs and the TUI come with the
//! console issue. It depends only on the wire crate and a small HTTP client so it stays light
//! to build.

pub mod client;
pub mod unblock;

pub use edge_protocol as protocol;
