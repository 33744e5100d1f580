//! Reads behind the HTTP API (cloud.md §10): lineages, staged and mirror rows, reviews of both
//! kinds, the registry with its shared mirrors, the events feed and the fleet's sync health
//! ([`fleet`]: the fleet-health page, the lag definition and the worst-first order).
//!
//! Every query is scoped by `(org_id, project_id)` in its WHERE clause, so an object of another
//! tenant is indistinguishable from a missing one (the API answers 404 for both). Lists page
//! through one module ([`page`]).

pub mod events;
pub mod fleet;
pub mod lineages;
pub mod page;
pub mod registry;
pub mod reviews;
pub mod rows;

// The read side's items by name, so a handler needs one import for its reads.
pub use self::events::{events, EventView};
pub use self::fleet::{fleet_health, FleetFilter, FleetHealthView};
pub use self::lineages::{
    lineage, lineage_detail, list_lineages, BindingView, LineageDetail, LineageFilter, LineageView,
    ReplayIntentView, SchemaVersionView,
};
pub use self::registry::{
    coalesced_detail, list_coalesced, list_registry, registry_detail, CoalescedLineage,
    CoalescedMirrorDetail, CoalescedMirrorView, RegistryDetail, RegistryEntryView, RegistryFilter,
};
pub use self::reviews::{
    list_registry_reviews, list_reviews, registry_review, review, RegistryReviewView, ReviewView,
};
pub use self::rows::{
    mirror_rows, staged_rows, MaterializedAt, MirrorRow, MirrorRows, StagedRowView,
    MIRROR_COUNT_CACHED_FROM, MIRROR_COUNT_TTL,
};
