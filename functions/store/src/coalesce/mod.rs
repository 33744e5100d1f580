//! Registry coalescing (cloud.md §9): registry entries and reviews, adoption of lineages into a
//! shared mirror, and consolidation of per-device mirrors. Decisions come from
//! [`edge_cloud_core::coalesce`]; every write runs in the caller's transaction with its event.
//!
//! Adoption is what makes "approved once, every device auto-approved" work: an approved entry
//! keeps its binding rows as JSON, and binding a lineage is one `INSERT … SELECT FROM
//! jsonb_to_recordset` into `edge_column_bindings` plus the lineage update, so the regular
//! materializer and replay worker then treat the lineage exactly like a per-device approval
//! (the shared mirror has `device_id` in its key like every mirror).
//!
//! # Layout
//! - [`intake`] — what intake does with an unbound hash under a registry scope; adoption
//! - [`review`] — registry review transitions: reject/abandon, and what approval applies
//!   (claim and approve are [`crate::review`]'s, for both kinds)
//! - [`consolidate`] — copying per-device mirrors into the shared mirror, rebinding lineages
//!
//! The registry's API reads are [`crate::read::registry`] and [`crate::read::reviews`].

pub mod consolidate;
pub mod intake;
pub mod review;

pub use self::consolidate::{consolidate, Consolidation, ConsolidationSource};
pub use self::intake::{adopt, intake, open_registry_review, Intake};
pub use self::review::{close, RegistryApproval};
