//! The OpenAPI document, generated from the route functions' `#[utoipa::path]` attributes and
//! the request/response types. `docs/openapi.json` is this document, pretty-printed; the test
//! `openapi_document_is_committed` fails when they differ. Regenerate with
//! `EDGE_WRITE_OPENAPI=1 cargo test -p edge-functions --test api openapi_document_is_committed`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;
use edge_cloud_store::{coalesce, policy, read as query};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edge-sync governance API",
        description = "Lineages, schema reviews, mirrors, policy and events (cloud.md §10). \
            Every request: `Authorization: Bearer <JWT>` and `ORG-ID`; mutations also need \
            `PROJECT_CAN_MANAGE_DEVICES` and an `Idempotency-Key`."
    ),
    paths(
        routes::list_lineages,
        routes::get_lineage,
        routes::staged_rows,
        routes::mirror_rows,
        routes::delete_lineage,
        routes::reset,
        routes::list_reviews,
        routes::get_review,
        routes::claim,
        routes::approve,
        routes::reject,
        routes::schema_classify,
        routes::get_policy,
        routes::patch_policy,
        routes::events,
        routes::list_registry,
        routes::get_registry,
        routes::list_registry_reviews,
        routes::get_registry_review,
        routes::registry_claim,
        routes::registry_approve,
        routes::registry_reject,
        routes::registry_abandon,
        routes::list_coalesced,
        routes::get_coalesced,
        routes::consolidate,
    ),
    components(schemas(
        query::LineageView,
        query::LineageDetail,
        query::SchemaVersionView,
        query::BindingView,
        query::ReplayIntentView,
        query::StagedRowView,
        query::MirrorRows,
        query::MirrorRow,
        query::MaterializedAt,
        query::ReviewView,
        query::EventView,
        policy::PolicyView,
        routes::ErrorBody,
        routes::ErrorDetail,
        routes::ListLineages,
        routes::ClaimBody,
        routes::ApproveBody,
        routes::ColumnActionBody,
        routes::ActionKind,
        routes::RejectBody,
        routes::ClassifyBody,
        routes::ClassifyColumn,
        routes::PolicyPatchBody,
        routes::CloseBody,
        routes::ConsolidateBody,
        query::RegistryEntryView,
        query::RegistryDetail,
        query::RegistryReviewView,
        query::CoalescedMirrorView,
        query::CoalescedMirrorDetail,
        query::CoalescedLineage,
        coalesce::Consolidation,
        coalesce::ConsolidationSource,
    )),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null)
}

/// The committed form: pretty-printed with a trailing newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
