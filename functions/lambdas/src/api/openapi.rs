//! The OpenAPI document: the frame of [`super::docs`] plus every operation the router serves
//! (utoipa-axum registers each route with its `#[utoipa::path]`). `docs/openapi.json` is this
//! document, pretty-printed; the test `openapi_document_is_committed` fails when they differ.
//! Regenerate with
//! `EDGE_WRITE_OPENAPI=1 cargo test -p edge-functions --test api openapi_document_is_committed`.

/// The document as JSON.
pub fn document() -> serde_json::Value {
    super::routes::document().clone()
}

/// The committed form: pretty-printed with a trailing newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(super::routes::document()).unwrap_or_default();
    s.push('\n');
    s
}
