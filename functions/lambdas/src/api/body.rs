//! The request bodies of the mutations: their types (documented for OpenAPI), how each is
//! parsed from the request ([`RequestBody`]: 400 `invalid_body` with serde's message) and the
//! checks serde cannot state (a non-blank reason; the policy patch's rules are core's).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use edge_cloud_core::policy::{validate_patch, PolicyPatch};
use edge_cloud_core::review::{ColumnAction, ColumnActionKind};

use super::answer::ApiError;

/// A mutation's body, parsed from the raw request body.
pub trait RequestBody: Sized {
    fn parse(body: &[u8]) -> Result<Self, ApiError>;
}

/// JSON of `T`; with `empty_ok`, an empty (or blank) body is `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("request body is not valid: {e}"))
    })
}

/// A route that takes no body: whatever is sent is ignored.
#[derive(Debug)]
pub struct NoBody;

impl RequestBody for NoBody {
    fn parse(_: &[u8]) -> Result<Self, ApiError> {
        Ok(NoBody)
    }
}

fn reason_required(reason: Option<&str>) -> Result<(), ApiError> {
    if reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "reason must not be empty",
        ));
    }
    Ok(())
}

/// Claim body (optional): `{"action_version": n}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    #[serde(default)]
    pub action_version: Option<i32>,
}

/// The column actions of cloud.md §5.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Mirror,
    Map,
    Ignore,
    Defer,
    AutoCreateAndMap,
}

/// One column action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnActionBody {
    pub source_column_name: String,
    pub action: ActionKind,
    /// `mirror` only: rename in the mirror table.
    #[serde(default)]
    pub mirror_column_name: Option<String>,
    /// `mirror` only, first approval only; must start with `edge_mirror_`.
    #[serde(default)]
    pub mirror_table_name: Option<String>,
    /// `map` only: an existing data point of the device.
    #[serde(default)]
    pub device_data_point_id: Option<Uuid>,
}

/// Approve body. Every column of the reviewed schema needs exactly one action; primary-key
/// columns must be `mirror`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    pub action_version: i32,
    pub column_actions: Vec<ColumnActionBody>,
}

/// Reject body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub action_version: i32,
    /// Not blank.
    #[schema(pattern = r"\S")]
    pub reason: String,
}

/// A column of the dry-run classification (SQLite `PRAGMA table_info` fields).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyColumn {
    pub name: String,
    /// Declared SQLite type, e.g. `INTEGER`, `VARCHAR(20)`; the affinity is derived from it.
    #[serde(rename = "type", default)]
    pub decl_type: String,
    #[serde(default)]
    pub not_null: bool,
    /// 0 = not in the primary key, else 1-based position.
    #[serde(default)]
    pub pk: i64,
}

/// Dry-run classification: the candidate columns against either a lineage's approved schema or
/// an explicit `approved_columns` list (neither = a first schema).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    pub table_name: String,
    #[schema(min_items = 1)]
    pub columns: Vec<ClassifyColumn>,
    #[serde(default)]
    pub lineage_id: Option<Uuid>,
    #[serde(default)]
    pub approved_columns: Option<Vec<ClassifyColumn>>,
    /// Overrides the project's policy for the dry run.
    #[serde(default)]
    pub allow_additive_continue: Option<bool>,
}

/// Policy patch: any subset of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatchBody {
    pub allow_additive_continue: Option<bool>,
    pub allow_auto_create_device_data_points: Option<bool>,
    /// ≥ 1
    #[schema(minimum = 1)]
    pub max_pending_rows_per_lineage: Option<i64>,
    /// ≥ 1
    #[schema(minimum = 1)]
    pub max_pending_bytes_per_lineage: Option<i64>,
    /// 1..=100
    #[schema(minimum = 1, maximum = 100)]
    pub resume_threshold_percent: Option<i32>,
    /// ≥ 1
    #[schema(minimum = 1)]
    pub circuit_breaker_failures: Option<i32>,
    /// none | project | fleet
    #[schema(pattern = "^(none|project|fleet)$")]
    pub schema_coalescing_mode: Option<String>,
}

/// Registry reject/abandon body: reject needs a reason, abandon may give one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    pub action_version: i32,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `unblock_table.action` as the API takes it.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnblockActionBody {
    /// Clear the block; the device tries the entry again.
    Retry,
    /// Drop exactly that entry; the cloud keeps it as a dead letter `skipped_by_operator`.
    Skip,
}

/// Unblock body: the decision about the entry that blocks the lineage's table on the device
/// (`device_block.commit_seq`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnblockBody {
    pub action: UnblockActionBody,
    /// The blocking entry's `commit_seq` (`device_block.commit_seq` of the lineage).
    #[schema(minimum = 1)]
    pub commit_seq: i64,
}

