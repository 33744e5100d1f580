//! `edge-console` — the operator console `edgectl`: a CLI and a ratatui terminal UI over the
//! cloud's HTTP API (cloud.md §10). It never talks to the database directly.
//!
//! # Layout
//! - API client, command-line verbs, terminal views
//!
//! Filled by a later issue; it depends only on the wire crate so it stays light to build.

pub use edge_protocol as protocol;
