//! The OpenAPI document's frame: its info, the security schemes, the shared schemas, the
//! documentation-only types of the envelope, and what every operation shares ([`complete`]).
//! The operations come from the routes themselves (`routes::router`), so the document cannot
//! drift from the code.

use serde_json::{json, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use edge_cloud_store::{coalesce, policy, read as query};

use super::body;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edge-sync governance API",
        description = "Lineages, schema reviews, mirrors, policy and events (cloud.md §10). \
            Every request: `Authorization: Bearer <JWT>` and `ORG-ID`; mutations also need \
            `PROJECT_CAN_MANAGE_DEVICES` and an `Idempotency-Key`."
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
        ErrorBody,
        ErrorDetail,
        ListLineages,
        query::FleetHealthView,
        ListFleetHealth,
        body::ClaimBody,
        body::ApproveBody,
        body::ColumnActionBody,
        body::ActionKind,
        body::RejectBody,
        body::ClassifyBody,
        body::ClassifyColumn,
        body::PolicyPatchBody,
        body::CloseBody,
        body::RegistryRejectBody,
        body::ConsolidateBody,
        body::UnblockBody,
        body::UnblockActionBody,
        edge_cloud_store::device_block::DeviceBlock,
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
pub(crate) struct ApiDoc;

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
        components.add_security_scheme(
            "org",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "ORG-ID",
                "The organization of the token (`org_id` claim), as a UUID: missing or \
                 malformed is 400, another organization 403.",
            ))),
        );
    }
}

/// The `Idempotency-Key` every mutation takes: 1–255 characters after trimming, visible ASCII
/// (tabs and spaces inside and around).
const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\t ]*[!-~](?:[\t -~]{0,253}[!-~])?[\t ]*$";

/// What every operation shares, added to the generated document: both credentials, the
/// caller's answers (400 `ORG-ID`, 401 token, 403 organization, 404 project) and, for the
/// mutations (every method but GET), the `Idempotency-Key` with its answers (400 missing, 403
/// permission, 409 state, 422 key reused). A route's own description of a status is kept.
pub(crate) fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let mutation = method != "get";
            op["security"] = json!([{"bearer": [], "org": []}]);
            let mut answers = vec![
                ("400", "Invalid request: query, body, `ORG-ID` or `Idempotency-Key`"),
                ("401", "No valid Bearer token, or its org/projects claim is missing (`claim_missing`) or unusable (`claim_invalid`)"),
                ("403", "`ORG-ID` names another organization than the token's, or a mutation without `PROJECT_CAN_MANAGE_DEVICES`"),
                ("404", "The project is not one of the token's, or the object does not exist"),
            ];
            if mutation {
                answers.push(("409", "The object's state does not allow the change"));
                answers.push((
                    "422",
                    "The `Idempotency-Key` was used for a different request",
                ));
                let params = op
                    .as_object_mut()
                    .map(|o| o.entry("parameters").or_insert_with(|| json!([])));
                if let Some(Value::Array(params)) = params {
                    params.push(json!({
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": true,
                        "description": "Names this request: a retry with the same key gets the stored answer.",
                        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                    }));
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for (status, description) in answers {
                let answer = responses
                    .entry(status)
                    .or_insert_with(|| json!({"description": ""}));
                if answer["description"].as_str().is_none_or(str::is_empty) {
                    answer["description"] = json!(description);
                }
                answer["content"] = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
            }
        }
    }
}

/// The envelope of a success (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Envelope<T> {
    /// Always 1.
    ok: i32,
    data: T,
    #[schema(value_type = Object)]
    meta: Value,
}

/// A list of lineages (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ListLineages {
    ok: i32,
    data: Vec<query::LineageView>,
    /// `{page, limit, total}`
    #[schema(value_type = Object)]
    meta: Value,
}

/// The fleet view (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ListFleetHealth {
    ok: i32,
    data: Vec<query::FleetHealthView>,
    /// `{page, limit, total, generated_at}`
    #[schema(value_type = Object)]
    meta: Value,
}

/// `{"ok":0,"error":{"code","message"}}`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Always 0.
    ok: i32,
    error: ErrorDetail,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable: not_found, unauthorized, claim_missing, claim_invalid, forbidden,
    /// org_mismatch, invalid_body, invalid_pagination, unknown_column, stale_action_version,
    /// invalid_review_state, idempotency_key_reused, …
    code: String,
    message: String,
    /// On answers about a token claim (claim_missing, claim_invalid, org_mismatch, a
    /// forbidden mutation): the claim as configured (`EDGE_JWT_CLAIM_*`), e.g. `custom:org_id`.
    claim: Option<String>,
}

/// Two query parameters of `method path` that exclude each other: its query parameters become
/// one exploded object parameter (serialized as before: `?page=1&limit=2`) whose schema says
/// so, as OpenAPI has no rule across parameters.
pub(crate) fn exclusive_query(doc: &mut Value, path: &str, method: &str, one: &str, other: &str) {
    let Some(Value::Array(params)) = doc
        .get_mut("paths")
        .and_then(|p| p.get_mut(path))
        .and_then(|p| p.get_mut(method))
        .and_then(|o| o.get_mut("parameters"))
    else {
        return;
    };
    let mut properties = serde_json::Map::new();
    params.retain(|p| {
        if p["in"] != "query" {
            return true;
        }
        let mut schema = p["schema"].clone();
        if let Some(d) = p.get("description") {
            schema["description"] = d.clone();
        }
        if let Some(name) = p["name"].as_str() {
            properties.insert(name.to_owned(), schema);
        }
        false
    });
    params.push(json!({
        "name": "query",
        "in": "query",
        "required": false,
        "style": "form",
        "explode": true,
        "schema": {
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
            "not": {"required": [one, other]},
        },
    }));
}