impl RequestBody for UnblockBody {
    /// A body that is not a valid decision is 422 `invalid_body`.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: UnblockBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("request body is not valid: {e}"),
            )
        })?;
        if b.commit_seq < 1 {
            return Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "commit_seq must be a positive integer",
            ));
        }
        Ok(b)
    }
}

/// Consolidate body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateBody {
    /// Count only (default false).
    #[serde(default)]
    pub dry_run: bool,
    /// Fleet mode: only this fleet's shared mirror (default: every shared mirror of the table).
    #[serde(default)]
    pub fleet_id: Option<Uuid>,
}

impl RequestBody for ClaimBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        json_body(body, true)
    }
}

impl RequestBody for ApproveBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        json_body(body, false)
    }
}

impl RequestBody for RejectBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: RejectBody = json_body(body, false)?;
        reason_required(Some(&b.reason))?;
        Ok(b)
    }
}

impl RequestBody for ClassifyBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        json_body(body, false)
    }
}

impl RequestBody for PolicyPatchBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: PolicyPatchBody = json_body(body, false)?;
        validate_patch(&b.patch()).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        Ok(b)
    }
}

impl PolicyPatchBody {
    /// The patch as the policy rules (core) and the store take it.
    pub fn patch(&self) -> PolicyPatch {
        PolicyPatch {
            allow_additive_continue: self.allow_additive_continue,
            allow_auto_create_device_data_points: self.allow_auto_create_device_data_points,
            max_pending_rows_per_lineage: self.max_pending_rows_per_lineage,
            max_pending_bytes_per_lineage: self.max_pending_bytes_per_lineage,
            resume_threshold_percent: self.resume_threshold_percent,
            circuit_breaker_failures: self.circuit_breaker_failures,
            schema_coalescing_mode: self.schema_coalescing_mode.clone(),
        }
    }
}

impl RequestBody for CloseBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        json_body(body, false)
    }
}

/// The registry reject body as documented: a [`CloseBody`] whose reason is required.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RegistryRejectBody {
    pub action_version: i32,
    /// Not blank.
    #[schema(pattern = r"\S")]
    pub reason: String,
}

/// The registry reject body: a [`CloseBody`] whose reason is required.
#[derive(Debug)]
pub struct RejectCloseBody(pub CloseBody);

impl RequestBody for RejectCloseBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: CloseBody = json_body(body, false)?;
        reason_required(b.reason.as_deref())?;
        Ok(RejectCloseBody(b))
    }
}

impl RequestBody for ConsolidateBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        json_body(body, true)
    }
}

/// The column actions of an approval, as the store takes them.
pub fn column_actions(body: Vec<ColumnActionBody>) -> Vec<ColumnAction> {
    body.into_iter()
        .map(|a| ColumnAction {
            source_column_name: a.source_column_name,
            action: match a.action {
                ActionKind::Mirror => ColumnActionKind::Mirror,
                ActionKind::Map => ColumnActionKind::Map,
                ActionKind::Ignore => ColumnActionKind::Ignore,
                ActionKind::Defer => ColumnActionKind::Defer,
                ActionKind::AutoCreateAndMap => ColumnActionKind::AutoCreateAndMap,
            },
            mirror_column_name: a.mirror_column_name,
            mirror_table_name: a.mirror_table_name,
            device_data_point_id: a.device_data_point_id,
        })
        .collect()
}

/// The bodies that take no field but their own (`deny_unknown_fields`).
const CLOSED: [&str; 11] = [
    "ClaimBody",
    "ApproveBody",
    "ColumnActionBody",
    "RejectBody",
    "ClassifyBody",
    "ClassifyColumn",
    "PolicyPatchBody",
    "CloseBody",
    "RegistryRejectBody",
    "ConsolidateBody",
    "UnblockBody",
];

/// The rules of the bodies utoipa cannot state, added to their generated schemas: no unknown
/// field, a policy patch sets at least one field (null is unset), a classification gives
/// `lineage_id` or `approved_columns`, not both.
pub(crate) fn refine(schemas: &mut Map<String, Value>) {
    for name in CLOSED {
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            schema.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    if let Some(Value::Object(patch)) = schemas.get_mut("PolicyPatchBody") {
        let fields: Vec<String> = patch
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let any: Vec<Value> = fields
            .iter()
            .map(|f| json!({"required": [f], "properties": {f: {"not": {"type": "null"}}}}))
            .collect();
        patch.insert("anyOf".into(), Value::Array(any));
    }
    if let Some(Value::Object(classify)) = schemas.get_mut("ClassifyBody") {
        classify.insert(
            "not".into(),
            json!({
                "required": ["lineage_id", "approved_columns"],
                "properties": {
                    "lineage_id": {"not": {"type": "null"}},
                    "approved_columns": {"not": {"type": "null"}},
                },
            }),
        );
    }
}
